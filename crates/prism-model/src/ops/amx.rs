//! bf16 matrix multiplication on Intel AMX (Advanced Matrix Extensions), for inference.
//!
//! `y = x W^T + b` with `x` rounded to bf16 on the fly, `W` packed once into bf16 in the layout
//! the tile unit reads (pairs of consecutive input features interleaved per output, "VNNI"), and
//! f32 accumulation. Each tile multiply (`tdpbf16ps`) does 16 x 16 x 32 multiply-adds; a task
//! computes 32 x 32 output blocks from four accumulator tiles. The weights are constants (models
//! built from [`crate::nn::ParamStore::frozen_bf16`]): training stays in f32. An input that
//! tracks gradients (an explanation's embeddings) gets its gradient `dy W` on the tile unit too,
//! from `W^T` packed at the first backward pass.
//!
//! The `gemm` crate has no AMX kernels and Rust's AMX intrinsics are unstable, so the five tile
//! instructions are written as inline assembly. [`available`] checks CPUID and asks Linux for
//! the tile-data permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), once.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// Output rows and columns per block, and input features per tile step.
const BLOCK: usize = 32;

/// Bytes of packed weight a task keeps hot while its row blocks pass over them.
const L2_PANEL_BYTES: usize = 1 << 20;

/// Whether this CPU and OS let the process use AMX-BF16 (checked once).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID leaf 7, sub-leaf 0: EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    if std::arch::x86_64::__cpuid(0).eax < 7 {
        return false;
    }
    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
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

crate::multiversion! {
    /// `dst[i] = to_bf16(src[i])`, then zeros to the end of `dst` (an input row padded for the
    /// tile unit), compiled for the widest vector unit the CPU has.
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

/// A weight (n outputs x k inputs, PyTorch's `Linear` layout) packed for the tile unit:
/// bf16, `k` and `n` padded to multiples of 32 with zeros, laid out `[k/2][ld][2]` where the
/// row length `ld >= n` avoids strides that are multiples of 4 KiB.
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

/// A row length of at least `n` f32 (or bf16 pairs) whose byte stride is not a multiple of
/// 4 KiB: the 16 rows of a tile at such a stride would all map to the same L1 cache set (a
/// 2048 x 1024 x 256 product ran at 140 instead of ~500 GFLOP/s).
fn padded_stride(n: usize) -> usize {
    if (n * 4) % 4096 == 0 {
        n + 16
    } else {
        n
    }
}

impl PackedWeight {
    /// Pack `w` (n, k), row-major.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(
            w.len(),
            n * k,
            "weight of {} values is not {n} x {k}",
            w.len()
        );
        Self::pack_with(n, k, |j, kk| to_bf16(w[j * k + kk]))
    }

    /// Pack the n x k weight whose bf16 value at (output `j`, input `kk`) is `value(j, kk)`.
    fn pack_with(n: usize, k: usize, value: impl Fn(usize, usize) -> u16 + Sync) -> Self {
        let (n_pad, k_pad) = (n.div_ceil(BLOCK) * BLOCK, k.div_ceil(BLOCK) * BLOCK);
        let ld = padded_stride(n_pad);
        let mut data = vec![0u16; k_pad * ld];
        data.par_chunks_mut(2 * ld)
            .enumerate()
            .for_each(|(pair, row)| {
                for j in 0..n {
                    for h in 0..2 {
                        let kk = 2 * pair + h;
                        if kk < k {
                            row[2 * j + h] = value(j, kk);
                        }
                    }
                }
            });
        Self {
            n,
            k,
            n_pad,
            k_pad,
            ld,
            data,
            transposed: OnceLock::new(),
        }
    }

    /// The bf16 value of the weight at output `j`, input `kk`.
    fn value(&self, j: usize, kk: usize) -> u16 {
        self.data[(kk / 2) * 2 * self.ld + 2 * j + kk % 2]
    }

    /// `W^T` (k outputs x n inputs) packed for the tile unit: the input gradient of
    /// `x W^T` is `dy W = dy (W^T)^T`, a product of the same kind. Repacked from the bf16
    /// values (no second rounding) at the first call, then kept.
    pub fn transposed(&self) -> &Arc<PackedWeight> {
        self.transposed
            .get_or_init(|| Arc::new(Self::pack_with(self.k, self.n, |j, kk| self.value(kk, j))))
    }

    /// Pack a 2-D f32 weight tensor (outputs, inputs).
    pub fn from_tensor(w: &Tensor) -> candle_core::Result<Self> {
        let (n, k) = w.dims2()?;
        let v: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(Self::pack(&v, n, k))
    }
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight(bf16, {} x {})", self.n, self.k)
    }
}

