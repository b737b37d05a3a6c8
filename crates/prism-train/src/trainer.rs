//! The multi-task training loop, readable top to bottom like nanoGPT's train.py. Each update:
//! sample a task, take its next batch, forward, loss, backward (accumulating micro-batches),
//! clip, AdamW step on the scheduled learning rate; every so often evaluate and checkpoint.
//!
//! Determinism and exact resume: every random choice at update `s` (task, dropout masks) comes
//! from a generator seeded by `(seed, s)`, and each task's data order from `(seed, task,
//! epoch)`, so the resumable state is small: the step, each task's position in its data, the
//! optimiser moments, and the early-stopping bookkeeping. Checkpoints are written to a
//! temporary folder and renamed into place.

use crate::checkpoint::{
    checkpoint_dir, find_checkpoint, prepare_output, read_checkpoint, swap_dir, write_checkpoint,
};
use crate::config::{task_probabilities, TrainConfig};
use crate::data::{self, Example, Target};
use crate::error::{Error, Result};
use crate::model::MultiTaskModel;
use crate::optim::{lr_at, AdamW, AdamWConfig};
use crate::tasks::{EvalResult, Feature, TaskKind, TaskSpec};
use candle_core::backprop::GradStore;
use candle_core::Device;
use prism_model::checkpoint::write_atomic;
use prism_model::{fetch, Encoder, Mode, PretrainedModel};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A generator for one purpose at one point of the run (SplitMix64 over the inputs).
pub fn rng_for(seed: u64, a: u64, b: u64) -> StdRng {
    let mut z = seed ^ a.wrapping_mul(0x9E3779B97F4A7C15) ^ b.wrapping_mul(0xC2B2AE3D27D4EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

const STREAM_TASK: u64 = 1;
const STREAM_DROPOUT: u64 = 2;
const STREAM_ORDER: u64 = 3;
const STREAM_SUBSET: u64 = 4;

/// One task's data, read and featurised once.
pub struct TaskData {
    pub train_path: PathBuf,
    pub train: Vec<Example>,
    pub train_feats: Vec<Feature>,
    pub dev_path: Option<PathBuf>,
    pub dev: Vec<Example>,
    pub test_path: Option<PathBuf>,
    pub test: Vec<Example>,
    /// Unlabelled target-domain features (DANN).
    pub dann_feats: Vec<Feature>,
    /// Extra labelled evaluation sets: (name, file, examples).
    pub extra_test: Vec<(String, PathBuf, Vec<Example>, Vec<Feature>)>,
    pub dev_feats: Vec<Feature>,
    pub test_feats: Vec<Feature>,
}

/// Where a task is in its shuffled data.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: u64,
    pub pos: usize,
}

/// Everything besides weights and optimiser moments that a resumed run needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub step: usize,
    pub cursors: Vec<Cursor>,
    /// Positions in each task's DANN target data.
    #[serde(default)]
    pub dann_cursors: Vec<Cursor>,
    pub adam_t: u64,
    pub best: Option<(usize, f64)>,
    pub bad_evals: usize,
    pub stopped_early: bool,
    /// Length of metrics.jsonl when the checkpoint was written; later lines are dropped on resume.
    pub log_bytes: u64,
    pub elapsed_s: f64,
    pub config: TrainConfig,
}

/// Options of one invocation (not part of the config: they do not change the result).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Start over even if a checkpoint exists.
    pub restart: bool,
    /// Stop (as if interrupted) after this many updates in this invocation.
    pub stop_after: Option<usize>,
    /// Draw a progress bar.
    pub progress: bool,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub steps: usize,
    pub completed: bool,
    pub stopped_early: bool,
    pub best: Option<(usize, f64)>,
    pub best_metric: String,
    /// Whether `model_dir` holds the best dev checkpoint (early stopping) or the last update.
    #[serde(default)]
    pub final_is_best: bool,
    pub train_seconds: f64,
    pub tasks: BTreeMap<String, TaskReport>,
    pub model_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskReport {
    pub kind: TaskKind,
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub dev: Option<EvalResult>,
    pub test: Option<EvalResult>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_test: BTreeMap<String, EvalResult>,
}

