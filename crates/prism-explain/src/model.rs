//! The explained function: one task head of a trained model, as a scalar F per input, computed
//! from word embeddings (gradient methods) or from token ids (perturbation methods), batched.

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, D};
use prism_model::tasks::{MultiTaskModel, TaskKind};
use prism_model::{
    embedding_gradients_with, Encoded, Encoder, EncoderInput, EncoderOutput, Mode, Probes,
};
use serde::{Deserialize, Serialize};

/// What output is explained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Target {
    /// The probability of a class (classification, NLI).
    Class { class: usize },
    /// The regression output.
    Value,
    /// The start logit of the answer at a token position (QA).
    AnswerStart { position: usize },
    /// The end logit of the answer at a token position (QA).
    AnswerEnd { position: usize },
    /// The probability of `tag` at token `position` (token classification).
    Tag { position: usize, tag: usize },
}

/// Which function of a class or tag score is explained (Captum's choice of forward function:
/// softmax, raw logits or log-softmax; for a multi-label head, the label's sigmoid, its logit
/// or log-sigmoid). Regression values and QA start/end logits are always explained raw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    #[default]
    Prob,
    Logit,
    LogProb,
}

impl Output {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "prob" | "probability" => Ok(Output::Prob),
            "logit" => Ok(Output::Logit),
            "log_prob" | "logprob" => Ok(Output::LogProb),
            other => Err(Error::Invalid(format!(
                "unknown output `{other}` (prob, logit, log_prob)"
            ))),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Output::Prob => "prob",
            Output::Logit => "logit",
            Output::LogProb => "log_prob",
        }
    }
}

/// A tokenised example ready to explain (a batch of one).
#[derive(Clone, Debug)]
pub struct ExplainInput {
    pub enc: Encoded,
    pub input: EncoderInput,
    pub texts: Vec<String>,
}

/// One task of a trained model, seen as the function to explain: F = output(target), or with a
/// foil F = output(target) − output(foil) (inseq's contrastive attribution).
pub struct ExplainModel<'a> {
    pub model: &'a MultiTaskModel,
    pub task: usize,
    /// What of a class or tag score F is (default: its probability, as before).
    pub output: Output,
    /// The contrasted class or tag (at the target's position), if any.
    pub foil: Option<Target>,
}

impl Target {
    /// The token position a tag or QA target names.
    pub fn position(&self) -> Option<usize> {
        match self {
            Target::Tag { position, .. }
            | Target::AnswerStart { position }
            | Target::AnswerEnd { position } => Some(*position),
            Target::Class { .. } | Target::Value => None,
        }
    }

    /// The same target at another token position (unchanged for sequence-level targets).
    pub fn at(&self, position: usize) -> Target {
        match *self {
            Target::Tag { tag, .. } => Target::Tag { position, tag },
            Target::AnswerStart { .. } => Target::AnswerStart { position },
            Target::AnswerEnd { .. } => Target::AnswerEnd { position },
            t => t,
        }
    }

    /// Whether the target's class or tag is below `n` labels and its position below `t` tokens.
    fn in_range(&self, n: usize, t: usize) -> bool {
        match self {
            Target::Class { class } => *class < n,
            Target::Tag { position, tag } => *position < t && *tag < n,
            Target::AnswerStart { position } | Target::AnswerEnd { position } => *position < t,
            Target::Value => true,
        }
    }
}

impl<'a> ExplainModel<'a> {
    /// The named task, or the only one.
    pub fn new(model: &'a MultiTaskModel, task: Option<&str>) -> Result<Self> {
        let task = match task {
            Some(t) => model.task_index(t)?,
            None if model.tasks.len() == 1 => 0,
            None => {
                let names: Vec<_> = model.tasks.iter().map(|t| t.spec.name.as_str()).collect();
                return Err(Error::Invalid(format!(
                    "the model has {} tasks; choose one ({})",
                    names.len(),
                    names.join(", ")
                )));
            }
        };
        Ok(Self {
            model,
            task,
            output: Output::Prob,
            foil: None,
        })
    }

    /// Explain `output` of the class or tag score instead of its probability.
    pub fn with_output(mut self, output: Output) -> Self {
        self.output = output;
        self
    }

    /// The foil of a contrastive explanation, by name, for `target`: a class (or label) name,
    /// or for a tag target a tag name (taken at the target's position) or `N:TAG`.
    pub fn parse_foil(&self, s: &str, target: &Target) -> Result<Target> {
        let foil = match target {
            Target::Tag { position, .. } if !s.contains(':') => {
                let tag = self.labels().iter().position(|l| l == s).ok_or_else(|| {
                    Error::Invalid(format!(
                        "unknown foil tag `{s}` (tags: {})",
                        self.labels().join(", ")
                    ))
                })?;
                Target::Tag {
                    position: *position,
                    tag,
                }
            }
            _ => self.parse_target(s)?,
        };
        Ok(foil)
    }