/// Whether a layer holding a packed weight runs `x` through it: an f32 CPU input. Inputs that
/// track gradients take it too, with the input gradient on the tile unit ([`linear_then`]).
pub fn applies_to(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
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
/// `dy W`, computed on the tile unit against [`PackedWeight::transposed`] (the weight and bias
/// are constants and get none). The epilogue then runs as its own op, whose backward needs the
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
        .apply_op1(TileLinear { w: w.clone(), bias })?;
    match epilogue {
        Epilogue::None => Ok(y),
        Epilogue::Gelu => super::gelu_erf(&y),
    }
}

/// `x W^T + b` on the tile unit for an `x` of any leading shape, untracked.
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

/// The tracked product: forward `x W^T + b`, backward `dy W` (both on the tile unit).
struct TileLinear {
    w: Arc<PackedWeight>,
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for TileLinear {
    fn name(&self) -> &'static str {
        "amx-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, shape) = forward_cpu(s, l, &self.w, self.bias.as_deref(), Epilogue::None)?;
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(apply(dy, self.w.transposed(), None, Epilogue::None)?))
    }
}

#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Eight tiles of 16 rows x 64 bytes: tmm0-3 accumulate a 32 x 32 f32 block, tmm4-5 hold 32
/// rows x 32 bf16 of x, tmm6-7 hold 16 input pairs x 32 outputs of W.
const CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// One 32 x 32 output block: `c` (row stride `ldc` bytes) := the 32 values at `bias` in every
/// row + `a` (32 rows of bf16, stride `lda` bytes) times the packed panel at `b` (stride `ldb`
/// bytes per input pair), over `steps` steps of 32 inputs.
///
/// # Safety
/// AMX must be [`available`] and the tile configuration loaded on this thread; the pointers
/// must address the extents described.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    a: *const u8,
    lda: usize,
    b: *const u8,
    ldb: usize,
    c: *mut u8,
    ldc: usize,
    steps: usize,
    bias: *const u8,
) {
    use std::arch::asm;
    // Accumulators start at the bias: a tile load with row stride 0 repeats one row of 16
    // values in all 16 rows.
    let bias1 = bias.add(64);
    asm!(
        "tileloadd tmm0, [{b0} + {zero}*1]",
        "tileloadd tmm1, [{b1} + {zero}*1]",
        "tileloadd tmm2, [{b0} + {zero}*1]",
        "tileloadd tmm3, [{b1} + {zero}*1]",
        b0 = in(reg) bias,
        b1 = in(reg) bias1,
        zero = in(reg) 0usize,
        options(nostack, readonly)
    );
    for s in 0..steps {
        let a0 = a.add(s * 64);
        let a1 = a0.add(16 * lda);
        let b0 = b.add(s * 16 * ldb);
        let b1 = b0.add(64);
        asm!(
            "tileloadd tmm4, [{a0} + {lda}*1]",
            "tileloadd tmm5, [{a1} + {lda}*1]",
            "tileloadd tmm6, [{b0} + {ldb}*1]",
            "tileloadd tmm7, [{b1} + {ldb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0,
            a1 = in(reg) a1,
            b0 = in(reg) b0,
            b1 = in(reg) b1,
            lda = in(reg) lda,
            ldb = in(reg) ldb,
            options(nostack, readonly)
        );
    }
    let c1 = c.add(64);
    let c2 = c.add(16 * ldc);
    let c3 = c2.add(64);
    asm!(
        "tilestored [{c0} + {ldc}*1], tmm0",
        "tilestored [{c1} + {ldc}*1], tmm1",
        "tilestored [{c2} + {ldc}*1], tmm2",
        "tilestored [{c3} + {ldc}*1], tmm3",
        c0 = in(reg) c,
        c1 = in(reg) c1,
        c2 = in(reg) c2,
        c3 = in(reg) c3,
        ldc = in(reg) ldc,
        options(nostack)
    );
}

