//! The training config: one TOML file naming the model, the tasks with their data, sampling,
//! optimiser and schedule. Unknown keys are errors, so a typo never silently falls back to a
//! default.

use crate::data::Fields;
use crate::error::{Error, Result};
use crate::optim::Schedule;
use crate::tasks::TaskKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub(crate) fn d_seed() -> u64 {
    42
}
fn d_batch() -> usize {
    16
}
pub(crate) fn d_one() -> usize {
    1
}
fn d_lr() -> f64 {
    5e-5
}
pub(crate) fn d_wd() -> f64 {
    0.01
}
fn d_warmup() -> f64 {
    0.1
}
pub(crate) fn d_clip() -> f64 {
    1.0
}
pub(crate) fn d_eval_batch() -> usize {
    64
}
fn d_weight() -> f64 {
    1.0
}
pub(crate) fn d_max_len() -> usize {
    128
}
fn d_stride() -> usize {
    64
}
fn d_temperature() -> f64 {
    2.0
}

/// How the next batch's task is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SamplingKind {
    /// Every task equally often.
    Uniform,
    /// In proportion to training-set size.
    Proportional,
    /// p ∝ n^(1/T) (T = 1 proportional, T → ∞ uniform).
    #[default]
    Temperature,
    /// p ∝ n^α with α falling linearly from 1 to 0.2 over training (Stickland & Murray 2019).
    Annealed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    #[serde(default)]
    pub kind: SamplingKind,
    #[serde(default = "d_temperature")]
    pub temperature: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            kind: SamplingKind::default(),
            temperature: d_temperature(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// `task.metric`, e.g. `sentiment.accuracy`; higher is better unless it is a loss or mse.
    pub metric: String,
    /// Evaluations without improvement before stopping.
    pub patience: usize,
}

/// Domain-adversarial training of a task (`[task.dann]`): unlabelled target-domain text, a
/// domain classifier behind gradient reversal, lambda = 2 / (1 + exp(-gamma p)) - 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DannConfig {
    /// Target-domain data: `NAME/SUBSET` of a fetched set (its train split; labels unused) or a
    /// JSONL/CSV file.
    pub target: String,
    /// Weight of the domain loss.
    #[serde(default = "d_weight")]
    pub weight: f64,
    #[serde(default = "d_gamma")]
    pub gamma: f64,
    /// Use at most this many target examples.
    #[serde(default)]
    pub max_examples: Option<usize>,
}

fn d_gamma() -> f64 {
    10.0
}

/// Seeded noise for robustness evaluation: character-level typos (swap, drop, insert or replace
/// one letter) in `typo_rate` of the words, then each word dropped with `word_dropout`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Perturbation {
    #[serde(default = "d_typo")]
    pub typo_rate: f64,
    #[serde(default = "d_typo")]
    pub word_dropout: f64,
}

fn d_typo() -> f64 {
    0.1
}

