//! THE training loop, shared by fine-tuning and pre-training and readable top to bottom like
//! nanoGPT's train.py. Each update: for every micro-batch, the objective draws its next batch,
//! runs forward and loss and backward; the gradients are summed (and, on several ranks,
//! all-reduced at the one marked point); then clip, AdamW step on the scheduled learning
//! rate, log; every so often evaluate and checkpoint. What differs between runs — multi-task
//! heads with their losses, DANN, adversarial perturbation, MLM, PLM — is an [`Objective`].
//!
//! Determinism and exact resume: every random draw comes from [`crate::rng::rng_for`] keyed by
//! the update and micro-batch, and the objective's checkpoint holds its data cursors, so a run
//! stopped anywhere resumes to the same weights as an uninterrupted one.

use crate::dist;
use crate::error::{Error, Result};
use crate::optim::{lr_at, warmup_steps, AdamW, AdamWConfig, Precision, Schedule};
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
    /// The precision of the forward and backward passes.
    pub precision: crate::optim::Precision,
    /// Recompute each encoder layer in the backward pass ([`prism_model::recompute`]).
    pub gradient_checkpointing: bool,
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
            precision: $c.precision,
            gradient_checkpointing: $c.gradient_checkpointing,
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
    /// The ranks of a data-parallel job (one process by default).
    pub comm: dist::Comm,
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