fn resolve_splits(
    t: &crate::config::TaskConfig,
) -> Result<(PathBuf, Option<PathBuf>, Option<PathBuf>)> {
    if let Some(spec) = &t.data {
        let (name, subset) = spec.split_once('/').ok_or_else(|| {
            Error::Config(format!(
                "task `{}`: data `{spec}` must be NAME/SUBSET",
                t.name
            ))
        })?;
        data::registry::fetch_dataset(name, false)?;
        let dir = data::registry::data_dir(name);
        let ext = if name == "squad" { "json" } else { "jsonl" };
        let p = |split: &str| dir.join(format!("{subset}.{split}.{ext}"));
        if !p("train").is_file() {
            return Err(Error::Config(format!(
                "task `{}`: data set `{name}` has no subset `{subset}` ({} missing)",
                t.name,
                p("train").display()
            )));
        }
        let opt = |split: &str| Some(p(split)).filter(|x| x.is_file());
        return Ok((
            t.train.clone().unwrap_or(p("train")),
            t.dev.clone().or(opt("dev")),
            t.test.clone().or(opt("test")),
        ));
    }
    let train = t
        .train
        .clone()
        .ok_or_else(|| Error::Config(format!("task `{}` has no training data", t.name)))?;
    Ok((train, t.dev.clone(), t.test.clone()))
}

/// A `NAME/SUBSET` of a fetched data set (its `split` file, fetched on first use) or a file path.
fn resolve_spec(spec: &str, split: &str) -> Result<PathBuf> {
    let p = PathBuf::from(spec);
    if p.is_file() {
        return Ok(p);
    }
    let (name, subset) = spec
        .split_once('/')
        .ok_or_else(|| Error::Config(format!("`{spec}` is neither a file nor NAME/SUBSET")))?;
    if !data::registry::DATASETS.iter().any(|d| d.name == name) {
        return Err(Error::Config(format!(
            "`{spec}` is neither a file nor a known data set"
        )));
    }
    data::registry::fetch_dataset(name, false)?;
    let ext = if name == "squad" { "json" } else { "jsonl" };
    let f = data::registry::data_dir(name).join(format!("{subset}.{split}.{ext}"));
    if !f.is_file() {
        return Err(Error::Config(format!(
            "data set `{name}` has no `{subset}` {split} split ({} missing)",
            f.display()
        )));
    }
    Ok(f)
}

/// Labels of a classification or tagging task: as configured, or those of the training data
/// (sorted; `O` first for tags).
fn infer_labels(kind: TaskKind, examples: &[Example]) -> Vec<String> {
    let mut set = BTreeSet::new();
    for ex in examples {
        match &ex.target {
            Target::Label(l) => {
                set.insert(l.clone());
            }
            Target::Tags(t) => set.extend(t.iter().cloned()),
            _ => {}
        }
    }
    let mut labels: Vec<String> = set.into_iter().collect();
    if kind == TaskKind::Token {
        if let Some(i) = labels.iter().position(|l| l == "O") {
            let o = labels.remove(i);
            labels.insert(0, o);
        }
    }
    labels
}

fn cap(mut v: Vec<Example>, n: Option<usize>, seed: u64, salt: u64) -> Vec<Example> {
    if let Some(n) = n {
        if v.len() > n {
            v.shuffle(&mut rng_for(seed, STREAM_SUBSET, salt));
            v.truncate(n);
        }
    }
    v
}

