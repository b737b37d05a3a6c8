//! Integrated gradients (Sundararajan et al. 2017) on the word embeddings, like Captum's
//! `LayerIntegratedGradients(model, model.embeddings.word_embeddings)`: attributions
//! `(e - e') * sum_k w_k dF/de(e' + a_k (e - e'))`, summed over the embedding dimension, with
//! the convergence delta `sum(attributions) - (F(e) - F(e'))`. The interpolation points are
//! evaluated in internal batches, so memory stays bounded whatever `steps` is.

use super::sum_per_token;
use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Error, Method, Result};
use candle_core::Tensor;

/// The quadrature rule over the straight path (Captum's `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    RiemannLeft,
    RiemannRight,
    RiemannMiddle,
    RiemannTrapezoid,
    GaussLegendre,
}

impl Rule {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "riemann_left" => Rule::RiemannLeft,
            "riemann_right" => Rule::RiemannRight,
            "riemann_middle" => Rule::RiemannMiddle,
            "riemann_trapezoid" => Rule::RiemannTrapezoid,
            "gausslegendre" | "gauss_legendre" => Rule::GaussLegendre,
            other => return Err(Error::Invalid(format!("unknown IG rule `{other}` (riemann_left, riemann_right, riemann_middle, riemann_trapezoid, gausslegendre)"))),
        })
    }

    /// Points `a_k` in [0, 1] and weights `w_k`, as Captum's approximation_methods.
    pub fn points(&self, n: usize) -> (Vec<f64>, Vec<f64>) {
        let n = n.max(1);
        let lin = |a: f64, b: f64| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    if n == 1 {
                        a
                    } else {
                        a + (b - a) * i as f64 / (n - 1) as f64
                    }
                })
                .collect()
        };
        match self {
            Rule::RiemannLeft => (lin(0.0, 1.0 - 1.0 / n as f64), vec![1.0 / n as f64; n]),
            Rule::RiemannRight => (lin(1.0 / n as f64, 1.0), vec![1.0 / n as f64; n]),
            Rule::RiemannMiddle => (
                lin(1.0 / (2 * n) as f64, 1.0 - 1.0 / (2 * n) as f64),
                vec![1.0 / n as f64; n],
            ),
            Rule::RiemannTrapezoid => {
                if n < 2 {
                    return (vec![0.5], vec![1.0]);
                }
                let mut w = vec![1.0 / (n - 1) as f64; n];
                w[0] /= 2.0;
                w[n - 1] /= 2.0;
                (lin(0.0, 1.0), w)
            }
            Rule::GaussLegendre => {
                let (x, w) = gauss_legendre(n);
                (
                    x.iter().map(|v| 0.5 * (v + 1.0)).collect(),
                    w.iter().map(|v| 0.5 * v).collect(),
                )
            }
        }
    }
}

/// Nodes and weights of n-point Gauss-Legendre quadrature on [-1, 1] (ascending, as numpy's
/// `leggauss`), by Newton's method on the Legendre polynomial.
pub fn gauss_legendre(n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut x = vec![0.0; n];
    let mut w = vec![0.0; n];
    for i in 0..n.div_ceil(2) {
        let mut z = (std::f64::consts::PI * (i as f64 + 0.75) / (n as f64 + 0.5)).cos();
        let mut dp = 0.0;
        for _ in 0..100 {
            let (mut p0, mut p1) = (1.0, z);
            for k in 2..=n {
                let p2 = ((2 * k - 1) as f64 * z * p1 - (k - 1) as f64 * p0) / k as f64;
                p0 = p1;
                p1 = p2;
            }
            let pn = if n == 1 { z } else { p1 };
            let pn1 = if n == 1 { 1.0 } else { p0 };
            dp = n as f64 * (z * pn - pn1) / (z * z - 1.0);
            let dz = pn / dp;
            z -= dz;
            if dz.abs() < 1e-15 {
                break;
            }
        }
        if n == 1 {
            return (vec![0.0], vec![2.0]);
        }
        x[i] = -z;
        x[n - 1 - i] = z;
        let wi = 2.0 / ((1.0 - z * z) * dp * dp);
        w[i] = wi;
        w[n - 1 - i] = wi;
    }
    (x, w)
}

/// What the path starts from.
#[derive(Clone, Debug, PartialEq)]
pub enum Baseline {
    /// Every non-special token replaced by the pad token; [CLS]/[SEP] kept (the default: the
    /// baseline is still a well-formed input).
    Pad,
    /// The zero embedding.
    Zero,
    /// Every non-special token replaced by [MASK].
    Mask,
    /// These token ids (same length as the input).
    Ids(Vec<u32>),
}

impl Baseline {
    /// `pad`, `zero` or `mask` (the CLI's `--baseline`).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pad" => Baseline::Pad,
            "zero" => Baseline::Zero,
            "mask" => Baseline::Mask,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown IG baseline `{other}` (pad, zero, mask)"
                )))
            }
        })
    }
}

#[derive(Clone, Debug)]
pub struct IntegratedGradients {
    pub steps: usize,
    pub rule: Rule,
    pub baseline: Baseline,
    /// Interpolation points per forward/backward pass.
    pub batch_size: usize,
}

impl Default for IntegratedGradients {
    fn default() -> Self {
        // Captum's defaults: 50 steps, Gauss-Legendre.
        Self {
            steps: 50,
            rule: Rule::GaussLegendre,
            baseline: Baseline::Pad,
            batch_size: 16,
        }
    }
}

