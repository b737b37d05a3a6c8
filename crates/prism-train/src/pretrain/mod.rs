//! Pre-training with masked language modelling: from a fresh model (sizes in the config, a
//! tokenizer trained on the corpus) or continued from an existing one. The loop shares the
//! fine-tuning trainer's parts (AdamW, schedule, clipping, accumulation, atomic checkpoints,
//! exact resume, JSONL log, progress bar); the data is a streamed, packed corpus
//! ([`corpus`]) masked afresh for every batch ([`masking`]).
//!
//! Determinism: the sequence order is a function of the seed and the files; masks and dropout
//! of update `s` come from generators seeded by `(seed, s)`. A checkpoint stores the corpus
//! position, so a resumed run ends at the same weights as an uninterrupted one.

pub mod corpus;
pub mod masking;
pub mod plm;
pub mod tokenizer;

use crate::checkpoint::{
    checkpoint_dir, find_checkpoint, prepare_output, read_checkpoint, swap_dir, write_checkpoint,
};
use crate::config::{d_clip, d_eval_batch, d_max_len, d_one, d_seed, d_wd};
use crate::error::{Error, Result};
use crate::optim::{lr_at, AdamW, AdamWConfig, Schedule};
use crate::trainer::{progress_bar, rng_for, Cursor, Log};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
use corpus::{expand_paths, pack_all, CorpusStream, DocFormat, PackSpec, Sequence, TextEncoder};
use masking::{mask_batch, MaskConfig, MaskedBatch, Vocab};
use plm::{plm_batch, PlmConfig};
use prism_model::checkpoint::write_atomic;
use prism_model::heads::{MaskedLm, PermutationLm};
use prism_model::models::xlnet::{XlnetConfig, XlnetExtras};
use prism_model::{
    fetch, BertConfig, EncoderInput, Mode, ModelConfig, PretrainedModel, PrismTokenizer,
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
pub use tokenizer::{
    save_trained_tokenizer, save_trained_tokenizer_with, train_tokenizer, TokenizerKind,
    TokenizerTrainConfig,
};

const STREAM_MASK: u64 = 31;
const STREAM_DROPOUT: u64 = 32;
const STREAM_DEV_MASK: u64 = 33;

fn d_batch() -> usize {
    32
}
fn d_lr() -> f64 {
    5e-4
}
fn d_warmup() -> f64 {
    0.06
}
fn d_shuffle() -> usize {
    2000
}
fn d_eval_seqs() -> usize {
    512
}
fn d_model_type() -> String {
    "bert".into()
}
fn d_dropout() -> f64 {
    0.1
}
fn d_vocab() -> usize {
    8000
}
fn d_min_freq() -> u64 {
    2
}
fn d_true() -> bool {
    true
}

/// `[model]`: continue from `from`, or build a fresh model of these sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// A model folder or a registered name (`minilm`) to continue pre-training.
    #[serde(default)]
    pub from: Option<String>,
    /// Fresh model: a folder with the tokenizer to use.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Fresh model: train a tokenizer on the training corpus into `output/tokenizer`.
    #[serde(default)]
    pub train_tokenizer: Option<TrainTokenizer>,
    /// `bert` or `roberta`.
    #[serde(default = "d_model_type")]
    pub model_type: String,
    #[serde(default)]
    pub hidden_size: Option<usize>,
    #[serde(default)]
    pub num_hidden_layers: Option<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    #[serde(default = "d_dropout")]
    pub dropout: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTokenizer {
    pub kind: TokenizerKind,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_min_freq")]
    pub min_frequency: u64,
    #[serde(default = "d_true")]
    pub lowercase: bool,
}

/// `[corpus]`: plain text files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    /// Files or folders, or `NAME/SPLIT` of a fetched corpus (`brown/train`).
    pub train: Vec<String>,
    /// Held-out text for perplexity, the same way (`brown/dev`).
    #[serde(default)]
    pub dev: Vec<String>,
    #[serde(default)]
    pub format: DocFormat,
    /// Tokens per packed sequence, `[CLS]` and `[SEP]` included.
    #[serde(default = "d_max_len")]
    pub max_length: usize,
    /// Sequences shuffled together.
    #[serde(default = "d_shuffle")]
    pub shuffle_buffer: usize,
    /// Held-out sequences evaluated.
    #[serde(default = "d_eval_seqs")]
    pub max_eval_sequences: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub output: PathBuf,
    #[serde(default = "d_seed")]
    pub seed: u64,
    pub steps: usize,
    /// Sequences per micro-batch.
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    #[serde(default = "d_one")]
    pub grad_accum: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Warm-up, as a fraction of `steps` (< 1) or a number of steps (>= 1).
    #[serde(default = "d_warmup")]
    pub warmup: f64,
    #[serde(default)]
    pub schedule: Schedule,
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Held-out evaluation every N updates (0: only at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// Resumable checkpoint every N updates (0: at each evaluation and the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    #[serde(default = "d_eval_batch")]
    pub eval_batch_size: usize,
    pub model: ModelSpec,
    pub corpus: CorpusConfig,
    /// `mlm` (BERT, RoBERTa) or `plm` (permutation LM, XLNet).
    #[serde(default)]
    pub objective: Objective,
    #[serde(default)]
    pub mlm: MaskConfig,
    #[serde(default)]
    pub plm: PlmConfig,
}

/// The pre-training objective.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Masked language modelling (BERT, RoBERTa).
    #[default]
    Mlm,
    /// Permutation language modelling (XLNet).
    Plm,
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mlm" => Ok(Self::Mlm),
            "plm" => Ok(Self::Plm),
            o => Err(format!("unknown objective `{o}` (mlm, plm)")),
        }
    }
}