/// Read and featurise every task's data (once: evaluations reuse the features) and put the
/// task heads on `base`.
pub fn prepare_with(
    cfg: &TrainConfig,
    base: PretrainedModel,
) -> Result<(MultiTaskModel, Vec<TaskData>)> {
    let mut specs = Vec::new();
    let mut raw = Vec::new();
    for (ti, t) in cfg.tasks.iter().enumerate() {
        let (train_path, dev_path, test_path) = resolve_splits(t)?;
        let kind = t.kind.target_kind();
        let pair = t.kind.is_pair();
        let train = data::read_file(&train_path, &t.fields, kind, pair)?;
        let mut train = cap(train, t.max_train_examples, cfg.seed, ti as u64);
        let read_opt = |p: &Option<PathBuf>, salt: u64| -> Result<Vec<Example>> {
            match p {
                Some(p) => Ok(cap(
                    data::read_file(p, &t.fields, kind, pair)?,
                    t.max_eval_examples,
                    cfg.seed,
                    salt,
                )),
                None => Ok(Vec::new()),
            }
        };
        let dev = read_opt(&dev_path, 1000 + ti as u64)?;
        let test = read_opt(&test_path, 2000 + ti as u64)?;
        if let Some(ex) = train.iter().find(|e| e.target == Target::None) {
            return Err(Error::data(
                &train_path,
                ex.line,
                &t.fields.label,
                "missing (training examples need a label)",
            ));
        }
        let labels = match (&t.labels, t.kind) {
            (Some(l), _) => l.clone(),
            (None, TaskKind::Classification | TaskKind::PairClassification | TaskKind::Token) => {
                infer_labels(t.kind, &train)
            }
            (None, _) => Vec::new(),
        };
        if let Some(p) = t.label_noise {
            data::flip_labels(&mut train, &labels, p, cfg.seed ^ 0x5EED ^ ti as u64);
        }
        specs.push(TaskSpec {
            name: t.name.clone(),
            kind: t.kind,
            labels,
            max_length: t.max_length,
            doc_stride: t.doc_stride,
        });
        let mut extra = Vec::new();
        if let (Some(pt), Some(dp)) = (&t.perturbed_dev, &dev_path) {
            use rand::SeedableRng;
            let mut rng = StdRng::seed_from_u64(cfg.seed ^ 0x7E57 ^ ti as u64);
            let noisy: Vec<Example> = dev
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    e.text = data::perturb_text(&e.text, pt.typo_rate, pt.word_dropout, &mut rng);
                    if let Some(b) = &e.text_b {
                        e.text_b = Some(data::perturb_text(
                            b,
                            pt.typo_rate,
                            pt.word_dropout,
                            &mut rng,
                        ));
                    }
                    e
                })
                .collect();
            extra.push(("dev_perturbed".to_string(), dp.clone(), noisy));
        }
        for spec in &t.extra_test {
            let p = resolve_spec(spec, "test")?;
            extra.push((
                spec.clone(),
                p.clone(),
                read_opt(&Some(p), 3000 + ti as u64)?,
            ));
        }
        let dann = match &t.dann {
            Some(d) => {
                let p = resolve_spec(&d.target, "train")?;
                let ex = data::read_file(&p, &t.fields, kind, pair)?;
                let ex: Vec<Example> = cap(ex, d.max_examples, cfg.seed, 4000 + ti as u64)
                    .into_iter()
                    .map(|mut e| {
                        e.target = Target::None;
                        e
                    })
                    .collect();
                Some((p, ex))
            }
            None => None,
        };
        raw.push((
            train_path, train, dev_path, dev, test_path, test, extra, dann,
        ));
    }
    let mut model = MultiTaskModel::new(base, specs, cfg.seed)?;
    for (task, tc) in model.tasks.iter_mut().zip(&cfg.tasks) {
        if tc.loss != crate::loss::LossConfig::CrossEntropy {
            if !matches!(
                tc.kind,
                TaskKind::Classification | TaskKind::PairClassification
            ) {
                return Err(Error::Config(format!(
                    "task `{}`: `loss` applies to classification tasks only",
                    tc.name
                )));
            }
            tc.loss.validate(task.spec.labels.len())?;
        }
        task.loss_config = tc.loss.clone();
        if let Some(adv) = &tc.adversarial {
            if matches!(
                adv,
                crate::loss::AdversarialConfig::Smart { .. }
                    | crate::loss::AdversarialConfig::RDrop { .. }
            ) && matches!(tc.kind, TaskKind::Qa | TaskKind::Token)
            {
                return Err(Error::Config(format!(
                    "task `{}`: SMART and R-Drop apply to classification and regression tasks",
                    tc.name
                )));
            }
        }
        task.adversarial = tc.adversarial.clone();
    }
    let mut out = Vec::new();
    for (ti, (train_path, train, dev_path, dev, test_path, test, extra_test, dann)) in
        raw.into_iter().enumerate()
    {
        let train_feats = model.tasks[ti].featurize(&train, &train_path)?;
        let extra_test = extra_test
            .into_iter()
            .map(|(name, p, ex)| {
                let f = model.tasks[ti].featurize(&ex, &p)?;
                Ok((name, p, ex, f))
            })
            .collect::<Result<Vec<_>>>()?;
        let dann_feats = match &dann {
            Some((p, ex)) => model.tasks[ti].featurize(ex, p)?,
            None => Vec::new(),
        };
        // Unknown labels in dev/test are errors too, found before any training.
        let dev_feats = match &dev_path {
            Some(p) => model.tasks[ti].featurize(&dev, p)?,
            None => Vec::new(),
        };
        let test_feats = match &test_path {
            Some(p) => model.tasks[ti].featurize(&test, p)?,
            None => Vec::new(),
        };
        out.push(TaskData {
            train_path,
            train,
            train_feats,
            dev_path,
            dev,
            test_path,
            test,
            dann_feats,
            extra_test,
            dev_feats,
            test_feats,
        });
    }
    Ok((model, out))
}

