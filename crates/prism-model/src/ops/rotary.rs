//! Rotary position embeddings on a fused query/key/value projection, in one pass with its
//! backward.
//!
//! For each token t and head, the query and key blocks (channels `0..C` and `C..2C` of a
//! (B, T, 3C) projection) are rotated as transformers' `apply_rotary_pos_emb` does,
//! `x cos + rotate_half(x) sin` with `rotate_half(x) = [-x₂, x₁]` over the halves of the head
//! dimension; the value block is copied. The backward pass applies the transposed rotation,
//! `[g₁ cos + g₂ sin, g₂ cos − g₁ sin]`, to the query and key blocks and passes the value
//! block's gradient through. Composed from candle ops this is a narrow, a negation, a
//! concatenation and four products per block, each single-threaded.

use super::{contiguous_f32, for_each_row};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use std::sync::Arc;

/// Rotate the query and key blocks of `qkv` by the angles whose cosines and sines are `cos`
/// and `sin` (one row of D per position, the two halves equal as transformers builds them).
///
/// # Shapes
/// `qkv`: (B, T, 3C); `cos`, `sin`: (T, D) with C = H · D -> (B, T, 3C)
pub fn rotary_qkv(qkv: &Tensor, cos: &Tensor, sin: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    let c = c3 / 3;
    let d = if heads == 0 { 0 } else { c / heads };
    if c3 % 3 != 0 || heads == 0 || c % heads != 0 || d % 2 != 0 {
        candle_core::bail!(
            "rotary_qkv: qkv {:?} does not split into {heads} even heads",
            qkv.dims()
        )
    }
    if cos.dims() != [t, d] || sin.dims() != [t, d] {
        candle_core::bail!(
            "rotary_qkv: cos {:?} / sin {:?} for T = {t}, D = {d}",
            cos.dims(),
            sin.dims()
        )
    }
    if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        let cs: Vec<f32> = cos.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let sn: Vec<f32> = sin.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let op = Rotary {
            t,
            heads,
            d,
            cos: Arc::new(cs),
            sin: Arc::new(sn),
            transpose: false,
        };
        return qkv.contiguous()?.apply_op1(op);
    }
    let _ = b;
    let (cos, sin) = (cos.reshape((1, t, 1, d))?, sin.reshape((1, t, 1, d))?);
    let rot = |i: usize| -> Result<Tensor> {
        let x = qkv
            .narrow(2, i * c, c)?
            .reshape((qkv.dim(0)?, t, heads, d))?;
        let (x1, x2) = (
            x.narrow(D::Minus1, 0, d / 2)?,
            x.narrow(D::Minus1, d / 2, d / 2)?,
        );
        let half = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        (x.broadcast_mul(&cos)? + half.broadcast_mul(&sin)?)?.reshape((qkv.dim(0)?, t, c))
    };
    Tensor::cat(&[&rot(0)?, &rot(1)?, &qkv.narrow(2, 2 * c, c)?], 2)
}

struct Rotary {
    t: usize,
    heads: usize,
    d: usize,
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    /// The backward pass: the transposed rotation.
    transpose: bool,
}

impl CustomOp1 for Rotary {
    fn name(&self) -> &'static str {
        "prism-rotary-qkv"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let (t, d) = (self.t, self.d);
        let c = self.heads * d;
        let half = d / 2;
        let mut out = vec![0f32; x.len()];
        // One row per token (B·T rows of 3C).
        for_each_row(&mut out, 3 * c, |row, o| {
            let pos = row % t;
            let (cs, sn) = (
                &self.cos[pos * d..(pos + 1) * d],
                &self.sin[pos * d..(pos + 1) * d],
            );
            let xr = &x[row * 3 * c..(row + 1) * 3 * c];
            for blk in 0..2 {
                for h in 0..self.heads {
                    let base = blk * c + h * d;
                    let (x1, x2) = (&xr[base..base + half], &xr[base + half..base + d]);
                    let (o1, o2) = o[base..base + d].split_at_mut(half);
                    for i in 0..half {
                        let (a, b) = (x1[i], x2[i]);
                        let (c1, c2, s1, s2) = (cs[i], cs[half + i], sn[i], sn[half + i]);
                        if self.transpose {
                            o1[i] = a * c1 + b * s2;
                            o2[i] = b * c2 - a * s1;
                        } else {
                            o1[i] = a * c1 - b * s1;
                            o2[i] = b * c2 + a * s2;
                        }
                    }
                }
            }
            o[2 * c..].copy_from_slice(&xr[2 * c..]);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = Rotary {
            t: self.t,
            heads: self.heads,
            d: self.d,
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            transpose: !self.transpose,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn matches_the_composed_rotation_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, t, heads, d) = (2, 5, 3, 4);
        let c = heads * d;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, 3 * c), &dev).unwrap()).unwrap();
        let f = Tensor::randn(0f32, 1.0, (t, d / 2), &dev).unwrap();
        let emb = Tensor::cat(&[&f, &f], 1).unwrap();
        let (cos, sin) = (emb.cos().unwrap(), emb.sin().unwrap());
        let fused = rotary_qkv(&x, &cos, &sin, heads).unwrap();
        // The composition (the non-CPU path), forced.
        let (cc, ss) = (
            cos.reshape((1, t, 1, d)).unwrap(),
            sin.reshape((1, t, 1, d)).unwrap(),
        );
        let rot = |i: usize| {
            let y = x
                .narrow(2, i * c, c)
                .unwrap()
                .reshape((b, t, heads, d))
                .unwrap();
            let (y1, y2) = (
                y.narrow(3, 0, d / 2).unwrap(),
                y.narrow(3, d / 2, d / 2).unwrap(),
            );
            let half = Tensor::cat(&[&y2.neg().unwrap(), &y1], 3).unwrap();
            (y.broadcast_mul(&cc).unwrap() + half.broadcast_mul(&ss).unwrap())
                .unwrap()
                .reshape((b, t, c))
                .unwrap()
        };
        let plain = Tensor::cat(&[&rot(0), &rot(1), &x.narrow(2, 2 * c, c).unwrap()], 2).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-6);
        let w = Tensor::randn(0f32, 1.0, (b, t, 3 * c), &dev).unwrap();
        let g1 = (&fused * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (&plain * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, r) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(a, r) < 1e-5, "{}", max_diff(a, r));
    }
}
