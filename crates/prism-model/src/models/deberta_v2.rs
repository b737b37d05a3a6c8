//! DeBERTa-v2 and DeBERTa-v3 (transformers' `DebertaV2Model`, `model_type = "deberta-v2"`):
//! BERT's post-norm layers with disentangled self-attention. Besides the content score
//! `q_i · k_j`, each attention score has a content→position term `q_i · pk(δ(i, j))` and a
//! position→content term `k_j · pq(δ(j, i))` over a table of relative-position embeddings
//! (`encoder.rel_embeddings`, LayerNorm'd when `norm_rel_ebd = "layer_norm"`), projected by the
//! layer's own key and query projections (`share_att_key`) or by `pos_key_proj` /
//! `pos_query_proj`. The relative distance δ = i − j is log-bucketed beyond
//! `position_buckets / 2` (`make_log_bucket_position`) and clamped to the table. All three terms
//! are scaled by `1 / sqrt(head_dim · (1 + #pos_att_type))`. DeBERTa-v3 has no absolute
//! positions (`position_biased_input = false`) and no token types (`type_vocab_size = 0`).
//!
//! Config keys are read verbatim (`pos_att_type` as a list or as `"p2c|c2p"`), and written back
//! as read. DeBERTa-v2-xlarge's convolution after the first layer (`conv_kernel_size`) is
//! refused with a clear error.

use super::bert::{additive_mask, Activation};
use super::{Encoder, EncoderInput, EncoderOutput};
use crate::error::{Error, Result};
use crate::nn::{Embedding, LayerNorm, Linear, Mode, ParamBuilder};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

fn d_act() -> String {
    "gelu".into()
}
fn d_drop() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-7
}
fn d_init() -> f64 {
    0.02
}
fn d_max_pos() -> usize {
    512
}
fn d_minus_one() -> i64 {
    -1
}
fn d_true() -> bool {
    true
}
fn d_pad() -> Option<u32> {
    Some(0)
}

/// `config.json` of a DeBERTa-v2/v3 model (transformers' `DebertaV2Config` key names and
/// defaults; other keys kept in `extra`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DebertaV2Config {
    #[serde(default)]
    pub model_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_drop")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "d_drop")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub type_vocab_size: usize,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub relative_attention: bool,
    #[serde(default = "d_minus_one")]
    pub max_relative_positions: i64,
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<u32>,
    #[serde(default = "d_true")]
    pub position_biased_input: bool,
    /// `["p2c", "c2p"]` or the older `"p2c|c2p"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos_att_type: Option<serde_json::Value>,
    #[serde(default = "d_minus_one")]
    pub position_buckets: i64,
    #[serde(default)]
    pub share_att_key: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_rel_ebd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attention_head_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv_kernel_size: Option<usize>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Which relative-position terms a layer adds to its content scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PosAtt {
    /// content→position: `q_i · pk(δ(i, j))`.
    pub c2p: bool,
    /// position→content: `k_j · pq(δ(j, i))`.
    pub p2c: bool,
}

