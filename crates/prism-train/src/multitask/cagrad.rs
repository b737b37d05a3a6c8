//! CAGrad (Liu et al. 2021), as LibMTL's `CAGrad` (rescale 1): with g_0 the mean of the K
//! shared gradients and G their Gram matrix, solve the dual
//! `min_{w in simplex} w^T G b + c |g_0| sqrt(w^T G w)` (b = 1/K), then the update is
//! `(g_0 + lambda g_w) / (1 + c^2)` with g_w = sum_i w_i g_i and lambda = c |g_0| / |g_w|:
//! the direction within the ball of radius c |g_0| around g_0 that maximises the worst task's
//! improvement. Heads keep their own gradients.

use super::simplex::{minimise, mul, quad};
use super::{Combination, Method, Step, Weighting};
use crate::error::Result;
use rand::rngs::StdRng;

pub struct CaGrad {
    c: f64,
}

impl CaGrad {
    pub fn new(c: f64) -> Self {
        Self { c }
    }
}

/// The coefficients of the shared update (before the 1 / (1 + c^2) rescale) and the dual's
/// solution w.
pub fn solve(gram: &[Vec<f64>], c: f64) -> (Vec<f64>, Vec<f64>) {
    let k = gram.len();
    let b = vec![1.0 / k as f64; k];
    let g0_norm = (gram.iter().flatten().sum::<f64>() / (k * k) as f64 + 1e-8).sqrt();
    let ce = c * g0_norm + 1e-8;
    let gb = mul(gram, &b);
    let f = |w: &[f64]| -> f64 {
        w.iter().zip(&gb).map(|(a, b)| a * b).sum::<f64>() + ce * (quad(gram, w, w) + 1e-8).sqrt()
    };
    let grad = |w: &[f64]| -> Vec<f64> {
        let gw = mul(gram, w);
        let n = (quad(gram, w, w) + 1e-8).sqrt();
        gb.iter().zip(&gw).map(|(a, g)| a + ce * g / n).collect()
    };
    let w = minimise(k, f, grad);
    let gw_norm = quad(gram, &w, &w).max(0.0).sqrt();
    let lambda = ce / (gw_norm + 1e-8);
    let coef = (0..k).map(|i| b[i] + lambda * w[i]).collect();
    (coef, w)
}

impl Weighting for CaGrad {
    fn method(&self) -> Method {
        Method::Cagrad
    }

    fn combine(&mut self, s: &Step, _rng: &mut StdRng) -> Result<Combination> {
        let (coef, _) = solve(s.gram, self.c);
        let rescale = 1.0 + self.c * self.c;
        Ok(Combination {
            shared: coef.iter().map(|x| x / rescale).collect(),
            heads: vec![1.0; s.tasks.len()],
            param_grad: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// On a conflicting pair in the plane: the dual is solved to tolerance (no point of a fine
    /// grid of the simplex is lower), and the update d lies on the ball |d - g_0| = c |g_0|
    /// where it maximises the worst task's inner product min_i g_i . d (checked against 20,000
    /// points of that circle), as the paper's primal says.
    #[test]
    fn solves_the_dual_and_maximises_the_worst_task() {
        let vs = [vec![1.0, 0.1], vec![-0.6, 1.0]];
        let gram: Vec<Vec<f64>> = vs
            .iter()
            .map(|a| vs.iter().map(|b| dot(a, b)).collect())
            .collect();
        let c = 0.4;
        let (coef, w) = solve(&gram, c);
        let g0_norm = (gram.iter().flatten().sum::<f64>() / 4.0 + 1e-8).sqrt();
        let ce = c * g0_norm + 1e-8;
        let f =
            |w: &[f64]| dot(w, &mul(&gram, &[0.5, 0.5])) + ce * (quad(&gram, w, w) + 1e-8).sqrt();
        let fw = f(&w);
        for i in 0..=100_000 {
            let t = i as f64 / 100_000.0;
            assert!(
                fw <= f(&[t, 1.0 - t]) + 1e-10,
                "grid point {t} below the solver"
            );
        }
        let d: Vec<f64> = (0..2)
            .map(|e| coef[0] * vs[0][e] + coef[1] * vs[1][e])
            .collect();
        let g0: Vec<f64> = (0..2).map(|e| 0.5 * (vs[0][e] + vs[1][e])).collect();
        let r = ((d[0] - g0[0]).powi(2) + (d[1] - g0[1]).powi(2)).sqrt();
        assert!((r - c * g0_norm).abs() < 1e-6, "radius {r}");
        let worst = |d: &[f64]| dot(&vs[0], d).min(dot(&vs[1], d));
        let best = (0..20_000)
            .map(|i| {
                let a = i as f64 / 20_000.0 * std::f64::consts::TAU;
                let p = [g0[0] + r * a.cos(), g0[1] + r * a.sin()];
                worst(&p)
            })
            .fold(f64::NEG_INFINITY, f64::max);
        assert!(
            worst(&d) >= best - 1e-6,
            "CAGrad {} vs best on the ball {best}",
            worst(&d)
        );
    }
}
