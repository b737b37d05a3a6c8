//! Sequence classification and regression: one vector per input, as transformers'
//! `BertForSequenceClassification` (pooler -> dropout -> linear). The RoBERTa family (RoBERTa,
//! XLM-RoBERTa, CamemBERT) and encoders without a pooler use RoBERTa's head instead (first token -> dropout -> dense -> tanh -> dropout -> linear); XLNet
//! summarises its last real token the same way (its `SequenceSummary`: last -> projection ->
//! tanh), chosen by the encoder's `summary_positions`. DeBERTa's `ContextPooler` + classifier
//! is the same layout (first token -> dropout -> dense -> `pooler_hidden_act` -> dropout ->
//! linear) with its own dropout before the dense layer.

use crate::error::{Error, Result};
use crate::models::EncoderOutput;
use crate::nn::{Linear, Mode, ParamBuilder};
use candle_core::Tensor;

/// The non-linearity after the dense layer of a head that does not read the pooler: tanh
/// (RoBERTa's `RobertaClassificationHead`, XLNet's `SequenceSummary`), exact GELU
/// (`ElectraClassificationHead`) or ReLU (DistilBERT's `pre_classifier`, which has no dropout
/// before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseAct {
    Tanh,
    Gelu,
    Relu,
}

pub struct SequenceHead {
    dense: Option<Linear>,
    act: DenseAct,
    out: Linear,
    dropout: f64,
    /// Dropout before the dense layer when it differs from `dropout` (DeBERTa's ContextPooler).
    input_dropout: Option<f64>,
}

impl SequenceHead {
    /// `n_out` classes (or 1 for regression). `has_pooler`: the encoder has a pooler;
    /// `pooler_head`: a new head reads it (BERT's convention — the RoBERTa family's classes
    /// ignore the pooler and use their own dense + tanh head, as transformers builds them). A
    /// head already in the checkpoint keeps its layout: with `dense` it is RoBERTa's, without
    /// it the pooler's.
    pub fn load(
        pb: &ParamBuilder,
        hidden: usize,
        n_out: usize,
        dropout: f64,
        has_pooler: bool,
        pooler_head: bool,
        act: DenseAct,
        std: f64,
    ) -> Result<Self> {
        let use_pooler = if pb.source_has("dense.weight") {
            false
        } else if pb.source_has("out_proj.weight") {
            has_pooler
        } else {
            has_pooler && pooler_head
        };
        let dense = if use_pooler {
            None
        } else {
            Some(Linear::load_or_init(&pb.pp("dense"), hidden, hidden, std)?)
        };
        let out = Linear::load_or_init(&pb.pp("out_proj"), hidden, n_out, std)?;
        Ok(Self {
            dense,
            act,
            out,
            dropout,
            input_dropout: None,
        })
    }

    /// A different dropout before the dense layer (DeBERTa's `pooler_dropout`); `None` keeps
    /// the head's one dropout.
    pub fn with_input_dropout(mut self, p: Option<f64>) -> Self {
        self.input_dropout = p;
        self
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
                let cls = match (self.input_dropout, self.act) {
                    (Some(p), _) => mode.dropout(&cls, p)?,
                    (None, DenseAct::Relu) => cls,
                    (None, _) => mode.dropout(&cls, self.dropout)?,
                };
                let h = dense.forward(&cls)?;
                match self.act {
                    DenseAct::Tanh => h.tanh()?,
                    DenseAct::Gelu => crate::ops::gelu_erf(&h)?,
                    DenseAct::Relu => h.relu()?,
                }
            }
        };
        self.out.forward(&mode.dropout(&x, self.dropout)?)
    }
}
