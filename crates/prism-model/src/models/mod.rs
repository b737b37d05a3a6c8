//! Encoder model families and the types their forward passes share.

pub mod bert;
pub mod deberta_v2;
pub mod distilbert;
pub mod modernbert;
pub mod xlnet;

use crate::error::Result;
use crate::nn::Mode;
use candle_core::Tensor;

/// A batch of tokenised inputs.
///
/// # Shapes
/// `input_ids`, `attention_mask`, `token_type_ids`: (B, T); the mask is 1 for real tokens and 0
/// for padding (any integer or float dtype).
#[derive(Clone, Debug)]
pub struct EncoderInput {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Option<Tensor>,
    /// Return every layer's hidden states (embedding output first, as transformers does).
    pub output_hidden_states: bool,
    /// Return every layer's attention probabilities, (B, H, T, T) each.
    pub output_attentions: bool,
    /// Only the first token's final hidden state is needed (a sequence head reading [CLS] or
    /// `<s>`): BERT/RoBERTa then run the last layer's attention query, output projection and
    /// feed-forward block for position 0 alone and return `last_hidden_state` as (B, 1, C). In
    /// evaluation the result equals position 0 of the full computation (parity-tested, outputs
    /// and gradients); in training it is the same model, but the last layer's dropout masks are
    /// drawn over the smaller tensors, so a run is not bit-identical to the full path. Ignored
    /// when hidden states or attentions are asked for, and by XLNet (whose summary token is the
    /// last one).
    pub first_token_only: bool,
    /// Observations of and interventions on the forward pass (attribution inside the encoder);
    /// `None` for every ordinary pass.
    pub probes: Option<Probes>,
}

/// Ways to look inside a forward pass, for attribution methods (prism-explain's layer
/// methods). With any of them set, every layer runs in full (no first-token shortcut, no
/// activation checkpointing) and attention goes through its probabilities.
///
/// # Shapes
/// `layer_output.1` and each of `taps`: (B, T, C); `head_mask`: (L, H).
#[derive(Clone, Debug, Default)]
pub struct Probes {
    /// `(n, h)`: layers 0..=n are not run and `h` stands for layer n's output (0-based), so
    /// the rest of the encoder runs from given activations (Captum's layer interpolation).
    /// The hidden states of the layers not run are not meaningful.
    pub layer_output: Option<(usize, Tensor)>,
    /// Multiplies layer l's attention probabilities of head h (after dropout, as transformers'
    /// former `head_mask` did); a `Var` of ones gives dF/dmask = Σ attention ⊙ dF/dattention.
    pub head_mask: Option<Tensor>,
    /// One tensor per layer, added to that layer's output: zero `Var`s here let the backward
    /// pass record the gradient with respect to every layer's output.
    pub taps: Option<Vec<Tensor>>,
}

impl Probes {
    /// Whether layer `l` is not run at all (a later layer's output is given).
    pub fn skips(&self, l: usize) -> bool {
        matches!(&self.layer_output, Some((n, _)) if l < *n)
    }

    /// The given output of layer `l`, which then is not run either.
    pub fn replacement(&self, l: usize) -> Option<&Tensor> {
        match &self.layer_output {
            Some((n, v)) if *n == l => Some(v),
            _ => None,
        }
    }

    /// Layer `l`'s output with its tap added.
    pub fn tapped(&self, l: usize, h: Tensor) -> Result<Tensor> {
        Ok(match self.taps.as_ref().and_then(|t| t.get(l)) {
            Some(tap) => (h + tap)?,
            None => h,
        })
    }

    /// Layer `l`'s head-mask row, shaped (1, H, 1, 1) to multiply (B, H, Tq, Tk) probabilities.
    pub fn head_row(&self, l: usize) -> Result<Option<Tensor>> {
        match &self.head_mask {
            Some(m) => {
                let h = m.dim(1)?;
                Ok(Some(m.narrow(0, l, 1)?.reshape((1, h, 1, 1))?))
            }
            None => Ok(None),
        }
    }
}

