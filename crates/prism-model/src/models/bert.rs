//! BERT (Devlin et al. 2019) and RoBERTa (Liu et al. 2019), mirroring transformers'
//! `BertModel` / `RobertaModel`: post-LayerNorm blocks, exact erf GELU, additive attention mask,
//! token-type embeddings and a tanh pooler. RoBERTa differs only in its embeddings: position ids
//! count from `pad_token_id + 1` and skip padding.

use super::{Encoder, EncoderInput, EncoderOutput};
use crate::error::{Error, Result};
use crate::nn::{Embedding, LayerNorm, Linear, Mode, ParamBuilder};
use crate::ops;
use crate::ops::bf16::PackedWeight;
use crate::recompute;
use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init_range() -> f64 {
    0.02
}
fn default_pos_type() -> String {
    "absolute".into()
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}

/// `config.json` of a BERT or RoBERTa model, with transformers' key names. Keys prism does not
/// use are kept in `extra` and written back unchanged.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    #[serde(default)]
    pub model_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    /// ELECTRA: the width of the embeddings when it is not `hidden_size`; they are then
    /// projected to `hidden_size` (`embeddings_project`, transformers' `ElectraModel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The two embedding conventions this file implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Bert,
    Roberta,
}

impl BertConfig {
    pub fn flavor(&self) -> Flavor {
        match self.model_type.as_str() {
            "roberta" | "xlm-roberta" | "camembert" => Flavor::Roberta,
            _ => Flavor::Bert,
        }
    }

    /// The embeddings' width: `embedding_size` (ELECTRA) or `hidden_size`.
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// ELECTRA's encoder is BERT's (transformers copies `BertLayer`), with its embeddings
    /// projected to the hidden size when narrower and no pooler.
    pub fn is_electra(&self) -> bool {
        self.model_type == "electra"
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Check the sizes before anything is allocated.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            // DistilBERT has no token types.
            (
                "type_vocab_size",
                self.type_vocab_size
                    .max((self.model_type == "distilbert") as usize),
            ),
            ("embedding_size", self.embedding_width()),
        ] {
            if v == 0 {
                return bad(format!("`{k}` must be positive"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "`hidden_size` {} is not divisible by `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
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
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "`position_embedding_type` \"{}\" is not supported (only \"absolute\")",
                self.position_embedding_type
            ));
        }
        Activation::parse(&self.hidden_act)?;
        if self.flavor() == Flavor::Roberta {
            let pad = self.pad_token_id.unwrap_or(1) as usize;
            if pad + 2 > self.max_position_embeddings {
                return bad(format!(
                    "RoBERTa positions start at pad_token_id + 1 = {} but `max_position_embeddings` is {}",
                    pad + 1,
                    self.max_position_embeddings
                ));
            }
        }
        Ok(())
    }

    /// The longest input, in tokens, that the position table allows.
    pub fn max_tokens(&self) -> usize {
        match self.flavor() {
            Flavor::Bert => self.max_position_embeddings,
            Flavor::Roberta => {
                self.max_position_embeddings - self.pad_token_id.unwrap_or(1) as usize - 1
            }
        }
    }
}

/// The feed-forward non-linearity named by `hidden_act`.
#[derive(Clone, Copy, Debug)]
pub enum Activation {
    /// Exact `x * Phi(x)`.
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            other => Err(Error::InvalidConfig(format!(
                "`hidden_act` \"{other}\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)"
            ))),
        }
    }

    /// `act(linear(x))`; with the exact GELU one fused op: in bf16 inference an AMX pass whose
    /// epilogue applies the GELU to each block while it is in cache, else [`ops::linear_gelu`]
    /// (bias and GELU in one pass over the GEMM's output, forward and backward).
    pub fn after_linear(&self, linear: &Linear, x: &Tensor) -> Result<Tensor> {
        if let Self::Gelu = self {
            let b = linear.bias.as_ref();
            if let Some(p) = &linear.packed {
                if ops::bf16::applies_to(x) {
                    return Ok(ops::bf16::linear_then(x, p, b, ops::bf16::Epilogue::Gelu)?);
                }
            }
            if let (Some(b), true) = (b, x.rank() > 0) {
                let wt = linear.transposed.as_ref();
                return Ok(ops::linear_gelu(x, &linear.weight, wt, b)?);
            }
        }
        self.forward(&linear.forward(x)?)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu => ops::gelu_erf(x)?,
            Self::GeluTanh => x.gelu()?,
            Self::Relu => x.relu()?,
        })
    }
}

