//! XLNet (Yang et al. 2019), mirroring transformers' `XLNetModel`: relative positional encodings
//! (sinusoidal, `clamp_len`, optional bi-directional data), relative attention with content
//! (`r_w_bias`), position (`r_r_bias`, with the relative shift) and segment (`r_s_bias`,
//! `seg_embed`) terms, the two-stream (content + query) attention that permutation language
//! modelling needs (`perm_mask`, `target_mapping`), memories for segment recurrence, and the
//! post-LN position-wise feed-forward.
//!
//! Tensors here are batch-first (transformers' XLNet is time-first); masks follow transformers:
//! a key is hidden from query i when `attention_mask` says padding or `perm_mask[b, i, j] = 1`;
//! the content stream may always see its own position, the query stream may not unless allowed.

use super::{Encoder, EncoderInput, EncoderOutput};
use crate::error::{Error, Result};
use crate::nn::{Embedding, Init, LayerNorm, Linear, Mode, ParamBuilder};
use crate::ops;
use crate::recompute;
use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

fn d_act() -> String {
    "gelu".into()
}
fn d_attn_type() -> String {
    "bi".into()
}
fn d_dropout() -> f64 {
    0.1
}
fn d_eps() -> f64 {
    1e-12
}
fn d_init() -> f64 {
    0.02
}
fn d_clamp() -> i64 {
    -1
}
fn d_true() -> bool {
    true
}

/// `config.json` of an XLNet model, with transformers' key names; unknown keys are kept.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct XlnetConfig {
    #[serde(default)]
    pub model_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub d_head: Option<usize>,
    pub d_inner: usize,
    #[serde(default = "d_act")]
    pub ff_activation: String,
    #[serde(default = "d_true")]
    pub untie_r: bool,
    #[serde(default = "d_attn_type")]
    pub attn_type: String,
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_dropout")]
    pub dropout: f64,
    #[serde(default)]
    pub mem_len: Option<usize>,
    #[serde(default)]
    pub bi_data: bool,
    #[serde(default = "d_clamp")]
    pub clamp_len: i64,
    #[serde(default)]
    pub same_length: bool,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl XlnetConfig {
    pub fn head_dim(&self) -> usize {
        self.d_head.unwrap_or(self.d_model / self.n_head.max(1))
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("d_inner", self.d_inner),
        ] {
            if v == 0 {
                return bad(format!("`{k}` must be positive"));
            }
        }
        if self.d_model % 2 != 0 {
            return bad(format!(
                "`d_model` {} must be even (sinusoidal positions)",
                self.d_model
            ));
        }
        if self.head_dim() * self.n_head != self.d_model {
            return bad(format!(
                "`d_head` {} x `n_head` {} must equal `d_model` {}",
                self.head_dim(),
                self.n_head,
                self.d_model
            ));
        }
        if !self.untie_r {
            return bad("`untie_r = false` (biases shared across layers) is not supported".into());
        }
        if self.attn_type != "bi" {
            return bad(format!(
                "`attn_type` \"{}\" is not supported (bi)",
                self.attn_type
            ));
        }
        if self.same_length {
            return bad("`same_length = true` is not supported".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("`dropout` {} must be in [0, 1)", self.dropout));
        }
        super::bert::Activation::parse(&self.ff_activation).map(|_| ())
    }
}

/// Everything an XLNet forward pass can take beyond ids and masks.
///
/// # Shapes
/// `perm_mask`: (B, T, T), 1 where query i may NOT see key j; `target_mapping`: (B, M, T), one
/// row per predicted position; `mems`: one (B, Tm, C) per layer.
#[derive(Clone, Debug, Default)]
pub struct XlnetExtras {
    pub perm_mask: Option<Tensor>,
    pub target_mapping: Option<Tensor>,
    pub mems: Option<Vec<Tensor>>,
    /// Two-stream attention (the query stream starts from `mask_emb`), as permutation language
    /// modelling does; implied by `target_mapping`.
    pub two_stream: bool,
}

