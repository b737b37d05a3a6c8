//! Fused multi-head scaled dot-product attention with its backward pass.
//!
//! `ctx = dropout(softmax(scale * Q K^T + mask)) V`, per example and head, reading Q, K and V
//! straight from their (B, T, C) projections and writing the context straight into (B, T, C):
//! no head split/merge copies, one single-threaded GEMM per head with the heads spread over the
//! threads, and the dropout mask regenerated from its seed ([`super::dropout`]). When the input
//! tracks gradients, each head's probabilities are kept for the backward pass if all of them
//! fit in [`KEEP_PROBS_BYTES`] (PyTorch keeps them too); longer sequences recompute them in the
//! backward pass instead, as FlashAttention does. The probabilities are not returned: callers
//! that need them (explanations asking for attentions) use the unfused path.
//!
//! [`attention_queries`] runs only the first rows' queries against every key: a sequence
//! head reads the last layer at position 0 alone, and its backward pass is the same fused kernel
//! (one (B, T, 3C) gradient, no slicing of the projection).

use super::dropout::{dropout_in_place, threshold};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// The most memory the probabilities of one attention op may keep for its backward pass
/// (B x H x T x T f32); above it they are recomputed. 16 x 12 heads x 128^2 (BERT-base, batch 16)
/// is 12.6 MB; at 512 tokens the same batch would need 201 MB per layer.
pub const KEEP_PROBS_BYTES: usize = 32 << 20;

/// Scaled dot-product attention over `heads` heads, from the fused query/key/value projection.
///
/// `qkv` holds each token's query, key and value side by side (channels `0..C`, `C..2C`,
/// `2C..3C`), as one GEMM against the concatenated projection weights produces them; the op reads
/// the three blocks in place and its backward pass writes one (B, T, 3C) gradient, so the
/// projection's backward is one GEMM too. `mask` is additive per key position (0 keep, a large
/// negative number drop), one row per example; `dropout` is the probability and seed of
/// attention dropout (training only).
///
/// # Shapes
/// `qkv`: (B, T, 3C); `mask`: (B, T) -> (B, T, C)
pub fn attention(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    let t = qkv.dims3()?.1;
    attention_queries(qkv, mask, heads, t, dropout)
}

/// [`attention`] within a sliding window: query i attends to keys j with |i − j| ≤ `window`
/// (and not masked by `mask`), ModernBERT's local layers.
///
/// # Shapes
/// `qkv`: (B, T, 3C); `mask`: (B, T) -> (B, T, C)
pub fn attention_windowed(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    window: usize,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    let t = qkv.dims3()?.1;
    attention_impl(qkv, mask, heads, t, Some(window), dropout)
}

/// [`attention`] for the queries of the first `rows` tokens only, against every key and value:
/// the context of those rows, (B, rows, C). The dropout mask of row i, head h, key j is the one
/// `ops::dropout` draws for element (b, h, i, j) of a contiguous (B, H, rows, T) tensor.
///
/// # Shapes
/// `qkv`: (B, T, 3C); `mask`: (B, T) -> (B, rows, C)
pub fn attention_queries(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    rows: usize,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    attention_impl(qkv, mask, heads, rows, None, dropout)
}

