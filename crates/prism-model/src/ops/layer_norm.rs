//! Layer normalisation over the last dimension (Ba et al. 2016) with a fused backward pass.
//!
//! candle's `layer_norm` is a fused kernel without a backward pass: parameters upstream of it
//! silently get no gradient (candle issues 2168, 3011, 3752). This op computes the forward in one
//! pass per row and the backward (dx, dgamma, dbeta) in one more.

use super::{contiguous_f32, rows_filled, simd, PAR_MIN_ELEMS};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, D};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` over the last dimension of `x`.
///
/// # Shapes
/// `x`: (..., C); `gamma`, `beta`: (C); result: same as `x`.
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    if gamma.dims() != [c] || beta.dims() != [c] {
        candle_core::bail!(
            "layer_norm: gamma {:?} and beta {:?} must both be [{c}] for input {:?}",
            gamma.dims(),
            beta.dims(),
            x.dims()
        )
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        x.contiguous()?
            .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, LayerNorm { eps })
    } else {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xhat = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        xhat.broadcast_mul(gamma)?.broadcast_add(beta)
    }
}

/// Mean and reciprocal standard deviation of one row (two passes, 16 partial sums each, in
/// f32 as PyTorch's kernel).
#[inline(always)]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = simd::sum(row) / n;
    let var = simd::sum_sq_dev(row, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

crate::multiversion! {
    /// One row of the forward pass.
    fn forward_row(xr: &[f32], g: &[f32], b: &[f32], y: &mut [MaybeUninit<f32>], eps: f32) {
        let c = y.len();
        assert!(xr.len() == c && g.len() == c && b.len() == c, "layer norm row lengths differ");
        let (mean, rstd) = moments(xr, eps);
        for (((y, &x), &g), &b) in y.iter_mut().zip(xr).zip(g).zip(b) {
            y.write((x - mean) * rstd * g + b);
        }
    }
}

crate::multiversion! {
    /// One row of the backward pass: writes `dx` and `xhat`, adds the row's share of dgamma and
    /// dbeta to `acc` (dgamma then dbeta).
    fn backward_row(
        xr: &[f32],
        dyr: &[f32],
        g: &[f32],
        dxr: &mut [MaybeUninit<f32>],
        xhat: &mut [f32],
        acc: &mut [f32],
        eps: f32,
    ) {
        let c = g.len();
        assert!(xr.len() == c && dyr.len() == c && dxr.len() == c, "layer norm row lengths differ");
        let (mean, rstd) = moments(xr, eps);
        for (h, &x) in xhat.iter_mut().zip(xr) {
            *h = (x - mean) * rstd;
        }
        // dx first holds dxhat = dy * gamma.
        for ((d, &dy), &g) in dxr.iter_mut().zip(dyr).zip(g) {
            d.write(dy * g);
        }
        // SAFETY: every element of the row was written just above.
        let dxr = unsafe { super::assume_init_mut(dxr) };
        let m1 = simd::sum(dxr) / c as f32;
        let m2 = simd::dot(dxr, xhat) / c as f32;
        let (acc_g, acc_b) = acc.split_at_mut(c);
        for (((ag, ab), &dy), &h) in acc_g.iter_mut().zip(acc_b.iter_mut()).zip(dyr).zip(xhat.iter()) {
            *ag += dy * h;
            *ab += dy;
        }
        for (d, &h) in dxr.iter_mut().zip(xhat.iter()) {
            *d = rstd * (*d - m1 - h * m2);
        }
    }
}

struct LayerNorm {
    eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "prism-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s1, l1)?;
        let g = contiguous_f32(self.name(), s2, l2)?;
        let b = contiguous_f32(self.name(), s3, l3)?;
        let c = g.len();
        if b.len() != c || x.len() % c.max(1) != 0 {
            candle_core::bail!("{}: gamma, beta and input do not fit", self.name());
        }
        let eps = self.eps as f32;
        // SAFETY: `forward_row` writes every element of `y` (x's row, g and b have its length).
        let out = unsafe {
            rows_filled(x.len(), c, |r, y| {
                forward_row(&x[r * c..(r + 1) * c], g, b, y, eps);
            })
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !x.device().is_cpu() {
            candle_core::bail!("prism-layer-norm backward only runs on CPU")
        }
        let c = gamma.dim(0)?;
        // Frozen gamma and beta (explanations) get no gradient, and dx is a tensor of its own:
        // a gradient store can then add the residual stream's other gradient into it in place.
        let params = gamma.track_op() || beta.track_op();
        let (x, gamma, dy) = (x.contiguous()?, gamma.contiguous()?, grad.contiguous()?);
        let (dx, dparams) = {
            let (xs, xl) = x.storage_and_layout();
            let (gs, gl) = gamma.storage_and_layout();
            let (ds, dl) = dy.storage_and_layout();
            let name = "prism-layer-norm-bwd";
            let (Storage::Cpu(xs), Storage::Cpu(gs), Storage::Cpu(ds)) = (&*xs, &*gs, &*ds) else {
                candle_core::bail!("{name}: CPU tensors expected")
            };
            backward(
                contiguous_f32(name, xs, xl)?,
                contiguous_f32(name, gs, gl)?,
                contiguous_f32(name, ds, dl)?,
                self.eps as f32,
            )?
        };
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        if !params {
            return Ok((Some(dx), None, None));
        }
        let dparams = Tensor::from_vec(dparams, 2 * c, x.device())?;
        Ok((
            Some(dx),
            Some(dparams.narrow(0, 0, c)?),
            Some(dparams.narrow(0, c, c)?),
        ))
    }
}

/// The backward pass on slices: `dx` (like x) and `dgamma` followed by `dbeta` (2C).
fn backward(x: &[f32], g: &[f32], dy: &[f32], eps: f32) -> Result<(Vec<f32>, Vec<f32>)> {
    let c = g.len();
    let n = x.len();
    if c == 0 && n == 0 && dy.is_empty() {
        // No features: nothing to normalise, as in the forward pass.
        return Ok((Vec::new(), Vec::new()));
    }
    if c == 0 || !n.is_multiple_of(c) || dy.len() != n {
        candle_core::bail!(
            "prism-layer-norm-bwd: input of {n}, gradient of {} and {c} features do not fit",
            dy.len()
        );
    }
    let rows = n / c;
    let mut dx: Vec<f32> = Vec::with_capacity(n);
    // dx needs only its own row; dgamma/dbeta are reductions over rows, accumulated in
    // per-block partial sums and then added up.
    let block_rows = if n >= PAR_MIN_ELEMS {
        rows.div_ceil(rayon::current_num_threads().max(1) * 4)
            .max(1)
    } else {
        rows.max(1)
    };
    let partials: Vec<Vec<f32>> = dx.spare_capacity_mut()[..n]
        .par_chunks_mut(block_rows * c)
        .enumerate()
        .map(|(blk, dx_block)| {
            let mut acc = vec![0f32; 2 * c];
            let mut xhat = vec![0f32; c];
            for (i, dxr) in dx_block.chunks_mut(c).enumerate() {
                let r = blk * block_rows + i;
                let rows = r * c..(r + 1) * c;
                backward_row(
                    &x[rows.clone()],
                    &dy[rows],
                    g,
                    dxr,
                    &mut xhat,
                    &mut acc,
                    eps,
                );
            }
            acc
        })
        .collect();
    // SAFETY: `backward_row` wrote every row of dx.
    unsafe { dx.set_len(n) };
    let mut dparams = vec![0f32; 2 * c];
    for p in partials {
        for (d, v) in dparams.iter_mut().zip(p) {
            *d += v;
        }
    }
    Ok((dx, dparams))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::check_grad;
    use candle_core::{Device, Var};

    fn reference(x: &Tensor, g: &Tensor, b: &Tensor, eps: f64) -> Tensor {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let xhat = xc
            .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
            .unwrap();
        xhat.broadcast_mul(g).unwrap().broadcast_add(b).unwrap()
    }

    #[test]
    fn forward_matches_composite() {
        let dev = Device::Cpu;
        for rows in [3usize, 2048] {
            let x = Tensor::randn(0.5f32, 2.0, (rows, 24), &dev).unwrap();
            let g = Tensor::randn(1f32, 0.3, 24, &dev).unwrap();
            let b = Tensor::randn(0f32, 0.3, 24, &dev).unwrap();
            let y = layer_norm(&x, &g, &b, 1e-12).unwrap();
            let r = reference(&x, &g, &b, 1e-12);
            let d: f32 = (y - r)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d < 1e-5, "max diff {d}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (5, 7), &dev).unwrap();
        let g = Tensor::randn(1f32, 0.3, 7, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.3, 7, &dev).unwrap();
        check_grad(&x, |x| layer_norm(x, &g, &b, 1e-5), 2e-2);
        check_grad(&g, |g| layer_norm(&x, g, &b, 1e-5), 2e-2);
        check_grad(&b, |b| layer_norm(&x, &g, b, 1e-5), 2e-2);
    }

    #[test]
    fn gradients_match_composite_on_large_input() {
        // Exercises the multi-threaded reduction of dgamma/dbeta.
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1500, 32), &dev).unwrap()).unwrap();
        let g = Var::from_tensor(&Tensor::randn(1f32, 0.3, 32, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 32, &dev).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1.0, (1500, 32), &dev).unwrap();
        let fused = (layer_norm(&x, &g, &b, 1e-12).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let comp = (reference(&x, &g, &b, 1e-12) * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &g, &b] {
            let a = fused.get(v.as_tensor()).unwrap();
            let r = comp.get(v.as_tensor()).unwrap();
            let scale: f32 = r.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            let d: f32 = (a - r)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(d <= 1e-4 * scale.max(1.0), "max diff {d} (scale {scale})");
        }
    }
}
