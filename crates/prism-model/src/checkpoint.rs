//! Hugging Face model folders: read `config.json`, weights (`model.safetensors`, sharded
//! safetensors, or PyTorch `pytorch_model.bin`) and tokenizer files; write them back so that
//! Python `transformers` loads what prism trained.
//!
//! Every weight is checked by name and shape: a missing, unexpected or wrongly shaped tensor,
//! or a corrupt file, is an error naming the file and tensor, never a panic.

use crate::error::{Error, Result};
use crate::models::bert::{Bert, BertConfig};
use crate::models::deberta_v2::{DebertaV2, DebertaV2Config};
use crate::models::modernbert::{ModernBert, ModernBertConfig};
use crate::models::xlnet::{Xlnet, XlnetConfig};
use crate::models::{Encoder, EncoderInput, EncoderOutput};
use crate::nn::{Mode, ParamStore, Source};
use crate::tokenizer::PrismTokenizer;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Checkpoint key prefixes of transformers' task classes wrapping the base model.
const BASE_PREFIXES: [&str; 7] = [
    "bert.",
    "deberta.",
    "roberta.",
    "electra.",
    "distilbert.",
    // ModernBERT's task classes keep the encoder as `model`.
    "model.",
    "transformer.",
];
/// Keys of task heads that a base model does not use; kept so that nothing is lost on save.
const HEAD_PREFIXES: [&str; 19] = [
    "cls.",
    // DeBERTa's masked-LM head (non-legacy) and the enhanced mask decoder of the original
    // checkpoints (which transformers does not load).
    "lm_predictions.",
    "mask_predictions.",
    "lm_head.",
    // ModernBERT's prediction head and masked-LM decoder.
    "head.",
    "decoder.",
    "generator_predictions.",
    "generator_lm_head.",
    "discriminator_predictions.",
    "vocab_transform.",
    "vocab_layer_norm.",
    "vocab_projector.",
    "lm_loss.",
    "classifier.",
    "qa_outputs.",
    "pre_classifier.",
    "sequence_summary.",
    "logits_proj.",
    "prism.",
];
/// Whether `key` (a normalised checkpoint name) belongs to a task or pre-training head rather
/// than to the encoder.
pub fn is_head_key(key: &str) -> bool {
    HEAD_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// Buffers, not parameters, that older checkpoints carry.
const IGNORED_KEYS: [&str; 2] = ["embeddings.position_ids", "embeddings.token_type_ids"];

/// The configuration of any supported architecture, chosen by `model_type`.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Bert(BertConfig),
    Xlnet(XlnetConfig),
    ModernBert(ModernBertConfig),
    DebertaV2(DebertaV2Config),
}

