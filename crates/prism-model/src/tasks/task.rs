//! One task on the shared encoder: its spec, its head under `prism.heads.<name>`, its tokenizer
//! settings, and the features (tokenised windows) it reads.

use super::{Example, TaskKind, TaskSpec};
use crate::error::{Error, Result};
use crate::heads::{SequenceHead, SpanHead, TokenHead};
use crate::nn::ParamBuilder;
use crate::{Encoded, EncoderInput, EncoderOutput, Mode, PrismTokenizer};
use candle_core::{Device, Tensor};

/// What one feature is trained towards (filled by prism-train from the example's labels;
/// `None` for prediction).
#[derive(Clone, Debug, PartialEq)]
pub enum FeatureTarget {
    Class(u32),
    Value(f32),
    /// Multi-label: 1 for each label that applies, 0 for the others.
    Labels(Vec<f32>),
    /// Start and end token of the answer in this window, or (0, 0) when it is not inside.
    Span(u32, u32),
    Tags(Vec<i64>),
    None,
}

/// One model input derived from an example (QA examples may give several windows).
#[derive(Clone, Debug)]
pub struct Feature {
    pub enc: Encoded,
    pub target: FeatureTarget,
    /// Index of the example it came from.
    pub example: usize,
    /// Token classification: the word each token came from.
    pub word_ids: Vec<Option<u32>>,
}

enum Head {
    Sequence(SequenceHead),
    Span(SpanHead),
    Token(TokenHead),
    /// ModernBERT's heads, of every kind (its prediction head, then one output layer).
    Modern(crate::heads::PredictionHead),
}

/// One task on the shared encoder: its spec, its head, and its tokenizer settings.
pub struct Task {
    pub spec: TaskSpec,
    head: Head,
    tokenizer: PrismTokenizer,
}

/// The shape of the encoder the heads sit on.
#[derive(Clone, Copy, Debug)]
pub struct HeadShape {
    pub hidden: usize,
    pub has_pooler: bool,
    /// New sequence heads read the pooler (BERT); the RoBERTa family's do not.
    pub pooler_head: bool,
    /// The activation of a sequence head's dense layer (GELU for ELECTRA, ReLU for
    /// DistilBERT, else tanh).
    pub dense_act: crate::heads::DenseAct,
    /// Dropout of sequence heads (DistilBERT's `seq_classif_dropout`, DeBERTa's
    /// `cls_dropout`, else `dropout`).
    pub seq_dropout: f64,
    /// A different dropout before a sequence head's dense layer (DeBERTa's ContextPooler:
    /// `pooler_dropout`); `None`: `seq_dropout` there too.
    pub pooler_dropout: Option<f64>,
    /// ModernBERT: every head is its prediction head and one output layer.
    pub modern: Option<crate::heads::PredictionSpec>,
    pub dropout: f64,
    /// Standard deviation of freshly initialised head weights (the config's
    /// `initializer_range`, as transformers' `_init_weights`).
    pub init_std: f64,
}