/// What [`Xlnet::forward_xlnet`] returns.
#[derive(Clone, Debug)]
pub struct XlnetOutput {
    /// The content stream (B, T, C), or the query stream (B, M, C) in two-stream mode.
    pub output: Tensor,
    /// Content-stream hidden states: the embeddings, then every layer.
    pub hidden_states: Option<Vec<Tensor>>,
    /// Content-stream attention probabilities per layer, (B, H, T, Tm + T).
    pub attentions: Option<Vec<Tensor>>,
    /// The memories for the next segment (the last `mem_len` content states per layer).
    pub new_mems: Option<Vec<Tensor>>,
}

struct RelAttention {
    /// (C, H * Dh): transformers' (C, H, Dh) tensors, flattened.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    r: Tensor,
    /// (H, Dh)
    r_w_bias: Tensor,
    r_r_bias: Tensor,
    r_s_bias: Tensor,
    /// (2, H, Dh)
    seg_embed: Tensor,
    norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    dropout: f64,
}

impl RelAttention {
    fn load(pb: &ParamBuilder, cfg: &XlnetConfig) -> Result<Self> {
        let (c, h, dh, std) = (
            cfg.d_model,
            cfg.n_head,
            cfg.head_dim(),
            cfg.initializer_range,
        );
        let proj = |n: &str| -> Result<Tensor> {
            Ok(pb
                .get(&[c, h, dh], n, Init::Normal(std))?
                .reshape((c, h * dh))?)
        };
        Ok(Self {
            q: proj("q")?,
            k: proj("k")?,
            v: proj("v")?,
            o: proj("o")?,
            r: proj("r")?,
            r_w_bias: pb.get(&[h, dh], "r_w_bias", Init::Normal(std))?,
            r_r_bias: pb.get(&[h, dh], "r_r_bias", Init::Normal(std))?,
            r_s_bias: pb.get(&[h, dh], "r_s_bias", Init::Normal(std))?,
            seg_embed: pb.get(&[2, h, dh], "seg_embed", Init::Normal(std))?,
            norm: LayerNorm::load(&pb.pp("layer_norm"), c, cfg.layer_norm_eps)?,
            heads: h,
            head_dim: dh,
            dropout: cfg.dropout,
        })
    }