fn attention_impl(
    qkv: &Tensor,
    mask: &Tensor,
    heads: usize,
    rows: usize,
    window: Option<usize>,
    dropout: Option<(f64, u64)>,
) -> Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    if c3 % 3 != 0 || mask.dims() != [b, t] {
        candle_core::bail!(
            "attention: qkv {:?} (B, T, 3C) and mask {:?} (B, T) do not fit",
            qkv.dims(),
            mask.dims()
        );
    }
    if rows > t {
        candle_core::bail!("attention: {rows} query rows asked of {t} tokens");
    }
    let c = c3 / 3;
    if heads == 0 || c % heads != 0 {
        candle_core::bail!("attention: {c} channels do not split into {heads} heads");
    }
    let d = c / heads;
    if rows == 0 {
        // No queries (or no tokens): an empty context (the kernels below work row by row).
        return Tensor::zeros((b, 0, c), qkv.dtype(), qkv.device());
    }
    let scale = 1.0 / (d as f64).sqrt();
    let dropout = dropout.filter(|(p, _)| *p > 0.0);
    if qkv.device().is_cpu() && qkv.dtype() == DType::F32 {
        let mask: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let op = Attention {
            b,
            t,
            rows,
            heads,
            d,
            scale: scale as f32,
            mask,
            window,
            dropout,
            keep_probs: qkv.track_op() && b * heads * rows * t * 4 <= KEEP_PROBS_BYTES,
            saved: OnceLock::new(),
        };
        return qkv.contiguous()?.apply_op1(op);
    }
    // Other devices: the same computation from primitives that all have a backward pass.
    let split = |i: usize, n: usize| -> Result<Tensor> {
        qkv.narrow(2, i * c, c)?
            .narrow(1, 0, n)?
            .reshape((b, n, heads, d))?
            .transpose(1, 2)?
            .contiguous()
    };
    let scores = split(0, rows)?.matmul(&split(1, t)?.t()?)?; // (B, H, rows, T)
    let mut probs = match window {
        None => super::masked_softmax(&scores, mask, scale)?,
        Some(w) => {
            // One mask row per (example, head, query): the key mask, and MIN outside the band.
            let band: Vec<f32> = (0..rows)
                .flat_map(|i| (0..t).map(move |j| if i.abs_diff(j) <= w { 0.0 } else { f32::MIN }))
                .collect();
            let band = Tensor::from_vec(band, (1, 1, rows, t), qkv.device())?;
            let m = mask
                .to_dtype(DType::F32)?
                .reshape((b, 1, 1, t))?
                .broadcast_minimum(&band)?
                .broadcast_as((b, heads, rows, t))?
                .contiguous()?
                .reshape((b * heads * rows, t))?;
            super::masked_softmax(&scores, &m, scale)?
        }
    };
    if let Some((p, seed)) = dropout {
        probs = super::dropout(&probs, p, seed)?;
    }
    probs
        .matmul(&split(2, t)?)?
        .transpose(1, 2)?
        .reshape((b, rows, c))
}

struct Attention {
    b: usize,
    t: usize,
    /// Query rows: the first `rows` tokens (`t` for full attention).
    rows: usize,
    heads: usize,
    d: usize,
    scale: f32,
    /// Additive mask, (B, T) row-major.
    mask: Vec<f32>,
    /// Query i attends to keys within `window` positions only (a sliding window).
    window: Option<usize>,
    dropout: Option<(f64, u64)>,
    /// Whether the forward pass keeps its probabilities in `saved` for the backward pass.
    keep_probs: bool,
    /// Probabilities before dropout, (B, H, rows, T), when `keep_probs`.
    saved: OnceLock<Vec<f32>>,
}

