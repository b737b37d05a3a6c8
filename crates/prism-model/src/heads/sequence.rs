//! Sequence classification and regression: one vector per input, as transformers'
//! `BertForSequenceClassification` (pooler -> dropout -> linear). Encoders without a pooler use
//! RoBERTa's head instead (first token -> dropout -> dense -> tanh -> dropout -> linear); XLNet
//! summarises its last real token the same way (its `SequenceSummary`: last -> projection ->
//! tanh), chosen by the encoder's `summary_positions`.

use crate::error::{Error, Result};
use crate::models::EncoderOutput;
use crate::nn::{Linear, Mode, ParamBuilder};
use candle_core::Tensor;

pub struct SequenceHead {
    dense: Option<Linear>,
    out: Linear,
    dropout: f64,
}

impl SequenceHead {
    /// `n_out` classes (or 1 for regression). `use_pooler`: the encoder has a pooler.
    pub fn load(
        pb: &ParamBuilder,
        hidden: usize,
        n_out: usize,
        dropout: f64,
        use_pooler: bool,
        std: f64,
    ) -> Result<Self> {
        let dense = if use_pooler {
            None
        } else {
            Some(Linear::load_or_init(&pb.pp("dense"), hidden, hidden, std)?)
        };
        let out = Linear::load_or_init(&pb.pp("out_proj"), hidden, n_out, std)?;
        Ok(Self {
            dense,
            out,
            dropout,
        })
    }

    /// # Shapes
    /// -> (B, n_out)
    pub fn forward(&self, enc: &EncoderOutput, mode: &Mode) -> Result<Tensor> {
        let x = match (&self.dense, &enc.pooler_output) {
            (None, Some(p)) => p.clone(), // (B, C)
            (None, None) => {
                return Err(Error::Input("sequence head expects a pooler output".into()))
            }
            (Some(dense), _) => {
                let cls = enc.summary_token()?; // (B, C)
                dense.forward(&mode.dropout(&cls, self.dropout)?)?.tanh()?
            }
        };
        self.out.forward(&mode.dropout(&x, self.dropout)?)
    }
}