struct Embeddings {
    word: Embedding,
    position: Embedding,
    /// None for DistilBERT (no token types).
    token_type: Option<Embedding>,
    norm: LayerNorm,
    dropout: f64,
    flavor: Flavor,
    pad: u32,
}

impl Embeddings {
    fn load(pb: &ParamBuilder, cfg: &BertConfig) -> Result<Self> {
        let std = cfg.initializer_range;
        // transformers gives word embeddings `padding_idx = pad_token_id`, and RoBERTa's
        // position embeddings the same padding index.
        let pad = cfg.pad_token_id;
        let pos_pad = if cfg.flavor() == Flavor::Roberta {
            Some(pad.unwrap_or(1))
        } else {
            None
        };
        Ok(Self {
            word: Embedding::load(
                &pb.pp("word_embeddings"),
                cfg.vocab_size,
                cfg.embedding_width(),
                std,
            )?
            .with_padding_idx(pad),
            position: Embedding::load(
                &pb.pp("position_embeddings"),
                cfg.max_position_embeddings,
                cfg.embedding_width(),
                std,
            )?
            .with_padding_idx(pos_pad),
            token_type: if cfg.type_vocab_size == 0 {
                None
            } else {
                Some(Embedding::load(
                    &pb.pp("token_type_embeddings"),
                    cfg.type_vocab_size,
                    cfg.embedding_width(),
                    std,
                )?)
            },
            norm: LayerNorm::load(
                &pb.pp("LayerNorm"),
                cfg.embedding_width(),
                cfg.layer_norm_eps,
            )?,
            dropout: cfg.hidden_dropout_prob,
            flavor: cfg.flavor(),
            pad: cfg.pad_token_id.unwrap_or(match cfg.flavor() {
                Flavor::Roberta => 1,
                Flavor::Bert => 0,
            }),
        })
    }

    /// Position ids: 0..T for BERT; for RoBERTa, transformers'
    /// `create_position_ids_from_input_ids`: `cumsum(id != pad) * (id != pad) + pad`.
    fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        let dev = input_ids.device();
        match self.flavor {
            Flavor::Bert => Ok(Tensor::arange(0u32, t as u32, dev)?
                .unsqueeze(0)?
                .broadcast_as((b, t))?
                .contiguous()?),
            Flavor::Roberta => {
                let ids = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
                let mut pos = Vec::with_capacity(b * t);
                for row in ids {
                    let mut count = 0u32;
                    for id in row {
                        if id != self.pad {
                            count += 1;
                            pos.push(count + self.pad);
                        } else {
                            pos.push(self.pad);
                        }
                    }
                }
                Ok(Tensor::from_vec(pos, (b, t), dev)?)
            }
        }
    }

    fn forward(&self, word: &Tensor, input: &EncoderInput, mode: &Mode) -> Result<Tensor> {
        let (b, t, _) = word.dims3()?;
        let max = self.position.weight.dim(0)?;
        let pos = self.position_ids(&input.input_ids)?; // (B, T)
        let last = pos
            .max_keepdim(1)?
            .max(0)?
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        if last.first().is_some_and(|&m| m as usize >= max) {
            return Err(Error::Input(format!(
                "input of {t} tokens is longer than the model's position table allows ({max} positions)"
            )));
        }
        let mut e = word.broadcast_add(&self.position.forward(&pos)?)?; // (B, T, C)
        if let Some(token_type) = &self.token_type {
            let types = match &input.token_type_ids {
                Some(tt) => tt.to_dtype(DType::U32)?,
                None => Tensor::zeros((b, t), DType::U32, word.device())?,
            };
            e = e.broadcast_add(&token_type.forward(&types)?)?;
        }
        let e = self.norm.forward(&e)?;
        mode.dropout(&e, self.dropout)
    }
}

struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    /// The three projections packed side by side for bf16 AMX inference.
    qkv_packed: Option<Arc<PackedWeight>>,
    /// Frozen models: the three projections concatenated once (the weights do not change, so
    /// neither the concatenation nor its transpose is redone on every call).
    qkv_frozen: Option<Linear>,
    out: Linear,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    attn_dropout: f64,
    hidden_dropout: f64,
}

