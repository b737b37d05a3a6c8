//! AdamW (Loshchilov & Hutter 2019, as torch.optim.AdamW) written as one in-place,
//! multi-threaded pass per parameter buffer; learning-rate schedules as pure functions of the
//! step; global gradient-norm clipping folded into the same pass.

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;

/// How the learning rate evolves after warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    #[default]
    Linear,
    Cosine,
    Constant,
}

/// The precision of a run's linear-layer products (`precision` in both configs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: the linear layers' forward, dx and dW products in bf16 with f32
    /// accumulation, on AMX or AVX512-BF16 (`prism_model::ops::bf16::autocast`); master
    /// weights, AdamW moments, layer norm, softmax, attention's score products, losses and
    /// reductions in f32. On a CPU with neither unit (or another device) the run is f32.
    Bf16,
}

/// Warm-up steps from a config's `warmup`: a fraction of `steps` (< 1) or a step count (>= 1).
pub fn warmup_steps(warmup: f64, steps: usize) -> usize {
    if warmup >= 1.0 {
        warmup as usize
    } else {
        (warmup * steps as f64).round() as usize
    }
}

/// Linear warm-up from 0 to `peak` over `warmup` steps, then `schedule` down to 0 at `total`.
pub fn lr_at(step: usize, peak: f64, warmup: usize, total: usize, schedule: Schedule) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match schedule {
        Schedule::Linear => peak * (1.0 - progress),
        Schedule::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        Schedule::Constant => peak,
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

struct ParamState {
    name: String,
    var: Var,
    m: Vec<f32>,
    v: Vec<f32>,
    decay: bool,
}

/// AdamW over named parameters. Biases and LayerNorm weights get no weight decay (the usual
/// BERT fine-tuning exclusion).
pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<ParamState>,
    /// Number of updates taken (for bias correction).
    pub t: u64,
}

/// Sum of squared entries, in f64: straight over the buffer on CPU (one parallel pass, no
/// temporaries), through tensor ops elsewhere.
fn sum_squares(g: &Tensor) -> Result<f64> {
    if g.device().is_cpu() && g.dtype() == DType::F32 && g.is_contiguous() {
        let (storage, layout) = g.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(v[a..b].par_chunks(1 << 14).map(sum_squares_f64).sum());
        }
    }
    let s: f32 = g.sqr()?.sum_all()?.to_dtype(DType::F32)?.to_scalar()?;
    Ok(s as f64)
}

