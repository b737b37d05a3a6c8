//! Tasks on a shared encoder, as a saved prism model runs them: what each task kind predicts
//! (`TaskSpec`, saved in `prism.json`), the input records every kind reads (`Example`), the task
//! heads and their dispatch (`Task`), turning head outputs into predictions (labels, spans,
//! tags), and the multi-task model folder. Training (labels to targets, losses, metrics) builds
//! on this in prism-train.

mod decode;
mod multitask;
mod task;
pub mod transformers;

pub use decode::Prediction;
pub use multitask::{MultiTaskModel, PrismJson};
pub use task::{Feature, FeatureTarget, Task};

use serde::{Deserialize, Serialize};

/// What a task predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// One text -> one of `labels` (sentiment, topic).
    Classification,
    /// Two texts -> one of `labels` (NLI).
    PairClassification,
    /// One text (or a pair) -> a real value.
    Regression,
    /// One text (or a pair) -> any subset of `labels`: a sigmoid per label, trained with binary
    /// cross-entropy (transformers' `problem_type = "multi_label_classification"`).
    MultiLabel,
    /// Question + context -> an answer span (SQuAD).
    Qa,
    /// Pre-split words -> one tag each (BIO NER), labelled on each word's first sub-word.
    Token,
}

impl TaskKind {
    pub fn target_kind(&self) -> TargetKind {
        match self {
            TaskKind::Classification | TaskKind::PairClassification => TargetKind::Label,
            TaskKind::Regression => TargetKind::Value,
            TaskKind::MultiLabel => TargetKind::LabelSet,
            TaskKind::Qa => TargetKind::Answers,
            TaskKind::Token => TargetKind::Tags,
        }
    }

    pub fn is_pair(&self) -> bool {
        matches!(self, TaskKind::PairClassification | TaskKind::Qa)
    }

    /// Whether the task reads one output per sequence (its head sits on the first position),
    /// so that a second text, when given, is encoded as a pair (a transformers classifier
    /// fine-tuned on MNLI reads pairs although its config cannot say so).
    pub fn is_sequence_level(&self) -> bool {
        matches!(
            self,
            TaskKind::Classification
                | TaskKind::PairClassification
                | TaskKind::Regression
                | TaskKind::MultiLabel
        )
    }

    /// The metric early stopping and "best" checkpoints use unless told otherwise.
    pub fn main_metric(&self) -> &'static str {
        match self {
            TaskKind::Classification | TaskKind::PairClassification => "accuracy",
            TaskKind::Regression => "pearson",
            TaskKind::MultiLabel => "micro_f1",
            TaskKind::Qa => "f1",
            TaskKind::Token => "f1",
        }
    }
}

fn d_max_length() -> usize {
    128
}
fn d_stride() -> usize {
    64
}

/// A task as saved in `prism.json` beside the model, so that `prism predict` needs nothing else.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskSpec {
    pub name: String,
    pub kind: TaskKind,
    /// Class names (classification) or tags (token classification), in output order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default = "d_max_length")]
    pub max_length: usize,
    /// QA: overlap between context windows, in tokens.
    #[serde(default = "d_stride")]
    pub doc_stride: usize,
    /// QA: questions are cut to this many tokens (transformers' `max_query_length`); when
    /// absent, [`question_budget`]'s default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_question_length: Option<usize>,
    /// Multi-label: a label is predicted when its probability is at least this (0.5 when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

/// The most special tokens any supported family adds around a question + context pair
/// (RoBERTa's `<s> q </s></s> c </s>`).
pub const MAX_PAIR_SPECIAL_TOKENS: usize = 4;

/// The tokens a QA question may take in a `max_length`-token window whose context windows
/// overlap by `doc_stride`: `explicit` when given, else transformers' `max_query_length` of 64
/// or less, so that the context always keeps more than `doc_stride` tokens. `None` when no
/// question can fit (`doc_stride` too close to `max_length`) or `explicit` leaves the context
/// no more than `doc_stride` tokens.
pub fn question_budget(
    max_length: usize,
    doc_stride: usize,
    explicit: Option<usize>,
) -> Option<usize> {
    // The context needs room > doc_stride after the question and the special tokens.
    let most = max_length.checked_sub(MAX_PAIR_SPECIAL_TOKENS + doc_stride + 1)?;
    match explicit {
        Some(q) if q >= 1 && q <= most => Some(q),
        Some(_) => None,
        None if most >= 1 => Some(most.min(64)),
        None => None,
    }
}

impl TaskSpec {
    /// QA: the question's token budget ([`question_budget`]); at least 1 token, so a spec
    /// whose values leave no room still encodes (the tokenizer then names the problem).
    pub fn question_budget(&self) -> usize {
        question_budget(self.max_length, self.doc_stride, self.max_question_length)
            .or(self.max_question_length)
            .unwrap_or(1)
            .max(1)
    }

    /// The multi-label decision threshold.
    pub fn threshold(&self) -> f64 {
        self.threshold.unwrap_or(0.5)
    }
}

/// One answer of an extractive QA example: its text and character offset in the context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub start: usize,
}

/// What an example is labelled with.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// A class name (classification, NLI).
    Label(String),
    /// The labels that apply (multi-label; may be empty).
    Labels(Vec<String>),
    /// A real value (regression).
    Value(f64),
    /// Answers in `text_b`, the context (QA); empty for unanswerable or unlabelled.
    Answers(Vec<Answer>),
    /// One tag per pre-split token (token classification).
    Tags(Vec<String>),
    /// Unlabelled (prediction, or unlabelled target-domain text).
    None,
}

/// What shape of target a task kind reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Label,
    /// A list of labels (multi-label).
    LabelSet,
    Value,
    Answers,
    Tags,
}

/// One example. For QA, `text` is the question and `text_b` the context; for token
/// classification, `tokens` holds the words.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// 1-based line (JSONL/CSV) or question index (SQuAD) it came from, for error messages.
    pub line: usize,
    pub id: Option<String>,
    pub text: String,
    pub text_b: Option<String>,
    pub tokens: Vec<String>,
    pub target: Target,
}

impl Example {
    /// An unlabelled input of a task of kind `kind`: a text, or a pair for pair tasks and,
    /// when `text2` is given, for every sequence-level task; words split on whitespace for
    /// tagging.
    pub fn unlabelled(kind: TaskKind, text: &str, text2: Option<&str>) -> Self {
        Example {
            line: 1,
            id: None,
            text: text.to_string(),
            text_b: if kind.is_pair() || kind.is_sequence_level() {
                text2.map(str::to_string)
            } else {
                None
            },
            tokens: if kind == TaskKind::Token {
                text.split_whitespace().map(str::to_string).collect()
            } else {
                Vec::new()
            },
            target: Target::None,
        }
    }
}