impl PretrainConfig {
    /// Parse a TOML file; relative paths are taken relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg: PretrainConfig = toml::from_str(&text).map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: e.to_string().trim().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if cfg.output.is_relative() {
            cfg.output = base.join(&cfg.output);
        }
        if let Some(t) = &mut cfg.model.tokenizer {
            if t.is_relative() {
                *t = base.join(&*t);
            }
        }
        if let Some(f) = &mut cfg.model.from {
            if Path::new(f).is_relative() && base.join(&*f).is_dir() {
                *f = base.join(&*f).to_string_lossy().to_string();
            }
        }
        for list in [&mut cfg.corpus.train, &mut cfg.corpus.dev] {
            for p in list.iter_mut() {
                if Path::new(p).is_relative() && base.join(&*p).exists() {
                    *p = base.join(&*p).to_string_lossy().to_string();
                }
            }
        }
        cfg.validate().map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.steps == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad("`steps`, `batch_size` and `grad_accum` must be positive".into());
        }
        if !(self.lr > 0.0) {
            return bad(format!("`lr` {} must be positive", self.lr));
        }
        if self.corpus.train.is_empty() {
            return bad("corpus.train lists no files".into());
        }
        if self.corpus.max_length < 8 {
            return bad(format!(
                "corpus.max_length {} is too small (at least 8)",
                self.corpus.max_length
            ));
        }
        self.mlm.validate().map_err(Error::Config)?;
        self.plm.validate().map_err(Error::Config)?;
        let m = &self.model;
        let fresh = m.tokenizer.is_some() || m.train_tokenizer.is_some();
        match (&m.from, fresh) {
            (Some(_), true) => bad("[model]: give either `from` (continue) or a tokenizer (fresh model), not both".into()),
            (None, false) => bad("[model]: give `from = \"MODEL\"` to continue pre-training, or `tokenizer`/`train_tokenizer` and sizes for a fresh model".into()),
            (None, true) => {
                for (k, v) in [
                    ("hidden_size", m.hidden_size),
                    ("num_hidden_layers", m.num_hidden_layers),
                    ("num_attention_heads", m.num_attention_heads),
                ] {
                    if v.is_none() {
                        return bad(format!("[model]: a fresh model needs `{k}`"));
                    }
                }
                if !matches!(m.model_type.as_str(), "bert" | "roberta" | "xlnet") {
                    return bad(format!(
                        "[model]: model_type `{}` (bert, roberta or xlnet)",
                        m.model_type
                    ));
                }
                if (m.model_type == "xlnet") != (self.objective == Objective::Plm) {
                    return bad(format!(
                        "objective `{:?}` with model_type `{}`: XLNet pre-trains with `plm`, BERT and RoBERTa with `mlm`",
                        self.objective, m.model_type
                    ));
                }
                Ok(())
            }
            (Some(_), false) => Ok(()),
        }
    }

    pub fn warmup_steps(&self) -> usize {
        crate::optim::warmup_steps(self.warmup, self.steps)
    }
}

