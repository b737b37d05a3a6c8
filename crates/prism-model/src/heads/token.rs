//! Token classification (NER-style tagging): dropout -> linear per token, as transformers'
//! `BertForTokenClassification`.

use crate::error::Result;
use crate::models::EncoderOutput;
use crate::nn::{Linear, Mode, ParamBuilder};
use candle_core::Tensor;

pub struct TokenHead {
    out: Linear,
    dropout: f64,
}

impl TokenHead {
    pub fn load(
        pb: &ParamBuilder,
        hidden: usize,
        n_tags: usize,
        dropout: f64,
        std: f64,
    ) -> Result<Self> {
        Ok(Self {
            out: Linear::load_or_init(&pb.pp("classifier"), hidden, n_tags, std)?,
            dropout,
        })
    }

    /// # Shapes
    /// -> (B, T, n_tags)
    pub fn forward(&self, enc: &EncoderOutput, mode: &Mode) -> Result<Tensor> {
        self.out
            .forward(&mode.dropout(&enc.last_hidden_state, self.dropout)?)
    }
}