    /// Contrast the target with `foil` (checked against the target in [`ExplainModel::check`]).
    pub fn with_foil(mut self, foil: Option<Target>) -> Self {
        self.foil = foil;
        self
    }

    /// The output actually explained for `target`: `output` for class and tag targets, the raw
    /// value for regression and QA.
    pub fn output_for(&self, target: &Target) -> Output {
        match target {
            Target::Class { .. } | Target::Tag { .. } => self.output,
            _ => Output::Logit,
        }
    }

    pub fn kind(&self) -> TaskKind {
        self.model.tasks[self.task].spec.kind
    }

    /// A target by name: a class or tag name, `value` (regression), `start:N` / `end:N` (QA
    /// answer boundaries at token N), or `N:TAG` (the tag of token N).
    pub fn parse_target(&self, s: &str) -> Result<Target> {
        let bad = |m: String| Error::Invalid(m);
        if s == "value" {
            return Ok(Target::Value);
        }
        if let Some(p) = s.strip_prefix("start:") {
            let position = p
                .parse()
                .map_err(|_| bad(format!("target `{s}`: expected start:N")))?;
            return Ok(Target::AnswerStart { position });
        }
        if let Some(p) = s.strip_prefix("end:") {
            let position = p
                .parse()
                .map_err(|_| bad(format!("target `{s}`: expected end:N")))?;
            return Ok(Target::AnswerEnd { position });
        }
        if let Some((p, tag)) = s.split_once(':') {
            let position = p
                .parse()
                .map_err(|_| bad(format!("target `{s}`: expected N:TAG")))?;
            let tag = self.labels().iter().position(|l| l == tag).ok_or_else(|| {
                bad(format!(
                    "unknown tag `{tag}` (tags: {})",
                    self.labels().join(", ")
                ))
            })?;
            return Ok(Target::Tag { position, tag });
        }
        let class = self.labels().iter().position(|l| l == s).ok_or_else(|| {
            bad(format!(
                "unknown class `{s}` (classes: {})",
                self.labels().join(", ")
            ))
        })?;
        Ok(Target::Class { class })
    }

    pub fn labels(&self) -> &[String] {
        &self.model.tasks[self.task].spec.labels
    }

    pub fn device(&self) -> &Device {
        self.model.base.params.device()
    }

    /// The task's tokenizer (truncating, or windowing, at the task's `max_length`, as its
    /// predictions do).
    pub fn tokenizer(&self) -> Result<&prism_model::PrismTokenizer> {
        Ok(self.model.tasks[self.task].tokenizer())
    }

    /// Tokenise a text (or a pair) for this task, truncated to its `max_length`.
    pub fn encode(&self, text: &str, text2: Option<&str>) -> Result<ExplainInput> {
        let enc = self.tokenizer()?.encode(text, text2)?;
        self.input_of(enc, text, text2)
    }

    /// The model input for one encoding of `text` (and `text2`).
    pub fn input_of(&self, enc: Encoded, text: &str, text2: Option<&str>) -> Result<ExplainInput> {
        let input = self
            .tokenizer()?
            .batch(std::slice::from_ref(&enc), self.device())?
            .with_first_token_only(self.model.tasks[self.task].reads_first_token_only());
        let mut texts = vec![text.to_string()];
        texts.extend(text2.map(str::to_string));
        Ok(ExplainInput { enc, input, texts })
    }

    /// The target in words, with the output when it is not the probability and the foil when
    /// there is one, e.g. `class positive`, `class positive (logit) − class negative (logit)`.
    pub fn describe(&self, target: &Target) -> String {
        let one = |t: &Target| {
            if !matches!(t, Target::Class { .. } | Target::Tag { .. }) {
                // Regression values and QA logits are always explained raw.
                return self.describe_bare(t);
            }
            match self.output {
                Output::Prob if self.foil.is_none() => self.describe_bare(t),
                o => format!("{} ({})", self.describe_bare(t), o.name()),
            }
        };
        match &self.foil {
            Some(f) => format!("{} − {}", one(target), one(f)),
            None => one(target),
        }
    }

