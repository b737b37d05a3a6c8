//! The pre-training config (`prism pretrain --config FILE.toml`): the model to continue or
//! build fresh, the corpus, the objective and the optimiser.

use super::corpus::{expand_paths, DocFormat};
use super::masking::MaskConfig;
use super::plm::PlmConfig;
use super::tokenizer::TokenizerKind;
use crate::config::{d_clip, d_eval_batch, d_max_len, d_one, d_seed, d_wd};
use crate::error::{Error, Result};
use crate::optim::Schedule;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    /// Texts never trained or evaluated on, as corpus entries (files, or `NAME/SUBSET.SPLIT`
    /// of a labelled set, e.g. the dev and test texts of the task being adapted to): a line (a
    /// JSON Lines record's `text`) equal to one of theirs is skipped.
    #[serde(default)]
    pub exclude: Vec<String>,
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
    /// `f32` (default) or `bf16`: mixed precision, the linear layers' products in bf16 with
    /// f32 master weights (see `Precision`).
    #[serde(default)]
    pub precision: crate::optim::Precision,
    /// Activation checkpointing (transformers' `gradient_checkpointing_enable()`): keep each
    /// encoder layer's input only and recompute the layer in the backward pass, for less memory
    /// at the cost of a second forward pass. The same gradients; not part of what a resumed run
    /// must match.
    #[serde(default)]
    pub gradient_checkpointing: bool,
    pub model: ModelSpec,
    pub corpus: CorpusConfig,
    /// `mlm` (BERT, RoBERTa), `plm` (permutation LM, XLNet) or `rtd` (replaced-token
    /// detection, ELECTRA).
    #[serde(default)]
    pub objective: Objective,
    #[serde(default)]
    pub mlm: MaskConfig,
    #[serde(default)]
    pub plm: PlmConfig,
    /// Replaced-token detection: the generator and λ (`objective = "rtd"`).
    #[serde(default)]
    pub rtd: super::rtd::RtdConfig,
    /// A linear probe of a labelled task on the frozen features at each evaluation.
    #[serde(default)]
    pub probe: Option<super::probe::ProbeConfig>,
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
    /// Replaced-token detection (ELECTRA): a small MLM generator and a discriminator that
    /// tells original from replaced tokens.
    Rtd,
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "mlm" => Ok(Self::Mlm),
            "plm" => Ok(Self::Plm),
            "rtd" => Ok(Self::Rtd),
            o => Err(format!("unknown objective `{o}` (mlm, plm, rtd)")),
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
        if let Some(p) = &mut cfg.probe {
            for f in [&mut p.train, &mut p.dev].into_iter().flatten() {
                if f.is_relative() {
                    *f = base.join(&*f);
                }
            }
        }
        for list in [
            &mut cfg.corpus.train,
            &mut cfg.corpus.dev,
            &mut cfg.corpus.exclude,
        ] {
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
        crate::config::check_optimiser(&crate::config::Optimiser {
            lr: self.lr,
            weight_decay: self.weight_decay,
            warmup: self.warmup,
            steps: self.steps,
            max_grad_norm: self.max_grad_norm,
            eval_batch_size: self.eval_batch_size,
        })?;
        if !(0.0..1.0).contains(&self.model.dropout) {
            return bad(format!(
                "`model.dropout` {} must be in [0, 1)",
                self.model.dropout
            ));
        }
        if self.corpus.max_eval_sequences == 0 || self.corpus.shuffle_buffer == 0 {
            return bad(
                "`corpus.max_eval_sequences` and `corpus.shuffle_buffer` must be at least 1".into(),
            );
        }
        for (k, v) in [
            ("hidden_size", self.model.hidden_size),
            ("num_hidden_layers", self.model.num_hidden_layers),
            ("num_attention_heads", self.model.num_attention_heads),
            ("intermediate_size", self.model.intermediate_size),
        ] {
            if v == Some(0) {
                return bad(format!("`model.{k}` must be at least 1"));
            }
        }
        if let (Some(h), Some(n)) = (self.model.hidden_size, self.model.num_attention_heads) {
            if h % n != 0 {
                return bad(format!(
                    "`model.hidden_size` {h} must be a multiple of `model.num_attention_heads` {n}"
                ));
            }
        }
        if let Some(t) = &self.model.train_tokenizer {
            if t.vocab_size < 16 {
                return bad(format!(
                    "`model.train_tokenizer.vocab_size` {} must be at least 16",
                    t.vocab_size
                ));
            }
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
        self.rtd.validate().map_err(Error::Config)?;
        if let Some(p) = &self.probe {
            p.validate().map_err(Error::Config)?;
        }
        if self.rtd.generator.is_some()
            && (self.objective != Objective::Rtd || self.model.from.is_none())
        {
            return bad(
                "`rtd.generator` continues a saved generator: it needs `objective = \"rtd\"` and \
                 `model.from` (the discriminator it was trained with)"
                    .into(),
            );
        }
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
                if !matches!(m.model_type.as_str(), "bert" | "roberta" | "xlnet" | "electra") {
                    return bad(format!(
                        "[model]: model_type `{}` (bert, roberta, xlnet or electra)",
                        m.model_type
                    ));
                }
                let expected = match m.model_type.as_str() {
                    "xlnet" => Objective::Plm,
                    "electra" => Objective::Rtd,
                    _ => Objective::Mlm,
                };
                if expected != self.objective {
                    return bad(format!(
                        "objective `{:?}` with model_type `{}`: XLNet pre-trains with `plm`, \
                         ELECTRA with `rtd`, BERT and RoBERTa with `mlm`",
                        self.objective, m.model_type
                    ));
                }
                Ok(())
            }
            (Some(_), false) => Ok(()),
        }
    }

    /// The loop's settings: length, optimiser, schedule, evaluation and checkpoint cadence.
    pub fn loop_config(&self) -> crate::train_loop::LoopConfig {
        crate::train_loop::loop_config_of!(self)
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
        let known = crate::data::registry::DATASETS
            .iter()
            .any(|d| d.name == name);
        if known && name != "brown" {
            // A labelled set's file as text (`format = "jsonl"`): `vader/amazon_binary.train`.
            crate::data::registry::fetch_dataset(name, false)?;
            let f = crate::data::registry::data_dir(name).join(format!("{split}.jsonl"));
            if !f.is_file() {
                return Err(Error::Config(format!(
                    "data set `{name}` has no file `{split}.jsonl` (corpus entries of a labelled \
                     set are NAME/SUBSET.SPLIT, e.g. `vader/amazon_binary.train`)"
                )));
            }
            paths.push(f);
            continue;
        }
        if known {
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

#[cfg(test)]
mod range_tests {
    use super::*;

    const BASE: &str = "output = \"o\"\nsteps = 10\n";
    const MODEL: &str = "[model]\ntokenizer = \"tok\"\nhidden_size = 32\nnum_hidden_layers = 2\n";
    const CORPUS: &str = "[corpus]\ntrain = [\"c.txt\"]\n";

    /// Issue 22: the pre-training config is range-checked like the fine-tuning one (the same
    /// optimiser checks), each error naming the key and the range.
    #[test]
    fn out_of_range_values_are_refused_with_the_key_and_range() {
        let parse = |top: &str, model: &str, rest: &str| -> PretrainConfig {
            let heads = if model.contains("num_attention_heads") {
                ""
            } else {
                "num_attention_heads = 4\n"
            };
            let text = format!("{BASE}{top}\n{MODEL}{heads}{model}\n{CORPUS}{rest}\n");
            toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"))
        };
        parse("", "", "").validate().unwrap();
        for (top, model, rest, says) in [
            ("lr = inf", "", "", "`lr` inf"),
            ("lr = nan", "", "", "`lr` NaN"),
            ("weight_decay = -1.0", "", "", "`weight_decay` -1"),
            ("warmup = nan", "", "", "`warmup` NaN"),
            ("warmup = 50.0", "", "", "`warmup` 50"),
            ("max_grad_norm = nan", "", "", "`max_grad_norm` NaN"),
            ("eval_batch_size = 0", "", "", "`eval_batch_size`"),
            ("", "dropout = 1.5", "", "`model.dropout` 1.5"),
            ("", "dropout = nan", "", "`model.dropout` NaN"),
            ("", "intermediate_size = 0", "", "`model.intermediate_size`"),
            (
                "",
                "num_attention_heads = 3",
                "",
                "multiple of `model.num_attention_heads` 3",
            ),
            (
                "",
                "",
                "max_eval_sequences = 0",
                "`corpus.max_eval_sequences`",
            ),
            ("", "", "[mlm]\nmask = nan", "mlm.mask NaN"),
            ("", "", "[mlm]\nprobability = 1.0", "mlm.probability 1"),
            ("", "", "[rtd]\nweight = nan", "`rtd.weight` NaN"),
            (
                "",
                "",
                "[rtd]\ngenerator_size = 1.5",
                "`rtd.generator_size` 1.5",
            ),
            ("objective = \"rtd\"", "", "", "ELECTRA with `rtd`"),
            ("", "model_type = \"electra\"", "", "ELECTRA with `rtd`"),
        ] {
            let e = parse(top, model, rest).validate().unwrap_err().to_string();
            assert!(
                e.contains(says),
                "{top} {model} {rest} -> {e} (wanted {says:?})"
            );
        }
    }
}
