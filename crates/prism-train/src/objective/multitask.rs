//! Multi-task fine-tuning as an objective: each micro-batch samples a task (uniform,
//! proportional, temperature or annealed), takes that task's next batch, and trains its head
//! and the shared encoder with the task's loss — plain, domain-adversarial (DANN) or with an
//! adversarial perturbation of the word embeddings. With `[multitask] tasks_per_update = k > 1`
//! a micro-batch draws k distinct tasks instead, runs one backward pass per task and combines
//! their gradients with the configured loss weighting or gradient surgery
//! ([`crate::multitask`]), logging how much the tasks' shared gradients conflict. Evaluation
//! scores every task on its dev set, keeps the best model in `best/` and stops early when
//! configured.

use crate::checkpoint::{swap_dir, write_checkpoint};
use crate::config::{task_probabilities, TrainConfig};
use crate::data::{next_batch, Cursor};
use crate::error::{Error, Result};
use crate::loss::{adversarial_step, dann_lambda, dann_step, TaskFns};
use crate::multitask::{self, grads::SharedParams, MethodState, Weighting};
use crate::optim::AdamW;
use crate::report::fmt_metrics;
use crate::rng::{rng_for, seed_for, Stream};
use crate::tasks::{EvalResult, Evaluate, Feature, Supervised};
use crate::train_loop::{Log, Micro, Objective, Progress, Update};
use candle_core::backprop::GradStore;
use candle_core::{Device, Var};
use prism_model::heads::DomainHead;
use prism_model::tasks::{Example, MultiTaskModel};
use prism_model::{Encoder, Mode};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// The training examples scored at each evaluation (`eval_train_examples`; empty without).
    pub train_eval: Vec<Example>,
    pub train_eval_feats: Vec<Feature>,
}

/// The JSON state in a fine-tuning checkpoint.
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";

/// Everything besides weights and optimiser moments that a resumed run needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    #[serde(flatten)]
    pub progress: Progress,
    #[serde(flatten)]
    pub objective: FineTuneState,
    pub config: TrainConfig,
}

/// The fine-tuning objective's part of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FineTuneState {
    /// Each task's position in its training data.
    pub cursors: Vec<Cursor>,
    /// Positions in each task's DANN target data.
    #[serde(default)]
    pub dann_cursors: Vec<Cursor>,
    /// (step, selection score) of the best dev evaluation so far.
    pub best: Option<(usize, f64)>,
    pub bad_evals: usize,
    pub stopped_early: bool,
    /// The multi-task weighting method's state (learned weights, loss history).
    #[serde(default)]
    pub weighting: MethodState,
}

impl FineTuneState {
    pub fn fresh(tasks: usize) -> Self {
        Self {
            cursors: vec![Cursor::default(); tasks],
            dann_cursors: vec![Cursor::default(); tasks],
            best: None,
            bad_evals: 0,
            stopped_early: false,
            weighting: MethodState::default(),
        }
    }
}

/// What one task of a micro-batch logs: the task, and which of its values are there (known on
/// every rank from the replayed draws; the values themselves arrive with the all-reduce).
struct TaskLog {
    task: usize,
    adversarial: bool,
    /// DANN: lambda.
    domain: Option<f64>,
}

/// The values of one task of a micro-batch ([`Objective::values_per_micro`]): task loss,
/// adversarial loss, domain loss (0 where the task has none). With several tasks per
/// micro-batch each task adds its shared-gradient weight and its shared-gradient norm
/// ([`MIXED`]), and the micro-batch ends with the cosines of its task pairs.
const VALUES: usize = 3;
const MIXED: usize = 2;

/// A micro-batch's draws: its task, its batch and (DANN) the target-domain batch.
struct Draw<'d> {
    task: usize,
    feats: Vec<&'d Feature>,
    dann: Option<(Vec<&'d Feature>, f64)>,
}

/// Multi-task fine-tuning of `model` on `data` as configured.
pub struct MultiTask<'a> {
    cfg: &'a TrainConfig,
    model: &'a MultiTaskModel,
    data: &'a [TaskData],
    device: Device,
    /// Domain classifiers of DANN tasks (parameters of the model's store, so AdamW and
    /// checkpoints see them).
    domain_heads: Vec<Option<DomainHead>>,
    pub state: FineTuneState,
    sizes: Vec<usize>,
    weights: Vec<f64>,
    /// Per micro-batch of the current update: its tasks.
    pending: Vec<Vec<TaskLog>>,
    running: Vec<Option<f64>>,
    examples_seen: usize,
    /// How several tasks of a micro-batch are combined (`[multitask]`).
    method: Box<dyn Weighting>,
    shared: SharedParams,
}

