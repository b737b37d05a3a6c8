//! ELECTRA's replaced-token-detection head (transformers' `ElectraDiscriminatorPredictions`
//! in `ElectraForPreTraining`): dense -> `hidden_act` -> a one-logit projection per token, the
//! logit of "this token was replaced". Key names `discriminator_predictions.{dense,
//! dense_prediction}`.

use crate::error::Result;
use crate::models::bert::{Activation, BertConfig};
use crate::nn::{Linear, ParamStore};
use candle_core::Tensor;

pub struct RtdHead {
    dense: Linear,
    act: Activation,
    prediction: Linear,
}

impl RtdHead {
    /// The checkpoint's head, or a fresh one (normal(0, initializer_range) weights).
    pub fn load(params: &ParamStore, cfg: &BertConfig) -> Result<Self> {
        let root = params.root();
        let pb = root.pp("discriminator_predictions");
        let c = cfg.hidden_size;
        Ok(Self {
            dense: Linear::load_or_init(&pb.pp("dense"), c, c, cfg.initializer_range)?,
            act: Activation::parse(&cfg.hidden_act)?,
            prediction: Linear::load_or_init(
                &pb.pp("dense_prediction"),
                c,
                1,
                cfg.initializer_range,
            )?,
        })
    }

    /// One "replaced" logit per token.
    ///
    /// # Shapes
    /// `hidden`: (B, T, C) -> (B, T)
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = self.act.forward(&self.dense.forward(hidden)?)?;
        Ok(self
            .prediction
            .forward(&h)?
            .squeeze(candle_core::D::Minus1)?)
    }
}
