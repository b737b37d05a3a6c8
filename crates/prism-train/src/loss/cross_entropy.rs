//! The cross-entropy family every task and objective trains with.

use crate::error::Result;
use candle_core::{DType, Tensor, D};

/// A label id for the loss to skip (sub-words after the first, specials, unmasked tokens).
pub const IGNORE: i64 = -100;

/// Mean cross-entropy of logits (N, K) against class ids (N), as one fused op
/// ([`prism_model::ops::cross_entropy_rows`]).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t: Vec<i64> = targets.to_dtype(DType::I64)?.to_vec1()?;
    if let Some(&bad) = t.iter().find(|&&x| x < 0) {
        return Err(
            candle_core::Error::Msg(format!("cross-entropy: class id {bad} is negative")).into(),
        );
    }
    Ok(prism_model::ops::cross_entropy_rows(logits, &t)?.mean_all()?)
}

/// Cross-entropy over rows whose target is not [`IGNORE`], averaged over those rows.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t: Vec<i64> = targets.to_dtype(DType::I64)?.to_vec1()?;
    if let Some(&bad) = t.iter().find(|&&x| x < 0 && x != IGNORE) {
        return Err(
            candle_core::Error::Msg(format!("cross-entropy: class id {bad} is negative")).into(),
        );
    }
    let count = t.iter().filter(|&&x| x != IGNORE).count().max(1);
    let rows = prism_model::ops::cross_entropy_rows(logits, &t)?; // (N), 0 where ignored
    Ok((rows.sum_all()? * (1.0 / count as f64))?)
}

/// Mean binary cross-entropy of logits against 0/1 targets of the same shape, over every
/// element, as torch's `BCEWithLogitsLoss()` (transformers' multi-label loss): the stable form
/// max(x, 0) − x·y + log(1 + e^−|x|), whose gradient is σ(x) − y.
pub fn binary_cross_entropy_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let y = targets.to_dtype(logits.dtype())?;
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    let per = ((logits.relu()? - (logits * &y)?)? + softplus_neg_abs)?;
    Ok(per.mean_all()?)
}

/// log σ(x) = −softplus(−x), stable for any x, from ops that all have a backward pass.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    // −softplus(−x) = min(x, 0) − log(1 + e^−|x|)
    let min0 = x.minimum(0.0)?;
    Ok((min0 - (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// log-softmax over the last dimension, built from ops that all have a backward pass.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn binary_cross_entropy_matches_the_definition_and_its_gradient_is_sigmoid_minus_y() {
        let dev = Device::Cpu;
        let x = [[3.0f32, -2.0, 0.0], [-40.0, 40.0, 0.5]];
        let y = [[1.0f32, 0.0, 1.0], [1.0, 0.0, 0.0]];
        let logits = candle_core::Var::new(&x, &dev).unwrap();
        let targets = Tensor::new(&y, &dev).unwrap();
        let l = binary_cross_entropy_with_logits(logits.as_tensor(), &targets).unwrap();
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let mut want = 0.0;
        for i in 0..2 {
            for j in 0..3 {
                let (v, t) = (x[i][j] as f64, y[i][j] as f64);
                // log(σ) of ±40 underflows in the naive form: use the exact tail log σ(v) ≈ v.
                let log_p = if v < -30.0 { v } else { sig(v).ln() };
                let log_q = if v > 30.0 { -v } else { (1.0 - sig(v)).ln() };
                want -= t * log_p + (1.0 - t) * log_q;
            }
        }
        want /= 6.0;
        let got = l.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let g = l.backward().unwrap();
        let g: Vec<Vec<f32>> = g.get(logits.as_tensor()).unwrap().to_vec2().unwrap();
        for i in 0..2 {
            for j in 0..3 {
                let want = (sig(x[i][j] as f64) - y[i][j] as f64) / 6.0;
                assert!(
                    (g[i][j] as f64 - want).abs() < 1e-6,
                    "{i},{j}: {} vs {want}",
                    g[i][j]
                );
            }
        }
        let ls: Vec<Vec<f32>> = log_sigmoid(&Tensor::new(&x, &dev).unwrap())
            .unwrap()
            .to_vec2()
            .unwrap();
        assert!((ls[1][0] + 40.0).abs() < 1e-4 && ls[1][1].abs() < 1e-6);
        assert!((ls[0][0] as f64 - sig(3.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn cross_entropy_matches_a_hand_computation() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, 0.0, 3.0]], &dev).unwrap();
        let y = Tensor::new(&[1u32, 0], &dev).unwrap();
        let l: f32 = cross_entropy(&logits, &y).unwrap().to_scalar().unwrap();
        let lse1 = (1f32.exp() + 2f32.exp() + 0.5f32.exp()).ln();
        let lse2 = (1.0 + 1.0 + 3f32.exp()).ln();
        let want = ((lse1 - 2.0) + (lse2 - 0.0)) / 2.0;
        assert!((l - want).abs() < 1e-6);
        let m: f32 = masked_cross_entropy(&logits, &Tensor::new(&[1i64, -100], &dev).unwrap())
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!((m - (lse1 - 2.0)).abs() < 1e-6);
    }
}
