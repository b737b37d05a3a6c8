//! Adversarial training on the word-embedding output and consistency regularisers:
//! FGM (Miyato et al. 2017), PGD (Madry et al. 2018), FreeLB (Zhu et al. 2020), SMART's
//! smoothness-inducing adversarial regulariser (Jiang et al. 2020) and R-Drop (Liang et al.
//! 2021). Each returns the parameter gradients of one training step, built on
//! `prism_model::embedding_gradients` (gradients w.r.t. the embeddings and the parameters).

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, D};
use prism_model::{embedding_gradients_with, Encoder, EncoderInput, EncoderOutput, Mode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// `[task.adversarial]` in the TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdversarialConfig {
    /// One step of size `epsilon` along the normalised gradient; clean + adversarial loss.
    Fgm {
        #[serde(default = "d_one")]
        epsilon: f64,
    },
    /// `steps` projected ascent steps of size `alpha` inside the L2 ball of radius `epsilon`.
    Pgd {
        #[serde(default = "d_one")]
        epsilon: f64,
        #[serde(default = "d_alpha")]
        alpha: f64,
        #[serde(default = "d_steps")]
        steps: usize,
    },
    /// `steps` ascent steps with gradients accumulated over all of them ("free" training).
    FreeLb {
        #[serde(default = "d_adv_lr")]
        adv_lr: f64,
        #[serde(default = "d_steps")]
        steps: usize,
        #[serde(default = "d_init")]
        init_mag: f64,
        /// Radius of the L2 ball (0: unbounded).
        #[serde(default)]
        max_norm: f64,
    },
    /// Loss + `weight` * symmetric KL between clean and perturbed outputs, the perturbation
    /// found by one projected (L-inf) ascent step from Gaussian noise.
    Smart {
        #[serde(default = "d_smart_eps")]
        epsilon: f64,
        #[serde(default = "d_smart_step")]
        step_size: f64,
        #[serde(default = "d_smart_noise")]
        noise: f64,
        #[serde(default = "d_one")]
        weight: f64,
    },
    /// Two dropout passes: mean loss + `alpha` * symmetric KL between their outputs.
    RDrop {
        #[serde(default = "d_one")]
        alpha: f64,
    },
}

impl AdversarialConfig {
    /// Every field in its range: sizes finite and positive (FreeLB's `max_norm` and SMART's
    /// `noise` may be 0), at least one ascent step. `key` is the TOML path of the section.
    pub fn validate(&self, key: &str) -> std::result::Result<(), String> {
        let positive = |name: &str, v: f64| -> std::result::Result<(), String> {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "`{key}.{name}` {v} must be a finite number above 0"
                ))
            }
        };
        let non_negative = |name: &str, v: f64| -> std::result::Result<(), String> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "`{key}.{name}` {v} must be a finite number of at least 0"
                ))
            }
        };
        let steps = |n: usize| -> std::result::Result<(), String> {
            if n == 0 {
                Err(format!("`{key}.steps` must be at least 1"))
            } else {
                Ok(())
            }
        };
        match *self {
            AdversarialConfig::Fgm { epsilon } => positive("epsilon", epsilon),
            AdversarialConfig::Pgd {
                epsilon,
                alpha,
                steps: n,
            } => {
                positive("epsilon", epsilon)?;
                positive("alpha", alpha)?;
                steps(n)
            }
            AdversarialConfig::FreeLb {
                adv_lr,
                steps: n,
                init_mag,
                max_norm,
            } => {
                positive("adv_lr", adv_lr)?;
                steps(n)?;
                non_negative("init_mag", init_mag)?;
                non_negative("max_norm", max_norm)
            }
            AdversarialConfig::Smart {
                epsilon,
                step_size,
                noise,
                weight,
            } => {
                positive("epsilon", epsilon)?;
                positive("step_size", step_size)?;
                non_negative("noise", noise)?;
                positive("weight", weight)
            }
            AdversarialConfig::RDrop { alpha } => positive("alpha", alpha),
        }
    }
}