impl ModelConfig {
    /// Parse `config.json`, naming the file and the field at fault.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::InvalidConfig(msg) => Error::Config {
                path: path.to_path_buf(),
                msg,
            },
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::InvalidConfig(format!("line {} column {}: {e}", e.line(), e.column()))
        })?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("bert")
            .to_string();
        let cfg = match model_type.as_str() {
            // XLM-RoBERTa and CamemBERT are RoBERTa's architecture (their own tokenizers).
            // ELECTRA's encoder is BERT's with an embedding projection (see `models::bert`).
            "bert" | "roberta" | "xlm-roberta" | "camembert" | "electra" => {
                let mut c: BertConfig = serde_json::from_value(value)
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                c.model_type = model_type;
                ModelConfig::Bert(c)
            }
            // DistilBERT's own keys, read and written verbatim; its encoder runs as BERT's.
            "distilbert" => {
                let c: crate::models::distilbert::DistilBertConfig = serde_json::from_value(value)
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                c.validate()?;
                ModelConfig::Bert(c.to_bert())
            }
            "modernbert" => {
                let mut c: ModernBertConfig = serde_json::from_value(value)
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                c.model_type = model_type;
                ModelConfig::ModernBert(c)
            }
            "deberta-v2" => {
                let mut c: DebertaV2Config = serde_json::from_value(value)
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                c.model_type = model_type;
                ModelConfig::DebertaV2(c)
            }
            "xlnet" => {
                let mut c: XlnetConfig = serde_json::from_value(value)
                    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
                c.model_type = model_type;
                ModelConfig::Xlnet(c)
            }
            other => {
                return Err(Error::InvalidConfig(format!(
                    "`model_type` \"{other}\" is not supported (supported: bert, roberta, \
                     xlm-roberta, camembert, electra, distilbert, modernbert, deberta-v2, xlnet)"
                )))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Bert(c) => c.validate(),
            ModelConfig::Xlnet(c) => c.validate(),
            ModelConfig::ModernBert(c) => c.validate(),
            ModelConfig::DebertaV2(c) => c.validate(),
        }
    }

    pub fn model_type(&self) -> &str {
        match self {
            ModelConfig::Bert(c) => &c.model_type,
            ModelConfig::Xlnet(c) => &c.model_type,
            ModelConfig::ModernBert(c) => &c.model_type,
            ModelConfig::DebertaV2(c) => &c.model_type,
        }
    }

    /// transformers' class for the bare encoder.
    pub fn base_architecture(&self) -> &'static str {
        match self {
            ModelConfig::Bert(c) if c.model_type == "roberta" => "RobertaModel",
            ModelConfig::Bert(c) if c.model_type == "xlm-roberta" => "XLMRobertaModel",
            ModelConfig::Bert(c) if c.model_type == "camembert" => "CamembertModel",
            ModelConfig::Bert(c) if c.is_electra() => "ElectraModel",
            ModelConfig::Bert(c) if c.model_type == "distilbert" => "DistilBertModel",
            ModelConfig::Bert(_) => "BertModel",
            ModelConfig::Xlnet(_) => "XLNetModel",
            ModelConfig::ModernBert(_) => "ModernBertModel",
            ModelConfig::DebertaV2(_) => "DebertaV2Model",
        }
    }

    pub fn max_tokens(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.max_tokens(),
            // Relative positions: no table to outgrow; 512 as the released models were trained.
            ModelConfig::Xlnet(_) => 512,
            // Rotary positions: the trained context.
            ModelConfig::ModernBert(c) => c.max_position_embeddings,
            // Relative positions when there is no absolute table; the trained context either way.
            ModelConfig::DebertaV2(c) => c.max_position_embeddings,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            ModelConfig::Bert(c) => c.hidden_size,
            ModelConfig::Xlnet(c) => c.d_model,
            ModelConfig::ModernBert(c) => c.hidden_size,
            ModelConfig::DebertaV2(c) => c.hidden_size,
        }
    }

    /// How the family encodes positions, in words (`prism info`).
    pub fn positions(&self) -> String {
        match self {
            ModelConfig::Bert(c) => format!("absolute ({} learned)", c.max_position_embeddings),
            ModelConfig::Xlnet(_) => "relative (sinusoidal, two-stream)".into(),
            ModelConfig::ModernBert(c) => format!(
                "rotary (global theta {}, local theta {} within {} tokens)",
                c.theta(crate::models::modernbert::Span::Global)
                    .unwrap_or_default(),
                c.theta(crate::models::modernbert::Span::Local)
                    .unwrap_or_default(),
                c.local_attention
            ),
            ModelConfig::DebertaV2(c) => {
                let p = c.pos_att().unwrap_or_default();
                let terms: Vec<&str> = [(p.c2p, "c2p"), (p.p2c, "p2c")]
                    .iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, n)| *n)
                    .collect();
                let rel = if !c.relative_attention {
                    "no relative attention".to_string()
                } else if c.position_buckets > 0 {
                    format!(
                        "disentangled {} over {} log buckets of {} positions",
                        terms.join("+"),
                        c.position_buckets,
                        c.max_relative()
                    )
                } else {
                    format!(
                        "disentangled {} within {} positions",
                        terms.join("+"),
                        c.max_relative()
                    )
                };
                if c.position_biased_input {
                    format!("{rel}; absolute ({} learned)", c.max_position_embeddings)
                } else {
                    rel
                }
            }
        }
    }

    /// Standard deviation of freshly initialised weights (transformers' `_init_weights`).
    pub fn initializer_range(&self) -> f64 {
        match self {
            ModelConfig::Bert(c) => c.initializer_range,
            ModelConfig::Xlnet(c) => c.initializer_range,
            ModelConfig::ModernBert(c) => c.initializer_range,
            ModelConfig::DebertaV2(c) => c.initializer_range,
        }
    }

    /// The sizes every family has, under common names.
    pub fn sizes(&self) -> Sizes {
        match self {
            ModelConfig::Bert(c) => Sizes {
                layers: c.num_hidden_layers,
                hidden: c.hidden_size,
                heads: c.num_attention_heads,
                intermediate: c.intermediate_size,
                vocab: c.vocab_size,
                activation: c.hidden_act.clone(),
            },
            ModelConfig::Xlnet(c) => Sizes {
                layers: c.n_layer,
                hidden: c.d_model,
                heads: c.n_head,
                intermediate: c.d_inner,
                vocab: c.vocab_size,
                activation: c.ff_activation.clone(),
            },
            ModelConfig::ModernBert(c) => Sizes {
                layers: c.num_hidden_layers,
                hidden: c.hidden_size,
                heads: c.num_attention_heads,
                intermediate: c.intermediate_size,
                vocab: c.vocab_size,
                activation: c.hidden_activation.clone(),
            },
            ModelConfig::DebertaV2(c) => Sizes {
                layers: c.num_hidden_layers,
                hidden: c.hidden_size,
                heads: c.num_attention_heads,
                intermediate: c.intermediate_size,
                vocab: c.vocab_size,
                activation: c.hidden_act.clone(),
            },
        }
    }

    pub fn to_json(&self) -> Result<String> {
        let s = match self {
            ModelConfig::Bert(c) if c.model_type == "distilbert" => serde_json::to_string_pretty(
                &crate::models::distilbert::DistilBertConfig::from_bert(c),
            ),
            ModelConfig::Bert(c) => serde_json::to_string_pretty(c),
            ModelConfig::Xlnet(c) => serde_json::to_string_pretty(c),
            ModelConfig::ModernBert(c) => serde_json::to_string_pretty(c),
            ModelConfig::DebertaV2(c) => serde_json::to_string_pretty(c),
        };
        s.map_err(|e| Error::InvalidConfig(e.to_string()))
    }
}