impl<'a> MultiTask<'a> {
    pub fn new(
        cfg: &'a TrainConfig,
        model: &'a MultiTaskModel,
        data: &'a [TaskData],
        mut state: FineTuneState,
    ) -> Result<Self> {
        if state.dann_cursors.len() != data.len() {
            state.dann_cursors = vec![Cursor::default(); data.len()];
        }
        let hidden = model.base.config.hidden_size();
        let std = model.base.config.initializer_range();
        let root = model.base.params.root();
        let domain_heads = cfg
            .tasks
            .iter()
            .map(|t| {
                t.dann
                    .as_ref()
                    .map(|_| {
                        DomainHead::load(
                            &root.pp("prism.heads").pp(&t.name).pp("domain"),
                            hidden,
                            std,
                        )
                    })
                    .transpose()
            })
            .collect::<prism_model::Result<_>>()?;
        let weights: Vec<f64> = cfg.tasks.iter().map(|t| t.weight).collect();
        let device = model.base.params.device().clone();
        let mut method = multitask::build(&cfg.multitask, &weights, &device)?;
        method.restore(&state.weighting)?;
        Ok(Self {
            cfg,
            model,
            data,
            device,
            domain_heads,
            state,
            sizes: data.iter().map(|d| d.train_feats.len()).collect(),
            weights,
            pending: Vec::new(),
            running: vec![None; data.len()],
            examples_seen: 0,
            method,
            shared: SharedParams::of(&model.base.params.vars()),
        })
    }

    /// Tasks per micro-batch.
    fn k(&self) -> usize {
        self.cfg.multitask.tasks_per_update
    }