fn d_one() -> f64 {
    1.0
}
fn d_alpha() -> f64 {
    0.3
}
fn d_steps() -> usize {
    3
}
fn d_adv_lr() -> f64 {
    0.1
}
fn d_init() -> f64 {
    0.01
}
fn d_smart_eps() -> f64 {
    1e-5
}
fn d_smart_step() -> f64 {
    1e-3
}
fn d_smart_noise() -> f64 {
    1e-5
}

/// The losses of one step, for the log.
#[derive(Clone, Debug, Default)]
pub struct StepLosses {
    pub task: f64,
    /// Adversarial loss (FGM/PGD/FreeLB) or regulariser (SMART, R-Drop).
    pub extra: Option<f64>,
}

/// What a task contributes: its head's logits from an encoder output, and its loss from logits.
pub struct TaskFns<'a> {
    pub logits: &'a dyn Fn(&EncoderOutput, &Mode) -> Result<Tensor>,
    pub loss: &'a dyn Fn(&Tensor) -> Result<Tensor>,
    /// Symmetric divergence between two outputs (classification: symmetric KL; regression:
    /// squared difference).
    pub divergence: &'a dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
}

fn add(a: Option<GradStore>, b: GradStore) -> Result<GradStore> {
    Ok(match a {
        None => b,
        Some(mut a) => {
            a.extend(b)?;
            a
        }
    })
}

/// Each example's perturbation divided by its L2 norm over (T, C).
fn normalize_l2(g: &Tensor) -> Result<Tensor> {
    let n = g.sqr()?.sum_keepdim(D::Minus1)?.sum_keepdim(1)?.sqrt()?; // (B, 1, 1)
    Ok(g.broadcast_div(&(n + 1e-12)?)?)
}

/// Scale down each example's perturbation whose L2 norm exceeds `eps`.
pub fn project_l2(d: &Tensor, eps: f64) -> Result<Tensor> {
    let n = d.sqr()?.sum_keepdim(D::Minus1)?.sum_keepdim(1)?.sqrt()?;
    let scale = (n.clamp(eps, f64::MAX)? / eps)?.recip()?; // min(1, eps / n)
    Ok(d.broadcast_mul(&scale)?)
}

/// Symmetric KL divergence between the softmax distributions of two logit tensors, averaged
/// over rows: `sum (p - q)(log p - log q)`.
pub fn symmetric_kl(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let la = crate::loss::log_softmax(a)?;
    let lb = crate::loss::log_softmax(b)?;
    let d = ((la.exp()? - lb.exp()?)? * (la - lb)?)?.sum(D::Minus1)?;
    Ok(d.mean_all()?)
}

/// Symmetric KL between the per-label Bernoulli distributions σ(a) and σ(b) (multi-label
/// logits, B × L): Σ_labels (p − q)(logit p − logit q), averaged over the batch, the sigmoid
/// counterpart of [`symmetric_kl`].
pub fn symmetric_bernoulli_kl(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let p = (crate::loss::log_sigmoid(a)?.exp()? - crate::loss::log_sigmoid(b)?.exp()?)?;
    // For Bernoulli variables KL(p‖q) + KL(q‖p) = (p − q)(logit p − logit q), and logit σ(x) = x.
    Ok((p * (a - b)?)?.sum(D::Minus1)?.mean_all()?)
}