impl SelfAttention {
    fn load(pb: &ParamBuilder, cfg: &BertConfig) -> Result<Self> {
        let (c, std) = (cfg.hidden_size, cfg.initializer_range);
        let s = pb.pp("self");
        let o = pb.pp("output");
        let (query, key, value) = (
            Linear::load_unpacked(&s.pp("query"), c, c, std)?,
            Linear::load_unpacked(&s.pp("key"), c, c, std)?,
            Linear::load_unpacked(&s.pp("value"), c, c, std)?,
        );
        // bf16 inference: one packed (3C, C) weight for the fused projection.
        let qkv_packed = if pb.store().bf16() {
            let w = Tensor::cat(&[&query.weight, &key.weight, &value.weight], 0)?;
            Some(Arc::new(PackedWeight::from_tensor(&w)?))
        } else {
            None
        };
        let qkv_frozen = match [&query, &key, &value].map(|l| l.bias.as_ref()) {
            [Some(qb), Some(kb), Some(vb)] if pb.store().is_frozen() && !pb.store().bf16() => {
                let w = Tensor::cat(&[&query.weight, &key.weight, &value.weight], 0)?;
                let b = Tensor::cat(&[qb, kb, vb], 0)?;
                Some(Linear::frozen_from(w, Some(b), pb.store())?)
            }
            _ => None,
        };
        Ok(Self {
            query,
            key,
            value,
            qkv_packed,
            qkv_frozen,
            out: Linear::load(&o.pp("dense"), c, c, std)?,
            norm: LayerNorm::load(&o.pp("LayerNorm"), c, cfg.layer_norm_eps)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            attn_dropout: cfg.attention_probs_dropout_prob,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }

    /// Query, key and value side by side, (B, T, 3C), from one GEMM against the three
    /// projections concatenated (the weights stay separate parameters, as in checkpoints; the
    /// concatenation's backward splits their gradients again).
    fn qkv(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(l) = &self.qkv_frozen {
            return l.forward(x);
        }
        let layers = [&self.query, &self.key, &self.value];
        let b = match layers.map(|l| l.bias.as_ref()) {
            [Some(q), Some(k), Some(v)] => Some(Tensor::cat(&[q, k, v], 0)?),
            [None, None, None] => None,
            _ => {
                return Err(Error::Input(
                    "attention: query, key and value must all have a bias or none".into(),
                ))
            }
        };
        if let Some(p) = &self.qkv_packed {
            if ops::bf16::applies_to(x) {
                return Ok(ops::bf16::linear(x, p, b.as_ref())?);
            }
        }
        let w = Tensor::cat(&layers.map(|l| &l.weight), 0)?;
        Ok(ops::linear(x, &w, b.as_ref())?)
    }

    /// Returns the block output (B, T, C) and, when `probs` is asked for, the attention
    /// probabilities (B, H, T, T); otherwise attention runs as one fused kernel.
    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mode: &Mode,
        probs: bool,
        head_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if !probs && head_mask.is_none() {
            let ctx = ops::attention(
                &self.qkv(x)?,
                mask,
                self.heads,
                mode.dropout_seed(self.attn_dropout),
            )?; // (B, T, C)
            let h = mode.dropout_add(&self.out.forward(&ctx)?, x, self.hidden_dropout)?;
            return Ok((self.norm.forward(&h)?, None));
        }
        let (b, t, c) = x.dims3()?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?) // (B, H, T, D)
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scores = q.matmul(&k.t()?)?; // (B, H, T, T)
        let probs = ops::masked_softmax(&scores, mask, 1.0 / (self.head_dim as f64).sqrt())?;
        let mut dropped = mode.dropout(&probs, self.attn_dropout)?;
        if let Some(m) = head_mask {
            dropped = dropped.broadcast_mul(m)?; // (1, H, 1, 1)
        }
        let ctx = dropped.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?; // (B, T, C)
        let h = mode.dropout_add(&self.out.forward(&ctx)?, x, self.hidden_dropout)?;
        Ok((self.norm.forward(&h)?, Some(probs)))
    }
}

struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    norm: LayerNorm,
    act: Activation,
    dropout: f64,
}

