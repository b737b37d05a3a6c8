//! bf16 matrix multiplication with f32 accumulation, on whichever bf16 unit the CPU has: Intel's
//! AMX tile unit ([`amx`], `tdpbf16ps`) or the AVX512-BF16 vector instructions ([`avx512`],
//! `vdpbf16ps`, AMD Zen 4/5 and Intel Cooper Lake and later), picked at run time; neither is a
//! note and f32 (the callers keep their f32 path).
//!
//! Both kernels read the same operands: the left one as bf16 rows padded with zeros to a
//! multiple of 32 rows and columns ([`Rows`]), the right one packed once into pairs of
//! consecutive input features interleaved per output ("VNNI", [`PackedWeight`]), which is the
//! layout `tdpbf16ps` tiles and `vdpbf16ps` vectors both read. Results are f32.
//!
//! Two uses:
//! - inference and explanations ([`linear`], [`linear_then`]): constant weights packed once
//!   (models built from [`crate::nn::ParamStore::frozen_bf16`]), the bias where the
//!   accumulators start and BERT's GELU on each block while it is in cache; an input that
//!   tracks gradients gets `dy W` from `W^T` packed at its first backward pass;
//! - mixed-precision training ([`autocast`]): the f32 linear ops of [`super::linear`] run
//!   forward, dx and dW here, rounding their f32 operands (master weights, activations,
//!   gradients) to bf16 on the fly; everything else stays f32.
//!
//! `PRISM_BF16_KERNEL=amx|avx512bf16|off` forces one kernel (or none) on a CPU that has both,
//! so that both are tested and benchmarked on one machine.

pub mod amx;
pub mod avx512;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::cell::Cell;
use std::sync::{Arc, OnceLock};

/// Output rows and columns per block, and input features per step, of both kernels' padding.
pub(crate) const BLOCK: usize = 32;

/// A bf16 unit prism has a kernel for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Intel AMX tiles (`tdpbf16ps`, 16 x 16 x 32 multiply-adds per instruction).
    Amx,
    /// AVX512-BF16 vectors (`vdpbf16ps`, 16 x 2 multiply-adds per instruction).
    Avx512Bf16,
}

impl Kernel {
    /// Whether this CPU (and OS) can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Amx => amx::available(),
            Kernel::Avx512Bf16 => avx512::available(),
        }
    }

    /// The kernels this CPU can run, preferred first.
    pub fn all_available() -> Vec<Kernel> {
        [Kernel::Amx, Kernel::Avx512Bf16]
            .into_iter()
            .filter(|k| k.is_available())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "amx",
            Kernel::Avx512Bf16 => "avx512bf16",
        }
    }
}

/// The bf16 kernel this process uses: AMX where present, else AVX512-BF16, else none;
/// `PRISM_BF16_KERNEL` overrides the choice (checked once).
pub fn kernel() -> Option<Kernel> {
    static CHOICE: OnceLock<Option<Kernel>> = OnceLock::new();
    *CHOICE.get_or_init(|| {
        let best = Kernel::all_available().first().copied();
        match std::env::var("PRISM_BF16_KERNEL").as_deref() {
            Err(_) | Ok("") | Ok("auto") => best,
            Ok("off") | Ok("none") | Ok("f32") => None,
            Ok(name) => match [Kernel::Amx, Kernel::Avx512Bf16]
                .into_iter()
                .find(|k| k.name() == name)
            {
                Some(k) if k.is_available() => Some(k),
                Some(k) => {
                    eprintln!(
                        "note: PRISM_BF16_KERNEL={name}: this CPU has no {} unit; using {}",
                        k.name(),
                        best.map_or("f32", Kernel::name)
                    );
                    best
                }
                None => {
                    eprintln!(
                        "note: PRISM_BF16_KERNEL={name} is not one of amx, avx512bf16, off, \
                         auto; using {}",
                        best.map_or("f32", Kernel::name)
                    );
                    best
                }
            },
        }
    })
}

/// Whether bf16 products run on this machine (some [`kernel`]).
pub fn available() -> bool {
    kernel().is_some()
}

