//! NoiseTunnel (Captum's `NoiseTunnel`): a gradient method run on noisy copies of the word
//! embeddings, its element-wise attributions aggregated over the copies — SmoothGrad (Smilkov
//! et al. 2017: the mean), SmoothGrad² (the mean of squares) or VarGrad (Adebayo et al. 2018:
//! the variance) — and then reduced per token as the base method reduces (saliency: L2 norm;
//! gradient × input and IG: sum). Element-wise attributions are Captum's: saliency |dF/de|,
//! gradient × input dF/de · e and IG (e − e') · avg dF/de, each at the noisy copy e.

use super::integrated::IntegratedGradients;
use super::{l2_per_token, sum_per_token};
use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Error, Method, Result};
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the noisy copies' attributions are combined (Captum's `nt_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Smoothing {
    SmoothGrad,
    SmoothGradSq,
    VarGrad,
}

impl Smoothing {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "smoothgrad" => Ok(Self::SmoothGrad),
            "smoothgrad_sq" => Ok(Self::SmoothGradSq),
            "vargrad" => Ok(Self::VarGrad),
            other => Err(Error::Invalid(format!(
                "unknown noise tunnel `{other}` (smoothgrad, smoothgrad_sq, vargrad)"
            ))),
        }
    }
}

/// The gradient method inside the tunnel.
#[derive(Clone, Debug)]
pub enum Base {
    Saliency,
    GradientXInput,
    IntegratedGradients(IntegratedGradients),
}

pub struct NoiseTunnel {
    pub base: Base,
    pub smoothing: Smoothing,
    /// Noisy copies (Captum's `nt_samples`).
    pub samples: usize,
    /// Noise standard deviation as a fraction of (max − min) of the example's embedding values
    /// (the SmoothGrad paper's 10-20%).
    pub noise: f64,
    /// Noisy copies per forward/backward pass (saliency, gradient × input); IG batches its
    /// interpolation points with its own `batch_size`.
    pub batch_size: usize,
    pub seed: u64,
    /// The noise itself, (samples, T, C), instead of seeded draws (to compare with Captum given
    /// the same draws).
    pub draws: Option<Tensor>,
}

impl NoiseTunnel {
    pub fn new(base: Base, smoothing: Smoothing) -> Self {
        Self {
            base,
            smoothing,
            samples: 20,
            noise: 0.15,
            batch_size: 16,
            seed: 0,
            draws: None,
        }
    }

    /// Gaussian noise (samples, T, C) of standard deviation `noise` × range of `e` (1, T, C).
    fn noise_for(&self, e: &Tensor) -> Result<Tensor> {
        let (_, t, c) = e.dims3()?;
        if let Some(d) = &self.draws {
            if d.dims() != [self.samples, t, c] {
                return Err(Error::Invalid(format!(
                    "noise draws have shape {:?}, expected [{}, {t}, {c}]",
                    d.dims(),
                    self.samples
                )));
            }
            return Ok(d.to_device(e.device())?);
        }
        let vals: Vec<f32> = e.flatten_all()?.to_vec1()?;
        let (lo, hi) = vals
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let sigma = self.noise * (hi - lo) as f64;
        let mut rng = StdRng::seed_from_u64(self.seed);
        Ok(Tensor::from_vec(
            gaussian(&mut rng, self.samples * t * c, sigma),
            (self.samples, t, c),
            e.device(),
        )?)
    }

    /// Element-wise attributions (S, T, C) of the noisy copies (S, T, C).
    fn element_attributions(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
        noisy: &Tensor,
    ) -> Result<Tensor> {
        if let Base::IntegratedGradients(ig) = &self.base {
            let b = ig.baseline_embeddings(m, x)?;
            return ig.integrate(m, x, target, noisy, &b);
        }
        let mut parts = Vec::new();
        let s = noisy.dim(0)?;
        let step = self.batch_size.max(1);
        for start in (0..s).step_by(step) {
            let chunk = noisy.narrow(0, start, step.min(s - start))?;
            let (g, _) = m.gradients(&chunk, x, target)?;
            parts.push(match self.base {
                Base::Saliency => g.abs()?,
                _ => (g * &chunk)?,
            });
        }
        Ok(Tensor::cat(&parts, 0)?)
    }
}

/// `n` draws of N(0, sigma²) by the Box-Muller transform.
pub(crate) fn gaussian(rng: &mut StdRng, n: usize, sigma: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * sigma) as f32
        })
        .collect()
}

impl Method for NoiseTunnel {
    fn name(&self) -> &'static str {
        use Smoothing::*;
        match (&self.base, self.smoothing) {
            (Base::Saliency, SmoothGrad) => "smoothgrad",
            (Base::Saliency, SmoothGradSq) => "saliency:smoothgrad_sq",
            (Base::Saliency, VarGrad) => "saliency:vargrad",
            (Base::GradientXInput, SmoothGrad) => "grad_x_input:smoothgrad",
            (Base::GradientXInput, SmoothGradSq) => "grad_x_input:smoothgrad_sq",
            (Base::GradientXInput, VarGrad) => "grad_x_input:vargrad",
            (Base::IntegratedGradients(_), SmoothGrad) => "ig:smoothgrad",
            (Base::IntegratedGradients(_), SmoothGradSq) => "ig:smoothgrad_sq",
            (Base::IntegratedGradients(_), VarGrad) => "ig:vargrad",
        }
    }

    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        if self.samples == 0 {
            return Err(Error::Invalid(
                "a noise tunnel needs at least one sample".into(),
            ));
        }
        let e = m.embeddings(x)?; // (1, T, C)
        let noisy = e.broadcast_add(&self.noise_for(&e)?)?;
        let a = self.element_attributions(m, x, target, &noisy)?; // (S, T, C)
        let mean = a.mean_keepdim(0)?;
        let agg = match self.smoothing {
            Smoothing::SmoothGrad => mean,
            Smoothing::SmoothGradSq => a.sqr()?.mean_keepdim(0)?,
            Smoothing::VarGrad => (a.sqr()?.mean_keepdim(0)? - mean.sqr()?)?,
        };
        let scores = match self.base {
            Base::Saliency => l2_per_token(&agg)?,
            _ => sum_per_token(&agg)?,
        };
        let f = m.f_from_embeds(&e, x, target)?[0];
        Ok(m.attributions(x, self.name(), target, scores, f, None))
    }
}
