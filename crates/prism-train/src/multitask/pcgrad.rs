//! PCGrad (Yu et al. 2020): for each task i, its shared gradient g_i' starts as g_i and, for the
//! other tasks j in a random order, loses its component along g_j whenever g_i' . g_j < 0:
//! g_i' -= (g_i' . g_j / |g_j|^2) g_j. The shared gradient is sum_i g_i'; heads keep their own.
//! Each g_i' stays a combination of the original gradients, so the projections run on the
//! Gram matrix: coefficient vectors c_i with g_i' = sum_m c_im g_m.

use super::{Combination, Method, Step, Weighting};
use crate::error::Result;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

pub struct PcGrad;

/// The coefficients c (k x k, g_i' = sum_m c[i][m] g_m) after PCGrad's projections, the other
/// tasks of each i visited in the order `orders[i]`.
pub fn project(gram: &[Vec<f64>], orders: &[Vec<usize>]) -> Vec<Vec<f64>> {
    let k = gram.len();
    let mut c: Vec<Vec<f64>> = (0..k)
        .map(|i| (0..k).map(|m| if m == i { 1.0 } else { 0.0 }).collect())
        .collect();
    for i in 0..k {
        for &j in &orders[i] {
            if j == i {
                continue;
            }
            let dot: f64 = (0..k).map(|m| c[i][m] * gram[m][j]).sum();
            if dot < 0.0 && gram[j][j] > 0.0 {
                c[i][j] -= dot / (gram[j][j] + 1e-20);
            }
        }
    }
    c
}

impl Weighting for PcGrad {
    fn method(&self) -> Method {
        Method::Pcgrad
    }

    fn combine(&mut self, s: &Step, rng: &mut StdRng) -> Result<Combination> {
        let k = s.tasks.len();
        let orders: Vec<Vec<usize>> = (0..k)
            .map(|_| {
                let mut o: Vec<usize> = (0..k).collect();
                o.shuffle(rng);
                o
            })
            .collect();
        let c = project(s.gram, &orders);
        let shared = (0..k).map(|m| (0..k).map(|i| c[i][m]).sum()).collect();
        Ok(Combination {
            shared,
            heads: vec![1.0; k],
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

    /// Against the projection done on the vectors themselves, on a conflicting pair and a
    /// conflicting triple.
    #[test]
    fn matches_explicit_projection() {
        let cases = vec![
            vec![vec![1.0, 0.0], vec![-1.0, 1.0]],
            vec![
                vec![1.0, 0.2, -0.5],
                vec![-0.8, 1.0, 0.1],
                vec![0.3, -1.2, 0.9],
            ],
        ];
        for vs in cases {
            let k = vs.len();
            let gram: Vec<Vec<f64>> = vs
                .iter()
                .map(|a| vs.iter().map(|b| dot(a, b)).collect())
                .collect();
            let orders: Vec<Vec<usize>> = (0..k)
                .map(|i| (0..k).rev().filter(|&j| j != i).collect())
                .collect();
            let c = project(&gram, &orders);
            for i in 0..k {
                let mut g = vs[i].clone();
                for &j in &orders[i] {
                    let d = dot(&g, &vs[j]);
                    if d < 0.0 {
                        let n = dot(&vs[j], &vs[j]);
                        for (x, y) in g.iter_mut().zip(&vs[j]) {
                            *x -= d / n * y;
                        }
                    }
                }
                let from_c: Vec<f64> = (0..vs[0].len())
                    .map(|e| (0..k).map(|m| c[i][m] * vs[m][e]).sum())
                    .collect();
                for (a, b) in g.iter().zip(&from_c) {
                    assert!((a - b).abs() < 1e-12, "task {i}: {g:?} vs {from_c:?}");
                }
            }
        }
        // The pair: g1 = (1, 0), g2 = (-1, 1) conflict (dot -1): g1' = (0.5, 0.5), g2' = (0, 1).
        let vs = [vec![1.0, 0.0], vec![-1.0, 1.0]];
        let gram: Vec<Vec<f64>> = vs
            .iter()
            .map(|a| vs.iter().map(|b| dot(a, b)).collect())
            .collect();
        let c = project(&gram, &[vec![1], vec![0]]);
        let g1: Vec<f64> = (0..2)
            .map(|e| c[0][0] * vs[0][e] + c[0][1] * vs[1][e])
            .collect();
        let g2: Vec<f64> = (0..2)
            .map(|e| c[1][0] * vs[0][e] + c[1][1] * vs[1][e])
            .collect();
        assert!((g1[0] - 0.5).abs() < 1e-12 && (g1[1] - 0.5).abs() < 1e-12);
        assert!(g2[0].abs() < 1e-12 && (g2[1] - 1.0).abs() < 1e-12);
        assert!(dot(&g1, &vs[1]) >= -1e-12 && dot(&g2, &vs[0]) >= -1e-12);
    }

    #[test]
    fn agreeing_gradients_are_left_alone() {
        let gram = vec![vec![1.0, 0.3], vec![0.3, 2.0]];
        assert_eq!(
            project(&gram, &[vec![1], vec![0]]),
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        );
    }
}