/// What bf16 work runs on here, for notes: "bf16 on AMX", or why it is f32.
pub fn describe() -> String {
    match kernel() {
        Some(Kernel::Amx) => "bf16 on the AMX tile unit".into(),
        Some(Kernel::Avx512Bf16) => "bf16 on AVX512-BF16 (vdpbf16ps)".into(),
        None if std::env::var("PRISM_BF16_KERNEL").is_ok_and(|v| v == "off" || v == "none") => {
            "f32 (PRISM_BF16_KERNEL=off)".into()
        }
        None => "f32: this CPU has neither AMX-BF16 nor AVX512-BF16".into(),
    }
}

/// f32 to bf16, rounding to nearest even (NaN stays NaN).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    // A select rather than an early return, so that loops over it vectorise.
    let rounded = ((b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16) as u16;
    if b & 0x7fff_ffff > 0x7f80_0000 {
        0x7fc0
    } else {
        rounded
    }
}

/// The f32 value of a bf16.
#[inline(always)]
pub fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

crate::multiversion! {
    /// `dst[i] = to_bf16(src[i])`, then zeros to the end of `dst` (an input row padded for the
    /// kernels), compiled for the widest vector unit the CPU has.
    fn bf16_row(src: &[f32], dst: &mut [std::mem::MaybeUninit<u16>]) {
        let (head, tail) = dst.split_at_mut(src.len());
        for (o, &v) in head.iter_mut().zip(src) {
            o.write(to_bf16(v));
        }
        for o in tail {
            o.write(0);
        }
    }
}

/// A row length of at least `n` f32 (or bf16 pairs) whose byte stride is not a multiple of
/// 4 KiB: the 16 rows of a tile at such a stride would all map to the same L1 cache set (a
/// 2048 x 1024 x 256 product ran at 140 instead of ~500 GFLOP/s on AMX).
pub(crate) fn padded_stride(n: usize) -> usize {
    if (n * 4) % 4096 == 0 {
        n + 16
    } else {
        n
    }
}

/// The left operand of a product: `m` rows of `k` features in bf16, padded with zero rows to a
/// multiple of 32 and zero columns to `k_pad` (a multiple of 32), at row stride `lda`.
pub struct Rows {
    data: Vec<u16>,
    m: usize,
    m_pad: usize,
    k_pad: usize,
    lda: usize,
}

impl Rows {
    fn alloc(m: usize, k: usize) -> (usize, usize, usize, Vec<u16>) {
        let m_pad = m.div_ceil(BLOCK) * BLOCK;
        let k_pad = k.div_ceil(BLOCK) * BLOCK;
        let lda = padded_stride(k_pad / 2) * 2;
        (m_pad, k_pad, lda, Vec::with_capacity(m_pad * lda))
    }

    /// `x` (m, k) row-major, rounded to bf16.
    pub fn new(x: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(
            x.len(),
            m * k,
            "input of {} values is not {m} x {k}",
            x.len()
        );
        let (m_pad, k_pad, lda, mut data) = Self::alloc(m, k);
        data.spare_capacity_mut()[..m_pad * lda]
            .par_chunks_mut(lda)
            .enumerate()
            .for_each(|(r, row)| {
                let src = if r < m { &x[r * k..(r + 1) * k] } else { &[] };
                bf16_row(src, row);
            });
        // SAFETY: every row of `lda` values was written in full just above.
        unsafe { data.set_len(m_pad * lda) };
        Self {
            data,
            m,
            m_pad,
            k_pad,
            lda,
        }
    }

    /// The transpose of `x` (m, n) row-major: n rows of m features, rounded to bf16 (the left
    /// operand of a weight gradient `dy^T x`).
    pub fn transposed(x: &[f32], m: usize, n: usize) -> Self {
        assert_eq!(
            x.len(),
            m * n,
            "input of {} values is not {m} x {n}",
            x.len()
        );
        let rows = n;
        let (m_pad, k_pad, lda, mut data) = Self::alloc(rows, m);
        data.resize(m_pad * lda, 0);
        const T: usize = 16;
        // Bands of 16 output rows: each reads 16 contiguous values of every input row.
        data.par_chunks_mut(T * lda)
            .enumerate()
            .for_each(|(band, out)| {
                let j0 = band * T;
                if j0 >= n {
                    return;
                }
                let tj = T.min(n - j0);
                for r in 0..m {
                    let src = &x[r * n + j0..][..tj];
                    for (jj, &v) in src.iter().enumerate() {
                        out[jj * lda + r] = to_bf16(v);
                    }
                }
            });
        Self {
            data,
            m: rows,
            m_pad,
            k_pad,
            lda,
        }
    }
}

