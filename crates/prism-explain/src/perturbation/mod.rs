//! Model-agnostic methods that only call the forward pass, in batches: occlusion, word
//! ablation, LIME and KernelSHAP. Removed tokens are replaced by [MASK] (or the pad token when there is none);
//! special tokens are never removed.

mod ablation;
mod kernel_shap;
mod lime;
mod occlusion;

pub use ablation::WordAblation;
pub use kernel_shap::{shapley_kernel_weight, KernelShap};
pub use lime::Lime;
pub use occlusion::Occlusion;

/// Solve the weighted least-squares problem `min sum_i w_i (y_i - b - z_i . c)^2 + alpha |c|^2`
/// (intercept `b` unpenalised) by the normal equations; returns `(b, c)`.
pub fn weighted_ridge(z: &[Vec<f64>], y: &[f64], w: &[f64], alpha: f64) -> Option<(f64, Vec<f64>)> {
    let d = z.first()?.len();
    let n = d + 1;
    // Design [1, z]; A = X^T W X + diag(0, alpha...), rhs = X^T W y.
    let mut a = vec![vec![0.0; n]; n];
    let mut rhs = vec![0.0; n];
    for ((zi, &yi), &wi) in z.iter().zip(y).zip(w) {
        let row: Vec<f64> = std::iter::once(1.0).chain(zi.iter().copied()).collect();
        for p in 0..n {
            rhs[p] += wi * row[p] * yi;
            for q in 0..n {
                a[p][q] += wi * row[p] * row[q];
            }
        }
    }
    for (p, row) in a.iter_mut().enumerate().skip(1) {
        row[p] += alpha;
    }
    let sol = solve(a, rhs)?;
    Some((sol[0], sol[1..].to_vec()))
}

/// Gaussian elimination with partial pivoting; `None` when singular.
pub fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[piv][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, piv);
        b.swap(col, piv);
        for r in col + 1..n {
            let f = a[r][col] / a[col][col];
            if f != 0.0 {
                for c in col..n {
                    a[r][c] -= f * a[col][c];
                }
                b[r] -= f * b[col];
            }
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}