/// Whether a parameter is excluded from weight decay.
pub fn no_decay(name: &str) -> bool {
    name.ends_with(".bias")
        || name.contains("LayerNorm")
        || name.contains("layer_norm")
        // learned task weights (uncertainty, GradNorm) are not weights to shrink
        || name.starts_with("prism.multitask.")
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let n = var.elem_count();
                ParamState {
                    decay: !no_decay(&name),
                    name,
                    var,
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        Self { cfg, params, t: 0 }
    }

    /// Global L2 norm of the gradients present in `grads`.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut total = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                total += sum_squares(g)?;
            }
        }
        Ok(total.sqrt())
    }

    /// One update with learning rate `lr`; gradients are multiplied by `grad_scale` first
    /// (clipping and accumulation averaging). Parameters without a gradient are left alone
    /// (their moments are not advanced), as in PyTorch.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - self.cfg.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.cfg.beta2.powi(self.t as i32);
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let kernel = AdamWKernel {
                lr: lr as f32,
                b1: self.cfg.beta1 as f32,
                b2: self.cfg.beta2 as f32,
                eps: self.cfg.eps as f32,
                wd: if p.decay {
                    self.cfg.weight_decay as f32
                } else {
                    0.0
                },
                step_size: (lr / bc1) as f32,
                bc2_sqrt: bc2.sqrt() as f32,
                scale: grad_scale as f32,
                state: Mutex::new((&mut p.m, &mut p.v)),
            };
            if p.var.device().is_cpu() && p.var.dtype() == DType::F32 {
                let g = g.contiguous()?;
                p.var.as_tensor().inplace_op2(&g, &kernel)?;
            } else {
                kernel.apply_with_tensors(&p.var, g)?;
            }
        }
        Ok(())
    }

    /// The update of a training step: the gradient summed over the micro-batches is divided by
    /// `weight` (their number, or the tokens they predicted), its global norm clipped to
    /// `max_grad_norm` (0: no clipping), and one step taken. Returns the norm before clipping.
    pub fn clipped_step(
        &mut self,
        grads: &GradStore,
        lr: f64,
        weight: f64,
        max_grad_norm: f64,
    ) -> Result<f64> {
        let avg = if weight > 0.0 { 1.0 / weight } else { 1.0 };
        let norm = self.grad_norm(grads)? * avg;
        let clip = if max_grad_norm > 0.0 && norm > max_grad_norm {
            max_grad_norm / norm
        } else {
            1.0
        };
        self.step(grads, lr, avg * clip)?;
        Ok(norm)
    }

    /// A SHA-256 of the step count and every moment, in parameter order (ranks compare it).
    pub fn fingerprint(&self) -> Result<String> {
        let mut f = crate::dist::Fingerprint::new();
        f.bytes(&self.t.to_le_bytes());
        for p in &self.params {
            f.bytes(p.name.as_bytes());
            for buf in [&p.m, &p.v] {
                let bytes: Vec<u8> = buf.iter().flat_map(|x| x.to_le_bytes()).collect();
                f.bytes(&bytes);
            }
        }
        Ok(f.finish())
    }

    /// Moments as tensors `m.<name>` / `v.<name>`, for checkpoints.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for p in &self.params {
            let shape = p.var.shape().clone();
            out.insert(
                format!("m.{}", p.name),
                Tensor::from_slice(&p.m, &shape, &Device::Cpu)?,
            );
            out.insert(
                format!("v.{}", p.name),
                Tensor::from_slice(&p.v, &shape, &Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Restore moments saved by [`AdamW::state_tensors`]; every parameter must be present.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        t: u64,
        path: &std::path::Path,
    ) -> Result<()> {
        for p in self.params.iter_mut() {
            for (key, buf) in [
                (format!("m.{}", p.name), &mut p.m),
                (format!("v.{}", p.name), &mut p.v),
            ] {
                let tensor = tensors.get(&key).ok_or_else(|| Error::File {
                    path: path.to_path_buf(),
                    msg: format!("optimizer state has no `{key}`"),
                })?;
                if tensor.elem_count() != buf.len() {
                    return Err(Error::File {
                        path: path.to_path_buf(),
                        msg: format!(
                            "optimizer state `{key}` has {} values, the parameter {}",
                            tensor.elem_count(),
                            buf.len()
                        ),
                    });
                }
                *buf = tensor.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// One AdamW update of a parameter buffer in place.
struct AdamWKernel<'a> {
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    step_size: f32,
    bc2_sqrt: f32,
    scale: f32,
    state: Mutex<(&'a mut Vec<f32>, &'a mut Vec<f32>)>,
}

const CHUNK: usize = 1 << 14;

prism_model::multiversion! {
    /// One AdamW update over a chunk of a parameter buffer and its moments.
    fn adamw_update(k: &AdamWKernel<'_>, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        let decay = 1.0 - k.lr * k.wd;
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let gi = g * k.scale;
            *m = k.b1 * *m + (1.0 - k.b1) * gi;
            *v = k.b2 * *v + (1.0 - k.b2) * gi * gi;
            // Decoupled weight decay, applied before the Adam step as torch does.
            *p *= decay;
            *p -= k.step_size * *m / (v.sqrt() / k.bc2_sqrt + k.eps);
        }
    }
}

prism_model::multiversion! {
    /// Sum of squares of a chunk in f64, in 8 interleaved partial sums (so it vectorises).
    fn sum_squares_f64(x: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let chunks = x.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| (v as f64) * (v as f64)).sum();
        for c in chunks {
            for l in 0..8 {
                acc[l] += (c[l] as f64) * (c[l] as f64);
            }
        }
        acc.iter().sum::<f64>() + tail
    }
}

impl AdamWKernel<'_> {
    #[inline]
    fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        adamw_update(self, p, g, m, v)
    }

    /// The same update through tensor ops (non-CPU devices).
    fn apply_with_tensors(&self, var: &Var, g: &Tensor) -> Result<()> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| Error::Config("optimizer lock poisoned".into()))?;
        let dev = var.device();
        let shape = var.shape().clone();
        let g = (g.to_dtype(DType::F32)? * self.scale as f64)?;
        let m = ((Tensor::from_slice(st.0, &shape, dev)? * self.b1 as f64)?
            + (&g * (1.0 - self.b1 as f64))?)?;
        let v = ((Tensor::from_slice(st.1, &shape, dev)? * self.b2 as f64)?
            + (g.sqr()? * (1.0 - self.b2 as f64))?)?;
        let p = (var.as_tensor() * (1.0 - self.lr as f64 * self.wd as f64))?;
        let denom = ((v.sqrt()? / self.bc2_sqrt as f64)? + self.eps as f64)?;
        let p = (p - ((&m / denom)? * self.step_size as f64)?)?;
        var.set(&p)?;
        *st.0 = m.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
        *st.1 = v.flatten_all()?.to_device(&Device::Cpu)?.to_vec1()?;
        Ok(())
    }
}