/// A right operand (n outputs x k inputs, PyTorch's `Linear` weight layout) packed for the
/// kernels: bf16, `k` and `n` padded to multiples of 32 with zeros, laid out `[k/2][ld][2]`
/// where the row length `ld >= n` avoids strides that are multiples of 4 KiB.
pub struct PackedWeight {
    n: usize,
    k: usize,
    n_pad: usize,
    k_pad: usize,
    ld: usize,
    data: Vec<u16>,
    /// `W^T` packed the same way, for input gradients; built on first use.
    transposed: OnceLock<Arc<PackedWeight>>,
}

impl PackedWeight {
    fn alloc(n: usize, k: usize) -> Self {
        let (n_pad, k_pad) = (n.div_ceil(BLOCK) * BLOCK, k.div_ceil(BLOCK) * BLOCK);
        let ld = padded_stride(n_pad);
        Self {
            n,
            k,
            n_pad,
            k_pad,
            ld,
            data: vec![0u16; k_pad * ld],
            transposed: OnceLock::new(),
        }
    }

    /// Pack `w` (n, k), row-major: output j's inputs are row j.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "weight of {} values is not {n} x {k}",
            w.len()
        );
        let mut p = Self::alloc(n, k);
        let ld = p.ld;
        // Bands of 8 input pairs (16 inputs): each reads 16 contiguous values of every row of w.
        const PAIRS: usize = 8;
        p.data
            .par_chunks_mut(PAIRS * 2 * ld)
            .enumerate()
            .for_each(|(band, out)| {
                let k0 = band * PAIRS * 2;
                if k0 >= k {
                    return;
                }
                let tk = (PAIRS * 2).min(k - k0);
                for j in 0..n {
                    let src = &w[j * k + k0..][..tk];
                    for (i, &v) in src.iter().enumerate() {
                        out[(i / 2) * 2 * ld + 2 * j + i % 2] = to_bf16(v);
                    }
                }
            });
        p
    }

    /// Pack the transpose of `w` (n, k), row-major: k outputs whose inputs are w's columns (the
    /// right operand of `dy W` and, with activations as `w`, of `dy^T x`).
    pub fn pack_transposed(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "weight of {} values is not {n} x {k}",
            w.len()
        );
        let mut p = Self::alloc(k, n);
        let ld = p.ld;
        // Pair q interleaves rows 2q and 2q + 1 of w, both read contiguously.
        p.data
            .par_chunks_mut(2 * ld)
            .enumerate()
            .for_each(|(q, out)| {
                for h in 0..2 {
                    let i = 2 * q + h;
                    if i < n {
                        for (j, &v) in w[i * k..(i + 1) * k].iter().enumerate() {
                            out[2 * j + h] = to_bf16(v);
                        }
                    }
                }
            });
        p
    }

    /// The bf16 value of the weight at output `j`, input `kk`.
    fn value(&self, j: usize, kk: usize) -> u16 {
        self.data[(kk / 2) * 2 * self.ld + 2 * j + kk % 2]
    }

    /// `W^T` (k outputs x n inputs) packed the same way: the input gradient of `x W^T` is
    /// `dy W = dy (W^T)^T`, a product of the same kind. Repacked from the bf16 values (no
    /// second rounding) at the first call, then kept.
    pub fn transposed(&self) -> &Arc<PackedWeight> {
        self.transposed.get_or_init(|| {
            let mut t = Self::alloc(self.k, self.n);
            let ld = t.ld;
            t.data
                .par_chunks_mut(2 * ld)
                .enumerate()
                .for_each(|(q, out)| {
                    for h in 0..2 {
                        let i = 2 * q + h;
                        if i < self.n {
                            for j in 0..self.k {
                                out[2 * j + h] = self.value(i, j);
                            }
                        }
                    }
                });
            Arc::new(t)
        })
    }

    /// Pack a 2-D f32 weight tensor (outputs, inputs).
    pub fn from_tensor(w: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        let v: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Self::pack(&v, n, k))
    }

    pub fn outputs(&self) -> usize {
        self.n
    }

    pub fn inputs(&self) -> usize {
        self.k
    }
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight(bf16, {} x {})", self.n, self.k)
    }
}

