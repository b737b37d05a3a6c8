//! The AVX512-BF16 kernel: `vdpbf16ps` multiplies 16 pairs of bf16 and adds each pair's sum to
//! one of 16 f32 accumulators, twice the multiply-adds of an f32 FMA per instruction. It reads
//! the packed weight's `[k/2][ld][2]` layout as is: one 64-byte load is 32 outputs' values of
//! one input pair, and the input pair of a row is one 32-bit broadcast.
//!
//! Blocking (GotoBLAS's, for a 48 KiB L1 and 1-2 MiB L2): a micro-kernel keeps a 12 row x 32
//! output block in 24 zmm accumulators over a block of 128 input pairs; the row block's 6 KiB
//! of inputs stay in L1 while it passes along a column panel of the weight (128 pairs x up to
//! 1024 outputs, 512 KiB) held in L2; partial sums go back to the output between input blocks.

use super::{Epilogue, Out, PackedWeight};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Rows per micro-kernel (2 accumulators each; 24 of the 32 zmm registers).
const MR: usize = 12;
/// Input pairs per block.
const KC: usize = 128;
/// Output columns per panel of the weight kept in L2 (a multiple of 32).
const PANEL: usize = 1024;

/// Whether this CPU has AVX512-BF16 (with AVX-512 F, which its 512-bit form needs).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// `c` := `a` (rows x k_pad bf16, stride `lda`) times `w` transposed plus `bias`, then
/// `epilogue`, for `rows` rows.
///
/// # Safety
/// AVX512-BF16 must be [`available`]; `a` must hold `rows` rows of stride `lda` with `w.k_pad`
/// values, `bias` `w.n_pad` values, and `c` room for `rows` rows of stride `c.ldc >= w.n_pad`.
pub(super) unsafe fn gemm(
    a: &[u16],
    lda: usize,
    rows: usize,
    w: &PackedWeight,
    bias: &[f32],
    c: &Out,
    epilogue: Epilogue,
) {
    let (n_pad, pairs, ldc) = (w.n_pad, w.k_pad / 2, c.ldc);
    let micro_blocks = rows.div_ceil(MR);
    let per_task = micro_blocks
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1);
    (0..micro_blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            let r_begin = task * per_task * MR;
            let r_end = ((task + 1) * per_task * MR).min(rows);
            for p0 in (0..n_pad).step_by(PANEL) {
                let p1 = (p0 + PANEL).min(n_pad);
                if pairs == 0 {
                    // No inputs: the output is the bias.
                    for r in r_begin..r_end {
                        let row = std::slice::from_raw_parts_mut(c.ptr.add(r * ldc + p0), p1 - p0);
                        row.copy_from_slice(&bias[p0..p1]);
                    }
                }
                for k0 in (0..pairs).step_by(KC) {
                    let kc = KC.min(pairs - k0);
                    for r0 in (r_begin..r_end).step_by(MR) {
                        let mr = MR.min(r_end - r0);
                        for j0 in (p0..p1).step_by(32) {
                            let init = (k0 == 0).then(|| bias.as_ptr().add(j0));
                            // SAFETY: rows r0..r0 + mr of `a` from input pair k0 on, pairs
                            // k0..k0 + kc of w's columns j0..j0 + 32 and the same block of `c`
                            // lie inside the extents of the caller's contract; this task alone
                            // writes rows r_begin..r_end of `c`.
                            micro(
                                mr,
                                a.as_ptr().add(r0 * lda + 2 * k0),
                                lda,
                                w.data.as_ptr().add(k0 * 2 * w.ld + 2 * j0),
                                2 * w.ld,
                                c.ptr.add(r0 * ldc + j0),
                                ldc,
                                kc,
                                init,
                            );
                        }
                    }
                }
                if epilogue == Epilogue::Gelu {
                    for r in r_begin..r_end {
                        crate::ops::gelu::gelu_in_place(std::slice::from_raw_parts_mut(
                            c.ptr.add(r * ldc + p0),
                            p1 - p0,
                        ));
                    }
                }
            }
        });
}

/// The micro-kernel for `mr` (1..=12) rows, dispatched to a version whose row count is a
/// constant (so its accumulators live in registers).
#[allow(clippy::too_many_arguments)]
unsafe fn micro(
    mr: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    kc: usize,
    init: Option<*const f32>,
) {
    macro_rules! go {
        ($($r:literal)*) => {
            match mr {
                $($r => kernel::<$r>(a, lda, b, ldb, c, ldc, kc, init),)*
                _ => unreachable!("micro-kernel of {mr} rows"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// `c[r][0..32]` (+)= sum over pairs p < kc of a's pair p of row r times b's pair p, for
/// `R` rows; the accumulators start at `init` (the bias) or at what `c` holds.
///
/// # Safety
/// AVX512-BF16 must be available; `a` must hold `R` rows of stride `lda` with `2 kc` values,
/// `b` `kc` rows of stride `ldb` with 64 values, `c` `R` rows of stride `ldc` with 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    a: *const u16,
    lda: usize,
    b: *const u16,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    kc: usize,
    init: Option<*const f32>,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    match init {
        Some(bias) => {
            let (b0, b1) = (_mm512_loadu_ps(bias), _mm512_loadu_ps(bias.add(16)));
            for row in acc.iter_mut() {
                *row = [b0, b1];
            }
        }
        None => {
            for (r, row) in acc.iter_mut().enumerate() {
                let cr = c.add(r * ldc);
                *row = [_mm512_loadu_ps(cr), _mm512_loadu_ps(cr.add(16))];
            }
        }
    }
    for p in 0..kc {
        let bp = b.add(p * ldb);
        let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp as *const _));
        let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(32) as *const _));
        for (r, row) in acc.iter_mut().enumerate() {
            let pair = (a.add(r * lda + 2 * p) as *const i32).read_unaligned();
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
            row[0] = _mm512_dpbf16_ps(row[0], x, w0);
            row[1] = _mm512_dpbf16_ps(row[1], x, w1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        let cr = c.add(r * ldc);
        _mm512_storeu_ps(cr, row[0]);
        _mm512_storeu_ps(cr.add(16), row[1]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const R: usize>(
    _a: *const u16,
    _lda: usize,
    _b: *const u16,
    _ldb: usize,
    _c: *mut f32,
    _ldc: usize,
    _kc: usize,
    _init: Option<*const f32>,
) {
    unreachable!("AVX512-BF16 is x86-64 only")
}