/// One training step of `task` under `cfg`; returns all parameter gradients and the losses.
pub fn adversarial_step<E: Encoder + ?Sized>(
    enc: &E,
    input: &EncoderInput,
    mode: &Mode,
    cfg: &AdversarialConfig,
    task: &TaskFns,
    seed: u64,
) -> Result<(GradStore, StepLosses)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let e = enc.word_embeddings(&input.input_ids)?; // (B, T, C), attached to the table
    let loss_at = |embeds: &Tensor,
                   with_params: bool,
                   scale: f64|
     -> Result<(prism_model::EmbeddingGrads, f64)> {
        let mut value = 0.0;
        let g = embedding_gradients_with(enc, input, mode, Some(embeds), with_params, |out| {
            let logits = (task.logits)(out, mode)?;
            let l = (task.loss)(&logits)?;
            value = l.to_scalar::<f32>()? as f64;
            Ok::<_, Error>((l * scale)?)
        })?;
        Ok((g, value))
    };
    let params = |g: prism_model::EmbeddingGrads| -> Result<GradStore> {
        g.params
            .ok_or_else(|| Error::Config("no parameter gradients".into()))
    };
    match cfg {
        AdversarialConfig::Fgm { epsilon } => {
            let (clean, lc) = loss_at(&e, true, 1.0)?;
            let r = (normalize_l2(&clean.grad)? * *epsilon)?.detach();
            let (adv, la) = loss_at(&(&e + r)?, true, 1.0)?;
            let g = add(Some(params(clean)?), params(adv)?)?;
            Ok((
                g,
                StepLosses {
                    task: lc,
                    extra: Some(la),
                },
            ))
        }
        AdversarialConfig::Pgd {
            epsilon,
            alpha,
            steps,
        } => {
            let (clean, lc) = loss_at(&e, true, 1.0)?;
            let mut delta = e.zeros_like()?.detach();
            for _ in 0..*steps {
                let (g, _) = loss_at(&(&e + &delta)?, false, 1.0)?;
                delta =
                    project_l2(&(delta + (normalize_l2(&g.grad)? * *alpha)?)?, *epsilon)?.detach();
            }
            let (adv, la) = loss_at(&(&e + &delta)?, true, 1.0)?;
            Ok((
                add(Some(params(clean)?), params(adv)?)?,
                StepLosses {
                    task: lc,
                    extra: Some(la),
                },
            ))
        }
        AdversarialConfig::FreeLb {
            adv_lr,
            steps,
            init_mag,
            max_norm,
        } => {
            // delta_0 ~ U(-1, 1) scaled to norm init_mag / sqrt(real tokens x C) per example.
            let (b, t, c) = e.dims3()?;
            let mask: Vec<f32> = input
                .attention_mask
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            let mut init = vec![0f32; b * t * c];
            for bi in 0..b {
                let len: f32 = mask[bi * t..(bi + 1) * t].iter().sum();
                let mag = (*init_mag / ((len as f64) * c as f64).sqrt().max(1.0)) as f32;
                for ti in 0..t {
                    for ci in 0..c {
                        init[(bi * t + ti) * c + ci] =
                            (rng.random::<f32>() * 2.0 - 1.0) * mag * mask[bi * t + ti];
                    }
                }
            }
            let mut delta = Tensor::from_vec(init, (b, t, c), e.device())?;
            let k = (*steps).max(1);
            let mut grads = None;
            let mut first = 0.0;
            let mut last = 0.0;
            for s in 0..k {
                let (g, l) = loss_at(&(&e + &delta)?, true, 1.0 / k as f64)?;
                if s == 0 {
                    first = l;
                }
                last = l;
                let step = (normalize_l2(&g.grad)? * *adv_lr)?;
                grads = Some(add(grads, params(g)?)?);
                delta = (delta + step)?;
                if *max_norm > 0.0 {
                    delta = project_l2(&delta, *max_norm)?;
                }
                delta = delta.detach();
            }
            Ok((
                grads.ok_or_else(|| Error::Config("FreeLB: no steps".into()))?,
                StepLosses {
                    task: first,
                    extra: Some(last),
                },
            ))
        }
        AdversarialConfig::Smart {
            epsilon,
            step_size,
            noise,
            weight,
        } => {
            let clean_out = enc.forward_from_word_embeddings(&e, input, mode)?;
            let clean_logits = (task.logits)(&clean_out, mode)?;
            let l = (task.loss)(&clean_logits)?;
            let n = e.elem_count();
            let z: Vec<f32> = (0..n)
                .map(|_| {
                    let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * noise)
                        as f32
                })
                .collect();
            let mut delta = Tensor::from_vec(z, e.shape(), e.device())?;
            // One ascent step on the divergence from the (fixed) clean output, L-inf normalised.
            let target = clean_logits.detach();
            let g = embedding_gradients_with(
                enc,
                input,
                mode,
                Some(&(e.detach() + &delta)?),
                false,
                |out| {
                    let adv = (task.logits)(out, mode)?;
                    (task.divergence)(&adv, &target)
                },
            )?;
            let inf = g.grad.abs()?.max_keepdim(D::Minus1)?.max_keepdim(1)?; // (B, 1, 1)
            delta = (delta + (g.grad.broadcast_div(&(inf + 1e-12)?)? * *step_size)?)?;
            delta = delta.clamp(-*epsilon, *epsilon)?.detach();
            let adv_out = enc.forward_from_word_embeddings(&(&e + &delta)?, input, mode)?;
            let adv_logits = (task.logits)(&adv_out, mode)?;
            let reg = (task.divergence)(&adv_logits, &clean_logits)?;
            let total = (&l + (&reg * *weight)?)?;
            let lv = l.to_scalar::<f32>()? as f64;
            let rv = reg.to_scalar::<f32>()? as f64;
            Ok((
                total.backward()?,
                StepLosses {
                    task: lv,
                    extra: Some(rv),
                },
            ))
        }
        AdversarialConfig::RDrop { alpha } => {
            let a = (task.logits)(&enc.forward(input, mode)?, mode)?;
            let b = (task.logits)(&enc.forward(input, mode)?, mode)?;
            let l = (((task.loss)(&a)? + (task.loss)(&b)?)? * 0.5)?;
            let kl = ((task.divergence)(&a, &b)? * 0.5)?;
            let total = (&l + (&kl * *alpha)?)?;
            let (lv, kv) = (l.to_scalar::<f32>()? as f64, kl.to_scalar::<f32>()? as f64);
            Ok((
                total.backward()?,
                StepLosses {
                    task: lv,
                    extra: Some(kv),
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn symmetric_bernoulli_kl_is_the_sum_of_both_kls() {
        let a = [[2.0f64, -1.0, 0.3], [-4.0, 0.0, 5.0]];
        let b = [[0.5f64, 1.0, 0.3], [-1.0, 2.0, 4.0]];
        let t = |x: &[[f64; 3]; 2]| Tensor::new(x, &Device::Cpu).unwrap();
        let got: f64 = symmetric_bernoulli_kl(&t(&a), &t(&b))
            .unwrap()
            .to_scalar()
            .unwrap();
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        let kl = |p: f64, q: f64| p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
        let mut want = 0.0;
        for i in 0..2 {
            for j in 0..3 {
                let (p, q) = (sig(a[i][j]), sig(b[i][j]));
                want += kl(p, q) + kl(q, p);
            }
        }
        want /= 2.0;
        assert!((got - want).abs() < 1e-10, "{got} vs {want}");
    }

    #[test]
    fn projection_and_normalisation_are_per_example() {
        let d = Tensor::new(&[[[3f32, 4.0]], [[0.3, 0.4]]], &Device::Cpu).unwrap(); // norms 5 and 0.5
        let p: Vec<Vec<Vec<f32>>> = project_l2(&d, 1.0).unwrap().to_vec3().unwrap();
        assert!((p[0][0][0] - 0.6).abs() < 1e-6 && (p[0][0][1] - 0.8).abs() < 1e-6);
        assert!(
            (p[1][0][0] - 0.3).abs() < 1e-6,
            "inside the ball: unchanged"
        );
        let n: Vec<Vec<Vec<f32>>> = normalize_l2(&d).unwrap().to_vec3().unwrap();
        assert!((n[1][0][0] - 0.6).abs() < 1e-5);
    }

    #[test]
    fn symmetric_kl_is_symmetric_and_zero_on_equal_inputs() {
        let a = Tensor::new(&[[1f32, 2.0, 0.5], [0.0, -1.0, 3.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[0.5f32, 2.5, 0.0], [1.0, -1.0, 2.0]], &Device::Cpu).unwrap();
        let ab: f32 = symmetric_kl(&a, &b).unwrap().to_scalar().unwrap();
        let ba: f32 = symmetric_kl(&b, &a).unwrap().to_scalar().unwrap();
        assert!((ab - ba).abs() < 1e-6 && ab > 0.0);
        let aa: f32 = symmetric_kl(&a, &a).unwrap().to_scalar().unwrap();
        assert!(aa.abs() < 1e-7);
    }
}