fn save_checkpoint(
    out: &Path,
    model: &MultiTaskModel,
    opt: &AdamW,
    state: &TrainerState,
) -> Result<()> {
    write_checkpoint(out, |d| model.save(d), opt, STATE_FILE, state)
}

/// The JSON state in a fine-tuning checkpoint.
const STATE_FILE: &str = "trainer_state.json";

fn higher_is_better(metric: &str) -> bool {
    !(metric.ends_with("mse") || metric.ends_with("loss"))
}

/// Evaluate every task on its dev set; returns results and the selection score.
fn evaluate_dev(
    model: &MultiTaskModel,
    data: &[TaskData],
    cfg: &TrainConfig,
) -> Result<(BTreeMap<String, EvalResult>, f64)> {
    let mut res = BTreeMap::new();
    // A frozen copy (shared parameters): no graph recorded, nothing kept for a backward pass.
    let frozen = model.frozen()?;
    for (ti, d) in data.iter().enumerate() {
        if d.dev_path.is_some() {
            res.insert(
                model.tasks[ti].spec.name.clone(),
                frozen.evaluate_features(ti, &d.dev, &d.dev_feats, cfg.eval_batch_size)?,
            );
        }
    }
    // Selection: the configured metric, else the mean of each task's main metric.
    if let Some(es) = &cfg.early_stopping {
        let (task, metric) = es.metric.split_once('.').unwrap_or((&es.metric, ""));
        let v = res
            .get(task)
            .and_then(|r| r.metrics.get(metric))
            .copied()
            .ok_or_else(|| {
                Error::Config(format!(
                    "early_stopping.metric `{}`: no such dev metric",
                    es.metric
                ))
            })?;
        return Ok((res, if higher_is_better(metric) { v } else { -v }));
    }
    let mains: Vec<f64> = model
        .tasks
        .iter()
        .filter_map(|t| {
            res.get(&t.spec.name)
                .and_then(|r| r.metrics.get(t.spec.kind.main_metric()))
                .copied()
        })
        .collect();
    let score = if mains.is_empty() {
        0.0
    } else {
        mains.iter().sum::<f64>() / mains.len() as f64
    };
    Ok((res, score))
}