/// Sizes of a model of any family.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sizes {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub activation: String,
}

/// An encoder of any supported family.
pub enum AnyEncoder {
    Bert(Bert),
    Xlnet(Xlnet),
    ModernBert(ModernBert),
    DebertaV2(DebertaV2),
}

impl Encoder for AnyEncoder {
    fn word_embeddings(&self, input_ids: &Tensor) -> Result<Tensor> {
        match self {
            AnyEncoder::Bert(m) => m.word_embeddings(input_ids),
            AnyEncoder::Xlnet(m) => m.word_embeddings(input_ids),
            AnyEncoder::ModernBert(m) => m.word_embeddings(input_ids),
            AnyEncoder::DebertaV2(m) => m.word_embeddings(input_ids),
        }
    }
    fn word_embedding_table(&self) -> &Tensor {
        match self {
            AnyEncoder::Bert(m) => m.word_embedding_table(),
            AnyEncoder::Xlnet(m) => m.word_embedding_table(),
            AnyEncoder::ModernBert(m) => m.word_embedding_table(),
            AnyEncoder::DebertaV2(m) => m.word_embedding_table(),
        }
    }
    fn forward_from_word_embeddings(
        &self,
        e: &Tensor,
        input: &EncoderInput,
        mode: &Mode,
    ) -> Result<EncoderOutput> {
        match self {
            AnyEncoder::Bert(m) => m.forward_from_word_embeddings(e, input, mode),
            AnyEncoder::Xlnet(m) => m.forward_from_word_embeddings(e, input, mode),
            AnyEncoder::ModernBert(m) => m.forward_from_word_embeddings(e, input, mode),
            AnyEncoder::DebertaV2(m) => m.forward_from_word_embeddings(e, input, mode),
        }
    }
    fn hidden_size(&self) -> usize {
        match self {
            AnyEncoder::Bert(m) => m.hidden_size(),
            AnyEncoder::Xlnet(m) => m.hidden_size(),
            AnyEncoder::ModernBert(m) => m.hidden_size(),
            AnyEncoder::DebertaV2(m) => m.hidden_size(),
        }
    }
    fn layers_and_heads(&self) -> (usize, usize) {
        match self {
            AnyEncoder::Bert(m) => m.layers_and_heads(),
            AnyEncoder::Xlnet(m) => m.layers_and_heads(),
            AnyEncoder::ModernBert(m) => m.layers_and_heads(),
            AnyEncoder::DebertaV2(m) => m.layers_and_heads(),
        }
    }
}

