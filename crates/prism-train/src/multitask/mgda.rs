//! MGDA (Sener & Koltun 2018): the shared update is the min-norm point of the convex hull of
//! the K shared-encoder gradients, `sum_i w_i g_i` with w on the simplex minimising
//! |sum_i w_i g_i|, found by their Frank-Wolfe solver ([`super::simplex::min_norm`]); heads keep
//! their own gradients. The paper's MGDA-UB bounds this through the gradients of a
//! representation all tasks share; prism's tasks each read their own batch, so there is no
//! shared representation tensor and the solver runs on the parameter gradients (LibMTL's MGDA
//! with `rep_grad = False`).

use super::simplex::min_norm;
use super::{Combination, Method, Step, Weighting};
use crate::error::Result;
use rand::rngs::StdRng;

pub struct Mgda;

impl Weighting for Mgda {
    fn method(&self) -> Method {
        Method::Mgda
    }

    fn combine(&mut self, s: &Step, _rng: &mut StdRng) -> Result<Combination> {
        Ok(Combination {
            shared: min_norm(s.gram),
            heads: vec![1.0; s.tasks.len()],
            param_grad: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The min-norm combination is a common descent direction: its inner product with every
    /// task's gradient is at least its squared norm (the KKT condition of the min-norm point).
    #[test]
    fn result_is_a_descent_direction_for_every_task() {
        let vs = [
            vec![1.0, 0.2, 0.0],
            vec![-0.7, 1.0, 0.4],
            vec![0.1, -0.3, 1.0],
        ];
        let gram: Vec<Vec<f64>> = vs
            .iter()
            .map(|a| {
                vs.iter()
                    .map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum())
                    .collect()
            })
            .collect();
        let s = Step {
            step: 0,
            tasks: &[0, 1, 2],
            losses: &[1.0, 1.0, 1.0],
            gram: &gram,
            last_layer_norms: &[1.0, 1.0, 1.0],
        };
        let c = Mgda.combine(&s, &mut StdRng::seed_from_u64(0)).unwrap();
        let d: Vec<f64> = (0..3)
            .map(|e| (0..3).map(|i| c.shared[i] * vs[i][e]).sum())
            .collect();
        let dd: f64 = d.iter().map(|x| x * x).sum();
        for v in &vs {
            let g: f64 = v.iter().zip(&d).map(|(a, b)| a * b).sum();
            assert!(g >= dd - 1e-9, "{g} < {dd}");
        }
        assert_eq!(c.heads, vec![1.0; 3]);
    }
}