/// What to apply to each output block while it is still in cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// Exact (erf) GELU, as BERT's intermediate layer.
    Gelu,
}

/// The padded output of a kernel: rows `0..m_pad`, columns `0..n_pad` at stride `ldc`.
pub(crate) struct Out {
    pub ptr: *mut f32,
    pub ldc: usize,
}

// SAFETY: kernels write disjoint row blocks of the buffer from different threads.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `a` (m, k) times `w` transposed, plus `bias`, then `epilogue`: (m, n) f32, on `kernel`.
///
/// # Panics
/// If `kernel` is not available, or `a` and `w` disagree on `k`.
pub fn product(
    kernel: Kernel,
    a: &Rows,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    assert!(
        kernel.is_available(),
        "{} is not available on this CPU",
        kernel.name()
    );
    assert_eq!(
        a.k_pad, w.k_pad,
        "operands of {} and {} inputs",
        a.k_pad, w.k
    );
    let (m, n, n_pad, m_pad) = (a.m, w.n, w.n_pad, a.m_pad);
    let mut bias_pad = vec![0f32; n_pad];
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias of {} values for {n} outputs", b.len());
        bias_pad[..n].copy_from_slice(b);
    }
    // Straight into the result when no padding is needed; otherwise into a padded buffer.
    let direct = m == m_pad && n == n_pad;
    let ldc = if direct { n } else { padded_stride(n_pad) };
    let mut c: Vec<f32> = Vec::with_capacity(m_pad * ldc);
    let out = Out {
        ptr: c.as_mut_ptr(),
        ldc,
    };
    // SAFETY: the kernel is available (asserted); `a` holds m_pad rows of stride lda with k_pad
    // values, `w` k_pad/2 pairs of rows of stride ld >= n_pad, `bias_pad` n_pad values and `c`
    // room for m_pad rows of stride ldc >= n_pad: the extents the kernels read and write.
    unsafe {
        match kernel {
            Kernel::Amx => amx::gemm(&a.data, a.lda, m_pad, w, &bias_pad, &out, epilogue),
            Kernel::Avx512Bf16 => avx512::gemm(&a.data, a.lda, m_pad, w, &bias_pad, &out, epilogue),
        }
    }
    if direct {
        // SAFETY: the kernel stored every element of the m x n result.
        unsafe { c.set_len(m * n) };
        return c;
    }
    // SAFETY: rows 0..m, columns 0..n of the padded buffer were stored by the kernel; only
    // those are read, through raw pointers, before the buffer is dropped uninitialised.
    let mut res: Vec<f32> = Vec::with_capacity(m * n);
    unsafe {
        for r in 0..m {
            std::ptr::copy_nonoverlapping(
                (out.ptr as *const f32).add(r * ldc),
                res.as_mut_ptr().add(r * n),
                n,
            );
        }
        res.set_len(m * n);
    }
    drop(c);
    res
}

/// `x` (m, k) times `w` transposed, plus `bias`, then `epilogue`: (m, n) f32, on this
/// process's [`kernel`].
///
/// # Panics
/// If no bf16 kernel is available or `x` does not hold `m` rows of the weight's `k` inputs.
pub fn linear_bf16(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    let kernel = kernel().expect("no bf16 unit (AMX-BF16 or AVX512-BF16) on this machine");
    product(kernel, &Rows::new(x, m, w.k), w, bias, epilogue)
}

/// Whether a layer holding a packed weight runs `x` through it: an f32 CPU input on a machine
/// with a bf16 unit. Inputs that track gradients take it too ([`linear_then`]).
pub fn applies_to(x: &Tensor) -> bool {
    available() && x.device().is_cpu() && x.dtype() == DType::F32
}

/// [`linear_bf16`] on tensors: `x` (..., k) -> (..., n); see [`linear_then`].
pub fn linear(
    x: &Tensor,
    w: &Arc<PackedWeight>,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    linear_then(x, w, bias, Epilogue::None)
}