impl InplaceOp2 for AdamWKernel<'_> {
    fn name(&self) -> &'static str {
        "prism-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("prism-adamw: f32 parameters and gradients only")
        };
        let (Some((ps, pe)), Some((gs, ge))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("prism-adamw: parameter and gradient must be contiguous")
        };
        let p = &mut p[ps..pe];
        let g = &g[gs..ge];
        let mut st = self
            .state
            .lock()
            .map_err(|_| candle_core::Error::Msg("optimizer lock poisoned".into()))?;
        let (m, v) = &mut *st;
        if p.len() != g.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!(
                "prism-adamw: sizes differ (param {}, grad {}, state {})",
                p.len(),
                g.len(),
                m.len()
            )
        }
        if p.len() >= 4 * CHUNK {
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((p, g), (m, v))| self.update(p, g, m, v));
        } else {
            self.update(p, g, m, v);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((lr_at(0, 1.0, 10, 110, Schedule::Linear) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 1.0, 10, 110, Schedule::Linear) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, 1.0, 10, 110, Schedule::Linear) - 0.5).abs() < 1e-12);
        assert!((lr_at(60, 1.0, 10, 110, Schedule::Cosine) - 0.5).abs() < 1e-12);
        assert!(lr_at(110, 1.0, 10, 110, Schedule::Linear).abs() < 1e-12);
        assert_eq!(lr_at(50, 1.0, 0, 110, Schedule::Constant), 1.0);
    }

    /// Two AdamW steps on a small problem against torch.optim.AdamW (lr 0.1, wd 0.01,
    /// defaults otherwise): p = [1, -2, 3], grads g1 = [0.5, -1, 2], g2 = [0.1, 0.2, -0.3].
    /// torch gives [0.8177969, -1.8449994, 2.8388832].
    #[test]
    fn adamw_matches_torch() {
        let dev = Device::Cpu;
        let var = Var::new(&[1f32, -2.0, 3.0], &dev).unwrap();
        let mut opt = AdamW::new(
            vec![("w.weight".into(), var.clone())],
            AdamWConfig {
                weight_decay: 0.01,
                ..Default::default()
            },
        );
        for g in [[0.5f32, -1.0, 2.0], [0.1, 0.2, -0.3]] {
            let loss = (var.as_tensor() * Tensor::new(&g, &dev).unwrap())
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads, 0.1, 1.0).unwrap();
        }
        let got: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        let want = [0.817_796_9_f32, -1.844_999_4, 2.838_883_2];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn biases_and_layer_norms_are_not_decayed() {
        assert!(no_decay("encoder.layer.0.output.dense.bias"));
        assert!(no_decay("embeddings.LayerNorm.weight"));
        assert!(!no_decay("encoder.layer.0.output.dense.weight"));
    }
}
