//! THE training loop, shared by fine-tuning and pre-training and readable top to bottom like
//! nanoGPT's train.py. Each update: for every micro-batch, the objective draws its next batch,
//! runs forward and loss and backward; the gradients are summed (and, in a later data-parallel
//! run, all-reduced at the one marked point); then clip, AdamW step on the scheduled learning
//! rate, log; every so often evaluate and checkpoint. What differs between runs — multi-task
//! heads with their losses, DANN, adversarial perturbation, MLM, PLM — is an [`Objective`].
//!
//! Determinism and exact resume: every random draw comes from [`crate::rng::rng_for`] keyed by
//! the update and micro-batch, and the objective's checkpoint holds its data cursors, so a run
//! stopped anywhere resumes to the same weights as an uninterrupted one.

use crate::error::{Error, Result};
use crate::optim::{lr_at, warmup_steps, AdamW, AdamWConfig, Schedule};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The optimiser and its schedule, as both config files give them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    pub weight_decay: f64,
    /// Warm-up, as a fraction of the updates (< 1) or a number of updates (>= 1).
    pub warmup: f64,
    pub schedule: Schedule,
    /// Clip the global gradient norm to this (0 turns clipping off).
    pub max_grad_norm: f64,
}

/// How long a run is and how often it evaluates and checkpoints.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoopConfig {
    /// Optimiser updates.
    pub steps: usize,
    /// Micro-batches per update.
    pub grad_accum: usize,
    pub optim: OptimConfig,
    /// Evaluate every N updates (0: only at the end).
    pub eval_every: usize,
    /// Checkpoint every N updates (0: at each evaluation and the end).
    pub checkpoint_every: usize,
}

/// The [`LoopConfig`] of a config struct that names its fields as both run configs do
/// (`steps`, `grad_accum`, `lr`, `weight_decay`, `warmup`, `schedule`, `max_grad_norm`,
/// `eval_every`, `checkpoint_every`).
macro_rules! loop_config_of {
    ($c:expr) => {
        $crate::train_loop::LoopConfig {
            steps: $c.steps,
            grad_accum: $c.grad_accum,
            optim: $crate::train_loop::OptimConfig {
                lr: $c.lr,
                weight_decay: $c.weight_decay,
                warmup: $c.warmup,
                schedule: $c.schedule,
                max_grad_norm: $c.max_grad_norm,
            },
            eval_every: $c.eval_every,
            checkpoint_every: $c.checkpoint_every,
        }
    };
}
pub(crate) use loop_config_of;

/// Options of one invocation (not part of the config: they do not change the result).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Start over even if a checkpoint exists.
    pub restart: bool,
    /// Stop (as if interrupted) after this many updates in this invocation.
    pub stop_after: Option<usize>,
    /// Report progress on stderr: a bar on a terminal, a line every 30 s elsewhere.
    pub progress: bool,
}

/// The loop's own part of a checkpoint (objectives add theirs beside it).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    /// Updates done.
    pub step: usize,
    /// AdamW's step count.
    pub adam_t: u64,
    /// Length of metrics.jsonl when the checkpoint was written; later lines are dropped on resume.
    pub log_bytes: u64,
    pub elapsed_s: f64,
}

/// What one micro-batch gave: its gradients and the losses to check and report.
pub struct Micro {
    pub grads: GradStore,
    /// Named losses (`task `x``, `the MLM`); a non-finite one stops the run.
    pub losses: Vec<(String, f64)>,
}

/// One update, as the objective logs it.
#[derive(Clone, Copy, Debug)]
pub struct Update {
    /// Updates done, this one included.
    pub step: usize,
    pub lr: f64,
    pub grad_norm: f64,
    pub elapsed_s: f64,
    /// Seconds since this invocation started.
    pub run_s: f64,
}

/// What differs between runs: the data, the model's heads and their losses, evaluation and
/// what a checkpoint holds.
pub trait Objective {
    /// Every trainable parameter, by name (what AdamW steps and checkpoints hold).
    fn params(&self) -> Vec<(String, Var)>;
    /// Draw micro-batch `micro` of update `step`, run forward, loss and backward.
    fn micro_batch(&mut self, step: usize, micro: usize) -> Result<Micro>;
    /// The metrics.jsonl records of the update just taken (the micro-batches since the last).
    fn log(&mut self, update: &Update) -> Vec<serde_json::Value>;
    /// The progress bar's message (running losses, throughput).
    fn status(&self, update: &Update) -> String;
    /// Evaluate on held-out data after update `step`, writing records to `log`; the line to show.
    fn evaluate(&mut self, step: usize, log: &mut Log) -> Result<Option<String>>;
    /// Whether early stopping ended the run.
    fn stopped(&self) -> bool {
        false
    }
    /// Write `checkpoint-last/` (the model, `opt`'s moments, `progress` and the objective's state).
    fn checkpoint(&self, out: &Path, opt: &AdamW, progress: &Progress) -> Result<()>;
}

/// The saved optimiser moments of a resumed run.
pub struct Moments {
    pub tensors: HashMap<String, Tensor>,
    pub path: PathBuf,
}

