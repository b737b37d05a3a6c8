//! ModernBERT (transformers' `ModernBertModel`, `model_type = "modernbert"`): token embeddings
//! and a LayerNorm (no position table), then pre-norm layers — attention with rotary position
//! embeddings on `Wqkv`, a GeGLU feed-forward (`Wi` split into input and gate) — alternating
//! global layers and local ones that attend within `local_attention / 2` tokens either side,
//! each kind with its own rotary θ; a final LayerNorm. Norms and linear layers have no biases
//! unless `norm_bias` / `attention_bias` / `mlp_bias` say so. Layer 0 has no attention norm (the
//! embedding norm precedes it).
//!
//! Config keys are read verbatim in both forms transformers knows: `layer_types` and
//! `rope_parameters` (5.x) or `global_attn_every_n_layers` and `global_rope_theta` /
//! `local_rope_theta` (the released checkpoints'). As in transformers, the last entry of the
//! hidden states is the final-normed output; for layer attribution the last layer's output is
//! that too.

use super::bert::additive_mask;
use super::{Encoder, EncoderInput, EncoderOutput};
use crate::error::{Error, Result};
use crate::nn::{Embedding, Init, LayerNorm, Linear, Mode, ParamBuilder};
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

fn d_act() -> String {
    "gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_init() -> f64 {
    0.02
}
fn d_local() -> usize {
    128
}
fn d_max_pos() -> usize {
    8192
}

/// `config.json` of a ModernBERT model (transformers' key names; other keys kept in `extra`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModernBertConfig {
    #[serde(default)]
    pub model_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "d_act")]
    pub hidden_activation: String,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default)]
    pub norm_bias: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub embedding_dropout: f64,
    #[serde(default)]
    pub mlp_dropout: f64,
    #[serde(default = "d_local")]
    pub local_attention: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_attn_every_n_layers: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_rope_theta: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_rope_theta: Option<f64>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A layer's attention span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    Global,
    /// Within `local_attention / 2` tokens either side.
    Local,
}

impl ModernBertConfig {
    /// Each layer's span: `layer_types`, else every `global_attn_every_n_layers`-th layer
    /// (default 3) global, starting with layer 0.
    pub fn spans(&self) -> Result<Vec<Span>> {
        match &self.layer_types {
            Some(t) => t
                .iter()
                .map(|s| match s.as_str() {
                    "full_attention" => Ok(Span::Global),
                    "sliding_attention" => Ok(Span::Local),
                    other => Err(Error::InvalidConfig(format!(
                        "`layer_types` entry \"{other}\" (full_attention or sliding_attention)"
                    ))),
                })
                .collect(),
            None => {
                let n = self.global_attn_every_n_layers.unwrap_or(3).max(1);
                Ok((0..self.num_hidden_layers)
                    .map(|i| {
                        if i % n == 0 {
                            Span::Global
                        } else {
                            Span::Local
                        }
                    })
                    .collect())
            }
        }
    }