impl EncoderInput {
    pub fn new(input_ids: Tensor, attention_mask: Tensor) -> Self {
        Self {
            input_ids,
            attention_mask,
            token_type_ids: None,
            output_hidden_states: false,
            output_attentions: false,
            first_token_only: false,
            probes: None,
        }
    }

    pub fn with_first_token_only(mut self, yes: bool) -> Self {
        self.first_token_only = yes;
        self
    }

    pub fn with_token_type_ids(mut self, t: Tensor) -> Self {
        self.token_type_ids = Some(t);
        self
    }

    pub fn with_outputs(mut self, hidden_states: bool, attentions: bool) -> Self {
        self.output_hidden_states = hidden_states;
        self.output_attentions = attentions;
        self
    }
}

/// What an encoder returns.
///
/// # Shapes
/// `last_hidden_state`: (B, T, C); `pooler_output`: (B, C); `hidden_states`: L+1 of (B, T, C);
/// `attentions`: L of (B, H, T, T).
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    pub last_hidden_state: Tensor,
    pub pooler_output: Option<Tensor>,
    pub hidden_states: Option<Vec<Tensor>>,
    pub attentions: Option<Vec<Tensor>>,
    /// (B) u32: the token a sequence head summarises when the model has no pooler and it is
    /// not the first token (XLNet: the last real token, its `<cls>`).
    pub summary_positions: Option<Tensor>,
    /// The input's attention mask (B, T), for heads that pool over the real tokens.
    pub attention_mask: Option<Tensor>,
}

impl EncoderOutput {
    /// The token a sequence head summarises, (B, C): the first position, or each row's
    /// `summary_positions` (XLNet: the last real token, its `<cls>`, wherever padding put it).
    pub fn summary_token(&self) -> Result<Tensor> {
        let h = &self.last_hidden_state;
        match &self.summary_positions {
            None => Ok(h.narrow(1, 0, 1)?.squeeze(1)?),
            Some(pos) => {
                let (b, t, c) = h.dims3()?;
                let rows = (Tensor::arange(0u32, b as u32, h.device())? * t as f64)?
                    .add(&pos.to_dtype(candle_core::DType::U32)?)?;
                Ok(h.reshape((b * t, c))?.index_select(&rows, 0)?)
            }
        }
    }

    /// One vector per sequence, (B, C): the pooler's output when the model has one (BERT),
    /// else [`EncoderOutput::summary_token`].
    pub fn summary(&self) -> Result<Tensor> {
        match &self.pooler_output {
            Some(p) => Ok(p.clone()),
            None => self.summary_token(),
        }
    }
}

/// What every encoder family provides. The split between word embeddings and the rest lets
/// gradient-based attribution and adversarial training work on the embedding output
/// (see [`crate::grad`]).
pub trait Encoder: Send + Sync {
    /// The word (token) embedding lookup alone. (B, T) -> (B, T, C)
    fn word_embeddings(&self, input_ids: &Tensor) -> Result<Tensor>;

    /// The table behind [`Encoder::word_embeddings`], (V, C).
    fn word_embedding_table(&self) -> &Tensor;

    /// Everything after the word-embedding lookup, starting from `word_embeds` (B, T, C).
    fn forward_from_word_embeddings(
        &self,
        word_embeds: &Tensor,
        input: &EncoderInput,
        mode: &Mode,
    ) -> Result<EncoderOutput>;

    fn forward(&self, input: &EncoderInput, mode: &Mode) -> Result<EncoderOutput> {
        let e = self.word_embeddings(&input.input_ids)?;
        self.forward_from_word_embeddings(&e, input, mode)
    }

    fn hidden_size(&self) -> usize;

    /// The number of layers and of attention heads per layer.
    fn layers_and_heads(&self) -> (usize, usize);
}
