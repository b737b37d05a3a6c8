//! Small convex problems over the probability simplex {w : w_i >= 0, sum w = 1}, in the Gram
//! matrix G of the task gradients (G_ij = g_i . g_j): the min-norm point of MGDA and the dual
//! of CAGrad. K (tasks per update) is small, so each iteration is O(K^2).

/// Euclidean projection of `v` onto the simplex (Duchi et al. 2008, sort-based).
pub fn project(v: &[f64]) -> Vec<f64> {
    let mut u = v.to_vec();
    u.sort_by(|a, b| b.total_cmp(a));
    let (mut acc, mut theta) = (0.0, 0.0);
    for (i, &x) in u.iter().enumerate() {
        acc += x;
        let t = (acc - 1.0) / (i + 1) as f64;
        if x - t > 0.0 {
            theta = t;
        }
    }
    v.iter().map(|&x| (x - theta).max(0.0)).collect()
}

/// G w.
pub fn mul(g: &[Vec<f64>], w: &[f64]) -> Vec<f64> {
    g.iter()
        .map(|row| row.iter().zip(w).map(|(a, b)| a * b).sum())
        .collect()
}

/// w^T G v.
pub fn quad(g: &[Vec<f64>], w: &[f64], v: &[f64]) -> f64 {
    mul(g, v).iter().zip(w).map(|(a, b)| a * b).sum()
}

/// The point of the simplex minimising w^T G w: the min-norm element of the convex hull of the
/// gradients (Sener & Koltun 2018, their Frank-Wolfe solver with exact line search), to a
/// duality gap of `1e-12` times the largest squared norm or 10,000 iterations.
pub fn min_norm(g: &[Vec<f64>]) -> Vec<f64> {
    let k = g.len();
    if k == 1 {
        return vec![1.0];
    }
    let scale = (0..k).map(|i| g[i][i]).fold(0.0, f64::max).max(1e-300);
    // Start from the best pair's closed-form solution, as their solver does.
    let mut w = vec![1.0 / k as f64; k];
    let mut best = quad(g, &w, &w);
    for i in 0..k {
        for j in i + 1..k {
            let (a, b) = two(g[i][i], g[i][j], g[j][j]);
            let mut v = vec![0.0; k];
            v[i] = a;
            v[j] = b;
            let q = quad(g, &v, &v);
            if q < best {
                best = q;
                w = v;
            }
        }
    }
    for _ in 0..10_000 {
        let grad = mul(g, &w); // half the gradient of w^T G w
        let t = (0..k)
            .min_by(|&a, &b| grad[a].total_cmp(&grad[b]))
            .expect("k >= 1");
        let gap: f64 = w.iter().zip(&grad).map(|(a, b)| a * b).sum::<f64>() - grad[t];
        if gap <= 1e-12 * scale {
            break;
        }
        // Line search between w and the vertex e_t: min over gamma of |(1-gamma) u + gamma g_t|^2.
        let wgw = quad(g, &w, &w);
        let (wgt, gtt) = (grad[t], g[t][t]);
        let denom = wgw - 2.0 * wgt + gtt;
        let gamma = if denom <= 0.0 {
            1.0
        } else {
            ((wgw - wgt) / denom).clamp(0.0, 1.0)
        };
        for (i, x) in w.iter_mut().enumerate() {
            *x *= 1.0 - gamma;
            if i == t {
                *x += gamma;
            }
        }
    }
    w
}

/// min over gamma in [0, 1] of |gamma a + (1 - gamma) b|^2 for |a|^2 = aa, a.b = ab, |b|^2 = bb:
/// (gamma, 1 - gamma) (Sener & Koltun, Algorithm 1).
pub fn two(aa: f64, ab: f64, bb: f64) -> (f64, f64) {
    let gamma = if ab >= aa {
        1.0
    } else if ab >= bb {
        0.0
    } else {
        ((bb - ab) / (aa + bb - 2.0 * ab)).clamp(0.0, 1.0)
    };
    (gamma, 1.0 - gamma)
}

