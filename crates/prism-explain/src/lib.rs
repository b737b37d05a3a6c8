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

/// Options a method takes from the command line, the API or the web UI; each method reads
/// the ones it has (integrated gradients: `steps` and `rule`; sampling methods: `seed`).
#[derive(Clone, Copy, Debug)]
pub struct MethodOptions {
    pub seed: u64,
    /// Integrated gradients' interpolation steps (Captum's default: 50).
    pub steps: usize,
    /// Integrated gradients' quadrature rule.
    pub rule: gradient::Rule,
}

impl Default for MethodOptions {
    fn default() -> Self {
        let ig = gradient::IntegratedGradients::default();
        Self {
            seed: 0,
            steps: ig.steps,
            rule: ig.rule,
        }
    }
}

/// One registered method: its name, the other names it answers to, and how to build it.
struct Registered {
    name: &'static str,
    aliases: &'static [&'static str],
    build: fn(&MethodOptions) -> Box<dyn Method>,
}

/// Every attribution method, in the order help texts and the web UI list them.
const REGISTRY: [Registered; 10] = {
    use attention::{AttentionFlow, AttentionRollout, RawAttention};
    use gradient::{GradientXInput, IntegratedGradients, Saliency, SmoothGrad};
    use perturbation::{KernelShap, Lime, Occlusion};
    [
        Registered {
            name: "saliency",
            aliases: &[],
            build: |_| Box::new(Saliency),
        },
        Registered {
            name: "grad_x_input",
            aliases: &["gxi"],
            build: |_| Box::new(GradientXInput),
        },
        Registered {
            name: "smoothgrad",
            aliases: &[],
            build: |o| {
                Box::new(SmoothGrad {
                    seed: o.seed,
                    ..Default::default()
                })
            },
        },
        Registered {
            name: "ig",
            aliases: &["integrated_gradients"],
            build: |o| {
                Box::new(IntegratedGradients {
                    steps: o.steps,
                    rule: o.rule,
                    ..Default::default()
                })
            },
        },
        Registered {
            name: "attention",
            aliases: &[],
            build: |_| Box::new(RawAttention::default()),
        },
        Registered {
            name: "rollout",
            aliases: &[],
            build: |_| Box::new(AttentionRollout),
        },
        Registered {
            name: "flow",
            aliases: &[],
            build: |_| Box::new(AttentionFlow),
        },
        Registered {
            name: "occlusion",
            aliases: &[],
            build: |_| Box::new(Occlusion::default()),
        },
        Registered {
            name: "lime",
            aliases: &[],
            build: |o| {
                Box::new(Lime {
                    seed: o.seed,
                    ..Default::default()
                })
            },
        },
        Registered {
            name: "kernel_shap",
            aliases: &["shap"],
            build: |o| {
                Box::new(KernelShap {
                    seed: o.seed,
                    ..Default::default()
                })
            },
        },
    ]
};

/// The names `--method` accepts (each method's main name), read from the registry.
pub const METHODS: [&str; REGISTRY.len()] = {
    let mut names = [""; REGISTRY.len()];
    let mut i = 0;
    while i < REGISTRY.len() {
        names[i] = REGISTRY[i].name;
        i += 1;
    }
    names
};

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

/// A method by name, configured by `opts`.
pub fn method_with(name: &str, opts: &MethodOptions) -> Result<Box<dyn Method>> {
    REGISTRY
        .iter()
        .find(|r| r.name == name || r.aliases.contains(&name))
        .map(|r| (r.build)(opts))
        .ok_or_else(|| Error::UnknownMethod {
            name: name.into(),
            available: METHODS.join(", "),
        })
}

/// A method by name with its default options (seeded where it samples).
pub fn method_by_name(name: &str, seed: u64) -> Result<Box<dyn Method>> {
    method_with(
        name,
        &MethodOptions {
            seed,
            ..Default::default()
        },
    )
}
