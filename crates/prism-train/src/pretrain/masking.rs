//! Dynamic masking for masked language modelling (Devlin et al. 2019; RoBERTa's per-batch
//! re-masking): each batch draws its own masks. Of the non-special tokens, `probability` are
//! selected (each independently, as transformers' `DataCollatorForLanguageModeling`); a
//! selected token becomes `[MASK]` with probability `mask`, a random non-special token with
//! `random`, and stays itself otherwise. With whole-word masking the draw is per word and all
//! pieces of a selected word are predicted together (each piece still gets its own 80/10/10).

use super::corpus::Sequence;
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

fn d_prob() -> f64 {
    0.15
}
fn d_mask() -> f64 {
    0.8
}
fn d_random() -> f64 {
    0.1
}

/// `[mlm]` in the pre-training config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    #[serde(default = "d_prob")]
    pub probability: f64,
    #[serde(default = "d_mask")]
    pub mask: f64,
    #[serde(default = "d_random")]
    pub random: f64,
    #[serde(default)]
    pub whole_word: bool,
}

impl Default for MaskConfig {
    fn default() -> Self {
        Self {
            probability: d_prob(),
            mask: d_mask(),
            random: d_random(),
            whole_word: false,
        }
    }
}

impl MaskConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.probability > 0.0 && self.probability < 1.0) {
            return Err(format!(
                "mlm.probability {} must be in (0, 1)",
                self.probability
            ));
        }
        if !(self.mask >= 0.0 && self.random >= 0.0 && self.mask + self.random <= 1.0) {
            return Err(format!(
                "mlm.mask {} + mlm.random {} must be within [0, 1]",
                self.mask, self.random
            ));
        }
        Ok(())
    }
}

/// A padded batch with its masked positions.
#[derive(Clone, Debug)]
pub struct MaskedBatch {
    pub batch: usize,
    pub len: usize,
    /// (B * T) row-major, with masks applied.
    pub input_ids: Vec<u32>,
    /// (B * T), 1 for real tokens.
    pub attention_mask: Vec<u32>,
    /// Flat indices `b * T + t` of the predicted tokens.
    pub positions: Vec<u32>,
    /// The original tokens at `positions`.
    pub labels: Vec<u32>,
    /// Real (non-padding) tokens in the batch.
    pub tokens: usize,
}

/// What masking needs of the vocabulary.
#[derive(Clone, Debug)]
pub struct Vocab {
    pub mask_id: u32,
    pub pad_id: u32,
    pub size: u32,
    /// Ids never drawn as random replacements (specials), sorted.
    pub special_ids: Vec<u32>,
}

impl Vocab {
    fn random_token(&self, rng: &mut StdRng) -> u32 {
        loop {
            let t = rng.random_range(0..self.size);
            if self.special_ids.binary_search(&t).is_err() {
                return t;
            }
        }
    }
}