/// One task of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub name: String,
    pub kind: TaskKind,
    /// A fetched data set subset, `NAME/SUBSET` (e.g. `vader/movie_binary`): uses its
    /// train/dev/test files under $PRISM_HOME, fetching them on first use.
    #[serde(default)]
    pub data: Option<String>,
    #[serde(default)]
    pub train: Option<PathBuf>,
    #[serde(default)]
    pub dev: Option<PathBuf>,
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Class names in output order; read from the training data (sorted) when absent.
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default = "d_max_len")]
    pub max_length: usize,
    #[serde(default = "d_stride")]
    pub doc_stride: usize,
    /// QA: questions are cut to this many tokens (transformers' `max_query_length`; default 64,
    /// or less so that every window keeps more than `doc_stride` context tokens).
    #[serde(default)]
    pub max_question_length: Option<usize>,
    /// Multi-label: predict a label when its probability reaches this (default 0.5).
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Multiplies the task's sampling probability.
    #[serde(default = "d_weight")]
    pub weight: f64,
    #[serde(default)]
    pub fields: Fields,
    /// The training loss of a classification task (`[task.loss] kind = "gce"`, ...).
    #[serde(default)]
    pub loss: crate::loss::LossConfig,
    /// Adversarial training / consistency regularisation (`[task.adversarial] kind = "fgm"`,
    /// "pgd", "free_lb", "smart", "r_drop").
    #[serde(default)]
    pub adversarial: Option<crate::loss::AdversarialConfig>,
    #[serde(default)]
    pub dann: Option<DannConfig>,
    /// Flip this fraction of the training labels to another class (seeded), to study label noise.
    #[serde(default)]
    pub label_noise: Option<f64>,
    /// Also evaluate on a perturbed copy of the dev set (seeded typos and word dropout).
    #[serde(default)]
    pub perturbed_dev: Option<Perturbation>,
    /// More labelled sets to evaluate at the end (e.g. other domains): `NAME/SUBSET` (its test
    /// split) or files.
    #[serde(default)]
    pub extra_test: Vec<String>,
    /// Use at most this many training examples (the first ones, after a seeded shuffle).
    #[serde(default)]
    pub max_train_examples: Option<usize>,
    /// Evaluate on at most this many dev/test examples.
    #[serde(default)]
    pub max_eval_examples: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A model folder or a registered name (`minilm`).
    pub model: String,
    /// Where checkpoints, logs, the final model and reports go.
    pub output: PathBuf,
    #[serde(default = "d_seed")]
    pub seed: u64,
    /// Optimiser updates.
    pub steps: usize,
    #[serde(default = "d_batch")]
    pub batch_size: usize,
    /// Micro-batches per update.
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
    /// Clip the global gradient norm to this (0 turns clipping off).
    #[serde(default = "d_clip")]
    pub max_grad_norm: f64,
    /// Evaluate every N updates (0: only at the end).
    #[serde(default)]
    pub eval_every: usize,
    /// Write the resumable checkpoint every N updates (0: at each evaluation and the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    #[serde(default = "d_eval_batch")]
    pub eval_batch_size: usize,
    /// At every evaluation, also score this many of each task's training examples (one fixed
    /// random subset, the labels it was trained on), logged as `"split": "train"`: the
    /// train/dev gap over training, i.e. how much a run overfits.
    #[serde(default)]
    pub eval_train_examples: Option<usize>,
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
    #[serde(default)]
    pub sampling: Sampling,
    /// How several tasks of one update are combined: loss weighting, gradient surgery.
    #[serde(default)]
    pub multitask: crate::multitask::MultitaskConfig,
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
    /// Re-initialise every weight of `model` from `seed`, keeping its architecture and
    /// tokenizer: the randomly initialised baseline of a pre-training comparison.
    #[serde(default)]
    pub reinit: bool,
    #[serde(rename = "task")]
    pub tasks: Vec<TaskConfig>,
}

/// The optimiser and loop values fine-tuning and pre-training configs share.
pub(crate) struct Optimiser {
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: f64,
    pub steps: usize,
    pub max_grad_norm: f64,
    pub eval_batch_size: usize,
}

/// Every shared value in its range, the message naming the key and the range (NaN fails every
/// comparison, so each check is written to accept only what is in range).
pub(crate) fn check_optimiser(o: &Optimiser) -> Result<()> {
    let bad = |m: String| Err(Error::Config(m));
    let finite = |key: &str, v: f64, min: f64, strict: bool| -> Result<()> {
        if v.is_finite() && (v > min || (!strict && v == min)) {
            Ok(())
        } else if strict {
            bad(format!("`{key}` {v} must be a finite number above {min}"))
        } else {
            bad(format!(
                "`{key}` {v} must be a finite number of at least {min}"
            ))
        }
    };
    finite("lr", o.lr, 0.0, true)?;
    finite("weight_decay", o.weight_decay, 0.0, false)?;
    finite("warmup", o.warmup, 0.0, false)?;
    if o.warmup >= 1.0 && o.warmup > o.steps as f64 {
        return bad(format!(
            "`warmup` {} steps is longer than the run's {} `steps` (a fraction below 1, or a \
             number of steps up to `steps`)",
            o.warmup, o.steps
        ));
    }
    finite("max_grad_norm", o.max_grad_norm, 0.0, false)?;
    if o.eval_batch_size == 0 {
        return bad("`eval_batch_size` must be at least 1".into());
    }
    Ok(())
}

