//! Extractive question answering: start and end logits per token, as transformers'
//! `BertForQuestionAnswering` (`qa_outputs`: a linear layer to 2 values per token).

use crate::error::Result;
use crate::models::EncoderOutput;
use crate::nn::{Linear, ParamBuilder};
use candle_core::{Tensor, D};

pub struct SpanHead {
    out: Linear,
}

impl SpanHead {
    pub fn load(pb: &ParamBuilder, hidden: usize, std: f64) -> Result<Self> {
        Ok(Self {
            out: Linear::load_or_init(&pb.pp("qa_outputs"), hidden, 2, std)?,
        })
    }

    /// # Shapes
    /// -> start logits (B, T), end logits (B, T)
    pub fn forward(&self, enc: &EncoderOutput) -> Result<(Tensor, Tensor)> {
        let logits = self.out.forward(&enc.last_hidden_state)?; // (B, T, 2)
        let start = logits.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
        let end = logits.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
        Ok((start.contiguous()?, end.contiguous()?))
    }
}
