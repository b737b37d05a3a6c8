//! Long inputs. A text longer than the task's `max_length` is read in overlapping windows
//! (consecutive windows share `overlap` tokens, by default half a window; of a pair, the longer
//! text is cut and the other is whole in every window), as `prism predict`, `prism eval` and `prism serve` read it: the
//! prediction is the mean of the windows' probabilities. An explanation runs the method on each
//! window with the same target, and stitches the scores back over the whole text: each token's
//! score is the mean of its scores in the windows that contain it (special tokens: over every
//! window), F is the mean of the windows' F (the explained output of the prediction), and IG's
//! delta is the window delta of largest magnitude (the worst convergence).

use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Error, Method, Result};
use prism_model::tasks::TaskKind;
use prism_model::Mode;
use prism_model::{Encoded, Encoder};

/// A text as windows, with where each window's tokens sit in the whole text.
pub struct Windows {
    /// The whole text (and pair), untruncated.
    pub full: Encoded,
    pub windows: Vec<ExplainInput>,
    /// For each window, each of its tokens' position in `full`.
    pub positions: Vec<Vec<usize>>,
}

impl Windows {
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

impl ExplainModel<'_> {
    /// `text` (and `text2`) as windows of the task's `max_length` (one when it fits). Tag and
    /// QA tasks name token positions, so their input is one encoding, truncated as before.
    pub fn encode_windows(
        &self,
        text: &str,
        text2: Option<&str>,
        overlap: Option<usize>,
    ) -> Result<Windows> {
        let tok = self.tokenizer()?;
        if matches!(self.kind(), TaskKind::Qa | TaskKind::Token) {
            let x = self.encode(text, text2)?;
            return Ok(Windows {
                full: x.enc.clone(),
                positions: vec![(0..x.enc.ids.len()).collect()],
                windows: vec![x],
            });
        }
        let full = tok.encode_untruncated(text, text2)?;
        let long = tok.encode_long_windows(text, text2, overlap)?;
        if long.windows.len() == 1 {
            let (enc, _) = long.windows.into_iter().next().expect("one window");
            let x = self.input_of(enc, text, text2)?;
            return Ok(Windows {
                full: x.enc.clone(),
                positions: vec![(0..x.enc.ids.len()).collect()],
                windows: vec![x],
            });
        }
        // Where each text's tokens and the special tokens sit in the whole input.
        let specials: Vec<usize> = (0..full.ids.len())
            .filter(|&j| full.special_tokens_mask[j] == 1)
            .collect();
        let mut of_text: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
        for j in 0..full.ids.len() {
            if let (0, Some(s @ (0 | 1))) = (full.special_tokens_mask[j], full.sequence_ids[j]) {
                of_text[s].push(j);
            }
        }
        let mut windows = Vec::new();
        let mut positions = Vec::new();
        for (enc, start) in long.windows {
            let (mut k, mut seen) = (0, [0usize; 2]);
            let pos = (0..enc.ids.len())
                .map(|j| {
                    let at = if enc.special_tokens_mask[j] == 1 {
                        k += 1;
                        specials.get(k - 1).copied()
                    } else {
                        match enc.sequence_ids[j] {
                            Some(s @ (0 | 1)) => {
                                let i = seen[s] + if s == long.cut { start } else { 0 };
                                seen[s] += 1;
                                of_text[s].get(i).copied()
                            }
                            _ => None,
                        }
                    };
                    at.filter(|&g| full.ids[g] == enc.ids[j]).ok_or_else(|| {
                        Error::Invalid(format!(
                            "window token {j} (`{}`) has no place in the whole text",
                            enc.tokens[j]
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            positions.push(pos);
            windows.push(self.input_of(enc, text, text2)?);
        }
        Ok(Windows {
            full,
            windows,
            positions,
        })
    }

    /// The predicted class over the windows (the mean of their probabilities; multi-label: the
    /// most probable label), or the regression value.
    pub fn default_target_windows(&self, w: &Windows) -> Result<Target> {
        match self.kind() {
            TaskKind::Regression => return Ok(Target::Value),
            TaskKind::Qa | TaskKind::Token => {
                return Err(self.position_target_error(w));
            }
            _ => {}
        }
        let mut mean: Vec<f64> = Vec::new();
        for x in &w.windows {
            let out = self.model.base.encoder.forward(&x.input, &Mode::Eval)?;
            let logits = self.model.tasks[self.task]
                .logits(&out, &Mode::Eval)?
                .detach();
            let p: Vec<f32> = match self.kind() {
                TaskKind::MultiLabel => logits
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .into_iter()
                    .map(|v| 1.0 / (1.0 + (-v).exp()))
                    .collect(),
                _ => prism_model::ops::softmax_last_dim(&logits)?
                    .flatten_all()?
                    .to_vec1()?,
            };
            if mean.is_empty() {
                mean = vec![0.0; p.len()];
            }
            mean.iter_mut().zip(&p).for_each(|(m, v)| *m += *v as f64);
        }
        let class = (0..mean.len())
            .max_by(|&a, &b| mean[a].total_cmp(&mean[b]))
            .unwrap_or(0);
        Ok(Target::Class { class })
    }

    fn position_target_error(&self, w: &Windows) -> Error {
        Error::Invalid(format!(
            "the input has {} tokens, more than the task's {}: a {:?} target names a token \
             position, so it is explained on one input that fits (shorten the text or raise \
             the task's max_length)",
            w.full.ids.len(),
            self.tokenizer().map_or(0, |t| t.max_len()),
            self.kind()
        ))
    }

    /// `method` on every window with `target`, stitched over the whole text (see the module
    /// documentation); `windows` records how many there were.
    pub fn attribute_windows(
        &self,
        method: &dyn Method,
        w: &Windows,
        target: &Target,
    ) -> Result<Attributions> {
        let a = self.attribute_windows_unchecked(method, w, target)?;
        a.ensure_finite()?;
        Ok(a)
    }

    fn attribute_windows_unchecked(
        &self,
        method: &dyn Method,
        w: &Windows,
        target: &Target,
    ) -> Result<Attributions> {
        if w.len() == 1 {
            return method.attribute(self, &w.windows[0], target);
        }
        if !matches!(target, Target::Class { .. } | Target::Value) {
            return Err(self.position_target_error(w));
        }
        let n = w.full.ids.len();
        let mut sum = vec![0f64; n];
        let mut count = vec![0u32; n];
        let (mut f, mut delta): (f64, Option<f32>) = (0.0, None);
        let mut last = None;
        for (x, pos) in w.windows.iter().zip(&w.positions) {
            let a = method.attribute(self, x, target)?;
            for (s, &g) in a.scores.iter().zip(pos) {
                sum[g] += *s as f64;
                count[g] += 1;
            }
            f += a.output as f64;
            if let Some(d) = a.delta {
                if delta.is_none_or(|cur| d.abs() > cur.abs()) {
                    delta = Some(d);
                }
            }
            last = Some(a);
        }
        let last = last.ok_or_else(|| Error::Invalid("no windows".into()))?;
        let scores = sum
            .iter()
            .zip(&count)
            .map(|(s, &c)| if c > 0 { (s / c as f64) as f32 } else { 0.0 })
            .collect();
        Ok(Attributions {
            tokens: w.full.tokens.clone(),
            offsets: w.full.offsets.clone(),
            sequence_ids: w.full.sequence_ids.clone(),
            scores,
            output: (f / w.len() as f64) as f32,
            delta,
            windows: Some(w.len()),
            ..last
        })
    }
}