impl TrainConfig {
    /// The loop's settings: length, optimiser, schedule, evaluation and checkpoint cadence.
    pub fn loop_config(&self) -> crate::train_loop::LoopConfig {
        crate::train_loop::loop_config_of!(self)
    }

    /// Parse a TOML file; relative data paths and `output` are taken relative to its folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg: TrainConfig = toml::from_str(&text).map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: e.to_string().trim().replace('\n', " "),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut cfg.output);
        for t in &mut cfg.tasks {
            for p in [&mut t.train, &mut t.dev, &mut t.test]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        if base.join(&cfg.model).is_dir() && Path::new(&cfg.model).is_relative() {
            cfg.model = base.join(&cfg.model).to_string_lossy().to_string();
        }
        cfg.validate().map_err(|e| Error::File {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.tasks.is_empty() {
            return bad("no [[task]] entries".into());
        }
        if self.steps == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad("`steps`, `batch_size` and `grad_accum` must be positive".into());
        }
        self.multitask.validate(self.tasks.len())?;
        check_optimiser(&Optimiser {
            lr: self.lr,
            weight_decay: self.weight_decay,
            warmup: self.warmup,
            steps: self.steps,
            max_grad_norm: self.max_grad_norm,
            eval_batch_size: self.eval_batch_size,
        })?;
        let finite_above = |key: &str, v: f64, min: f64| -> Result<()> {
            if v.is_finite() && v > min {
                Ok(())
            } else {
                bad(format!("`{key}` {v} must be a finite number above {min}"))
            }
        };
        let fraction = |key: &str, v: f64| -> Result<()> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                bad(format!("`{key}` {v} must be in [0, 1]"))
            }
        };
        if self.eval_train_examples == Some(0) {
            return bad("`eval_train_examples` must be at least 1 (leave it out for none)".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            let key = |field: &str| format!("task[{i}].{field}");
            if !names.insert(&t.name) {
                return bad(format!("task name `{}` is used twice", t.name));
            }
            if t.data.is_none() && t.train.is_none() {
                return bad(format!(
                    "task `{}` needs `data = \"NAME/SUBSET\"` or a `train` file",
                    t.name
                ));
            }
            if let (Some(d), Some(f)) = (&t.data, &t.train) {
                return bad(format!(
                    "task `{}`: both `data = \"{d}\"` and `train = \"{}\"` are given; keep one \
                     (with `data` the set's own train/dev/test files are used)",
                    t.name,
                    f.display()
                ));
            }
            finite_above(&key("weight"), t.weight, 0.0)?;
            if let Some(labels) = &t.labels {
                let mut seen = std::collections::HashSet::new();
                for l in labels {
                    if l.trim().is_empty() || l.trim() != l {
                        return bad(format!(
                            "`{}`: label {l:?} is empty or has surrounding spaces",
                            key("labels")
                        ));
                    }
                    if !seen.insert(l) {
                        return bad(format!("`{}`: label {l:?} is listed twice", key("labels")));
                    }
                }
            }
            if t.max_length < 8 {
                return bad(format!(
                    "`{}` {} must be at least 8",
                    key("max_length"),
                    t.max_length
                ));
            }
            if t.kind == TaskKind::Qa && t.doc_stride >= t.max_length {
                return bad(format!(
                    "`{}` {} must be below `{}` {} (the windows' overlap, in tokens)",
                    key("doc_stride"),
                    t.doc_stride,
                    key("max_length"),
                    t.max_length
                ));
            }
            if t.kind == TaskKind::Qa
                && prism_model::tasks::question_budget(
                    t.max_length,
                    t.doc_stride,
                    t.max_question_length,
                )
                .is_none()
            {
                let special = prism_model::tasks::MAX_PAIR_SPECIAL_TOKENS;
                let most = t.max_length as i64 - special as i64 - t.doc_stride as i64 - 1;
                return bad(match t.max_question_length {
                    Some(q) => format!(
                        "`{}` {q} must be between 1 and {} (`{}` {} less {special} special \
                         tokens, less `{}` {} + 1 context tokens, so that each window holds \
                         more context than it shares)",
                        key("max_question_length"),
                        most.max(0),
                        key("max_length"),
                        t.max_length,
                        key("doc_stride"),
                        t.doc_stride
                    ),
                    None => format!(
                        "`{}` {} leaves no room for a question in `{}` {}: a window holds \
                         {special} special tokens, the question and more than `doc_stride` \
                         context tokens (lower doc_stride to at most {} or raise max_length)",
                        key("doc_stride"),
                        t.doc_stride,
                        key("max_length"),
                        t.max_length,
                        (t.max_length as i64 - special as i64 - 2).max(0)
                    ),
                });
            }
            if t.kind != TaskKind::Qa && t.max_question_length.is_some() {
                return bad(format!(
                    "`{}` applies to qa tasks only (this task is {:?})",
                    key("max_question_length"),
                    t.kind
                ));
            }
            for (field, v) in [
                ("max_train_examples", t.max_train_examples),
                ("max_eval_examples", t.max_eval_examples),
            ] {
                if v == Some(0) {
                    return bad(format!(
                        "`{}` must be at least 1 (leave it out for all examples)",
                        key(field)
                    ));
                }
            }
            if let Some(p) = &t.perturbed_dev {
                fraction(&key("perturbed_dev.typo_rate"), p.typo_rate)?;
                fraction(&key("perturbed_dev.word_dropout"), p.word_dropout)?;
            }
            if let Some(a) = &t.adversarial {
                a.validate(&key("adversarial")).map_err(Error::Config)?;
            }
            if let Some(d) = &t.dann {
                finite_above(&key("dann.weight"), d.weight, 0.0)?;
                finite_above(&key("dann.gamma"), d.gamma, 0.0)?;
                if d.max_examples == Some(0) {
                    return bad(format!("`{}` must be at least 1", key("dann.max_examples")));
                }
            }
            if t.dann.is_some() && t.adversarial.is_some() {
                return bad(format!(
                    "task `{}`: use either `dann` or `adversarial`, not both",
                    t.name
                ));
            }
            if t.dann.is_some()
                && !matches!(
                    t.kind,
                    TaskKind::Classification
                        | TaskKind::PairClassification
                        | TaskKind::Regression
                        | TaskKind::MultiLabel
                )
            {
                return bad(format!(
                    "task `{}`: DANN needs a sequence-level task",
                    t.name
                ));
            }
            if let Some(p) = t.label_noise {
                if !(0.0..1.0).contains(&p)
                    || !matches!(
                        t.kind,
                        TaskKind::Classification | TaskKind::PairClassification
                    )
                {
                    return bad(format!(
                        "task `{}`: label_noise {p} must be in [0, 1) on a classification task",
                        t.name
                    ));
                }
            }
        }
        if let Some(es) = &self.early_stopping {
            let Some((task, _)) = es.metric.split_once('.') else {
                return bad(format!(
                    "early_stopping.metric `{}` must be `task.metric`",
                    es.metric
                ));
            };
            if !self.tasks.iter().any(|t| t.name == task) {
                return bad(format!("early_stopping.metric names unknown task `{task}`"));
            }
        }
        if self.sampling.kind == SamplingKind::Temperature {
            finite_above("sampling.temperature", self.sampling.temperature, 0.0)?;
        }
        Ok(())
    }
}

