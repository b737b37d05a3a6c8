//! Inverted dropout as one fused, multi-threaded kernel whose mask is a pure function of
//! `(seed, element index)`: the forward pass never materialises a mask tensor, and the backward
//! pass regenerates the same mask from the seed instead of storing it.

use super::{contiguous_f32, rows_filled};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

/// Elements per task of the parallel loop.
const BLOCK: usize = 8192;

/// SplitMix64's finaliser: a bijective, well-mixed hash of `seed ^ index`.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether element `i` is kept: its 64-bit hash, read as a uniform number in [0, 1), is at
/// least `p` (so it is dropped with probability `p`).
#[inline(always)]
pub(crate) fn kept(seed: u64, i: usize, threshold: u64) -> bool {
    mix(seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) >= threshold
}

pub(crate) fn threshold(p: f64) -> u64 {
    // p in [0, 1): p * 2^64, saturating.
    (p * 18_446_744_073_709_551_616.0).min(u64::MAX as f64) as u64
}

/// Zero each element of `x` with probability `p` (drawn from `seed`), scale the rest by
/// 1 / (1 - p). Differentiable; the same `seed` gives the same mask on every device.
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability {p} must be in [0, 1)");
    }
    if p == 0.0 {
        return Ok(x.clone());
    }
    let op = Dropout { p, seed };
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(op)
    } else {
        // Other devices: the same mask, built on the host, through ops that have a backward.
        x.broadcast_mul(&op.mask(x)?)
    }
}

crate::multiversion! {
    /// `y[j] = x[j] * scale` where element `start + j` is kept, else 0 (`y` as long as `x`).
    fn dropout_into(
        x: &[f32],
        y: &mut [MaybeUninit<f32>],
        seed: u64,
        start: usize,
        threshold: u64,
        scale: f32,
    ) {
        assert_eq!(x.len(), y.len(), "dropout block lengths differ");
        for (j, (v, &x)) in y.iter_mut().zip(x).enumerate() {
            v.write(if kept(seed, start + j, threshold) { x * scale } else { 0.0 });
        }
    }
}

/// `dropout(x, p, seed) + residual` in one pass: the same values as the two ops, without the
/// dropped tensor. Through two ops the graph would keep `dropout(x)` alive until the backward
/// pass (it is the addition's argument), though neither backward reads it: one (B, T, C) tensor
/// per residual connection, ~9 % of BERT-base's training peak at batch 16 x 128 together with
/// the linear outputs (README, Performance, "Memory"). `x` and `residual` must have one shape.
pub fn dropout_add(x: &Tensor, residual: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability {p} must be in [0, 1)");
    }
    if x.shape() != residual.shape() {
        candle_core::bail!(
            "dropout_add: {:?} and residual {:?} differ",
            x.shape(),
            residual.shape()
        );
    }
    if p == 0.0 {
        return x + residual;
    }
    let op = Dropout { p, seed };
    if x.device().is_cpu() && x.dtype() == DType::F32 && residual.dtype() == DType::F32 {
        x.contiguous()?
            .apply_op2(&residual.contiguous()?, DropoutAdd(op))
    } else {
        dropout(x, p, seed)? + residual
    }
}

crate::multiversion! {
    /// `y[j] = x[j] * scale + r[j]` where element `start + j` is kept, else `r[j]`.
    fn dropout_add_into(
        x: &[f32],
        r: &[f32],
        y: &mut [MaybeUninit<f32>],
        seed: u64,
        start: usize,
        threshold: u64,
        scale: f32,
    ) {
        assert!(x.len() == y.len() && r.len() == y.len(), "dropout_add block lengths differ");
        for (j, ((v, &x), &r)) in y.iter_mut().zip(x).zip(r).enumerate() {
            v.write(if kept(seed, start + j, threshold) { x * scale + r } else { r });
        }
    }
}

/// [`dropout_add`]'s op: arguments x and the residual.
struct DropoutAdd(Dropout);

impl CustomOp2 for DropoutAdd {
    fn name(&self) -> &'static str {
        "prism-dropout-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s1, l1)?;
        let r = contiguous_f32(self.name(), s2, l2)?;
        if x.len() != r.len() {
            candle_core::bail!("{}: {} and {} values", self.name(), x.len(), r.len());
        }
        let d = &self.0;
        let (t, scale) = (threshold(d.p), (1.0 / (1.0 - d.p)) as f32);
        let n = x.len();
        let width = BLOCK.min(n.max(1));
        // SAFETY: `dropout_add_into` writes every element of `y` (x and r cut to its length).
        let y = unsafe {
            rows_filled(n, width, |row, y| {
                let start = row * width;
                let end = start + y.len();
                dropout_add_into(&x[start..end], &r[start..end], y, d.seed, start, t, scale);
            })
        };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _r: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // d/dx = the mask times the gradient; d/dresidual = the gradient.
        Ok((
            Some(dropout(grad, self.0.p, self.0.seed)?),
            Some(grad.clone()),
        ))
    }
}

