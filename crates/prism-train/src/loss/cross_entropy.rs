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