/// [`linear`] followed by `epilogue` (e.g. BERT's intermediate layer and its GELU in one pass).
///
/// When `x` tracks gradients the result does too: its backward pass gives `x` the gradient
/// `dy W`, computed in bf16 against [`PackedWeight::transposed`] (the weight and bias are
/// constants and get none). The epilogue then runs as its own op, whose backward needs the
/// value before it.
pub fn linear_then(
    x: &Tensor,
    w: &Arc<PackedWeight>,
    bias: Option<&Tensor>,
    epilogue: Epilogue,
) -> candle_core::Result<Tensor> {
    let bias: Option<Vec<f32>> = bias
        .map(|b| b.to_dtype(DType::F32)?.to_vec1())
        .transpose()?;
    if !x.track_op() {
        return apply(x, w, bias.as_deref(), epilogue);
    }
    let y = x
        .contiguous()?
        .apply_op1(PackedLinear { w: w.clone(), bias })?;
    match epilogue {
        Epilogue::None => Ok(y),
        Epilogue::Gelu => super::gelu_erf(&y),
    }
}

/// `x W^T + b` in bf16 for an `x` of any leading shape, untracked.
fn apply(
    x: &Tensor,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let (out, shape) = match &*storage {
        candle_core::Storage::Cpu(s) => forward_cpu(s, layout, w, bias, epilogue)?,
        _ => candle_core::bail!("linear: bf16 inference needs a contiguous f32 CPU input"),
    };
    drop(storage);
    Tensor::from_vec(out, shape, x.device())
}

/// The product on a contiguous f32 CPU input: the output values and shape.
fn forward_cpu(
    s: &CpuStorage,
    layout: &Layout,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> candle_core::Result<(Vec<f32>, Shape)> {
    let dims = layout.dims();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("linear: scalar input");
    };
    if k != w.k {
        candle_core::bail!("linear: input has {k} features, the weight expects {}", w.k);
    }
    let m: usize = lead.iter().product();
    let (CpuStorage::F32(v), Some((a, b))) = (s, layout.contiguous_offsets()) else {
        candle_core::bail!("linear: bf16 inference needs a contiguous f32 CPU input");
    };
    let out = linear_bf16(&v[a..b], m, w, bias, epilogue);
    let mut shape = lead.to_vec();
    shape.push(w.n);
    Ok((out, Shape::from(shape)))
}

/// The tracked product with a constant packed weight: forward `x W^T + b`, backward `dy W`.
struct PackedLinear {
    w: Arc<PackedWeight>,
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for PackedLinear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, shape) = forward_cpu(s, l, &self.w, self.bias.as_deref(), Epilogue::None)?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(apply(dy, self.w.transposed(), None, Epilogue::None)?))
    }
}

thread_local! {
    static AUTOCAST: Cell<bool> = const { Cell::new(false) };
}

/// Mixed precision for the ops built on this thread while the guard lives, as
/// `torch.autocast("cpu", dtype=torch.bfloat16)`: the linear layers' products (forward, dx and
/// dW) run in bf16 with f32 accumulation; weights, gradients, optimiser state and every other op
/// stay f32. An op records the choice when it is built, so its backward pass (run after the
/// guard is gone) computes in the precision its forward pass did. Without a bf16 unit the guard
/// changes nothing.
#[must_use = "autocast lasts as long as the guard"]
pub struct Autocast {
    before: bool,
}

/// Start [`Autocast`] on this thread (`enabled = false` ends it for the guard's life).
pub fn autocast(enabled: bool) -> Autocast {
    let before = AUTOCAST.with(|a| a.replace(enabled && available()));
    Autocast { before }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.before));
    }
}

/// Whether [`autocast`] is on for this thread (the state to restore when an op's backward
/// recomputes part of the forward pass, see `recompute`).
pub(crate) fn autocast_enabled() -> bool {
    AUTOCAST.with(Cell::get)
}

/// The kernel an op built now on this thread uses for its products, when under [`autocast`].
pub(crate) fn autocast_kernel() -> Option<Kernel> {
    if AUTOCAST.with(Cell::get) {
        kernel()
    } else {
        None
    }
}

/// `x` (m, k) times `w` (n, k) transposed in bf16: (m, n), both operands rounded now (the
/// forward product of a linear layer under [`autocast`]).
pub(crate) fn xwt(kernel: Kernel, x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let packed = PackedWeight::pack(w, n, k);
    product(kernel, &Rows::new(x, m, k), &packed, None, Epilogue::None)
}