/// Minimise a convex, differentiable `f` over the simplex by projected gradient descent with
/// Armijo backtracking, from the centre, until a step moves no coordinate by more than
/// `1e-12` or 20,000 iterations. Returns the minimiser.
pub fn minimise(
    k: usize,
    f: impl Fn(&[f64]) -> f64,
    grad: impl Fn(&[f64]) -> Vec<f64>,
) -> Vec<f64> {
    let mut w = vec![1.0 / k as f64; k];
    let mut fw = f(&w);
    let mut step = 1.0;
    for _ in 0..20_000 {
        let d = grad(&w);
        let mut moved = false;
        loop {
            let cand: Vec<f64> = project(
                &w.iter()
                    .zip(&d)
                    .map(|(x, g)| x - step * g)
                    .collect::<Vec<_>>(),
            );
            let delta: f64 = cand
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            if delta <= 1e-12 {
                break;
            }
            let fc = f(&cand);
            // Sufficient decrease for a projected step: f(c) <= f(w) + d.(c - w) + |c - w|^2 / (2 step).
            let lin: f64 = d
                .iter()
                .zip(cand.iter().zip(&w))
                .map(|(g, (c, x))| g * (c - x))
                .sum();
            let sq: f64 = cand.iter().zip(&w).map(|(c, x)| (c - x) * (c - x)).sum();
            if fc <= fw + lin + sq / (2.0 * step) + 1e-15 * fw.abs() {
                w = cand;
                fw = fc;
                moved = true;
                step *= 1.5;
                break;
            }
            step *= 0.5;
            if step < 1e-30 {
                break;
            }
        }
        if !moved {
            break;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gram(v: &[Vec<f64>]) -> Vec<Vec<f64>> {
        v.iter()
            .map(|a| {
                v.iter()
                    .map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn projection_lands_on_the_simplex_and_keeps_points_already_there() {
        let p = project(&[0.9, 0.8, -3.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12 && p.iter().all(|&x| x >= 0.0));
        assert!((p[0] - 0.55).abs() < 1e-12 && (p[1] - 0.45).abs() < 1e-12 && p[2] == 0.0);
        let q = project(&[0.2, 0.3, 0.5]);
        assert!(q
            .iter()
            .zip([0.2, 0.3, 0.5])
            .all(|(a, b)| (a - b).abs() < 1e-12));
    }

    /// The min-norm point against the two-gradient closed form and against a fine grid over
    /// the 3-simplex.
    #[test]
    fn min_norm_matches_the_closed_form_and_a_grid() {
        let g = gram(&[vec![1.0, 0.0], vec![-0.5, 1.0]]);
        let w = min_norm(&g);
        let (a, b) = two(g[0][0], g[0][1], g[1][1]);
        assert!((w[0] - a).abs() < 1e-9 && (w[1] - b).abs() < 1e-9, "{w:?}");
        let vs = vec![
            vec![2.0, 0.1, -1.0],
            vec![-1.0, 1.5, 0.3],
            vec![0.2, -0.7, 1.1],
        ];
        let g = gram(&vs);
        let w = min_norm(&g);
        let q = quad(&g, &w, &w);
        let n = 400;
        let mut best = f64::INFINITY;
        for i in 0..=n {
            for j in 0..=n - i {
                let v = [
                    i as f64 / n as f64,
                    j as f64 / n as f64,
                    (n - i - j) as f64 / n as f64,
                ];
                best = best.min(quad(&g, &v, &v));
            }
        }
        assert!(q <= best + 1e-9, "solver {q} vs grid {best}");
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn projected_descent_finds_a_quadratic_minimum() {
        // min (w0 - 0.7)^2 + (w1 - 0.6)^2 + w2^2 on the simplex: (0.55, 0.45, 0).
        let t = [0.7, 0.6, 0.0];
        let w = minimise(
            3,
            |w| w.iter().zip(&t).map(|(a, b)| (a - b) * (a - b)).sum(),
            |w| w.iter().zip(&t).map(|(a, b)| 2.0 * (a - b)).collect(),
        );
        assert!(
            (w[0] - 0.55).abs() < 1e-7 && (w[1] - 0.45).abs() < 1e-7 && w[2].abs() < 1e-7,
            "{w:?}"
        );
    }
}
