//! `y = x W^T + b` as one op: on CPU the GEMM writes a fresh output without zero-filling it
//! (from W transposed into a contiguous buffer), the bias is added in one vectorised parallel
//! pass, and the backward pass produces dx, dW (already in W's layout, no transpose copy) and db
//! directly.

use super::bf16::{self, Kernel};
use super::gelu;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor,
};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

fn parallelism() -> gemm::Parallelism {
    match candle_core::utils::get_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

fn f32_slice<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    super::contiguous_f32(op, s, l)
}

/// Rows of the transposed weight per parallel task.
const TRANSPOSE_BLOCK: usize = 64;

crate::multiversion! {
    /// `dst` (k, n) := `w` (n, k) transposed, for the rows `r0..r0 + dst.len() / n` of `dst`,
    /// through 16 x 16 tiles held in registers: rows of `w` are read and rows of `dst` written
    /// 16 contiguous values at a time.
    fn transpose_rows(w: &[f32], dst: &mut [MaybeUninit<f32>], r0: usize, n: usize, k: usize) {
        const T: usize = 16;
        assert_eq!(dst.len() % n.max(1), 0, "transpose block is not whole rows");
        let rows = dst.len() / n.max(1);
        let mut tile = [[0f32; T]; T];
        for i0 in (0..n).step_by(T) {
            let ti = T.min(n - i0);
            for j0 in (0..rows).step_by(T) {
                let tj = T.min(rows - j0);
                if ti == T && tj == T {
                    for (a, row) in tile.iter_mut().enumerate() {
                        let src = &w[(i0 + a) * k + r0 + j0..][..T];
                        row.copy_from_slice(src);
                    }
                    for b in 0..T {
                        let out = &mut dst[(j0 + b) * n + i0..][..T];
                        for (a, o) in out.iter_mut().enumerate() {
                            o.write(tile[a][b]);
                        }
                    }
                } else {
                    for a in 0..ti {
                        for b in 0..tj {
                            dst[(j0 + b) * n + i0 + a].write(w[(i0 + a) * k + r0 + j0 + b]);
                        }
                    }
                }
            }
        }
    }
}

/// `w` (n, k) transposed into a contiguous (k, n) buffer: the GEMM then streams the right-hand
/// side along rows, 10-25 % faster at transformer shapes than reading W at column stride k
/// (measured with the `gemm` crate at 2048 x 256 x 768 and friends). Costs n * k copies per
/// call against m * n * k multiply-adds.
fn transposed(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    let rows = TRANSPOSE_BLOCK.min(k.max(1));
    // SAFETY: `transpose_rows` writes every element of its block of rows.
    unsafe {
        super::rows_filled(n * k, n * rows, |r, block| {
            transpose_rows(w, block, r * rows, n, k);
        })
    }
}

/// A linear layer's GEMM reads W transposed into a contiguous copy (faster streaming), except
/// for a large W (above `TRANSPOSE_MAX_BYTES`) against fewer than `TRANSPOSE_MIN_ROWS` rows,
/// where the copy costs more than it saves: a masked-LM's tied decoder (300 masked positions x
/// 30,522 x 256 at mini size, W 31 MB) ran in ~40 instead of ~45 ms reading W at column stride,
/// while 600 x 256 x 1024 (W 1 MB) ran in 1.4 instead of 2.3 ms transposed
/// (a scratch timing program calling `ops::linear` 10 times per shape, 2 threads, not committed).
const TRANSPOSE_MIN_ROWS: usize = 1024;
const TRANSPOSE_MAX_BYTES: usize = 8 << 20;

/// A linear layer's weight W (out, in) transposed once into a contiguous (in, out) copy, for
/// layers whose weight does not change (frozen inference and explanation models): their GEMMs
/// read it instead of transposing W on every call (~4 % of a mini forward pass). A snapshot:
/// it does not follow later in-place updates of W.
#[derive(Debug)]
pub struct TransposedWeight {
    data: Vec<f32>,
    n: usize,
    k: usize,
}

impl TransposedWeight {
    /// The transpose of `w` (n, k), or `None` off the CPU or for a weight not in f32 (those
    /// layers do not go through this module's GEMM).
    pub fn of(w: &Tensor) -> Result<Option<Self>> {
        if !w.device().is_cpu() || w.dtype() != DType::F32 {
            return Ok(None);
        }
        let (n, k) = w.dims2()?;
        let flat = w.flatten_all()?.to_vec1::<f32>()?;
        Ok(Some(Self {
            data: transposed(&flat, n, k),
            n,
            k,
        }))
    }
}