impl DebertaV2Config {
    /// `pos_att_type` as flags (transformers lower-cases and splits the string form on `|`).
    pub fn pos_att(&self) -> Result<PosAtt> {
        let names: Vec<String> = match &self.pos_att_type {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => s
                .to_lowercase()
                .split('|')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect(),
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(|s| s.to_string()).ok_or_else(|| {
                        Error::InvalidConfig(format!(
                            "`pos_att_type` entry {v} is not a string (\"c2p\" or \"p2c\")"
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            Some(other) => {
                return Err(Error::InvalidConfig(format!(
                    "`pos_att_type` {other} must be a list of \"c2p\" / \"p2c\" or a string \
                     like \"p2c|c2p\""
                )))
            }
        };
        let mut p = PosAtt::default();
        for n in &names {
            match n.as_str() {
                "c2p" => p.c2p = true,
                "p2c" => p.p2c = true,
                other => {
                    return Err(Error::InvalidConfig(format!(
                        "`pos_att_type` entry \"{other}\" is not supported (c2p, p2c)"
                    )))
                }
            }
        }
        Ok(p)
    }

    /// The range of relative positions: `max_relative_positions`, or `max_position_embeddings`
    /// when below 1.
    pub fn max_relative(&self) -> usize {
        if self.max_relative_positions < 1 {
            self.max_position_embeddings
        } else {
            self.max_relative_positions as usize
        }
    }

    /// Half the relative-embedding table (`att_span`): `position_buckets` when positive, else
    /// [`DebertaV2Config::max_relative`].
    pub fn att_span(&self) -> usize {
        if self.position_buckets > 0 {
            self.position_buckets as usize
        } else {
            self.max_relative()
        }
    }

    pub fn head_dim(&self) -> usize {
        self.attention_head_size
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The embeddings' width: `embedding_size` or `hidden_size`.
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// `norm_rel_ebd` includes `layer_norm`.
    pub fn norm_rel(&self) -> bool {
        self.norm_rel_ebd
            .as_deref()
            .unwrap_or("none")
            .to_lowercase()
            .split('|')
            .any(|x| x.trim() == "layer_norm")
    }

    /// The pooler's width (`pooler_hidden_size`, transformers' default `hidden_size`).
    pub fn pooler_hidden_size(&self) -> usize {
        self.extra
            .get("pooler_hidden_size")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .unwrap_or(self.hidden_size)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("`{k}` must be positive"));
            }
        }
        if self.attention_head_size.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.attention_head_size == Some(0) || self.embedding_size == Some(0) {
            return bad("`attention_head_size` and `embedding_size` must be positive".into());
        }
        for (k, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return bad(format!("`{k}` {p} must be in [0, 1)"));
            }
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return bad(format!(
                "`layer_norm_eps` {} must be positive",
                self.layer_norm_eps
            ));
        }
        Activation::parse(&self.hidden_act)?;
        if let Some(a) = self.extra.get("pooler_hidden_act") {
            let a = a.as_str().unwrap_or("");
            if !matches!(a, "gelu" | "tanh" | "relu") {
                return bad(format!(
                    "`pooler_hidden_act` \"{a}\" is not supported (gelu, tanh, relu)"
                ));
            }
        }
        if self.pooler_hidden_size() != self.hidden_size {
            return bad(format!(
                "`pooler_hidden_size` {} differs from `hidden_size` {} (transformers' \
                 classifier reads a vector of the hidden size)",
                self.pooler_hidden_size(),
                self.hidden_size
            ));
        }
        let pos = self.pos_att()?;
        if self.relative_attention && self.position_buckets > 0 {
            let mid = self.position_buckets / 2;
            if mid < 2 || (self.max_relative() as i64 - 1) <= mid {
                return bad(format!(
                    "`position_buckets` {} needs `max_relative_positions` {} above half of it \
                     plus one (log buckets span mid..max)",
                    self.position_buckets,
                    self.max_relative()
                ));
            }
        }
        if !self.relative_attention && (pos.c2p || pos.p2c) && self.norm_rel() {
            return bad("`norm_rel_ebd` applies only with `relative_attention`".into());
        }
        if let Some(k) = self.conv_kernel_size.filter(|k| *k > 0) {
            return bad(format!(
                "`conv_kernel_size` {k}: DeBERTa-v2's convolution layer (the xlarge and xxlarge \
                 checkpoints) is not supported; DeBERTa-v3 and v2-base have none"
            ));
        }
        Ok(())
    }
}

/// transformers' `make_log_bucket_position`, element-wise and in f32 as torch computes it:
/// distances within `bucket_size / 2` are kept, farther ones are log-spaced up to
/// `max_position`.
pub fn log_bucket(rel: i64, bucket_size: i64, max_position: i64) -> i64 {
    let mid = bucket_size / 2;
    let sign = rel.signum();
    let abs = if rel < mid && rel > -mid {
        mid - 1
    } else {
        rel.abs()
    };
    if abs <= mid {
        return rel;
    }
    let denom = (((max_position - 1) as f64 / mid as f64) as f32).ln();
    let log_pos = ((abs as f32 / mid as f32).ln() / denom * (mid - 1) as f32).ceil() + mid as f32;
    (log_pos * sign as f32) as i64
}

/// transformers' `build_relative_position` for T queries and keys: δ(i, j) = i − j, bucketed
/// when `bucket_size` and `max_position` are positive. Row-major (T, T).
pub fn relative_positions(t: usize, bucket_size: i64, max_position: i64) -> Vec<i64> {
    let bucketed = bucket_size > 0 && max_position > 0;
    (0..t as i64)
        .flat_map(|i| {
            (0..t as i64).map(move |j| {
                let r = i - j;
                if bucketed {
                    log_bucket(r, bucket_size, max_position)
                } else {
                    r
                }
            })
        })
        .collect()
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    pos_key: Option<Linear>,
    pos_query: Option<Linear>,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// The encoder.
pub struct DebertaV2 {
    word: Embedding,
    position: Option<Embedding>,
    token_type: Option<Embedding>,
    embed_proj: Option<Linear>,
    embed_norm: LayerNorm,
    rel_embeddings: Option<Tensor>,
    rel_norm: Option<LayerNorm>,
    layers: Vec<Layer>,
    act: Activation,
    pos_att: PosAtt,
    config: DebertaV2Config,
}

/// The relative positions of one forward pass: the rows of the (normed) relative table that
/// the two position terms read, and their row indices, T·T each: `clamp(δ + span, 0,
/// 2 span − 1)` (content→position) and `clamp(−δ + span, …)` (position→content), less the
/// first row read. Only these rows are projected (T tokens reach at most 2T − 1 of them).
struct RelPos {
    /// (R, C)
    table: Tensor,
    c2p: Arc<Vec<u32>>,
    p2c: Arc<Vec<u32>>,
}

impl RelPos {
    fn new(table: &Tensor, deltas: &[i64], span: usize) -> Result<Self> {
        let s = span as i64;
        let clamp = |x: i64| x.clamp(0, 2 * s - 1) as u32;
        let c2p: Vec<u32> = deltas.iter().map(|&r| clamp(r + s)).collect();
        let p2c: Vec<u32> = deltas.iter().map(|&r| clamp(-r + s)).collect();
        let lo = c2p.iter().chain(&p2c).copied().min().unwrap_or(0);
        let hi = c2p.iter().chain(&p2c).copied().max().unwrap_or(0);
        let shift = |v: Vec<u32>| Arc::new(v.into_iter().map(|i| i - lo).collect::<Vec<_>>());
        Ok(Self {
            table: table.narrow(0, lo as usize, (hi - lo + 1) as usize)?,
            c2p: shift(c2p),
            p2c: shift(p2c),
        })
    }

    /// One index set as a (B, H, T, T) gather index.
    fn gather_index(v: &[u32], b: usize, h: usize, t: usize, dev: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(v, (1, 1, t, t), dev)?
            .broadcast_as((b, h, t, t))?
            .contiguous()?)
    }
}

impl DebertaV2 {
    /// Build under checkpoint names (`embeddings.{word_embeddings, position_embeddings,
    /// token_type_embeddings, embed_proj, LayerNorm}`, `encoder.layer.N.attention.self.{
    /// query_proj, key_proj, value_proj, pos_key_proj, pos_query_proj}`,
    /// `encoder.layer.N.attention.output.{dense, LayerNorm}`, `encoder.layer.N.{intermediate,
    /// output}.dense`, `encoder.layer.N.output.LayerNorm`, `encoder.rel_embeddings`,
    /// `encoder.LayerNorm`).
    pub fn load(pb: &ParamBuilder, config: &DebertaV2Config) -> Result<Self> {
        config.validate()?;
        let (c, f, std, eps) = (
            config.hidden_size,
            config.intermediate_size,
            config.initializer_range,
            config.layer_norm_eps,
        );
        let e = config.embedding_width();
        let all = config.num_attention_heads * config.head_dim();
        let pos_att = config.pos_att()?;
        let rel = config.relative_attention;
        let emb = pb.pp("embeddings");
        let enc = pb.pp("encoder");
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let p = enc.pp(format!("layer.{i}"));
                let a = p.pp("attention");
                let s = a.pp("self");
                Ok(Layer {
                    query: Linear::load(&s.pp("query_proj"), c, all, std)?,
                    key: Linear::load(&s.pp("key_proj"), c, all, std)?,
                    value: Linear::load(&s.pp("value_proj"), c, all, std)?,
                    pos_key: if rel && !config.share_att_key && pos_att.c2p {
                        Some(Linear::load(&s.pp("pos_key_proj"), c, all, std)?)
                    } else {
                        None
                    },
                    pos_query: if rel && !config.share_att_key && pos_att.p2c {
                        Some(Linear::load(&s.pp("pos_query_proj"), c, all, std)?)
                    } else {
                        None
                    },
                    attn_out: Linear::load(&a.pp("output").pp("dense"), all, c, std)?,
                    attn_norm: LayerNorm::load(&a.pp("output").pp("LayerNorm"), c, eps)?,
                    intermediate: Linear::load(&p.pp("intermediate").pp("dense"), c, f, std)?,
                    output: Linear::load(&p.pp("output").pp("dense"), f, c, std)?,
                    out_norm: LayerNorm::load(&p.pp("output").pp("LayerNorm"), c, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let rel_embeddings = if rel {
            Some(enc.pp("rel_embeddings").get(
                &[2 * config.att_span(), c],
                "weight",
                crate::nn::Init::Normal(std),
            )?)
        } else {
            None
        };
        Ok(Self {
            word: Embedding::load(&emb.pp("word_embeddings"), config.vocab_size, e, std)?
                .with_padding_idx(config.pad_token_id),
            position: if config.position_biased_input {
                Some(Embedding::load(
                    &emb.pp("position_embeddings"),
                    config.max_position_embeddings,
                    e,
                    std,
                )?)
            } else {
                None
            },
            token_type: if config.type_vocab_size > 0 {
                Some(Embedding::load(
                    &emb.pp("token_type_embeddings"),
                    config.type_vocab_size,
                    e,
                    std,
                )?)
            } else {
                None
            },
            embed_proj: if e != c {
                Some(Linear::load_with_bias(
                    &emb.pp("embed_proj"),
                    e,
                    c,
                    std,
                    false,
                )?)
            } else {
                None
            },
            embed_norm: LayerNorm::load(&emb.pp("LayerNorm"), c, eps)?,
            rel_norm: if rel && config.norm_rel() {
                Some(LayerNorm::load(&enc.pp("LayerNorm"), c, eps)?)
            } else {
                None
            },
            rel_embeddings,
            layers,
            act: Activation::parse(&config.hidden_act)?,
            pos_att,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &DebertaV2Config {
        &self.config
    }

    /// `(B, T, H·D)` -> `(B, H, T, D)`.
    fn heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, d) = (self.config.num_attention_heads, self.config.head_dim());
        Ok(x.reshape((b, t, h, d))?.transpose(1, 2)?.contiguous()?)
    }

    /// One disentangled attention block before its output projection: (context (B, T, H·D),
    /// probabilities (B, H, T, T)).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        x: &Tensor,
        mask: &Tensor,
        query_keep: &Tensor,
        rel: Option<&RelPos>,
        keep: &Tensor,
        head_mask: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let (h, d) = (self.config.num_attention_heads, self.config.head_dim());
        let q = self.heads(&layer.query.forward(x)?)?;
        let k = self.heads(&layer.key.forward(x)?)?;
        let v = self.heads(&layer.value.forward(x)?)?;
        let factor = 1 + self.pos_att.c2p as usize + self.pos_att.p2c as usize;
        let mut scores = q.matmul(&k.t()?.contiguous()?)?; // (B, H, T, T)
        if let Some(rel) = rel {
            // The table goes through dropout in every layer (transformers' `pos_dropout`).
            // Only the rows the positions reach are here (dropout is element-wise: the same
            // computation on them).
            let table = mode.dropout(&rel.table, self.config.hidden_dropout_prob)?; // (R, C)
            let rows = table.dim(0)?;
            let project = |l: &Linear| -> Result<Tensor> {
                // (R, H·D) -> (1, H, D, R) for q · pkᵀ.
                Ok(l.forward(&table)?
                    .reshape((rows, h, d))?
                    .permute((1, 2, 0))?
                    .contiguous()?
                    .unsqueeze(0)?)
            };
            let c2p = match self.pos_att.c2p {
                true => {
                    let pk = project(layer.pos_key.as_ref().unwrap_or(&layer.key))?;
                    Some(q.broadcast_matmul(&pk)?) // (B, H, T, R)
                }
                false => None,
            };
            let p2c = match self.pos_att.p2c {
                true => {
                    let pq = project(layer.pos_query.as_ref().unwrap_or(&layer.query))?;
                    Some(k.broadcast_matmul(&pq)?) // (B, H, T, R): key j, position
                }
                false => None,
            };
            // A padded query's row is fully masked: transformers' masked_fill makes it uniform
            // and passes no gradient to its scores; zeroing the row's scores does both here.
            scores = match (c2p, p2c) {
                // Both terms (DeBERTa-v2/v3's configuration): one fused pass.
                (Some(c), Some(p)) => crate::ops::disentangled_scores(
                    &scores,
                    &c,
                    &p,
                    rel.c2p.clone(),
                    rel.p2c.clone(),
                    keep,
                )?,
                (c, p) => {
                    let dev = x.device();
                    if let Some(c) = c {
                        let i = RelPos::gather_index(&rel.c2p, b, h, t, dev)?;
                        scores = (scores + c.gather(&i, 3)?)?;
                    }
                    if let Some(p) = p {
                        let i = RelPos::gather_index(&rel.p2c, b, h, t, dev)?;
                        scores = (scores + p.gather(&i, 3)?.transpose(2, 3)?)?;
                    }
                    scores.broadcast_mul(query_keep)?
                }
            };
        } else {
            scores = scores.broadcast_mul(query_keep)?;
        }
        let scale = 1.0 / ((d * factor) as f64).sqrt();
        let probs = crate::ops::masked_softmax(&scores, mask, scale)?;
        let mut dropped = mode.dropout(&probs, self.config.attention_probs_dropout_prob)?;
        if let Some(m) = head_mask {
            dropped = dropped.broadcast_mul(m)?;
        }
        let ctx = dropped
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, h * d))?;
        Ok((ctx, probs))
    }
}

impl Encoder for DebertaV2 {
    fn word_embeddings(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.word.forward(input_ids)
    }

