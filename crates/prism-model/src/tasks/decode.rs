//! Head outputs to predictions: class probabilities, the labels of a multi-label task (a sigmoid
//! per label against the task's threshold), regression values, best answer spans
//! (up to 30 tokens, as transformers' run_qa), and one tag per word.

use super::{Example, Feature, Task, TaskKind};
use crate::error::{Error, Result};
use crate::{EncoderInput, EncoderOutput, Mode};
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::collections::BTreeMap;

/// Longest answer QA decoding considers, in tokens (as transformers' run_qa default).
const MAX_ANSWER_TOKENS: usize = 30;

/// What a task predicts for one example.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Prediction {
    Class {
        label: String,
        probabilities: BTreeMap<String, f32>,
        /// Windows a text longer than `max_length` was read in (probabilities are their
        /// mean); absent for a text that fits.
        #[serde(skip_serializing_if = "one")]
        windows: usize,
    },
    /// Multi-label: every label whose probability reaches the task's threshold.
    Labels {
        labels: Vec<String>,
        probabilities: BTreeMap<String, f32>,
        #[serde(skip_serializing_if = "one")]
        windows: usize,
    },
    Value {
        value: f32,
        #[serde(skip_serializing_if = "one")]
        windows: usize,
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

fn one(n: &usize) -> bool {
    *n == 1
}

/// The mean of each example's rows `(example, row)`, in example order: (mean, windows).
fn mean_per_example(n: usize, rows: Vec<(usize, Vec<f32>)>) -> Vec<(Vec<f32>, usize)> {
    let mut acc: Vec<(Vec<f32>, usize)> = vec![(Vec::new(), 0); n];
    for (e, r) in rows {
        let (sum, k) = &mut acc[e];
        if sum.is_empty() {
            *sum = r;
        } else {
            sum.iter_mut().zip(&r).for_each(|(s, v)| *s += v);
        }
        *k += 1;
    }
    acc.into_iter()
        .map(|(s, k)| {
            let d = k.max(1) as f32;
            (s.into_iter().map(|v| v / d).collect(), k)
        })
        .collect()
}

impl Task {
    /// Predictions for `examples` (features must come from [`Task::encode`] of the same
    /// examples, labelled or not), computed with `forward` in batches.
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
            let input = self.batch_input(&refs, device)?;
            let out = forward(&input)?;
            // Detached: a kept tensor would otherwise keep its whole forward graph alive.
            let logits = self
                .logits(&out, &Mode::Eval)?
                .detach()
                .to_device(&Device::Cpu)?;
            for i in 0..chunk.len() {
                logits_per_feature.push(logits.get(i)?);
            }
        }
        self.decode(examples, feats, &logits_per_feature)
    }

    /// Predictions from each feature's head output (in [`Task::logits`]' layout, batch
    /// dimension removed).
    pub fn decode(
        &self,
        examples: &[Example],
        feats: &[Feature],
        logits: &[Tensor],
    ) -> Result<Vec<Prediction>> {
        // A NaN or infinite output (a damaged weight, an overflow) is an error naming the
        // input, never a prediction with null probabilities.
        for (f, l) in feats.iter().zip(logits) {
            let v: Vec<f32> = l.flatten_all()?.to_vec1()?;
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::Input(format!(
                    "task `{}`: the model's output for input {} is {x} (not finite): its weights \
                     hold NaN or infinite values, or the input overflowed them",
                    self.spec.name,
                    f.example + 1
                )));
            }
        }
        let labels = &self.spec.labels;
        match self.spec.kind {
            // Sequence-level: one row per feature; an example read in several windows gets
            // the mean of their probabilities (regression: of their values).
            TaskKind::Classification | TaskKind::PairClassification => {
                let rows = feats
                    .iter()
                    .zip(logits)
                    .map(|(f, l)| Ok((f.example, crate::ops::softmax_last_dim(l)?.to_vec1()?)))
                    .collect::<Result<Vec<_>>>()?;
                Ok(mean_per_example(examples.len(), rows)
                    .into_iter()
                    .map(|(p, windows)| {
                        let best = argmax(&p);
                        Prediction::Class {
                            label: labels[best].clone(),
                            probabilities: labels.iter().cloned().zip(p).collect(),
                            windows,
                        }
                    })
                    .collect())
            }
            TaskKind::MultiLabel => {
                let threshold = self.spec.threshold() as f32;
                let rows = feats
                    .iter()
                    .zip(logits)
                    .map(|(f, l)| {
                        Ok((
                            f.example,
                            l.to_vec1::<f32>()?.into_iter().map(sigmoid).collect(),
                        ))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(mean_per_example(examples.len(), rows)
                    .into_iter()
                    .map(|(p, windows)| Prediction::Labels {
                        labels: labels
                            .iter()
                            .zip(&p)
                            .filter(|(_, &p)| p >= threshold)
                            .map(|(l, _)| l.clone())
                            .collect(),
                        probabilities: labels.iter().cloned().zip(p).collect(),
                        windows,
                    })
                    .collect())
            }
            TaskKind::Regression => {
                let rows = feats
                    .iter()
                    .zip(logits)
                    .map(|(f, l)| Ok((f.example, vec![l.to_vec1::<f32>()?[0]])))
                    .collect::<Result<Vec<_>>>()?;
                Ok(mean_per_example(examples.len(), rows)
                    .into_iter()
                    .map(|(v, windows)| Prediction::Value {
                        value: v.first().copied().unwrap_or(f32::NAN),
                        windows,
                    })
                    .collect())
            }
            TaskKind::Token => feats
                .iter()
                .zip(logits)
                .map(|(f, l)| {
                    let rows: Vec<Vec<f32>> = l.to_vec2()?;
                    let n_words = examples[f.example].tokens.len();
                    let mut tags = vec![labels[0].clone(); n_words];
                    let mut prev = None;
                    for (j, w) in f.word_ids.iter().enumerate() {
                        if let Some(w) = w {
                            if Some(*w) != prev && (*w as usize) < n_words && j < rows.len() {
                                tags[*w as usize] = labels[argmax(&rows[j])].clone();
                            }
                        }
                        prev = *w;
                    }
                    Ok(Prediction::Tags { tags })
                })
                .collect(),
            TaskKind::Qa => {
                let mut best: Vec<Option<(f32, usize, usize)>> = vec![None; examples.len()];
                for (f, l) in feats.iter().zip(logits) {
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
}

/// The logistic function, as torch.sigmoid computes it in f32.
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}