/// x (m, k) * w^T where w is (n, k), all row-major and contiguous: a new (m, n) buffer. Reads
/// `wt` when it is w's transpose.
fn gemm_xwt(
    x: &[f32],
    w: &[f32],
    wt: Option<&TransposedWeight>,
    m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let cached = wt
        .filter(|t| t.n == n && t.k == k)
        .map(|t| t.data.as_slice());
    let transpose =
        cached.is_none() && (m >= TRANSPOSE_MIN_ROWS || n * k * 4 <= TRANSPOSE_MAX_BYTES);
    let fresh = transpose.then(|| transposed(w, n, k));
    // rhs element (kk, j) is wt[kk * n + j], or w[j * k + kk] when not transposed.
    let (rhs, rhs_cs, rhs_rs) = match cached.or(fresh.as_deref()) {
        Some(wt) => (wt.as_ptr(), 1, n as isize),
        None => (w.as_ptr(), k as isize, 1),
    };
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    // SAFETY: `out` has capacity m*n and `x`, `w` (or its transpose) hold m*k and n*k elements
    // (checked by the callers' shapes); the strides address exactly those. With
    // `read_dst = false` the GEMM writes every element of dst without reading it (the raw
    // pointer never becomes a slice of uninitialised values), after which the length is set.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            rhs,
            rhs_cs,
            rhs_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
        out.set_len(m * n);
    }
    out
}

/// How a linear op multiplies, fixed when it is built: in f32 (reading W's transpose when one
/// was made) or, under [`bf16::autocast`], in bf16 with f32 accumulation, forward and backward.
#[derive(Clone)]
struct Product {
    wt: Option<Arc<TransposedWeight>>,
    bf16: Option<Kernel>,
}

impl Product {
    fn new(wt: Option<&Arc<TransposedWeight>>) -> Self {
        Self {
            wt: wt.cloned(),
            bf16: bf16::autocast_kernel(),
        }
    }

    /// x (m, k) W^T: (m, n).
    fn xwt(&self, x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        match self.bf16 {
            Some(kernel) => bf16::xwt(kernel, x, w, m, n, k),
            None => gemm_xwt(x, w, self.wt.as_deref(), m, n, k),
        }
    }
}

/// (rows, out, in) of `x` (..., in) against `w` (out, in), and the output shape (..., out).
fn dims(op: &str, x: &Layout, w: &Layout) -> Result<(usize, usize, usize, Shape)> {
    let xd = x.shape().dims();
    let Some((&k, lead)) = xd.split_last() else {
        candle_core::bail!("{op}: scalar input");
    };
    let (n, k2) = w.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("{op}: input has {k} features, the weight expects {k2}");
    }
    let mut out = lead.to_vec();
    out.push(n);
    Ok((lead.iter().product(), n, k, Shape::from(out)))
}

/// dx (m, k) = dy (m, n) W (n, k) and, when `want_w`, dW (n, k) = dy^T x, each GEMM writing a
/// fresh buffer without zero-filling it. `x`, `w`, `dy` must hold m*k, n*k and m*n values.
fn dx_dw(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (m, n, k): (usize, usize, usize),
    want_w: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    assert!(
        x.len() == m * k && w.len() == n * k && dy.len() == m * n,
        "linear backward: operand sizes do not match {m} x {n} x {k}"
    );
    let mut dx: Vec<f32> = Vec::with_capacity(m * k);
    // SAFETY: dx has room for m*k values; `x`, `w`, `dy` hold m*k, n*k and m*n (asserted
    // above), the strides address exactly those, and with `read_dst = false`
    // the GEMMs write every destination element without reading it; lengths are set only
    // after they have.
    unsafe {
        // dx (m, k) = dy (m, n) W (n, k)
        gemm::gemm(
            m,
            k,
            n,
            dx.as_mut_ptr(),
            1,
            k as isize,
            false,
            dy.as_ptr(),
            1,
            n as isize,
            w.as_ptr(),
            1,
            k as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism(),
        );
        dx.set_len(m * k);
    }
    let dw = want_w.then(|| {
        let mut dw: Vec<f32> = Vec::with_capacity(n * k);
        // SAFETY: as above; dW (n, k) = dy^T (n, m) x (m, k), element (i, j) of dy^T is
        // dy[j * n + i].
        unsafe {
            gemm::gemm(
                n,
                k,
                m,
                dw.as_mut_ptr(),
                1,
                k as isize,
                false,
                dy.as_ptr(),
                n as isize,
                1,
                x.as_ptr(),
                1,
                k as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism(),
            );
            dw.set_len(n * k);
        }
        dw
    });
    (dx, dw)
}

