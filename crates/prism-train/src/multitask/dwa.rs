//! Dynamic weight average (Liu, Johns & Davison 2019), as LibMTL's `DWA`: with r_i the ratio of
//! task i's mean loss over the last window of updates to its mean over the window before,
//! the weights are `K softmax(r / T)` over the micro-batch's K tasks; 1 until a task has two
//! finished windows. LibMTL's windows are epochs; here they are `dwa_window` updates, since a
//! multi-task run's tasks have epochs of different lengths.

use super::{scaled_softmax, Combination, Method, MethodState, Step, Weighting};
use crate::error::Result;
use rand::rngs::StdRng;

pub struct Dwa {
    window: usize,
    temperature: f64,
    /// Per task: (window index, loss sum, count), the last three windows at most.
    windows: Vec<Vec<(usize, f64, usize)>>,
}

impl Dwa {
    pub fn new(tasks: usize, window: usize, temperature: f64) -> Self {
        Self {
            window,
            temperature,
            windows: vec![Vec::new(); tasks],
        }
    }

    /// r_i for update `step`: the mean of window w-1 over the mean of window w-2 (w = this
    /// update's window), if both have losses.
    fn ratio(&self, task: usize, step: usize) -> Option<f64> {
        let w = step / self.window;
        let mean = |i: usize| {
            self.windows[task]
                .iter()
                .find(|(ix, _, n)| *ix == i && *n > 0)
                .map(|(_, s, n)| s / *n as f64)
        };
        let (a, b) = (mean(w.checked_sub(1)?)?, mean(w.checked_sub(2)?)?);
        (b > 0.0).then(|| a / b)
    }
}

impl Weighting for Dwa {
    fn method(&self) -> Method {
        Method::Dwa
    }

    fn combine(&mut self, s: &Step, _rng: &mut StdRng) -> Result<Combination> {
        let r: Option<Vec<f64>> = s.tasks.iter().map(|&t| self.ratio(t, s.step)).collect();
        Ok(Combination::weights(match r {
            Some(r) => scaled_softmax(&r, self.temperature),
            None => vec![1.0; s.tasks.len()],
        }))
    }

    fn observe(&mut self, step: usize, losses: &[(usize, f64)]) {
        let w = step / self.window;
        for &(t, l) in losses {
            let ws = &mut self.windows[t];
            match ws.iter_mut().find(|(ix, _, _)| *ix == w) {
                Some(e) => {
                    e.1 += l;
                    e.2 += 1;
                }
                None => ws.push((w, l, 1)),
            }
            ws.retain(|(ix, _, _)| ix + 2 >= w);
        }
    }

    fn state(&self) -> Result<MethodState> {
        Ok(MethodState {
            windows: self.windows.clone(),
            ..Default::default()
        })
    }

    fn restore(&mut self, s: &MethodState) -> Result<()> {
        if s.windows.len() == self.windows.len() {
            self.windows = s.windows.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// LibMTL's formula: K exp(r_i / T) / sum_j exp(r_j / T), r_i = L_i(t-1) / L_i(t-2).
    #[test]
    fn weights_follow_the_ratio_of_the_last_two_windows() {
        let mut d = Dwa::new(2, 2, 2.0);
        // windows of 2 updates: task 0 falls 1.0 -> 0.5, task 1 stays 0.8 -> 0.8.
        for (step, l0, l1) in [(0, 1.0, 0.8), (1, 1.0, 0.8), (2, 0.5, 0.8), (3, 0.5, 0.8)] {
            d.observe(step, &[(0, l0), (1, l1)]);
        }
        let gram = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let mut rng = StdRng::seed_from_u64(0);
        let step = |st: usize| Step {
            step: st,
            tasks: &[0, 1],
            losses: &[0.5, 0.8],
            gram: &gram,
            last_layer_norms: &[1.0, 1.0],
        };
        // Before two windows are complete: equal weights.
        assert_eq!(
            d.combine(&step(2), &mut rng).unwrap().shared,
            vec![1.0, 1.0]
        );
        let w = d.combine(&step(4), &mut rng).unwrap().shared;
        let (r0, r1) = (0.5f64, 1.0f64);
        let z = (r0 / 2.0).exp() + (r1 / 2.0).exp();
        assert!((w[0] - 2.0 * (r0 / 2.0).exp() / z).abs() < 1e-12, "{w:?}");
        assert!((w[1] - 2.0 * (r1 / 2.0).exp() / z).abs() < 1e-12);
        assert!(
            w[0] < w[1],
            "the task that improves faster gets less weight"
        );
    }
}