/// A raw pointer that may cross threads: every task writes a disjoint (example, head) block.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// dst (m, n) := beta * lhs (m, k) * rhs (k, n), with explicit (row, column) strides,
/// single-threaded (the caller parallelises over heads). Overwrites dst without reading it.
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
    /// Offset of head (bi, h)'s query block inside (B, T, 3C); its key block is C further on,
    /// its value block 2C.
    fn qkv_offset(&self, bi: usize, h: usize) -> usize {
        bi * self.t * 3 * self.heads * self.d + h * self.d
    }

    /// Probabilities of head (bi, h) into `p` (rows x T), before dropout.
    fn probs(&self, qkv: &[f32], bi: usize, h: usize, p: &mut [f32]) {
        assert_eq!(
            p.len(),
            self.head_len(),
            "attention: probability block size"
        );
        // SAFETY: `p` is a valid, exclusive block of rows x T values.
        unsafe { self.probs_into(qkv, bi, h, p.as_mut_ptr()) };
    }

    /// [`Self::probs`] into a possibly uninitialised block, returned initialised.
    ///
    /// # Safety
    /// `p` must be valid for writes of rows x T values that nothing else accesses during the
    /// call and the returned borrow.
    unsafe fn probs_into<'a>(
        &self,
        qkv: &[f32],
        bi: usize,
        h: usize,
        p: *mut f32,
    ) -> &'a mut [f32] {
        let (t, c) = (self.t, self.heads * self.d);
        let off = self.qkv_offset(bi, h);
        // SAFETY: Q and K blocks are T rows of D values at row stride 3C inside (B, T, 3C)
        // (Q's first `rows` are read); `p` holds rows x T values, every one of which the GEMM
        // writes (it never reads dst), so the slice made after it is initialised.
        let p = unsafe {
            mm(
                self.rows,
                t,
                self.d,
                p,
                t,
                qkv.as_ptr().add(off),
                (3 * c, 1),
                // rhs = K^T: element (kk, j) is K[j][kk].
                qkv.as_ptr().add(off + c),
                (1, 3 * c),
                self.scale,
            );
            std::slice::from_raw_parts_mut(p, self.head_len())
        };
        let mrow = &self.mask[bi * t..(bi + 1) * t];
        match self.window {
            None => {
                for row in p.chunks_mut(t) {
                    super::softmax::masked_softmax_in_place(mrow, row);
                }
            }
            Some(w) => {
                for (i, row) in p.chunks_mut(t).enumerate() {
                    let (lo, hi) = (i.saturating_sub(w), (i + w + 1).min(t));
                    super::softmax::banded_masked_softmax_in_place(mrow, row, lo, hi);
                }
            }
        }
        p
    }

    /// Multiply head (bi, h)'s probabilities by its dropout mask (0 or 1 / (1 - p)), in place.
    /// Element (i, j) has the index it would have in a contiguous (B, H, rows, T) tensor, so the
    /// mask equals `ops::dropout` applied to the unfused probabilities with the same seed.
    fn drop(&self, bi: usize, h: usize, p: &mut [f32]) {
        if let Some((prob, seed)) = self.dropout {
            let (thr, keep) = (threshold(prob), (1.0 / (1.0 - prob)) as f32);
            let base = (bi * self.heads + h) * self.rows * self.t;
            dropout_in_place(p, seed, base, thr, keep);
        }
    }

    /// Values per head's probabilities (rows x T).
    fn head_len(&self) -> usize {
        self.rows * self.t
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

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "prism-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = cpu_f32(self.name(), s, l)?;
        let (t, c, rows, hl) = (self.t, self.heads * self.d, self.rows, self.head_len());
        let n_out = self.b * rows * c;
        let mut out: Vec<f32> = Vec::with_capacity(n_out);
        let dst = SendPtr(out.as_mut_ptr());
        let mut saved: Vec<f32> = Vec::new();
        if self.keep_probs {
            saved.reserve_exact(self.b * self.heads * hl);
        }
        let kept = SendPtr(saved.as_mut_ptr());
        self.tasks().for_each_init(
            || vec![0f32; hl],
            |scratch, (bi, h)| {
                let (dst, kept) = (dst, kept);
                // The probabilities go straight into the kept buffer when there is one.
                let p: &[f32] = if self.keep_probs {
                    // SAFETY: task (bi, h) alone writes this head's rows x T block of `saved`,
                    // whose capacity holds every head's; `probs_into` initialises all of it.
                    let kp = unsafe {
                        self.probs_into(qkv, bi, h, kept.0.add((bi * self.heads + h) * hl))
                    };
                    if self.dropout.is_some() {
                        scratch.copy_from_slice(kp);
                        self.drop(bi, h, scratch);
                        scratch
                    } else {
                        kp
                    }
                } else {
                    self.probs(qkv, bi, h, scratch);
                    self.drop(bi, h, scratch);
                    scratch
                };
                let v_off = self.qkv_offset(bi, h) + 2 * c;
                // SAFETY: task (bi, h) writes only the rows x D block at `off` (row stride C)
                // and reads its V block (row stride 3C).
                unsafe {
                    mm(
                        rows,
                        self.d,
                        t,
                        dst.0.add(bi * rows * c + h * self.d),
                        c,
                        p.as_ptr(),
                        (t, 1),
                        qkv.as_ptr().add(v_off),
                        (3 * c, 1),
                        1.0,
                    );
                }
            },
        );
        // SAFETY: the (B x heads) tasks wrote every rows x D block of (B, rows, C), each with a
        // GEMM that overwrites its destination (`mm` does not read dst), and, when kept, every
        // head's probabilities.
        unsafe { out.set_len(n_out) };
        if self.keep_probs {
            // SAFETY: with `keep_probs` every task wrote its head's rows x T block of `saved`
            // (reserved above for all B x heads of them) before anything else.
            unsafe { saved.set_len(self.b * self.heads * hl) };
            // cpu_fwd runs once per op; a second call would keep the first result, the same.
            let _ = self.saved.set(saved);
        }
        Ok((CpuStorage::F32(out), Shape::from((self.b, rows, c))))
    }

    fn bwd(&self, qkv: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let dqkv = qkv.apply_op2_no_bwd(&grad.contiguous()?, &AttentionBwd(self))?;
        Ok(Some(dqkv))
    }
}

