//! Uncertainty weighting (Kendall, Gal & Cipolla 2018), as LibMTL's `UW`: a learned s_i per task
//! and the loss `sum_i L_i / (2 e^{s_i}) + s_i / 2`, s_i starting at -0.5. Task i's gradient is
//! weighted by `1 / (2 e^{s_i})`; s_i's own gradient is `1/2 - L_i / (2 e^{s_i})`.

use super::{
    param_values, set_param, task_param, Combination, Method, MethodState, Step, Weighting,
};
use crate::error::Result;
use candle_core::Var;
use rand::rngs::StdRng;

pub struct Uncertainty {
    s: Var,
    n: usize,
}

impl Uncertainty {
    pub fn new(n: usize, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            s: task_param(n, -0.5, device)?,
            n,
        })
    }
}

/// The weights `1 / (2 e^{s_i})` and the gradients of s (length of the run's tasks).
pub fn weights_and_grad(
    s: &[f64],
    tasks: &[usize],
    losses: &[f64],
    n: usize,
) -> (Vec<f64>, Vec<f32>) {
    let mut grad = vec![0f32; n];
    let w = tasks
        .iter()
        .zip(losses)
        .map(|(&t, &l)| {
            let w = 0.5 * (-s[t]).exp();
            grad[t] += (0.5 - l * w) as f32;
            w
        })
        .collect();
    (w, grad)
}

impl Weighting for Uncertainty {
    fn method(&self) -> Method {
        Method::Uncertainty
    }

    fn combine(&mut self, st: &Step, _rng: &mut StdRng) -> Result<Combination> {
        let s = param_values(&self.s)?;
        let (w, grad) = weights_and_grad(&s, st.tasks, st.losses, self.n);
        let mut c = Combination::weights(w);
        c.param_grad = Some(grad);
        Ok(c)
    }

    fn param(&self) -> Option<&Var> {
        Some(&self.s)
    }

    fn state(&self) -> Result<MethodState> {
        Ok(MethodState {
            param: param_values(&self.s)?,
            ..Default::default()
        })
    }

    fn restore(&mut self, s: &MethodState) -> Result<()> {
        if s.param.is_empty() {
            return Ok(());
        }
        set_param(&self.s, &s.param, "uncertainty")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the derivative of L / (2 e^s) + s / 2 by central differences.
    #[test]
    fn weight_and_gradient_follow_the_loss() {
        let f = |s: f64, l: f64| l / (2.0 * s.exp()) + s / 2.0;
        let (s, l) = ([0.3, -0.5], [1.7, 0.2]);
        let (w, g) = weights_and_grad(&s, &[0, 1], &l, 2);
        for i in 0..2 {
            let h = 1e-6;
            let num = (f(s[i] + h, l[i]) - f(s[i] - h, l[i])) / (2.0 * h);
            assert!(
                (g[i] as f64 - num).abs() < 1e-6,
                "task {i}: {} vs {num}",
                g[i]
            );
            // d/dL of the weighted loss is the weight.
            let dl = (f(s[i], l[i] + h) - f(s[i], l[i] - h)) / (2.0 * h);
            assert!((w[i] - dl).abs() < 1e-8);
        }
    }
}