/// Corpus entries to files: paths, or `NAME/SPLIT` of a fetched corpus.
pub fn resolve_corpus(specs: &[String]) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for s in specs {
        let p = PathBuf::from(s);
        if p.exists() {
            paths.push(p);
            continue;
        }
        let (name, split) = s.split_once('/').unwrap_or((s.as_str(), "train"));
        if crate::data::registry::DATASETS
            .iter()
            .any(|d| d.name == name)
            && name == "brown"
        {
            crate::data::registry::fetch_dataset(name, false)?;
            let d = crate::data::registry::data_dir(name).join(split);
            if !d.is_dir() {
                return Err(Error::Config(format!(
                    "corpus `{name}` has no split `{split}`"
                )));
            }
            paths.push(d);
        } else {
            return Err(Error::io(
                &p,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "corpus path not found (nor a fetched corpus like `brown/train`)",
                ),
            ));
        }
    }
    expand_paths(&paths)
}

/// Everything besides weights and optimiser moments that a resumed run needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PretrainState {
    pub step: usize,
    pub cursor: Cursor,
    pub adam_t: u64,
    pub tokens_seen: u64,
    pub log_bytes: u64,
    pub elapsed_s: f64,
    pub config: PretrainConfig,
}

/// Held-out language-modelling figures (MLM or PLM).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct LmEval {
    pub loss: f64,
    pub perplexity: f64,
    pub accuracy: f64,
    pub predicted_tokens: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainReport {
    pub steps: usize,
    pub completed: bool,
    pub train_seconds: f64,
    pub tokens_seen: u64,
    pub parameters: usize,
    pub dev: Option<LmEval>,
    /// (step, held-out perplexity) at every evaluation.
    pub perplexity_curve: Vec<(usize, f64)>,
    pub model_dir: PathBuf,
}

/// The special ids that masking must know.
fn vocab_of(tok: &PrismTokenizer) -> Result<(Vocab, u32, u32)> {
    let find = |c: &[&str]| c.iter().find_map(|t| tok.token_to_id(t));
    let path = tok.path().to_path_buf();
    let missing = |what: &str| Error::File {
        path: path.clone(),
        msg: format!("the tokenizer has no {what} token"),
    };
    let mask_id = find(&["[MASK]", "<mask>"]).ok_or_else(|| missing("mask"))?;
    let cls = find(&["[CLS]", "<cls>", "<s>"]).ok_or_else(|| missing("[CLS]/<cls>/<s>"))?;
    let sep = find(&["[SEP]", "<sep>", "</s>"]).ok_or_else(|| missing("[SEP]/<sep>/</s>"))?;
    let mut special_ids: Vec<u32> = tok
        .inner()
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(&i, _)| i)
        .collect();
    for t in [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>",
        "<cls>", "<sep>", "<eod>", "<eop>",
    ] {
        if let Some(i) = tok.token_to_id(t) {
            special_ids.push(i);
        }
    }
    special_ids.sort_unstable();
    special_ids.dedup();
    let vocab = Vocab {
        mask_id,
        pad_id: tok.pad_id(),
        size: tok.vocab_size() as u32,
        special_ids,
    };
    Ok((vocab, cls, sep))
}

fn batch_input(mb: &MaskedBatch, device: &Device) -> Result<(EncoderInput, Tensor, Tensor)> {
    let ids = Tensor::from_vec(mb.input_ids.clone(), (mb.batch, mb.len), device)?;
    let mask = Tensor::from_vec(mb.attention_mask.clone(), (mb.batch, mb.len), device)?;
    let types = ids.zeros_like()?;
    let pos = Tensor::new(mb.positions.as_slice(), device)?;
    let labels = Tensor::new(mb.labels.as_slice(), device)?;
    Ok((
        EncoderInput::new(ids, mask).with_token_type_ids(types),
        pos,
        labels,
    ))
}

