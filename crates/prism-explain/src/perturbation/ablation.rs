//! Feature ablation over words (Captum's `FeatureAblation` with a feature mask grouping each
//! word's sub-word tokens): every word of the input (as [`crate::word_spans`] groups tokens) is
//! replaced by [MASK] tokens in turn, and its score is the drop F(x) − F(x without the word).
//! Each of a word's tokens carries an equal share of that drop, so the word-level view
//! (`--words`, [`crate::aggregate_words`]) shows the word's own effect; special tokens are
//! never ablated and score 0.

use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{spans_of_words, Attributions, Method, Result};

pub struct WordAblation {
    /// Replacement token id (default: [MASK], or pad).
    pub replacement: Option<u32>,
    /// Ablated inputs per forward pass.
    pub batch_size: usize,
}

impl Default for WordAblation {
    fn default() -> Self {
        Self {
            replacement: None,
            batch_size: 32,
        }
    }
}

impl WordAblation {
    /// The ablated words, as token spans (special tokens excluded).
    pub fn words(x: &ExplainInput) -> Vec<(usize, usize)> {
        spans_of_words(&x.enc.sequence_ids, &x.enc.offsets)
            .into_iter()
            .filter(|&(s, e)| (s..e).any(|j| x.enc.special_tokens_mask[j] == 0))
            .collect()
    }
}

impl Method for WordAblation {
    fn name(&self) -> &'static str {
        "word_ablation"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let rep = match self.replacement {
            Some(r) => r,
            None => m.mask_id()?,
        };
        let t = x.enc.ids.len();
        let words = Self::words(x);
        let mut rows = vec![x.enc.ids.clone()];
        for &(s, e) in &words {
            let mut keep = vec![true; t];
            keep[s..e].iter_mut().for_each(|k| *k = false);
            rows.push(ExplainModel::masked_ids(x, &keep, rep));
        }
        let f = m.f_from_ids(&rows, x, target, self.batch_size)?;
        let mut scores = vec![0f32; t];
        for (&(s, e), fw) in words.iter().zip(&f[1..]) {
            let ablated: Vec<usize> = (s..e)
                .filter(|&j| x.enc.special_tokens_mask[j] == 0)
                .collect();
            for &j in &ablated {
                scores[j] = (f[0] - fw) / ablated.len() as f32;
            }
        }
        Ok(m.attributions(x, self.name(), target, scores, f[0], None))
    }
}