/// What one micro-batch gave: its gradients, its weight in the update and the values to check
/// and log.
pub struct Micro {
    pub grads: GradStore,
    /// This micro-batch's share of the update's average: 1 for a loss that is a mean over its
    /// batch, the number of predicted tokens for a loss summed over tokens. The update's
    /// gradient is the sum of the micro-batches' gradients over the sum of their weights (over
    /// all ranks), so accumulation equals one large batch.
    pub weight: f64,
    /// [`Objective::values_per_micro`] numbers (losses, counts), as the objective orders them;
    /// a non-finite one stops the run.
    pub values: Vec<f64>,
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
    /// Every trainable parameter, by name, in a fixed order (what AdamW steps, checkpoints hold
    /// and ranks all-reduce).
    fn params(&self) -> Vec<(String, Var)>;
    /// How many values each micro-batch reports ([`Micro::values`]).
    fn values_per_micro(&self) -> usize;
    /// Draw micro-batch `micro` of update `step`, run forward, loss and backward.
    fn micro_batch(&mut self, step: usize, micro: usize) -> Result<Micro>;
    /// Micro-batch `micro` of update `step` runs on another rank: make the same random draws
    /// and data-cursor advances as [`Objective::micro_batch`] would, without computing.
    fn skip_micro_batch(&mut self, step: usize, micro: usize) -> Result<()>;
    /// What value `slot` of micro-batch `micro` of the current update is (`task `x``).
    fn value_name(&self, micro: usize, slot: usize) -> String;
    /// The metrics.jsonl records of the update just taken; `values` holds every micro-batch's
    /// values (of every rank), micro-batch after micro-batch.
    fn log(&mut self, update: &Update, values: &[f64]) -> Vec<serde_json::Value>;
    /// The progress bar's message (running losses, throughput).
    fn status(&self, update: &Update) -> String;
    /// Evaluate on held-out data after update `step`, writing records to `log`; the line to show.
    /// Only rank 0 evaluates.
    fn evaluate(&mut self, step: usize, log: &mut Log) -> Result<Option<String>>;
    /// Whether early stopping ended the run.
    fn stopped(&self) -> bool {
        false
    }
    /// Write `checkpoint-last/` (the model, `opt`'s moments, `progress` and the objective's state).
    /// Only rank 0 writes.
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
///
/// On W ranks (`opts.comm`), rank r computes the micro-batches m ≡ r (mod W) of each update
/// and replays the others' draws; gradients, micro-batch weights and values are summed at the
/// all-reduce point, so every rank takes the step one process would. Rank 0 logs, evaluates
/// and writes checkpoints; the ranks check at the start and at every checkpoint that their
/// parameters agree.
pub fn run<O: Objective>(
    objective: &mut O,
    cfg: &LoopConfig,
    out: &Path,
    progress: &mut Progress,
    moments: Option<Moments>,
    opts: &RunOptions,
) -> Result<bool> {
    let comm = &opts.comm;
    let (rank, world) = (comm.rank(), comm.world());
    dist::check_accumulation(cfg.grad_accum, world)?;
    let params = objective.params();
    let mut opt = AdamW::new(
        params.clone(),
        AdamWConfig {
            weight_decay: cfg.optim.weight_decay,
            ..Default::default()
        },
    );
    if let Some(m) = moments {
        opt.load_state(&m.tensors, progress.adam_t, &m.path)?;
    }
    if world > 1 {
        dist::agree(
            comm,
            &[
                (
                    "the start step",
                    format!("{} {}", progress.step, progress.adam_t),
                ),
                ("the parameters", dist::params_fingerprint(&params)?),
                ("the optimiser moments", opt.fingerprint()?),
            ],
        )?;
    }
    let mut log = if comm.is_root() {
        Some(Log::open(&out.join("metrics.jsonl"), progress.log_bytes)?)
    } else {
        None
    };
    let warmup = warmup_steps(cfg.optim.warmup, cfg.steps);
    if cfg.precision == Precision::Bf16 && comm.is_root() {
        eprintln!(
            "precision bf16: linear layers in {}",
            prism_model::ops::bf16::describe()
        );
    }
    if cfg.gradient_checkpointing
        && comm.is_root()
        && params.iter().any(|(_, v)| !v.device().is_cpu())
    {
        eprintln!(
            "note: gradient checkpointing recomputes layers on the CPU only; on this device every layer keeps its activations"
        );
    }
    let mut reporter = Reporter::new(opts.progress && comm.is_root(), cfg.steps, progress.step);
    let started = Instant::now();
    let elapsed_before = progress.elapsed_s;
    let mut this_run = 0usize;
    // Rank 0's early-stopping decision, broadcast after each evaluation.
    let mut stopped = objective.stopped();
    let per = objective.values_per_micro() + 1;
    let values_len = cfg.grad_accum * per;

    while progress.step < cfg.steps && !stopped {
        if opts.stop_after.is_some_and(|n| this_run >= n) {
            break;
        }
        let step = progress.step;
        // -- schedule: this update's learning rate
        let lr = lr_at(step, cfg.optim.lr, warmup, cfg.steps, cfg.optim.schedule);
        // -- next batch, forward and loss, backward: per micro-batch of this rank, gradients
        //    summed; the other ranks' micro-batches are replayed (their draws, their cursors)
        let mut header = vec![0f64; values_len + if world > 1 { params.len() } else { 0 }];
        let mut grads: Option<GradStore> = None;
        for micro in 0..cfg.grad_accum {
            if micro % world != rank {
                objective.skip_micro_batch(step, micro)?;
                continue;
            }
            let m = {
                // Mixed precision and activation checkpointing cover the forward and backward
                // passes and nothing else.
                let _precision = prism_model::ops::bf16::autocast(cfg.precision == Precision::Bf16);
                let _recompute =
                    prism_model::recompute::gradient_checkpointing(cfg.gradient_checkpointing);
                objective.micro_batch(step, micro)?
            };
            let slot = &mut header[micro * per..(micro + 1) * per];
            slot[0] = m.weight;
            for (d, v) in slot[1..].iter_mut().zip(&m.values) {
                *d = *v;
            }
            grads = Some(match grads {
                None => m.grads,
                Some(mut acc) => {
                    acc.extend(m.grads)?;
                    acc
                }
            });
        }
        let mut grads = grads.ok_or(Error::NoGradient { step: step + 1 })?;
        // -- all-reduce: weights, values and which parameters have gradients in one small
        //    reduction, then the gradients in buckets; one process has them all already
        if world > 1 {
            let present = dist::presence(&params, &grads);
            header[values_len..].copy_from_slice(&present);
            comm.all_reduce_f64(&mut header)?;
        }
        let (values, present) = header.split_at(values_len);
        for micro in 0..cfg.grad_accum {
            let v = &values[micro * per..(micro + 1) * per];
            if let Some(slot) = (1..per).find(|&s| !v[s].is_finite()) {
                return Err(Error::NonFiniteLoss {
                    step: step + 1,
                    what: objective.value_name(micro, slot - 1),
                    value: v[slot],
                });
            }
        }
        let weight: f64 = (0..cfg.grad_accum).map(|m| values[m * per]).sum();
        dist::all_reduce_grads(comm, &params, &mut grads, present)?;
        // -- clip (the norm of the averaged gradient) and step
        let grad_norm = opt.clipped_step(&grads, lr, weight, cfg.optim.max_grad_norm)?;
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
        let per_micro: Vec<f64> = (0..cfg.grad_accum)
            .flat_map(|m| values[m * per + 1..(m + 1) * per].iter().copied())
            .collect();
        let records = objective.log(&update, &per_micro);
        if let Some(log) = log.as_mut() {
            for rec in records {
                log.write(rec)?;
            }
        }
        reporter.update(progress.step, || objective.status(&update));
        // -- evaluate (rank 0; the others learn whether early stopping ended the run)
        let last = progress.step == cfg.steps;
        if (cfg.eval_every > 0 && progress.step % cfg.eval_every == 0) || last {
            if let Some(log) = log.as_mut() {
                if let Some(line) = objective.evaluate(progress.step, log)? {
                    reporter.line(&line);
                }
            }
            stopped = comm.broadcast_flag(objective.stopped())?;
        }
        // -- checkpoint
        let every = if cfg.checkpoint_every > 0 {
            cfg.checkpoint_every
        } else {
            cfg.eval_every
        };
        if (every > 0 && progress.step % every == 0) || last || stopped {
            checkpoint(objective, comm, &params, out, &opt, progress, log.as_ref())?;
        }
    }
    reporter.finish();
    let completed = progress.step >= cfg.steps || stopped;
    if !completed {
        // Interrupted on request: the last checkpoint is the resume point.
        checkpoint(objective, comm, &params, out, &opt, progress, log.as_ref())?;
    }
    Ok(completed)
}

/// The checkpoint phase: the ranks check that their parameters still agree (a rank that
/// diverged is an error on all of them, before anything is written), then rank 0 writes.
fn checkpoint<O: Objective>(
    objective: &O,
    comm: &dist::Comm,
    params: &[(String, Var)],
    out: &Path,
    opt: &AdamW,
    progress: &mut Progress,
    log: Option<&Log>,
) -> Result<()> {
    if comm.world() > 1 {
        dist::agree(
            comm,
            &[(
                &format!("the parameters after update {}", progress.step),
                dist::params_fingerprint(params)?,
            )],
        )?;
    }
    if let Some(log) = log {
        progress.log_bytes = log.len();
        objective.checkpoint(out, opt, progress)?;
    }
    Ok(())
}

/// `metrics.jsonl`: one JSON record per line, appended; a resumed run first cuts it back to
/// the length its checkpoint recorded, and never further than its last complete record: a file
/// shorter than that length (or ending in a torn line) is cut to its last full line, never
/// padded.
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
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let keep = keep_bytes.min(len);
        let keep = if keep == 0 {
            0
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let head = &bytes[..keep as usize];
            match head.iter().rposition(|&c| c == b'\n') {
                Some(i) => i as u64 + 1,
                None => 0,
            }
        };
        file.set_len(keep).map_err(|e| Error::io(path, e))?;
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

#[cfg(test)]
mod log_tests {
    use super::Log;

    fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(p).unwrap();
        assert!(!text.contains('\0'), "NUL bytes in {text:?}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// A log shorter than the checkpoint's offset (records lost or cut elsewhere) is kept as it
    /// is up to its last complete line: never padded with NUL bytes, never a torn line.
    #[test]
    fn resuming_a_short_or_torn_log_keeps_every_complete_record() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metrics.jsonl");
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n{\"st").unwrap();
        let mut log = Log::open(&p, 4096).unwrap();
        log.write(serde_json::json!({"step": 3})).unwrap();
        let got: Vec<i64> = lines(&p)
            .iter()
            .map(|v| v["step"].as_i64().unwrap())
            .collect();
        assert_eq!(got, [1, 2, 3]);
        // An offset inside a line cuts back to the line before it.
        drop(log);
        let log = Log::open(&p, 15).unwrap();
        drop(log);
        assert_eq!(lines(&p).len(), 1);
        // The offset of a complete prefix keeps exactly that prefix.
        std::fs::write(&p, "{\"step\":1}\n{\"step\":2}\n").unwrap();
        drop(Log::open(&p, 11).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"step\":1}\n");
    }
}