/// dx = dy W (shaped like x) and, when tracked, dW = dy^T x (in W's own layout) and db = the
/// column sums of dy, each written by the GEMMs straight into a tensor of its own (no zero
/// fill; candle's matmul would zero-fill each output first). Separate buffers let a gradient
/// store add another gradient into dx in place (the residual stream's).
fn linear_grads(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    dy: &Tensor,
    precision: Option<Kernel>,
) -> Result<(Tensor, Option<Tensor>, Option<Tensor>)> {
    let name = "prism-linear-bwd";
    // Frozen weights (explanations) need no gradient: skip dW and db, a third of the backward
    // GEMM work.
    let (want_w, want_b) = (w.track_op(), b.is_some_and(|b| b.track_op()));
    let (x, w, dy) = (x.contiguous()?, w.contiguous()?, dy.contiguous()?);
    let (m, n, k, _) = dims(name, x.layout(), w.layout())?;
    let (dx, dw, db) = {
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = w.storage_and_layout();
        let (ds, dl) = dy.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(ds)) = (&*xs, &*ws, &*ds) else {
            candle_core::bail!("{name}: CPU tensors expected")
        };
        let (x, w, dy) = (
            f32_slice(name, xs, xl)?,
            f32_slice(name, ws, wl)?,
            f32_slice(name, ds, dl)?,
        );
        if dy.len() != m * n {
            candle_core::bail!(
                "{name}: gradient has {} values for {m} x {n} outputs",
                dy.len()
            );
        }
        let (dx, dw) = match precision {
            Some(kernel) => bf16::dx_dw(kernel, x, w, dy, (m, n, k), want_w),
            None => dx_dw(x, w, dy, (m, n, k), want_w),
        };
        (dx, dw, want_b.then(|| column_sums(dy, n)))
    };
    let dev = x.device();
    Ok((
        Tensor::from_vec(dx, x.shape(), dev)?,
        dw.map(|v| Tensor::from_vec(v, (n, k), dev)).transpose()?,
        db.map(|v| Tensor::from_vec(v, n, dev)).transpose()?,
    ))
}

/// `x` (..., in) times `w` (out, in) transposed, plus `b` (out) when given: (..., out). The
/// leading dimensions are rows of one GEMM; no reshape nodes enter the autograd graph.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_with(x, w, None, b)
}

/// [`linear`] reading `wt`, W's transpose made once, instead of transposing W on every call.
pub fn linear_with(
    x: &Tensor,
    w: &Tensor,
    wt: Option<&Arc<TransposedWeight>>,
    b: Option<&Tensor>,
) -> Result<Tensor> {
    let cpu_f32 = x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && b.map_or(true, |b| b.dtype() == DType::F32);
    if !cpu_f32 {
        let (n, k) = w.dims2()?;
        let mut out = x.dims().to_vec();
        if let Some(last) = out.last_mut() {
            *last = n;
        }
        let mut y = x.reshape(((), k))?.matmul(&w.t()?)?;
        if let Some(b) = b {
            y = y.broadcast_add(b)?;
        }
        return y.reshape(out);
    }
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    let product = Product::new(wt);
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, LinearBias(product)),
        None => x.apply_op2(&w, LinearNoBias(product)),
    }
}

/// `x W^T` (m, n) for a biased op's operands `x`, `W`, `b` (as `product` multiplies), with the
/// bias, the output width n and the output shape; the bias must have n entries.
fn biased_product<'a>(
    name: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
    product: &Product,
) -> Result<(Vec<f32>, &'a [f32], usize, Shape)> {
    let (m, n, k, shape) = dims(name, l1, l2)?;
    let (x, w, b) = (
        f32_slice(name, s1, l1)?,
        f32_slice(name, s2, l2)?,
        f32_slice(name, s3, l3)?,
    );
    if b.len() != n {
        candle_core::bail!("{name}: bias has {} entries for {n} outputs", b.len());
    }
    Ok((product.xwt(x, w, m, n, k), b, n, shape))
}

