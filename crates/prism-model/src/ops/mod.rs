//! Fused CPU kernels that candle only ships without a backward pass (DESIGN.md, "Known traps").
//!
//! Each op is a candle `CustomOp` with a multi-threaded `cpu_fwd` and a `bwd` that is itself one
//! fused kernel. On non-CPU devices the public functions fall back to compositions of candle
//! primitives, which all have a backward pass, so training works everywhere and is fast on CPU.

mod attention;
pub mod bf16;
mod cross_entropy;
mod disentangled;
mod dropout;
mod embedding;
mod gelu;
mod layer_norm;
mod linear;
mod rotary;
pub mod simd;
mod softmax;

pub use attention::{attention, attention_queries, attention_windowed, KEEP_PROBS_BYTES};
pub use cross_entropy::cross_entropy_rows;
pub use disentangled::disentangled_scores;
pub use dropout::{dropout, dropout_add};
pub use embedding::embedding;
pub use gelu::gelu_erf;
pub use layer_norm::layer_norm;
pub use linear::{linear, linear_gelu, linear_with, TransposedWeight};
pub use rotary::rotary_qkv;
pub use softmax::{masked_softmax, softmax_last_dim};

use candle_core::{CpuStorage, Layout, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Below this many elements the kernels run on the calling thread: rayon's fork/join costs more
/// than it saves on tiny tensors.
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 14;

/// `e^x` in f32 without a libm call, so that loops over rows vectorise: `x = n ln 2 + r` with
/// |r| <= ln 2 / 2, a degree-6 Taylor polynomial for `e^r` (relative error below 2e-7), and
/// `2^n` built in the exponent bits. Inputs below -87.3 (where f32 underflows) give exactly 0,
/// so masked attention logits get exactly zero probability as with `exp`.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Round to nearest with the 1.5 * 2^23 trick (no SSE4.1 `round` needed).
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.3, 88.7);
    let shifted = xc * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // `shifted`'s low mantissa bits hold n as an integer (offset by MAGIC's bits): integer
    // arithmetic only, no float-to-int conversion (whose saturating semantics do not vectorise).
    let n_int = shifted.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// The f32 contents of `storage` as laid out by `layout`, which must be contiguous.
pub(crate) fn contiguous_f32<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        other => {
            use candle_core::backend::BackendStorage;
            candle_core::bail!(
                "{op}: only f32 is supported on CPU, got {:?}",
                other.dtype()
            )
        }
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// A new buffer of `n` values whose rows of `width` are produced by `f(row_index, row)`, without
/// zero-filling it first (for kernel outputs that are overwritten anyway; zeroing them cost ~5 %
/// of a training step). `f` gets the row as `MaybeUninit` slots and writes them with
/// `MaybeUninit::write`.
///
/// # Safety
/// `f` must initialise every element of each row it is given.
pub(crate) unsafe fn rows_filled<F>(n: usize, width: usize, f: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
{
    let mut v = Vec::<f32>::with_capacity(n);
    for_each_row(&mut v.spare_capacity_mut()[..n], width, f);
    // SAFETY: by the caller's contract every one of the n values was initialised.
    v.set_len(n);
    v
}

/// A row of `MaybeUninit` values that has been initialised in full, as plain values.
///
/// # Safety
/// Every element of `row` must be initialised.
#[inline(always)]
pub(crate) unsafe fn assume_init_mut(row: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: MaybeUninit<f32> has f32's layout, and the caller guarantees initialisation.
    std::slice::from_raw_parts_mut(row.as_mut_ptr() as *mut f32, row.len())
}

/// Apply `f(row_index, in_rows..., out_row)` to every row of width `width`, in parallel when the
/// work is large enough.
pub(crate) fn for_each_row<T, F>(out: &mut [T], width: usize, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    if width == 0 {
        return;
    }
    if out.len() >= PAR_MIN_ELEMS {
        // Hand each task a block of rows so that per-task overhead is amortised.
        let rows = out.len() / width;
        let threads = rayon::current_num_threads().max(1);
        let rows_per_task = rows.div_ceil(threads * 4).max(1);
        out.par_chunks_mut(rows_per_task * width)
            .enumerate()
            .for_each(|(task, block)| {
                for (i, row) in block.chunks_mut(width).enumerate() {
                    f(task * rows_per_task + i, row);
                }
            });
    } else {
        for (i, row) in out.chunks_mut(width).enumerate() {
            f(i, row);
        }
    }
}

#[cfg(test)]
mod exp_tests {
    #[test]
    fn exp_f32_matches_libm() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (super::exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(super::exp_f32(f32::MIN), 0.0);
        assert_eq!(super::exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp_f32(0.0), 1.0);
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Central finite differences for checking custom backward passes.
    use candle_core::{Device, Tensor, Var};

    /// Largest absolute element-wise difference of two tensors of the same shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Compare the analytic gradient of `sum(f(x) * w)` with central differences on a few
    /// coordinates of `x`, in f64 arithmetic over an f32 op.
    pub fn check_grad<F>(x: &Tensor, f: F, tol: f64)
    where
        F: Fn(&Tensor) -> candle_core::Result<Tensor>,
    {
        let dev = Device::Cpu;
        let var = Var::from_tensor(x).unwrap();
        let y = f(var.as_tensor()).unwrap();
        let w = Tensor::randn(0f32, 1f32, y.shape(), &dev).unwrap();
        let loss = (y * &w).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<f32> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let eval = |v: &[f32]| -> f64 {
            let t = Tensor::from_slice(v, x.shape(), &dev).unwrap();
            let y = f(&t).unwrap();
            let p: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            let wv: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
            p.iter()
                .zip(wv.iter())
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum()
        };
        let h = 1e-2f32;
        let n = base.len();
        let step = (n / 17).max(1);
        for i in (0..n).step_by(step) {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            let numeric = (eval(&plus) - eval(&minus)) / (2.0 * h as f64);
            let analytic = g[i] as f64;
            let err = (numeric - analytic).abs() / (1.0 + numeric.abs());
            assert!(
                err < tol,
                "coordinate {i}: analytic {analytic} vs numeric {numeric}"
            );
        }
    }
}
