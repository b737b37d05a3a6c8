//! The AMX (Advanced Matrix Extensions) kernel: each tile multiply (`tdpbf16ps`) does
//! 16 x 16 x 32 multiply-adds; a task computes 32 x 32 output blocks from four accumulator
//! tiles, over column panels of the packed weight that stay in L2.
//!
//! The `gemm` crate has no AMX kernels and Rust's AMX intrinsics are unstable, so the five tile
//! instructions are written as inline assembly. [`available`] checks CPUID and asks Linux for
//! the tile-data permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), once.

use super::{Epilogue, Out, PackedWeight, BLOCK};
use rayon::prelude::*;
use std::sync::OnceLock;

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

/// `c` := `a` (rows x k_pad bf16, stride `lda`) times `w` transposed plus `bias`, then
/// `epilogue`, for `rows` (a multiple of 32) rows.
///
/// # Safety
/// AMX must be [`available`]; `a` must hold `rows` rows of stride `lda` with `w.k_pad` values,
/// `bias` `w.n_pad` values, and `c` room for `rows` rows of stride `c.ldc >= w.n_pad`.
pub(super) unsafe fn gemm(
    a: &[u16],
    lda: usize,
    rows: usize,
    w: &PackedWeight,
    bias: &[f32],
    c: &Out,
    epilogue: Epilogue,
) {
    let (n_pad, k_pad, ldc) = (w.n_pad, w.k_pad, c.ldc);
    let row_blocks = rows / BLOCK;
    // Output columns per W panel: ~1 MiB of packed W, half of a core's L2.
    let panel = (L2_PANEL_BYTES / (k_pad * 2).max(1) / BLOCK * BLOCK).max(BLOCK);
    let per_task = row_blocks
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1);
    (0..row_blocks.div_ceil(per_task))
        .into_par_iter()
        .for_each(|task| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AMX is available (the caller's contract); the tile configuration is
            // loaded on this thread before use and released after. Task `task` writes only its
            // own row blocks of `c` and applies the epilogue to values it has just stored; `a`,
            // `w.data` and `bias` hold the padded extents the blocks read.
            unsafe {
                std::arch::asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
                let c_base = c.ptr;
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
                                bias.as_ptr().add(jb * BLOCK) as *const u8,
                            );
                        }
                        // The 32 x panel block just stored is still in cache.
                        if epilogue == Epilogue::Gelu {
                            for r in 0..BLOCK {
                                let row = c_base.add((rb * BLOCK + r) * ldc + p0);
                                crate::ops::gelu::gelu_in_place(std::slice::from_raw_parts_mut(
                                    row,
                                    p1 - p0,
                                ));
                            }
                        }
                    }
                }
                std::arch::asm!("tilerelease", options(nostack));
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (task, a, lda, w, bias, c, epilogue, per_task);
        });
}