    fn word_embedding_table(&self) -> &Tensor {
        &self.word.weight
    }

    /// # Shapes
    /// `word_embeds`: (B, T, E) -> last hidden state (B, T, C); no pooler (the sequence head's
    /// `ContextPooler` is part of the head).
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
        if self.position.is_some() && t > self.config.max_position_embeddings {
            return Err(Error::Input(format!(
                "input of {t} tokens is longer than the model's {} positions",
                self.config.max_position_embeddings
            )));
        }
        let dev = word_embeds.device();
        let heads = self.config.num_attention_heads;
        // -- embeddings
        let mut e = word_embeds.clone();
        if let Some(p) = &self.position {
            let ids = Tensor::arange(0u32, t as u32, dev)?.unsqueeze(0)?;
            e = e.broadcast_add(&p.forward(&ids)?)?;
        }
        if let Some(tt) = &self.token_type {
            let ids = match &input.token_type_ids {
                Some(x) => x.clone(),
                None => Tensor::zeros((b, t), DType::U32, dev)?,
            };
            e = (e + tt.forward(&ids)?)?;
        }
        if let Some(p) = &self.embed_proj {
            e = p.forward(&e)?;
        }
        let keep = input.attention_mask.to_dtype(DType::F32)?; // (B, T)
        let e = self
            .embed_norm
            .forward(&e)?
            .broadcast_mul(&keep.unsqueeze(2)?)?;
        let mut h = mode.dropout(&e, self.config.hidden_dropout_prob)?;
        // -- masks: transformers masks query i / key j unless both are real tokens; a padded
        // query row is then uniform over every key, as masked_fill + softmax gives.
        let pad = additive_mask(&input.attention_mask)?; // (B, T): 0 or MIN
        let mask = pad
            .reshape((b, 1, 1, t))?
            .broadcast_minimum(&pad.reshape((b, 1, t, 1))?)?
            .broadcast_as((b, heads, t, t))?
            .contiguous()?
            .reshape((b * heads * t, t))?;
        let query_keep = keep.reshape((b, 1, t, 1))?;
        // -- relative positions
        let rel = match &self.rel_embeddings {
            Some(table) => {
                let table = match &self.rel_norm {
                    Some(n) => n.forward(table)?,
                    None => table.clone(),
                };
                let deltas = relative_positions(
                    t,
                    self.config.position_buckets,
                    self.config.max_relative() as i64,
                );
                Some(RelPos::new(&table, &deltas, self.config.att_span())?)
            }
            None => None,
        };