/// The backward pass as an op of (qkv, dY), so that both are read in place.
struct AttentionBwd<'a>(&'a Attention);

impl CustomOp2 for AttentionBwd<'_> {
    fn name(&self) -> &'static str {
        "prism-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = self.0;
        let qkv = cpu_f32(self.name(), s1, l1)?;
        let dy = cpu_f32(self.name(), s2, l2)?;
        let (t, c, d, rows, hl) = (a.t, a.heads * a.d, a.d, a.rows, a.head_len());
        let n_out = a.b * t * 3 * c;
        let mut dqkv: Vec<f32> = Vec::with_capacity(n_out);
        let dst = SendPtr(dqkv.as_mut_ptr());
        let saved = a.saved.get();
        a.tasks().for_each_init(
            || (vec![0f32; hl], vec![0f32; hl], vec![0f32; hl]),
            |(scratch, pd, dp), (bi, h)| {
                let dst = dst;
                let off = a.qkv_offset(bi, h); // query block; key +C, value +2C
                let dy_off = bi * rows * c + h * d;
                let p: &[f32] = match saved {
                    Some(s) => &s[(bi * a.heads + h) * hl..][..hl],
                    None => {
                        a.probs(qkv, bi, h, scratch);
                        scratch
                    }
                };
                let pd: &[f32] = if a.dropout.is_some() {
                    pd.copy_from_slice(p);
                    a.drop(bi, h, pd);
                    pd
                } else {
                    p
                };
                // SAFETY: every product reads (B, T, 3C) or (B, rows, C) blocks at their row
                // strides or rows x T scratch, and writes only task (bi, h)'s three T x D blocks
                // of dqkv.
                unsafe {
                    // dV = dropout(P)^T dY
                    mm(
                        t,
                        d,
                        rows,
                        dst.0.add(off + 2 * c),
                        3 * c,
                        pd.as_ptr(),
                        (1, t),
                        dy.as_ptr().add(dy_off),
                        (c, 1),
                        1.0,
                    );
                    // d dropout(P) = dY V^T
                    mm(
                        rows,
                        t,
                        d,
                        dp.as_mut_ptr(),
                        t,
                        dy.as_ptr().add(dy_off),
                        (c, 1),
                        qkv.as_ptr().add(off + 2 * c),
                        (1, 3 * c),
                        1.0,
                    );
                }
                // Through dropout (the same mask), then softmax: dS = P (dP - rowsum(dP P)).
                a.drop(bi, h, dp);
                for (prow, dprow) in p.chunks(t).zip(dp.chunks_mut(t)) {
                    super::softmax::softmax_backward_in_place(prow, dprow);
                }
                unsafe {
                    // dQ = scale dS K for the query rows; the other rows had no query.
                    mm(
                        rows,
                        d,
                        t,
                        dst.0.add(off),
                        3 * c,
                        dp.as_ptr(),
                        (t, 1),
                        qkv.as_ptr().add(off + c),
                        (3 * c, 1),
                        a.scale,
                    );
                    for r in rows..t {
                        std::ptr::write_bytes(dst.0.add(off + r * 3 * c), 0, d);
                    }
                    // dK = scale dS^T Q
                    mm(
                        t,
                        d,
                        rows,
                        dst.0.add(off + c),
                        3 * c,
                        dp.as_ptr(),
                        (1, t),
                        qkv.as_ptr().add(off),
                        (3 * c, 1),
                        a.scale,
                    );
                }
            },
        );
        // SAFETY: every task overwrote its head's dQ, dK and dV blocks; together they cover
        // (B, T, 3C).
        unsafe { dqkv.set_len(n_out) };
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::max_diff;
    use candle_core::{Device, Var};

    /// The unfused composition, forced (CPU custom softmax and dropout, explicit head split),
    /// for the queries of the first `rows` tokens.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &Tensor,
        heads: usize,
        rows: usize,
        dropout: Option<(f64, u64)>,
    ) -> Tensor {
        let (b, t, c) = q.dims3().unwrap();
        let d = c / heads;
        let split = |x: &Tensor, n: usize| {
            x.narrow(1, 0, n)
                .unwrap()
                .reshape((b, n, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let s = split(q, rows).matmul(&split(k, t).t().unwrap()).unwrap();
        let mut p = crate::ops::masked_softmax(&s, mask, 1.0 / (d as f64).sqrt()).unwrap();
        if let Some((pr, seed)) = dropout {
            p = crate::ops::dropout(&p, pr, seed).unwrap();
        }
        p.matmul(&split(v, t))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, rows, c))
            .unwrap()
    }

    /// The sliding-window kernel against the composition with a per-query mask (the key mask,
    /// and MIN outside |i − j| ≤ w), forward and every input gradient, with dropout, including a
    /// query whose whole window is padding.
    #[test]
    fn windowed_attention_matches_the_banded_composition() {
        let dev = Device::Cpu;
        let (b, t, c, heads, w) = (2, 9, 8, 2, 2);
        let var = |s| Var::from_tensor(&Tensor::randn(0f32, 1.0, s, &dev).unwrap()).unwrap();
        let (q, k, v) = (var((b, t, c)), var((b, t, c)), var((b, t, c)));
        let mut m = vec![0f32; b * t];
        for j in 5..t {
            m[t + j] = f32::MIN; // example 1: keys 5.. padded (query 8's window is all padding)
        }
        let mask = Tensor::from_vec(m.clone(), (b, t), &dev).unwrap();
        let d = c / heads;
        let split = |x: &Tensor| {
            x.reshape((b, t, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let rows: Vec<f32> = (0..b * heads * t)
            .flat_map(|r| {
                let (bi, i) = (r / (heads * t), r % t);
                let m = &m;
                (0..t).map(move |j| {
                    if i.abs_diff(j) <= w {
                        m[bi * t + j]
                    } else {
                        f32::MIN
                    }
                })
            })
            .collect();
        let band = Tensor::from_vec(rows, (b * heads * t, t), &dev).unwrap();
        let probe = Tensor::randn(0f32, 1.0, (b, t, c), &dev).unwrap();
        for dropout in [None, Some((0.25, 5u64))] {
            let qkv = Tensor::cat(&[q.as_tensor(), k.as_tensor(), v.as_tensor()], 2).unwrap();
            let fused = attention_windowed(&qkv, &mask, heads, w, dropout).unwrap();
            let s = split(&q).matmul(&split(&k).t().unwrap()).unwrap();
            let mut p = crate::ops::masked_softmax(&s, &band, 1.0 / (d as f64).sqrt()).unwrap();
            if let Some((pr, seed)) = dropout {
                p = crate::ops::dropout(&p, pr, seed).unwrap();
            }
            let plain = p
                .matmul(&split(&v))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .reshape((b, t, c))
                .unwrap();
            assert!(max_diff(&fused, &plain) < 1e-5, "forward {dropout:?}");
            let g1 = (&fused * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&plain * &probe)
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

    /// Forward and every input gradient against the unfused path, for all queries and for the
    /// first rows only, with and without dropout, with the probabilities kept (inputs that
    /// track gradients) and recomputed (the backward of a second, untracked-input op).
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
        for rows in [t, 1, 3] {
            let w = Tensor::randn(0f32, 1.0, (b, rows, c), &dev).unwrap();
            for dropout in [None, Some((0.3, 11u64))] {
                let qkv = Tensor::cat(&[q.as_tensor(), k.as_tensor(), v.as_tensor()], 2).unwrap();
                let fused = attention_queries(&qkv, &mask, heads, rows, dropout).unwrap();
                let plain = reference(&q, &k, &v, &mask, heads, rows, dropout);
                assert!(
                    max_diff(&fused, &plain) < 1e-5,
                    "forward {rows} {dropout:?}"
                );
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
                    assert!(max_diff(a, r) < 1e-5, "d{name} {rows} {dropout:?}");
                }
                // The same gradient when the backward pass recomputes the probabilities.
                let op = Attention {
                    b,
                    t,
                    rows,
                    heads,
                    d: c / heads,
                    scale: 1.0 / ((c / heads) as f32).sqrt(),
                    mask: mask.flatten_all().unwrap().to_vec1().unwrap(),
                    window: None,
                    dropout,
                    keep_probs: false,
                    saved: OnceLock::new(),
                };
                let dy = w.contiguous().unwrap();
                let recomputed = qkv
                    .detach()
                    .apply_op2_no_bwd(&dy, &AttentionBwd(&op))
                    .unwrap();
                let kept = Tensor::cat(
                    &[
                        g1.get(q.as_tensor()).unwrap(),
                        g1.get(k.as_tensor()).unwrap(),
                        g1.get(v.as_tensor()).unwrap(),
                    ],
                    2,
                )
                .unwrap();
                assert!(
                    max_diff(&recomputed, &kept) < 1e-6,
                    "recomputed {rows} {dropout:?}"
                );
            }
        }
        assert!(attention_queries(
            &Tensor::zeros((b, t, 3 * c), DType::F32, &dev).unwrap(),
            &mask,
            heads,
            t + 1,
            None
        )
        .is_err());
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let dev = Device::Cpu;
        let qkv = Tensor::zeros((2, 4, 24), DType::F32, &dev).unwrap();
        let mask = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        assert!(attention(&qkv, &mask, 2, None).is_ok());
        assert!(attention(&qkv, &mask, 3, None).is_err());
        let bad = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
        assert!(attention(&qkv, &bad, 2, None).is_err());
        let not_three = Tensor::zeros((2, 4, 8), DType::F32, &dev).unwrap();
        assert!(attention(&not_three, &mask, 2, None).is_err());
        // No tokens at all: an empty context, not a panic.
        let empty = Tensor::zeros((2, 0, 24), DType::F32, &dev).unwrap();
        let no_mask = Tensor::zeros((2, 0), DType::F32, &dev).unwrap();
        let out = attention(&empty, &no_mask, 2, None).unwrap();
        assert_eq!(out.dims(), [2, 0, 8]);
    }
}
