//! Saliency (Simonyan et al. 2014), gradient x input (Shrikumar et al. 2016) and SmoothGrad
//! (Smilkov et al. 2017).

use super::{l2_per_token, sum_per_token};
use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Method, Result};
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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

/// Saliency averaged over `samples` copies of the embeddings with Gaussian noise of standard
/// deviation `noise` x (max - min) of the embedding values (the paper's 10-20%).
pub struct SmoothGrad {
    pub samples: usize,
    pub noise: f64,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for SmoothGrad {
    fn default() -> Self {
        Self {
            samples: 20,
            noise: 0.15,
            batch_size: 16,
            seed: 0,
        }
    }
}

impl Method for SmoothGrad {
    fn name(&self) -> &'static str {
        "smoothgrad"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let e = m.embeddings(x)?; // (1, T, C)
        let vals: Vec<f32> = e.flatten_all()?.to_vec1()?;
        let (lo, hi) = vals
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let sigma = self.noise * (hi - lo) as f64;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut total: Option<Tensor> = None;
        let mut left = self.samples.max(1);
        while left > 0 {
            let s = left.min(self.batch_size.max(1));
            left -= s;
            let noise: Vec<f32> = (0..s * vals.len())
                .map(|_| {
                    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * sigma)
                        as f32
                })
                .collect();
            let noisy = e.repeat((s, 1, 1))?.add(&Tensor::from_vec(
                noise,
                (s, e.dim(1)?, e.dim(2)?),
                e.device(),
            )?)?;
            let (g, _) = m.gradients(&noisy, x, target)?;
            // SmoothGrad averages the saliency maps (absolute gradients) of the noisy copies.
            let norms = g.sqr()?.sum(2)?.sqrt()?.sum(0)?; // (T)
            total = Some(match total {
                None => norms,
                Some(t) => (t + norms)?,
            });
        }
        let scores: Vec<f32> = (total
            .ok_or_else(|| crate::Error::Invalid("no samples".into()))?
            / self.samples.max(1) as f64)?
            .to_vec1()?;
        let f = m.f_from_embeds(&e, x, target)?[0];
        Ok(m.attributions(x, self.name(), target, scores, f, None))
    }
}