/// The model being pre-trained, with its objective's head.
pub enum LmModel {
    Mlm(MaskedLm),
    Plm(PermutationLm),
}

impl LmModel {
    pub fn new(base: PretrainedModel, objective: Objective) -> Result<Self> {
        Ok(match objective {
            Objective::Mlm => LmModel::Mlm(MaskedLm::new(base)?),
            Objective::Plm => LmModel::Plm(PermutationLm::new(base)?),
        })
    }

    pub fn base(&self) -> &PretrainedModel {
        match self {
            LmModel::Mlm(m) => &m.base,
            LmModel::Plm(m) => &m.base,
        }
    }
}

/// A batch of either objective, ready for the model.
pub struct LmBatch {
    pub input: EncoderInput,
    /// PLM: the permutation mask and two-stream flag.
    pub extras: Option<XlnetExtras>,
    /// Flat positions of the predicted tokens, (P) u32, and their ids.
    pub positions: Tensor,
    pub labels: Tensor,
    pub labels_vec: Vec<u32>,
    /// Real tokens in the batch.
    pub tokens: usize,
}

/// Mask (MLM) or permute (PLM) a batch of packed sequences with `rng`.
pub fn make_batch(
    cfg: &PretrainConfig,
    seqs: &[&Sequence],
    vocab: &Vocab,
    rng: &mut rand::rngs::StdRng,
    device: &Device,
) -> Result<LmBatch> {
    match cfg.objective {
        Objective::Mlm => {
            let mb = mask_batch(seqs, &cfg.mlm, vocab, rng);
            let (input, positions, labels) = batch_input(&mb, device)?;
            Ok(LmBatch {
                input,
                extras: None,
                positions,
                labels,
                labels_vec: mb.labels,
                tokens: mb.tokens,
            })
        }
        Objective::Plm => {
            let pb = plm_batch(seqs, &cfg.plm, vocab.pad_id, rng);
            let (b, t) = (pb.batch, pb.len);
            let ids = Tensor::from_vec(pb.input_ids, (b, t), device)?;
            let mask = Tensor::from_vec(pb.attention_mask, (b, t), device)?;
            // One query-stream slot per position (transformers' identity target_mapping,
            // without materialising it).
            let extras = XlnetExtras {
                perm_mask: Some(Tensor::from_vec(pb.perm_mask, (b, t, t), device)?),
                target_mapping: None,
                mems: None,
                two_stream: true,
            };
            Ok(LmBatch {
                input: EncoderInput::new(ids, mask),
                extras: Some(extras),
                positions: Tensor::new(pb.positions.as_slice(), device)?,
                labels: Tensor::new(pb.labels.as_slice(), device)?,
                labels_vec: pb.labels,
                tokens: pb.tokens,
            })
        }
    }
}

/// Vocabulary logits at the batch's predicted positions, (P, V).
pub fn lm_logits(model: &LmModel, b: &LmBatch, mode: &Mode) -> Result<Tensor> {
    Ok(match (model, &b.extras) {
        (LmModel::Mlm(m), _) => m.logits_at(&b.input, &b.positions, mode)?,
        (LmModel::Plm(m), Some(x)) => m.logits_at(&b.input, x, &b.positions, mode)?,
        (LmModel::Plm(_), None) => {
            return Err(Error::Config(
                "a PLM batch needs its permutation mask".into(),
            ))
        }
    })
}