    /// `x` (B, T, C) through a (C, H * Dh) projection -> (B, H, T, Dh).
    fn heads_of(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let y = x.reshape((b * t, c))?.matmul(w)?; // (B*T, H*Dh)
        Ok(y.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// transformers' `rel_attn_core`: scores from content, position and segment terms.
    ///
    /// # Shapes
    /// `q`: (B, H, Tq, Dh), `k`, `v`: (B, H, Tk, Dh), `kr`: (B, H, P, Dh) with P = Tk + Tq,
    /// `seg_diff`: (B, 1, Tq, Tk) 1 where the segments differ, `mask`: (B, 1, Tq, Tk)
    /// -> context (B, H, Tq, Dh), probabilities (B, H, Tq, Tk)
    #[allow(clippy::too_many_arguments)]
    fn core(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        kr: &Tensor,
        seg_diff: Option<&Tensor>,
        mask: Option<&Tensor>,
        head_mask: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, tq, dh) = q.dims4()?;
        let tk = k.dim(2)?;
        let bias = |t: &Tensor| -> Result<Tensor> { Ok(t.reshape((1, h, 1, dh))?) };
        let ac = q.broadcast_add(&bias(&self.r_w_bias)?)?.matmul(&k.t()?)?; // (B, H, Tq, Tk)
        let bd = q.broadcast_add(&bias(&self.r_r_bias)?)?.matmul(&kr.t()?)?; // (B, H, Tq, P)
        let p = bd.dim(3)?;
        // The relative shift: (Tq, P) -> (P, Tq) minus its first row -> (Tq, P - 1) -> first Tk.
        let bd = bd
            .reshape((b, h, p, tq))?
            .narrow(2, 1, p - 1)?
            .contiguous()?
            .reshape((b, h, tq, p - 1))?
            .narrow(3, 0, tk)?;
        let mut score = (ac + bd)?;
        if let Some(diff) = seg_diff {
            // ef[b, h, i, j] = (q_i + r_s_bias) . seg_embed[s_ij]
            let seg = self
                .seg_embed
                .transpose(0, 1)?
                .transpose(1, 2)?
                .unsqueeze(0)?; // (1, H, Dh, 2)
            let e = q
                .broadcast_add(&bias(&self.r_s_bias)?)?
                .broadcast_matmul(&seg.contiguous()?)?; // (B, H, Tq, 2)
            let e0 = e.narrow(3, 0, 1)?;
            let e1 = e.narrow(3, 1, 1)?;
            let ef = e0.broadcast_add(&diff.broadcast_mul(&(e1 - &e0)?)?)?; // (B, H, Tq, Tk)
            score = (score + ef)?;
        }
        let mut score = (score * (1.0 / (self.head_dim as f64).sqrt()))?;
        if let Some(m) = mask {
            score = score.broadcast_sub(&(m * 1e30)?)?;
        }
        let probs = ops::softmax_last_dim(&score)?;
        let mut dropped = mode.dropout(&probs, self.dropout)?;
        if let Some(m) = head_mask {
            dropped = dropped.broadcast_mul(m)?; // (1, H, 1, 1), as transformers' head_mask
        }
        let ctx = dropped.matmul(v)?; // (B, H, Tq, Dh)
        Ok((ctx, probs))
    }

    /// The output projection, dropout, residual and LayerNorm. `ctx`: (B, H, T, Dh).
    fn post(&self, x: &Tensor, ctx: &Tensor, mode: &Mode) -> Result<Tensor> {
        let (b, h, t, dh) = ctx.dims4()?;
        let flat = ctx
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, h * dh))?;
        let out = flat.matmul(&self.o.t()?)?.reshape((b, t, h * dh))?; // (B, T, C)
        let out = mode.dropout(&out, self.dropout)?;
        self.norm.forward(&(out + x)?)
    }
}

struct FeedForward {
    layer_1: Linear,
    layer_2: Linear,
    norm: LayerNorm,
    act: super::bert::Activation,
    dropout: f64,
}

impl FeedForward {
    fn load(pb: &ParamBuilder, cfg: &XlnetConfig) -> Result<Self> {
        let std = cfg.initializer_range;
        Ok(Self {
            layer_1: Linear::load(&pb.pp("layer_1"), cfg.d_model, cfg.d_inner, std)?,
            layer_2: Linear::load(&pb.pp("layer_2"), cfg.d_inner, cfg.d_model, std)?,
            norm: LayerNorm::load(&pb.pp("layer_norm"), cfg.d_model, cfg.layer_norm_eps)?,
            act: super::bert::Activation::parse(&cfg.ff_activation)?,
            dropout: cfg.dropout,
        })
    }

    fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let h = self.act.after_linear(&self.layer_1, x)?;
        let h = mode.dropout(&h, self.dropout)?;
        let h = mode.dropout(&self.layer_2.forward(&h)?, self.dropout)?;
        self.norm.forward(&(h + x)?)
    }
}

struct Layer {
    attn: RelAttention,
    ff: FeedForward,
}

/// What every layer of one forward pass reads besides its streams.
#[derive(Clone)]
struct LayerShared {
    /// Relative position encodings (B, P, C).
    pos: Tensor,
    seg_diff: Option<Tensor>,
    mask_h: Tensor,
    mask_g: Tensor,
    tmap: Option<Tensor>,
    t: usize,
}