crate::multiversion! {
    /// [`dropout_into`] in place (the fused attention's probabilities).
    pub(crate) fn dropout_in_place(y: &mut [f32], seed: u64, start: usize, threshold: u64, scale: f32) {
        for (j, v) in y.iter_mut().enumerate() {
            *v = if kept(seed, start + j, threshold) { *v * scale } else { 0.0 };
        }
    }
}

#[derive(Clone, Copy)]
struct Dropout {
    p: f64,
    seed: u64,
}

impl Dropout {
    /// The mask (0 or 1 / (1 - p)) as a tensor shaped and typed like `x`.
    fn mask(&self, x: &Tensor) -> Result<Tensor> {
        let (t, scale) = (threshold(self.p), (1.0 / (1.0 - self.p)) as f32);
        let m: Vec<f32> = (0..x.elem_count())
            .map(|i| if kept(self.seed, i, t) { scale } else { 0.0 })
            .collect();
        Tensor::from_vec(m, x.shape(), &candle_core::Device::Cpu)?
            .to_dtype(x.dtype())?
            .to_device(x.device())
    }

    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let (t, scale) = (threshold(self.p), (1.0 / (1.0 - self.p)) as f32);
        let n = x.len();
        let width = BLOCK.min(n.max(1));
        // SAFETY: `dropout_into` writes every element of `y` (x is cut to its length).
        unsafe {
            rows_filled(n, width, |r, y| {
                let start = r * width;
                let x = &x[start..start + y.len()];
                dropout_into(x, y, self.seed, start, t, scale);
            })
        }
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "prism-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        Ok((CpuStorage::F32(self.apply(x)), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // d(x * m)/dx = m: the same mask applied to the incoming gradient.
        Ok(Some(dropout(grad, self.p, self.seed)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn drops_at_the_rate_and_scales_the_rest() {
        let x = Tensor::ones((64, 1000), DType::F32, &Device::Cpu).unwrap();
        let y: Vec<f32> = dropout(&x, 0.1, 42)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
        assert!((zeros - 0.1).abs() < 0.005, "dropped {zeros}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        // Mean preserved.
        let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        // Another seed, another mask; the same seed, the same mask.
        let z: Vec<f32> = dropout(&x, 0.1, 43)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(y, z);
        let again: Vec<f32> = dropout(&x, 0.1, 42)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(y, again);
    }

    #[test]
    fn dropout_add_is_dropout_then_add_with_the_same_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 9000), &dev).unwrap()).unwrap();
        let r = Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 9000), &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (5, 9000), &dev).unwrap();
        let fused = dropout_add(x.as_tensor(), r.as_tensor(), 0.1, 17).unwrap();
        let plain = (dropout(x.as_tensor(), 0.1, 17).unwrap() + r.as_tensor()).unwrap();
        let v = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&fused), v(&plain));
        let gf = (&fused * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gp = (&plain * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for t in [x.as_tensor(), r.as_tensor()] {
            assert_eq!(v(gf.get(t).unwrap()), v(gp.get(t).unwrap()));
        }
        // p = 0 is the sum; shapes must agree.
        let sum = dropout_add(x.as_tensor(), r.as_tensor(), 0.0, 1).unwrap();
        assert_eq!(v(&sum), v(&(x.as_tensor() + r.as_tensor()).unwrap()));
        assert!(dropout_add(x.as_tensor(), &w.narrow(1, 0, 10).unwrap(), 0.1, 1).is_err());
    }

    #[test]
    fn gradient_is_the_mask() {
        let x =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (7, 300), &Device::Cpu).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (7, 300), &Device::Cpu).unwrap();
        let y = dropout(x.as_tensor(), 0.3, 9).unwrap();
        let loss = (&y * &w).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let g: Vec<f32> = g
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let (yv, xv, wv): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            y.flatten_all().unwrap().to_vec1().unwrap(),
            x.flatten_all().unwrap().to_vec1().unwrap(),
            w.flatten_all().unwrap().to_vec1().unwrap(),
        );
        for i in 0..g.len() {
            let m = yv[i] / xv[i];
            assert!((g[i] - m * wv[i]).abs() < 1e-4, "element {i}");
        }
        // The host-built mask (other devices) is the kernel's mask.
        let op = Dropout { p: 0.3, seed: 9 };
        let m: Vec<f32> = op
            .mask(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..m.len() {
            assert!((m[i] * xv[i] - yv[i]).abs() < 1e-6);
        }
    }
}
