//! Attributions inside the encoder: at the output of one layer (Captum's layer methods on
//! `encoder.layer[N]`, 0-based), layer conductance for every layer at once (a layer × token
//! map), and attention-head importance (Michel et al. 2019; a layer × head map).
//!
//! The encoder is observed through [`Probes`]: a layer's output replaced by a given tensor
//! (layer IG's interpolated activations), zero tensors added to every layer's output whose
//! gradients are those of the layer outputs (conductance, gradient × activation), and a head
//! mask multiplied onto the attention probabilities (head importance, its gradient being
//! Σ attention ⊙ dF/d attention).

use crate::gradient::IntegratedGradients;
use crate::model::{ExplainInput, ExplainModel, Target};
use crate::{Attributions, Error, Method, Result};
use candle_core::{Tensor, Var, D};
use prism_model::{Encoder, Probes};

/// The layer a method reads: `layer` or the last one, checked against the encoder.
fn resolve(m: &ExplainModel, layer: Option<usize>) -> Result<usize> {
    let (l, _) = m.model.base.encoder.layers_and_heads();
    match layer {
        None => Ok(l - 1),
        Some(n) if n < l => Ok(n),
        Some(n) => Err(Error::Invalid(format!(
            "layer {n} does not exist: the encoder has layers 0..={}",
            l - 1
        ))),
    }
}

/// Zero tensors (S, T, C) for every layer, as `Var`s whose gradients are the layer outputs'.
fn taps(m: &ExplainModel, like: &Tensor) -> Result<Vec<Var>> {
    let (l, _) = m.model.base.encoder.layers_and_heads();
    (0..l)
        .map(|_| Ok(Var::from_tensor(&like.zeros_like()?)?))
        .collect()
}

fn tap_probes(taps: &[Var]) -> Probes {
    Probes {
        taps: Some(taps.iter().map(|v| v.as_tensor().clone()).collect()),
        ..Default::default()
    }
}

/// Each layer's output for each row of `embeds` (S, T, C): L tensors (S, T, C), no gradients.
pub fn layer_outputs(m: &ExplainModel, x: &ExplainInput, embeds: &Tensor) -> Result<Vec<Tensor>> {
    let mut rep = ExplainModel::repeat(&x.input, embeds.dim(0)?)?;
    rep.output_hidden_states = true;
    rep.first_token_only = false;
    let out = m.model.base.encoder.forward_from_word_embeddings(
        &embeds.detach(),
        &rep,
        &prism_model::Mode::Eval,
    )?;
    let hs = out
        .hidden_states
        .ok_or_else(|| Error::Invalid("the encoder returned no hidden states".into()))?;
    Ok(hs[1..].iter().map(|h| h.detach()).collect())
}

/// Integrated gradients of the output of encoder layer `layer` (Captum's
/// `LayerIntegratedGradients(f, encoder.layer[N])`): the layer's activations are interpolated
/// between the baseline's and the input's, the rest of the encoder runs from them, and the
/// attribution is (h − h') · Σ w_k dF/dh, summed per token.
pub struct LayerIntegratedGradients {
    pub layer: Option<usize>,
    /// Steps, rule, baseline and internal batch size.
    pub ig: IntegratedGradients,
}

impl Method for LayerIntegratedGradients {
    fn name(&self) -> &'static str {
        "layer_ig"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let n = resolve(m, self.layer)?;
        let e = m.embeddings(x)?;
        let b = self.ig.baseline_embeddings(m, x)?;
        let both = layer_outputs(m, x, &Tensor::cat(&[&e, &b], 0)?)?.swap_remove(n);
        let (hx, hb) = (both.narrow(0, 0, 1)?, both.narrow(0, 1, 1)?);
        let diff = (&hx - &hb)?;
        let (alphas, weights) = self.ig.rule.points(self.ig.steps);
        let mut acc = hx.zeros_like()?.squeeze(0)?; // (T, C)
        let step = self.ig.batch_size.max(1);
        for (a_chunk, w_chunk) in alphas.chunks(step).zip(weights.chunks(step)) {
            let s = a_chunk.len();
            let col = |v: &[f64]| -> Result<Tensor> {
                Ok(Tensor::from_vec(
                    v.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                    (s, 1, 1),
                    e.device(),
                )?)
            };
            let path = Var::from_tensor(&hb.broadcast_add(&diff.broadcast_mul(&col(a_chunk)?)?)?)?;
            let probes = Probes {
                layer_output: Some((n, path.as_tensor().clone())),
                ..Default::default()
            };
            let (_, grads) = m.probed(&e.repeat((s, 1, 1))?, x, target, probes, false)?;
            let g = grads
                .get(path.as_tensor())
                .cloned()
                .unwrap_or(path.as_tensor().zeros_like()?);
            acc = (acc + g.broadcast_mul(&col(w_chunk)?)?.sum(0)?)?;
        }
        let scores = crate::gradient::sum_per_token(&diff.broadcast_mul(&acc.unsqueeze(0)?)?)?;
        let f = m.f_from_embeds(&Tensor::cat(&[&e, &b], 0)?, x, target)?;
        let delta = scores.iter().map(|&v| v as f64).sum::<f64>() - (f[0] - f[1]) as f64;
        Ok(m.attributions(x, self.name(), target, scores, f[0], Some(delta as f32)))
    }
}

