//! Fused multi-head scaled dot-product attention with its backward pass.
//!
//! `ctx = dropout(softmax(scale * Q K^T + mask)) V`, per example and head, reading Q, K and V
//! straight from their (B, T, C) projections and writing the context straight into (B, T, C):
//! no head split/merge copies, no (B, H, T, T) tensors kept between forward and backward (the
//! backward pass recomputes each head's T x T probabilities, as FlashAttention does), one
//! single-threaded GEMM per head with the heads spread over the threads, and the dropout mask
//! regenerated from its seed ([`super::dropout`]). The probabilities themselves are not
//! returned: callers that need them (explanations asking for attentions) use the unfused path.

use super::dropout::{kept, threshold};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Scaled dot-product attention over `heads` heads.
///
/// `mask` is additive per key position (0 keep, a large negative number drop), one row per
/// example; `dropout` is the probability and seed of attention dropout (training only).
///
/// # Shapes
/// `q`, `k`, `v`: (B, T, C); `mask`: (B, T) -> (B, T, C)
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    heads: usize,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    let (b, t, c) = q.dims3()?;
    if k.dims() != [b, t, c] || v.dims() != [b, t, c] || mask.dims() != [b, t] {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?}, mask {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims(),
            mask.dims()
        );
    }
    if heads == 0 || c % heads != 0 {
        candle_core::bail!("attention: {c} channels do not split into {heads} heads");
    }
    let d = c / heads;
    let scale = 1.0 / (d as f64).sqrt();
    let dropout = dropout.filter(|(p, _)| *p > 0.0);
    if q.device().is_cpu() && q.dtype() == DType::F32 {
        let mask: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let op = Attention {
            b,
            t,
            heads,
            d,
            scale: scale as f32,
            mask,
            dropout,
        };
        return q
            .contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, op);
    }
    // Other devices: the same computation from primitives that all have a backward pass.
    let split = |x: &Tensor| -> Result<Tensor> {
        x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let scores = split(q)?.matmul(&split(k)?.t()?)?; // (B, H, T, T)
    let mut probs = super::masked_softmax(&scores, mask, scale)?;
    if let Some((p, seed)) = dropout {
        probs = super::dropout(&probs, p, seed)?;
    }
    probs
        .matmul(&split(v)?)?
        .transpose(1, 2)?
        .reshape((b, t, c))
}

struct Attention {
    b: usize,
    t: usize,
    heads: usize,
    d: usize,
    scale: f32,
    /// Additive mask, (B, T) row-major.
    mask: Vec<f32>,
    dropout: Option<(f64, u64)>,
}

/// A raw pointer that may cross threads: every task writes a disjoint (example, head) block.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// dst (m, n) := [dst +] beta * lhs (m, k) * rhs (k, n), with explicit (row, column) strides,
/// single-threaded (the caller parallelises over heads).
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        beta,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

impl Attention {
    /// Probabilities of head (bi, h) into `p` (T x T), before dropout.
    fn probs(&self, q: &[f32], k: &[f32], bi: usize, h: usize, p: &mut [f32]) {
        let (t, c) = (self.t, self.heads * self.d);
        let off = bi * t * c + h * self.d;
        // SAFETY: Q and K blocks are T rows of D values at row stride C inside (B, T, C);
        // `p` holds T x T values.
        unsafe {
            mm(
                t,
                t,
                self.d,
                p.as_mut_ptr(),
                t,
                q.as_ptr().add(off),
                (c, 1),
                // rhs = K^T: element (kk, j) is K[j][kk].
                k.as_ptr().add(off),
                (1, c),
                self.scale,
            );
        }
        let mrow = &self.mask[bi * t..(bi + 1) * t];
        for row in p.chunks_mut(t) {
            for (x, m) in row.iter_mut().zip(mrow) {
                *x += m;
            }
            super::softmax::softmax_in_place(row);
        }
    }

    /// Multiply head (bi, h)'s probabilities by its dropout mask (0 or 1 / (1 - p)), in place.
    /// Element (i, j) has the index it would have in a contiguous (B, H, T, T) tensor, so the
    /// mask equals `ops::dropout` applied to the unfused probabilities with the same seed.
    fn drop(&self, bi: usize, h: usize, p: &mut [f32]) {
        if let Some((prob, seed)) = self.dropout {
            let (thr, keep) = (threshold(prob), (1.0 / (1.0 - prob)) as f32);
            let base = (bi * self.heads + h) * self.t * self.t;
            for (i, x) in p.iter_mut().enumerate() {
                *x = if kept(seed, base + i, thr) {
                    *x * keep
                } else {
                    0.0
                };
            }
        }
    }

    fn tasks(&self) -> impl ParallelIterator<Item = (usize, usize)> + '_ {
        (0..self.b * self.heads)
            .into_par_iter()
            .map(move |i| (i / self.heads, i % self.heads))
    }
}

