//! Faithfulness of attributions, by deleting the tokens they rank highest:
//! comprehensiveness and sufficiency (ERASER, DeYoung et al. 2020) as AOPC over the top
//! 1/5/10/20/50% of tokens, and deletion/insertion curves with their area under the curve
//! (Petsiuk et al. 2018). Tokens are removed from the sequence (not masked); special tokens stay.
//!
//! A target at a token position (a tag, a QA answer start or end) is tracked, not replaced:
//! the target token itself is never removed, and in every reduced input the target is the same
//! token at its new position (the count of kept tokens before it, plus the left padding of
//! XLNet's batches). Deletion, not [MASK] replacement, is kept for these targets too so that
//! the scores mean the same for every target kind (ERASER removes tokens, and masking would
//! put inputs the model never saw in training into every curve).

use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Result};
use serde::Serialize;

/// ERASER's bins: fractions of the (non-special) tokens.
pub const BINS: [f64; 5] = [0.01, 0.05, 0.10, 0.20, 0.50];
/// Points of the deletion/insertion curves (fractions removed/inserted).
pub const CURVE_STEPS: usize = 10;

#[derive(Clone, Debug, Serialize, Default)]
pub struct Faithfulness {
    /// Mean over bins of F(x) - F(x without the top k%). Higher is more faithful.
    pub comprehensiveness: f64,
    /// Mean over bins of F(x) - F(only the top k%). Lower is more faithful.
    pub sufficiency: f64,
    /// Area under F as the top tokens are deleted one tenth at a time. Lower is better.
    pub deletion_auc: f64,
    /// Area under F as the top tokens are inserted into an empty input. Higher is better.
    pub insertion_auc: f64,
}

/// Token positions eligible for removal, most important first: not special tokens, and not
/// the target's own token.
fn ranking(a: &Attributions, x: &ExplainInput, target: &Target) -> Vec<usize> {
    let mut feats: Vec<usize> = ExplainModel::features(x)
        .into_iter()
        .filter(|&j| target.position() != Some(j))
        .collect();
    feats.sort_by(|&i, &j| a.scores[j].total_cmp(&a.scores[i]));
    feats
}

/// A reduced input: its ids and type ids, and where the target's token went.
struct Row {
    ids: Vec<u32>,
    types: Vec<u32>,
    /// The target's token position in this row (position targets only).
    target_at: Option<usize>,
}

/// The input with only `keep` (plus special tokens and the target's token) kept.
fn subsequence(x: &ExplainInput, keep: &[bool], target: &Target) -> Row {
    let mut row = Row {
        ids: Vec::new(),
        types: Vec::new(),
        target_at: None,
    };
    for j in 0..x.enc.ids.len() {
        let is_target = target.position() == Some(j);
        if keep[j] || x.enc.special_tokens_mask[j] == 1 || is_target {
            if is_target {
                row.target_at = Some(row.ids.len());
            }
            row.ids.push(x.enc.ids[j]);
            row.types.push(x.enc.type_ids[j]);
        }
    }
    row
}

fn auc(ys: &[f64]) -> f64 {
    if ys.len() < 2 {
        return ys.first().copied().unwrap_or(0.0);
    }
    let h = 1.0 / (ys.len() - 1) as f64;
    ys.windows(2).map(|w| 0.5 * (w[0] + w[1]) * h).sum()
}

