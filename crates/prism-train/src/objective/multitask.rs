//! Multi-task fine-tuning as an objective: each micro-batch samples a task (uniform,
//! proportional, temperature or annealed), takes that task's next batch, and trains its head
//! and the shared encoder with the task's loss — plain, domain-adversarial (DANN) or with an
//! adversarial perturbation of the word embeddings. Evaluation scores every task on its dev
//! set, keeps the best model in `best/` and stops early when configured.

use crate::checkpoint::{swap_dir, write_checkpoint};
use crate::config::{task_probabilities, TrainConfig};
use crate::data::{next_batch, Cursor};
use crate::error::{Error, Result};
use crate::loss::{adversarial_step, dann_lambda, dann_step, TaskFns};
use crate::optim::AdamW;
use crate::report::fmt_metrics;
use crate::rng::{rng_for, seed_for, Stream};
use crate::tasks::{EvalResult, Evaluate, Feature, Supervised};
use crate::train_loop::{Log, Micro, Objective, Progress, Update};
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
}

impl FineTuneState {
    pub fn fresh(tasks: usize) -> Self {
        Self {
            cursors: vec![Cursor::default(); tasks],
            dann_cursors: vec![Cursor::default(); tasks],
            best: None,
            bad_evals: 0,
            stopped_early: false,
        }
    }
}

/// What one micro-batch logs: its task, and which of its values are there (known on every
/// rank from the replayed draws; the values themselves arrive with the all-reduce).
struct MicroLog {
    task: usize,
    adversarial: bool,
    /// DANN: lambda.
    domain: Option<f64>,
}

/// The values of a micro-batch ([`Objective::values_per_micro`]): task loss, adversarial loss,
/// domain loss (0 where the task has none).
const VALUES: usize = 3;

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
    pending: Vec<MicroLog>,
    running: Vec<Option<f64>>,
    examples_seen: usize,
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
        Ok(Self {
            cfg,
            model,
            data,
            device: model.base.params.device().clone(),
            domain_heads,
            state,
            sizes: data.iter().map(|d| d.train_feats.len()).collect(),
            weights: cfg.tasks.iter().map(|t| t.weight).collect(),
            pending: Vec::new(),
            running: vec![None; data.len()],
            examples_seen: 0,
        })
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
    fn draw(&mut self, step: usize, micro: usize) -> Draw<'a> {
        let cfg = self.cfg;
        let data: &'a [TaskData] = self.data;
        let k = (step * cfg.grad_accum + micro) as u64;
        let ti = self.sample_task(step, k);
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
        self.pending.push(MicroLog {
            task: ti,
            adversarial: tc.adversarial.is_some(),
            domain: dann.as_ref().map(|(_, l)| *l),
        });
        Draw {
            task: ti,
            feats,
            dann,
        }
    }

    fn name(&self, ti: usize) -> &str {
        &self.model.tasks[ti].spec.name
    }
}

impl Objective for MultiTask<'_> {
    fn params(&self) -> Vec<(String, Var)> {
        self.model.base.params.vars()
    }

    fn values_per_micro(&self) -> usize {
        VALUES
    }

    fn micro_batch(&mut self, step: usize, micro: usize) -> Result<Micro> {
        let cfg = self.cfg;
        let k = (step * cfg.grad_accum + micro) as u64;
        // -- sample a task, take its next batch
        let Draw {
            task: ti,
            feats,
            dann,
        } = self.draw(step, micro);
        let task = &self.model.tasks[ti];
        let tc = &cfg.tasks[ti];
        let batch = task.batch(&feats, &self.device)?;
        // -- forward, loss, backward
        let mode = Mode::train(rng_for(cfg.seed, Stream::Dropout, k).random::<u64>());
        let encoder = &self.model.base.encoder;
        let mut values = [0.0; VALUES];
        let grads = match (&tc.adversarial, &self.domain_heads[ti], &tc.dann, dann) {
            (None, Some(head), Some(dc), Some((target, lambda))) => {
                let target = task.batch(&target, &self.device)?;
                let task_loss =
                    |o: &prism_model::EncoderOutput| task.loss(&tc.loss, o, &batch, &mode);
                let (g, l) = dann_step(
                    encoder,
                    &task_loss,
                    head,
                    &batch.input,
                    &target.input,
                    &mode,
                    lambda,
                    dc.weight,
                )?;
                values[0] = l.task;
                values[2] = l.domain;
                g
            }
            (None, _, _, _) => {
                let enc = encoder.forward(&batch.input, &mode)?;
                let loss = task.loss(&tc.loss, &enc, &batch, &mode)?;
                values[0] = loss.to_scalar::<f32>()? as f64;
                loss.backward()?
            }
            (Some(adv), _, _, _) => {
                let fns = TaskFns {
                    logits: &|o, m| Ok(task.logits(o, m)?),
                    loss: &|l| task.loss_from_logits(&tc.loss, l, &batch),
                    divergence: &|a, b| task.divergence(a, b),
                };
                let seed = seed_for(cfg.seed, Stream::Adversarial, k);
                let (g, l) = adversarial_step(encoder, &batch.input, &mode, adv, &fns, seed)?;
                values[0] = l.task;
                values[1] = l.extra.unwrap_or(0.0);
                g
            }
        };
        Ok(Micro {
            grads,
            weight: 1.0,
            values: values.to_vec(),
        })
    }

    fn skip_micro_batch(&mut self, step: usize, micro: usize) -> Result<()> {
        self.draw(step, micro);
        Ok(())
    }

    fn value_name(&self, micro: usize, slot: usize) -> String {
        let what = format!("task `{}`", self.name(self.pending[micro].task));
        match slot {
            0 => what,
            1 => format!("{what} adversarial"),
            _ => format!("{what} domain"),
        }
    }

    fn log(&mut self, u: &Update, values: &[f64]) -> Vec<serde_json::Value> {
        let pending = std::mem::take(&mut self.pending);
        pending
            .into_iter()
            .zip(values.chunks(VALUES))
            .map(|(m, v)| {
                let loss = v[0];
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
                rec
            })
            .collect()
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
        Ok(Some(format!("step {step:>6}  dev  {}", summary.join("  "))))
    }

    fn stopped(&self) -> bool {
        self.state.stopped_early
    }

    fn checkpoint(&self, out: &Path, opt: &AdamW, progress: &Progress) -> Result<()> {
        let state = TrainerState {
            progress: progress.clone(),
            objective: self.state.clone(),
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