/// Sampling probabilities over tasks with training-set sizes `sizes` and weights `weights`, at
/// `progress` in [0, 1] through training.
pub fn task_probabilities(
    sampling: &Sampling,
    sizes: &[usize],
    weights: &[f64],
    progress: f64,
) -> Vec<f64> {
    let exponent = match sampling.kind {
        SamplingKind::Uniform => 0.0,
        SamplingKind::Proportional => 1.0,
        SamplingKind::Temperature => 1.0 / sampling.temperature,
        SamplingKind::Annealed => 1.0 - 0.8 * progress.clamp(0.0, 1.0),
    };
    let raw: Vec<f64> = sizes
        .iter()
        .zip(weights)
        .map(|(&n, &w)| w * (n.max(1) as f64).powf(exponent))
        .collect();
    let total: f64 = raw.iter().sum();
    raw.iter().map(|r| r / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rules() {
        let s = |kind, t| Sampling {
            kind,
            temperature: t,
        };
        let p = task_probabilities(
            &s(SamplingKind::Uniform, 1.0),
            &[100, 900],
            &[1.0, 1.0],
            0.0,
        );
        assert_eq!(p, vec![0.5, 0.5]);
        let p = task_probabilities(
            &s(SamplingKind::Proportional, 1.0),
            &[100, 900],
            &[1.0, 1.0],
            0.0,
        );
        assert!((p[0] - 0.1).abs() < 1e-12);
        let p = task_probabilities(
            &s(SamplingKind::Temperature, 2.0),
            &[100, 900],
            &[1.0, 1.0],
            0.0,
        );
        assert!((p[0] - 10.0 / 40.0).abs() < 1e-12);
        let start = task_probabilities(
            &s(SamplingKind::Annealed, 1.0),
            &[100, 900],
            &[1.0, 1.0],
            0.0,
        );
        let end = task_probabilities(
            &s(SamplingKind::Annealed, 1.0),
            &[100, 900],
            &[1.0, 1.0],
            1.0,
        );
        assert!((start[0] - 0.1).abs() < 1e-12 && end[0] > 0.35);
    }

    #[test]
    fn config_errors_are_specific() {
        let e = toml::from_str::<TrainConfig>("model = \"m\"\noutput = \"o\"\nsteps = 5\nbatchsize = 3\n[[task]]\nname = \"a\"\nkind = \"classification\"\ntrain = \"x.jsonl\"\n").unwrap_err().to_string();
        assert!(e.contains("batchsize"), "{e}");
        let cfg: TrainConfig = toml::from_str("model = \"m\"\noutput = \"o\"\nsteps = 5\n[[task]]\nname = \"a\"\nkind = \"classification\"\n").unwrap();
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs `data"));
    }
}

#[cfg(test)]
mod range_tests {
    use super::*;

    const BASE: &str = "model = \"m\"\noutput = \"o\"\nsteps = 10\n";
    const TASK: &str = "[[task]]\nname = \"a\"\nkind = \"classification\"\ntrain = \"x.jsonl\"\n";

    fn check(top: &str, task: &str, says: &[&str]) {
        let text = format!("{BASE}{top}\n{TASK}{task}\n");
        let cfg: TrainConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let e = cfg
            .validate()
            .err()
            .unwrap_or_else(|| panic!("accepted:\n{text}"))
            .to_string();
        for s in says {
            assert!(e.contains(s), "{text}\n-> {e} (wanted {s:?})");
        }
    }

    /// Every out-of-range or contradictory value the reliability review found accepted is
    /// refused, the message naming the key path and the allowed range.
    #[test]
    fn out_of_range_values_are_refused_with_the_key_and_range() {
        // A valid config is accepted.
        let ok: TrainConfig = toml::from_str(&format!("{BASE}{TASK}")).unwrap();
        ok.validate().unwrap();
        let cases: &[(&str, &str, &[&str])] = &[
            ("lr = inf", "", &["`lr` inf", "finite", "above 0"]),
            ("lr = nan", "", &["`lr` NaN"]),
            (
                "weight_decay = -0.1",
                "",
                &["`weight_decay` -0.1", "at least 0"],
            ),
            ("weight_decay = nan", "", &["`weight_decay` NaN"]),
            ("warmup = -1.0", "", &["`warmup` -1"]),
            ("warmup = nan", "", &["`warmup` NaN"]),
            ("warmup = 50.0", "", &["`warmup` 50", "`steps`"]),
            ("max_grad_norm = nan", "", &["`max_grad_norm` NaN"]),
            ("max_grad_norm = -1.0", "", &["`max_grad_norm` -1"]),
            (
                "eval_batch_size = 0",
                "",
                &["`eval_batch_size`", "at least 1"],
            ),
            ("", "weight = inf", &["`task[0].weight` inf"]),
            (
                "",
                "labels = [\"pos\", \"neg\", \"pos\"]",
                &["`task[0].labels`", "\"pos\"", "twice"],
            ),
            (
                "",
                "labels = [\"negative \", \"positive\"]",
                &["`task[0].labels`", "spaces"],
            ),
            (
                "",
                "labels = [\"\", \"positive\"]",
                &["`task[0].labels`", "empty"],
            ),
            (
                "",
                "data = \"vader/movie_binary\"",
                &["both `data = ", "`train = "],
            ),
            (
                "",
                "max_train_examples = 0",
                &["`task[0].max_train_examples`", "at least 1"],
            ),
            (
                "",
                "max_length = 4",
                &["`task[0].max_length` 4", "at least 8"],
            ),
            (
                "",
                "[task.perturbed_dev]\ntypo_rate = 2.0",
                &["`task[0].perturbed_dev.typo_rate` 2", "[0, 1]"],
            ),
            (
                "",
                "[task.perturbed_dev]\nword_dropout = -1.0",
                &["`task[0].perturbed_dev.word_dropout` -1"],
            ),
            (
                "",
                "[task.adversarial]\nkind = \"pgd\"\nepsilon = nan",
                &["`task[0].adversarial.epsilon` NaN"],
            ),
            (
                "",
                "[task.adversarial]\nkind = \"pgd\"\nsteps = 0",
                &["`task[0].adversarial.steps`", "at least 1"],
            ),
            (
                "",
                "[task.adversarial]\nkind = \"fgm\"\nepsilon = -1.0",
                &["`task[0].adversarial.epsilon` -1"],
            ),
        ];
        for (top, task, says) in cases {
            check(top, task, says);
        }
        // QA: the windows' overlap must be below their length.
        let text = format!(
            "{BASE}[[task]]\nname = \"q\"\nkind = \"qa\"\ntrain = \"s.json\"\nmax_length = 24\ndoc_stride = 24\n"
        );
        let cfg: TrainConfig = toml::from_str(&text).unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(
            e.contains("`task[0].doc_stride` 24") && e.contains("`task[0].max_length` 24"),
            "{e}"
        );
        // ... and leave room for the question (the issue's `max_length = 24, doc_stride = 20`,
        // which panicked in the tokenizer on any question).
        let qa = |extra: &str| -> Result<(), String> {
            let text = format!(
                "{BASE}[[task]]\nname = \"q\"\nkind = \"qa\"\ntrain = \"s.json\"\n{extra}\n"
            );
            let cfg: TrainConfig = toml::from_str(&text).unwrap();
            cfg.validate().map_err(|e| e.to_string())
        };
        let e = qa("max_length = 24\ndoc_stride = 20").unwrap_err();
        assert!(
            e.contains("`task[0].doc_stride` 20")
                && e.contains("no room for a question")
                && e.contains("at most 18"),
            "{e}"
        );
        let e = qa("max_question_length = 60").unwrap_err();
        assert!(
            e.contains("`task[0].max_question_length` 60") && e.contains("between 1 and 59"),
            "{e}"
        );
        let e = qa("max_question_length = 0").unwrap_err();
        assert!(e.contains("`task[0].max_question_length` 0"), "{e}");
        qa("").unwrap();
        qa("max_question_length = 59").unwrap();
        qa("max_length = 24\ndoc_stride = 18").unwrap();
        check(
            "",
            "max_question_length = 10",
            &["`task[0].max_question_length`", "qa tasks only"],
        );
    }
}