    fn describe_bare(&self, target: &Target) -> String {
        match target {
            Target::Class { class } if self.kind() == TaskKind::MultiLabel => {
                format!("label {}", self.labels().get(*class).map_or("?", |s| s))
            }
            Target::Class { class } => {
                format!("class {}", self.labels().get(*class).map_or("?", |s| s))
            }
            Target::Value => "regression value".into(),
            Target::AnswerStart { position } => format!("answer start at token {position}"),
            Target::AnswerEnd { position } => format!("answer end at token {position}"),
            Target::Tag { position, tag } => format!(
                "tag {} at token {position}",
                self.labels().get(*tag).map_or("?", |s| s)
            ),
        }
    }

    /// Check a target against the task and input.
    pub fn check(&self, target: &Target, input: &ExplainInput) -> Result<()> {
        let t = input.enc.ids.len();
        let n = self.labels().len();
        let ok = match (self.kind(), target) {
            (
                TaskKind::Classification | TaskKind::PairClassification | TaskKind::MultiLabel,
                Target::Class { class },
            ) => *class < n,
            (TaskKind::Regression, Target::Value) => true,
            (TaskKind::Qa, Target::AnswerStart { position } | Target::AnswerEnd { position }) => {
                *position < t
            }
            (TaskKind::Token, Target::Tag { position, tag }) => *position < t && *tag < n,
            _ => false,
        };
        if let Some(foil) = &self.foil {
            let same_place = match (target, foil) {
                (Target::Class { class: a }, Target::Class { class: b }) => a != b,
                (
                    Target::Tag {
                        position: p,
                        tag: a,
                    },
                    Target::Tag {
                        position: q,
                        tag: b,
                    },
                ) => p == q && a != b,
                _ => false,
            };
            if !same_place || !(foil.in_range(n, t)) {
                return Err(Error::Invalid(format!(
                    "foil {foil:?} must be another class of a class target, or another tag at \
                     the same token of a tag target (target {target:?})"
                )));
            }
        }
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "target {target:?} does not fit a {:?} task with {n} labels and {t} tokens",
                self.kind()
            )))
        }
    }

    /// F from the head's raw output (B, ...) for each row: (B).
    fn select(&self, logits: &Tensor, target: &Target) -> Result<Tensor> {
        let f = self.select_one(logits, target)?;
        match &self.foil {
            // A tag foil is at the target's token, wherever that token now is.
            Some(foil) => {
                let foil = target.position().map_or(*foil, |p| foil.at(p));
                Ok((f - self.select_one(logits, &foil)?)?)
            }
            None => Ok(f),
        }
    }

    /// A class's or tag's `output` from its row of scores (B, n): (B).
    fn class_output(&self, row: &Tensor, class: usize) -> Result<Tensor> {
        let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(1, class, 1)?.squeeze(1)?) };
        let x = pick(row)?;
        Ok(match (self.kind() == TaskKind::MultiLabel, self.output) {
            (_, Output::Logit) => x,
            // A multi-label head's probability of one label is its own sigmoid.
            (true, Output::Prob) => (x.neg()?.exp()? + 1.0)?.recip()?,
            // log σ(x) = min(x, 0) − log(1 + e^−|x|)
            (true, Output::LogProb) => {
                (x.minimum(0.0)? - (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?
            }
            (false, Output::Prob) => pick(&prism_model::ops::softmax_last_dim(row)?)?,
            (false, Output::LogProb) => {
                let max = row.max_keepdim(D::Minus1)?.detach();
                let shifted = row.broadcast_sub(&max)?;
                let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
                pick(&shifted.broadcast_sub(&lse)?)?
            }
        })
    }

    fn select_one(&self, logits: &Tensor, target: &Target) -> Result<Tensor> {
        Ok(match target {
            Target::Class { class } => self.class_output(logits, *class)?,
            Target::Value => logits.narrow(1, 0, 1)?.squeeze(1)?,
            Target::AnswerStart { position } => logits
                .narrow(1, *position, 1)?
                .squeeze(1)?
                .narrow(1, 0, 1)?
                .squeeze(1)?,
            Target::AnswerEnd { position } => logits
                .narrow(1, *position, 1)?
                .squeeze(1)?
                .narrow(1, 1, 1)?
                .squeeze(1)?,
            Target::Tag { position, tag } => {
                let row = logits.narrow(1, *position, 1)?.squeeze(1)?; // (B, n)
                self.class_output(&row, *tag)?
            }
        })
    }

    /// The input repeated `s` times along the batch.
    pub fn repeat(input: &EncoderInput, s: usize) -> Result<EncoderInput> {
        let rep = |t: &Tensor| -> Result<Tensor> { Ok(t.repeat((s, 1))?) };
        Ok(EncoderInput {
            input_ids: rep(&input.input_ids)?,
            attention_mask: rep(&input.attention_mask)?,
            token_type_ids: input.token_type_ids.as_ref().map(rep).transpose()?,
            output_hidden_states: false,
            output_attentions: false,
            first_token_only: input.first_token_only,
            probes: None,
        })
    }

    /// Word embeddings of the input (1, T, C).
    pub fn embeddings(&self, input: &ExplainInput) -> Result<Tensor> {
        Ok(self
            .model
            .base
            .encoder
            .word_embeddings(&input.input.input_ids)?
            .detach())
    }

    /// F and dF/d(embeddings) for each row of `embeds` (S, T, C), all rows of the same input.
    pub fn gradients(
        &self,
        embeds: &Tensor,
        input: &ExplainInput,
        target: &Target,
    ) -> Result<(Tensor, Vec<f32>)> {
        let s = embeds.dim(0)?;
        let rep = Self::repeat(&input.input, s)?;
        let head = &self.model.tasks[self.task];
        let mut f_vals = Vec::new();
        let g = embedding_gradients_with(
            &self.model.base.encoder,
            &rep,
            &Mode::Eval,
            Some(&embeds.detach()),
            false,
            |out| {
                let logits = head.logits(out, &Mode::Eval)?;
                let f = self.select(&logits, target)?;
                f_vals = f.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                Ok::<_, Error>(f.sum_all()?)
            },
        )?;
        Ok((g.grad, f_vals))
    }

    /// F for each row of `embeds` (S, T, C) run with `probes` (layer outputs replaced, taps,
    /// a head mask), the gradients of ΣF (of the probes' tensors among them) and the encoder's
    /// output, with every layer's hidden states when `hidden` is set.
    pub fn probed_with_output(
        &self,
        embeds: &Tensor,
        input: &ExplainInput,
        target: &Target,
        probes: Probes,
        hidden: bool,
    ) -> Result<(Vec<f32>, GradStore, EncoderOutput)> {
        let mut rep = Self::repeat(&input.input, embeds.dim(0)?)?;
        rep.output_hidden_states = hidden;
        rep.first_token_only = false;
        rep.probes = Some(probes);
        let out = self.model.base.encoder.forward_from_word_embeddings(
            &embeds.detach(),
            &rep,
            &Mode::Eval,
        )?;
        let logits = self.model.tasks[self.task].logits(&out, &Mode::Eval)?;
        let f = self.select(&logits, target)?;
        let vals = f.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let grads = f.sum_all()?.backward()?;
        Ok((vals, grads, out))
    }

    /// [`ExplainModel::probed_with_output`] without the output.
    pub fn probed(
        &self,
        embeds: &Tensor,
        input: &ExplainInput,
        target: &Target,
        probes: Probes,
        hidden: bool,
    ) -> Result<(Vec<f32>, GradStore)> {
        let (f, g, _) = self.probed_with_output(embeds, input, target, probes, hidden)?;
        Ok((f, g))
    }

    /// F for each row of `embeds` (S, T, C), no gradients.
    pub fn f_from_embeds(
        &self,
        embeds: &Tensor,
        input: &ExplainInput,
        target: &Target,
    ) -> Result<Vec<f32>> {
        let rep = Self::repeat(&input.input, embeds.dim(0)?)?;
        let out = self.model.base.encoder.forward_from_word_embeddings(
            &embeds.detach(),
            &rep,
            &Mode::Eval,
        )?;
        let logits = self.model.tasks[self.task].logits(&out, &Mode::Eval)?;
        Ok(self
            .select(&logits, target)?
            .detach()
            .to_dtype(DType::F32)?
            .to_vec1()?)
    }

    /// F for variants of the input whose token ids are `rows` (same length, same mask), in
    /// batches of `batch_size`.
    pub fn f_from_ids(
        &self,
        rows: &[Vec<u32>],
        input: &ExplainInput,
        target: &Target,
        batch_size: usize,
    ) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(rows.len());
        let t = input.enc.ids.len();
        for chunk in rows.chunks(batch_size.max(1)) {
            let flat: Vec<u32> = chunk.iter().flat_map(|r| r.iter().copied()).collect();
            let mut rep = Self::repeat(&input.input, chunk.len())?;
            rep.input_ids = Tensor::from_vec(flat, (chunk.len(), t), self.device())?;
            let enc = self.model.base.encoder.forward(&rep, &Mode::Eval)?;
            let logits = self.model.tasks[self.task].logits(&enc, &Mode::Eval)?;
            out.extend(
                self.select(&logits, target)?
                    .detach()
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(out)
    }

    /// F for an arbitrary (padded) batch of inputs. QA and tagging targets index positions, so
    /// they only make sense on inputs aligned with the original.
    pub fn f_from_input(&self, input: &EncoderInput, target: &Target) -> Result<Vec<f32>> {
        let enc = self.model.base.encoder.forward(input, &Mode::Eval)?;
        let logits = self.model.tasks[self.task].logits(&enc, &Mode::Eval)?;
        Ok(self
            .select(&logits, target)?
            .detach()
            .to_dtype(DType::F32)?
            .to_vec1()?)
    }

    /// F for each row of a padded batch, each row with its own target (position targets
    /// that moved when tokens were removed).
    pub fn f_from_input_each(&self, input: &EncoderInput, targets: &[Target]) -> Result<Vec<f32>> {
        let enc = self.model.base.encoder.forward(input, &Mode::Eval)?;
        let logits = self.model.tasks[self.task]
            .logits(&enc, &Mode::Eval)?
            .detach();
        targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Ok(self
                    .select(&logits.narrow(0, i, 1)?, t)?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?[0])
            })
            .collect()
    }

    /// The target a user most likely means: the predicted class (or tag at `position`), the
    /// regression value, or the predicted answer start.
    pub fn default_target(&self, input: &ExplainInput) -> Result<Target> {
        let enc = self.model.base.encoder.forward(&input.input, &Mode::Eval)?;
        let logits = self.model.tasks[self.task]
            .logits(&enc, &Mode::Eval)?
            .detach();
        Ok(match self.kind() {
            // Multi-label: the most probable label.
            TaskKind::Classification | TaskKind::PairClassification | TaskKind::MultiLabel => {
                Target::Class {
                    class: logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?[0] as usize,
                }
            }
            TaskKind::Regression => Target::Value,
            TaskKind::Qa => {
                // Best start among context tokens.
                let start: Vec<f32> = logits.narrow(2, 0, 1)?.flatten_all()?.to_vec1()?;
                let pos = (0..start.len())
                    .filter(|&j| input.enc.sequence_ids[j] == Some(1))
                    .max_by(|&a, &b| start[a].total_cmp(&start[b]))
                    .unwrap_or(0);
                Target::AnswerStart { position: pos }
            }
            TaskKind::Token => {
                let pos = (0..input.enc.ids.len())
                    .find(|&j| input.enc.sequence_ids[j].is_some())
                    .unwrap_or(0);
                let row: Vec<f32> = logits.narrow(1, pos, 1)?.flatten_all()?.to_vec1()?;
                let tag = (0..row.len())
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0);
                Target::Tag { position: pos, tag }
            }
        })
    }

    /// An [`crate::Attributions`] skeleton for this input.
    pub fn attributions(
        &self,
        input: &ExplainInput,
        method: &str,
        target: &Target,
        scores: Vec<f32>,
        output: f32,
        delta: Option<f32>,
    ) -> crate::Attributions {
        crate::Attributions {
            tokens: input.enc.tokens.clone(),
            offsets: input.enc.offsets.clone(),
            sequence_ids: input.enc.sequence_ids.clone(),
            scores,
            method: method.to_string(),
            target: self.describe(target),
            output,
            delta,
            output_kind: self.output_for(target),
            foil: self.foil.as_ref().map(|f| self.describe_bare(f)),
            windows: None,
        }
    }

    /// Token ids with every position where `keep` is false replaced by `replacement`; special
    /// tokens are always kept.
    pub fn masked_ids(input: &ExplainInput, keep: &[bool], replacement: u32) -> Vec<u32> {
        input
            .enc
            .ids
            .iter()
            .enumerate()
            .map(|(j, &id)| {
                if keep[j] || input.enc.special_tokens_mask[j] == 1 {
                    id
                } else {
                    replacement
                }
            })
            .collect()
    }

    /// Positions that perturbation methods may remove (not special tokens).
    pub fn features(input: &ExplainInput) -> Vec<usize> {
        (0..input.enc.ids.len())
            .filter(|&j| input.enc.special_tokens_mask[j] == 0)
            .collect()
    }

    /// The id used for removed tokens: `[MASK]`/`<mask>` when the vocabulary has one, else pad.
    pub fn mask_id(&self) -> Result<u32> {
        let tok = self.tokenizer()?;
        Ok(["[MASK]", "<mask>"]
            .iter()
            .find_map(|t| tok.token_to_id(t))
            .unwrap_or(tok.pad_id()))
    }
}
