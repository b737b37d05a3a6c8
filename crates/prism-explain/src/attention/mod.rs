//! Attention-based scores (Abnar & Zuidema 2020): raw attention, attention rollout and
//! attention flow, all read from the row of the token the sequence heads pool (the first,
//! [CLS]/<s>; XLNet's last, <cls>). For token and QA targets, the row of the target position.

mod flow;

pub use flow::max_flow;

use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Method, Result};
use prism_model::{Encoder, Mode};

/// Every layer's attention probabilities for the input: `[layer][head][query][key]`.
pub fn attention_maps(m: &ExplainModel, x: &ExplainInput) -> Result<Vec<Vec<Vec<Vec<f32>>>>> {
    let mut input = x.input.clone();
    input.output_attentions = true;
    let out = m.model.base.encoder.forward(&input, &Mode::Eval)?;
    let mut maps = Vec::new();
    for a in out.attentions.unwrap_or_default() {
        let a = a.detach().squeeze(0)?; // (H, T, T)
        maps.push(a.to_vec3::<f32>()?);
    }
    Ok(maps)
}

/// Head-averaged attention per layer, `[layer][query][key]`.
pub fn mean_heads(maps: &[Vec<Vec<Vec<f32>>>]) -> Vec<Vec<Vec<f32>>> {
    maps.iter()
        .map(|layer| {
            let h = layer.len() as f32;
            let t = layer[0].len();
            (0..t)
                .map(|i| {
                    (0..t)
                        .map(|j| layer.iter().map(|head| head[i][j]).sum::<f32>() / h)
                        .collect()
                })
                .collect()
        })
        .collect()
}

/// `0.5 A + 0.5 I`, rows renormalised: the residual connection's share of the information flow.
pub fn residual_adjusted(a: &[Vec<f32>]) -> Vec<Vec<f32>> {
    let t = a.len();
    (0..t)
        .map(|i| {
            let row: Vec<f32> = (0..t)
                .map(|j| 0.5 * a[i][j] + if i == j { 0.5 } else { 0.0 })
                .collect();
            let s: f32 = row.iter().sum();
            row.iter().map(|v| v / s.max(1e-12)).collect()
        })
        .collect()
}

/// The row read for a target: the target token for tags and answer boundaries; otherwise the
/// token the sequence head summarises ([CLS] / <s> first, XLNet's <cls> last).
fn query_position(m: &ExplainModel, x: &ExplainInput, target: &Target) -> usize {
    match target {
        Target::Tag { position, .. }
        | Target::AnswerStart { position }
        | Target::AnswerEnd { position } => *position,
        _ => match &m.model.base.encoder {
            prism_model::AnyEncoder::Xlnet(_) => x.enc.ids.len().saturating_sub(1),
            _ => 0,
        },
    }
}

/// Attention of the query position to each token in one layer (default: the last), averaged
/// over heads (or one head).
#[derive(Default)]
pub struct RawAttention {
    pub layer: Option<usize>,
    pub head: Option<usize>,
}

impl Method for RawAttention {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let maps = attention_maps(m, x)?;
        let l = self.layer.unwrap_or(maps.len() - 1).min(maps.len() - 1);
        let q = query_position(m, x, target);
        let scores = match self.head {
            Some(h) => maps[l][h.min(maps[l].len() - 1)][q].clone(),
            None => mean_heads(&maps[l..=l])[0][q].clone(),
        };
        let f = m.f_from_embeds(&m.embeddings(x)?, x, target)?[0];
        Ok(m.attributions(x, self.name(), target, scores, f, None))
    }
}

/// Attention rollout: the product of residual-adjusted, head-averaged attention matrices from
/// the last layer down to the first; the query position's row.
pub struct AttentionRollout;

/// The rollout matrix `A_L' ... A_1'`.
pub fn rollout(maps: &[Vec<Vec<Vec<f32>>>]) -> Vec<Vec<f32>> {
    let layers = mean_heads(maps);
    let t = layers[0].len();
    let mut r: Vec<Vec<f32>> = (0..t)
        .map(|i| (0..t).map(|j| (i == j) as u8 as f32).collect())
        .collect();
    for a in layers.iter().map(|a| residual_adjusted(a)) {
        // r <- a * r: information at layer l+1 position i from input j.
        r = (0..t)
            .map(|i| {
                (0..t)
                    .map(|j| (0..t).map(|k| a[i][k] * r[k][j]).sum())
                    .collect()
            })
            .collect();
    }
    r
}

impl Method for AttentionRollout {
    fn name(&self) -> &'static str {
        "rollout"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let maps = attention_maps(m, x)?;
        let r = rollout(&maps);
        let f = m.f_from_embeds(&m.embeddings(x)?, x, target)?[0];
        Ok(m.attributions(
            x,
            self.name(),
            target,
            r[query_position(m, x, target)].clone(),
            f,
            None,
        ))
    }
}

/// Attention flow: the maximum flow from each input token to the query position's output node
/// through the layered graph whose edge capacities are the residual-adjusted, head-averaged
/// attention weights.
pub struct AttentionFlow;

impl Method for AttentionFlow {
    fn name(&self) -> &'static str {
        "flow"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let maps = attention_maps(m, x)?;
        let layers: Vec<Vec<Vec<f32>>> = mean_heads(&maps)
            .iter()
            .map(|a| residual_adjusted(a))
            .collect();
        let t = layers[0].len();
        let l = layers.len();
        // Node (layer, position) = layer * t + position; layer 0 is the input.
        let n = (l + 1) * t;
        let mut edges = Vec::new();
        for (li, a) in layers.iter().enumerate() {
            for i in 0..t {
                for j in 0..t {
                    if a[i][j] > 0.0 {
                        edges.push((li * t + j, (li + 1) * t + i, a[i][j] as f64));
                    }
                }
            }
        }
        let sink = l * t + query_position(m, x, target);
        let scores = (0..t)
            .map(|j| max_flow(n, &edges, j, sink) as f32)
            .collect();
        let f = m.f_from_embeds(&m.embeddings(x)?, x, target)?[0];
        Ok(m.attributions(x, self.name(), target, scores, f, None))
    }
}
