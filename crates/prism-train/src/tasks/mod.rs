//! Task kinds: how each turns examples into features, which head it puts on the shared encoder,
//! its loss, its predictions and its metrics.

pub mod metrics;

use crate::data::{Example, Target, TargetKind};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use prism_model::heads::{SequenceHead, SpanHead, TokenHead};
use prism_model::nn::ParamBuilder;
use prism_model::{Encoded, EncoderInput, EncoderOutput, Mode, PrismTokenizer};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
            TaskKind::Qa => TargetKind::Answers,
            TaskKind::Token => TargetKind::Tags,
        }
    }

    pub fn is_pair(&self) -> bool {
        matches!(self, TaskKind::PairClassification | TaskKind::Qa)
    }

    /// The metric early stopping and "best" checkpoints use unless told otherwise.
    pub fn main_metric(&self) -> &'static str {
        match self {
            TaskKind::Classification | TaskKind::PairClassification => "accuracy",
            TaskKind::Regression => "pearson",
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
}

/// A label id for the token-classification loss to skip (sub-words after the first, specials).
const IGNORE: i64 = -100;
/// Longest answer QA decoding considers, in tokens (as transformers' run_qa default).
const MAX_ANSWER_TOKENS: usize = 30;

/// What one feature is trained towards.
#[derive(Clone, Debug, PartialEq)]
pub enum FeatureTarget {
    Class(u32),
    Value(f32),
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

/// A padded batch of features with its targets.
pub struct Batch {
    pub input: EncoderInput,
    pub targets: BatchTargets,
}

pub enum BatchTargets {
    Classes(Tensor),
    Values(Tensor),
    Spans(Tensor, Tensor),
    Tags(Tensor),
    None,
}

enum Head {
    Sequence(SequenceHead),
    Span(SpanHead),
    Token(TokenHead),
}

/// One task on the shared encoder: its spec, its head, and its tokenizer settings.
pub struct Task {
    pub spec: TaskSpec,
    head: Head,
    tokenizer: PrismTokenizer,
    /// The classification training loss (cross-entropy unless configured).
    pub loss_config: crate::loss::LossConfig,
    /// Adversarial training or consistency regularisation, when configured.
    pub adversarial: Option<crate::loss::AdversarialConfig>,
}

/// What a task predicts for one example.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Prediction {
    Class {
        label: String,
        probabilities: BTreeMap<String, f32>,
    },
    Value {
        value: f32,
    },
    Span {
        answer: String,
        start: usize,
        end: usize,
        score: f32,
    },
    Tags {
        tags: Vec<String>,
    },
}

/// Metrics on a data set plus, for classification, the confusion matrix (`[gold][pred]`).
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct EvalResult {
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<usize>>>,
    pub examples: usize,
}