        let probes = input.probes.as_ref();
        let mut hidden_states = input.output_hidden_states.then(|| vec![h.clone()]);
        let mut attentions = input.output_attentions.then(Vec::new);
        let p = self.config.hidden_dropout_prob;
        for (i, layer) in self.layers.iter().enumerate() {
            if probes.is_some_and(|pr| pr.skips(i)) {
                continue;
            }
            let replaced = probes.and_then(|pr| pr.replacement(i)).cloned();
            let next = match replaced {
                Some(v) => v,
                None => {
                    let hm = match probes {
                        Some(pr) => pr.head_row(i)?,
                        None => None,
                    };
                    let (ctx, probs) = self.attention(
                        layer,
                        &h,
                        &mask,
                        &query_keep,
                        rel.as_ref(),
                        &keep,
                        hm.as_ref(),
                        mode,
                    )?;
                    if let Some(at) = attentions.as_mut() {
                        at.push(probs);
                    }
                    let a = layer.attn_norm.forward(&mode.dropout_add(
                        &layer.attn_out.forward(&ctx)?,
                        &h,
                        p,
                    )?)?;
                    let m = self.act.after_linear(&layer.intermediate, &a)?;
                    layer.out_norm.forward(&mode.dropout_add(
                        &layer.output.forward(&m)?,
                        &a,
                        p,
                    )?)?
                }
            };
            h = match probes {
                Some(pr) => pr.tapped(i, next)?,
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
    fn log_buckets_match_transformers() {
        // torch: make_log_bucket_position(torch.arange(-20, 21), 8, 32).
        let got: Vec<i64> = (-20..=20).map(|r| log_bucket(r, 8, 32)).collect();
        let want: Vec<i64> = vec![
            -7, -7, -7, -7, -7, -6, -6, -6, -6, -6, -6, -6, -6, -5, -5, -5, -4, -3, -2, -1, 0, 1,
            2, 3, 4, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7,
        ];
        assert_eq!(got, want);
        // DeBERTa-v3's 256 buckets over 512 positions, every 37th distance of -600..=600.
        let got: Vec<i64> = (-600..=600)
            .step_by(37)
            .map(|r| log_bucket(r, 256, 512))
            .collect();
        let want: Vec<i64> = vec![
            -270, -264, -258, -251, -244, -236, -228, -218, -208, -196, -182, -166, -147, -119,
            -82, -45, -8, 29, 66, 103, 137, 158, 176, 190, 203, 214, 224, 233, 241, 248, 255, 262,
            268,
        ];
        assert_eq!(got, want);
        // Within mid the distance is kept.
        assert_eq!(log_bucket(3, 256, 512), 3);
        assert_eq!(log_bucket(-128, 256, 512), -128);
    }

    #[test]
    fn pos_att_type_reads_both_forms() {
        let mut c: DebertaV2Config = serde_json::from_str(
            r#"{"model_type":"deberta-v2","vocab_size":10,"hidden_size":32,
                "num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":37,
                "relative_attention":true,"pos_att_type":"p2c|c2p"}"#,
        )
        .unwrap();
        assert_eq!(
            c.pos_att().unwrap(),
            PosAtt {
                c2p: true,
                p2c: true
            }
        );
        c.pos_att_type = Some(serde_json::json!(["c2p"]));
        assert_eq!(
            c.pos_att().unwrap(),
            PosAtt {
                c2p: true,
                p2c: false
            }
        );
        c.validate().unwrap();
        c.pos_att_type = Some(serde_json::json!(["p2p"]));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("pos_att_type") && e.contains("p2p"), "{e}");
        c.pos_att_type = None;
        c.conv_kernel_size = Some(3);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("conv_kernel_size"), "{e}");
    }
}
