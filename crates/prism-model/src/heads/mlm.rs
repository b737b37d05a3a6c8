//! The masked-language-modelling head of BERT and RoBERTa, mirroring transformers'
//! `BertOnlyMLMHead` / `RobertaLMHead`: dense -> activation -> LayerNorm -> decoder, where the
//! decoder's weight IS the word-embedding table (tied) and only its bias is a parameter of the
//! head. Because the same tensor serves the embedding lookup and the decoder, its gradient is
//! the sum of both uses, as in PyTorch.
//!
//! Key names: BERT `cls.predictions.{transform.dense, transform.LayerNorm, bias}`; RoBERTa
//! `lm_head.{dense, layer_norm, bias}`; ELECTRA's generator (`ElectraForMaskedLM`)
//! `generator_predictions.{dense, LayerNorm}` + `generator_lm_head.bias`, its dense layer going
//! from the hidden size down to the embedding width, always GELU; DistilBERT
//! `vocab_transform`, `vocab_layer_norm`, `vocab_projector.bias`; DeBERTa-v2/v3
//! `cls.predictions.*` (legacy) or `lm_predictions.lm_head.{dense, LayerNorm, bias}`.

use crate::error::Result;
use crate::models::bert::{Activation, BertConfig, Flavor};
use crate::nn::{Init, LayerNorm, Linear, ParamStore};
use candle_core::Tensor;

pub struct MlmHead {
    dense: Linear,
    act: Activation,
    norm: LayerNorm,
    /// (V)
    bias: Tensor,
}

/// The checkpoint names of the head's tensors for a model: (dense, layer norm, bias).
pub fn mlm_head_names(cfg: &BertConfig) -> (&'static str, &'static str, &'static str) {
    match (cfg.model_type.as_str(), cfg.flavor()) {
        ("electra", _) => (
            "generator_predictions.dense",
            "generator_predictions.LayerNorm",
            "generator_lm_head.bias",
        ),
        ("distilbert", _) => (
            "vocab_transform",
            "vocab_layer_norm",
            "vocab_projector.bias",
        ),
        (_, Flavor::Bert) => (
            "cls.predictions.transform.dense",
            "cls.predictions.transform.LayerNorm",
            "cls.predictions.bias",
        ),
        (_, Flavor::Roberta) => ("lm_head.dense", "lm_head.layer_norm", "lm_head.bias"),
    }
}

/// transformers' masked-LM class of a model.
pub fn mlm_class(cfg: &BertConfig) -> &'static str {
    match (cfg.model_type.as_str(), cfg.flavor()) {
        ("electra", _) => "ElectraForMaskedLM",
        ("distilbert", _) => "DistilBertForMaskedLM",
        ("xlm-roberta", _) => "XLMRobertaForMaskedLM",
        ("camembert", _) => "CamembertForMaskedLM",
        (_, Flavor::Bert) => "BertForMaskedLM",
        (_, Flavor::Roberta) => "RobertaForMaskedLM",
    }
}

/// Checkpoint tensors that hold a stale copy of the tied decoder (older transformers versions
/// wrote them); the head never reads them and a save must not write them back.
pub fn is_tied_decoder_copy(name: &str) -> bool {
    matches!(
        name,
        "cls.predictions.decoder.weight"
            | "cls.predictions.decoder.bias"
            | "lm_head.decoder.weight"
            | "lm_head.decoder.bias"
            | "generator_lm_head.weight"
            | "vocab_projector.weight"
            | "decoder.weight"
    )
}

impl MlmHead {
    /// Take the head from the checkpoint in `params`, or initialise it as transformers'
    /// `_init_weights` does (normal(0, initializer_range) dense weight, zero biases, unit
    /// LayerNorm scale) when the checkpoint has none (e.g. sentence-transformers' MiniLM).
    pub fn load(params: &ParamStore, cfg: &BertConfig) -> Result<Self> {
        let root = params.root();
        let (dense, norm, bias) = mlm_head_names(cfg);
        // The head ends at the decoder's width: the embeddings' (ELECTRA's are narrower).
        let (c, e) = (cfg.hidden_size, cfg.embedding_width());
        let dense = Linear::load_or_init(&root.pp(dense), c, e, cfg.initializer_range)?;
        let npb = root.pp(norm);
        let norm = LayerNorm {
            weight: npb.get_or_init(&[e], "weight", Init::Const(1.0))?,
            bias: npb.get_or_init(&[e], "bias", Init::Const(0.0))?,
            eps: cfg.layer_norm_eps,
        };
        let bias = root.get_or_init(&[cfg.vocab_size], bias, Init::Const(0.0))?;
        // ElectraGeneratorPredictions always uses GELU, whatever `hidden_act` says.
        let act = if cfg.is_electra() {
            Activation::parse("gelu")?
        } else {
            Activation::parse(&cfg.hidden_act)?
        };
        Ok(Self {
            dense,
            act,
            norm,
            bias,
        })
    }