impl IntegratedGradients {
    /// Baseline embeddings (1, T, C).
    pub fn baseline_embeddings(&self, m: &ExplainModel, x: &ExplainInput) -> Result<Tensor> {
        let e = m.embeddings(x)?;
        let tok = m.tokenizer()?;
        let ids = match &self.baseline {
            Baseline::Zero => return Ok(e.zeros_like()?),
            Baseline::Pad => {
                ExplainModel::masked_ids(x, &vec![false; x.enc.ids.len()], tok.pad_id())
            }
            Baseline::Mask => {
                ExplainModel::masked_ids(x, &vec![false; x.enc.ids.len()], m.mask_id()?)
            }
            Baseline::Ids(ids) => {
                if ids.len() != x.enc.ids.len() {
                    return Err(Error::Invalid(format!(
                        "custom baseline has {} ids, the input {}",
                        ids.len(),
                        x.enc.ids.len()
                    )));
                }
                ids.clone()
            }
        };
        let ids = Tensor::from_vec(ids, (1, x.enc.ids.len()), m.device())?;
        Ok(prism_model::Encoder::word_embeddings(&m.model.base.encoder, &ids)?.detach())
    }

    /// Attributions per embedding coordinate (1, T, C), F(x), F(baseline).
    pub fn attribute_full(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<(Tensor, f32, f32)> {
        m.check(target, x)?;
        let e = m.embeddings(x)?; // (1, T, C)
        let b = self.baseline_embeddings(m, x)?;
        let attr = self.integrate(m, x, target, &e, &b)?;
        let fb = m.f_from_embeds(&Tensor::cat(&[&e, &b], 0)?, x, target)?;
        Ok((attr, fb[0], fb[1]))
    }

    /// Integrated gradients of several inputs (N, T, C) of the same example (noisy copies of
    /// its embeddings, for NoiseTunnel) from one baseline (1, T, C): (N, T, C). The N × steps
    /// interpolation points are evaluated `batch_size` at a time, across inputs.
    pub fn integrate(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
        inputs: &Tensor,
        baseline: &Tensor,
    ) -> Result<Tensor> {
        let dev = inputs.device();
        let n = inputs.dim(0)?;
        let diff = inputs.broadcast_sub(baseline)?; // (N, T, C)
        let (alphas, weights) = self.rule.points(self.steps);
        let points: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..alphas.len()).map(move |k| (i, k)))
            .collect();
        let mut acc = inputs.zeros_like()?; // (N, T, C)
        for chunk in points.chunks(self.batch_size.max(1)) {
            let s = chunk.len();
            let rows = Tensor::from_vec(
                chunk.iter().map(|&(i, _)| i as u32).collect::<Vec<_>>(),
                s,
                dev,
            )?;
            let col = |v: &[f64]| -> Result<Tensor> {
                Ok(Tensor::from_vec(
                    chunk.iter().map(|&(_, k)| v[k] as f32).collect::<Vec<_>>(),
                    (s, 1, 1),
                    dev,
                )?)
            };
            let path = baseline
                .broadcast_add(&diff.index_select(&rows, 0)?.broadcast_mul(&col(&alphas)?)?)?;
            let (g, _) = m.gradients(&path, x, target)?;
            acc = acc.index_add(&rows, &g.broadcast_mul(&col(&weights)?)?, 0)?;
        }
        Ok((diff * acc)?)
    }
}

impl Method for IntegratedGradients {
    fn name(&self) -> &'static str {
        "ig"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        let (attr, fx, fb) = self.attribute_full(m, x, target)?;
        let scores = sum_per_token(&attr)?;
        let delta = scores.iter().map(|&v| v as f64).sum::<f64>() - (fx - fb) as f64;
        Ok(m.attributions(x, self.name(), target, scores, fx, Some(delta as f32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauss_legendre_matches_numpy() {
        // numpy.polynomial.legendre.leggauss(3)
        let (x, w) = gauss_legendre(3);
        let s = (0.6f64).sqrt();
        for (a, b) in x.iter().zip([-s, 0.0, s]) {
            assert!((a - b).abs() < 1e-14);
        }
        for (a, b) in w.iter().zip([5.0 / 9.0, 8.0 / 9.0, 5.0 / 9.0]) {
            assert!((a - b).abs() < 1e-14);
        }
        // Exact for polynomials up to degree 2n-1: integral of x^8 on [-1,1] = 2/9 with n = 5.
        let (x, w) = gauss_legendre(5);
        let v: f64 = x.iter().zip(&w).map(|(x, w)| w * x.powi(8)).sum();
        assert!((v - 2.0 / 9.0).abs() < 1e-13);
        let (x, w) = gauss_legendre(50);
        assert!((w.iter().sum::<f64>() - 2.0).abs() < 1e-12);
        assert!(x.windows(2).all(|p| p[0] < p[1]));
    }

    #[test]
    fn riemann_rules_integrate_a_line() {
        for rule in [
            Rule::RiemannMiddle,
            Rule::RiemannTrapezoid,
            Rule::GaussLegendre,
        ] {
            let (a, w) = rule.points(10);
            let v: f64 = a.iter().zip(&w).map(|(a, w)| a * w).sum();
            assert!((v - 0.5).abs() < 1e-12, "{rule:?}");
        }
        let (a, _) = Rule::RiemannLeft.points(4);
        assert_eq!(a, vec![0.0, 0.25, 0.5, 0.75]);
        let (a, _) = Rule::RiemannRight.points(4);
        assert_eq!(a, vec![0.25, 0.5, 0.75, 1.0]);
    }
}
