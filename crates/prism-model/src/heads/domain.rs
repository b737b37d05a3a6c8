//! The domain classifier of domain-adversarial training (Ganin et al. 2016): a one-hidden-layer
//! MLP over the pooled representation, predicting source (0) vs target (1) domain. It sits
//! behind a gradient-reversal layer (prism-train's `grad_reverse`).

use crate::error::Result;
use crate::nn::{Linear, ParamBuilder};
use candle_core::Tensor;

pub struct DomainHead {
    hidden: Linear,
    out: Linear,
}

impl DomainHead {
    pub fn load(pb: &ParamBuilder, hidden: usize, std: f64) -> Result<Self> {
        Ok(Self {
            hidden: Linear::load_or_init(&pb.pp("hidden"), hidden, hidden, std)?,
            out: Linear::load_or_init(&pb.pp("out"), hidden, 2, std)?,
        })
    }

    /// # Shapes
    /// `pooled`: (B, C) -> domain logits (B, 2)
    pub fn forward(&self, pooled: &Tensor) -> Result<Tensor> {
        self.out.forward(&self.hidden.forward(pooled)?.relu()?)
    }
}
