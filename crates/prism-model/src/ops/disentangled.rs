//! DeBERTa's disentangled attention scores in one pass, forward and backward.
//!
//! `out[b, h, i, j] = keep[b, i] · (qk[b, h, i, j] + c2p[b, h, i, ci[i, j]] + p2c[b, h, j, pi[j, i]])`
//!
//! where `qk = q kᵀ`, `c2p = q pkᵀ` (query i against every relative-table row), `p2c = k pqᵀ`
//! (key j against every row), `ci` / `pi` the rows of the relative distances i − j and j − i, and
//! `keep` zeroes a padded query's row (transformers' masked_fill passes that row no gradient).
//! Composed from candle ops this is two gathers, a transpose, two additions and a product over
//! (B, H, T, T) tensors, each single-threaded or allocating; here it is one multi-threaded pass,
//! and the backward one pass per input (a scatter-add per row for the two position terms).

use super::{contiguous_f32, for_each_row};
use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::Arc;

/// The fused scores; falls back to candle ops off the CPU.
///
/// # Shapes
/// `qk`: (B, H, T, T); `c2p`, `p2c`: (B, H, T, R); `ci`, `pi`: T·T row indices below R;
/// `keep`: (B, T) of 0 / 1 -> (B, H, T, T)
pub fn disentangled_scores(
    qk: &Tensor,
    c2p: &Tensor,
    p2c: &Tensor,
    ci: Arc<Vec<u32>>,
    pi: Arc<Vec<u32>>,
    keep: &Tensor,
) -> Result<Tensor> {
    let (b, h, t, t2) = qk.dims4()?;
    let r = c2p.dim(3)?;
    if t != t2 || c2p.dims() != [b, h, t, r] || p2c.dims() != [b, h, t, r] {
        candle_core::bail!(
            "disentangled_scores: qk {:?}, c2p {:?}, p2c {:?}",
            qk.dims(),
            c2p.dims(),
            p2c.dims()
        )
    }
    if ci.len() != t * t
        || pi.len() != t * t
        || ci.iter().chain(pi.iter()).any(|&x| x as usize >= r)
    {
        candle_core::bail!("disentangled_scores: indices do not fit T = {t}, R = {r}")
    }
    let keep_v: Vec<f32> = keep.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if keep_v.len() != b * t {
        candle_core::bail!(
            "disentangled_scores: keep {:?} for B = {b}, T = {t}",
            keep.dims()
        )
    }
    if qk.device().is_cpu() && qk.dtype() == DType::F32 {
        let op = Scores {
            dims: (b, h, t, r),
            ci,
            pi,
            keep: Arc::new(keep_v),
        };
        qk.contiguous()?
            .apply_op3(&c2p.contiguous()?, &p2c.contiguous()?, op)
    } else {
        let dev = qk.device();
        let idx = |v: &[u32]| -> Result<Tensor> {
            Tensor::from_slice(v, (1, 1, t, t), dev)?
                .broadcast_as((b, h, t, t))?
                .contiguous()
        };
        let c = c2p.gather(&idx(&ci)?, 3)?;
        let p = p2c.gather(&idx(&pi)?, 3)?.transpose(2, 3)?;
        let keep = keep.to_dtype(qk.dtype())?.reshape((b, 1, t, 1))?;
        ((qk + c)? + p)?.broadcast_mul(&keep)
    }
}

struct Scores {
    dims: (usize, usize, usize, usize),
    ci: Arc<Vec<u32>>,
    pi: Arc<Vec<u32>>,
    keep: Arc<Vec<f32>>,
}