/// Run `objective` from `progress` (zero, or a checkpoint's) to `cfg.steps` updates, or until
/// early stopping or `opts.stop_after`. Returns whether the run completed; an interrupted run
/// has written its checkpoint.
pub fn run<O: Objective>(
    objective: &mut O,
    cfg: &LoopConfig,
    out: &Path,
    progress: &mut Progress,
    moments: Option<Moments>,
    opts: &RunOptions,
) -> Result<bool> {
    let mut opt = AdamW::new(
        objective.params(),
        AdamWConfig {
            weight_decay: cfg.optim.weight_decay,
            ..Default::default()
        },
    );
    if let Some(m) = moments {
        opt.load_state(&m.tensors, progress.adam_t, &m.path)?;
    }
    let mut log = Log::open(&out.join("metrics.jsonl"), progress.log_bytes)?;
    let warmup = warmup_steps(cfg.optim.warmup, cfg.steps);
    let mut reporter = Reporter::new(opts.progress, cfg.steps, progress.step);
    let started = Instant::now();
    let elapsed_before = progress.elapsed_s;
    let mut this_run = 0usize;

    while progress.step < cfg.steps && !objective.stopped() {
        if opts.stop_after.is_some_and(|n| this_run >= n) {
            break;
        }
        let step = progress.step;
        // -- schedule: this update's learning rate
        let lr = lr_at(step, cfg.optim.lr, warmup, cfg.steps, cfg.optim.schedule);
        // -- next batch, forward and loss, backward: per micro-batch, gradients summed
        let mut grads: Option<GradStore> = None;
        for micro in 0..cfg.grad_accum {
            let m = objective.micro_batch(step, micro)?;
            if let Some((what, value)) = m.losses.iter().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFiniteLoss {
                    step,
                    what: what.clone(),
                    value: *value,
                });
            }
            grads = Some(match grads {
                None => m.grads,
                Some(mut acc) => {
                    acc.extend(m.grads)?;
                    acc
                }
            });
        }
        let grads = grads.ok_or(Error::NoGradient { step })?;
        // -- all-reduce: one process holds every micro-batch's gradient already; data-parallel
        //    ranks sum theirs here, before the norm is taken.
        // -- clip (the norm of the averaged micro-batch gradient) and step
        let grad_norm = opt.clipped_step(&grads, lr, cfg.grad_accum, cfg.optim.max_grad_norm)?;
        drop(grads);
        progress.step += 1;
        this_run += 1;
        progress.adam_t = opt.t;
        progress.elapsed_s = elapsed_before + started.elapsed().as_secs_f64();
        // -- log
        let update = Update {
            step: progress.step,
            lr,
            grad_norm,
            elapsed_s: progress.elapsed_s,
            run_s: started.elapsed().as_secs_f64(),
        };
        for rec in objective.log(&update) {
            log.write(rec)?;
        }
        reporter.update(progress.step, || objective.status(&update));
        // -- evaluate
        let last = progress.step == cfg.steps;
        if (cfg.eval_every > 0 && progress.step % cfg.eval_every == 0) || last {
            if let Some(line) = objective.evaluate(progress.step, &mut log)? {
                reporter.line(&line);
            }
        }
        // -- checkpoint
        let every = if cfg.checkpoint_every > 0 {
            cfg.checkpoint_every
        } else {
            cfg.eval_every
        };
        if (every > 0 && progress.step % every == 0) || last || objective.stopped() {
            progress.log_bytes = log.len();
            objective.checkpoint(out, &opt, progress)?;
        }
    }
    reporter.finish();
    let completed = progress.step >= cfg.steps || objective.stopped();
    if !completed {
        // Interrupted on request: the last checkpoint is the resume point.
        progress.log_bytes = log.len();
        objective.checkpoint(out, &opt, progress)?;
    }
    Ok(completed)
}

/// `metrics.jsonl`: one JSON record per line, appended; a resumed run first cuts it back to
/// the length its checkpoint recorded.
pub struct Log {
    file: std::fs::File,
    path: PathBuf,
}

impl Log {
    pub fn open(path: &Path, keep_bytes: u64) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        file.set_len(keep_bytes).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, v: serde_json::Value) -> Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn len(&self) -> u64 {
        self.file.metadata().map(|m| m.len()).unwrap_or(0)
    }
}

/// How often a run whose stderr is not a terminal prints its progress line.
const LINE_EVERY: Duration = Duration::from_secs(30);

/// Progress on stderr: an indicatif bar on a terminal; elsewhere (CI logs, `nohup`, notebooks)
/// a plain line at a steady interval, as HF Trainer's logging does; nothing when quiet.
enum Reporter {
    Quiet,
    Bar(indicatif::ProgressBar),
    Lines {
        total: usize,
        started: Instant,
        last: Instant,
    },
}

impl Reporter {
    fn new(enabled: bool, total: usize, at: usize) -> Self {
        if !enabled {
            return Reporter::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            let now = Instant::now();
            return Reporter::Lines {
                total,
                started: now,
                last: now,
            };
        }
        Reporter::Bar(progress_bar(total, at))
    }

    fn update(&mut self, step: usize, status: impl FnOnce() -> String) {
        match self {
            Reporter::Quiet => {}
            Reporter::Bar(b) => {
                b.set_message(status());
                b.set_position(step as u64);
            }
            Reporter::Lines {
                total,
                started,
                last,
            } => {
                if last.elapsed() >= LINE_EVERY || step == *total {
                    *last = Instant::now();
                    eprintln!(
                        "step {step}/{total}  {:.0} s  {}",
                        started.elapsed().as_secs_f64(),
                        status()
                    );
                }
            }
        }
    }

    fn line(&self, s: &str) {
        match self {
            Reporter::Quiet => {}
            Reporter::Bar(b) => b.println(s),
            Reporter::Lines { .. } => eprintln!("{s}"),
        }
    }

    fn finish(&self) {
        if let Reporter::Bar(b) = self {
            b.finish_and_clear();
        }
    }
}

/// The bar long jobs draw on a terminal.
fn progress_bar(total: usize, at: usize) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(total as u64);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} step {pos}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise}  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_position(at as u64);
    b
}