/// Normalise a checkpoint key: drop the task-class prefix and TF-era LayerNorm names.
fn normalise_key(key: &str) -> String {
    let mut k = key;
    for p in BASE_PREFIXES {
        if let Some(rest) = k.strip_prefix(p) {
            k = rest;
            break;
        }
    }
    let k = k.to_string();
    if k.contains("LayerNorm.") {
        k.replace("LayerNorm.gamma", "LayerNorm.weight")
            .replace("LayerNorm.beta", "LayerNorm.bias")
    } else {
        k
    }
}

fn checkpoint_err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Run a reader that might panic on malformed bytes, turning a panic into an error.
fn guarded<T>(path: &Path, f: impl FnOnce() -> candle_core::Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(checkpoint_err(path, e)),
        Err(_) => Err(checkpoint_err(path, "the reader failed on malformed data")),
    }
}

fn read_safetensors(path: &Path, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let tensors = guarded(path, || {
        candle_core::safetensors::load_buffer(&data, &Device::Cpu)
    })?;
    out.extend(tensors);
    Ok(())
}

/// Read every tensor of the checkpoint in `dir`, with normalised names.
pub fn read_weights(dir: &Path) -> Result<Source> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let bin = dir.join("pytorch_model.bin");
    // A weights name that exists but is not a regular file (a folder, a device) is named as
    // such, not reported missing.
    for p in [&single, &index, &bin] {
        if p.exists() && !p.is_file() {
            return Err(checkpoint_err(
                p,
                "exists but is not a regular file (a folder or a device?)",
            ));
        }
    }
    let mut raw = HashMap::new();
    let path = if single.is_file() {
        read_safetensors(&single, &mut raw)?;
        single
    } else if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| checkpoint_err(&index, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| checkpoint_err(&index, "no `weight_map` object"))?;
        let mut shards: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            read_safetensors(&dir.join(shard), &mut raw)?;
        }
        index
    } else if bin.is_file() {
        let tensors = guarded(&bin, || candle_core::pickle::read_all(&bin))?;
        raw.extend(tensors);
        bin
    } else {
        return Err(checkpoint_err(
            dir,
            "no model.safetensors, model.safetensors.index.json or pytorch_model.bin",
        ));
    };
    let mut tensors = HashMap::with_capacity(raw.len());
    for (k, v) in raw {
        let key = normalise_key(&k);
        if IGNORED_KEYS.contains(&key.as_str()) {
            continue;
        }
        tensors.insert(key, v);
    }
    Ok(Source { path, tensors })
}

/// A model loaded from (or destined for) a Hugging Face folder.
pub struct PretrainedModel {
    pub config: ModelConfig,
    pub encoder: AnyEncoder,
    pub params: ParamStore,
    pub tokenizer: Option<PrismTokenizer>,
    /// Tensors of task heads found in the checkpoint, by name, for the heads that use them.
    pub head_tensors: Vec<(String, Tensor)>,
    /// The folder it was loaded from.
    pub dir: Option<PathBuf>,
}

