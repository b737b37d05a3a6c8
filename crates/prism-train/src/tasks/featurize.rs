//! Labels to training targets, padded batches and each task kind's loss.

use super::{Feature, FeatureTarget, Supervised, Task, TaskKind};
use crate::error::{Error, Result};
use crate::loss::{
    binary_cross_entropy_with_logits, cross_entropy, masked_cross_entropy, LossConfig, IGNORE,
};
use candle_core::{Device, Tensor};
use prism_model::tasks::{Example, Prediction, Target};
use prism_model::{Encoded, EncoderInput, EncoderOutput, Mode};
use std::path::Path;

/// A padded batch of features with its targets.
pub struct Batch {
    pub input: EncoderInput,
    pub targets: BatchTargets,
}

pub enum BatchTargets {
    Classes(Tensor),
    Values(Tensor),
    /// Multi-label: (B, labels), 1 where a label applies.
    MultiHot(Tensor),
    Spans(Tensor, Tensor),
    Tags(Tensor),
    None,
}

fn label_id(task: &Task, label: &str, ex: &Example, path: &Path, field: &str) -> Result<u32> {
    let labels = &task.spec.labels;
    labels
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
                    task.spec.name,
                    labels.join(", ")
                ),
            )
        })
}

/// The training target of one feature of `ex`.
fn target_of(task: &Task, ex: &Example, f: &Feature, path: &Path) -> Result<FeatureTarget> {
    Ok(match (&ex.target, task.spec.kind) {
        (Target::Label(l), TaskKind::Classification | TaskKind::PairClassification) => {
            FeatureTarget::Class(label_id(task, l, ex, path, "label")?)
        }
        (Target::Value(v), TaskKind::Regression) => FeatureTarget::Value(*v as f32),
        (Target::Labels(ls), TaskKind::MultiLabel) => {
            let mut hot = vec![0.0f32; task.spec.labels.len()];
            for l in ls {
                hot[label_id(task, l, ex, path, "label")? as usize] = 1.0;
            }
            FeatureTarget::Labels(hot)
        }
        (Target::Answers(a), TaskKind::Qa) if !a.is_empty() => {
            let start_c = a[0].start;
            let end_c = start_c + a[0].text.chars().count();
            let span = answer_tokens(&f.enc, start_c, end_c).unwrap_or((0, 0));
            FeatureTarget::Span(span.0 as u32, span.1 as u32)
        }
        (Target::Tags(tags), TaskKind::Token) => {
            let ids: Vec<u32> = tags
                .iter()
                .map(|t| label_id(task, t, ex, path, "tags"))
                .collect::<Result<_>>()?;
            // Each word's first sub-word carries its tag; the rest and the specials are ignored.
            let mut prev = None;
            let labels = f
                .word_ids
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
    })
}

impl Supervised for Task {
    fn featurize(&self, examples: &[Example], path: &Path) -> Result<Vec<Feature>> {
        let mut feats = self.encode(examples)?;
        for f in &mut feats {
            f.target = target_of(self, &examples[f.example], f, path)?;
        }
        Ok(feats)
    }

    fn featurize_for_eval(&self, examples: &[Example], path: &Path) -> Result<Vec<Feature>> {
        let mut feats = self.encode_windowed(examples, None)?;
        for f in &mut feats {
            f.target = target_of(self, &examples[f.example], f, path)?;
        }
        Ok(feats)
    }

    fn batch(&self, feats: &[&Feature], device: &Device) -> Result<Batch> {
        let input = self.batch_input(feats, device)?;
        let t = input.input_ids.dim(1)?;
        let all_labelled = feats.iter().all(|f| f.target != FeatureTarget::None);
        let targets = if !all_labelled {
            BatchTargets::None
        } else {
            match self.spec.kind {
                TaskKind::Classification | TaskKind::PairClassification => {
                    let v: Vec<u32> = feats
                        .iter()
                        .map(|f| match f.target {
                            FeatureTarget::Class(c) => c,
                            _ => 0,
                        })
                        .collect();
                    BatchTargets::Classes(Tensor::new(v, device)?)
                }
                TaskKind::Regression => {
                    let v: Vec<f32> = feats
                        .iter()
                        .map(|f| match f.target {
                            FeatureTarget::Value(x) => x,
                            _ => 0.0,
                        })
                        .collect();
                    BatchTargets::Values(Tensor::new(v, device)?)
                }
                TaskKind::MultiLabel => {
                    let n = self.spec.labels.len();
                    let mut v = Vec::with_capacity(feats.len() * n);
                    for f in feats {
                        match &f.target {
                            FeatureTarget::Labels(hot) => v.extend_from_slice(hot),
                            _ => v.extend(std::iter::repeat_n(0.0, n)),
                        }
                    }
                    BatchTargets::MultiHot(Tensor::from_vec(v, (feats.len(), n), device)?)
                }
                TaskKind::Qa => {
                    let (s, e): (Vec<u32>, Vec<u32>) = feats
                        .iter()
                        .map(|f| match f.target {
                            FeatureTarget::Span(s, e) => (s, e),
                            _ => (0, 0),
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

    fn loss(
        &self,
        loss: &LossConfig,
        enc: &EncoderOutput,
        batch: &Batch,
        mode: &Mode,
    ) -> Result<Tensor> {
        let logits = self.logits(enc, mode)?;
        self.loss_from_logits(loss, &logits, batch)
    }

    fn loss_from_logits(
        &self,
        loss: &LossConfig,
        logits: &Tensor,
        batch: &Batch,
    ) -> Result<Tensor> {
        Ok(match &batch.targets {
            BatchTargets::Classes(y) => loss.loss(logits, y)?,
            BatchTargets::Values(y) => (logits.squeeze(1)? - y)?.sqr()?.mean_all()?,
            BatchTargets::MultiHot(y) => binary_cross_entropy_with_logits(logits, y)?,
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

    fn divergence(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        match self.spec.kind {
            TaskKind::Classification | TaskKind::PairClassification => {
                crate::loss::symmetric_kl(a, b)
            }
            TaskKind::Regression => Ok((a - b)?.sqr()?.mean_all()?),
            TaskKind::MultiLabel => crate::loss::symmetric_bernoulli_kl(a, b),
            other => Err(Error::Config(format!(
                "task `{}`: SMART and R-Drop need a sequence-level output, not {other:?}",
                self.spec.name
            ))),
        }
    }

    fn score(&self, examples: &[Example], preds: &[Prediction]) -> super::EvalResult {
        super::score::score(self, examples, preds)
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

#[cfg(test)]
mod tests {
    use super::*;

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
