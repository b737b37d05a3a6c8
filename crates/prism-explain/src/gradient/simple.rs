//! Saliency (Simonyan et al. 2014) and gradient x input (Shrikumar et al. 2016); their noisy
//! versions (SmoothGrad and the other NoiseTunnel variants) are in `noise.rs`.

use super::{l2_per_token, sum_per_token};
use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Method, Result};

/// |dF/de| per token: the L2 norm of the gradient at each token's embedding.
pub struct Saliency;

impl Method for Saliency {
    fn name(&self) -> &'static str {
        "saliency"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let e = m.embeddings(x)?;
        let (g, f) = m.gradients(&e, x, target)?;
        Ok(m.attributions(x, self.name(), target, l2_per_token(&g)?, f[0], None))
    }
}

/// dF/de · e per token (summed over the embedding dimension).
pub struct GradientXInput;

impl Method for GradientXInput {
    fn name(&self) -> &'static str {
        "grad_x_input"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let e = m.embeddings(x)?;
        let (g, f) = m.gradients(&e, x, target)?;
        Ok(m.attributions(
            x,
            self.name(),
            target,
            sum_per_token(&(g * &e)?)?,
            f[0],
            None,
        ))
    }
}
