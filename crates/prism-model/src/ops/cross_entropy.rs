//! Cross-entropy of logits against class ids as one op: per row, `logsumexp(x) - x[target]`,
//! with the backward pass `g * (softmax(x) - onehot(target))` in one more pass.
//!
//! Composed from candle ops, log-softmax over a masked-LM's logits (positions x 30,522) made
//! eight full-size temporaries per step (max, shift, exp, sum, log, shift, gather and their
//! backward), each a fresh allocation the kernel had to fault in and zero, with libm's scalar
//! `exp`. Here the forward pass keeps one number per row (its log-sum-exp), the backward pass
//! writes the gradient directly, and `exp` is the vectorised [`super::exp_f32`].

use super::{contiguous_f32, exp_f32, simd, PAR_MIN_ELEMS};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, D};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

/// `-log softmax(logits)[r, targets[r]]` for every row r of `logits` (N, K): (N). Rows whose
/// target is negative (PyTorch's `ignore_index`, -100) give 0 and get no gradient.
///
/// # Errors
/// If `logits` is not (N, K) with N = `targets.len()`, or a target is K or more.
pub fn cross_entropy_rows(logits: &Tensor, targets: &[i64]) -> Result<Tensor> {
    let (n, k) = logits.dims2()?;
    if targets.len() != n {
        candle_core::bail!(
            "cross-entropy: {} targets for {n} rows of logits",
            targets.len()
        );
    }
    if let Some((r, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= k as i64) {
        candle_core::bail!("cross-entropy: target {t} of row {r} is not one of the {k} classes");
    }
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        let op = CrossEntropy {
            k,
            targets: targets.to_vec(),
            lse: OnceLock::new(),
        };
        return logits.contiguous()?.apply_op1(op);
    }
    // Other devices: the same from candle primitives, which all have a backward pass.
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let dev = logits.device();
    let ids: Vec<u32> = targets.iter().map(|&t| t.max(0) as u32).collect();
    let keep: Vec<f32> = targets.iter().map(|&t| (t >= 0) as u8 as f32).collect();
    let picked = logp
        .gather(&Tensor::from_vec(ids, (n, 1), dev)?, 1)?
        .squeeze(1)?;
    (picked * Tensor::from_vec(keep, n, dev)?.to_dtype(logits.dtype())?)?.neg()
}

crate::multiversion! {
    /// `sum_j exp(x[j] - m)` in 16 running partial sums.
    fn sum_exp(x: &[f32], m: f32) -> f32 {
        let mut acc = [0f32; 16];
        let chunks = x.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += exp_f32(v - m);
            }
        }
        acc.iter().sum::<f32>() + rest.iter().map(|&v| exp_f32(v - m)).sum::<f32>()
    }
}

crate::multiversion! {
    /// `dx[j] = g * exp(x[j] - lse)`: the softmax part of one row's gradient.
    fn softmax_row(x: &[f32], lse: f32, g: f32, dx: &mut [MaybeUninit<f32>]) {
        for (d, &v) in dx.iter_mut().zip(x) {
            d.write(g * exp_f32(v - lse));
        }
    }
}

/// Log-sum-exp of one row (max-shifted, as PyTorch's log_softmax).
fn logsumexp(row: &[f32]) -> f32 {
    let m = simd::max(row);
    if m == f32::NEG_INFINITY {
        return m;
    }
    m + sum_exp(row, m).ln()
}

struct CrossEntropy {
    k: usize,
    targets: Vec<i64>,
    /// Each row's log-sum-exp, from the forward pass.
    lse: OnceLock<Vec<f32>>,
}

