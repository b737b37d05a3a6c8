//! Permutation language modelling batches (Yang et al. 2019), as transformers'
//! `DataCollatorForPermutationLanguageModeling`: spans of 1..=`max_span` tokens are chosen so
//! that about `probability` (1/K, K = 6 in the paper) of each sequence is predicted; a random
//! factorisation order over pairs of positions decides what each token may see (`perm_mask`),
//! predicted tokens never see their own content, and every position has a query-stream slot
//! (`target_mapping` = identity). Inputs are not corrupted: the two streams hide the targets.

use super::corpus::Sequence;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

fn d_prob() -> f64 {
    1.0 / 6.0
}
fn d_span() -> usize {
    5
}

/// `[plm]` in the pre-training config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlmConfig {
    /// Share of tokens predicted (1/K).
    #[serde(default = "d_prob")]
    pub probability: f64,
    #[serde(default = "d_span")]
    pub max_span: usize,
}

impl Default for PlmConfig {
    fn default() -> Self {
        Self {
            probability: d_prob(),
            max_span: d_span(),
        }
    }
}

impl PlmConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.probability > 0.0 && self.probability < 1.0) {
            return Err(format!(
                "plm.probability {} must be in (0, 1)",
                self.probability
            ));
        }
        if self.max_span == 0 || (self.max_span as f64 / self.probability) < 1.0 {
            return Err(format!("plm.max_span {} must be at least 1", self.max_span));
        }
        Ok(())
    }
}

/// A padded batch (even length) with its permutation masks.
#[derive(Clone, Debug)]
pub struct PlmBatch {
    pub batch: usize,
    pub len: usize,
    pub input_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    /// (B * T * T) row-major: 1 where query i may not see key j.
    pub perm_mask: Vec<f32>,
    /// Flat positions `b * T + t` of the predicted tokens, and their ids.
    pub positions: Vec<u32>,
    pub labels: Vec<u32>,
    pub tokens: usize,
}

/// Build a PLM batch with `rng`.
pub fn plm_batch(seqs: &[&Sequence], cfg: &PlmConfig, pad_id: u32, rng: &mut StdRng) -> PlmBatch {
    let b = seqs.len();
    let mut t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    t += t % 2; // the factorisation order pairs positions
    let mut input_ids = vec![pad_id; b * t];
    let mut attention_mask = vec![0u32; b * t];
    let mut perm_mask = vec![0f32; b * t * t];
    let mut positions = Vec::new();
    let mut labels = Vec::new();
    let mut tokens = 0;
    for (bi, s) in seqs.iter().enumerate() {
        let n = s.ids.len();
        tokens += n;
        input_ids[bi * t..bi * t + n].copy_from_slice(&s.ids);
        attention_mask[bi * t..bi * t + n].fill(1);
        // -- spans to predict
        let mut masked = vec![false; t];
        let mut cur = 0usize;
        while cur < t {
            let span = rng.random_range(1..=cfg.max_span);
            let context = ((span as f64 / cfg.probability) as usize).max(span);
            let start = cur + rng.random_range(0..=context - span);
            for m in masked.iter_mut().skip(start).take(span) {
                *m = true;
            }
            cur += context;
        }
        // Specials and padding are never predicted.
        for (j, m) in masked.iter_mut().enumerate() {
            if j >= n || s.special[j] {
                *m = false;
            }
        }
        if !masked.iter().any(|&m| m) {
            if let Some(j) = (0..n).find(|&j| !s.special[j]) {
                masked[j] = true;
            }
        }
        // -- factorisation order: shuffle pairs of positions (i, i + T/2) as transformers does
        let half = t / 2;
        let mut order: Vec<usize> = (0..half).collect();
        order.shuffle(rng);
        let mut rank = vec![0i64; t];
        // perm_index = flatten(transpose(reshape(arange(T), (2, T/2)))[order]) ...
        let mut seq = Vec::with_capacity(t);
        for &o in &order {
            seq.push(o);
            seq.push(o + half);
        }
        // ... then column-major flatten: position k of the permuted (T/2, 2) grid
        let mut perm_index = vec![0i64; t];
        for (k, _) in seq.iter().enumerate() {
            // grid[r][c] = seq[2r + c]; flatten(transpose) -> index c * half + r
            let (r, c) = (k / 2, k % 2);
            perm_index[c * half + r] = seq[k] as i64;
        }
        // Non-predicted real tokens come first in the order (they are context for everything).
        for j in 0..t {
            let functional = j >= n || s.special[j];
            rank[j] = if !masked[j] && !functional {
                -1
            } else {
                perm_index[j]
            };
        }
        for i in 0..t {
            for j in 0..t {
                if rank[i] <= rank[j] && masked[j] {
                    perm_mask[(bi * t + i) * t + j] = 1.0;
                }
            }
        }
        for (j, &m) in masked.iter().enumerate() {
            if m {
                positions.push((bi * t + j) as u32);
                labels.push(s.ids[j]);
            }
        }
    }
    PlmBatch {
        batch: b,
        len: t,
        input_ids,
        attention_mask,
        perm_mask,
        positions,
        labels,
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn seq(n: usize) -> Sequence {
        let mut ids: Vec<u32> = (0..n as u32).map(|i| 10 + i).collect();
        ids.push(4);
        ids.push(3);
        let mut special = vec![false; n];
        special.extend([true, true]);
        Sequence {
            word_start: vec![true; ids.len()],
            ids,
            special,
        }
    }

    #[test]
    fn about_one_in_k_is_predicted_and_never_sees_itself() {
        let s = seq(600);
        let mut rng = StdRng::seed_from_u64(1);
        let b = plm_batch(&[&s], &PlmConfig::default(), 5, &mut rng);
        let frac = b.positions.len() as f64 / 600.0;
        assert!((frac - 1.0 / 6.0).abs() < 0.04, "{frac}");
        let t = b.len;
        for &p in &b.positions {
            let j = p as usize;
            // A target is hidden from its own query (content stream may still see it) ...
            assert_eq!(b.perm_mask[j * t + j], 1.0);
        }
        // ... context tokens are visible to everyone, and specials are never targets.
        for j in 0..602 {
            if !b.positions.contains(&(j as u32)) {
                for i in 0..t {
                    assert_eq!(b.perm_mask[i * t + j], 0.0, "context {j} hidden from {i}");
                }
            }
        }
        assert!(!b.positions.contains(&600) && !b.positions.contains(&601));
        // The visibility among targets is a strict order: for two targets, exactly one sees
        // the other.
        let tg: Vec<usize> = b.positions.iter().map(|&p| p as usize).take(20).collect();
        for &i in &tg {
            for &j in &tg {
                if i != j {
                    let (a, c) = (b.perm_mask[i * t + j], b.perm_mask[j * t + i]);
                    assert_eq!(a + c, 1.0, "{i} {j}");
                }
            }
        }
        assert_eq!(t % 2, 0);
    }
}