    /// The k distinct tasks of micro-batch key `key` of update `step`: every task when k is
    /// their number, else drawn one after another from the sampling distribution without
    /// replacement.
    fn sample_tasks(&self, step: usize, key: u64) -> Vec<usize> {
        let n = self.sizes.len();
        let k = self.k();
        if k >= n {
            return (0..n).collect();
        }
        let mut probs = task_probabilities(
            &self.cfg.sampling,
            &self.sizes,
            &self.weights,
            step as f64 / self.cfg.steps as f64,
        );
        let mut rng = rng_for(self.cfg.seed, Stream::TaskChoice, key);
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let total: f64 = probs.iter().sum();
            if !(total > 0.0) {
                // Only tasks of probability 0 are left: take them in order.
                let rest: Vec<usize> = (0..n).filter(|i| !out.contains(i)).collect();
                out.extend(rest.into_iter().take(k - out.len()));
                break;
            }
            let u: f64 = rng.random::<f64>() * total;
            let mut acc = 0.0;
            let mut pick = probs.iter().rposition(|&p| p > 0.0).unwrap_or(0);
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if *p > 0.0 && u < acc {
                    pick = i;
                    break;
                }
            }
            out.push(pick);
            probs[pick] = 0.0;
        }
        out
    }

    /// The task micro-batch `k` of update `step` trains, drawn from the sampling distribution.
    fn sample_task(&self, step: usize, k: u64) -> usize {
        let probs = task_probabilities(
            &self.cfg.sampling,
            &self.sizes,
            &self.weights,
            step as f64 / self.cfg.steps as f64,
        );
        let u: f64 = rng_for(self.cfg.seed, Stream::TaskChoice, k).random();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return i;
            }
        }
        probs.len() - 1
    }

    /// The draws of micro-batch `micro` of update `step`, on whichever rank computes it: the
    /// task, its next batch and (DANN) the next target-domain batch, advancing the cursors.
    fn draw(&mut self, step: usize, micro: usize) -> Vec<Draw<'a>> {
        let key = (step * self.cfg.grad_accum + micro) as u64;
        let tasks = if self.k() > 1 {
            self.sample_tasks(step, key)
        } else {
            vec![self.sample_task(step, key)]
        };
        let draws: Vec<Draw<'a>> = tasks
            .into_iter()
            .map(|ti| self.draw_for(step, ti))
            .collect();
        self.pending.push(
            draws
                .iter()
                .map(|d| TaskLog {
                    task: d.task,
                    adversarial: self.cfg.tasks[d.task].adversarial.is_some(),
                    domain: d.dann.as_ref().map(|(_, l)| *l),
                })
                .collect(),
        );
        draws
    }

    /// Task `ti`'s next batch and (DANN) its next target-domain batch, advancing the cursors.
    fn draw_for(&mut self, step: usize, ti: usize) -> Draw<'a> {
        let cfg = self.cfg;
        let data: &'a [TaskData] = self.data;
        let feats = next_batch(
            &data[ti].train_feats,
            &mut self.state.cursors[ti],
            cfg.batch_size,
            cfg.seed,
            Stream::Order,
            ti,
        );
        self.examples_seen += feats.len();
        let tc = &cfg.tasks[ti];
        let dann = match (&tc.adversarial, &self.domain_heads[ti], &tc.dann) {
            (None, Some(_), Some(dc)) => {
                let lambda = dann_lambda(step as f64 / cfg.steps as f64, dc.gamma);
                let target = next_batch(
                    &data[ti].dann_feats,
                    &mut self.state.dann_cursors[ti],
                    feats.len(),
                    cfg.seed,
                    Stream::DannOrder,
                    ti,
                );
                Some((target, lambda))
            }
            _ => None,
        };
        Draw {
            task: ti,
            feats,
            dann,
        }
    }

    /// One task's forward, loss and backward on its drawn batch: its gradients and its values.
    fn task_step(
        &self,
        draw: Draw<'_>,
        mode: &Mode,
        key: u64,
    ) -> Result<(GradStore, [f64; VALUES])> {
        let cfg = self.cfg;
        let Draw {
            task: ti,
            feats,
            dann,
        } = draw;
        let task = &self.model.tasks[ti];
        let tc = &cfg.tasks[ti];
        let batch = task.batch(&feats, &self.device)?;
        let encoder = &self.model.base.encoder;
        let mut values = [0.0; VALUES];
        let grads = match (&tc.adversarial, &self.domain_heads[ti], &tc.dann, dann) {
            (None, Some(head), Some(dc), Some((target, lambda))) => {
                let target = task.batch(&target, &self.device)?;
                let task_loss =
                    |o: &prism_model::EncoderOutput| task.loss(&tc.loss, o, &batch, mode);
                let (g, l) = dann_step(
                    encoder,
                    &task_loss,
                    head,
                    &batch.input,
                    &target.input,
                    mode,
                    lambda,
                    dc.weight,
                )?;
                values[0] = l.task;
                values[2] = l.domain;
                g
            }
            (None, _, _, _) => {
                let enc = encoder.forward(&batch.input, mode)?;
                let loss = task.loss(&tc.loss, &enc, &batch, mode)?;
                values[0] = loss.to_scalar::<f32>()? as f64;
                loss.backward()?
            }
            (Some(adv), _, _, _) => {
                let fns = TaskFns {
                    logits: &|o, m| Ok(task.logits(o, m)?),
                    loss: &|l| task.loss_from_logits(&tc.loss, l, &batch),
                    divergence: &|a, b| task.divergence(a, b),
                };
                let seed = seed_for(cfg.seed, Stream::Adversarial, key);
                let (g, l) = adversarial_step(encoder, &batch.input, mode, adv, &fns, seed)?;
                values[0] = l.task;
                values[1] = l.extra.unwrap_or(0.0);
                g
            }
        };
        Ok((grads, values))
    }

    fn name(&self, ti: usize) -> &str {
        &self.model.tasks[ti].spec.name
    }
}