/// Faithfulness of one attribution of `x` for `target`.
pub fn evaluate(
    m: &ExplainModel,
    x: &ExplainInput,
    target: &Target,
    a: &Attributions,
    batch_size: usize,
) -> Result<Faithfulness> {
    let order = ranking(a, x, target);
    let n = order.len();
    let t = x.enc.ids.len();
    let top = |k: usize| -> Vec<bool> {
        let mut v = vec![false; t];
        for &j in order.iter().take(k) {
            v[j] = true;
        }
        v
    };
    let mut rows: Vec<Row> = vec![subsequence(x, &vec![true; t], target)];
    let ks: Vec<usize> = BINS
        .iter()
        .map(|b| ((b * n as f64).ceil() as usize).clamp(1, n.max(1)))
        .collect();
    for &k in &ks {
        let keep_top = top(k);
        let without: Vec<bool> = (0..t).map(|j| !keep_top[j]).collect();
        rows.push(subsequence(x, &without, target));
        rows.push(subsequence(x, &keep_top, target));
    }
    let curve_ks: Vec<usize> = (0..=CURVE_STEPS)
        .map(|i| (i * n).div_ceil(CURVE_STEPS))
        .collect();
    for &k in &curve_ks {
        let keep_top = top(k);
        rows.push(subsequence(
            x,
            &(0..t).map(|j| !keep_top[j]).collect::<Vec<_>>(),
            target,
        ));
        rows.push(subsequence(x, &keep_top, target));
    }
    let f = forward_rows(m, &rows, target, batch_size)?;
    let f0 = f[0];
    let mut comp = 0.0;
    let mut suff = 0.0;
    for b in 0..ks.len() {
        comp += f0 - f[1 + 2 * b];
        suff += f0 - f[2 + 2 * b];
    }
    let base = 1 + 2 * ks.len();
    let deletion: Vec<f64> = (0..curve_ks.len()).map(|i| f[base + 2 * i]).collect();
    let insertion: Vec<f64> = (0..curve_ks.len()).map(|i| f[base + 2 * i + 1]).collect();
    Ok(Faithfulness {
        comprehensiveness: comp / ks.len() as f64,
        sufficiency: suff / ks.len() as f64,
        deletion_auc: auc(&deletion),
        insertion_auc: auc(&insertion),
    })
}

/// F for variable-length variants of `x`, padded in batches (on the right, or on the left for
/// XLNet, whose position targets then move by the padding).
fn forward_rows(
    m: &ExplainModel,
    rows: &[Row],
    target: &Target,
    batch_size: usize,
) -> Result<Vec<f64>> {
    let tok = m.tokenizer()?;
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(batch_size.max(1)) {
        let encs: Vec<prism_model::Encoded> = chunk
            .iter()
            .map(|r| prism_model::Encoded {
                tokens: vec![String::new(); r.ids.len()],
                ids: r.ids.clone(),
                type_ids: r.types.clone(),
                offsets: vec![(0, 0); r.ids.len()],
                sequence_ids: vec![None; r.ids.len()],
                special_tokens_mask: vec![0; r.ids.len()],
                truncated: false,
            })
            .collect();
        let input = tok.batch(&encs, m.device())?;
        let width = chunk.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let targets: Vec<Target> = chunk
            .iter()
            .map(|r| match r.target_at {
                Some(p) => {
                    let pad = if tok.pads_left() {
                        width - r.ids.len()
                    } else {
                        0
                    };
                    target.at(p + pad)
                }
                None => *target,
            })
            .collect();
        out.extend(
            m.f_from_input_each(&input, &targets)?
                .into_iter()
                .map(|v| v as f64),
        );
    }
    Ok(out)
}

/// A random attribution (seeded), the baseline every method should beat.
pub fn random_attributions(
    m: &ExplainModel,
    x: &ExplainInput,
    target: &Target,
    seed: u64,
) -> Attributions {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let scores = (0..x.enc.ids.len()).map(|_| rng.random::<f32>()).collect();
    m.attributions(x, "random", target, scores, f32::NAN, None)
}

/// Mean of each score over examples.
pub fn mean(rows: &[Faithfulness]) -> Faithfulness {
    let n = rows.len().max(1) as f64;
    Faithfulness {
        comprehensiveness: rows.iter().map(|r| r.comprehensiveness).sum::<f64>() / n,
        sufficiency: rows.iter().map(|r| r.sufficiency).sum::<f64>() / n,
        deletion_auc: rows.iter().map(|r| r.deletion_auc).sum::<f64>() / n,
        insertion_auc: rows.iter().map(|r| r.insertion_auc).sum::<f64>() / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_a_line() {
        assert!((auc(&[1.0, 0.5, 0.0]) - 0.5).abs() < 1e-12);
        assert!((auc(&[1.0; 11]) - 1.0).abs() < 1e-12);
    }
}