/// Held-out loss, perplexity and predicted-token accuracy, with masks (or permutations) fixed
/// by the seed, the same at every evaluation, so the curve compares like with like.
pub fn evaluate_lm(
    model: &LmModel,
    dev: &[Sequence],
    cfg: &PretrainConfig,
    vocab: &Vocab,
    seed: u64,
) -> Result<LmEval> {
    let device = model.base().params.device().clone();
    let (mut nll, mut correct, mut n) = (0f64, 0usize, 0usize);
    for (bi, chunk) in dev.chunks(cfg.eval_batch_size.max(1)).enumerate() {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let b = make_batch(
            cfg,
            &refs,
            vocab,
            &mut rng_for(seed, STREAM_DEV_MASK, bi as u64),
            &device,
        )?;
        let logits = lm_logits(model, &b, &Mode::Eval)?.detach(); // (P, V)
        let labels: Vec<i64> = b.labels_vec.iter().map(|&x| x as i64).collect();
        let rows: Vec<f32> = prism_model::ops::cross_entropy_rows(&logits, &labels)?.to_vec1()?;
        let argmax: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        nll += rows.iter().map(|&x| x as f64).sum::<f64>();
        correct += argmax
            .iter()
            .zip(&b.labels_vec)
            .filter(|(a, b)| a == b)
            .count();
        n += b.labels_vec.len();
    }
    let loss = nll / n.max(1) as f64;
    Ok(LmEval {
        loss,
        perplexity: loss.exp(),
        accuracy: correct as f64 / n.max(1) as f64,
        predicted_tokens: n,
    })
}

/// Options of one invocation.
#[derive(Clone, Debug, Default)]
pub struct PretrainOptions {
    pub restart: bool,
    pub stop_after: Option<usize>,
    pub progress: bool,
}

/// A fresh model for the config, with its tokenizer (trained now if asked).
fn fresh_model(
    cfg: &PretrainConfig,
    train_files: &[PathBuf],
    device: &Device,
) -> Result<PretrainedModel> {
    let m = &cfg.model;
    let tok_dir = match (&m.tokenizer, &m.train_tokenizer) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => {
            let dir = cfg.output.join("tokenizer");
            if !dir.join("tokenizer.json").is_file() {
                eprintln!(
                    "training a {:?} tokenizer ({} tokens) on {} files",
                    t.kind,
                    t.vocab_size,
                    train_files.len()
                );
                let tk = train_tokenizer(
                    &TokenizerTrainConfig {
                        kind: t.kind,
                        vocab_size: t.vocab_size,
                        min_frequency: t.min_frequency,
                        lowercase: t.lowercase,
                        xlnet: m.model_type == "xlnet",
                    },
                    train_files,
                )?;
                save_trained_tokenizer_with(
                    &tk,
                    t.kind,
                    m.model_type == "xlnet",
                    t.lowercase,
                    cfg.corpus.max_length,
                    &dir,
                )?;
            }
            dir
        }
        (None, None) => return Err(Error::Config("[model] needs a tokenizer".into())),
    };
    if m.model_type == "xlnet" {
        let tok = PrismTokenizer::load(&tok_dir, cfg.corpus.max_length)?;
        let hidden = m.hidden_size.unwrap_or(256);
        let heads = m.num_attention_heads.unwrap_or(4);
        let config = XlnetConfig {
            model_type: "xlnet".into(),
            architectures: vec![],
            vocab_size: tok.vocab_size(),
            d_model: hidden,
            n_layer: m.num_hidden_layers.unwrap_or(4),
            n_head: heads,
            d_head: Some(hidden / heads.max(1)),
            d_inner: m.intermediate_size.unwrap_or(4 * hidden),
            ff_activation: "gelu".into(),
            untie_r: true,
            attn_type: "bi".into(),
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            dropout: m.dropout,
            mem_len: None,
            bi_data: false,
            clamp_len: -1,
            same_length: false,
            pad_token_id: Some(tok.pad_id()),
            extra: serde_json::Map::from_iter([("tie_word_embeddings".to_string(), true.into())]),
        };
        let mut model =
            PretrainedModel::fresh(ModelConfig::Xlnet(config), Some(tok), device, cfg.seed)?;
        model.dir = Some(tok_dir);
        return Ok(model);
    }
    let roberta = m.model_type == "roberta";
    let max_pos = cfg.corpus.max_length + if roberta { 2 } else { 0 };
    let tok = PrismTokenizer::load(&tok_dir, cfg.corpus.max_length)?;
    let hidden = m.hidden_size.unwrap_or(256);
    let mut extra = serde_json::Map::new();
    extra.insert("tie_word_embeddings".into(), true.into());
    if roberta {
        for (k, t) in [("bos_token_id", "<s>"), ("eos_token_id", "</s>")] {
            if let Some(i) = tok.token_to_id(t) {
                extra.insert(k.into(), i.into());
            }
        }
    }
    let config = BertConfig {
        model_type: m.model_type.clone(),
        architectures: vec![],
        vocab_size: tok.vocab_size(),
        hidden_size: hidden,
        num_hidden_layers: m.num_hidden_layers.unwrap_or(4),
        num_attention_heads: m.num_attention_heads.unwrap_or(4),
        intermediate_size: m.intermediate_size.unwrap_or(4 * hidden),
        hidden_act: "gelu".into(),
        hidden_dropout_prob: m.dropout,
        attention_probs_dropout_prob: m.dropout,
        max_position_embeddings: max_pos,
        type_vocab_size: if roberta { 1 } else { 2 },
        initializer_range: 0.02,
        layer_norm_eps: if roberta { 1e-5 } else { 1e-12 },
        pad_token_id: Some(tok.pad_id()),
        position_embedding_type: "absolute".into(),
        extra,
    };
    let mut model = PretrainedModel::fresh(ModelConfig::Bert(config), Some(tok), device, cfg.seed)?;
    model.dir = Some(tok_dir);
    Ok(model)
}

