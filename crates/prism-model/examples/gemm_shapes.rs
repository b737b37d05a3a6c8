use prism_model::ops::amx;
use std::time::Instant;
fn main() {
    println!("amx available: {}", amx::available());
    for (m, n, k) in [
        (2048, 768, 256),
        (2048, 256, 256),
        (2048, 1024, 256),
        (2048, 256, 1024),
        (2048, 2048, 2048),
    ] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let b = vec![0.5f32; n];
        let p = amx::PackedWeight::pack(&w, n, k);
        let f = 2.0 * (m * n * k) as f64 / 1e9;
        let reps = (1e10 / (2.0 * (m * n * k) as f64)).max(3.0) as usize;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(amx::linear_bf16(&x, m, &p, Some(&b)));
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        println!("m{m} n{n} k{k}: {:.0} GFLOP/s", f / best);
    }
}
