//! Scaled, masked softmax over the last dimension with a fused backward pass.
//!
//! Attention needs `softmax(scale * scores + mask)`; doing it as one kernel avoids two full
//! (B, H, T, T) temporaries, and candle's own `softmax_last_dim` has no backward pass.

use super::{contiguous_f32, rows_filled, simd};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use std::mem::MaybeUninit;

/// `softmax(scale * scores + mask)` over the last dimension.
///
/// The additive `mask` holds one row of width T per group of consecutive rows of `scores`: for
/// attention scores (B, H, Tq, Tk) pass a (B, Tk) mask (0 to keep, a large negative number to
/// drop), so that every head and query row of example b uses mask row b.
///
/// # Shapes
/// `scores`: (..., T); `mask`: (M, T) where M divides the number of rows of `scores`.
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let t = scores.dim(D::Minus1)?;
    let rows = scores.elem_count() / t.max(1);
    let (m, mt) = mask.dims2()?;
    if mt != t || m == 0 || rows % m != 0 {
        candle_core::bail!(
            "masked_softmax: mask {:?} does not fit scores {:?}",
            mask.dims(),
            scores.dims()
        )
    }
    if scores.device().is_cpu() && scores.dtype() == DType::F32 {
        scores.contiguous()?.apply_op2(
            &mask.to_dtype(DType::F32)?.contiguous()?,
            MaskedSoftmax { scale },
        )
    } else {
        let per = rows / m;
        let lead = &scores.dims()[..scores.rank() - 1];
        let z = (scores.reshape((m, per, t))? * scale)?.broadcast_add(&mask.unsqueeze(1)?)?;
        let z = z.broadcast_sub(&z.max_keepdim(D::Minus1)?)?.exp()?;
        let p = z.broadcast_div(&z.sum_keepdim(D::Minus1)?)?;
        let mut shape = lead.to_vec();
        shape.push(t);
        p.reshape(shape)
    }
}

/// Plain softmax over the last dimension, with a backward pass.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let t = x.dim(D::Minus1)?;
    let mask = Tensor::zeros((1, t), DType::F32, x.device())?;
    masked_softmax(x, &mask, 1.0)
}

/// Softmax of one row of logits, in place. A row that is -inf everywhere becomes zeros rather
/// than NaN.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = simd::max(row);
    if max == f32::NEG_INFINITY {
        row.fill(0.0);
        return;
    }
    for v in row.iter_mut() {
        *v = super::exp_f32(*v - max);
    }
    let inv = 1.0 / simd::sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

crate::multiversion! {
    /// `y := softmax(scale * x + mask)` for one row (`x`, `mask` and `y` of the same length).
    fn masked_softmax_into(x: &[f32], mask: &[f32], scale: f32, y: &mut [MaybeUninit<f32>]) {
        assert!(x.len() == y.len() && mask.len() == y.len(), "softmax row lengths differ");
        for ((y, &x), &m) in y.iter_mut().zip(x).zip(mask) {
            y.write(x * scale + m);
        }
        // SAFETY: every element of `y` was just written.
        softmax_row(unsafe { super::assume_init_mut(y) });
    }
}

crate::multiversion! {
    /// `row := softmax(row + mask)` in place (the fused attention kernel's scaled scores).
    pub(crate) fn masked_softmax_in_place(mask: &[f32], row: &mut [f32]) {
        for (y, &m) in row.iter_mut().zip(mask) {
            *y += m;
        }
        softmax_row(row);
    }
}

crate::multiversion! {
    /// `row := softmax(row + mask)` in place where key j lies in `lo..hi`; outside it the
    /// additive mask is the most negative f32 whatever `mask` says (a sliding window over a
    /// padding mask: masked by either, as `min(pad, band)`).
    pub(crate) fn banded_masked_softmax_in_place(mask: &[f32], row: &mut [f32], lo: usize, hi: usize) {
        for (j, (y, &m)) in row.iter_mut().zip(mask).enumerate() {
            *y += if j >= lo && j < hi { m } else { f32::MIN };
        }
        softmax_row(row);
    }
}