impl Layer {
    fn load(pb: &ParamBuilder, cfg: &BertConfig) -> Result<Self> {
        let (c, f, std) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.initializer_range,
        );
        Ok(Self {
            attention: SelfAttention::load(&pb.pp("attention"), cfg)?,
            intermediate: Linear::load(&pb.pp("intermediate").pp("dense"), c, f, std)?,
            output: Linear::load(&pb.pp("output").pp("dense"), f, c, std)?,
            norm: LayerNorm::load(&pb.pp("output").pp("LayerNorm"), c, cfg.layer_norm_eps)?,
            act: Activation::parse(&cfg.hidden_act)?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mode: &Mode,
        probs: bool,
        head_mask: Option<&Tensor>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (a, probs) = self.attention.forward(x, mask, mode, probs, head_mask)?;
        Ok((self.feed_forward(&a, mode)?, probs))
    }

    /// The feed-forward block with its residual connection and layer norm: (..., C) -> (..., C).
    fn feed_forward(&self, a: &Tensor, mode: &Mode) -> Result<Tensor> {
        let h = self.intermediate_act(a)?; // (..., F)
        let h = mode.dropout_add(&self.output.forward(&h)?, a, self.dropout)?;
        self.norm.forward(&h)
    }

    /// `act(intermediate(a))`, fused where it can be ([`Activation::after_linear`]).
    fn intermediate_act(&self, a: &Tensor) -> Result<Tensor> {
        self.act.after_linear(&self.intermediate, a)
    }

    /// The layer's output at position 0 only, (B, 1, C): keys and values come from every
    /// token, but the query, attention, output projection and feed-forward block run for the
    /// first token alone (a sequence head's [CLS] or `<s>`).
    fn forward_first_token(&self, x: &Tensor, mask: &Tensor, mode: &Mode) -> Result<Tensor> {
        let att = &self.attention;
        let qkv = att.qkv(x)?; // (B, T, 3C)
                               // One fused op for the single query row; its backward writes the (B, T, 3C) gradient.
        let dropout = mode.dropout_seed(att.attn_dropout);
        let ctx = ops::attention_queries(&qkv, mask, att.heads, 1, dropout)?; // (B, 1, C)
        let h = mode.dropout_add(
            &att.out.forward(&ctx)?,
            &x.narrow(1, 0, 1)?,
            att.hidden_dropout,
        )?;
        let a = att.norm.forward(&h)?;
        self.feed_forward(&a, mode)
    }
}

/// A BERT or RoBERTa encoder with its (optional) pooler.
pub struct Bert {
    embeddings: Embeddings,
    /// ELECTRA's `embeddings_project` (embedding width -> hidden size), when they differ.
    project: Option<Linear>,
    layers: Vec<Arc<Layer>>,
    pooler: Option<Linear>,
    config: BertConfig,
}

impl Bert {
    /// Build the encoder under checkpoint key names (`embeddings.*`, `encoder.layer.N.*`,
    /// `pooler.dense.*`). When loading a checkpoint that has no pooler, the model has none.
    pub fn load(pb: &ParamBuilder, config: &BertConfig) -> Result<Self> {
        config.validate()?;
        let embeddings = Embeddings::load(&pb.pp("embeddings"), config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(&pb.pp(format!("encoder.layer.{i}")), config).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        // ELECTRA's embeddings, when narrower than the layers, are projected up.
        let project = if config.embedding_width() != config.hidden_size {
            Some(Linear::load(
                &pb.pp("embeddings_project"),
                config.embedding_width(),
                config.hidden_size,
                config.initializer_range,
            )?)
        } else {
            None
        };
        // ELECTRA and DistilBERT have no pooler (their heads read the first token).
        let fresh_pooler =
            pb.is_fresh() && !config.is_electra() && config.model_type != "distilbert";
        let pooler = if fresh_pooler || pb.source_has("pooler.dense.weight") {
            Some(Linear::load(
                &pb.pp("pooler.dense"),
                config.hidden_size,
                config.hidden_size,
                config.initializer_range,
            )?)
        } else {
            None
        };
        Ok(Self {
            embeddings,
            project,
            layers,
            pooler,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    pub fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }
}

/// transformers' extended attention mask: 0 where attended, the dtype's minimum where padded.
///
/// # Shapes
/// (B, T) -> (B, T) f32
pub fn additive_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let m = attention_mask.to_dtype(DType::F32)?;
    Ok(((1.0 - m)? * f32::MIN as f64)?)
}

impl Encoder for Bert {
    fn word_embeddings(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.embeddings.word.forward(input_ids)
    }

    fn word_embedding_table(&self) -> &Tensor {
        &self.embeddings.word.weight
    }

    /// # Shapes
    /// `word_embeds`: (B, T, C) -> last hidden state (B, T, C), pooler output (B, C)
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
        let mask = additive_mask(&input.attention_mask)?; // (B, T)
        let mut h = self.embeddings.forward(word_embeds, input, mode)?; // (B, T, E)
        if let Some(p) = &self.project {
            h = p.forward(&h)?; // (B, T, C)
        }
        let mut hidden_states = input.output_hidden_states.then(|| vec![h.clone()]);
        let mut attentions = input.output_attentions.then(Vec::new);
        let probes = input.probes.as_ref();
        let first_only = input.first_token_only
            && hidden_states.is_none()
            && attentions.is_none()
            && probes.is_none();
        for (i, layer) in self.layers.iter().enumerate() {
            let first = first_only && i + 1 == self.layers.len();
            if let Some(p) = probes {
                if p.skips(i) {
                    continue;
                }
                let (next, probs) = match p.replacement(i) {
                    Some(v) => (v.clone(), None),
                    None => layer.forward(
                        &h,
                        &mask,
                        mode,
                        attentions.is_some(),
                        p.head_row(i)?.as_ref(),
                    )?,
                };
                h = p.tapped(i, next)?;
                if let Some(hs) = hidden_states.as_mut() {
                    hs.push(h.clone());
                }
                if let (Some(a), Some(p)) = (attentions.as_mut(), probs) {
                    a.push(p);
                }
                continue;
            }
            if attentions.is_none() && recompute::applies(&[&h], mode) {
                // Activation checkpointing: keep this layer's input only, recompute it in
                // the backward pass.
                let (layer, mask) = (Arc::clone(layer), mask.clone());
                let f: Arc<recompute::LayerFn> = Arc::new(move |x: &[Tensor], mode: &Mode| {
                    Ok(vec![if first {
                        layer.forward_first_token(&x[0], &mask, mode)?
                    } else {
                        layer.forward(&x[0], &mask, mode, false, None)?.0
                    }])
                });
                h = recompute::checkpoint(&[&h], mode, f)?.remove(0);
                if let Some(hs) = hidden_states.as_mut() {
                    hs.push(h.clone());
                }
                continue;
            }
            if first {
                h = layer.forward_first_token(&h, &mask, mode)?; // (B, 1, C)
                continue;
            }
            let (next, probs) = layer.forward(&h, &mask, mode, attentions.is_some(), None)?;
            h = next;
            if let Some(hs) = hidden_states.as_mut() {
                hs.push(h.clone());
            }
            if let (Some(a), Some(p)) = (attentions.as_mut(), probs) {
                a.push(p);
            }
        }
        let pooler_output = match &self.pooler {
            Some(p) => Some(p.forward(&h.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?), // (B, C)
            None => None,
        };
        Ok(EncoderOutput {
            last_hidden_state: h,
            pooler_output,
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

/// Mean of the hidden states over real (unmasked) tokens, as sentence-transformers pools.
///
/// # Shapes
/// `hidden`: (B, T, C), `attention_mask`: (B, T) -> (B, C)
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
    let m = attention_mask
        .to_dtype(hidden.dtype())?
        .unsqueeze(D::Minus1)?; // (B, T, 1)
    let summed = hidden.broadcast_mul(&m)?.sum(1)?; // (B, C)
    let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?; // (B, 1)
    Ok(summed.broadcast_div(&counts)?)
}

/// A tiny configuration for tests and examples.
pub fn tiny_config(flavor: Flavor) -> BertConfig {
    BertConfig {
        model_type: match flavor {
            Flavor::Bert => "bert".into(),
            Flavor::Roberta => "roberta".into(),
        },
        architectures: vec![],
        vocab_size: 100,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        hidden_act: "gelu".into(),
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        max_position_embeddings: 64,
        type_vocab_size: if flavor == Flavor::Bert { 2 } else { 1 },
        initializer_range: 0.02,
        layer_norm_eps: 1e-12,
        pad_token_id: Some(if flavor == Flavor::Bert { 0 } else { 1 }),
        position_embedding_type: "absolute".into(),
        embedding_size: None,
        extra: Default::default(),
    }
}