impl Layer {
    /// One layer on the content stream `h` (B, T, C), the query stream `g` when two-stream, and
    /// the memories `mem` (B, M, C): the next `h`, the next `g`, the content stream's attention
    /// probabilities.
    fn step(
        &self,
        h: &Tensor,
        g: Option<&Tensor>,
        mem: Option<&Tensor>,
        shared: &LayerShared,
        head_mask: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<(Tensor, Option<Tensor>, Tensor)> {
        let LayerShared {
            pos,
            seg_diff,
            mask_h,
            mask_g,
            tmap,
            t,
        } = shared;
        let (a, t) = (&self.attn, *t);
        let cat = match mem {
            Some(m) => Tensor::cat(&[m, h], 1)?,
            None => h.clone(),
        };
        let k = a.heads_of(&cat, &a.k)?;
        let v = a.heads_of(&cat, &a.v)?;
        let kr = a.heads_of(pos, &a.r)?;
        let q = a.heads_of(h, &a.q)?;
        let (ctx_h, probs) = a.core(
            &q,
            &k,
            &v,
            &kr,
            seg_diff.as_ref(),
            Some(mask_h),
            head_mask,
            mode,
        )?;
        let out_h = a.post(h, &ctx_h, mode)?;
        let g = match g {
            Some(gs) => {
                let qg = a.heads_of(gs, &a.q)?; // (B, H, M, Dh)
                let ctx_g = match tmap {
                    Some(tm) => {
                        // Scatter the M targets to their positions, attend, gather back.
                        let (bb, hh, m, dh) = qg.dims4()?;
                        let flat = qg
                            .transpose(1, 2)?
                            .contiguous()?
                            .reshape((bb, m, hh * dh))?;
                        let at = tm.transpose(1, 2)?.contiguous()?.matmul(&flat)?; // (B, T, H*Dh)
                        let at = at.reshape((bb, t, hh, dh))?.transpose(1, 2)?.contiguous()?;
                        let (cg, _) = a.core(
                            &at,
                            &k,
                            &v,
                            &kr,
                            seg_diff.as_ref(),
                            Some(mask_g),
                            head_mask,
                            mode,
                        )?;
                        let cg = cg
                            .transpose(1, 2)?
                            .contiguous()?
                            .reshape((bb, t, hh * dh))?;
                        tm.matmul(&cg)?
                            .reshape((bb, m, hh, dh))?
                            .transpose(1, 2)?
                            .contiguous()?
                    }
                    None => {
                        a.core(
                            &qg,
                            &k,
                            &v,
                            &kr,
                            seg_diff.as_ref(),
                            Some(mask_g),
                            head_mask,
                            mode,
                        )?
                        .0
                    }
                };
                let out_g = a.post(gs, &ctx_g, mode)?;
                Some(self.ff.forward(&out_g, mode)?)
            }
            None => None,
        };
        let h = self.ff.forward(&out_h, mode)?;
        Ok((h, g, probs))
    }
}

/// The XLNet encoder.
pub struct Xlnet {
    word: Embedding,
    /// (1, 1, C): the query stream's input.
    mask_emb: Tensor,
    layers: Vec<Arc<Layer>>,
    config: XlnetConfig,
}

impl Xlnet {
    /// Build under transformers' key names (`word_embedding`, `mask_emb`, `layer.N.rel_attn.*`,
    /// `layer.N.ff.*`); the `transformer.` prefix of the task classes is stripped on load.
    pub fn load(pb: &ParamBuilder, config: &XlnetConfig) -> Result<Self> {
        config.validate()?;
        let std = config.initializer_range;
        let word = Embedding::load(
            &pb.pp("word_embedding"),
            config.vocab_size,
            config.d_model,
            std,
        )?;
        let mask_emb = pb.get(&[1, 1, config.d_model], "mask_emb", Init::Normal(std))?;
        let layers = (0..config.n_layer)
            .map(|i| {
                let l = pb.pp(format!("layer.{i}"));
                Ok(Arc::new(Layer {
                    attn: RelAttention::load(&l.pp("rel_attn"), config)?,
                    ff: FeedForward::load(&l.pp("ff"), config)?,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word,
            mask_emb,
            layers,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &XlnetConfig {
        &self.config
    }

    /// Sinusoidal embeddings of the relative distances `klen, klen - 1, ..., -qlen + 1`
    /// (clamped to `clamp_len`); with `bi_data` the second half of the batch gets the reversed
    /// distances. -> (B, klen + qlen, C)
    fn relative_positions(
        &self,
        qlen: usize,
        klen: usize,
        b: usize,
        dev: &Device,
    ) -> Result<Tensor> {
        let c = self.config.d_model;
        let inv: Vec<f32> = (0..c / 2)
            .map(|i| 1.0 / 10000f64.powf((2 * i) as f64 / c as f64) as f32)
            .collect();
        let clamp = |p: f64| {
            if self.config.clamp_len > 0 {
                p.clamp(
                    -(self.config.clamp_len as f64),
                    self.config.clamp_len as f64,
                )
            } else {
                p
            }
        };
        let table = |seq: Vec<f64>| -> Result<Tensor> {
            let mut v = Vec::with_capacity(seq.len() * c);
            for &p in &seq {
                let p = clamp(p) as f32;
                let s: Vec<f32> = inv.iter().map(|f| (p * f).sin()).collect();
                let co: Vec<f32> = inv.iter().map(|f| (p * f).cos()).collect();
                v.extend(s);
                v.extend(co);
            }
            Ok(Tensor::from_vec(v, (1, seq.len(), c), dev)?)
        };
        let fwd: Vec<f64> = (0..klen + qlen).map(|i| klen as f64 - i as f64).collect();
        if self.config.bi_data {
            if b % 2 != 0 {
                return Err(Error::Input("bi_data needs an even batch size".into()));
            }
            let bwd: Vec<f64> = fwd.iter().map(|p| -p).collect();
            let f = table(fwd)?.broadcast_as((b / 2, klen + qlen, c))?;
            let r = table(bwd)?.broadcast_as((b / 2, klen + qlen, c))?;
            Ok(Tensor::cat(&[f, r], 0)?)
        } else {
            Ok(table(fwd)?
                .broadcast_as((b, klen + qlen, c))?
                .contiguous()?)
        }
    }

    /// The full XLNet forward pass from word embeddings.
    pub fn forward_xlnet(
        &self,
        word_embeds: &Tensor,
        input: &EncoderInput,
        extras: &XlnetExtras,
        mode: &Mode,
    ) -> Result<XlnetOutput> {
        let (b, t, c) = word_embeds.dims3()?;
        let dev = word_embeds.device().clone();
        if input.attention_mask.dims() != [b, t] {
            return Err(Error::Input(format!(
                "attention_mask {:?} does not match input_ids ({b}, {t})",
                input.attention_mask.dims()
            )));
        }
        let mlen = match &extras.mems {
            Some(m) if !m.is_empty() => {
                if m.len() != self.layers.len() {
                    return Err(Error::Input(format!(
                        "{} memories for {} layers",
                        m.len(),
                        self.layers.len()
                    )));
                }
                m[0].dim(1)?
            }
            _ => 0,
        };
        let klen = mlen + t;
        // -- masks: 1 = hidden. Keys: padding, then perm_mask; memories are always visible.
        let pad = (1.0 - input.attention_mask.to_dtype(DType::F32)?)?; // (B, T)
        let mut data = pad.unsqueeze(1)?.broadcast_as((b, t, t))?.contiguous()?; // (B, Tq, Tk)
        if let Some(pm) = &extras.perm_mask {
            if pm.dims() != [b, t, t] {
                return Err(Error::Input(format!(
                    "perm_mask {:?} must be ({b}, {t}, {t})",
                    pm.dims()
                )));
            }
            data = (data + pm.to_dtype(DType::F32)?)?;
        }
        if mlen > 0 {
            data = Tensor::cat(&[Tensor::zeros((b, t, mlen), DType::F32, &dev)?, data], 2)?;
        }
        let attn_mask = data.gt(0.0)?.to_dtype(DType::F32)?; // (B, Tq, Tk)
                                                             // The content stream may see itself.
        let eye = Tensor::eye(t, DType::F32, &dev)?;
        let eye = if mlen > 0 {
            Tensor::cat(&[Tensor::zeros((t, mlen), DType::F32, &dev)?, eye], 1)?
        } else {
            eye
        };
        let mask_h = attn_mask
            .broadcast_sub(&eye.unsqueeze(0)?)?
            .gt(0.0)?
            .to_dtype(DType::F32)?;
        let mask_h = mask_h.unsqueeze(1)?; // (B, 1, Tq, Tk)
        let mask_g = attn_mask.unsqueeze(1)?;

        // -- streams
        let mut h = mode.dropout(word_embeds, self.config.dropout)?;
        let two_stream = extras.two_stream || extras.target_mapping.is_some();
        let tmap = extras
            .target_mapping
            .as_ref()
            .map(|m| m.to_dtype(DType::F32))
            .transpose()?;
        let mut g = if two_stream {
            let m = match &tmap {
                Some(tm) => {
                    if tm.dim(0)? != b || tm.dim(2)? != t {
                        return Err(Error::Input(format!(
                            "target_mapping {:?} must be ({b}, M, {t})",
                            tm.dims()
                        )));
                    }
                    tm.dim(1)?
                }
                None => t,
            };
            Some(mode.dropout(
                &self.mask_emb.broadcast_as((b, m, c))?.contiguous()?,
                self.config.dropout,
            )?)
        } else {
            None
        };
        // -- segments: 1 where query and key segments differ (memories count as segment 0)
        let seg_diff = match &input.token_type_ids {
            Some(tt) => {
                let tt = tt.to_dtype(DType::F32)?; // (B, T)
                let keys = if mlen > 0 {
                    Tensor::cat(
                        &[Tensor::zeros((b, mlen), DType::F32, &dev)?, tt.clone()],
                        1,
                    )?
                } else {
                    tt.clone()
                };
                let d = tt
                    .unsqueeze(2)?
                    .broadcast_ne(&keys.unsqueeze(1)?)?
                    .to_dtype(DType::F32)?;
                Some(d.unsqueeze(1)?) // (B, 1, Tq, Tk)
            }
            None => None,
        };
        let pos = self.relative_positions(t, klen, b, &dev)?;
        let pos = mode.dropout(&pos, self.config.dropout)?; // (B, P, C)

        let shared = LayerShared {
            pos,
            seg_diff,
            mask_h,
            mask_g,
            tmap,
            t,
        };
        let mut hidden_states = input.output_hidden_states.then(|| vec![h.clone()]);
        let mut attentions = input.output_attentions.then(Vec::new);
        let mut new_mems = self.config.mem_len.filter(|&n| n > 0).map(|_| Vec::new());
        for (li, layer) in self.layers.iter().enumerate() {
            let mem = extras
                .mems
                .as_ref()
                .and_then(|m| m.get(li))
                .filter(|_| mlen > 0);
            if let (Some(nm), Some(n)) = (new_mems.as_mut(), self.config.mem_len) {
                let cat = match mem {
                    Some(m) => Tensor::cat(&[m, &h], 1)?,
                    None => h.clone(),
                };
                let len = cat.dim(1)?;
                nm.push(cat.narrow(1, len.saturating_sub(n), len.min(n))?.detach());
            }
            if let Some(p) = input.probes.as_ref() {
                if p.skips(li) {
                    continue;
                }
                let probs = match p.replacement(li) {
                    Some(v) => {
                        h = v.clone();
                        None
                    }
                    None => {
                        let hm = p.head_row(li)?;
                        let (next_h, next_g, probs) =
                            layer.step(&h, g.as_ref(), mem, &shared, hm.as_ref(), mode)?;
                        (h, g) = (next_h, next_g);
                        Some(probs)
                    }
                };
                h = p.tapped(li, h)?;
                if let Some(hs) = hidden_states.as_mut() {
                    hs.push(h.clone());
                }
                if let (Some(at), Some(pr)) = (attentions.as_mut(), probs) {
                    at.push(pr);
                }
                continue;
            }
            let probs = if attentions.is_none() && recompute::applies(&[&h], mode) {
                // Activation checkpointing: keep this layer's inputs only, recompute it in
                // the backward pass.
                let (layer, shared, mem) = (Arc::clone(layer), shared.clone(), mem.cloned());
                let f: Arc<recompute::LayerFn> = Arc::new(move |x: &[Tensor], mode: &Mode| {
                    let (h, g, _) =
                        layer.step(&x[0], x.get(1), mem.as_ref(), &shared, None, mode)?;
                    Ok(std::iter::once(h).chain(g).collect())
                });
                let inputs: Vec<&Tensor> = std::iter::once(&h).chain(g.as_ref()).collect();
                let mut outs = recompute::checkpoint(&inputs, mode, f)?.into_iter();
                h = outs.next().expect("the content stream");
                g = outs.next();
                None
            } else {
                let (next_h, next_g, probs) =
                    layer.step(&h, g.as_ref(), mem, &shared, None, mode)?;
                (h, g) = (next_h, next_g);
                Some(probs)
            };
            if let Some(hs) = hidden_states.as_mut() {
                hs.push(h.clone());
            }
            if let (Some(at), Some(p)) = (attentions.as_mut(), probs) {
                at.push(p);
            }
        }
        let out = match g {
            Some(g) => g,
            None => h,
        };
        Ok(XlnetOutput {
            output: mode.dropout(&out, self.config.dropout)?,
            hidden_states,
            attentions,
            new_mems,
        })
    }
}

impl Encoder for Xlnet {
    fn word_embeddings(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.word.forward(input_ids)
    }

    fn word_embedding_table(&self) -> &Tensor {
        &self.word.weight
    }

    /// The single-stream (content) pass; `pooler_output` is none (XLNet's heads summarise the
    /// last real token).
    fn forward_from_word_embeddings(
        &self,
        word_embeds: &Tensor,
        input: &EncoderInput,
        mode: &Mode,
    ) -> Result<EncoderOutput> {
        let out = self.forward_xlnet(word_embeds, input, &XlnetExtras::default(), mode)?;
        Ok(EncoderOutput {
            last_hidden_state: out.output,
            pooler_output: None,
            hidden_states: out.hidden_states,
            attentions: out.attentions,
            summary_positions: Some(last_token_positions(&input.attention_mask)?),
            attention_mask: Some(input.attention_mask.clone()),
        })
    }

    fn hidden_size(&self) -> usize {
        self.config.d_model
    }

    fn layers_and_heads(&self) -> (usize, usize) {
        (self.layers.len(), self.config.n_head)
    }
}

/// Position of the last real token of each row (XLNet pads on the left, so with its own
/// tokenizer this is the final `<cls>`; right-padded batches work too). -> (B) u32
pub fn last_token_positions(attention_mask: &Tensor) -> Result<Tensor> {
    let m = attention_mask.to_dtype(DType::F32)?;
    let (_, t) = m.dims2()?;
    let idx = Tensor::arange(0f32, t as f32, m.device())?.unsqueeze(0)?;
    let pos = m.broadcast_mul(&(idx + 1.0)?)?.max(D::Minus1)?; // last real index + 1
    Ok(((pos - 1.0)?.clamp(0.0, (t - 1) as f64)?).to_dtype(DType::U32)?)
}
