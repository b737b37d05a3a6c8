//! prism-explain: model + input -> attributions. Each method is a struct holding its options
//! with `attribute(model, input, target)` (Captum's shape); methods are registered by name.
//! Results are ordered lists (never maps keyed by token, so repeated tokens keep their own
//! scores) in a serde-serialisable [`Attributions`]; renderers consume that.
//!
//! # Shape letters
//! B batch, T tokens, C hidden size, L layers, H heads, S interpolation steps or samples.

pub mod attention;
pub mod faithfulness;
pub mod gradient;
pub mod model;
pub mod perturbation;
pub mod render;

pub use model::{ExplainInput, ExplainModel, Target};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("unknown method `{name}` (available: {available})")]
    UnknownMethod { name: String, available: String },
    #[error(transparent)]
    Model(#[from] prism_model::Error),
    #[error(transparent)]
    Train(#[from] prism_train::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One method's attribution of one prediction to the input tokens.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attributions {
    /// Tokens as the tokenizer produced them, in order (special tokens included).
    pub tokens: Vec<String>,
    /// Character offsets of each token in its text (`(0, 0)` for special tokens).
    pub offsets: Vec<(usize, usize)>,
    /// Which text each token belongs to (0 or 1 for pairs; `None` for special tokens).
    pub sequence_ids: Vec<Option<usize>>,
    /// One score per token; positive supports the target.
    pub scores: Vec<f32>,
    pub method: String,
    /// Human-readable target, e.g. `class positive` or `start of answer`.
    pub target: String,
    /// The explained output F(x) for the target.
    pub output: f32,
    /// Integrated gradients' convergence delta: sum of attributions − (F(x) − F(baseline)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f32>,
}

/// Words: runs of tokens of the same text with no gap between their offsets (WordPiece `##`
/// pieces, BPE pieces of one word), as `(first token, last token + 1)`.
pub fn word_spans(a: &Attributions) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < a.tokens.len() {
        let mut j = i + 1;
        if a.sequence_ids[i].is_some() {
            while j < a.tokens.len()
                && a.sequence_ids[j] == a.sequence_ids[i]
                && a.offsets[j].0 == a.offsets[j - 1].1
                && a.offsets[j].0 != a.offsets[j].1
            {
                j += 1;
            }
        }
        spans.push((i, j));
        i = j;
    }
    spans
}

/// Word-level attributions: scores summed over each word's sub-word tokens; the word text is
/// cut from `texts` by offsets.
pub fn aggregate_words(a: &Attributions, texts: &[&str]) -> Attributions {
    let mut out = Attributions {
        tokens: vec![],
        offsets: vec![],
        sequence_ids: vec![],
        scores: vec![],
        ..a.clone()
    };
    for (s, e) in word_spans(a) {
        let seq = a.sequence_ids[s];
        let (start, end) = (a.offsets[s].0, a.offsets[e - 1].1);
        let word = match seq {
            Some(k) if k < texts.len() => texts[k]
                .chars()
                .skip(start)
                .take(end.saturating_sub(start))
                .collect(),
            _ => a.tokens[s].clone(),
        };
        out.tokens.push(word);
        out.offsets.push((start, end));
        out.sequence_ids.push(seq);
        out.scores.push(a.scores[s..e].iter().sum());
    }
    out
}

/// The names `--method` accepts.
pub const METHODS: [&str; 10] = [
    "saliency",
    "grad_x_input",
    "smoothgrad",
    "ig",
    "attention",
    "rollout",
    "flow",
    "occlusion",
    "lime",
    "kernel_shap",
];

/// An attribution method, configured.
pub trait Method: Send + Sync {
    fn name(&self) -> &'static str;
    fn attribute(
        &self,
        model: &ExplainModel,
        input: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions>;
}

/// A method by name with its default options (seeded where it samples).
pub fn method_by_name(name: &str, seed: u64) -> Result<Box<dyn Method>> {
    use attention::{AttentionFlow, AttentionRollout, RawAttention};
    use gradient::{GradientXInput, IntegratedGradients, Saliency, SmoothGrad};
    use perturbation::{KernelShap, Lime, Occlusion};
    Ok(match name {
        "saliency" => Box::new(Saliency),
        "grad_x_input" | "gxi" => Box::new(GradientXInput),
        "smoothgrad" => Box::new(SmoothGrad {
            seed,
            ..Default::default()
        }),
        "ig" | "integrated_gradients" => Box::new(IntegratedGradients::default()),
        "attention" => Box::new(RawAttention::default()),
        "rollout" => Box::new(AttentionRollout),
        "flow" => Box::new(AttentionFlow),
        "occlusion" => Box::new(Occlusion::default()),
        "lime" => Box::new(Lime {
            seed,
            ..Default::default()
        }),
        "kernel_shap" | "shap" => Box::new(KernelShap {
            seed,
            ..Default::default()
        }),
        other => {
            return Err(Error::UnknownMethod {
                name: other.into(),
                available: METHODS.join(", "),
            })
        }
    })
}