pub(crate) struct Log {
    file: std::fs::File,
}

impl Log {
    pub(crate) fn open(path: &Path, keep_bytes: u64) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.set_len(keep_bytes).map_err(|e| Error::io(path, e))?;
        Ok(Self { file })
    }
    pub(crate) fn write(&mut self, v: serde_json::Value) -> Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io("metrics.jsonl", e))
    }
    pub(crate) fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

/// Train as configured, resuming from `output/checkpoint-last` when it exists.
pub fn train(cfg: &TrainConfig, device: &Device, opts: &RunOptions) -> Result<Report> {
    let out = cfg.output.clone();
    prepare_output(&out, opts.restart, &["best"])?;
    let resume = find_checkpoint(&out, STATE_FILE);
    // A resumed run takes its weights (encoder and heads) from the checkpoint; a fresh one from
    // the configured model.
    let mut saved_state = None;
    let mut opt_state = None;
    let base = match &resume {
        Some(ck) => {
            let r = read_checkpoint(ck, STATE_FILE, cfg, |s: &TrainerState| &s.config)?;
            opt_state = Some((r.moments, r.moments_path));
            saved_state = Some(r.state);
            PretrainedModel::load(ck, device)?
        }
        None => {
            let m = PretrainedModel::load(&fetch::resolve_model(&cfg.model)?, device)?;
            if cfg.reinit {
                let mut fresh = PretrainedModel::fresh(m.config, m.tokenizer, device, cfg.seed)?;
                fresh.dir = m.dir;
                fresh
            } else {
                m
            }
        }
    };
    let (model, data) = prepare_with(cfg, base)?;
    let mut state = saved_state.unwrap_or_else(|| TrainerState {
        step: 0,
        cursors: vec![Cursor::default(); data.len()],
        dann_cursors: vec![Cursor::default(); data.len()],
        adam_t: 0,
        best: None,
        bad_evals: 0,
        stopped_early: false,
        log_bytes: 0,
        elapsed_s: 0.0,
        config: cfg.clone(),
    });
    if state.dann_cursors.len() != data.len() {
        state.dann_cursors = vec![Cursor::default(); data.len()];
    }
    // Domain classifiers of DANN tasks (parameters of the store, so AdamW and checkpoints see them).
    let hidden = model.base.config.hidden_size();
    let domain_heads: Vec<Option<prism_model::heads::DomainHead>> = cfg
        .tasks
        .iter()
        .map(|t| {
            t.dann
                .as_ref()
                .map(|_| {
                    prism_model::heads::DomainHead::load(
                        &model
                            .base
                            .params
                            .root()
                            .pp("prism.heads")
                            .pp(&t.name)
                            .pp("domain"),
                        hidden,
                        0.02,
                    )
                })
                .transpose()
        })
        .collect::<prism_model::Result<_>>()?;
    let mut opt = AdamW::new(
        model.base.params.vars(),
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
        eprintln!(
            "resuming from step {} ({})",
            state.step,
            checkpoint_dir(&out).display()
        );
    }

    let sizes: Vec<usize> = data.iter().map(|d| d.train_feats.len()).collect();
    let weights: Vec<f64> = cfg.tasks.iter().map(|t| t.weight).collect();
    let warmup = cfg.warmup_steps();
    let names: Vec<String> = model.tasks.iter().map(|t| t.spec.name.clone()).collect();
    let bar = progress_bar(opts.progress, cfg.steps, state.step);
    let started = Instant::now();
    let elapsed_before = state.elapsed_s;
    let mut running: Vec<Option<f64>> = vec![None; data.len()];
    let mut examples_seen = 0usize;
    let mut this_run = 0usize;

    while state.step < cfg.steps && !state.stopped_early {
        if opts.stop_after.is_some_and(|n| this_run >= n) {
            break;
        }
        let step = state.step;
        let lr = lr_at(step, cfg.lr, warmup, cfg.steps, cfg.schedule);
        let mut grads: Option<GradStore> = None;
        let mut step_loss: Vec<(usize, f64, Option<f64>, Option<(f64, f64)>)> = Vec::new();
        for micro in 0..cfg.grad_accum {
            // -- sample a task
            let probs = task_probabilities(
                &cfg.sampling,
                &sizes,
                &weights,
                step as f64 / cfg.steps as f64,
            );
            let mut rng = rng_for(
                cfg.seed,
                STREAM_TASK,
                (step * cfg.grad_accum + micro) as u64,
            );
            let u: f64 = rng.random();
            let mut ti = probs.len() - 1;
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if u < acc {
                    ti = i;
                    break;
                }
            }
            // -- its next batch
            let batch_feats = next_batch(
                &data[ti].train_feats,
                &mut state.cursors[ti],
                cfg.batch_size,
                cfg.seed,
                ti,
            );
            let batch = model.tasks[ti].batch(&batch_feats, device)?;
            examples_seen += batch_feats.len();
            // -- forward, loss, backward
            let micro_seed = rng_for(
                cfg.seed,
                STREAM_DROPOUT,
                (step * cfg.grad_accum + micro) as u64,
            )
            .random::<u64>();
            let mode = Mode::train(micro_seed);
            let task = &model.tasks[ti];
            let mut dann_log = None;
            let (g, lv, extra) = match (&task.adversarial, &domain_heads[ti], &cfg.tasks[ti].dann) {
                (None, Some(head), Some(dc)) => {
                    // -- DANN: task loss on the source batch + domain loss on source and target
                    // batches through gradient reversal.
                    let lambda = crate::loss::dann_lambda(step as f64 / cfg.steps as f64, dc.gamma);
                    let tgt_feats = next_batch(
                        &data[ti].dann_feats,
                        &mut state.dann_cursors[ti],
                        batch_feats.len(),
                        cfg.seed ^ 0xD,
                        ti,
                    );
                    let tgt = task.batch(&tgt_feats, device)?;
                    let enc_s = model.base.encoder.forward(&batch.input, &mode)?;
                    let loss = task.loss(&enc_s, &batch, &mode)?;
                    let enc_t = model.base.encoder.forward(&tgt.input, &mode)?;
                    let pooled = |o: &prism_model::EncoderOutput| -> Result<candle_core::Tensor> {
                        Ok(match &o.pooler_output {
                            Some(p) => p.clone(),
                            None => o.last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?,
                        })
                    };
                    let both = candle_core::Tensor::cat(&[pooled(&enc_s)?, pooled(&enc_t)?], 0)?;
                    let logits = head.forward(&crate::loss::grad_reverse(&both, lambda)?)?;
                    let ns = batch_feats.len();
                    let labels: Vec<u32> = (0..ns)
                        .map(|_| 0)
                        .chain((0..tgt_feats.len()).map(|_| 1))
                        .collect();
                    let dl = crate::tasks::cross_entropy(
                        &logits,
                        &candle_core::Tensor::new(labels, device)?,
                    )?;
                    let total = (&loss + (&dl * dc.weight)?)?;
                    let lv = loss.to_scalar::<f32>()? as f64;
                    let dv = dl.to_scalar::<f32>()? as f64;
                    dann_log = Some((dv, lambda));
                    (total.backward()?, lv, None)
                }
                (None, _, _) => {
                    let enc = model.base.encoder.forward(&batch.input, &mode)?;
                    let loss = task.loss(&enc, &batch, &mode)?;
                    let lv = loss.to_scalar::<f32>()? as f64;
                    (loss.backward()?, lv, None)
                }
                (Some(adv), _, _) => {
                    let fns = crate::loss::TaskFns {
                        logits: &|o, m| task.logits(o, m),
                        loss: &|l| task.loss_from_logits(l, &batch),
                        divergence: &|a, b| task.divergence(a, b),
                    };
                    let (g, l) = crate::loss::adversarial_step(
                        &model.base.encoder,
                        &batch.input,
                        &mode,
                        adv,
                        &fns,
                        micro_seed ^ 0xADF,
                    )?;
                    (g, l.task, l.extra)
                }
            };
            if !lv.is_finite() || extra.is_some_and(|x: f64| !x.is_finite()) {
                return Err(Error::Config(format!(
                    "step {step}: task `{}` loss is {lv}; lower the learning rate",
                    names[ti]
                )));
            }
            step_loss.push((ti, lv, extra, dann_log));
            grads = Some(match grads {
                None => g,
                Some(mut acc) => {
                    acc.extend(g)?;
                    acc
                }
            });
        }
        let grads = grads.ok_or_else(|| Error::Config("no gradient".into()))?;
        // -- clip (the norm of the averaged micro-batch gradient) and step
        let norm = opt.clipped_step(&grads, lr, cfg.grad_accum, cfg.max_grad_norm)?;
        state.step += 1;
        this_run += 1;
        state.adam_t = opt.t;
        state.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        for &(ti, l, extra, dann_log) in &step_loss {
            running[ti] = Some(running[ti].map_or(l, |r| 0.9 * r + 0.1 * l));
            let mut rec = serde_json::json!({"step": state.step, "task": names[ti], "loss": l, "lr": lr, "grad_norm": norm, "elapsed_s": state.elapsed_s});
            if let Some(x) = extra {
                rec["adversarial_loss"] = serde_json::json!(x);
            }
            if let Some((domain_loss, lambda)) = dann_log {
                rec["domain_loss"] = serde_json::json!(domain_loss);
                rec["lambda"] = serde_json::json!(lambda);
            }
            log.write(rec)?;
        }
        if let Some(b) = &bar {
            let losses: Vec<String> = names
                .iter()
                .zip(&running)
                .filter_map(|(n, r)| r.map(|r| format!("{n} {r:.3}")))
                .collect();
            let rate = examples_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!("{} | {rate:.1} ex/s", losses.join(" | ")));
            b.set_position(state.step as u64);
        }
        // -- evaluate
        let last = state.step == cfg.steps;
        if (cfg.eval_every > 0 && state.step % cfg.eval_every == 0) || last {
            let (res, score) = evaluate_dev(&model, &data, cfg)?;
            for (task, r) in &res {
                log.write(serde_json::json!({"step": state.step, "task": task, "split": "dev", "metrics": r.metrics}))?;
            }
            if state.best.is_none_or(|(_, b)| score > b) {
                state.best = Some((state.step, score));
                state.bad_evals = 0;
                let tmp = out.join(".best-tmp");
                let _ = std::fs::remove_dir_all(&tmp);
                model.save(&tmp)?;
                swap_dir(&tmp, &out.join("best"))?;
            } else {
                state.bad_evals += 1;
                if cfg
                    .early_stopping
                    .as_ref()
                    .is_some_and(|es| state.bad_evals >= es.patience)
                {
                    state.stopped_early = true;
                }
            }
            if let Some(b) = &bar {
                let summary: Vec<String> = res
                    .iter()
                    .map(|(t, r)| format!("{t}: {}", fmt_metrics(&r.metrics)))
                    .collect();
                b.println(format!(
                    "step {:>6}  dev  {}",
                    state.step,
                    summary.join("  ")
                ));
            }
        }
        // -- checkpoint
        let every = if cfg.checkpoint_every > 0 {
            cfg.checkpoint_every
        } else {
            cfg.eval_every
        };
        if (every > 0 && state.step % every == 0) || last || state.stopped_early {
            state.log_bytes = log.len();
            save_checkpoint(&out, &model, &opt, &state)?;
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let completed = state.step >= cfg.steps || state.stopped_early;
    if !completed {
        // Interrupted on request: the last checkpoint is the resume point.
        state.log_bytes = log.len();
        save_checkpoint(&out, &model, &opt, &state)?;
        return Ok(Report {
            steps: state.step,
            completed,
            stopped_early: false,
            best: state.best,
            best_metric: String::new(),
            final_is_best: false,
            train_seconds: state.elapsed_s,
            tasks: BTreeMap::new(),
            model_dir: checkpoint_dir(&out),
        });
    }

    // Final model: the best dev checkpoint when early stopping selects one, else the last.
    let final_is_best = cfg.early_stopping.is_some() && out.join("best").is_dir();
    let final_model = if final_is_best {
        MultiTaskModel::load(&out.join("best"), device)?
    } else {
        model
    };
    let model_dir = out.join("model");
    let tmp = out.join(".model-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    final_model.save(&tmp)?;
    swap_dir(&tmp, &model_dir)?;
    let best_metric = match &cfg.early_stopping {
        Some(es) => es.metric.clone(),
        None => "mean of each task's main dev metric".to_string(),
    };
    // Evaluation needs no gradients: a frozen copy records no graph, keeps nothing for a
    // backward pass and transposes each weight once.
    let eval_model = final_model.frozen()?;
    let mut tasks = BTreeMap::new();
    for (ti, d) in data.iter().enumerate() {
        let t = &final_model.tasks[ti];
        let dev = match &d.dev_path {
            Some(_) => {
                Some(eval_model.evaluate_features(ti, &d.dev, &d.dev_feats, cfg.eval_batch_size)?)
            }
            None => None,
        };
        let test = match &d.test_path {
            Some(_) => Some(eval_model.evaluate_features(
                ti,
                &d.test,
                &d.test_feats,
                cfg.eval_batch_size,
            )?),
            None => None,
        };
        let mut extra_test = BTreeMap::new();
        for (name, _, ex, feats) in &d.extra_test {
            extra_test.insert(
                name.clone(),
                eval_model.evaluate_features(ti, ex, feats, cfg.eval_batch_size)?,
            );
        }
        tasks.insert(
            t.spec.name.clone(),
            TaskReport {
                kind: t.spec.kind,
                labels: t.spec.labels.clone(),
                train_examples: d.train.len(),
                dev,
                test,
                extra_test,
            },
        );
    }
    let report = Report {
        steps: state.step,
        completed,
        stopped_early: state.stopped_early,
        best: state.best,
        best_metric,
        final_is_best,
        train_seconds: state.elapsed_s,
        tasks,
        model_dir,
    };
    write_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    crate::report::write_html(&out, &report, &out.join("metrics.jsonl"))?;
    Ok(report)
}

pub fn fmt_metrics(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The next `n` features of a task in its per-epoch shuffled order, advancing the cursor.
fn next_batch<'a>(
    feats: &'a [Feature],
    cur: &mut Cursor,
    n: usize,
    seed: u64,
    ti: usize,
) -> Vec<&'a Feature> {
    let mut out = Vec::with_capacity(n);
    let mut order = epoch_order(feats.len(), seed, ti, cur.epoch);
    while out.len() < n {
        if cur.pos >= feats.len() {
            cur.epoch += 1;
            cur.pos = 0;
            order = epoch_order(feats.len(), seed, ti, cur.epoch);
        }
        out.push(&feats[order[cur.pos]]);
        cur.pos += 1;
    }
    out
}

fn epoch_order(n: usize, seed: u64, ti: usize, epoch: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut rng_for(
        seed,
        STREAM_ORDER,
        ((ti as u64) << 32) | epoch,
    ));
    v
}

pub(crate) fn progress_bar(
    enabled: bool,
    total: usize,
    at: usize,
) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let b = indicatif::ProgressBar::new(total as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_position(at as u64);
    Some(b)
}

/// The flat parameter vector of a model (for comparing runs).
pub fn flat_params(model: &MultiTaskModel) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for (_, v) in model.base.params.vars() {
        out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}