/// Gradient × activation at the output of encoder layer `layer` (Captum's
/// `LayerGradientXActivation`): h · dF/dh, summed per token.
pub struct LayerGradientXActivation {
    pub layer: Option<usize>,
}

impl Method for LayerGradientXActivation {
    fn name(&self) -> &'static str {
        "layer_grad_x_act"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        m.check(target, x)?;
        let n = resolve(m, self.layer)?;
        let e = m.embeddings(x)?;
        let taps = taps(m, &e)?;
        let (f, grads, out) = m.probed_with_output(&e, x, target, tap_probes(&taps), true)?;
        let g = grads
            .get(taps[n].as_tensor())
            .cloned()
            .unwrap_or(e.zeros_like()?);
        let h = hidden(&out, n)?;
        let scores = crate::gradient::sum_per_token(&(g * h)?)?;
        Ok(m.attributions(x, self.name(), target, scores, f[0], None))
    }
}

/// Layer `n`'s output from an encoder output with hidden states.
fn hidden(out: &prism_model::EncoderOutput, n: usize) -> Result<Tensor> {
    out.hidden_states
        .as_ref()
        .and_then(|hs| hs.get(n + 1))
        .map(|h| h.detach())
        .ok_or_else(|| Error::Invalid(format!("no hidden state for layer {n}")))
}

/// Layer conductance (Dhamdhere et al. 2018; Captum's `LayerConductance`) of every layer's
/// output: the input embeddings are interpolated from the baseline's at `steps + 1` points
/// α_k of the rule, and each layer's conductance is Σ_k dF/dh(α_k) · (h(α_{k+1}) − h(α_k)),
/// summed per token. All layers come from the same passes (taps on every layer output),
/// `batch_size` points at a time.
pub struct LayerConductance {
    /// The layer whose row [`Method::attribute`] returns (default: the last).
    pub layer: Option<usize>,
    pub ig: IntegratedGradients,
}

impl LayerConductance {
    /// Conductance per layer and token, `[layer][token]`, and F(x) − F(baseline).
    pub fn map(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<(Vec<Vec<f32>>, f32, f32)> {
        self.conduct(m, x, target, None)
    }

    /// Conductance of `only` layer (one row), or of every layer. Every layer: one forward and
    /// backward per point with a tap on each layer's output. One layer: its outputs from a
    /// forward without gradients, then the rest of the encoder run from them as given
    /// activations, so the backward pass stops at that layer (as Captum's does).
    fn conduct(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
        only: Option<usize>,
    ) -> Result<(Vec<Vec<f32>>, f32, f32)> {
        m.check(target, x)?;
        let e = m.embeddings(x)?;
        let b = self.ig.baseline_embeddings(m, x)?;
        let diff = (&e - &b)?;
        let (alphas, _) = self.ig.rule.points(self.ig.steps + 1);
        let (l, _) = m.model.base.encoder.layers_and_heads();
        let rows = if only.is_some() { 1 } else { l };
        let t = x.enc.ids.len();
        let mut acc: Vec<Tensor> = (0..rows)
            .map(|_| Ok(Tensor::zeros(t, candle_core::DType::F32, e.device())?))
            .collect::<Result<_>>()?;
        // The last point's layer outputs and gradients, carried into the next chunk.
        let mut carry: Option<Vec<(Tensor, Tensor)>> = None;
        for chunk in alphas.chunks(self.ig.batch_size.max(1)) {
            let s = chunk.len();
            let a = Tensor::from_vec(
                chunk.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                (s, 1, 1),
                e.device(),
            )?;
            let path = b.broadcast_add(&diff.broadcast_mul(&a)?)?; // (S, T, C)
                                                                   // (h, dF/dh) at each point, per layer read.
            let pairs: Vec<(Tensor, Tensor)> = match only {
                Some(n) => {
                    let h = layer_outputs(m, x, &path)?.swap_remove(n);
                    let given = Var::from_tensor(&h)?;
                    let probes = Probes {
                        layer_output: Some((n, given.as_tensor().clone())),
                        ..Default::default()
                    };
                    let (_, grads) = m.probed(&path, x, target, probes, false)?;
                    let g = grads
                        .get(given.as_tensor())
                        .cloned()
                        .unwrap_or(h.zeros_like()?);
                    vec![(h, g)]
                }
                None => {
                    let taps = taps(m, &path)?;
                    let (_, grads, out) =
                        m.probed_with_output(&path, x, target, tap_probes(&taps), true)?;
                    taps.iter()
                        .enumerate()
                        .map(|(layer, tap)| {
                            let h = hidden(&out, layer)?;
                            let g = grads
                                .get(tap.as_tensor())
                                .cloned()
                                .unwrap_or(h.zeros_like()?);
                            Ok((h, g))
                        })
                        .collect::<Result<_>>()?
                }
            };
            let mut last = Vec::with_capacity(rows);
            for (r, (h, g)) in pairs.into_iter().enumerate() {
                let (h, g) = match &carry {
                    Some(c) => (
                        Tensor::cat(&[&c[r].0, &h], 0)?,
                        Tensor::cat(&[&c[r].1, &g], 0)?,
                    ),
                    None => (h, g),
                };
                let k = h.dim(0)?;
                if k > 1 {
                    let dh = (h.narrow(0, 1, k - 1)? - h.narrow(0, 0, k - 1)?)?;
                    let c = (g.narrow(0, 0, k - 1)? * dh)?.sum(0)?.sum(D::Minus1)?; // (T)
                    acc[r] = (&acc[r] + c)?;
                }
                last.push((h.narrow(0, k - 1, 1)?, g.narrow(0, k - 1, 1)?));
            }
            carry = Some(last);
        }
        let f = m.f_from_embeds(&Tensor::cat(&[&e, &b], 0)?, x, target)?;
        let map = acc
            .iter()
            .map(|a| Ok(a.to_vec1::<f32>()?))
            .collect::<Result<_>>()?;
        Ok((map, f[0], f[1]))
    }
}

impl Method for LayerConductance {
    fn name(&self) -> &'static str {
        "layer_conductance"
    }
    fn attribute(
        &self,
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
    ) -> Result<Attributions> {
        let n = resolve(m, self.layer)?;
        let (mut row, fx, fb) = self.conduct(m, x, target, Some(n))?;
        let scores = row.swap_remove(0);
        let delta = scores.iter().map(|&v| v as f64).sum::<f64>() - (fx - fb) as f64;
        Ok(m.attributions(x, self.name(), target, scores, fx, Some(delta as f32)))
    }
}