    /// The rotary θ of a span: `rope_parameters[...]["rope_theta"]`, else
    /// `global_rope_theta` / `local_rope_theta`, else transformers' defaults (160,000 / 10,000).
    pub fn theta(&self, span: Span) -> Result<f64> {
        let (key, old, default) = match span {
            Span::Global => ("full_attention", self.global_rope_theta, 160_000.0),
            Span::Local => ("sliding_attention", self.local_rope_theta, 10_000.0),
        };
        if let Some(p) = self.rope_parameters.as_ref().and_then(|r| r.get(key)) {
            if let Some(t) = p.get("rope_type").and_then(|v| v.as_str()) {
                if t != "default" {
                    return Err(Error::InvalidConfig(format!(
                        "`rope_parameters.{key}.rope_type` \"{t}\" is not supported (default)"
                    )));
                }
            }
            if let Some(theta) = p.get("rope_theta").and_then(|v| v.as_f64()) {
                return Ok(theta);
            }
        }
        Ok(old.unwrap_or(default))
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("local_attention", self.local_attention),
        ] {
            if v == 0 {
                return bad(format!("`{k}` must be positive"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 || self.head_dim() % 2 != 0 {
            return bad(format!(
                "`hidden_size` {} must split into `num_attention_heads` {} heads of an even size \
                 (rotary embeddings rotate pairs)",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.spans()?.len() != self.num_hidden_layers {
            return bad(format!(
                "`layer_types` has {} entries for {} layers",
                self.spans()?.len(),
                self.num_hidden_layers
            ));
        }
        for s in [Span::Global, Span::Local] {
            self.theta(s)?;
        }
        if let Some(a) = self
            .extra
            .get("classifier_activation")
            .and_then(|v| v.as_str())
        {
            crate::models::bert::Activation::parse(a).map_err(|_| {
                Error::InvalidConfig(format!(
                    "`classifier_activation` \"{a}\" is not supported (gelu, gelu_new, relu)"
                ))
            })?;
        }
        if let Some(p) = self
            .extra
            .get("classifier_pooling")
            .and_then(|v| v.as_str())
        {
            if p != "cls" && p != "mean" {
                return bad(format!("`classifier_pooling` \"{p}\" (cls or mean)"));
            }
        }
        if self.hidden_activation != "gelu" {
            return bad(format!(
                "`hidden_activation` \"{}\" is not supported (gelu)",
                self.hidden_activation
            ));
        }
        Ok(())
    }
}

fn norm(pb: &ParamBuilder, dim: usize, eps: f64, bias: bool) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: pb.get(&[dim], "weight", Init::Const(1.0))?,
        // No bias: a constant zero (nothing to train).
        bias: if bias {
            pb.get(&[dim], "bias", Init::Const(0.0))?
        } else {
            Tensor::zeros(dim, DType::F32, pb.device())?
        },
        eps,
    })
}

fn linear(pb: &ParamBuilder, i: usize, o: usize, std: f64, bias: bool) -> Result<Linear> {
    Linear::load_with_bias(pb, i, o, std, bias)
}

struct Layer {
    attn_norm: Option<LayerNorm>,
    wqkv: Linear,
    wo: Linear,
    mlp_norm: LayerNorm,
    wi: Linear,
    mlp_wo: Linear,
    span: Span,
}

/// The encoder.
pub struct ModernBert {
    tok_embeddings: Embedding,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    final_norm: LayerNorm,
    config: ModernBertConfig,
}

/// `cat(-x2, x1)` of the halves of the last dimension (transformers' `rotate_half`).
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let (a, b) = (
        x.narrow(D::Minus1, 0, d / 2)?,
        x.narrow(D::Minus1, d / 2, d - d / 2)?,
    );
    Ok(Tensor::cat(&[&b.neg()?, &a], D::Minus1)?)
}

/// cos and sin (T, D) of positions 0..T for rotary θ.
fn rotary(t: usize, d: usize, theta: f64, dev: &Device) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> = (0..d / 2)
        .map(|i| (1.0 / theta.powf((2 * i) as f64 / d as f64)) as f32)
        .collect();
    let inv = Tensor::from_vec(inv, (1, d / 2), dev)?;
    let pos = Tensor::arange(0u32, t as u32, dev)?
        .to_dtype(DType::F32)?
        .unsqueeze(1)?;
    let f = pos.broadcast_mul(&inv)?; // (T, D/2)
    let emb = Tensor::cat(&[&f, &f], 1)?; // (T, D)
    Ok((emb.cos()?, emb.sin()?))
}

impl ModernBert {
    /// Build under checkpoint names (`embeddings.{tok_embeddings, norm}`, `layers.N.{attn_norm,
    /// attn.Wqkv, attn.Wo, mlp_norm, mlp.Wi, mlp.Wo}`, `final_norm`).
    pub fn load(pb: &ParamBuilder, config: &ModernBertConfig) -> Result<Self> {
        config.validate()?;
        let (c, f, std) = (
            config.hidden_size,
            config.intermediate_size,
            config.initializer_range,
        );
        let (eps, nb) = (config.norm_eps, config.norm_bias);
        let spans = config.spans()?;
        let layers = spans
            .iter()
            .enumerate()
            .map(|(i, &span)| {
                let p = pb.pp(format!("layers.{i}"));
                Ok(Layer {
                    attn_norm: if i == 0 {
                        None
                    } else {
                        Some(norm(&p.pp("attn_norm"), c, eps, nb)?)
                    },
                    wqkv: linear(
                        &p.pp("attn").pp("Wqkv"),
                        c,
                        3 * c,
                        std,
                        config.attention_bias,
                    )?,
                    wo: linear(&p.pp("attn").pp("Wo"), c, c, std, config.attention_bias)?,
                    mlp_norm: norm(&p.pp("mlp_norm"), c, eps, nb)?,
                    wi: linear(&p.pp("mlp").pp("Wi"), c, 2 * f, std, config.mlp_bias)?,
                    mlp_wo: linear(&p.pp("mlp").pp("Wo"), f, c, std, config.mlp_bias)?,
                    span,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tok_embeddings: Embedding::load(
                &pb.pp("embeddings").pp("tok_embeddings"),
                config.vocab_size,
                c,
                std,
            )?
            .with_padding_idx(config.pad_token_id),
            embed_norm: norm(&pb.pp("embeddings").pp("norm"), c, eps, nb)?,
            layers,
            final_norm: norm(&pb.pp("final_norm"), c, eps, nb)?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &ModernBertConfig {
        &self.config
    }

    /// One attention block through the fused kernel (`ops::attention`, or
    /// `ops::attention_windowed` for a local layer), rotary positions applied to the query and
    /// key blocks of `Wqkv`'s output in place: no probabilities are formed as a tensor.
    fn attention_fused(
        &self,
        layer: &Layer,
        x: &Tensor,
        pad: &Tensor,
        rope: &(Tensor, Tensor),
        mode: &Mode,
    ) -> Result<Tensor> {
        let h = self.config.num_attention_heads;
        let qkv = layer.wqkv.forward(x)?; // (B, T, 3C): q | k | v, head-major within each
        let qkv = crate::ops::rotary_qkv(&qkv, &rope.0, &rope.1, h)?;
        let dropout = mode.dropout_seed(self.config.attention_dropout);
        let ctx = match layer.span {
            Span::Global => crate::ops::attention(&qkv, pad, h, dropout)?,
            Span::Local => crate::ops::attention_windowed(
                &qkv,
                pad,
                h,
                self.config.local_attention / 2,
                dropout,
            )?,
        };
        mode.dropout(&layer.wo.forward(&ctx)?, self.config.attention_dropout)
    }

    /// One attention block: (output (B, T, C), probabilities (B, H, T, T)).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask: &Tensor,
        rope: &(Tensor, Tensor),
        head_mask: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, c) = x.dims3()?;
        let h = self.config.num_attention_heads;
        let d = c / h;
        let qkv = layer.wqkv.forward(x)?.reshape((b, t, 3, h, d))?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()?) // (B, H, T, D)
        };
        let (cos, sin) = rope;
        let rot = |x: Tensor| -> Result<Tensor> {
            Ok((x.broadcast_mul(cos)? + rotate_half(&x)?.broadcast_mul(sin)?)?)
        };
        let (q, k, v) = (rot(part(0)?)?, rot(part(1)?)?, part(2)?);
        let scores = q.matmul(&k.t()?.contiguous()?)?; // (B, H, T, T)
        let probs = crate::ops::masked_softmax(&scores, mask, 1.0 / (d as f64).sqrt())?;
        let mut dropped = mode.dropout(&probs, self.config.attention_dropout)?;
        if let Some(m) = head_mask {
            dropped = dropped.broadcast_mul(m)?;
        }
        let ctx = dropped
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, c))?;
        let out = mode.dropout(&layer.wo.forward(&ctx)?, self.config.attention_dropout)?;
        Ok((out, probs))
    }