/// Pre-train as configured, resuming from `output/checkpoint-last` when it exists.
pub fn pretrain(
    cfg: &PretrainConfig,
    device: &Device,
    opts: &PretrainOptions,
) -> Result<PretrainReport> {
    let out = cfg.output.clone();
    prepare_output(&out, opts.restart, &[])?;
    let train_files = resolve_corpus(&cfg.corpus.train)?;
    let dev_files = if cfg.corpus.dev.is_empty() {
        Vec::new()
    } else {
        resolve_corpus(&cfg.corpus.dev)?
    };
    let ck = checkpoint_dir(&out);
    let resume = find_checkpoint(&out, STATE_FILE);
    let mut saved = None;
    let mut opt_state = None;
    let base = match &resume {
        Some(dir) => {
            let r = read_checkpoint(dir, STATE_FILE, cfg, |s: &PretrainState| &s.config)?;
            opt_state = Some((r.moments, r.moments_path));
            saved = Some(r.state);
            PretrainedModel::load(dir, device)?
        }
        None => match &cfg.model.from {
            Some(name) => PretrainedModel::load(&fetch::resolve_model(name)?, device)?,
            None => fresh_model(cfg, &train_files, device)?,
        },
    };
    base.params.reseed(cfg.seed ^ 0x4D4C4D);
    let xlnet = matches!(base.config, ModelConfig::Xlnet(_));
    let model = LmModel::new(base, cfg.objective)?;
    let tok = model.base().tokenizer()?.clone();
    if cfg.corpus.max_length > model.base().config.max_tokens() {
        return Err(Error::Config(format!(
            "corpus.max_length {} exceeds the model's {} positions",
            cfg.corpus.max_length,
            model.base().config.max_tokens()
        )));
    }
    let (vocab, cls, sep) = vocab_of(&tok)?;
    let enc = TextEncoder::new(tok.inner())?;
    let spec = PackSpec {
        files: train_files.clone(),
        cls_last: xlnet,
        format: cfg.corpus.format,
        max_len: cfg.corpus.max_length,
        cls,
        sep,
        shuffle_buffer: cfg.corpus.shuffle_buffer.max(1),
        seed: cfg.seed,
    };
    let dev: Vec<Sequence> = if dev_files.is_empty() {
        Vec::new()
    } else {
        pack_all(
            &PackSpec {
                files: dev_files,
                ..spec.clone()
            },
            &enc,
            cfg.corpus.max_eval_sequences,
        )?
    };
    let mut state = saved.unwrap_or_else(|| PretrainState {
        step: 0,
        cursor: Cursor::default(),
        adam_t: 0,
        tokens_seen: 0,
        log_bytes: 0,
        elapsed_s: 0.0,
        config: cfg.clone(),
    });
    let mut opt = AdamW::new(
        model.base().params.vars(),
        AdamWConfig {
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    );
    if let Some((t, p)) = opt_state {
        opt.load_state(&t, state.adam_t, &p)?;
    }
    let mut log = Log::open(&out.join("metrics.jsonl"), state.log_bytes)?;
    if resume.is_some() {
        eprintln!("resuming from step {} ({})", state.step, ck.display());
    } else {
        eprintln!(
            "pre-training a {}-parameter {} on {} files ({} held-out sequences)",
            model.base().num_parameters(),
            model.base().config.model_type(),
            train_files.len(),
            dev.len()
        );
    }
    let mut stream = CorpusStream::start(spec, enc, state.cursor);
    let warmup = cfg.warmup_steps();
    let bar = progress_bar(opts.progress, cfg.steps, state.step);
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut tokens_this_run = 0u64;
    let mut running: Option<f64> = None;
    let mut this_run = 0usize;
    let mut curve: Vec<(usize, f64)> = Vec::new();
    let mut last_eval = None;

    while state.step < cfg.steps {
        if opts.stop_after.is_some_and(|n| this_run >= n) {
            break;
        }
        let step = state.step;
        let lr = lr_at(step, cfg.lr, warmup, cfg.steps, cfg.schedule);
        let mut grads: Option<GradStore> = None;
        let mut loss_sum = 0.0;
        let mut step_tokens = 0u64;
        for micro in 0..cfg.grad_accum {
            let k = (step * cfg.grad_accum + micro) as u64;
            // -- the next packed sequences, masked afresh
            let mut seqs = Vec::with_capacity(cfg.batch_size);
            for _ in 0..cfg.batch_size {
                let (s, c) = stream.next_sequence()?;
                seqs.push(s);
                state.cursor = c;
            }
            let refs: Vec<&Sequence> = seqs.iter().collect();
            let batch = make_batch(
                cfg,
                &refs,
                &vocab,
                &mut rng_for(cfg.seed, STREAM_MASK, k),
                device,
            )?;
            step_tokens += batch.tokens as u64;
            // -- forward, loss, backward
            let mode = Mode::train(rng_for(cfg.seed, STREAM_DROPOUT, k).random::<u64>());
            let logits = lm_logits(&model, &batch, &mode)?;
            let loss = crate::tasks::cross_entropy(&logits, &batch.labels)?;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(Error::Config(format!(
                    "step {step}: the MLM loss is {lv}; lower the learning rate"
                )));
            }
            loss_sum += lv;
            let g = loss.backward()?;
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    acc.extend(g)?;
                    acc
                }
            });
        }
        let grads = grads.ok_or_else(|| Error::Config("no gradient".into()))?;
        let norm = opt.clipped_step(&grads, lr, cfg.grad_accum, cfg.max_grad_norm)?;
        drop(grads);
        state.step += 1;
        this_run += 1;
        state.adam_t = opt.t;
        state.tokens_seen += step_tokens;
        tokens_this_run += step_tokens;
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        let loss = loss_sum / cfg.grad_accum as f64;
        running = Some(running.map_or(loss, |r| 0.95 * r + 0.05 * loss));
        let tps = tokens_this_run as f64 / started.elapsed().as_secs_f64().max(1e-9);
        log.write(serde_json::json!({
            "step": state.step, "loss": loss, "lr": lr, "grad_norm": norm,
            "tokens": state.tokens_seen, "tokens_per_s": tps, "elapsed_s": state.elapsed_s,
        }))?;
        if let Some(b) = &bar {
            b.set_message(format!(
                "mlm loss {:.3} | {tps:.0} tok/s",
                running.unwrap_or(loss)
            ));
            b.set_position(state.step as u64);
        }
        // -- held-out evaluation
        let last = state.step == cfg.steps;
        if !dev.is_empty() && ((cfg.eval_every > 0 && state.step % cfg.eval_every == 0) || last) {
            let r = evaluate_lm(&model, &dev, cfg, &vocab, cfg.seed)?;
            log.write(serde_json::json!({
                "step": state.step, "split": "dev", "loss": r.loss,
                "perplexity": r.perplexity, "accuracy": r.accuracy,
            }))?;
            let line = format!(
                "step {:>6}  held-out  loss {:.4}  perplexity {:.2}  masked-token accuracy {:.4}",
                state.step, r.loss, r.perplexity, r.accuracy
            );
            match &bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            }
            last_eval = Some(r);
        }
        // -- checkpoint
        let every = if cfg.checkpoint_every > 0 {
            cfg.checkpoint_every
        } else {
            cfg.eval_every
        };
        if (every > 0 && state.step % every == 0) || last {
            state.log_bytes = log.len();
            save_checkpoint(&out, &model, &opt, &state)?;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    drop(stream);
    let completed = state.step >= cfg.steps;
    if !completed {
        state.log_bytes = log.len();
        save_checkpoint(&out, &model, &opt, &state)?;
    }
    // The perplexity curve from the whole log (earlier invocations included).
    if let Ok(text) = std::fs::read_to_string(out.join("metrics.jsonl")) {
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v["split"] == "dev" {
                    if let (Some(s), Some(p)) = (v["step"].as_u64(), v["perplexity"].as_f64()) {
                        curve.push((s as usize, p));
                    }
                }
            }
        }
    }
    let model_dir = if completed {
        let dir = out.join("model");
        let tmp = out.join(".model-tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        model.base().save(&tmp)?;
        swap_dir(&tmp, &dir)?;
        dir
    } else {
        ck
    };
    let report = PretrainReport {
        steps: state.step,
        completed,
        train_seconds: state.elapsed_s,
        tokens_seen: state.tokens_seen,
        parameters: model.base().num_parameters(),
        dev: last_eval,
        perplexity_curve: curve,
        model_dir,
    };
    if completed {
        write_atomic(
            &out.join("report.json"),
            serde_json::to_string_pretty(&report)
                .unwrap_or_default()
                .as_bytes(),
        )?;
        write_html(&out, &report)?;
    }
    Ok(report)
}