impl Objective for MultiTask<'_> {
    fn params(&self) -> Vec<(String, Var)> {
        let mut p = self.model.base.params.vars();
        if let Some(v) = self.method.param() {
            p.push((
                format!("prism.multitask.{}", self.method.method().name()),
                v.clone(),
            ));
        }
        p
    }

    fn values_per_micro(&self) -> usize {
        let k = self.k();
        if k > 1 {
            k * (VALUES + MIXED) + k * (k - 1) / 2
        } else {
            VALUES
        }
    }

    fn micro_batch(&mut self, step: usize, micro: usize) -> Result<Micro> {
        let cfg = self.cfg;
        let key = (step * cfg.grad_accum + micro) as u64;
        // -- sample the task (or k tasks), take their next batches
        let draws = self.draw(step, micro);
        let mode = Mode::train(rng_for(cfg.seed, Stream::Dropout, key).random::<u64>());
        if draws.len() == 1 {
            let d = draws.into_iter().next().expect("one draw");
            let (grads, values) = self.task_step(d, &mode, key)?;
            return Ok(Micro {
                grads,
                weight: 1.0,
                values: values.to_vec(),
            });
        }
        // -- several tasks: one forward and backward each, then the configured combination
        let n = self.sizes.len() as u64;
        let (mut stores, mut values, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
        for d in draws {
            tasks.push(d.task);
            let task_key = key * n + d.task as u64;
            let (g, v) = self.task_step(d, &mode, task_key)?;
            stores.push(g);
            values.push(v);
        }
        let gram = multitask::grads::gram(&stores, &self.shared.shared)?;
        let last = multitask::grads::gram(&stores, &self.shared.last_layer)?;
        let last_norms: Vec<f64> = (0..tasks.len())
            .map(|i| last[i][i].max(0.0).sqrt())
            .collect();
        let losses: Vec<f64> = values.iter().map(|v| v[0]).collect();
        let c = self.method.combine(
            &multitask::Step {
                step,
                tasks: &tasks,
                losses: &losses,
                gram: &gram,
                last_layer_norms: &last_norms,
            },
            &mut rng_for(cfg.seed, Stream::Multitask, key),
        )?;
        let grads = multitask::grads::combine(&stores, &self.shared, &c, self.method.param())?;
        drop(stores);
        let mut out = Vec::with_capacity(self.values_per_micro());
        for (i, v) in values.iter().enumerate() {
            out.extend_from_slice(v);
            out.push(c.shared[i]);
            out.push(gram[i][i].max(0.0).sqrt());
        }
        out.extend(multitask::cosines(&gram).into_iter().map(|(_, _, c)| c));
        Ok(Micro {
            grads,
            weight: 1.0,
            values: out,
        })
    }

    fn skip_micro_batch(&mut self, step: usize, micro: usize) -> Result<()> {
        self.draw(step, micro);
        Ok(())
    }

    fn value_name(&self, micro: usize, slot: usize) -> String {
        let tasks = &self.pending[micro];
        let per = if tasks.len() > 1 {
            VALUES + MIXED
        } else {
            VALUES
        };
        let Some(t) = tasks.get(slot / per) else {
            return "a task-pair gradient cosine".into();
        };
        let what = format!("task `{}`", self.name(t.task));
        match slot % per {
            0 => what,
            1 => format!("{what} adversarial"),
            2 => format!("{what} domain"),
            3 => format!("{what} weight"),
            _ => format!("{what} gradient norm"),
        }
    }

    fn log(&mut self, u: &Update, values: &[f64]) -> Vec<serde_json::Value> {
        let pending = std::mem::take(&mut self.pending);
        let per_micro = self.values_per_micro();
        let mut records = Vec::new();
        let mut observed = Vec::new();
        for (tasks, v) in pending.into_iter().zip(values.chunks(per_micro)) {
            let mixed = tasks.len() > 1;
            let per = if mixed { VALUES + MIXED } else { VALUES };
            for (i, m) in tasks.iter().enumerate() {
                let v = &v[i * per..(i + 1) * per];
                let loss = v[0];
                observed.push((m.task, loss));
                let r = &mut self.running[m.task];
                *r = Some(r.map_or(loss, |r| 0.9 * r + 0.1 * loss));
                let mut rec = serde_json::json!({"step": u.step, "task": self.name(m.task), "loss": loss, "lr": u.lr, "grad_norm": u.grad_norm, "elapsed_s": u.elapsed_s});
                if m.adversarial {
                    rec["adversarial_loss"] = serde_json::json!(v[1]);
                }
                if let Some(lambda) = m.domain {
                    rec["domain_loss"] = serde_json::json!(v[2]);
                    rec["lambda"] = serde_json::json!(lambda);
                }
                if mixed {
                    rec["weight"] = serde_json::json!(v[3]);
                    rec["task_grad_norm"] = serde_json::json!(v[4]);
                }
                records.push(rec);
            }
            if mixed {
                // How much the tasks' shared-encoder gradients agree (1) or fight (< 0).
                let cos = &v[tasks.len() * per..];
                let mut pairs = serde_json::Map::new();
                let mut c = cos.iter();
                for i in 0..tasks.len() {
                    for j in i + 1..tasks.len() {
                        let (a, b) = (self.name(tasks[i].task), self.name(tasks[j].task));
                        let (a, b) = if a <= b { (a, b) } else { (b, a) };
                        pairs.insert(
                            format!("{a}/{b}"),
                            serde_json::json!(c.next().copied().unwrap_or(0.0)),
                        );
                    }
                }
                records.push(serde_json::json!({"step": u.step, "gradient_cosine": pairs}));
            }
        }
        self.method.observe(u.step - 1, &observed);
        records
    }

    fn status(&self, u: &Update) -> String {
        let losses: Vec<String> = (0..self.running.len())
            .filter_map(|ti| self.running[ti].map(|r| format!("{} {r:.3}", self.name(ti))))
            .collect();
        let rate = self.examples_seen as f64 / u.run_s.max(1e-9);
        format!("{} | {rate:.1} ex/s", losses.join(" | "))
    }

    fn evaluate(&mut self, step: usize, log: &mut Log) -> Result<Option<String>> {
        let (res, score) = evaluate_dev(self.model, self.data, self.cfg)?;
        for (task, r) in &res {
            log.write(serde_json::json!({"step": step, "task": task, "split": "dev", "metrics": r.metrics}))?;
        }
        let mut train_summary = Vec::new();
        if self.data.iter().any(|d| !d.train_eval.is_empty()) {
            let frozen = self.model.frozen()?;
            for (ti, d) in self.data.iter().enumerate() {
                if d.train_eval.is_empty() {
                    continue;
                }
                let r = frozen.evaluate_features(
                    ti,
                    &d.train_eval,
                    &d.train_eval_feats,
                    self.cfg.eval_batch_size,
                )?;
                let task = &self.model.tasks[ti].spec;
                log.write(serde_json::json!({"step": step, "task": task.name, "split": "train", "examples": r.examples, "metrics": r.metrics}))?;
                if let Some(v) = r.metrics.get(task.kind.main_metric()) {
                    train_summary.push(format!("{} {}={v:.4}", task.name, task.kind.main_metric()));
                }
            }
        }
        let st = &mut self.state;
        if st.best.is_none_or(|(_, b)| score > b) {
            st.best = Some((step, score));
            st.bad_evals = 0;
            let out = &self.cfg.output;
            let tmp = out.join(".best-tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            self.model.save(&tmp)?;
            swap_dir(&tmp, &out.join("best"))?;
        } else {
            st.bad_evals += 1;
            if self
                .cfg
                .early_stopping
                .as_ref()
                .is_some_and(|es| st.bad_evals >= es.patience)
            {
                st.stopped_early = true;
            }
        }
        let summary: Vec<String> = res
            .iter()
            .map(|(t, r)| format!("{t}: {}", fmt_metrics(&r.metrics)))
            .collect();
        let mut line = format!("step {step:>6}  dev  {}", summary.join("  "));
        if !train_summary.is_empty() {
            line.push_str(&format!("  | train  {}", train_summary.join("  ")));
        }
        Ok(Some(line))
    }

    fn stopped(&self) -> bool {
        self.state.stopped_early
    }

    fn checkpoint(&self, out: &Path, opt: &AdamW, progress: &Progress) -> Result<()> {
        let mut objective = self.state.clone();
        objective.weighting = self.method.state()?;
        let state = TrainerState {
            progress: progress.clone(),
            objective,
            config: self.cfg.clone(),
        };
        write_checkpoint(
            out,
            |d| Ok(self.model.save(d)?),
            opt,
            TRAINER_STATE_FILE,
            &state,
        )
    }
}

fn higher_is_better(metric: &str) -> bool {
    !(metric.ends_with("mse") || metric.ends_with("loss"))
}

/// Evaluate every task on its dev set; returns results and the selection score (the
/// configured early-stopping metric, else the mean of each task's main metric).
pub fn evaluate_dev(
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
