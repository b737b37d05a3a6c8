//! Times the bf16 kernels against the f32 linear op at transformer shapes:
//! `cargo run --release -p prism-model --example bf16_gemm`.
use candle_core::{Device, Tensor};
use prism_model::ops::bf16::{self, Kernel, PackedWeight, Rows};
use std::time::Instant;

fn time<F: FnMut()>(mut f: F) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    for (m, n, k) in [
        (2048, 768, 768),
        (2048, 3072, 768),
        (2048, 768, 3072),
        (2048, 256, 256),
        (2048, 1024, 256),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.013).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.029).cos()).collect();
        let flops = 2.0 * (m * n * k) as f64;
        let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).unwrap();
        let t = time(|| {
            prism_model::ops::linear(&xt, &wt, None).unwrap();
        });
        print!("{m}x{n}x{k}: f32 {:.0}", flops / t / 1e9);
        let packed = PackedWeight::pack(&w, n, k);
        let a = Rows::new(&x, m, k);
        for kern in Kernel::all_available() {
            let t = time(|| {
                bf16::product(kern, &a, &packed, None, bf16::Epilogue::None);
            });
            print!("  {} {:.0}", kern.name(), flops / t / 1e9);
        }
        let t = time(|| {
            let _ = Rows::new(&x, m, k);
        });
        print!("  rows {:.2} ms", t * 1e3);
        let t = time(|| {
            let _ = PackedWeight::pack(&w, n, k);
        });
        println!("  pack {:.2} ms GFLOP/s", t * 1e3);
    }
}