/// The JSON state in a pre-training checkpoint.
const STATE_FILE: &str = "pretrain_state.json";

fn save_checkpoint(out: &Path, model: &LmModel, opt: &AdamW, state: &PretrainState) -> Result<()> {
    write_checkpoint(out, |d| Ok(model.base().save(d)?), opt, STATE_FILE, state)
}

/// `report.html`: training loss and held-out perplexity curves.
fn write_html(out: &Path, report: &PretrainReport) -> Result<()> {
    let mut loss = Vec::new();
    if let Ok(text) = std::fs::read_to_string(out.join("metrics.jsonl")) {
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v.get("split").is_none() {
                    if let (Some(s), Some(l)) = (v["step"].as_f64(), v["loss"].as_f64()) {
                        loss.push((s, l));
                    }
                }
            }
        }
    }
    let ppl: Vec<(f64, f64)> = report
        .perplexity_curve
        .iter()
        .map(|&(s, p)| (s as f64, p))
        .collect();
    let mut html = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>prism pre-training report</title><style>body{font-family:sans-serif;max-width:900px;margin:2em auto}td,th{padding:2px 8px;text-align:right}</style></head><body><h1>Pre-training report</h1>");
    html.push_str(&format!(
        "<p>{} updates, {} tokens, {:.0} s, {} parameters.</p>",
        report.steps, report.tokens_seen, report.train_seconds, report.parameters
    ));
    if let Some(d) = &report.dev {
        html.push_str(&format!(
            "<p>Held-out: loss {:.4}, perplexity {:.2}, masked-token accuracy {:.4} ({} predicted tokens).</p>",
            d.loss, d.perplexity, d.accuracy, d.predicted_tokens
        ));
    }
    html.push_str(&crate::report::svg_chart(
        "training MLM loss (EMA)",
        &[("loss".into(), crate::report::ema(&loss, 0.05))],
    ));
    html.push_str(&crate::report::svg_chart(
        "held-out perplexity",
        &[("perplexity".into(), ppl)],
    ));
    html.push_str("</body></html>\n");
    Ok(write_atomic(&out.join("report.html"), html.as_bytes())?)
}
