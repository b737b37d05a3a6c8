//! LIME for text (Ribeiro et al. 2016), as the `lime` package's LimeTextExplainer: sample how
//! many tokens to remove uniformly, remove a random subset, weight each sample by an
//! exponential kernel of its cosine distance to the full input (width 25 on distances x 100),
//! and fit a weighted ridge regression whose coefficients are the attributions.

use super::weighted_ridge;
use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Error, Method, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub struct Lime {
    pub samples: usize,
    pub kernel_width: f64,
    /// Ridge penalty (sklearn's `Ridge(alpha=1)` in `lime`).
    pub alpha: f64,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for Lime {
    fn default() -> Self {
        Self {
            samples: 500,
            kernel_width: 25.0,
            alpha: 1.0,
            batch_size: 32,
            seed: 0,
        }
    }
}

impl Lime {
    /// Binary masks over `d` features: the all-ones row first, then `samples - 1` random ones.
    pub fn sample_masks(&self, d: usize) -> Vec<Vec<bool>> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut out = vec![vec![true; d]];
        let idx: Vec<usize> = (0..d).collect();
        for _ in 1..self.samples.max(2) {
            let remove = rng.random_range(1..=d.max(1));
            let mut chosen = idx.clone();
            chosen.shuffle(&mut rng);
            let mut m = vec![true; d];
            for &i in chosen.iter().take(remove) {
                m[i] = false;
            }
            out.push(m);
        }
        out
    }

    /// Fit the local linear model to `(mask, value)` pairs; returns the coefficients.
    pub fn fit(&self, masks: &[Vec<bool>], values: &[f64]) -> Result<Vec<f64>> {
        let d = masks[0].len();
        let z: Vec<Vec<f64>> = masks
            .iter()
            .map(|m| m.iter().map(|&b| b as u8 as f64).collect())
            .collect();
        let weights: Vec<f64> = z
            .iter()
            .map(|zi| {
                // Cosine distance to the all-ones vector, times 100 as lime does.
                let on: f64 = zi.iter().sum();
                let cos = if on == 0.0 {
                    0.0
                } else {
                    on / (on.sqrt() * (d as f64).sqrt())
                };
                let dist = (1.0 - cos) * 100.0;
                (-(dist * dist) / (self.kernel_width * self.kernel_width))
                    .exp()
                    .sqrt()
            })
            .collect();
        let (_, c) = weighted_ridge(&z, values, &weights, self.alpha)
            .ok_or_else(|| Error::Invalid("LIME: singular regression".into()))?;
        Ok(c)
    }
}

impl Method for Lime {
    fn name(&self) -> &'static str {
        "lime"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let feats = ExplainModel::features(x);
        let t = x.enc.ids.len();
        let f0 = m.f_from_ids(&[x.enc.ids.clone()], x, target, 1)?[0];
        if feats.is_empty() {
            return Ok(m.attributions(x, self.name(), target, vec![0.0; t], f0, None));
        }
        let rep = m.mask_id()?;
        let masks = self.sample_masks(feats.len());
        let rows: Vec<Vec<u32>> = masks
            .iter()
            .map(|mk| {
                let mut keep = vec![true; t];
                for (k, &j) in feats.iter().enumerate() {
                    keep[j] = mk[k];
                }
                ExplainModel::masked_ids(x, &keep, rep)
            })
            .collect();
        let f = m.f_from_ids(&rows, x, target, self.batch_size)?;
        let coef = self.fit(&masks, &f.iter().map(|&v| v as f64).collect::<Vec<_>>())?;
        let mut scores = vec![0f32; t];
        for (k, &j) in feats.iter().enumerate() {
            scores[j] = coef[k] as f32;
        }
        Ok(m.attributions(x, self.name(), target, scores, f0, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lime_recovers_the_coefficients_of_a_linear_model() {
        let w = [0.8, -0.3, 0.0, 0.45, -0.6, 0.1, 0.25];
        let lime = Lime {
            samples: 400,
            alpha: 1e-8,
            seed: 5,
            ..Default::default()
        };
        let masks = lime.sample_masks(w.len());
        let y: Vec<f64> = masks
            .iter()
            .map(|m| {
                0.1 + m
                    .iter()
                    .zip(&w)
                    .map(|(&b, w)| if b { *w } else { 0.0 })
                    .sum::<f64>()
            })
            .collect();
        let c = lime.fit(&masks, &y).unwrap();
        for (a, b) in c.iter().zip(w) {
            assert!((a - b).abs() < 1e-6, "{c:?}");
        }
        // Sampling is seeded.
        assert_eq!(masks, lime.sample_masks(w.len()));
    }
}
