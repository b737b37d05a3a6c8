//! GradientSHAP (Lundberg & Lee 2017; Captum's `GradientShap`): expected gradients over a
//! distribution of baselines. Each sample draws a baseline e'ᵢ from the distribution, adds
//! Gaussian noise to the input (eᵢ = e + εᵢ), draws αᵢ ~ U(0, 1) and takes the gradient at
//! e'ᵢ + αᵢ (eᵢ − e'ᵢ); the attribution is the mean over samples of dF/de · (eᵢ − e'ᵢ), summed
//! per token. In expectation the attributions sum to F(x) − E[F(baseline)]; `delta` reports
//! how far this estimate is from it.

use super::integrated::{Baseline, IntegratedGradients};
use super::noise::gaussian;
use super::sum_per_token;
use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Error, Method, Result};
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Fixed draws for every sample (instead of seeded ones), to compare with Captum exactly.
#[derive(Clone, Debug)]
pub struct ShapDraws {
    /// Which baseline each sample uses (index into `baselines`).
    pub baseline: Vec<usize>,
    /// Each sample's point on the path, in [0, 1].
    pub alpha: Vec<f32>,
    /// Each sample's input noise (samples, T, C); `None` is no noise.
    pub noise: Option<Tensor>,
}

pub struct GradientShap {
    /// The baseline distribution (default: the [PAD] and the [MASK] baselines, special tokens
    /// kept).
    pub baselines: Vec<Baseline>,
    pub samples: usize,
    /// Input noise standard deviation as a fraction of (max − min) of the embedding values
    /// (Captum's default: no noise).
    pub noise: f64,
    /// Samples per forward/backward pass.
    pub batch_size: usize,
    pub seed: u64,
    pub draws: Option<ShapDraws>,
}

impl Default for GradientShap {
    fn default() -> Self {
        Self {
            baselines: vec![Baseline::Pad, Baseline::Mask],
            samples: 20,
            noise: 0.0,
            batch_size: 16,
            seed: 0,
            draws: None,
        }
    }
}

impl GradientShap {
    /// The baseline distribution's embeddings (K, T, C).
    fn baseline_embeddings(&self, m: &ExplainModel, x: &ExplainInput) -> Result<Tensor> {
        if self.baselines.is_empty() {
            return Err(Error::Invalid(
                "GradientSHAP needs at least one baseline".into(),
            ));
        }
        let rows = self
            .baselines
            .iter()
            .map(|b| {
                IntegratedGradients {
                    baseline: b.clone(),
                    ..Default::default()
                }
                .baseline_embeddings(m, x)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }

    fn draws_for(&self, e: &Tensor) -> Result<ShapDraws> {
        let (_, t, c) = e.dims3()?;
        let k = self.baselines.len();
        if let Some(d) = &self.draws {
            let noise_ok = d
                .noise
                .as_ref()
                .is_none_or(|n| n.dims() == [self.samples, t, c]);
            if d.baseline.len() != self.samples
                || d.alpha.len() != self.samples
                || d.baseline.iter().any(|&i| i >= k)
                || !noise_ok
            {
                return Err(Error::Invalid(format!(
                    "GradientSHAP draws must give {} samples (baselines below {k}, noise of \
                     shape [{}, {t}, {c}])",
                    self.samples, self.samples
                )));
            }
            return Ok(d.clone());
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        let baseline = (0..self.samples).map(|_| rng.random_range(0..k)).collect();
        let alpha = (0..self.samples).map(|_| rng.random::<f32>()).collect();
        let noise = if self.noise > 0.0 {
            let vals: Vec<f32> = e.flatten_all()?.to_vec1()?;
            let (lo, hi) = vals
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            let n = gaussian(
                &mut rng,
                self.samples * t * c,
                self.noise * (hi - lo) as f64,
            );
            Some(Tensor::from_vec(n, (self.samples, t, c), e.device())?)
        } else {
            None
        };
        Ok(ShapDraws {
            baseline,
            alpha,
            noise,
        })
    }
}

impl Method for GradientShap {
    fn name(&self) -> &'static str {
        "gradient_shap"
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
                "GradientSHAP needs at least one sample".into(),
            ));
        }
        let e = m.embeddings(x)?; // (1, T, C)
        let dev = e.device();
        let bases = self.baseline_embeddings(m, x)?; // (K, T, C)
        let d = self.draws_for(&e)?;
        let mut acc = e.zeros_like()?.squeeze(0)?; // (T, C)
        let step = self.batch_size.max(1);
        for start in (0..self.samples).step_by(step) {
            let s = step.min(self.samples - start);
            let idx = Tensor::from_vec(
                d.baseline[start..start + s]
                    .iter()
                    .map(|&i| i as u32)
                    .collect::<Vec<_>>(),
                s,
                dev,
            )?;
            let b = bases.index_select(&idx, 0)?; // (s, T, C)
            let mut inputs = e.repeat((s, 1, 1))?;
            if let Some(n) = &d.noise {
                inputs = (inputs + n.narrow(0, start, s)?.to_device(dev)?)?;
            }
            let alpha = Tensor::from_vec(d.alpha[start..start + s].to_vec(), (s, 1, 1), dev)?;
            let diff = (&inputs - &b)?;
            let point = (&b + diff.broadcast_mul(&alpha)?)?;
            let (g, _) = m.gradients(&point, x, target)?;
            acc = (acc + (g * diff)?.sum(0)?)?;
        }
        let attr = (acc / self.samples as f64)?;
        let scores = sum_per_token(&attr)?;
        let f = m.f_from_embeds(&Tensor::cat(&[&e, &bases], 0)?, x, target)?;
        let expected_fb: f64 =
            d.baseline.iter().map(|&i| f[1 + i] as f64).sum::<f64>() / self.samples as f64;
        let delta = scores.iter().map(|&v| v as f64).sum::<f64>() - (f[0] as f64 - expected_fb);
        Ok(m.attributions(x, self.name(), target, scores, f[0], Some(delta as f32)))
    }
}