/// Mask a batch of sequences with `rng` (pad to the longest).
pub fn mask_batch(
    seqs: &[&Sequence],
    cfg: &MaskConfig,
    vocab: &Vocab,
    rng: &mut StdRng,
) -> MaskedBatch {
    let b = seqs.len();
    let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    let mut input_ids = vec![vocab.pad_id; b * t];
    let mut attention_mask = vec![0u32; b * t];
    let mut positions = Vec::new();
    let mut labels = Vec::new();
    let mut tokens = 0;
    for (bi, s) in seqs.iter().enumerate() {
        let row = bi * t;
        input_ids[row..row + s.ids.len()].copy_from_slice(&s.ids);
        attention_mask[row..row + s.ids.len()].fill(1);
        tokens += s.ids.len();
        // -- select
        let mut selected = vec![false; s.ids.len()];
        if cfg.whole_word {
            let mut take = false;
            for i in 0..s.ids.len() {
                if s.special[i] {
                    take = false;
                    continue;
                }
                if s.word_start[i] || i == 0 || s.special[i - 1] {
                    take = rng.random::<f64>() < cfg.probability;
                }
                selected[i] = take;
            }
        } else {
            for i in 0..s.ids.len() {
                selected[i] = !s.special[i] && rng.random::<f64>() < cfg.probability;
            }
        }
        // -- replace
        for i in 0..s.ids.len() {
            if !selected[i] {
                continue;
            }
            positions.push((row + i) as u32);
            labels.push(s.ids[i]);
            let u: f64 = rng.random();
            if u < cfg.mask {
                input_ids[row + i] = vocab.mask_id;
            } else if u < cfg.mask + cfg.random {
                input_ids[row + i] = vocab.random_token(rng);
            }
        }
    }
    if positions.is_empty() {
        // Short inputs can draw no mask at all; predict one token so the batch has a loss.
        if let Some((bi, i)) = seqs
            .iter()
            .enumerate()
            .flat_map(|(bi, s)| {
                (0..s.ids.len())
                    .filter(|&i| !s.special[i])
                    .map(move |i| (bi, i))
            })
            .next()
        {
            positions.push((bi * t + i) as u32);
            labels.push(seqs[bi].ids[i]);
            input_ids[bi * t + i] = vocab.mask_id;
        }
    }
    MaskedBatch {
        batch: b,
        len: t,
        input_ids,
        attention_mask,
        positions,
        labels,
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn seq(n: usize, word_len: usize) -> Sequence {
        let mut ids = vec![1];
        let mut ws = vec![false];
        let mut sp = vec![true];
        for i in 0..n {
            ids.push(10 + (i % 50) as u32);
            ws.push(i % word_len == 0);
            sp.push(false);
        }
        ids.push(2);
        ws.push(false);
        sp.push(true);
        Sequence {
            ids,
            word_start: ws,
            special: sp,
        }
    }

    fn vocab() -> Vocab {
        Vocab {
            mask_id: 3,
            pad_id: 0,
            size: 100,
            special_ids: vec![0, 1, 2, 3],
        }
    }

    #[test]
    fn rates_match_the_config() {
        let s = seq(1000, 1);
        let seqs: Vec<&Sequence> = (0..20).map(|_| &s).collect();
        let mut rng = StdRng::seed_from_u64(7);
        let m = mask_batch(&seqs, &MaskConfig::default(), &vocab(), &mut rng);
        let n = m.positions.len() as f64;
        let frac = n / 20_000.0;
        assert!((frac - 0.15).abs() < 0.01, "selected {frac}");
        let masked = m
            .positions
            .iter()
            .filter(|&&p| m.input_ids[p as usize] == 3)
            .count() as f64;
        let kept = m
            .positions
            .iter()
            .zip(&m.labels)
            .filter(|(&p, &l)| m.input_ids[p as usize] == l)
            .count() as f64;
        assert!((masked / n - 0.8).abs() < 0.02, "mask {}", masked / n);
        // Kept: the 10% "keep" plus random draws that hit the original token (1/96).
        assert!((kept / n - 0.1).abs() < 0.02, "kept {}", kept / n);
        // Specials are never selected; random replacements are never specials.
        for &p in &m.positions {
            let i = p as usize % m.len;
            assert!(i != 0 && i != m.len - 1);
            assert!(m.input_ids[p as usize] == 3 || m.input_ids[p as usize] >= 4);
        }
    }

    #[test]
    fn whole_words_are_masked_together() {
        let s = seq(3000, 3); // words of three pieces
        let mut rng = StdRng::seed_from_u64(3);
        let cfg = MaskConfig {
            whole_word: true,
            ..Default::default()
        };
        let m = mask_batch(&[&s], &cfg, &vocab(), &mut rng);
        let sel: std::collections::BTreeSet<usize> =
            m.positions.iter().map(|&p| p as usize).collect();
        assert!(!sel.is_empty());
        for &p in &sel {
            let word = (p - 1) / 3; // token 1 + 3w .. 1 + 3w + 2
            for q in 1 + 3 * word..1 + 3 * word + 3 {
                assert!(sel.contains(&q), "piece {q} of word {word} not masked");
            }
        }
        let frac = sel.len() as f64 / 3000.0;
        assert!((frac - 0.15).abs() < 0.04, "{frac}");
    }

    #[test]
    fn padding_and_determinism() {
        let a = seq(5, 1);
        let b = seq(9, 1);
        let m1 = mask_batch(
            &[&a, &b],
            &MaskConfig::default(),
            &vocab(),
            &mut StdRng::seed_from_u64(1),
        );
        let m2 = mask_batch(
            &[&a, &b],
            &MaskConfig::default(),
            &vocab(),
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(m1.input_ids, m2.input_ids);
        assert_eq!(m1.len, 11);
        assert_eq!(&m1.attention_mask[..11], &[1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]);
        assert_eq!(m1.tokens, 18);
        assert!(!m1.positions.is_empty());
    }
}