    fn mlp(&self, layer: &Layer, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let f = self.config.intermediate_size;
        let y = layer.wi.forward(x)?;
        let (input, gate) = (y.narrow(D::Minus1, 0, f)?, y.narrow(D::Minus1, f, f)?);
        let g = (crate::ops::gelu_erf(&input)? * gate)?;
        layer
            .mlp_wo
            .forward(&mode.dropout(&g, self.config.mlp_dropout)?)
    }
}

impl Encoder for ModernBert {
    fn word_embeddings(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.tok_embeddings.forward(input_ids)
    }

    fn word_embedding_table(&self) -> &Tensor {
        &self.tok_embeddings.weight
    }

    /// # Shapes
    /// `word_embeds`: (B, T, C) -> last hidden state (B, T, C); no pooler.
    fn forward_from_word_embeddings(
        &self,
        word_embeds: &Tensor,
        input: &EncoderInput,
        mode: &Mode,
    ) -> Result<EncoderOutput> {
        let (b, t) = input.input_ids.dims2()?;
        if input.attention_mask.dims() != [b, t] {
            return Err(Error::Input(format!(
                "attention_mask {:?} does not match input_ids {:?}",
                input.attention_mask.dims(),
                input.input_ids.dims()
            )));
        }
        if t > self.config.max_position_embeddings {
            return Err(Error::Input(format!(
                "input of {t} tokens is longer than the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let dev = word_embeds.device();
        let heads = self.config.num_attention_heads;
        let d = self.config.head_dim();
        let pad = additive_mask(&input.attention_mask)?; // (B, T): 0 or MIN
        let global = pad.clone();
        // Local layers on the unfused path (attentions or probes asked for): a key more than
        // local_attention / 2 tokens away is masked too (one mask row per batch, head and
        // query, as the softmax reads them). The fused kernel applies the window itself.
        let unfused = input.output_attentions || input.probes.is_some();
        let local = if unfused {
            let w = (self.config.local_attention / 2) as i64;
            let band: Vec<f32> = (0..t as i64)
                .flat_map(|i| {
                    (0..t as i64).map(move |j| if (i - j).abs() <= w { 0.0 } else { f32::MIN })
                })
                .collect();
            let band = Tensor::from_vec(band, (1, 1, t, t), dev)?;
            pad.reshape((b, 1, 1, t))?
                .broadcast_minimum(&band)? // either mask: MIN
                .broadcast_as((b, heads, t, t))?
                .contiguous()?
                .reshape((b * heads * t, t))?
        } else {
            pad.clone()
        };
        let rope_g = rotary(t, d, self.config.theta(Span::Global)?, dev)?;
        let rope_l = rotary(t, d, self.config.theta(Span::Local)?, dev)?;

        let probes = input.probes.as_ref();
        let mut h = mode.dropout(
            &self.embed_norm.forward(word_embeds)?,
            self.config.embedding_dropout,
        )?;
        let mut hidden_states = input.output_hidden_states.then(|| vec![h.clone()]);
        let mut attentions = input.output_attentions.then(Vec::new);
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            if probes.is_some_and(|p| p.skips(i)) {
                continue;
            }
            let replaced = probes.and_then(|p| p.replacement(i)).cloned();
            let next = match replaced {
                Some(v) => v,
                None => {
                    let (mask, rope) = match layer.span {
                        Span::Global => (&global, &rope_g),
                        Span::Local => (&local, &rope_l),
                    };
                    let x = match &layer.attn_norm {
                        Some(n) => n.forward(&h)?,
                        None => h.clone(),
                    };
                    let a = if probes.is_none() && attentions.is_none() {
                        self.attention_fused(layer, &x, &global, rope, mode)?
                    } else {
                        let hm = match probes {
                            Some(p) => p.head_row(i)?,
                            None => None,
                        };
                        let (a, probs) =
                            self.attention(layer, &x, mask, rope, hm.as_ref(), mode)?;
                        if let Some(at) = attentions.as_mut() {
                            at.push(probs);
                        }
                        a
                    };
                    let h1 = (&h + a)?;
                    let m = self.mlp(layer, &layer.mlp_norm.forward(&h1)?, mode)?;
                    let out = (h1 + m)?;
                    // The last layer's output is the final-normed one (as transformers'
                    // hidden states have it).
                    if i == last {
                        self.final_norm.forward(&out)?
                    } else {
                        out
                    }
                }
            };
            h = match probes {
                Some(p) => p.tapped(i, next)?,
                None => next,
            };
            if let Some(hs) = hidden_states.as_mut() {
                hs.push(h.clone());
            }
        }
        Ok(EncoderOutput {
            last_hidden_state: h,
            pooler_output: None,
            hidden_states,
            attentions,
            summary_positions: None,
            attention_mask: Some(input.attention_mask.clone()),
        })
    }

    fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    fn layers_and_heads(&self) -> (usize, usize) {
        (self.layers.len(), self.config.num_attention_heads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_config_forms_give_the_same_layers_and_thetas() {
        // The released checkpoints' keys (transformers 4.x).
        let old: ModernBertConfig = serde_json::from_str(
            r#"{"model_type":"modernbert","vocab_size":10,"hidden_size":32,"intermediate_size":48,
                "num_hidden_layers":4,"num_attention_heads":4,"global_attn_every_n_layers":3,
                "global_rope_theta":160000.0,"local_rope_theta":10000.0,"local_attention":128}"#,
        )
        .unwrap();
        // transformers 5's.
        let new: ModernBertConfig = serde_json::from_str(
            r#"{"model_type":"modernbert","vocab_size":10,"hidden_size":32,"intermediate_size":48,
                "num_hidden_layers":4,"num_attention_heads":4,
                "layer_types":["full_attention","sliding_attention","sliding_attention","full_attention"],
                "rope_parameters":{"full_attention":{"rope_type":"default","rope_theta":160000.0},
                                   "sliding_attention":{"rope_type":"default","rope_theta":10000.0}}}"#,
        )
        .unwrap();
        for c in [&old, &new] {
            c.validate().unwrap();
            assert_eq!(
                c.spans().unwrap(),
                [Span::Global, Span::Local, Span::Local, Span::Global]
            );
            assert_eq!(c.theta(Span::Global).unwrap(), 160_000.0);
            assert_eq!(c.theta(Span::Local).unwrap(), 10_000.0);
        }
        // Keys are written back as read.
        let v: serde_json::Value = serde_json::to_value(&old).unwrap();
        assert!(v.get("layer_types").is_none() && v["global_attn_every_n_layers"] == 3);
        let mut bad = new.clone();
        bad.layer_types = Some(vec!["full_attention".into()]);
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("layer_types"), "{e}");
    }
}