/// What to apply to each output block while it is still in cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None,
    /// Exact (erf) GELU, as BERT's intermediate layer.
    Gelu,
}

/// `x` (m, k) times `w` transposed, plus `bias`, then `epilogue`: (m, n) f32, on the tile
/// unit. The bias is where the accumulators start and the epilogue runs on each 32-row block
/// of a weight panel right after it is stored, so neither costs a separate pass over the
/// output.
///
/// # Panics
/// If AMX is not [`available`] or `x` does not hold `m` rows of the weight's `k` inputs.
pub fn linear_bf16(
    x: &[f32],
    m: usize,
    w: &PackedWeight,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Vec<f32> {
    assert!(available(), "AMX-BF16 is not available on this machine");
    let (n, k, n_pad, k_pad) = (w.n, w.k, w.n_pad, w.k_pad);
    assert_eq!(
        x.len(),
        m * k,
        "input of {} values is not {m} x {k}",
        x.len()
    );
    let mut bias_pad = vec![0f32; n_pad];
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias of {} values for {n} outputs", b.len());
        bias_pad[..n].copy_from_slice(b);
    }
    let m_pad = m.div_ceil(BLOCK) * BLOCK;
    let lda = padded_stride(k_pad / 2) * 2;
    // x in bf16, padded with zero rows and columns; every element is written once.
    let mut a: Vec<u16> = Vec::with_capacity(m_pad * lda);
    a.spare_capacity_mut()[..m_pad * lda]
        .par_chunks_mut(lda)
        .enumerate()
        .for_each(|(r, row)| {
            let src = if r < m { &x[r * k..(r + 1) * k] } else { &[] };
            bf16_row(src, row);
        });
    // SAFETY: every row of `lda` values was written in full just above (k <= lda values, then
    // zeros).
    unsafe { a.set_len(m_pad * lda) };
    // Straight into the result when no padding is needed; otherwise into a padded buffer.
    let direct = m == m_pad && n == n_pad;
    let ldc = if direct { n } else { padded_stride(n_pad) };
    let mut c: Vec<f32> = Vec::with_capacity(m_pad * ldc);
    let c_ptr = c.as_mut_ptr() as usize;
    let row_blocks = m_pad / BLOCK;
    // Output columns per W panel: ~1 MiB of packed W, half of a core's L2.
    let panel = (L2_PANEL_BYTES / (k_pad * 2).max(1) / BLOCK * BLOCK).max(BLOCK);
    let per_task = row_blocks
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1);
    (0..row_blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AMX is available (asserted above); the tile configuration is loaded on
            // this thread before use and released after. Task `task` writes only its own row
            // blocks of `c` (m_pad rows of stride ldc >= n_pad, allocated above) and applies
            // the epilogue to values it has just stored; `a`, `w.data` and `bias_pad` hold the
            // padded extents the blocks read.
            unsafe {
                std::arch::asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
                let c_base = c_ptr as *mut f32;
                let rows = task * per_task..((task + 1) * per_task).min(row_blocks);
                // Column panels of W that stay in L2 while every row block of the task runs
                // through them (W itself is up to 4.7 MiB at base size and was streamed from
                // memory once per row block).
                for p0 in (0..n_pad).step_by(panel) {
                    let p1 = (p0 + panel).min(n_pad);
                    for rb in rows.clone() {
                        for jb in p0 / BLOCK..p1 / BLOCK {
                            let c_block = c_base.add(rb * BLOCK * ldc + jb * BLOCK);
                            block(
                                a.as_ptr().add(rb * BLOCK * lda) as *const u8,
                                lda * 2,
                                w.data.as_ptr().add(jb * BLOCK * 2) as *const u8,
                                w.ld * 4,
                                c_block as *mut u8,
                                ldc * 4,
                                k_pad / BLOCK,
                                bias_pad.as_ptr().add(jb * BLOCK) as *const u8,
                            );
                        }
                        // The 32 x panel block just stored is still in cache.
                        if epilogue == Epilogue::Gelu {
                            for r in 0..BLOCK {
                                let row = c_base.add((rb * BLOCK + r) * ldc + p0);
                                super::gelu::gelu_in_place(std::slice::from_raw_parts_mut(
                                    row,
                                    p1 - p0,
                                ));
                            }
                        }
                    }
                }
                std::arch::asm!("tilerelease", options(nostack));
            }
        });
    if direct {
        // SAFETY: the tasks stored every 32 x 32 block of the m x n result.
        unsafe { c.set_len(m * n) };
        return c;
    }
    // SAFETY: rows 0..m, columns 0..n of the padded buffer were stored by the tasks; only
    // those are read, through raw pointers, before the buffer is dropped uninitialised.
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    unsafe {
        for r in 0..m {
            std::ptr::copy_nonoverlapping(
                (c_ptr as *const f32).add(r * ldc),
                out.as_mut_ptr().add(r * n),
                n,
            );
        }
        out.set_len(m * n);
    }
    drop(c);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf through candle (f64 reference for the GELU epilogue).
    fn libm_erf(x: f64) -> f64 {
        let t = candle_core::Tensor::new(&[x], &candle_core::Device::Cpu).unwrap();
        t.erf().unwrap().to_vec1::<f64>().unwrap()[0]
    }

    fn bf16_value(x: f32) -> f32 {
        f32::from_bits((to_bf16(x) as u32) << 16)
    }

    #[test]
    fn rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
    }

    #[test]
    fn matches_f32_reference_on_bf16_inputs() {
        if !available() {
            eprintln!("skipped: no AMX-BF16 on this machine");
            return;
        }
        // Sizes that are not multiples of the 32 x 32 block in any dimension, no inputs at all,
        // and (k = 3072) a weight in two L2 panels.
        for (m, n, k) in [
            (1, 1, 1),
            (37, 45, 70),
            (64, 96, 256),
            (5, 33, 31),
            (3, 5, 0),
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
            let y = linear_bf16(&x, m, &packed, Some(&b), Epilogue::None);
            let y0 = linear_bf16(&x, m, &packed, None, Epilogue::None);
            let yg = linear_bf16(&x, m, &packed, Some(&b), Epilogue::Gelu);
            for (g, v) in yg.iter().zip(&y) {
                let want = v * 0.5 * (1.0 + libm_erf(*v as f64 / std::f64::consts::SQRT_2)) as f32;
                assert!(
                    (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "gelu {g} vs {want}"
                );
            }
            for r in 0..m {
                for j in 0..n {
                    let exact: f64 = (0..k)
                        .map(|kk| {
                            bf16_value(x[r * k + kk]) as f64 * bf16_value(w[j * k + kk]) as f64
                        })
                        .sum();
                    let got = y[r * n + j] as f64;
                    assert!(
                        (got - exact - b[j] as f64).abs() < 1e-3 * (1.0 + exact.abs()),
                        "({m}, {n}, {k}) at ({r}, {j}): {got} vs {}",
                        exact + b[j] as f64
                    );
                    assert!((y0[r * n + j] as f64 - exact).abs() < 1e-3 * (1.0 + exact.abs()));
                }
            }
        }
    }

    #[test]
    fn transposed_packs_w_transposed_exactly() {
        for (n, k) in [(1, 1), (45, 70), (33, 31), (64, 96)] {
            let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let packed = PackedWeight::pack(&w, n, k);
            let t = packed.transposed();
            let direct = PackedWeight::pack(&wt, k, n);
            assert_eq!((t.n, t.k, t.ld), (direct.n, direct.k, direct.ld));
            assert!(
                t.data == direct.data,
                "({n}, {k}): transposed packing differs"
            );
            // Built once, then shared.
            assert!(Arc::ptr_eq(t, packed.transposed()));
        }
    }

    /// The tracked product gives its input the gradient `dy W` (on bf16 values), the bias
    /// through, and GELU's backward when it is the epilogue.
    #[test]
    fn input_gradient_on_the_tile_unit() {
        if !available() {
            eprintln!("skipped: no AMX-BF16 on this machine");
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
        let wq: Vec<f32> = w.iter().map(|&v| bf16_value(v)).collect();
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
                .map(|&v| bf16_value(v))
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
