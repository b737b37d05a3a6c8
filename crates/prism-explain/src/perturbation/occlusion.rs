//! Occlusion (Zeiler & Fergus 2014): slide a window of tokens, replace it, and credit each token
//! with the mean drop of F over the windows that covered it (Captum's Occlusion, 1-D).

use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Method, Result};

pub struct Occlusion {
    pub window: usize,
    pub stride: usize,
    /// Replacement token id (default: [MASK], or pad).
    pub replacement: Option<u32>,
    pub batch_size: usize,
}

impl Default for Occlusion {
    fn default() -> Self {
        Self {
            window: 1,
            stride: 1,
            replacement: None,
            batch_size: 32,
        }
    }
}

impl Method for Occlusion {
    fn name(&self) -> &'static str {
        "occlusion"
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
        let feats = ExplainModel::features(x);
        let t = x.enc.ids.len();
        let window = self.window.max(1);
        let mut windows = Vec::new();
        let mut start = 0;
        while start < feats.len() {
            windows.push(&feats[start..(start + window).min(feats.len())]);
            if start + window >= feats.len() {
                break;
            }
            start += self.stride.max(1);
        }
        let mut rows = vec![x.enc.ids.clone()];
        for w in &windows {
            let mut keep = vec![true; t];
            for &j in *w {
                keep[j] = false;
            }
            rows.push(ExplainModel::masked_ids(x, &keep, rep));
        }
        let f = m.f_from_ids(&rows, x, target, self.batch_size)?;
        let mut sum = vec![0f32; t];
        let mut count = vec![0f32; t];
        for (w, fw) in windows.iter().zip(&f[1..]) {
            for &j in *w {
                sum[j] += f[0] - fw;
                count[j] += 1.0;
            }
        }
        let scores = sum
            .iter()
            .zip(&count)
            .map(|(s, c)| if *c > 0.0 { s / c } else { 0.0 })
            .collect();
        Ok(m.attributions(x, self.name(), target, scores, f[0], None))
    }
}
