//! Run-time selection of the vector instruction set for prism's own kernels.
//!
//! The binary is built for the x86-64 baseline (SSE2) so that it runs on any x86-64 machine;
//! without help every element-wise loop (layer norm, GELU, softmax, dropout, AdamW) would be
//! compiled to 4-wide SSE. [`multiversion!`](crate::multiversion) compiles a kernel body three
//! times, for AVX-512, for AVX2 + FMA and for the baseline, and picks one per call from what the
//! CPU reports (checked once). The GEMMs need none of this: the `gemm` crate dispatches itself.
//!
//! The reductions below keep 16 independent partial sums so that they vectorise: a plain
//! `iter().sum()` is one serial chain of dependent additions, which the compiler may not
//! reorder.

use std::sync::atomic::{AtomicU8, Ordering};

/// The widest instruction set this CPU offers among the ones kernels are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Baseline = 1,
    Avx2 = 2,
    Avx512 = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The instruction set the kernels use on this machine (set `PRISM_SIMD=baseline|avx2` to force a
/// narrower one, e.g. to compare).
#[inline]
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::Baseline,
        2 => Level::Avx2,
        3 => Level::Avx512,
        _ => detect(),
    }
}

#[cold]
fn detect() -> Level {
    #[allow(unused_mut)]
    let mut level = Level::Baseline;
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            level = Level::Avx2;
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                level = Level::Avx512;
            }
        }
    }
    level = match std::env::var("PRISM_SIMD").as_deref() {
        Ok("baseline") => Level::Baseline,
        Ok("avx2") if level == Level::Avx512 => Level::Avx2,
        _ => level,
    };
    LEVEL.store(level as u8, Ordering::Relaxed);
    level
}

/// Defines a function whose body is compiled for AVX-512, AVX2 + FMA and the baseline, and
/// dispatched on [`level`]. Arguments must be plain values or references (no `impl Trait`).
///
/// ```ignore
/// multiversion! {
///     /// Doc comment.
///     pub(crate) fn scale(x: &mut [f32], s: f32) { for v in x { *v *= s } }
/// }
/// ```
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[inline]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match $crate::ops::simd::level() {
                    // SAFETY: `level` reports these features only when the CPU has them.
                    $crate::ops::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::ops::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::ops::simd::Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// Force the level the kernels use (tests: every path must give the same numbers).
#[cfg(test)]
pub(crate) fn force_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// The levels this CPU can run, narrowest first.
#[cfg(test)]
pub(crate) fn supported_levels() -> Vec<Level> {
    LEVEL.store(0, Ordering::Relaxed);
    let best = level();
    [Level::Baseline, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|l| *l as u8 <= best as u8)
        .collect()
}

const LANES: usize = 16;

/// Sum of `x`, in 16 interleaved partial sums.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product of `a` and `b` (the shorter length), in 16 interleaved partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of `(x - c)^2`, in 16 interleaved partial sums.
#[inline(always)]
pub fn sum_sq_dev(x: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - c) * (v - c)).sum();
    for ch in chunks {
        for l in 0..LANES {
            let d = ch[l] - c;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Largest element of `x` (-inf for an empty slice); NaNs are ignored as by `f32::max`.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for l in 0..LANES {
            acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::multiversion! {
        /// A kernel for the test: the sum through every path.
        fn sum_kernel(x: &[f32]) -> f32 { sum(x) }
    }

    #[test]
    fn reductions_match_serial_ones() {
        for n in [0usize, 1, 15, 16, 17, 100, 257] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.25)
                .collect();
            let y: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.5).collect();
            let s: f32 = x.iter().sum();
            assert!((sum(&x) - s).abs() < 1e-4, "sum {n}");
            assert!((sum_kernel(&x) - s).abs() < 1e-4, "dispatched sum {n}");
            let d: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
            assert!((dot(&x, &y) - d).abs() < 1e-4, "dot {n}");
            let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), m, "max {n}");
            let v: f32 = x.iter().map(|a| (a - 0.3) * (a - 0.3)).sum();
            assert!((sum_sq_dev(&x, 0.3) - v).abs() < 1e-3, "sum_sq_dev {n}");
        }
        assert!(level() as u8 >= Level::Baseline as u8);
    }

    /// Every instruction-set path of the fused kernels gives the same results: the baseline and
    /// AVX2 paths are never taken on an AVX-512 machine otherwise.
    #[test]
    fn every_dispatch_level_gives_the_same_kernels() {
        use candle_core::{Device, Tensor, Var};
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (37, 96), &dev).unwrap()).unwrap();
        let g = Tensor::randn(1f32, 0.1, 96, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 96, &dev).unwrap();
        let mask = Tensor::zeros((1, 96), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (37, 96), &dev).unwrap();
        let run = || {
            let y = crate::ops::layer_norm(x.as_tensor(), &g, &b, 1e-12).unwrap();
            let y = crate::ops::gelu_erf(&y).unwrap();
            let y = crate::ops::masked_softmax(&y, &mask, 0.5).unwrap();
            let y = crate::ops::dropout(&y, 0.1, 7).unwrap();
            let loss = (&y * &w).unwrap().sum_all().unwrap();
            let grad = loss.backward().unwrap().get(x.as_tensor()).unwrap().clone();
            (y, grad)
        };
        let levels = supported_levels();
        let (y0, g0) = {
            force_level(Level::Baseline);
            run()
        };
        for l in levels {
            force_level(l);
            let (y, g) = run();
            assert!(
                crate::ops::testing::max_diff(&y, &y0) < 1e-5,
                "{l:?} forward"
            );
            assert!(
                crate::ops::testing::max_diff(&g, &g0) < 1e-4,
                "{l:?} backward"
            );
        }
        LEVEL.store(0, Ordering::Relaxed);
    }
}
