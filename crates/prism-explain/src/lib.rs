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
pub mod layer;
pub mod model;
pub mod perturbation;
pub mod render;
pub mod window;

pub use model::{ExplainInput, ExplainModel, Output, Target};

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
    /// What of the target F is: `prob`, `logit` or `log_prob` (raw values for regression and
    /// QA are recorded as `logit`).
    #[serde(default)]
    pub output_kind: Output,
    /// The contrasted class or tag, when F = output(target) − output(foil).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foil: Option<String>,
    /// How many overlapping windows a text longer than the task's `max_length` was explained
    /// in (scores stitched over the whole text, see [`window`]); absent when it fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<usize>,
}

/// Words: runs of tokens of the same text with no gap between their offsets (WordPiece `##`
/// pieces, BPE pieces of one word), as `(first token, last token + 1)`.
pub fn word_spans(a: &Attributions) -> Vec<(usize, usize)> {
    spans_of_words(&a.sequence_ids, &a.offsets)
}

/// [`word_spans`] from each token's text and character offsets.
pub fn spans_of_words(
    sequence_ids: &[Option<usize>],
    offsets: &[(usize, usize)],
) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < sequence_ids.len() {
        let mut j = i + 1;
        if sequence_ids[i].is_some() {
            while j < sequence_ids.len()
                && sequence_ids[j] == sequence_ids[i]
                && offsets[j].0 == offsets[j - 1].1
                && offsets[j].0 != offsets[j].1
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
#[derive(Clone, Debug)]
pub struct MethodOptions {
    pub seed: u64,
    /// Integrated gradients' interpolation steps (Captum's default: 50).
    pub steps: usize,
    /// Integrated gradients' quadrature rule.
    pub rule: gradient::Rule,
    /// The encoder layer (0-based) layer methods attribute at (default: the last).
    pub layer: Option<usize>,
    /// Integrated gradients' baseline (and so that of the methods built on it).
    pub baseline: gradient::Baseline,
}

impl Default for MethodOptions {
    fn default() -> Self {
        let ig = gradient::IntegratedGradients::default();
        Self {
            seed: 0,
            steps: ig.steps,
            rule: ig.rule,
            layer: None,
            baseline: ig.baseline,
        }
    }
}

impl Attributions {
    /// An error naming the method and the first token whose score (or the explained output
    /// F, or the delta) is NaN or infinite: a damaged model or an overflow, never a `null`
    /// in the JSON.
    pub fn ensure_finite(&self) -> Result<()> {
        if !self.output.is_finite() {
            return Err(Error::Invalid(format!(
                "{}: the explained output F = {} is not finite (the model's weights hold NaN or \
                 infinite values, or the input overflowed them)",
                self.method, self.output
            )));
        }
        if let Some(i) = self.scores.iter().position(|s| !s.is_finite()) {
            return Err(Error::Invalid(format!(
                "{}: the score of token {i} ({:?}) is {} (not finite)",
                self.method,
                self.tokens.get(i).map(String::as_str).unwrap_or(""),
                self.scores[i]
            )));
        }
        if let Some(d) = self.delta.filter(|d| !d.is_finite()) {
            return Err(Error::Invalid(format!(
                "{}: the convergence delta is {d} (not finite)",
                self.method
            )));
        }
        Ok(())
    }
}

/// One registered method: its name, the other names it answers to, and how to build it.
struct Registered {
    name: &'static str,
    aliases: &'static [&'static str],
    build: fn(&MethodOptions) -> Box<dyn Method>,
}

/// A NoiseTunnel of `base` with `smoothing`, seeded by `o` (IG takes `o`'s steps and rule).
fn tunnel(
    base: gradient::Base,
    smoothing: gradient::Smoothing,
    o: &MethodOptions,
) -> Box<dyn Method> {
    Box::new(gradient::NoiseTunnel {
        seed: o.seed,
        ..gradient::NoiseTunnel::new(base, smoothing)
    })
}

fn ig_with(o: &MethodOptions) -> gradient::IntegratedGradients {
    gradient::IntegratedGradients {
        steps: o.steps,
        rule: o.rule,
        baseline: o.baseline.clone(),
        ..Default::default()
    }
}

/// Every attribution method, in the order help texts and the web UI list them. NoiseTunnel
/// variants are named `BASE:SMOOTHING` (`smoothgrad` is `saliency:smoothgrad`).
const REGISTRY: [Registered; 23] = {
    use attention::{AttentionFlow, AttentionRollout, RawAttention};
    use gradient::{Base, GradientShap, GradientXInput, Saliency, Smoothing};
    use perturbation::{KernelShap, Lime, Occlusion, WordAblation};
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
            name: "ig",
            aliases: &["integrated_gradients"],
            build: |o| Box::new(ig_with(o)),
        },
        Registered {
            name: "smoothgrad",
            aliases: &["saliency:smoothgrad"],
            build: |o| tunnel(Base::Saliency, Smoothing::SmoothGrad, o),
        },
        Registered {
            name: "saliency:smoothgrad_sq",
            aliases: &[],
            build: |o| tunnel(Base::Saliency, Smoothing::SmoothGradSq, o),
        },
        Registered {
            name: "saliency:vargrad",
            aliases: &["vargrad"],
            build: |o| tunnel(Base::Saliency, Smoothing::VarGrad, o),
        },
        Registered {
            name: "grad_x_input:smoothgrad",
            aliases: &["gxi:smoothgrad"],
            build: |o| tunnel(Base::GradientXInput, Smoothing::SmoothGrad, o),
        },
        Registered {
            name: "grad_x_input:smoothgrad_sq",
            aliases: &["gxi:smoothgrad_sq"],
            build: |o| tunnel(Base::GradientXInput, Smoothing::SmoothGradSq, o),
        },
        Registered {
            name: "grad_x_input:vargrad",
            aliases: &["gxi:vargrad"],
            build: |o| tunnel(Base::GradientXInput, Smoothing::VarGrad, o),
        },
        Registered {
            name: "ig:smoothgrad",
            aliases: &[],
            build: |o| {
                tunnel(
                    Base::IntegratedGradients(ig_with(o)),
                    Smoothing::SmoothGrad,
                    o,
                )
            },
        },
        Registered {
            name: "ig:smoothgrad_sq",
            aliases: &[],
            build: |o| {
                tunnel(
                    Base::IntegratedGradients(ig_with(o)),
                    Smoothing::SmoothGradSq,
                    o,
                )
            },
        },
        Registered {
            name: "ig:vargrad",
            aliases: &[],
            build: |o| tunnel(Base::IntegratedGradients(ig_with(o)), Smoothing::VarGrad, o),
        },
        Registered {
            name: "gradient_shap",
            aliases: &["gradshap"],
            build: |o| {
                Box::new(GradientShap {
                    seed: o.seed,
                    ..Default::default()
                })
            },
        },
        Registered {
            name: "layer_ig",
            aliases: &["layer_integrated_gradients"],
            build: |o| {
                Box::new(layer::LayerIntegratedGradients {
                    layer: o.layer,
                    ig: ig_with(o),
                })
            },
        },
        Registered {
            name: "layer_grad_x_act",
            aliases: &["layer_gradient_x_activation"],
            build: |o| Box::new(layer::LayerGradientXActivation { layer: o.layer }),
        },
        Registered {
            name: "layer_conductance",
            aliases: &["conductance"],
            build: |o| {
                Box::new(layer::LayerConductance {
                    layer: o.layer,
                    ig: ig_with(o),
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
            name: "word_ablation",
            aliases: &["feature_ablation"],
            build: |_| Box::new(WordAblation::default()),
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