/// dx (m, k) = dy (m, n) W (n, k) and, when `want_w`, dW (n, k) = dy^T x, in bf16 with f32
/// accumulation (the backward products of a linear layer under [`autocast`]).
pub(crate) fn dx_dw(
    kernel: Kernel,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    (m, n, k): (usize, usize, usize),
    want_w: bool,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let wt = PackedWeight::pack_transposed(w, n, k);
    let dx = product(kernel, &Rows::new(dy, m, n), &wt, None, Epilogue::None);
    drop(wt);
    let dw = want_w.then(|| {
        let xt = PackedWeight::pack_transposed(x, m, k);
        product(
            kernel,
            &Rows::transposed(dy, m, n),
            &xt,
            None,
            Epilogue::None,
        )
    });
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf through candle (f64 reference for the GELU epilogue).
    fn libm_erf(x: f64) -> f64 {
        let t = candle_core::Tensor::new(&[x], &candle_core::Device::Cpu).unwrap();
        t.erf().unwrap().to_vec1::<f64>().unwrap()[0]
    }

    fn q(x: f32) -> f64 {
        from_bf16(to_bf16(x)) as f64
    }

    fn kernels() -> Vec<Kernel> {
        let k = Kernel::all_available();
        if k.is_empty() {
            eprintln!("skipped: no bf16 unit (AMX-BF16 or AVX512-BF16) on this machine");
        }
        k
    }

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    /// Every kernel, at sizes that are not multiples of the 32 x 32 block in any dimension, no
    /// inputs at all, a weight in two L2 panels (k = 3072) and several k blocks of the vector
    /// kernel, equals the f64 product of the bf16-rounded operands (plus bias, then GELU).
    #[test]
    fn matches_f64_reference_on_bf16_inputs() {
        for kernel in kernels() {
            for (m, n, k) in [
                (1, 1, 1),
                (37, 45, 70),
                (64, 96, 256),
                (5, 33, 31),
                (3, 5, 0),
                (13, 64, 600),
                (40, 200, 3072),
            ] {
                let x: Vec<f32> = (0..m * k)
                    .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.13)
                    .collect();
                let w: Vec<f32> = (0..n * k)
                    .map(|i| ((i * 5 % 17) as f32 - 8.0) * 0.07)
                    .collect();
                let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
                let packed = PackedWeight::pack(&w, n, k);
                let a = Rows::new(&x, m, k);
                let y = product(kernel, &a, &packed, Some(&b), Epilogue::None);
                let y0 = product(kernel, &a, &packed, None, Epilogue::None);
                let yg = product(kernel, &a, &packed, Some(&b), Epilogue::Gelu);
                for (g, v) in yg.iter().zip(&y) {
                    let want =
                        v * 0.5 * (1.0 + libm_erf(*v as f64 / std::f64::consts::SQRT_2)) as f32;
                    assert!(
                        (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{kernel:?} gelu {g} vs {want}"
                    );
                }
                for r in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k).map(|kk| q(x[r * k + kk]) * q(w[j * k + kk])).sum();
                        let got = y[r * n + j] as f64;
                        assert!(
                            (got - exact - b[j] as f64).abs() < 1e-3 * (1.0 + exact.abs()),
                            "{kernel:?} ({m}, {n}, {k}) at ({r}, {j}): {got} vs {}",
                            exact + b[j] as f64
                        );
                        assert!((y0[r * n + j] as f64 - exact).abs() < 1e-3 * (1.0 + exact.abs()));
                    }
                }
            }
        }
    }

    /// The two kernels compute the same products (both accumulate exact bf16 x bf16 products in
    /// f32; only the order of additions differs).
    #[test]
    fn kernels_agree() {
        let ks = kernels();
        if ks.len() < 2 {
            eprintln!("skipped: this CPU has {} of the two bf16 kernels", ks.len());
            return;
        }
        let (m, n, k) = (100, 130, 777);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.013).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.029).cos() * 0.1).collect();
        let packed = PackedWeight::pack(&w, n, k);
        let a = Rows::new(&x, m, k);
        let y0 = product(ks[0], &a, &packed, None, Epilogue::None);
        let y1 = product(ks[1], &a, &packed, None, Epilogue::None);
        let d = y0
            .iter()
            .zip(&y1)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "kernels differ by {d}");
    }

    #[test]
    fn packings_agree() {
        for (n, k) in [(1, 1), (45, 70), (33, 31), (64, 96), (17, 40)] {
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let packed = PackedWeight::pack(&w, n, k);
            for j in 0..n {
                for kk in 0..k {
                    assert_eq!(packed.value(j, kk), to_bf16(w[j * k + kk]));
                }
            }
            let t = packed.transposed();
            let direct = PackedWeight::pack(&wt, k, n);
            let from_rows = PackedWeight::pack_transposed(&w, n, k);
            assert_eq!((t.n, t.k, t.ld), (direct.n, direct.k, direct.ld));
            assert!(
                t.data == direct.data,
                "({n}, {k}): transposed packing differs"
            );
            assert!(
                from_rows.data == direct.data,
                "({n}, {k}): pack_transposed differs"
            );
            // Built once, then shared.
            assert!(Arc::ptr_eq(t, packed.transposed()));
            let rt = Rows::transposed(&w, n, k);
            let rd = Rows::new(&wt, k, n);
            assert!(
                rt.data == rd.data && rt.lda == rd.lda,
                "({n}, {k}): Rows::transposed"
            );
        }
    }

    /// The training products: dx = dy W and dW = dy^T x on the bf16-rounded operands.
    #[test]
    fn training_products_match_reference() {
        for kernel in kernels() {
            let (m, n, k) = (70, 45, 90);
            let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin() * 0.2).collect();
            let dy: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.05).sin()).collect();
            let y = xwt(kernel, &x, &w, m, n, k);
            let (dx, dw) = dx_dw(kernel, &x, &w, &dy, (m, n, k), true);
            let dw = dw.unwrap();
            let close = |got: f32, want: f64, what: &str| {
                assert!(
                    (got as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "{kernel:?} {what}: {got} vs {want}"
                )
            };
            for r in 0..m {
                for j in 0..n {
                    let want = (0..k).map(|kk| q(x[r * k + kk]) * q(w[j * k + kk])).sum();
                    close(y[r * n + j], want, "y");
                }
                for kk in 0..k {
                    let want = (0..n).map(|j| q(dy[r * n + j]) * q(w[j * k + kk])).sum();
                    close(dx[r * k + kk], want, "dx");
                }
            }
            for j in 0..n {
                for kk in 0..k {
                    let want = (0..m).map(|r| q(dy[r * n + j]) * q(x[r * k + kk])).sum();
                    close(dw[j * k + kk], want, "dW");
                }
            }
        }
    }

    /// Under [`autocast`] the training ops (`linear` with and without bias, `linear_gelu`)
    /// compute forward, dx, dW and db in bf16: every operand gets a gradient, each within bf16
    /// rounding of the f32 op's, and not equal to it (the bf16 path ran); after the guard the
    /// ops are f32 again.
    #[test]
    fn autocast_trains_linear_layers_in_bf16() {
        if !available() {
            eprintln!("skipped: no bf16 unit on this machine");
            return;
        }
        use candle_core::{Device, Var};
        let dev = Device::Cpu;
        let (m, n, k) = (50, 40, 64);
        let x = Var::from_vec(
            (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect(),
            (m, k),
            &dev,
        )
        .unwrap();
        let w = Var::from_vec(
            (0..n * k).map(|i| (i as f32 * 0.37).sin() * 0.2).collect(),
            (n, k),
            &dev,
        )
        .unwrap();
        let b = Var::from_vec((0..n).map(|i| i as f32 * 0.01).collect(), n, &dev).unwrap();
        let c = Tensor::from_vec(
            (0..m * n).map(|i| (i as f32 * 0.05).sin()).collect(),
            (m, n),
            &dev,
        )
        .unwrap();
        type Op = fn(&Tensor, &Tensor, &Tensor) -> candle_core::Result<Tensor>;
        let ops: [(&str, Op); 3] = [
            ("linear", |x, w, b| crate::ops::linear(x, w, Some(b))),
            ("linear-nobias", |x, w, b| {
                crate::ops::linear(x, w, None)? + b.broadcast_as((50, 40))?
            }),
            ("linear-gelu", |x, w, b| {
                crate::ops::linear_gelu(x, w, None, b)
            }),
        ];
        for (name, op) in ops {
            let run = |bf16: bool| {
                let _cast = autocast(bf16);
                let y = op(x.as_tensor(), w.as_tensor(), b.as_tensor()).unwrap();
                let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![y];
                for v in [&x, &w, &b] {
                    out.push(
                        g.get(v.as_tensor())
                            .expect("every operand has a gradient")
                            .clone(),
                    );
                }
                out
            };
            let (f, h) = (run(false), run(true));
            for (i, (f, h)) in f.iter().zip(&h).enumerate() {
                let diff = crate::ops::testing::max_diff(f, h);
                let scale = crate::ops::testing::max_diff(f, &f.zeros_like().unwrap());
                // Sums of ~50 products that cancel: each product's bf16 rounding (2^-9
                // relative) adds up to a few per cent of the largest sum; the exact bf16 values
                // are checked by `training_products_match_reference`.
                assert!(
                    diff < 5e-2 * scale.max(1.0),
                    "{name} output {i}: {diff} (scale {scale})"
                );
                if i != 3 {
                    assert!(diff > 0.0, "{name} output {i}: bf16 path not taken");
                }
            }
            let again = run(false);
            assert_eq!(
                crate::ops::testing::max_diff(&f[0], &again[0]),
                0.0,
                "{name}: f32 after the guard"
            );
        }
    }

    /// The tracked product gives its input the gradient `dy W` (on bf16 values), the bias
    /// through, and GELU's backward when it is the epilogue.
    #[test]
    fn input_gradient_in_bf16() {
        if !available() {
            eprintln!("skipped: no bf16 unit on this machine");
            return;
        }
        use candle_core::{Device, Var};
        let (m, n, k) = (37, 45, 70);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin() * 0.2).collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let packed = Arc::new(PackedWeight::pack(&w, n, k));
        let dev = Device::Cpu;
        let bias = Tensor::new(b.as_slice(), &dev).unwrap();
        let wq: Vec<f32> = w.iter().map(|&v| q(v) as f32).collect();
        let wt = Tensor::from_vec(wq, (n, k), &dev).unwrap();
        for epilogue in [Epilogue::None, Epilogue::Gelu] {
            let xv = Var::from_vec(x.clone(), (m, k), &dev).unwrap();
            let y = linear_then(xv.as_tensor(), &packed, Some(&bias), epilogue).unwrap();
            // Forward as the untracked path (whose GELU is fused into the product).
            let plain =
                linear_then(&xv.as_tensor().detach(), &packed, Some(&bias), epilogue).unwrap();
            let d = (&y - &plain).unwrap().abs().unwrap().max_all().unwrap();
            assert!(d.to_scalar::<f32>().unwrap() < 1e-5, "{epilogue:?} forward");
            // Loss: sum(y * c) for a fixed c, so dy = c.
            let c: Vec<f32> = (0..m * n).map(|i| (i as f32 * 0.05).sin()).collect();
            let c = Tensor::from_vec(c, (m, n), &dev).unwrap();
            let g = (&y * &c).unwrap().sum_all().unwrap().backward().unwrap();
            let got = g.get(xv.as_tensor()).unwrap();
            // Reference: dy (times GELU' at the pre-activation) times W, in f32 on the bf16 W.
            let dy = match epilogue {
                Epilogue::None => c.clone(),
                Epilogue::Gelu => {
                    let pre = linear_then(
                        &xv.as_tensor().detach(),
                        &packed,
                        Some(&bias),
                        Epilogue::None,
                    )
                    .unwrap();
                    let p = Var::from_tensor(&pre).unwrap();
                    let gg = (crate::ops::gelu_erf(p.as_tensor()).unwrap() * &c)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap();
                    gg.get(p.as_tensor()).unwrap().clone()
                }
            };
            let want = dy.matmul(&wt).unwrap();
            let dq: Vec<f32> = dy
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&v| q(v) as f32)
                .collect();
            let want_q = Tensor::from_vec(dq, (m, n), &dev)
                .unwrap()
                .matmul(&wt)
                .unwrap();
            let err = (got - &want_q).unwrap().abs().unwrap().max_all().unwrap();
            let err = err.to_scalar::<f32>().unwrap();
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                err < 1e-4 * scale.max(1.0),
                "{epilogue:?}: {err} (scale {scale})"
            );
        }
    }
}