impl CustomOp3 for Scores {
    fn name(&self) -> &'static str {
        "prism-disentangled-scores"
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
        let qk = contiguous_f32(self.name(), s1, l1)?;
        let c2p = contiguous_f32(self.name(), s2, l2)?;
        let p2c = contiguous_f32(self.name(), s3, l3)?;
        let (_, h, t, r) = self.dims;
        let mut out = vec![0f32; qk.len()];
        // One row per (b, h, i).
        for_each_row(&mut out, t, |row, o| {
            let (bh, i) = (row / t, row % t);
            let keep = self.keep[(bh / h) * t + i];
            if keep == 0.0 {
                return; // stays 0
            }
            let qk = &qk[row * t..(row + 1) * t];
            let c = &c2p[row * r..(row + 1) * r];
            let ci = &self.ci[i * t..(i + 1) * t];
            let p = &p2c[bh * t * r..(bh + 1) * t * r];
            for j in 0..t {
                let pj = self.pi[j * t + i] as usize;
                o[j] = keep * (qk[j] + c[ci[j] as usize] + p[j * r + pj]);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _qk: &Tensor,
        _c2p: &Tensor,
        _p2c: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let (b, _, t, _) = self.dims;
        let keep = Tensor::from_slice(&self.keep[..], (b, 1, t, 1), g.device())?;
        let d_qk = g.broadcast_mul(&keep)?;
        let d_c2p = g.apply_op1_no_bwd(&PositionGrad {
            dims: self.dims,
            idx: self.ci.clone(),
            keep: self.keep.clone(),
            by_key: false,
        })?;
        let d_p2c = g.apply_op1_no_bwd(&PositionGrad {
            dims: self.dims,
            idx: self.pi.clone(),
            keep: self.keep.clone(),
            by_key: true,
        })?;
        Ok((Some(d_qk), Some(d_c2p), Some(d_p2c)))
    }
}

/// The gradient of one position term, (B, H, T, R): for content→position, row (b, h, i) gets
/// `keep_i · g[i, j]` at `ci[i, j]`; for position→content (`by_key`), row (b, h, j) gets
/// `keep_i · g[i, j]` at `pi[j, i]`.
struct PositionGrad {
    dims: (usize, usize, usize, usize),
    idx: Arc<Vec<u32>>,
    keep: Arc<Vec<f32>>,
    by_key: bool,
}

impl CustomOp1 for PositionGrad {
    fn name(&self) -> &'static str {
        "prism-disentangled-position-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(self.name(), s, l)?;
        let (b, h, t, r) = self.dims;
        let mut out = vec![0f32; b * h * t * r];
        for_each_row(&mut out, r, |row, o| {
            let (bh, a) = (row / t, row % t);
            let keep = &self.keep[(bh / h) * t..(bh / h + 1) * t];
            let g = &g[bh * t * t..(bh + 1) * t * t];
            if self.by_key {
                // Row of key j = a: every query i.
                let idx = &self.idx[a * t..(a + 1) * t];
                for i in 0..t {
                    o[idx[i] as usize] += keep[i] * g[i * t + a];
                }
            } else {
                // Row of query i = a: every key j.
                let (k, idx) = (keep[a], &self.idx[a * t..(a + 1) * t]);
                if k != 0.0 {
                    for j in 0..t {
                        o[idx[j] as usize] += k * g[a * t + j];
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, r))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn composed(
        qk: &Tensor,
        c2p: &Tensor,
        p2c: &Tensor,
        ci: &[u32],
        pi: &[u32],
        keep: &Tensor,
    ) -> Tensor {
        let (b, h, t, _) = qk.dims4().unwrap();
        let idx = |v: &[u32]| {
            Tensor::from_slice(v, (1, 1, t, t), &Device::Cpu)
                .unwrap()
                .broadcast_as((b, h, t, t))
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let c = c2p.gather(&idx(ci), 3).unwrap();
        let p = p2c.gather(&idx(pi), 3).unwrap().transpose(2, 3).unwrap();
        let keep = keep.reshape((b, 1, t, 1)).unwrap();
        ((qk + c).unwrap() + p)
            .unwrap()
            .broadcast_mul(&keep)
            .unwrap()
    }

    #[test]
    fn forward_and_gradients_match_the_composed_ops() {
        let dev = Device::Cpu;
        let (b, h, t, r) = (2, 3, 5, 7);
        let qk = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, t), &dev).unwrap()).unwrap();
        let c2p = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, r), &dev).unwrap()).unwrap();
        let p2c = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, h, t, r), &dev).unwrap()).unwrap();
        let ci: Vec<u32> = (0..t * t).map(|x| ((x * 3 + 1) % r) as u32).collect();
        let pi: Vec<u32> = (0..t * t).map(|x| ((x * 5 + 2) % r) as u32).collect();
        let keep = Tensor::new(&[[1f32, 1., 1., 0., 0.], [1., 1., 1., 1., 1.]], &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (b, h, t, t), &dev).unwrap();
        let fused = disentangled_scores(
            &qk,
            &c2p,
            &p2c,
            Arc::new(ci.clone()),
            Arc::new(pi.clone()),
            &keep,
        )
        .unwrap();
        let want = composed(&qk, &c2p, &p2c, &ci, &pi, &keep);
        let diff = |a: &Tensor, b: &Tensor| -> f32 {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        assert!(diff(&fused, &want) < 1e-6);
        let g1 = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (want * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&qk, &c2p, &p2c] {
            let (a, b) = (
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(diff(a, b) < 1e-5, "gradient differs by {}", diff(a, b));
        }
    }
}