struct LinearBias(Product);

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "prism-linear"
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
        let (mut out, b, n, shape) =
            biased_product(self.name(), (s1, l1), (s2, l2), (s3, l3), &self.0)?;
        super::for_each_row(&mut out, n, |_, row| add_assign(row, b));
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = linear_grads(x, w, Some(b), dy, self.0.bf16)?;
        Ok((Some(dx), dw, db))
    }
}

/// Sum over the rows of a row-major matrix `x` with `m` columns: (m). Each thread sums a band
/// of rows into its own accumulator (vectorised inner loop), then the bands are added.
fn column_sums(x: &[f32], m: usize) -> Vec<f32> {
    let n = x.len() / m.max(1);
    let bands = if n * m >= super::PAR_MIN_ELEMS {
        rayon::current_num_threads().max(1) * 2
    } else {
        1
    };
    let rows_per = n.div_ceil(bands).max(1);
    let partial: Vec<Vec<f32>> = x
        .par_chunks((rows_per * m).max(1))
        .map(|band| {
            let mut acc = vec![0f32; m];
            for row in band.chunks(m.max(1)) {
                add_assign(&mut acc, row);
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; m];
    for p in &partial {
        add_assign(&mut out, p);
    }
    out
}

crate::multiversion! {
    /// `acc += row`, element-wise.
    fn add_assign(acc: &mut [f32], row: &[f32]) {
        for (a, v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
}

struct LinearNoBias(Product);

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "prism-linear-nobias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, n, k, shape) = dims(self.name(), l1, l2)?;
        let (x, w) = (
            f32_slice(self.name(), s1, l1)?,
            f32_slice(self.name(), s2, l2)?,
        );
        let out = self.0.xwt(x, w, m, n, k);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = linear_grads(x, w, None, dy, self.0.bf16)?;
        Ok((Some(dx), dw))
    }
}

/// `gelu(x W^T + b)` with the exact (erf) GELU, BERT's intermediate layer, as one op. On CPU
/// the bias and the GELU are one pass over the GEMM's output (separately: a bias pass, then a
/// GELU pass reading it back), in inference in place; when tracked the op keeps the
/// pre-activation and its backward pass turns it in place into `dh = dy * gelu'(h)`, summing
/// the bias gradient in the same pass, before the two GEMMs of [`linear`]'s backward pass.
/// `wt`, when given, is W's transpose made once ([`linear_with`]).
pub fn linear_gelu(
    x: &Tensor,
    w: &Tensor,
    wt: Option<&Arc<TransposedWeight>>,
    b: &Tensor,
) -> Result<Tensor> {
    let cpu_f32 = x.device().is_cpu() && [x, w, b].iter().all(|t| t.dtype() == DType::F32);
    if !cpu_f32 {
        return super::gelu_erf(&linear(x, w, Some(b))?);
    }
    let keep = x.track_op() || w.track_op() || b.track_op();
    let op = LinearGelu {
        keep,
        pre: Mutex::new(None),
        product: Product::new(wt),
    };
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, op)
}

struct LinearGelu {
    /// Whether to keep the pre-activation for a backward pass (any input tracks gradients).
    keep: bool,
    /// `x W^T + b`, (rows, out), kept by the forward pass and taken by the backward pass (which
    /// recomputes it when it is gone: a second backward pass over the same graph).
    pre: Mutex<Option<Vec<f32>>>,
    product: Product,
}

impl LinearGelu {
    fn pre(&self) -> std::sync::MutexGuard<'_, Option<Vec<f32>>> {
        self.pre.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Rows per parallel task for an (m, n) element-wise pass: a few tasks per thread when the work
/// is large enough, else one.
fn band_rows(m: usize, n: usize) -> usize {
    if m * n >= super::PAR_MIN_ELEMS {
        m.div_ceil(rayon::current_num_threads().max(1) * 4).max(1)
    } else {
        m.max(1)
    }
}

impl CustomOp3 for LinearGelu {
    fn name(&self) -> &'static str {
        "prism-linear-gelu"
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
        let (mut h, b, n, shape) =
            biased_product(self.name(), (s1, l1), (s2, l2), (s3, l3), &self.product)?;
        let m = h.len() / n.max(1);
        if !self.keep {
            super::for_each_row(&mut h, n, |_, row| gelu::bias_gelu_in_place(row, b));
            return Ok((CpuStorage::F32(h), shape));
        }
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        let band = (band_rows(m, n) * n).max(1);
        h.par_chunks_mut(band)
            .zip(y.spare_capacity_mut()[..m * n].par_chunks_mut(band))
            .for_each(|(h, y)| {
                for (h, y) in h.chunks_mut(n).zip(y.chunks_mut(n)) {
                    gelu::bias_gelu_keep(h, b, y);
                }
            });
        // SAFETY: `bias_gelu_keep` wrote every element of every row of y's m*n values.
        unsafe { y.set_len(m * n) };
        *self.pre() = Some(h);
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = "prism-linear-gelu-bwd";
        let (x, w, dy) = (x.contiguous()?, w.contiguous()?, dy.contiguous()?);
        let (m, n, _, _) = dims(name, x.layout(), w.layout())?;
        // The pre-activation kept by the forward pass; recomputed when a second backward pass
        // over the same graph finds it gone.
        let mut dh = match self.pre().take().filter(|h| h.len() == m * n) {
            Some(h) => h,
            None => {
                let _precision = bf16::autocast(self.product.bf16.is_some());
                linear_with(
                    &x.detach(),
                    &w.detach(),
                    self.product.wt.as_ref(),
                    Some(&b.detach()),
                )?
                .flatten_all()?
                .to_vec1::<f32>()?
            }
        };
        let want_b = b.track_op();
        let mut db = vec![0f32; n];
        {
            let (ds, dl) = dy.storage_and_layout();
            let Storage::Cpu(ds) = &*ds else {
                candle_core::bail!("{name}: a CPU gradient expected")
            };
            let dy = f32_slice(name, ds, dl)?;
            if dy.len() != m * n {
                candle_core::bail!("{name}: gradient has {} values for {m} x {n}", dy.len());
            }
            let band = (band_rows(m, n) * n).max(1);
            if want_b {
                let partial: Vec<Vec<f32>> = dh
                    .par_chunks_mut(band)
                    .zip(dy.par_chunks(band))
                    .map(|(h, g)| {
                        let mut acc = vec![0f32; n];
                        for (h, g) in h.chunks_mut(n).zip(g.chunks(n)) {
                            gelu::gelu_grad_in_place_sum(h, g, &mut acc);
                        }
                        acc
                    })
                    .collect();
                for p in &partial {
                    add_assign(&mut db, p);
                }
            } else {
                dh.par_chunks_mut(band)
                    .zip(dy.par_chunks(band))
                    .for_each(|(h, g)| gelu::gelu_grad_in_place(h, g));
            }
        }
        // dh is the gradient of a plain linear layer's output: its dx and dW.
        let mut out_shape = x.dims().to_vec();
        if let Some(last) = out_shape.last_mut() {
            *last = n;
        }
        let dh = Tensor::from_vec(dh, out_shape, x.device())?;
        let (dx, dw, _) = linear_grads(&x, &w, None, &dh, self.product.bf16)?;
        let db = want_b
            .then(|| Tensor::from_vec(db, n, x.device()))
            .transpose()?;
        Ok((Some(dx), dw, db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::max_diff;
    use candle_core::{Device, Var};

    /// Every forward path (W transposed first; a W above `TRANSPOSE_MAX_BYTES` read at column
    /// stride by fewer than `TRANSPOSE_MIN_ROWS` rows; W's transpose made once), with and
    /// without bias, and every gradient.
    #[test]
    fn matches_matmul_and_its_gradients() {
        let big = TRANSPOSE_MAX_BYTES / 4 / 19 + 1;
        for (m, n) in [(37, 23), (5, big)] {
            matches_matmul_at(m, n);
        }
    }

    fn matches_matmul_at(m: usize, n: usize) {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (m, 19), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, 19), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, n, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
        for with_bias in [true, false] {
            let bias = with_bias.then_some(b.as_tensor());
            let fused = linear(x.as_tensor(), w.as_tensor(), bias).unwrap();
            let mut plain = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
            if with_bias {
                plain = plain.broadcast_add(b.as_tensor()).unwrap();
            }
            assert!(max_diff(&fused, &plain) < 1e-4);
            // W's transpose made once (frozen layers) gives the same values.
            let cached = Arc::new(TransposedWeight::of(w.as_tensor()).unwrap().unwrap());
            let once = linear_with(x.as_tensor(), w.as_tensor(), Some(&cached), bias).unwrap();
            assert!(max_diff(&once, &plain) < 1e-4);
            let g1 = (&fused * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&plain * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &w] {
                let (a, c) = (
                    g1.get(v.as_tensor()).unwrap(),
                    g2.get(v.as_tensor()).unwrap(),
                );
                assert_eq!(a.dims(), c.dims());
                assert!(max_diff(a, c) < 1e-4);
            }
            if with_bias {
                let (a, c) = (
                    g1.get(b.as_tensor()).unwrap(),
                    g2.get(b.as_tensor()).unwrap(),
                );
                assert!(max_diff(a, c) < 1e-4);
            } else {
                assert!(g1.get(b.as_tensor()).is_none());
            }
        }
    }

    /// The fused linear + GELU against `gelu_erf(linear(..))`: the output untracked (in place)
    /// and tracked (pre-activation kept), every gradient, and a second backward pass over the
    /// same graph (the kept pre-activation is gone: recomputed).
    #[test]
    fn linear_gelu_matches_linear_then_gelu() {
        let dev = Device::Cpu;
        // 300 rows x 70 outputs: above the parallel threshold, rows split into bands.
        for (m, n) in [(3, 5), (300, 70)] {
            let xt = Tensor::randn(0f32, 1.0, (m, 19), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.5, (n, 19), &dev).unwrap();
            let bt = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
            let plain = crate::ops::gelu_erf(&linear(&xt, &wt, Some(&bt)).unwrap()).unwrap();
            let fused = linear_gelu(&xt, &wt, None, &bt).unwrap();
            assert!(max_diff(&fused, &plain) < 1e-5);
            let cached = Arc::new(TransposedWeight::of(&wt).unwrap().unwrap());
            let fused = linear_gelu(&xt, &wt, Some(&cached), &bt).unwrap();
            assert!(max_diff(&fused, &plain) < 1e-5);
            let (x, w, b) = (
                Var::from_tensor(&xt).unwrap(),
                Var::from_tensor(&wt).unwrap(),
                Var::from_tensor(&bt).unwrap(),
            );
            let r = Tensor::randn(0f32, 1.0, (m, n), &dev).unwrap();
            let fused = linear_gelu(x.as_tensor(), w.as_tensor(), None, b.as_tensor()).unwrap();
            let plain = crate::ops::gelu_erf(
                &linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap(),
            )
            .unwrap();
            assert!(max_diff(&fused, &plain) < 1e-5);
            let loss = (&fused * &r).unwrap().sum_all().unwrap();
            let g1 = loss.backward().unwrap();
            let g1b = loss.backward().unwrap();
            let g2 = (&plain * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&x, &w, &b] {
                let want = g2.get(v.as_tensor()).unwrap();
                for g in [&g1, &g1b] {
                    let got = g.get(v.as_tensor()).unwrap();
                    assert_eq!(got.dims(), want.dims());
                    assert!(max_diff(got, want) < 1e-4);
                }
            }
            // Frozen weight and bias (explanations): the input gradient alone.
            let frozen = linear_gelu(x.as_tensor(), &wt, None, &bt).unwrap();
            let g3 = (&frozen * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let want = g2.get(x.as_tensor()).unwrap();
            assert!(max_diff(g3.get(x.as_tensor()).unwrap(), want) < 1e-4);
            assert!(g3.get(&bt).is_none() && g3.get(&wt).is_none());
        }
    }

    #[test]
    fn leading_dimensions_are_rows() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5, 7), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 3, &dev).unwrap()).unwrap();
        let y = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap();
        assert_eq!(y.dims(), [2, 5, 3]);
        let plain = x
            .as_tensor()
            .reshape((10, 7))
            .unwrap()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap()
            .reshape((2, 5, 3))
            .unwrap();
        assert!(max_diff(&y, &plain) < 1e-4);
        let r = Tensor::randn(0f32, 1.0, (2, 5, 3), &dev).unwrap();
        let g1 = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&plain * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w, &b] {
            let (a, c) = (
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), c.dims());
            assert!(max_diff(a, c) < 1e-4);
        }
    }

    #[test]
    fn transpose_handles_full_and_partial_tiles() {
        for (n, k) in [(1, 1), (16, 16), (37, 70), (300, 129), (64, 16)] {
            let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
            let wt = transposed(&w, n, k);
            for i in 0..n {
                for j in 0..k {
                    assert_eq!(wt[j * n + i], w[i * k + j], "({n}, {k}) at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 5), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((3, 6), DType::F32, &dev).unwrap();
        let err = linear(&x, &w, None).unwrap_err().to_string();
        assert!(err.contains("5 features"), "{err}");
    }
}
