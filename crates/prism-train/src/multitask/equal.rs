//! Equal weighting: each task's loss times its fixed `weight` from the config (1 unless set).

use super::{Combination, Method, Step, Weighting};
use crate::error::Result;
use rand::rngs::StdRng;

pub struct Equal {
    weights: Vec<f64>,
}

impl Equal {
    pub fn new(weights: Vec<f64>) -> Self {
        Self { weights }
    }
}

impl Weighting for Equal {
    fn method(&self) -> Method {
        Method::Equal
    }

    fn combine(&mut self, s: &Step, _rng: &mut StdRng) -> Result<Combination> {
        Ok(Combination::weights(
            s.tasks.iter().map(|&t| self.weights[t]).collect(),
        ))
    }
}
