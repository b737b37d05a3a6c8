//! GradNorm (Chen et al. 2018), as LibMTL's `GradNorm`: learned logits `l`, task weights
//! `w = K softmax(l)` over the micro-batch's K tasks, starting equal. With G_i = w_i |grad_W L_i|
//! on the encoder's last layer W, the relative inverse training rates r_i = (L_i / L_i(0)) /
//! mean_j (L_j / L_j(0)) and the constant targets c_i = mean_j(G_j) r_i^alpha, the logits
//! descend `sum_i |G_i - c_i|`; the tasks' gradients are weighted by w (shared encoder and heads).
//! L_i(0) is the task's first observed loss.

use super::{
    param_values, set_param, task_param, Combination, Method, MethodState, Step, Weighting,
};
use crate::error::Result;
use candle_core::Var;
use rand::rngs::StdRng;

pub struct GradNorm {
    logits: Var,
    alpha: f64,
    initial: Vec<Option<f64>>,
}

impl GradNorm {
    pub fn new(n: usize, alpha: f64, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            logits: task_param(n, 0.0, device)?,
            alpha,
            initial: vec![None; n],
        })
    }
}

/// The weights of `tasks` and the gradient of the GradNorm loss with respect to the logits (one
/// per task of the run), from the logits, the last-layer gradient norms, the losses and the
/// initial losses.
pub fn weights_and_grad(
    logits: &[f64],
    tasks: &[usize],
    norms: &[f64],
    losses: &[f64],
    initial: &[f64],
    alpha: f64,
) -> (Vec<f64>, Vec<f32>) {
    let k = tasks.len();
    let l: Vec<f64> = tasks.iter().map(|&t| logits[t]).collect();
    let w = super::scaled_softmax(&l, 1.0);
    let g: Vec<f64> = w.iter().zip(norms).map(|(w, n)| w * n).collect();
    let gbar = g.iter().sum::<f64>() / k as f64;
    let rel: Vec<f64> = losses
        .iter()
        .zip(initial)
        .map(|(l, l0)| if *l0 > 0.0 { l / l0 } else { 1.0 })
        .collect();
    let mean_rel = rel.iter().sum::<f64>() / k as f64;
    let mut grad = vec![0f32; logits.len()];
    for j in 0..k {
        let mut d = 0.0;
        for i in 0..k {
            let target = gbar * (rel[i] / mean_rel).powf(alpha);
            let sign = (g[i] - target).signum();
            let dw = w[i] * (if i == j { 1.0 } else { 0.0 } - w[j] / k as f64);
            d += sign * norms[i] * dw;
        }
        grad[tasks[j]] += d as f32;
    }
    (w, grad)
}

impl Weighting for GradNorm {
    fn method(&self) -> Method {
        Method::Gradnorm
    }

    fn combine(&mut self, s: &Step, _rng: &mut StdRng) -> Result<Combination> {
        let logits = param_values(&self.logits)?;
        let initial: Vec<f64> = s
            .tasks
            .iter()
            .zip(s.losses)
            .map(|(&t, &l)| self.initial[t].unwrap_or(l))
            .collect();
        let (w, grad) = weights_and_grad(
            &logits,
            s.tasks,
            s.last_layer_norms,
            s.losses,
            &initial,
            self.alpha,
        );
        let mut c = Combination::weights(w);
        c.param_grad = Some(grad);
        Ok(c)
    }

    fn param(&self) -> Option<&Var> {
        Some(&self.logits)
    }

    fn observe(&mut self, _step: usize, losses: &[(usize, f64)]) {
        for &(t, l) in losses {
            self.initial[t].get_or_insert(l);
        }
    }

    fn state(&self) -> Result<MethodState> {
        Ok(MethodState {
            param: param_values(&self.logits)?,
            initial: self.initial.clone(),
            ..Default::default()
        })
    }

    fn restore(&mut self, s: &MethodState) -> Result<()> {
        if !s.param.is_empty() {
            set_param(&self.logits, &s.param, "gradnorm")?;
        }
        if s.initial.len() == self.initial.len() {
            self.initial = s.initial.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic gradient against central differences of sum_i |G_i - c_i| (targets held
    /// constant, as the paper and LibMTL detach them).
    #[test]
    fn gradient_matches_finite_differences() {
        let (norms, losses, initial, alpha) =
            ([2.0, 0.5, 1.2], [0.9, 0.3, 1.1], [1.0, 1.0, 1.2], 1.5);
        let logits = [0.1, -0.3, 0.2];
        let tasks = [0, 1, 2];
        let (w0, g) = weights_and_grad(&logits, &tasks, &norms, &losses, &initial, alpha);
        assert!((w0.iter().sum::<f64>() - 3.0).abs() < 1e-12);
        let gw: Vec<f64> = w0.iter().zip(&norms).map(|(w, n)| w * n).collect();
        let gbar = gw.iter().sum::<f64>() / 3.0;
        let rel: Vec<f64> = losses.iter().zip(&initial).map(|(l, l0)| l / l0).collect();
        let mr = rel.iter().sum::<f64>() / 3.0;
        let targets: Vec<f64> = rel.iter().map(|r| gbar * (r / mr).powf(alpha)).collect();
        let f = |l: &[f64]| -> f64 {
            let w = crate::multitask::scaled_softmax(l, 1.0);
            (0..3).map(|i| (w[i] * norms[i] - targets[i]).abs()).sum()
        };
        for j in 0..3 {
            let h = 1e-6;
            let (mut a, mut b) = (logits.to_vec(), logits.to_vec());
            a[j] += h;
            b[j] -= h;
            let num = (f(&a) - f(&b)) / (2.0 * h);
            assert!(
                (g[j] as f64 - num).abs() < 1e-5,
                "logit {j}: {} vs {num}",
                g[j]
            );
        }
    }
}
