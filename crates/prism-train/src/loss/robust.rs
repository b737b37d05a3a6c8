//! Classification losses, each the batch mean of a per-example loss of logits (N, K) and class
//! ids (N):
//! - label smoothing (Szegedy et al. 2016), as `torch.nn.functional.cross_entropy(label_smoothing=e)`:
//!   `(1 - e) * (-log p_y) + e * mean_k(-log p_k)`;
//! - focal loss (Lin et al. 2017): `-alpha_y (1 - p_y)^gamma log p_y`;
//! - generalized cross-entropy (Zhang & Sabuncu 2018): `(1 - p_y^q) / q`, between CE (q -> 0)
//!   and MAE (q = 1);
//! - symmetric cross-entropy (Wang et al. 2019): `alpha * CE + beta * RCE` with the reverse
//!   cross-entropy `RCE = -sum_k p_k log y_k = -A (1 - p_y)`, log 0 clipped to `A = -4`.

use crate::error::{Error, Result};
use crate::loss::log_softmax;
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

/// Which loss a classification task trains with (`[task.loss]` in the TOML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LossConfig {
    #[default]
    CrossEntropy,
    LabelSmoothing {
        #[serde(default = "d_eps")]
        epsilon: f64,
    },
    Focal {
        #[serde(default = "d_gamma")]
        gamma: f64,
        /// Per-class weights (default: none).
        #[serde(default)]
        alpha: Option<Vec<f64>>,
    },
    Gce {
        #[serde(default = "d_q")]
        q: f64,
    },
    Sce {
        #[serde(default = "d_sce_alpha")]
        alpha: f64,
        #[serde(default = "d_one")]
        beta: f64,
    },
}

fn d_eps() -> f64 {
    0.1
}
fn d_gamma() -> f64 {
    2.0
}
fn d_q() -> f64 {
    0.7
}
fn d_sce_alpha() -> f64 {
    0.1
}
fn d_one() -> f64 {
    1.0
}

impl LossConfig {
    pub fn validate(&self, n_classes: usize) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        match self {
            LossConfig::LabelSmoothing { epsilon } if !(0.0..1.0).contains(epsilon) => bad(
                format!("label smoothing epsilon {epsilon} must be in [0, 1)"),
            ),
            LossConfig::Focal { gamma, .. } if *gamma < 0.0 => {
                bad(format!("focal gamma {gamma} must be >= 0"))
            }
            LossConfig::Focal { alpha: Some(a), .. } if a.len() != n_classes => bad(format!(
                "focal alpha has {} weights for {n_classes} classes",
                a.len()
            )),
            LossConfig::Gce { q } if !(*q > 0.0 && *q <= 1.0) => {
                bad(format!("GCE q {q} must be in (0, 1]"))
            }
            LossConfig::Sce { alpha, beta } if *alpha < 0.0 || *beta < 0.0 => {
                bad("SCE alpha and beta must be >= 0".into())
            }
            _ => Ok(()),
        }
    }

    /// The batch loss of logits (N, K) against class ids (N).
    pub fn loss(&self, logits: &Tensor, y: &Tensor) -> Result<Tensor> {
        match self {
            LossConfig::CrossEntropy => crate::loss::cross_entropy(logits, y),
            LossConfig::LabelSmoothing { epsilon } => label_smoothed_ce(logits, y, *epsilon),
            LossConfig::Focal { gamma, alpha } => focal(logits, y, *gamma, alpha.as_deref()),
            LossConfig::Gce { q } => generalized_ce(logits, y, *q),
            LossConfig::Sce { alpha, beta } => symmetric_ce(logits, y, *alpha, *beta),
        }
    }
}