    /// ModernBERT's (`ModernBertForMaskedLM`): `head.dense` (bias per `classifier_bias`),
    /// `classifier_activation`, `head.norm` (bias per `norm_bias`), and the tied `decoder` with
    /// its bias per `decoder_bias`.
    pub fn load_modernbert(
        params: &ParamStore,
        cfg: &crate::models::modernbert::ModernBertConfig,
    ) -> Result<Self> {
        let root = params.root();
        let c = cfg.hidden_size;
        let flag = |k: &str, d: bool| cfg.extra.get(k).and_then(|v| v.as_bool()).unwrap_or(d);
        let dpb = root.pp("head").pp("dense");
        let weight = dpb.get_or_init(&[c, c], "weight", Init::Normal(cfg.initializer_range))?;
        let dense_bias = if flag("classifier_bias", false) {
            Some(dpb.get_or_init(&[c], "bias", Init::Const(0.0))?)
        } else {
            None
        };
        let npb = root.pp("head").pp("norm");
        let zeros = |n: usize| Tensor::zeros(n, candle_core::DType::F32, params.device());
        let norm = LayerNorm {
            weight: npb.get_or_init(&[c], "weight", Init::Const(1.0))?,
            bias: if cfg.norm_bias {
                npb.get_or_init(&[c], "bias", Init::Const(0.0))?
            } else {
                zeros(c)?
            },
            eps: cfg.norm_eps,
        };
        let bias = if flag("decoder_bias", true) {
            root.get_or_init(&[cfg.vocab_size], "decoder.bias", Init::Const(0.0))?
        } else {
            zeros(cfg.vocab_size)?
        };
        let act = cfg
            .extra
            .get("classifier_activation")
            .and_then(|v| v.as_str())
            .unwrap_or("gelu");
        Ok(Self {
            dense: Linear::new(weight, dense_bias),
            act: Activation::parse(act)?,
            norm,
            bias,
        })
    }

    /// DeBERTa-v2/v3's (`DebertaV2ForMaskedLM`). With `legacy` (transformers' default) BERT's
    /// layout, `cls.predictions.{transform.dense, transform.LayerNorm, bias}`, the dense layer
    /// going down to the embedding width; otherwise the head DeBERTa's checkpoints were
    /// trained with, `lm_predictions.lm_head.{dense, LayerNorm, bias}` (hidden to hidden). Both
    /// decode with the word-embedding table and use `hidden_act`.
    pub fn load_deberta(
        params: &ParamStore,
        cfg: &crate::models::deberta_v2::DebertaV2Config,
    ) -> Result<Self> {
        let root = params.root();
        let legacy = cfg
            .extra
            .get("legacy")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let (c, e) = (cfg.hidden_size, cfg.embedding_width());
        let (dense, norm, bias, width) = if legacy {
            (
                "cls.predictions.transform.dense",
                "cls.predictions.transform.LayerNorm",
                "cls.predictions.bias",
                e,
            )
        } else {
            if e != c {
                return Err(crate::Error::InvalidConfig(format!(
                    "`legacy = false`: DeBERTa's lm_predictions head decodes hidden states of \
                     width {c} with the word embeddings, which are {e} wide (`embedding_size`)"
                )));
            }
            (
                "lm_predictions.lm_head.dense",
                "lm_predictions.lm_head.LayerNorm",
                "lm_predictions.lm_head.bias",
                c,
            )
        };
        let dense = Linear::load_or_init(&root.pp(dense), c, width, cfg.initializer_range)?;
        let npb = root.pp(norm);
        let norm = LayerNorm {
            weight: npb.get_or_init(&[width], "weight", Init::Const(1.0))?,
            bias: npb.get_or_init(&[width], "bias", Init::Const(0.0))?,
            eps: cfg.layer_norm_eps,
        };
        let bias = root.get_or_init(&[cfg.vocab_size], bias, Init::Const(0.0))?;
        Ok(Self {
            dense,
            act: Activation::parse(&cfg.hidden_act)?,
            norm,
            bias,
        })
    }

    /// Vocabulary logits for hidden states; `table` is the word-embedding table (tied decoder).
    ///
    /// # Shapes
    /// `hidden`: (N, C) or (B, T, C), `table`: (V, C) -> (N, V) or (B, T, V)
    pub fn forward(&self, hidden: &Tensor, table: &Tensor) -> Result<Tensor> {
        let h = self
            .norm
            .forward(&self.act.forward(&self.dense.forward(hidden)?)?)?;
        // The fused linear op: the table's gradient comes out in its own (V, C) layout, not as a
        // transposed (C, V) view that would be accumulated element by element.
        Ok(crate::ops::linear(&h, table, Some(&self.bias))?) // (..., V)
    }
}

/// A model for masked language modelling: an encoder with its MLM head, saved as transformers'
/// `BertForMaskedLM` / `RobertaForMaskedLM`.
pub struct MaskedLm {
    pub base: crate::PretrainedModel,
    pub head: MlmHead,
}

/// One candidate for a masked position.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FillCandidate {
    pub token: String,
    pub id: u32,
    pub score: f32,
    /// The input with the mask replaced by this token (decoded).
    pub sequence: String,
}

