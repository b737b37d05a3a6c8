//! ModernBERT's task heads (transformers' `ModernBertFor{SequenceClassification,
//! TokenClassification,QuestionAnswering}`): the sequence (its first token, or the mean over
//! real tokens, per `classifier_pooling`) or every token goes through `ModernBertPredictionHead`
//! (dense -> `classifier_activation` -> LayerNorm), dropout, and one `classifier` layer — one
//! output per class, per tag, or two (answer start and end) per token. Key names (under
//! `prism.heads.<task>.`): `head.dense`, `head.norm`, and `out_proj` / `classifier` /
//! `qa_outputs` as the other families' heads of the same kind.

use crate::error::{Error, Result};
use crate::models::bert::Activation;
use crate::models::EncoderOutput;
use crate::nn::{Init, LayerNorm, Linear, Mode, ParamBuilder};
use candle_core::{DType, Tensor};

/// How a sequence head summarises the tokens (`classifier_pooling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The first token.
    Cls,
    /// The mean over real (unmasked) tokens.
    Mean,
}

/// What a ModernBERT head is built from (its config).
#[derive(Clone, Copy, Debug)]
pub struct PredictionSpec {
    pub dense_bias: bool,
    pub norm_bias: bool,
    pub eps: f64,
    pub act: Activation,
    pub dropout: f64,
    pub pooling: Pooling,
}

pub struct PredictionHead {
    dense: Linear,
    act: Activation,
    norm: LayerNorm,
    out: Linear,
    dropout: f64,
    /// Some for sequence heads.
    pooling: Option<Pooling>,
}

impl PredictionHead {
    /// `out_name`: `out_proj` (sequence), `classifier` (tags) or `qa_outputs` (QA, 2 outputs).
    pub fn load(
        pb: &ParamBuilder,
        hidden: usize,
        n_out: usize,
        out_name: &str,
        sequence: bool,
        spec: &PredictionSpec,
        std: f64,
    ) -> Result<Self> {
        let h = pb.pp("head");
        let dp = h.pp("dense");
        let weight = dp.get_or_init(&[hidden, hidden], "weight", Init::Normal(std))?;
        let bias = if spec.dense_bias {
            Some(dp.get_or_init(&[hidden], "bias", Init::Const(0.0))?)
        } else {
            None
        };
        let np = h.pp("norm");
        let norm = LayerNorm {
            weight: np.get_or_init(&[hidden], "weight", Init::Const(1.0))?,
            bias: if spec.norm_bias {
                np.get_or_init(&[hidden], "bias", Init::Const(0.0))?
            } else {
                Tensor::zeros(hidden, DType::F32, pb.device())?
            },
            eps: spec.eps,
        };
        Ok(Self {
            dense: Linear::new(weight, bias),
            act: spec.act,
            norm,
            out: Linear::load_or_init(&pb.pp(out_name), hidden, n_out, std)?,
            dropout: spec.dropout,
            pooling: sequence.then_some(spec.pooling),
        })
    }

    /// Sequence heads: (B, n_out); token heads: (B, T, n_out).
    pub fn forward(&self, enc: &EncoderOutput, mode: &Mode) -> Result<Tensor> {
        let h = &enc.last_hidden_state;
        let x = match self.pooling {
            None => h.clone(),
            Some(Pooling::Cls) => h.narrow(1, 0, 1)?.squeeze(1)?,
            Some(Pooling::Mean) => {
                let mask = enc.attention_mask.as_ref().ok_or_else(|| {
                    Error::Input("mean pooling needs the encoder's attention mask".into())
                })?;
                crate::models::bert::mean_pool(h, mask)?
            }
        };
        let y = self
            .norm
            .forward(&self.act.forward(&self.dense.forward(&x)?)?)?;
        self.out.forward(&mode.dropout(&y, self.dropout)?)
    }
}