/// log p_y for each row: (N).
fn picked(logp: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok(logp
        .gather(&y.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?)
}

pub fn label_smoothed_ce(logits: &Tensor, y: &Tensor, epsilon: f64) -> Result<Tensor> {
    let logp = log_softmax(logits)?;
    let nll = (picked(&logp, y)? * -1.0)?; // (N)
    let uniform = (logp.mean(D::Minus1)? * -1.0)?; // (N)
    Ok(((nll * (1.0 - epsilon))? + (uniform * epsilon)?)?.mean_all()?)
}

pub fn focal(logits: &Tensor, y: &Tensor, gamma: f64, alpha: Option<&[f64]>) -> Result<Tensor> {
    let logp_y = picked(&log_softmax(logits)?, y)?; // (N)
    let p_y = logp_y.exp()?;
    let modulating = (1.0 - p_y)?.clamp(0.0, 1.0)?.powf(gamma)?;
    let mut l = ((modulating * logp_y)? * -1.0)?;
    if let Some(a) = alpha {
        let w = Tensor::from_vec(
            a.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            a.len(),
            logits.device(),
        )?;
        l = (l * w.gather(&y.to_dtype(DType::U32)?, 0)?)?;
    }
    Ok(l.mean_all()?)
}

pub fn generalized_ce(logits: &Tensor, y: &Tensor, q: f64) -> Result<Tensor> {
    let logp_y = picked(&log_softmax(logits)?, y)?;
    // p_y^q = exp(q log p_y)
    let pq = (logp_y * q)?.exp()?;
    Ok(((1.0 - pq)? / q)?.mean_all()?)
}

/// log 0 is clipped to this in the reverse cross-entropy (the paper's A).
pub const SCE_LOG_ZERO: f64 = -4.0;

pub fn symmetric_ce(logits: &Tensor, y: &Tensor, alpha: f64, beta: f64) -> Result<Tensor> {
    let logp_y = picked(&log_softmax(logits)?, y)?;
    let ce = (&logp_y * -1.0)?;
    let rce = ((1.0 - logp_y.exp()?)? * -SCE_LOG_ZERO)?;
    Ok(((ce * alpha)? + (rce * beta)?)?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[derive(serde::Deserialize)]
    struct Fixture {
        logits: Vec<Vec<f32>>,
        labels: Vec<u32>,
        cases: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        config: LossConfig,
        loss: f32,
        grad: Vec<Vec<f32>>,
    }

    fn fixture() -> Fixture {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/losses_expected.json");
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    #[test]
    fn losses_and_gradients_match_pytorch() {
        let f = fixture();
        let dev = Device::Cpu;
        let y = Tensor::new(f.labels.as_slice(), &dev).unwrap();
        for c in &f.cases {
            let x = Var::from_tensor(&Tensor::new(f.logits.clone(), &dev).unwrap()).unwrap();
            let l = c.config.loss(x.as_tensor(), &y).unwrap();
            let lv: f32 = l.to_scalar().unwrap();
            assert!(
                (lv - c.loss).abs() < 1e-5,
                "{:?}: loss {lv} vs torch {}",
                c.config,
                c.loss
            );
            let g: Vec<Vec<f32>> = l
                .backward()
                .unwrap()
                .get(x.as_tensor())
                .unwrap()
                .to_vec2()
                .unwrap();
            for (gr, wr) in g.iter().zip(&c.grad) {
                for (a, b) in gr.iter().zip(wr) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "{:?}: grad {a} vs torch {b}",
                        c.config
                    );
                }
            }
        }
        assert!(f.cases.len() >= 5);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let f = fixture();
        let dev = Device::Cpu;
        let y = Tensor::new(f.labels.as_slice(), &dev).unwrap();
        for c in &f.cases {
            let base: Vec<Vec<f32>> = f.logits.clone();
            let x = Var::from_tensor(&Tensor::new(base.clone(), &dev).unwrap()).unwrap();
            let g: Vec<Vec<f32>> = c
                .config
                .loss(x.as_tensor(), &y)
                .unwrap()
                .backward()
                .unwrap()
                .get(x.as_tensor())
                .unwrap()
                .to_vec2()
                .unwrap();
            let eval = |v: &Vec<Vec<f32>>| -> f64 {
                let t = Tensor::new(v.clone(), &dev)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap();
                let l = c.config.loss(&t.to_dtype(DType::F32).unwrap(), &y).unwrap();
                l.to_scalar::<f32>().unwrap() as f64
            };
            let h = 1e-2f32;
            for (i, j) in [(0usize, 0usize), (1, 2), (3, 4), (5, 1)] {
                let mut p = base.clone();
                p[i][j] += h;
                let mut m = base.clone();
                m[i][j] -= h;
                let num = (eval(&p) - eval(&m)) / (2.0 * h as f64);
                assert!(
                    (num - g[i][j] as f64).abs() < 2e-3,
                    "{:?} [{i},{j}]: analytic {} vs numeric {num}",
                    c.config,
                    g[i][j]
                );
            }
        }
    }

    #[test]
    fn configs_are_checked() {
        assert!(LossConfig::Gce { q: 0.0 }.validate(2).is_err());
        assert!(LossConfig::Focal {
            gamma: 2.0,
            alpha: Some(vec![1.0])
        }
        .validate(2)
        .unwrap_err()
        .to_string()
        .contains("1 weights for 2 classes"));
        let c: LossConfig = toml::from_str("kind = \"sce\"\nalpha = 0.5").unwrap();
        assert_eq!(
            c,
            LossConfig::Sce {
                alpha: 0.5,
                beta: 1.0
            }
        );
    }
}
