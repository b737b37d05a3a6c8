//! Random loss weighting (Lin et al. 2021), as LibMTL's `RLW`: the weights of each micro-batch
//! are the softmax of a standard normal draw (so they sum to 1).

use super::{Combination, Method, Step, Weighting};
use crate::error::Result;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

pub struct Rlw;

/// softmax(z) for z drawn from `rng`.
pub fn draw(k: usize, rng: &mut StdRng) -> Vec<f64> {
    let z: Vec<f64> = (0..k).map(|_| StandardNormal.sample(rng)).collect();
    let w = super::scaled_softmax(&z, 1.0);
    w.iter().map(|x| x / k as f64).collect()
}

impl Weighting for Rlw {
    fn method(&self) -> Method {
        Method::Rlw
    }

    fn combine(&mut self, s: &Step, rng: &mut StdRng) -> Result<Combination> {
        Ok(Combination::weights(draw(s.tasks.len(), rng)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn weights_are_a_random_point_of_the_simplex() {
        let mut rng = StdRng::seed_from_u64(3);
        let a = draw(3, &mut rng);
        let b = draw(3, &mut rng);
        assert!((a.iter().sum::<f64>() - 1.0).abs() < 1e-12 && a.iter().all(|&x| x > 0.0));
        assert_ne!(a, b);
        assert_eq!(a, draw(3, &mut StdRng::seed_from_u64(3)));
    }
}