/// Rows per parallel task: about `PAR_MIN_ELEMS` values, at least one row.
fn rows_per_task(k: usize) -> usize {
    (PAR_MIN_ELEMS / k.max(1)).max(1)
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "prism-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let (n, k) = (self.targets.len(), self.k);
        if x.len() != n * k {
            candle_core::bail!("{}: {} logits for {n} x {k}", self.name(), x.len());
        }
        let mut lse = vec![0f32; n];
        if k > 0 {
            lse.par_chunks_mut(rows_per_task(k))
                .enumerate()
                .for_each(|(task, out)| {
                    let r0 = task * rows_per_task(k);
                    for (i, v) in out.iter_mut().enumerate() {
                        let r = r0 + i;
                        *v = logsumexp(&x[r * k..(r + 1) * k]);
                    }
                });
        }
        let loss: Vec<f32> = self
            .targets
            .iter()
            .enumerate()
            .map(|(r, &t)| {
                if t < 0 {
                    0.0
                } else {
                    lse[r] - x[r * k + t as usize]
                }
            })
            .collect();
        let _ = self.lse.set(lse);
        Ok((CpuStorage::F32(loss), Shape::from(n)))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let name = "prism-cross-entropy-bwd";
        let (n, k) = (self.targets.len(), self.k);
        let Some(lse) = self.lse.get() else {
            candle_core::bail!("{name}: backward before forward")
        };
        let (x, grad) = (x.contiguous()?, grad.to_dtype(DType::F32)?.contiguous()?);
        let g: Vec<f32> = grad.to_vec1()?;
        if g.len() != n {
            candle_core::bail!("{name}: {} gradients for {n} rows", g.len());
        }
        let dx = {
            let (xs, xl) = x.storage_and_layout();
            let Storage::Cpu(xs) = &*xs else {
                candle_core::bail!("{name}: a CPU tensor expected")
            };
            let x = contiguous_f32(name, xs, xl)?;
            let mut dx: Vec<f32> = Vec::with_capacity(n * k);
            let per = rows_per_task(k);
            dx.spare_capacity_mut()[..n * k]
                .par_chunks_mut(per * k.max(1))
                .enumerate()
                .for_each(|(task, block)| {
                    for (i, row) in block.chunks_mut(k.max(1)).enumerate() {
                        let r = task * per + i;
                        let t = self.targets[r];
                        if t < 0 {
                            // An ignored row: no gradient (also when its logits are infinite).
                            row.iter_mut().for_each(|v| {
                                v.write(0.0);
                            });
                            continue;
                        }
                        softmax_row(&x[r * k..(r + 1) * k], lse[r], g[r], row);
                        // SAFETY: softmax_row wrote every element of the row.
                        let v = unsafe { row[t as usize].assume_init_mut() };
                        *v -= g[r];
                    }
                });
            // SAFETY: every row of dx was written above.
            unsafe { dx.set_len(n * k) };
            dx
        };
        Ok(Some(Tensor::from_vec(dx, (n, k), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{check_grad, max_diff};
    use candle_core::Device;

    /// The composed log-softmax path, forced.
    fn reference(x: &Tensor, targets: &[i64]) -> Tensor {
        let max = x.max_keepdim(D::Minus1).unwrap();
        let shifted = x.broadcast_sub(&max).unwrap();
        let lse = shifted
            .exp()
            .unwrap()
            .sum_keepdim(D::Minus1)
            .unwrap()
            .log()
            .unwrap();
        let logp = shifted.broadcast_sub(&lse).unwrap();
        let rows: Vec<f32> = (0..targets.len())
            .map(|r| {
                let t = targets[r];
                if t < 0 {
                    0.0
                } else {
                    -logp
                        .get(r)
                        .unwrap()
                        .get(t as usize)
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                }
            })
            .collect();
        Tensor::new(rows, x.device()).unwrap()
    }

    #[test]
    fn matches_log_softmax_and_its_gradient() {
        let dev = Device::Cpu;
        // A vocabulary-sized row count that runs in parallel, and a two-class one.
        for (n, k) in [(7usize, 3000usize), (5, 2), (40, 37)] {
            let x = (Tensor::randn(0f32, 3.0, (n, k), &dev).unwrap() + 10.0).unwrap();
            let targets: Vec<i64> = (0..n)
                .map(|r| if r % 4 == 3 { -100 } else { (r * 7 % k) as i64 })
                .collect();
            let y = cross_entropy_rows(&x, &targets).unwrap();
            let r = reference(&x, &targets);
            let d = max_diff(&y, &r);
            assert!(d < 1e-4, "({n}, {k}): max diff {d}");
            check_grad(&x, |x| cross_entropy_rows(x, &targets), 2e-2);
        }
    }

    #[test]
    fn bad_targets_are_errors() {
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(cross_entropy_rows(&x, &[0, 3]).is_err());
        assert!(cross_entropy_rows(&x, &[0]).is_err());
        let l: Vec<f32> = cross_entropy_rows(&x, &[2, -100])
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!((l[0] - 3f32.ln()).abs() < 1e-6 && l[1] == 0.0);
    }
}