crate::multiversion! {
    /// Softmax backward of one row: `dx = scale * y * (dy - sum(dy * y))`.
    fn softmax_backward_row(y: &[f32], dy: &[f32], dx: &mut [MaybeUninit<f32>], scale: f32) {
        assert!(y.len() == dx.len() && dy.len() == dx.len(), "softmax row lengths differ");
        let dot = simd::dot(y, dy);
        for ((d, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
            d.write(scale * y * (g - dot));
        }
    }
}

crate::multiversion! {
    /// [`softmax_backward_row`] with scale 1 in place of `g` (the fused attention's backward).
    pub(crate) fn softmax_backward_in_place(y: &[f32], g: &mut [f32]) {
        let dot = simd::dot(y, g);
        for (g, &y) in g.iter_mut().zip(y) {
            *g = y * (*g - dot);
        }
    }
}

struct MaskedSoftmax {
    scale: f64,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "prism-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s1, l1)?;
        let mask = contiguous_f32(self.name(), s2, l2)?;
        let t = l1.shape().dims().last().copied().unwrap_or(1);
        let rows = x.len() / t.max(1);
        let per = rows / (mask.len() / t.max(1)).max(1);
        let scale = self.scale as f32;
        // SAFETY: `masked_softmax_into` writes every element of `y` (the score and mask rows
        // have its length T, checked by `masked_softmax`).
        let out = unsafe {
            rows_filled(x.len(), t, |r, y| {
                let mr = &mask[(r / per) * t..(r / per + 1) * t];
                masked_softmax_into(&x[r * t..(r + 1) * t], mr, scale, y);
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd { scale: self.scale })?;
        Ok((Some(d), None))
    }
}

/// `dx = scale * y * (dy - sum(dy * y))` row by row.
struct SoftmaxBwd {
    scale: f64,
}

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "prism-masked-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(self.name(), s1, l1)?;
        let dy = contiguous_f32(self.name(), s2, l2)?;
        let t = l1.shape().dims().last().copied().unwrap_or(1);
        let scale = self.scale as f32;
        if dy.len() != y.len() {
            candle_core::bail!("{}: gradient and output differ in size", self.name());
        }
        // SAFETY: `softmax_backward_row` writes every element of `dx` (rows of y and dy have
        // its length).
        let out = unsafe {
            rows_filled(y.len(), t, |r, dx| {
                let rows = r * t..(r + 1) * t;
                softmax_backward_row(&y[rows.clone()], &dy[rows], dx, scale);
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
    fn forward_matches_candle_and_respects_mask() {
        let dev = Device::Cpu;
        let s = Tensor::randn(0f32, 3.0, (2, 3, 4, 5), &dev).unwrap();
        let mask = Tensor::new(&[[0f32, 0., 0., -1e4, -1e4], [0., 0., 0., 0., 0.]], &dev).unwrap();
        let y = masked_softmax(&s, &mask, 0.5).unwrap();
        let z = (s * 0.5)
            .unwrap()
            .broadcast_add(&mask.reshape((2, 1, 1, 5)).unwrap())
            .unwrap();
        let r = candle_nn::ops::softmax_last_dim(&z).unwrap();
        let d: f32 = (&y - r)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-6, "max diff {d}");
        let masked: f32 = y
            .narrow(0, 0, 1)
            .unwrap()
            .narrow(3, 3, 2)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(masked < 1e-6);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let s = Tensor::randn(0f32, 1.0, (2, 2, 3, 6), &dev).unwrap();
        let mask = Tensor::new(
            &[[0f32, 0., 0., 0., -1e4, -1e4], [0., 0., 0., 0., 0., 0.]],
            &dev,
        )
        .unwrap();
        check_grad(&s, |s| masked_softmax(s, &mask, 0.7), 2e-2);
        check_grad(&s, softmax_last_dim, 2e-2);
    }
}