impl Task {
    /// Build the head under `prism.heads.<name>` (loaded when the checkpoint has it).
    pub fn new(
        spec: TaskSpec,
        root: &ParamBuilder,
        tokenizer: &PrismTokenizer,
        hidden: usize,
        has_pooler: bool,
        dropout: f64,
    ) -> Result<Self> {
        if spec.name.is_empty()
            || !spec
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(Error::Config(format!(
                "task name `{}` must be non-empty ASCII letters, digits, `_` or `-`",
                spec.name
            )));
        }
        let needs_labels = matches!(
            spec.kind,
            TaskKind::Classification | TaskKind::PairClassification | TaskKind::Token
        );
        if needs_labels && spec.labels.len() < 2 {
            return Err(Error::Config(format!(
                "task `{}` needs at least two labels, has {:?}",
                spec.name, spec.labels
            )));
        }
        if spec.max_length < 8 {
            return Err(Error::Config(format!(
                "task `{}`: max_length {} is too small",
                spec.name, spec.max_length
            )));
        }
        let pb = root.pp("prism.heads").pp(&spec.name);
        let std = 0.02;
        let head = match spec.kind {
            TaskKind::Classification | TaskKind::PairClassification => Head::Sequence(
                SequenceHead::load(&pb, hidden, spec.labels.len(), dropout, has_pooler, std)?,
            ),
            TaskKind::Regression => Head::Sequence(SequenceHead::load(
                &pb, hidden, 1, dropout, has_pooler, std,
            )?),
            TaskKind::Qa => Head::Span(SpanHead::load(&pb, hidden, std)?),
            TaskKind::Token => Head::Token(TokenHead::load(
                &pb,
                hidden,
                spec.labels.len(),
                dropout,
                std,
            )?),
        };
        let tokenizer = tokenizer.with_max_len(spec.max_length)?;
        Ok(Self {
            spec,
            head,
            tokenizer,
            loss_config: Default::default(),
            adversarial: None,
        })
    }

    fn label_id(
        &self,
        label: &str,
        ex: &Example,
        path: &std::path::Path,
        field: &str,
    ) -> Result<u32> {
        self.spec
            .labels
            .iter()
            .position(|l| l == label)
            .map(|i| i as u32)
            .ok_or_else(|| {
                Error::data(
                    path,
                    ex.line,
                    field,
                    format!(
                        "unknown label \"{label}\" for task `{}` (labels: {})",
                        self.spec.name,
                        self.spec.labels.join(", ")
                    ),
                )
            })
    }

    /// Turn examples into features. `path` names the file for error messages.
    pub fn featurize(&self, examples: &[Example], path: &std::path::Path) -> Result<Vec<Feature>> {
        let mut out = Vec::with_capacity(examples.len());
        for (i, ex) in examples.iter().enumerate() {
            match self.spec.kind {
                TaskKind::Classification | TaskKind::PairClassification | TaskKind::Regression => {
                    let enc = self.tokenizer.encode(&ex.text, ex.text_b.as_deref())?;
                    let target = match (&ex.target, self.spec.kind) {
                        (
                            Target::Label(l),
                            TaskKind::Classification | TaskKind::PairClassification,
                        ) => FeatureTarget::Class(self.label_id(l, ex, path, "label")?),
                        (Target::Value(v), TaskKind::Regression) => FeatureTarget::Value(*v as f32),
                        _ => FeatureTarget::None,
                    };
                    out.push(Feature {
                        enc,
                        target,
                        example: i,
                        word_ids: Vec::new(),
                    });
                }
                TaskKind::Qa => {
                    let context = ex.text_b.as_deref().unwrap_or_default();
                    let windows =
                        self.tokenizer
                            .encode_windows(&ex.text, context, self.spec.doc_stride)?;
                    let answer = match &ex.target {
                        Target::Answers(a) if !a.is_empty() => Some(&a[0]),
                        _ => None,
                    };
                    for enc in windows {
                        let target = match answer {
                            Some(a) => {
                                let start_c = a.start;
                                let end_c = a.start + a.text.chars().count();
                                let span = answer_tokens(&enc, start_c, end_c).unwrap_or((0, 0));
                                FeatureTarget::Span(span.0 as u32, span.1 as u32)
                            }
                            None => FeatureTarget::None,
                        };
                        out.push(Feature {
                            enc,
                            target,
                            example: i,
                            word_ids: Vec::new(),
                        });
                    }
                }
                TaskKind::Token => {
                    let (enc, word_ids) = self.tokenizer.encode_words(&ex.tokens)?;
                    let target = match &ex.target {
                        Target::Tags(tags) => {
                            let ids: Vec<u32> = tags
                                .iter()
                                .map(|t| self.label_id(t, ex, path, "tags"))
                                .collect::<Result<_>>()?;
                            let mut prev = None;
                            let labels = word_ids
                                .iter()
                                .map(|w| {
                                    let l = match w {
                                        Some(w) if Some(*w) != prev => {
                                            ids.get(*w as usize).map_or(IGNORE, |&x| x as i64)
                                        }
                                        _ => IGNORE,
                                    };
                                    prev = *w;
                                    l
                                })
                                .collect();
                            FeatureTarget::Tags(labels)
                        }
                        _ => FeatureTarget::None,
                    };
                    out.push(Feature {
                        enc,
                        target,
                        example: i,
                        word_ids,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Pad features into a batch.
    pub fn batch(&self, feats: &[&Feature], device: &Device) -> Result<Batch> {
        let encs: Vec<Encoded> = feats.iter().map(|f| f.enc.clone()).collect();
        let input = self
            .tokenizer
            .batch(&encs, device)?
            .with_first_token_only(self.reads_first_token_only());
        let t = input.input_ids.dim(1)?;
        let all_labelled = feats.iter().all(|f| f.target != FeatureTarget::None);
        let targets = if !all_labelled {
            BatchTargets::None
        } else {
            match self.spec.kind {
                TaskKind::Classification | TaskKind::PairClassification => {
                    let v: Vec<u32> = feats
                        .iter()
                        .map(|f| {
                            if let FeatureTarget::Class(c) = f.target {
                                c
                            } else {
                                0
                            }
                        })
                        .collect();
                    BatchTargets::Classes(Tensor::new(v, device)?)
                }
                TaskKind::Regression => {
                    let v: Vec<f32> = feats
                        .iter()
                        .map(|f| {
                            if let FeatureTarget::Value(x) = f.target {
                                x
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    BatchTargets::Values(Tensor::new(v, device)?)
                }
                TaskKind::Qa => {
                    let (s, e): (Vec<u32>, Vec<u32>) = feats
                        .iter()
                        .map(|f| {
                            if let FeatureTarget::Span(s, e) = f.target {
                                (s, e)
                            } else {
                                (0, 0)
                            }
                        })
                        .unzip();
                    BatchTargets::Spans(Tensor::new(s, device)?, Tensor::new(e, device)?)
                }
                TaskKind::Token => {
                    let mut v = vec![IGNORE; feats.len() * t];
                    for (i, f) in feats.iter().enumerate() {
                        if let FeatureTarget::Tags(tags) = &f.target {
                            for (j, &tag) in tags.iter().enumerate() {
                                v[i * t + j] = tag;
                            }
                        }
                    }
                    BatchTargets::Tags(Tensor::from_vec(v, (feats.len(), t), device)?)
                }
            }
        };
        Ok(Batch { input, targets })
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
        })
    }

    /// The training loss of a batch (mean over examples, or tokens for tagging).
    pub fn loss(&self, enc: &EncoderOutput, batch: &Batch, mode: &Mode) -> Result<Tensor> {
        let logits = self.logits(enc, mode)?;
        self.loss_from_logits(&logits, batch)
    }

    /// The loss of the head's output [`Task::logits`] for a batch.
    pub fn loss_from_logits(&self, logits: &Tensor, batch: &Batch) -> Result<Tensor> {
        Ok(match &batch.targets {
            BatchTargets::Classes(y) => self.loss_config.loss(logits, y)?,
            BatchTargets::Values(y) => (logits.squeeze(1)? - y)?.sqr()?.mean_all()?,
            BatchTargets::Spans(s, e) => {
                // Padding positions are excluded from the softmax, as transformers does implicitly
                // by their near-zero logits; here they are masked exactly.
                let mask = prism_model::models::bert::additive_mask(&batch.input.attention_mask)?;
                let start = logits.narrow(2, 0, 1)?.squeeze(2)?.broadcast_add(&mask)?;
                let end = logits.narrow(2, 1, 1)?.squeeze(2)?.broadcast_add(&mask)?;
                ((cross_entropy(&start, s)? + cross_entropy(&end, e)?)? * 0.5)?
            }
            BatchTargets::Tags(y) => {
                let (b, t, n) = logits.dims3()?;
                masked_cross_entropy(&logits.reshape((b * t, n))?, &y.flatten_all()?)?
            }
            BatchTargets::None => {
                return Err(Error::Config(format!(
                    "task `{}`: batch has unlabelled examples",
                    self.spec.name
                )))
            }
        })
    }

    /// A symmetric divergence between two outputs of the head, for SMART and R-Drop:
    /// symmetric KL for classification, squared difference for regression.
    pub fn divergence(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        match self.spec.kind {
            TaskKind::Classification | TaskKind::PairClassification => {
                crate::loss::symmetric_kl(a, b)
            }
            TaskKind::Regression => Ok((a - b)?.sqr()?.mean_all()?),
            other => Err(Error::Config(format!(
                "task `{}`: SMART and R-Drop need a sequence-level output, not {other:?}",
                self.spec.name
            ))),
        }
    }

    /// Predictions for `examples` (features must come from [`Task::featurize`] of the same
    /// examples), computed with `forward` in batches.
    pub fn predict<F>(
        &self,
        examples: &[Example],
        feats: &[Feature],
        batch_size: usize,
        device: &Device,
        forward: F,
    ) -> Result<Vec<Prediction>>
    where
        F: Fn(&EncoderInput) -> Result<EncoderOutput>,
    {
        let mut logits_per_feature: Vec<Tensor> = Vec::with_capacity(feats.len());
        for chunk in feats.chunks(batch_size.max(1)) {
            let refs: Vec<&Feature> = chunk.iter().collect();
            let b = self.batch(&refs, device)?;
            let out = forward(&b.input)?;
            // Detached: a kept tensor would otherwise keep its whole forward graph alive.
            let logits = self
                .logits(&out, &Mode::Eval)?
                .detach()
                .to_device(&Device::Cpu)?;
            for i in 0..chunk.len() {
                logits_per_feature.push(logits.get(i)?);
            }
        }
        match self.spec.kind {
            TaskKind::Classification | TaskKind::PairClassification => logits_per_feature
                .iter()
                .map(|l| {
                    let p: Vec<f32> = prism_model::ops::softmax_last_dim(l)?.to_vec1()?;
                    let best = argmax(&p);
                    Ok(Prediction::Class {
                        label: self.spec.labels[best].clone(),
                        probabilities: self.spec.labels.iter().cloned().zip(p).collect(),
                    })
                })
                .collect(),
            TaskKind::Regression => logits_per_feature
                .iter()
                .map(|l| {
                    Ok(Prediction::Value {
                        value: l.to_vec1::<f32>()?[0],
                    })
                })
                .collect(),
            TaskKind::Token => feats
                .iter()
                .zip(&logits_per_feature)
                .map(|(f, l)| {
                    let rows: Vec<Vec<f32>> = l.to_vec2()?;
                    let n_words = examples[f.example].tokens.len();
                    let mut tags = vec![self.spec.labels[0].clone(); n_words];
                    let mut prev = None;
                    for (j, w) in f.word_ids.iter().enumerate() {
                        if let Some(w) = w {
                            if Some(*w) != prev && (*w as usize) < n_words && j < rows.len() {
                                tags[*w as usize] = self.spec.labels[argmax(&rows[j])].clone();
                            }
                        }
                        prev = *w;
                    }
                    Ok(Prediction::Tags { tags })
                })
                .collect(),
            TaskKind::Qa => {
                let mut best: Vec<Option<(f32, usize, usize)>> = vec![None; examples.len()];
                for (f, l) in feats.iter().zip(&logits_per_feature) {
                    let rows: Vec<Vec<f32>> = l.to_vec2()?; // (T, 2)
                    let ctx: Vec<usize> = (0..f.enc.ids.len())
                        .filter(|&j| f.enc.sequence_ids[j] == Some(1))
                        .collect();
                    for &s in &ctx {
                        for &e in ctx.iter().filter(|&&e| e >= s && e < s + MAX_ANSWER_TOKENS) {
                            let score = rows[s][0] + rows[e][1];
                            let (cs, ce) = (f.enc.offsets[s].0, f.enc.offsets[e].1);
                            if best[f.example].is_none_or(|b| score > b.0) {
                                best[f.example] = Some((score, cs, ce));
                            }
                        }
                    }
                }
                Ok(examples
                    .iter()
                    .zip(best)
                    .map(|(ex, b)| {
                        let (score, s, e) = b.unwrap_or((f32::NEG_INFINITY, 0, 0));
                        let answer: String = ex
                            .text_b
                            .as_deref()
                            .unwrap_or_default()
                            .chars()
                            .skip(s)
                            .take(e.saturating_sub(s))
                            .collect();
                        Prediction::Span {
                            answer,
                            start: s,
                            end: e,
                            score,
                        }
                    })
                    .collect())
            }
        }
    }

    /// Metrics of predictions against the examples' targets.
    pub fn score(&self, examples: &[Example], preds: &[Prediction]) -> EvalResult {
        let mut r = EvalResult {
            examples: examples.len(),
            ..Default::default()
        };
        match self.spec.kind {
            TaskKind::Classification | TaskKind::PairClassification => {
                let mut gold = Vec::new();
                let mut pred = Vec::new();
                for (ex, p) in examples.iter().zip(preds) {
                    if let (Target::Label(g), Prediction::Class { label, .. }) = (&ex.target, p) {
                        if let Some(gi) = self.spec.labels.iter().position(|l| l == g) {
                            gold.push(gi);
                            pred.push(
                                self.spec
                                    .labels
                                    .iter()
                                    .position(|l| l == label)
                                    .unwrap_or(0),
                            );
                        }
                    }
                }
                let n = self.spec.labels.len();
                r.metrics
                    .insert("accuracy".into(), metrics::accuracy(&pred, &gold));
                r.metrics
                    .insert("macro_f1".into(), metrics::macro_f1(&pred, &gold, n));
                r.metrics
                    .insert("mcc".into(), metrics::mcc(&pred, &gold, n));
                r.confusion = Some(metrics::confusion(&pred, &gold, n));
            }
            TaskKind::Regression => {
                let (gold, pred): (Vec<f64>, Vec<f64>) = examples
                    .iter()
                    .zip(preds)
                    .filter_map(|(ex, p)| match (&ex.target, p) {
                        (Target::Value(g), Prediction::Value { value }) => {
                            Some((*g, *value as f64))
                        }
                        _ => None,
                    })
                    .unzip();
                r.metrics
                    .insert("pearson".into(), metrics::pearson(&pred, &gold));
                r.metrics
                    .insert("spearman".into(), metrics::spearman(&pred, &gold));
                let mse = gold
                    .iter()
                    .zip(&pred)
                    .map(|(g, p)| (g - p).powi(2))
                    .sum::<f64>()
                    / gold.len().max(1) as f64;
                r.metrics.insert("mse".into(), mse);
            }
            TaskKind::Qa => {
                let (mut em, mut f1, mut n) = (0.0, 0.0, 0usize);
                for (ex, p) in examples.iter().zip(preds) {
                    if let (Target::Answers(golds), Prediction::Span { answer, .. }) =
                        (&ex.target, p)
                    {
                        if golds.is_empty() {
                            continue;
                        }
                        let texts: Vec<String> = golds.iter().map(|a| a.text.clone()).collect();
                        let (e, f) = metrics::squad_scores(answer, &texts);
                        em += e;
                        f1 += f;
                        n += 1;
                    }
                }
                r.metrics
                    .insert("exact_match".into(), 100.0 * em / n.max(1) as f64);
                r.metrics.insert("f1".into(), 100.0 * f1 / n.max(1) as f64);
            }
            TaskKind::Token => {
                let mut gold = Vec::new();
                let mut pred = Vec::new();
                for (ex, p) in examples.iter().zip(preds) {
                    if let (Target::Tags(g), Prediction::Tags { tags }) = (&ex.target, p) {
                        gold.push(g.clone());
                        pred.push(tags.clone());
                    }
                }
                let (p, rc, f) = metrics::entity_prf(&pred, &gold);
                let flat_g: Vec<usize> = gold
                    .iter()
                    .flatten()
                    .map(|t| self.spec.labels.iter().position(|l| l == t).unwrap_or(0))
                    .collect();
                let flat_p: Vec<usize> = pred
                    .iter()
                    .flatten()
                    .map(|t| self.spec.labels.iter().position(|l| l == t).unwrap_or(0))
                    .collect();
                r.metrics.insert("precision".into(), p);
                r.metrics.insert("recall".into(), rc);
                r.metrics.insert("f1".into(), f);
                r.metrics
                    .insert("token_accuracy".into(), metrics::accuracy(&flat_p, &flat_g));
            }
        }
        r
    }
}

/// Token span `(start, end)` (inclusive) covering characters `[start_c, end_c)` of the context
/// in this window, if the whole answer is inside it.
fn answer_tokens(enc: &Encoded, start_c: usize, end_c: usize) -> Option<(usize, usize)> {
    let ctx: Vec<usize> = (0..enc.ids.len())
        .filter(|&j| enc.sequence_ids[j] == Some(1))
        .collect();
    let (&first, &last) = (ctx.first()?, ctx.last()?);
    if enc.offsets[first].0 > start_c || enc.offsets[last].1 < end_c {
        return None;
    }
    let s = ctx.iter().copied().find(|&j| enc.offsets[j].1 > start_c)?;
    let e = ctx
        .iter()
        .copied()
        .rev()
        .find(|&j| enc.offsets[j].0 < end_c)?;
    (s <= e).then_some((s, e))
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Mean cross-entropy of logits (N, K) against class ids (N), as one fused op
/// ([`prism_model::ops::cross_entropy_rows`]).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t: Vec<i64> = targets.to_dtype(DType::I64)?.to_vec1()?;
    if let Some(&bad) = t.iter().find(|&&x| x < 0) {
        return Err(
            candle_core::Error::Msg(format!("cross-entropy: class id {bad} is negative")).into(),
        );
    }
    Ok(prism_model::ops::cross_entropy_rows(logits, &t)?.mean_all()?)
}

/// Cross-entropy over rows whose target is not [`IGNORE`], averaged over those rows.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t: Vec<i64> = targets.to_dtype(DType::I64)?.to_vec1()?;
    if let Some(&bad) = t.iter().find(|&&x| x < 0 && x != IGNORE) {
        return Err(
            candle_core::Error::Msg(format!("cross-entropy: class id {bad} is negative")).into(),
        );
    }
    let count = t.iter().filter(|&&x| x != IGNORE).count().max(1);
    let rows = prism_model::ops::cross_entropy_rows(logits, &t)?; // (N), 0 where ignored
    Ok((rows.sum_all()? * (1.0 / count as f64))?)
}

/// log-softmax over the last dimension, built from ops that all have a backward pass.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_entropy_matches_a_hand_computation() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, 0.0, 3.0]], &dev).unwrap();
        let y = Tensor::new(&[1u32, 0], &dev).unwrap();
        let l: f32 = cross_entropy(&logits, &y).unwrap().to_scalar().unwrap();
        let lse1 = (1f32.exp() + 2f32.exp() + 0.5f32.exp()).ln();
        let lse2 = (1.0 + 1.0 + 3f32.exp()).ln();
        let want = ((lse1 - 2.0) + (lse2 - 0.0)) / 2.0;
        assert!((l - want).abs() < 1e-6);
        let m: f32 = masked_cross_entropy(&logits, &Tensor::new(&[1i64, -100], &dev).unwrap())
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((m - (lse1 - 2.0)).abs() < 1e-6);
    }

    #[test]
    fn answer_tokens_cover_the_answer() {
        let enc = Encoded {
            tokens: vec![
                "[CLS]".into(),
                "who".into(),
                "[SEP]".into(),
                "denver".into(),
                "won".into(),
                "[SEP]".into(),
            ],
            ids: vec![0; 6],
            type_ids: vec![0, 0, 0, 1, 1, 1],
            offsets: vec![(0, 0), (0, 3), (0, 0), (0, 6), (7, 10), (0, 0)],
            sequence_ids: vec![None, Some(0), None, Some(1), Some(1), None],
            special_tokens_mask: vec![1, 0, 1, 0, 0, 1],
            truncated: false,
        };
        assert_eq!(answer_tokens(&enc, 0, 6), Some((3, 3)));
        assert_eq!(answer_tokens(&enc, 0, 10), Some((3, 4)));
        assert_eq!(answer_tokens(&enc, 20, 25), None);
    }
}