impl PretrainedModel {
    /// Load config, weights and tokenizer from an HF model folder.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        Self::load_mapped(dir, device, |_, _| Ok(()))
    }

    /// [`PretrainedModel::load`], letting `map` rename or drop checkpoint tensors (given the
    /// config) before the parameters are built: how a transformers task head's weights come
    /// under prism's names.
    pub fn load_mapped(
        dir: &Path,
        device: &Device,
        map: impl FnOnce(&ModelConfig, &mut Source) -> Result<()>,
    ) -> Result<Self> {
        Self::load_sharing(dir, device, map, &[])
    }

    /// [`PretrainedModel::load_mapped`] with `shared` parameters of another model put in first
    /// ([`ParamStore::share`]): the folder's own tensors of those names are not used.
    pub fn load_sharing(
        dir: &Path,
        device: &Device,
        map: impl FnOnce(&ModelConfig, &mut Source) -> Result<()>,
        shared: &[(String, candle_core::Var)],
    ) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model folder not found"),
            ));
        }
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let mut source = read_weights(dir)?;
        if config.model_type() == "distilbert" {
            source.tensors = source
                .tensors
                .into_iter()
                .map(|(k, v)| (crate::models::distilbert::to_bert_key(&k), v))
                .collect();
        }
        if let ModelConfig::DebertaV2(c) = &config {
            // transformers ignores a position table the model does not use
            // (`_keys_to_ignore_on_load_unexpected`).
            if !c.position_biased_input {
                source
                    .tensors
                    .remove("embeddings.position_embeddings.weight");
            }
        }
        map(&config, &mut source)?;
        for (name, _) in shared {
            source.tensors.remove(name);
        }
        let source_path = source.path.clone();
        let params = ParamStore::from_source(source, device, 0);
        for (name, var) in shared {
            params.share(name, var.clone());
        }
        let encoder = match &config {
            ModelConfig::Bert(c) => AnyEncoder::Bert(Bert::load(&params.root(), c)?),
            ModelConfig::Xlnet(c) => AnyEncoder::Xlnet(Xlnet::load(&params.root(), c)?),
            ModelConfig::ModernBert(c) => {
                AnyEncoder::ModernBert(ModernBert::load(&params.root(), c)?)
            }
            ModelConfig::DebertaV2(c) => AnyEncoder::DebertaV2(DebertaV2::load(&params.root(), c)?),
        };
        let mut head_tensors = Vec::new();
        for (name, t) in params.unused_source_tensors() {
            if HEAD_PREFIXES.iter().any(|p| name.starts_with(p)) {
                head_tensors.push((name, t));
            } else {
                return Err(Error::UnexpectedWeight {
                    path: source_path,
                    name,
                    shape: t.dims().to_vec(),
                    model: config.base_architecture().to_string(),
                });
            }
        }
        let has_tokenizer = [
            "tokenizer.json",
            "vocab.txt",
            "vocab.json",
            "spiece.model",
            "spm.model",
        ]
        .iter()
        .any(|f| dir.join(f).is_file());
        let tokenizer = if has_tokenizer {
            Some(PrismTokenizer::load(dir, config.max_tokens())?)
        } else {
            None
        };
        Ok(Self {
            config,
            encoder,
            params,
            tokenizer,
            head_tensors,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// A freshly initialised model (weights drawn from `seed`) with an optional tokenizer.
    pub fn fresh(
        config: ModelConfig,
        tokenizer: Option<PrismTokenizer>,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        Self::fresh_sharing(config, tokenizer, device, seed, &[])
    }

    /// [`PretrainedModel::fresh`] with `shared` parameters of another model in place of fresh
    /// ones ([`ParamStore::share`]).
    pub fn fresh_sharing(
        config: ModelConfig,
        tokenizer: Option<PrismTokenizer>,
        device: &Device,
        seed: u64,
        shared: &[(String, candle_core::Var)],
    ) -> Result<Self> {
        config.validate()?;
        let params = ParamStore::fresh(device, seed);
        for (name, var) in shared {
            params.share(name, var.clone());
        }
        let encoder = match &config {
            ModelConfig::Bert(c) => AnyEncoder::Bert(Bert::load(&params.root(), c)?),
            ModelConfig::Xlnet(c) => AnyEncoder::Xlnet(Xlnet::load(&params.root(), c)?),
            ModelConfig::ModernBert(c) => {
                AnyEncoder::ModernBert(ModernBert::load(&params.root(), c)?)
            }
            ModelConfig::DebertaV2(c) => AnyEncoder::DebertaV2(DebertaV2::load(&params.root(), c)?),
        };
        Ok(Self {
            config,
            encoder,
            params,
            tokenizer,
            head_tensors: Vec::new(),
            dir: None,
        })
    }

    /// The same model with frozen parameters (shared, not copied): gradients flow to the
    /// inputs only. Explanations use it; training must not.
    pub fn frozen(&self) -> Result<Self> {
        self.rebuilt_with(self.params.frozen())
    }

    /// [`PretrainedModel::frozen`] with every linear layer in bf16 on AMX, forward and input
    /// gradients ([`ParamStore::frozen_bf16`]): the packed bf16 weights are a snapshot taken
    /// now. On a CPU without AMX-BF16 (or another device) this is `frozen()`.
    pub fn frozen_bf16(&self) -> Result<Self> {
        self.rebuilt_with(self.params.frozen_bf16())
    }

    fn rebuilt_with(&self, params: ParamStore) -> Result<Self> {
        let encoder = match &self.config {
            ModelConfig::Bert(c) => AnyEncoder::Bert(Bert::load(&params.root(), c)?),
            ModelConfig::Xlnet(c) => AnyEncoder::Xlnet(Xlnet::load(&params.root(), c)?),
            ModelConfig::ModernBert(c) => {
                AnyEncoder::ModernBert(ModernBert::load(&params.root(), c)?)
            }
            ModelConfig::DebertaV2(c) => AnyEncoder::DebertaV2(DebertaV2::load(&params.root(), c)?),
        };
        Ok(Self {
            config: self.config.clone(),
            encoder,
            params,
            tokenizer: self.tokenizer.clone(),
            head_tensors: self.head_tensors.clone(),
            dir: self.dir.clone(),
        })
    }

    pub fn tokenizer(&self) -> Result<&PrismTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| Error::Tokenizer {
            path: self.dir.clone().unwrap_or_default(),
            msg: "this model folder has no tokenizer files".into(),
        })
    }

    pub fn num_parameters(&self) -> usize {
        self.params.num_parameters()
    }

    /// Write the folder: `config.json`, `model.safetensors`, tokenizer files. Each file is
    /// written to a temporary name and renamed, so an interrupted save never leaves a torn file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        // Every tensor under its checkpoint name. Head tensors a task head has since taken over
        // are parameters now: keep their current (trained) values, not the ones read at load
        // time. A stale copy of the tied decoder is not written: transformers ties it to the
        // word embeddings on load.
        let extra = match &self.config {
            ModelConfig::Bert(c) => &c.extra,
            ModelConfig::Xlnet(c) => &c.extra,
            ModelConfig::ModernBert(c) => &c.extra,
            ModelConfig::DebertaV2(c) => &c.extra,
        };
        let tied = extra
            .get("tie_word_embeddings")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let distil = self.config.model_type() == "distilbert";
        for (k, v) in self.params.tensors() {
            let k = if distil {
                crate::models::distilbert::from_bert_key(&k)
            } else {
                k
            };
            tensors.insert(k, v.contiguous()?);
        }
        for (k, v) in &self.head_tensors {
            if tied && crate::heads::is_tied_decoder_copy(k) {
                continue;
            }
            tensors.entry(k.clone()).or_insert(v.contiguous()?);
        }
        // The architecture: a transformers task class (e.g. `BertForMaskedLM`) while the folder
        // has transformers head tensors, else the bare model. A task class keeps the encoder
        // under its base prefix (`bert.`, `roberta.`).
        let is_head = |k: &str| HEAD_PREFIXES.iter().any(|p| k.starts_with(p));
        let has_hf_head = tensors
            .keys()
            .any(|k| is_head(k) && !k.starts_with("prism."));
        let mut config = self.config.clone();
        let base_arch = self.config.base_architecture().to_string();
        let archs = match &mut config {
            ModelConfig::Bert(c) => &mut c.architectures,
            ModelConfig::Xlnet(c) => &mut c.architectures,
            ModelConfig::ModernBert(c) => &mut c.architectures,
            ModelConfig::DebertaV2(c) => &mut c.architectures,
        };
        if archs.is_empty() || !has_hf_head {
            *archs = vec![base_arch.clone()];
        }
        let arch = archs[0].clone();
        if arch != base_arch {
            let prefix = match &self.config {
                ModelConfig::Bert(c) if c.flavor() == crate::Flavor::Roberta => "roberta.",
                ModelConfig::Bert(c) if c.is_electra() => "electra.",
                ModelConfig::Bert(c) if c.model_type == "distilbert" => "distilbert.",
                ModelConfig::Bert(_) => "bert.",
                ModelConfig::Xlnet(_) => "transformer.",
                ModelConfig::ModernBert(_) => "model.",
                ModelConfig::DebertaV2(_) => "deberta.",
            };
            tensors = tensors
                .into_iter()
                .map(|(k, v)| {
                    if is_head(&k) {
                        (k, v)
                    } else {
                        (format!("{prefix}{k}"), v)
                    }
                })
                .collect();
        }
        write_safetensors(dir, &tensors)?;
        write_atomic(&dir.join("config.json"), config.to_json()?.as_bytes())?;
        self.save_tokenizer(dir)
    }

    /// The tokenizer files: `tokenizer.json` and the source folder's vocabulary and settings.
    pub fn save_tokenizer(&self, dir: &Path) -> Result<()> {
        if let Some(tok) = &self.tokenizer {
            tok.save(dir)?;
            if let Some(src) = &self.dir {
                for f in [
                    "vocab.txt",
                    "vocab.json",
                    "merges.txt",
                    "spiece.model",
                    "spm.model",
                    "tokenizer_config.json",
                    "special_tokens_map.json",
                ] {
                    let from = src.join(f);
                    if from.is_file() && src != dir {
                        std::fs::copy(&from, dir.join(f)).map_err(|e| Error::io(&from, e))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Write `dir/model.safetensors` through a temporary file and a rename.
pub fn write_safetensors(dir: &Path, tensors: &HashMap<String, Tensor>) -> Result<()> {
    let weights = dir.join("model.safetensors");
    let tmp = dir.join(".model.safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| checkpoint_err(&tmp, e))?;
    std::fs::rename(&tmp, &weights).map_err(|e| Error::io(&weights, e))
}

/// Write `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_normalised() {
        assert_eq!(
            normalise_key("bert.encoder.layer.0.output.LayerNorm.gamma"),
            "encoder.layer.0.output.LayerNorm.weight"
        );
        assert_eq!(
            normalise_key("roberta.embeddings.LayerNorm.beta"),
            "embeddings.LayerNorm.bias"
        );
        assert_eq!(
            normalise_key("cls.predictions.bias"),
            "cls.predictions.bias"
        );
    }

    #[test]
    fn config_errors_name_the_problem() {
        let e = ModelConfig::from_json(
            r#"{"model_type":"bert","vocab_size":10,"hidden_size":30,"num_hidden_layers":1,"num_attention_heads":4,"intermediate_size":8}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`hidden_size` 30 is not divisible by `num_attention_heads` 4"),
            "{e}"
        );
        let e = ModelConfig::from_json(r#"{"model_type":"gpt2"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gpt2") && e.contains("supported"), "{e}");
        let e = ModelConfig::from_json(r#"{"model_type":"bert","vocab_size":10}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hidden_size"), "{e}");
    }
}