fn cpu_f32<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    super::contiguous_f32(op, s, l)
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "prism-attention"
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
        let (q, k, v) = (
            cpu_f32(self.name(), s1, l1)?,
            cpu_f32(self.name(), s2, l2)?,
            cpu_f32(self.name(), s3, l3)?,
        );
        let (t, c) = (self.t, self.heads * self.d);
        let mut out = vec![0f32; self.b * t * c];
        let dst = SendPtr(out.as_mut_ptr());
        self.tasks().for_each_init(
            || vec![0f32; t * t],
            |p, (bi, h)| {
                let dst = dst;
                self.probs(q, k, bi, h, p);
                self.drop(bi, h, p);
                let off = bi * t * c + h * self.d;
                // SAFETY: task (bi, h) writes only the T x D block at `off` (row stride C).
                unsafe {
                    mm(
                        t,
                        self.d,
                        t,
                        dst.0.add(off),
                        c,
                        p.as_ptr(),
                        (t, 1),
                        v.as_ptr().add(off),
                        (c, 1),
                        1.0,
                    );
                }
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, dy) = (host(q)?, host(k)?, host(v)?, host(grad)?);
        let (t, c, d) = (self.t, self.heads * self.d, self.d);
        let n = self.b * t * c;
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        let ptrs = (
            SendPtr(dq.as_mut_ptr()),
            SendPtr(dk.as_mut_ptr()),
            SendPtr(dv.as_mut_ptr()),
        );
        self.tasks().for_each_init(
            || (vec![0f32; t * t], vec![0f32; t * t], vec![0f32; t * t]),
            |(p, pd, dp), (bi, h)| {
                let (dqp, dkp, dvp) = ptrs;
                let off = bi * t * c + h * d;
                self.probs(&q, &k, bi, h, p);
                pd.copy_from_slice(p);
                self.drop(bi, h, pd);
                // SAFETY: every product reads (B, T, C) blocks at row stride C or T x T
                // scratch, and writes only task (bi, h)'s T x D blocks of dq, dk, dv.
                unsafe {
                    // dV = dropout(P)^T dY
                    mm(
                        t,
                        d,
                        t,
                        dvp.0.add(off),
                        c,
                        pd.as_ptr(),
                        (1, t),
                        dy.as_ptr().add(off),
                        (c, 1),
                        1.0,
                    );
                    // d dropout(P) = dY V^T
                    mm(
                        t,
                        t,
                        d,
                        dp.as_mut_ptr(),
                        t,
                        dy.as_ptr().add(off),
                        (c, 1),
                        v.as_ptr().add(off),
                        (1, c),
                        1.0,
                    );
                }
                // Through dropout (the same mask), then softmax: dS = P (dP - rowsum(dP P)).
                self.drop(bi, h, dp);
                for (prow, dprow) in p.chunks(t).zip(dp.chunks_mut(t)) {
                    let dot: f32 = prow.iter().zip(dprow.iter()).map(|(a, b)| a * b).sum();
                    for (g, &pv) in dprow.iter_mut().zip(prow) {
                        *g = pv * (*g - dot);
                    }
                }
                unsafe {
                    // dQ = scale dS K
                    mm(
                        t,
                        d,
                        t,
                        dqp.0.add(off),
                        c,
                        dp.as_ptr(),
                        (t, 1),
                        k.as_ptr().add(off),
                        (c, 1),
                        self.scale,
                    );
                    // dK = scale dS^T Q
                    mm(
                        t,
                        d,
                        t,
                        dkp.0.add(off),
                        c,
                        dp.as_ptr(),
                        (1, t),
                        q.as_ptr().add(off),
                        (c, 1),
                        self.scale,
                    );
                }
            },
        );
        let shape = (self.b, t, c);
        let dev = grad.device();
        Ok((
            Some(Tensor::from_vec(dq, shape, dev)?),
            Some(Tensor::from_vec(dk, shape, dev)?),
            Some(Tensor::from_vec(dv, shape, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::max_diff;
    use candle_core::{Device, Var};

    /// The unfused composition, forced (CPU custom softmax and dropout, explicit head split).
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        heads: usize,
        dropout: Option<(f64, u64)>,
    ) -> Tensor {
        let (b, t, c) = q.dims3().unwrap();
        let d = c / heads;
        let split = |x: &Tensor| {
            x.reshape((b, t, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let s = split(q).matmul(&split(k).t().unwrap()).unwrap();
        let mut p = crate::ops::masked_softmax(&s, mask, 1.0 / (d as f64).sqrt()).unwrap();
        if let Some((pr, seed)) = dropout {
            p = crate::ops::dropout(&p, pr, seed).unwrap();
        }
        p.matmul(&split(v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, c))
            .unwrap()
    }

    #[test]
    fn matches_the_unfused_path_forward_and_backward() {
        let dev = Device::Cpu;
        let (b, t, c, heads) = (3, 7, 12, 3);
        let var = |s| Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &dev).unwrap()).unwrap();
        let (q, k, v) = (var((b, t, c)), var((b, t, c)), var((b, t, c)));
        // Example 1 has two padded keys; example 2 none.
        let mut m = vec![0f32; b * t];
        m[t + 5] = f32::MIN;
        m[t + 6] = f32::MIN;
        let mask = Tensor::from_vec(m, (b, t), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (b, t, c), &dev).unwrap();
        for dropout in [None, Some((0.3, 11u64))] {
            let fused = attention(&q, &k, &v, &mask, heads, dropout).unwrap();
            let plain = reference(&q, &k, &v, &mask, heads, dropout);
            assert!(max_diff(&fused, &plain) < 1e-5, "forward {dropout:?}");
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
            for (name, x) in [("q", &q), ("k", &k), ("v", &v)] {
                let (a, r) = (
                    g1.get(x.as_tensor()).unwrap(),
                    g2.get(x.as_tensor()).unwrap(),
                );
                assert!(max_diff(a, r) < 1e-5, "d{name} {dropout:?}");
            }
        }
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 4, 8), DType::F32, &dev).unwrap();
        let mask = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        assert!(attention(&q, &q, &q, &mask, 3, None).is_err());
        let bad = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
        assert!(attention(&q, &q, &q, &bad, 2, None).is_err());
    }
}
