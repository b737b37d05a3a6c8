//! Exact (erf) GELU, `x * Phi(x)` (Hendrycks & Gimpel 2016), as BERT's `hidden_act = "gelu"`.

use super::{contiguous_f32, rows_filled};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2 pi), the normal density's constant.
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// `0.5 * x * (1 + erf(x / sqrt(2)))`, element-wise, with a backward pass.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(GeluErf)
    } else {
        // candle's own gelu_erf has a backward pass on every backend.
        x.gelu_erf()
    }
}

/// Phi(x) = 0.5 (1 + erf(x / sqrt 2)) in f32, with erf from Abramowitz & Stegun 7.1.26
/// (absolute error below 1.5e-7, far inside the 1e-4 parity budget) instead of an f64 series:
/// GELU runs over the whole (B, T, 4C) intermediate activation, forward and backward.
#[inline(always)]
fn phi_cdf(x: f32) -> f32 {
    phi_cdf_pdf(x).0
}

/// `(Phi(x), phi(x))` from one exponential: erf's A&S form needs `exp(-z^2)` with
/// `z = |x| / sqrt 2`, which is `exp(-x^2 / 2)`, the normal density's exponential.
#[inline(always)]
fn phi_cdf_pdf(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_72,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let z = (x * FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + P * z);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let e = super::exp_f32(-z * z);
    let erf_abs = 1.0 - poly * e;
    (0.5 * (1.0 + erf_abs.copysign(x)), INV_SQRT_2PI * e)
}

crate::multiversion! {
    /// `y = gelu(x)` over a block.
    fn forward_block(x: &[f32], y: &mut [MaybeUninit<f32>]) {
        assert_eq!(x.len(), y.len(), "gelu block lengths differ");
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(x * phi_cdf(x));
        }
    }
}

crate::multiversion! {
    /// `dx = dy * gelu'(x)` over a block.
    fn backward_block(x: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>]) {
        assert!(x.len() == dx.len() && dy.len() == dx.len(), "gelu block lengths differ");
        for ((d, &x), &g) in dx.iter_mut().zip(x).zip(dy) {
            let (cdf, pdf) = phi_cdf_pdf(x);
            d.write(g * (cdf + x * pdf));
        }
    }
}

crate::multiversion! {
    /// `y = gelu(y)` in place (the AMX kernel's epilogue).
    pub(crate) fn gelu_in_place(y: &mut [f32]) {
        for v in y.iter_mut() {
            *v *= phi_cdf(*v);
        }
    }
}

crate::multiversion! {
    /// One row of a fused linear + GELU: `h += b`, then `y = gelu(h)` into a new row while `h`
    /// keeps the pre-activation for the backward pass.
    pub(crate) fn bias_gelu_keep(h: &mut [f32], b: &[f32], y: &mut [MaybeUninit<f32>]) {
        assert!(h.len() == b.len() && y.len() == b.len(), "bias-gelu row lengths differ");
        for ((h, &b), y) in h.iter_mut().zip(b).zip(y.iter_mut()) {
            let v = *h + b;
            *h = v;
            y.write(v * phi_cdf(v));
        }
    }
}

crate::multiversion! {
    /// One row of a fused linear + GELU in inference: `h = gelu(h + b)` in place.
    pub(crate) fn bias_gelu_in_place(h: &mut [f32], b: &[f32]) {
        assert_eq!(h.len(), b.len(), "bias-gelu row lengths differ");
        for (h, &b) in h.iter_mut().zip(b) {
            let v = *h + b;
            *h = v * phi_cdf(v);
        }
    }
}

crate::multiversion! {
    /// The backward pass of one row of a fused linear + GELU with a frozen bias: the
    /// pre-activation `h` is overwritten by `dh = dy * gelu'(h)`.
    pub(crate) fn gelu_grad_in_place(h: &mut [f32], dy: &[f32]) {
        assert_eq!(h.len(), dy.len(), "gelu-grad row lengths differ");
        for (h, &g) in h.iter_mut().zip(dy) {
            let (cdf, pdf) = phi_cdf_pdf(*h);
            *h = g * (cdf + *h * pdf);
        }
    }
}

crate::multiversion! {
    /// [`gelu_grad_in_place`], and `dh` is also added into the bias gradient `db`.
    pub(crate) fn gelu_grad_in_place_sum(h: &mut [f32], dy: &[f32], db: &mut [f32]) {
        assert!(h.len() == dy.len() && db.len() == dy.len(), "gelu-grad row lengths differ");
        for ((h, &g), d) in h.iter_mut().zip(dy).zip(db.iter_mut()) {
            let (cdf, pdf) = phi_cdf_pdf(*h);
            let v = g * (cdf + *h * pdf);
            *h = v;
            *d += v;
        }
    }
}

/// Width of the blocks the element-wise kernels hand to threads.
const BLOCK: usize = 4096;

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "prism-gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let n = x.len();
        let width = BLOCK.min(n.max(1));
        // SAFETY: `forward_block` writes every element of `y` (x has the same length).
        let out = unsafe {
            rows_filled(n, width, |r, y| {
                let start = r * width;
                forward_block(&x[start..start + y.len()], y);
            })
        };
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfBwd)?))
    }
}

/// `dx = dy * (Phi(x) + x * phi(x))`.
struct GeluErfBwd;

impl CustomOp2 for GeluErfBwd {
    fn name(&self) -> &'static str {
        "prism-gelu-erf-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s1, l1)?;
        let dy = contiguous_f32(self.name(), s2, l2)?;
        let n = x.len();
        let width = BLOCK.min(n.max(1));
        if dy.len() != n {
            candle_core::bail!("{}: {} gradients for {n} inputs", self.name(), dy.len());
        }
        // SAFETY: `backward_block` writes every element of `dx` (x and dy have its length).
        let out = unsafe {
            rows_filled(n, width, |r, dx| {
                let start = r * width;
                let end = start + dx.len();
                backward_block(&x[start..end], &dy[start..end], dx);
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::check_grad;
    use candle_core::Device;

    #[test]
    fn forward_matches_candle() {
        let dev = Device::Cpu;
        // 10_007 elements: not a multiple of the block width, and large enough to run in parallel.
        let x = Tensor::randn(0f32, 3.0, 10_007, &dev).unwrap();
        let d: f32 = (gelu_erf(&x).unwrap() - x.gelu_erf().unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-5, "max diff {d}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        let x = Tensor::randn(0f32, 2.0, (4, 9), &Device::Cpu).unwrap();
        check_grad(&x, gelu_erf, 2e-2);
    }
}
