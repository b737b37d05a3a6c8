//! KernelSHAP (Lundberg & Lee 2017): Shapley values as the solution of a weighted linear
//! regression over token coalitions with the Shapley kernel, constrained so the values add up
//! to F(x) - F(nothing). Coalitions are enumerated when there are few features (exact Shapley
//! values) and otherwise sampled by size from the kernel's distribution, in complementary
//! pairs (seeded).

use super::solve;
use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Error, Method, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub struct KernelShap {
    pub samples: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for KernelShap {
    fn default() -> Self {
        Self {
            samples: 512,
            batch_size: 32,
            seed: 0,
        }
    }
}

fn ln_choose(n: usize, k: usize) -> f64 {
    (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum()
}

/// The Shapley kernel weight of a coalition of size `s` out of `m` features.
pub fn shapley_kernel_weight(m: usize, s: usize) -> f64 {
    if s == 0 || s == m {
        return 1e6; // the two constrained coalitions (handled exactly by the constraint)
    }
    (m - 1) as f64 / ((ln_choose(m, s)).exp() * s as f64 * (m - s) as f64)
}

impl KernelShap {
    /// Coalitions (excluding empty and full) to evaluate.
    pub fn coalitions(&self, m: usize) -> Vec<Vec<bool>> {
        if m <= 1 {
            return Vec::new();
        }
        let total = if m < 63 { (1u64 << m) - 2 } else { u64::MAX };
        if total <= self.samples as u64 {
            return (1..=total)
                .map(|bits| (0..m).map(|i| bits >> i & 1 == 1).collect())
                .collect();
        }
        // Sample sizes by the kernel's total weight per size, in complementary pairs.
        let sizes: Vec<usize> = (1..m).collect();
        let size_w: Vec<f64> = sizes
            .iter()
            .map(|&s| (m - 1) as f64 / (s as f64 * (m - s) as f64))
            .collect();
        let total_w: f64 = size_w.iter().sum();
        let mut rng = StdRng::seed_from_u64(self.seed);
        let idx: Vec<usize> = (0..m).collect();
        let mut out = Vec::with_capacity(self.samples);
        while out.len() + 1 < self.samples {
            let mut u = rng.random::<f64>() * total_w;
            let mut s = sizes[sizes.len() - 1];
            for (k, w) in size_w.iter().enumerate() {
                if u < *w {
                    s = sizes[k];
                    break;
                }
                u -= w;
            }
            let mut perm = idx.clone();
            perm.shuffle(&mut rng);
            let mut c = vec![false; m];
            for &i in perm.iter().take(s) {
                c[i] = true;
            }
            let comp: Vec<bool> = c.iter().map(|b| !b).collect();
            out.push(c);
            out.push(comp);
        }
        out
    }

    /// Shapley values from coalition values: `f_full = F(all)`, `f_empty = F(none)`. Sampled
    /// coalitions get equal weight (they were drawn from the kernel); enumerated ones get the
    /// kernel weight.
    pub fn solve(
        &self,
        m: usize,
        coalitions: &[Vec<bool>],
        values: &[f64],
        f_full: f64,
        f_empty: f64,
    ) -> Result<Vec<f64>> {
        if m == 0 {
            return Ok(Vec::new());
        }
        if m == 1 {
            return Ok(vec![f_full - f_empty]);
        }
        let enumerated = coalitions.len() as u64 == if m < 63 { (1u64 << m) - 2 } else { u64::MAX };
        // Eliminate phi_{m-1} = (f_full - f_empty) - sum others; regress on z_i - z_{m-1}.
        let total = f_full - f_empty;
        let d = m - 1;
        let mut a = vec![vec![0.0; d]; d];
        let mut b = vec![0.0; d];
        for (c, &v) in coalitions.iter().zip(values) {
            let s = c.iter().filter(|&&x| x).count();
            let w = if enumerated {
                shapley_kernel_weight(m, s)
            } else {
                1.0
            };
            let last = c[m - 1] as u8 as f64;
            let row: Vec<f64> = (0..d).map(|i| c[i] as u8 as f64 - last).collect();
            let y = v - f_empty - last * total;
            for p in 0..d {
                b[p] += w * row[p] * y;
                for q in 0..d {
                    a[p][q] += w * row[p] * row[q];
                }
            }
        }
        for (p, row) in a.iter_mut().enumerate() {
            row[p] += 1e-10; // numerical floor; does not bias well-posed problems
        }
        let phi = solve(a, b).ok_or_else(|| {
            Error::Invalid("KernelSHAP: singular regression (too few samples?)".into())
        })?;
        let last = total - phi.iter().sum::<f64>();
        Ok(phi.into_iter().chain(std::iter::once(last)).collect())
    }
}

impl Method for KernelShap {
    fn name(&self) -> &'static str {
        "kernel_shap"
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
        let rep = m.mask_id()?;
        let coalitions = self.coalitions(feats.len());
        let to_ids = |c: &[bool]| {
            let mut keep = vec![true; t];
            for (k, &j) in feats.iter().enumerate() {
                keep[j] = c[k];
            }
            ExplainModel::masked_ids(x, &keep, rep)
        };
        let mut rows = vec![x.enc.ids.clone(), to_ids(&vec![false; feats.len()])];
        rows.extend(coalitions.iter().map(|c| to_ids(c)));
        let f = m.f_from_ids(&rows, x, target, self.batch_size)?;
        let values: Vec<f64> = f[2..].iter().map(|&v| v as f64).collect();
        let phi = self.solve(feats.len(), &coalitions, &values, f[0] as f64, f[1] as f64)?;
        let mut scores = vec![0f32; t];
        for (k, &j) in feats.iter().enumerate() {
            scores[j] = phi[k] as f32;
        }
        Ok(m.attributions(x, self.name(), target, scores, f[0], None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// v(S) = sum_{i in S} w_i + 0.5 * [0 in S and 1 in S] (an interaction): exact Shapley
    /// values are w_i, plus 0.25 each for features 0 and 1.
    #[test]
    fn enumerated_kernel_shap_gives_exact_shapley_values() {
        let w = [0.3, -0.2, 0.5, 0.1, -0.4];
        let v = |c: &[bool]| -> f64 {
            c.iter()
                .zip(&w)
                .map(|(&b, w)| if b { *w } else { 0.0 })
                .sum::<f64>()
                + if c[0] && c[1] { 0.5 } else { 0.0 }
        };
        let ks = KernelShap {
            samples: 1000,
            ..Default::default()
        };
        let cs = ks.coalitions(5);
        assert_eq!(cs.len(), 30);
        let vals: Vec<f64> = cs.iter().map(|c| v(c)).collect();
        let phi = ks.solve(5, &cs, &vals, v(&[true; 5]), 0.0).unwrap();
        let want = [0.3 + 0.25, -0.2 + 0.25, 0.5, 0.1, -0.4];
        for (a, b) in phi.iter().zip(want) {
            assert!((a - b).abs() < 1e-8, "{phi:?}");
        }
    }

    /// A model linear in the mask is recovered exactly from sampled coalitions too.
    #[test]
    fn sampled_kernel_shap_recovers_a_linear_model() {
        let m = 16;
        let w: Vec<f64> = (0..m).map(|i| (i as f64 * 0.37).sin()).collect();
        let v = |c: &[bool]| -> f64 {
            0.2 + c
                .iter()
                .zip(&w)
                .map(|(&b, w)| if b { *w } else { 0.0 })
                .sum::<f64>()
        };
        let ks = KernelShap {
            samples: 300,
            seed: 3,
            ..Default::default()
        };
        let cs = ks.coalitions(m);
        assert!(cs.len() < (1 << m) - 2);
        let vals: Vec<f64> = cs.iter().map(|c| v(c)).collect();
        let phi = ks
            .solve(m, &cs, &vals, v(&vec![true; m]), v(&vec![false; m]))
            .unwrap();
        for (a, b) in phi.iter().zip(&w) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