impl MaskedLm {
    /// Put an MLM head on `base`: the checkpoint's, or a fresh one (continued pre-training of an
    /// encoder released without one, e.g. MiniLM).
    pub fn new(mut base: crate::PretrainedModel) -> Result<Self> {
        let head = match &mut base.config {
            crate::ModelConfig::Bert(cfg) => {
                cfg.architectures = vec![mlm_class(cfg).into()];
                let cfg = cfg.clone();
                MlmHead::load(&base.params, &cfg)?
            }
            crate::ModelConfig::ModernBert(cfg) => {
                cfg.architectures = vec!["ModernBertForMaskedLM".into()];
                let cfg = cfg.clone();
                MlmHead::load_modernbert(&base.params, &cfg)?
            }
            crate::ModelConfig::DebertaV2(cfg) => {
                cfg.architectures = vec!["DebertaV2ForMaskedLM".into()];
                let cfg = cfg.clone();
                MlmHead::load_deberta(&base.params, &cfg)?
            }
            crate::ModelConfig::Xlnet(_) => {
                return Err(crate::Error::InvalidConfig(
                    "XLNet is trained with permutation LM, not a masked-LM head".into(),
                ))
            }
        };
        // The head's tensors are parameters now; stale tied-decoder copies are dropped.
        let params = base.params.clone();
        base.head_tensors
            .retain(|(k, _)| params.get(k).is_none() && !is_tied_decoder_copy(k));
        Ok(Self { base, head })
    }

    /// Load a model folder (with or without an MLM head).
    pub fn load(dir: &std::path::Path, device: &candle_core::Device) -> Result<Self> {
        Self::new(crate::PretrainedModel::load(dir, device)?)
    }

    /// Vocabulary logits at the flat positions `b * T + t` only (what the loss needs).
    ///
    /// # Shapes
    /// `positions`: (M) u32 -> (M, V)
    pub fn logits_at(
        &self,
        input: &crate::EncoderInput,
        positions: &Tensor,
        mode: &crate::Mode,
    ) -> Result<Tensor> {
        use crate::Encoder;
        let h = self.base.encoder.forward(input, mode)?.last_hidden_state; // (B, T, C)
        let (b, t, c) = h.dims3()?;
        let picked = h.reshape((b * t, c))?.index_select(positions, 0)?; // (M, C)
        self.head
            .forward(&picked, self.base.encoder.word_embedding_table())
    }

    /// Logits at every position.
    ///
    /// # Shapes
    /// -> (B, T, V)
    pub fn logits(&self, input: &crate::EncoderInput, mode: &crate::Mode) -> Result<Tensor> {
        use crate::Encoder;
        let h = self.base.encoder.forward(input, mode)?.last_hidden_state;
        self.head
            .forward(&h, self.base.encoder.word_embedding_table())
    }

    /// The `top_k` most likely tokens for each mask token in `text` (write the tokenizer's
    /// mask token, e.g. `[MASK]` or `<mask>`), like transformers' fill-mask pipeline.
    pub fn fill_mask(&self, text: &str, top_k: usize) -> Result<Vec<Vec<FillCandidate>>> {
        let tok = self.base.tokenizer()?;
        let mask_token = ["[MASK]", "<mask>"]
            .into_iter()
            .find(|t| tok.token_to_id(t).is_some())
            .ok_or_else(|| crate::Error::Input("the tokenizer has no mask token".into()))?;
        let mask_id = tok.token_to_id(mask_token).unwrap_or_default();
        let enc = tok.encode(text, None)?;
        let where_: Vec<usize> = enc
            .ids
            .iter()
            .enumerate()
            .filter(|(_, &i)| i == mask_id)
            .map(|(p, _)| p)
            .collect();
        if where_.is_empty() {
            return Err(crate::Error::Input(format!(
                "the text has no {mask_token} token to fill"
            )));
        }
        let device = self.base.params.device().clone();
        let input = tok.batch(std::slice::from_ref(&enc), &device)?;
        let pos = Tensor::new(
            where_.iter().map(|&p| p as u32).collect::<Vec<_>>(),
            &device,
        )?;
        let logits = self.logits_at(&input, &pos, &crate::Mode::Eval)?; // (M, V)
        let probs = crate::ops::softmax_last_dim(&logits)?.to_vec2::<f32>()?;
        let mut out = Vec::new();
        for (mi, row) in probs.iter().enumerate() {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let mut cands = Vec::new();
            for &i in idx.iter().take(top_k) {
                let mut ids = enc.ids.clone();
                ids[where_[mi]] = i as u32;
                let token = tok
                    .inner()
                    .id_to_token(i as u32)
                    .unwrap_or_else(|| format!("<{i}>"));
                let sequence = tok
                    .inner()
                    .decode(&ids, true)
                    .map_err(|e| crate::Error::Input(format!("decode: {e}")))?;
                cands.push(FillCandidate {
                    token,
                    id: i as u32,
                    score: row[i],
                    sequence,
                });
            }
            out.push(cands);
        }
        Ok(out)
    }
}