impl Task {
    /// Build the head under `prism.heads.<name>` (loaded when the checkpoint has it).
    pub(crate) fn new(
        spec: TaskSpec,
        root: &ParamBuilder,
        tokenizer: &PrismTokenizer,
        shape: HeadShape,
    ) -> Result<Self> {
        if spec.name.is_empty()
            || !spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Error::InvalidConfig(format!(
                "task name `{}` must be non-empty ASCII letters, digits, `_` or `-`",
                spec.name
            )));
        }
        let needs_labels = matches!(
            spec.kind,
            TaskKind::Classification | TaskKind::PairClassification | TaskKind::Token
        );
        if needs_labels && spec.labels.len() < 2 {
            return Err(Error::InvalidConfig(format!(
                "task `{}` needs at least two labels, has {:?}",
                spec.name, spec.labels
            )));
        }
        if spec.kind == TaskKind::MultiLabel && spec.labels.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "multi-label task `{}` needs at least one label",
                spec.name
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = spec.labels.iter().find(|l| !seen.insert(l.as_str())) {
            return Err(Error::InvalidConfig(format!(
                "task `{}`: label \"{dup}\" is listed twice",
                spec.name
            )));
        }
        match spec.threshold {
            Some(t) if spec.kind != TaskKind::MultiLabel => {
                return Err(Error::InvalidConfig(format!(
                    "task `{}`: `threshold` {t} applies to multi-label tasks only",
                    spec.name
                )))
            }
            Some(t) if !(t > 0.0 && t < 1.0) => {
                return Err(Error::InvalidConfig(format!(
                    "task `{}`: `threshold` {t} must be strictly between 0 and 1",
                    spec.name
                )))
            }
            _ => {}
        }
        if spec.max_length < 8 {
            return Err(Error::InvalidConfig(format!(
                "task `{}`: max_length {} is too small",
                spec.name, spec.max_length
            )));
        }
        let pb = root.pp("prism.heads").pp(&spec.name);
        let HeadShape {
            hidden,
            has_pooler,
            pooler_head,
            dense_act,
            seq_dropout,
            pooler_dropout,
            modern,
            dropout,
            init_std: std,
        } = shape;
        let head = match (modern, spec.kind) {
            (Some(m), kind) => {
                let (n, name) = match kind {
                    TaskKind::Qa => (2, "qa_outputs"),
                    TaskKind::Token => (spec.labels.len(), "classifier"),
                    TaskKind::Regression => (1, "out_proj"),
                    _ => (spec.labels.len(), "out_proj"),
                };
                let sequence = kind.is_sequence_level();
                Head::Modern(crate::heads::PredictionHead::load(
                    &pb, hidden, n, name, sequence, &m, std,
                )?)
            }
            (None, kind) => match kind {
                TaskKind::Classification | TaskKind::PairClassification => Head::Sequence(
                    SequenceHead::load(
                        &pb,
                        hidden,
                        spec.labels.len(),
                        seq_dropout,
                        has_pooler,
                        pooler_head,
                        dense_act,
                        std,
                    )?
                    .with_input_dropout(pooler_dropout),
                ),
                TaskKind::MultiLabel => Head::Sequence(
                    SequenceHead::load(
                        &pb,
                        hidden,
                        spec.labels.len(),
                        seq_dropout,
                        has_pooler,
                        pooler_head,
                        dense_act,
                        std,
                    )?
                    .with_input_dropout(pooler_dropout),
                ),
                TaskKind::Regression => Head::Sequence(
                    SequenceHead::load(
                        &pb,
                        hidden,
                        1,
                        seq_dropout,
                        has_pooler,
                        pooler_head,
                        dense_act,
                        std,
                    )?
                    .with_input_dropout(pooler_dropout),
                ),
                TaskKind::Qa => Head::Span(SpanHead::load(&pb, hidden, std)?),
                TaskKind::Token => Head::Token(TokenHead::load(
                    &pb,
                    hidden,
                    spec.labels.len(),
                    dropout,
                    std,
                )?),
            },
        };
        let tokenizer = tokenizer.with_max_len(spec.max_length)?;
        // The model's positions bound the length: what prism.json records is what is used.
        let mut spec = spec;
        let asked = spec.max_length;
        spec.max_length = spec.max_length.min(tokenizer.max_len());
        if spec.kind == TaskKind::Qa
            && super::question_budget(spec.max_length, spec.doc_stride, spec.max_question_length)
                .is_none()
        {
            return Err(Error::InvalidConfig(format!(
                "task `{}`: doc_stride {}{} leaves no room for a question in {}-token windows{} \
                 (a window holds {} special tokens, the question and more than doc_stride \
                 context tokens)",
                spec.name,
                spec.doc_stride,
                spec.max_question_length
                    .map_or(String::new(), |q| format!(" with max_question_length {q}")),
                spec.max_length,
                if asked > spec.max_length {
                    format!(" (max_length {asked}, cut to the model's positions)")
                } else {
                    String::new()
                },
                super::MAX_PAIR_SPECIAL_TOKENS
            )));
        }
        Ok(Self {
            spec,
            head,
            tokenizer,
        })
    }

    /// The tokenizer, truncating to the task's `max_length`.
    pub fn tokenizer(&self) -> &PrismTokenizer {
        &self.tokenizer
    }

    /// Tokenise examples into unlabelled features: one per example, or one per context window
    /// (`doc_stride` overlap) for QA.
    pub fn encode(&self, examples: &[Example]) -> Result<Vec<Feature>> {
        let mut out = Vec::with_capacity(examples.len());
        for (i, ex) in examples.iter().enumerate() {
            let feature = |enc, word_ids| Feature {
                enc,
                target: FeatureTarget::None,
                example: i,
                word_ids,
            };
            match self.spec.kind {
                TaskKind::Classification
                | TaskKind::PairClassification
                | TaskKind::Regression
                | TaskKind::MultiLabel => {
                    let enc = self.tokenizer.encode(&ex.text, ex.text_b.as_deref())?;
                    out.push(feature(enc, Vec::new()));
                }
                TaskKind::Qa => {
                    let context = ex.text_b.as_deref().unwrap_or_default();
                    let windows = self.tokenizer.encode_windows(
                        &ex.text,
                        context,
                        self.spec.doc_stride,
                        self.spec.question_budget(),
                    )?;
                    out.extend(windows.into_iter().map(|enc| feature(enc, Vec::new())));
                }
                TaskKind::Token => {
                    let (enc, word_ids) = self.tokenizer.encode_words(&ex.tokens)?;
                    out.push(feature(enc, word_ids));
                }
            }
        }
        Ok(out)
    }

    /// [`Task::encode`] for prediction and evaluation: a sequence-level example longer than
    /// `max_length` becomes one feature per overlapping window (`overlap` tokens shared by
    /// consecutive windows; default half a window) instead of being truncated, and
    /// [`Task::decode`] averages its windows' probabilities (regression: values). QA and token
    /// examples are encoded as by [`Task::encode`] (QA has its own `doc_stride` windows).
    pub fn encode_windowed(
        &self,
        examples: &[Example],
        overlap: Option<usize>,
    ) -> Result<Vec<Feature>> {
        if !self.spec.kind.is_sequence_level() {
            return self.encode(examples);
        }
        let mut out = Vec::with_capacity(examples.len());
        for (i, ex) in examples.iter().enumerate() {
            for enc in self
                .tokenizer
                .encode_long(&ex.text, ex.text_b.as_deref(), overlap)?
            {
                out.push(Feature {
                    enc,
                    target: FeatureTarget::None,
                    example: i,
                    word_ids: Vec::new(),
                });
            }
        }
        Ok(out)
    }

    /// Pad features into one encoder input (asking for the first position alone when the head
    /// reads only that).
    pub fn batch_input(&self, feats: &[&Feature], device: &Device) -> Result<EncoderInput> {
        let encs: Vec<Encoded> = feats.iter().map(|f| f.enc.clone()).collect();
        Ok(self
            .tokenizer
            .batch(&encs, device)?
            .with_first_token_only(self.reads_first_token_only()))
    }

    /// Whether the head reads only the encoder's first position (a sequence head on BERT or
    /// RoBERTa): its batches ask the encoder for that position alone
    /// ([`EncoderInput::first_token_only`]), which skips most of the last layer.
    pub fn reads_first_token_only(&self) -> bool {
        matches!(self.head, Head::Sequence(_))
    }

    /// The head's raw outputs: (B, n) for sequence tasks, (B, T, n) for tokens, and
    /// (B, T, 2) start/end stacked for QA.
    pub fn logits(&self, enc: &EncoderOutput, mode: &Mode) -> Result<Tensor> {
        Ok(match &self.head {
            Head::Sequence(h) => h.forward(enc, mode)?,
            Head::Token(h) => h.forward(enc, mode)?,
            Head::Span(h) => {
                let (s, e) = h.forward(enc)?;
                Tensor::stack(&[s, e], 2)?
            }
            // Already (B, n), (B, T, n), or (B, T, 2) start/end for QA.
            Head::Modern(h) => h.forward(enc, mode)?,
        })
    }
}