/// Attention-head importance (Michel et al. 2019, "Are Sixteen Heads Really Better than
/// One?"): I_h = |Σ A_h ⊙ dF/dA_h| — the gradient of F with respect to a mask multiplying head
/// h's attention probabilities, at 1 — per layer and head.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeadImportance {
    /// `[layer][head]`, each layer's scores divided by their L2 norm (the paper's per-layer
    /// normalisation).
    pub scores: Vec<Vec<f32>>,
    /// `[layer][head]`, before normalisation.
    pub raw: Vec<Vec<f32>>,
}

pub fn head_importance(
    m: &ExplainModel,
    x: &ExplainInput,
    target: &Target,
) -> Result<HeadImportance> {
    m.check(target, x)?;
    let (l, h) = m.model.base.encoder.layers_and_heads();
    let e = m.embeddings(x)?;
    let mask = Var::ones((l, h), candle_core::DType::F32, e.device())?;
    let probes = Probes {
        head_mask: Some(mask.as_tensor().clone()),
        ..Default::default()
    };
    let (_, grads) = m.probed(&e, x, target, probes, false)?;
    let raw: Vec<Vec<f32>> = grads
        .get(mask.as_tensor())
        .cloned()
        .unwrap_or(mask.as_tensor().zeros_like()?)
        .abs()?
        .to_vec2()?;
    let scores = raw
        .iter()
        .map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter()
                .map(|v| if norm > 0.0 { v / norm } else { 0.0 })
                .collect()
        })
        .collect();
    Ok(HeadImportance { scores, raw })
}

/// The two maps the report and the web UI show beside the attention grid: layer conductance
/// per layer and token, and head importance per layer and head.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerMaps {
    pub tokens: Vec<String>,
    /// `[layer][token]` (Captum's `LayerConductance` of `encoder.layer[N]`).
    pub conductance: Vec<Vec<f32>>,
    pub head_importance: HeadImportance,
}

impl LayerMaps {
    /// Both maps for one input and target, with `ig`'s steps, rule and baseline.
    pub fn compute(
        m: &ExplainModel,
        x: &ExplainInput,
        target: &Target,
        ig: &IntegratedGradients,
    ) -> Result<Self> {
        let (conductance, _, _) = LayerConductance {
            layer: None,
            ig: ig.clone(),
        }
        .map(m, x, target)?;
        Ok(Self {
            tokens: x.enc.tokens.clone(),
            conductance,
            head_importance: head_importance(m, x, target)?,
        })
    }
}
