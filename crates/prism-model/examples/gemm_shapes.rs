use std::time::Instant;
// dW (n, k) = dy^T (n, m) x (m, k);  dy (m, n), x (m, k)
fn v(variant: u8, m: usize, n: usize, k: usize, dy: &[f32], x: &[f32]) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(n * k);
    unsafe {
        match variant {
            0 => gemm::gemm(
                n,
                k,
                m,
                out.as_mut_ptr(),
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
                gemm::Parallelism::Rayon(2),
            ),
            // transposed problem: dW^T (k, n) = x^T (k, m) dy (m, n), written at dst_rs=1, dst_cs=k
            1 => gemm::gemm(
                k,
                n,
                m,
                out.as_mut_ptr(),
                k as isize,
                1,
                false,
                x.as_ptr(),
                k as isize,
                1,
                dy.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(2),
            ),
            _ => {
                // explicit transpose of dy into (n, m), then row-major lhs
                let mut dyt = vec![0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        *dyt.get_unchecked_mut(j * m + i) = *dy.get_unchecked(i * n + j);
                    }
                }
                gemm::gemm(
                    n,
                    k,
                    m,
                    out.as_mut_ptr(),
                    1,
                    k as isize,
                    false,
                    dyt.as_ptr(),
                    1,
                    m as isize,
                    x.as_ptr(),
                    1,
                    k as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(2),
                )
            }
        }
        out.set_len(n * k);
    }
    out
}
fn main() {
    for (m, n, k) in [
        (2048, 768, 256),
        (2048, 1024, 256),
        (2048, 256, 1024),
        (2048, 256, 256),
    ] {
        let dy: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32 * 0.1).collect();
        let x: Vec<f32> = (0..m * k).map(|i| (i % 5) as f32 * 0.1).collect();
        let r0 = v(0, m, n, k, &dy, &x);
        let f = 2.0 * (m * n * k) as f64 / 1e9;
        let mut line = format!("dW n{n} k{k} m{m}:");
        for var in 0..3u8 {
            assert!(v(var, m, n, k, &dy, &x)
                .iter()
                .zip(&r0)
                .all(|(a, b)| (a - b).abs() <= 1e-3 * b.abs().max(1.0)));
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..10 {
                    std::hint::black_box(v(var, m, n, k, &dy, &x));
                }
                best = best.min(t.elapsed().as_secs_f64() / 10.0);
            }
            line += &format!("  v{var} {:.0}", f / best);
        }
        println!("{line}");
    }
}
