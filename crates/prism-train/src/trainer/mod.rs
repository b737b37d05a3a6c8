//! Multi-task fine-tuning from a config: read and featurise the data ([`prepare_with`]), put the
//! heads on the encoder, run [`crate::train_loop`] with the [`MultiTask`] objective (resuming
//! from `checkpoint-last/` when there is one), then save the final model, evaluate it on every
//! dev and test set and write `report.json` and `report.html`.

pub(crate) mod prepare;

pub use crate::objective::{TaskData, TrainerState};
pub use crate::report::{fmt_metrics, Report, TaskReport};
pub use crate::train_loop::RunOptions;
pub use prepare::prepare_with;

use crate::checkpoint::{
    checkpoint_dir, find_checkpoint, prepare_output, read_checkpoint, swap_dir, write_json,
};
use crate::config::TrainConfig;
use crate::dist;
use crate::error::Result;
use crate::objective::{FineTuneState, MultiTask, TRAINER_STATE_FILE as STATE_FILE};
use crate::tasks::Evaluate;
use crate::train_loop::{self, Progress};
use candle_core::Device;
use prism_model::tasks::MultiTaskModel;
use prism_model::{fetch, PretrainedModel};
use std::collections::BTreeMap;

/// Train as configured, resuming from `output/checkpoint-last` when it exists.
pub fn train(cfg: &TrainConfig, device: &Device, opts: &RunOptions) -> Result<Report> {
    let out = cfg.output.clone();
    let comm = &opts.comm;
    // Rank 0 owns the output folder; the others read the checkpoint from it after rank 0 has
    // prepared it (the folder must be one that every node sees).
    if comm.is_root() {
        prepare_output(&out, opts.restart, &["best"])?;
    }
    comm.barrier()?;
    let resume = find_checkpoint(&out, STATE_FILE);
    // A resumed run takes its weights (encoder and heads) from the checkpoint; a fresh one from
    // the configured model.
    let (base, saved, moments) = match &resume {
        Some(ck) => {
            let r = read_checkpoint(ck, STATE_FILE, |s: &TrainerState| {
                s.config
                    == TrainConfig {
                        output: s.config.output.clone(),
                        gradient_checkpointing: s.config.gradient_checkpointing,
                        ..cfg.clone()
                    }
            })?;
            crate::checkpoint::check_progress(ck, STATE_FILE, &r.state.progress, cfg.steps)?;
            (
                PretrainedModel::load(ck, device)?,
                Some(r.state),
                Some(r.moments),
            )
        }
        None => {
            let dir = fetch::resolve_model(&cfg.model)?;
            let m = PretrainedModel::load_mapped(&dir, device, |c, src| {
                continue_transformers_head(cfg, &dir, c, src)
            })?;
            let base = if cfg.reinit {
                let mut fresh = PretrainedModel::fresh(m.config, m.tokenizer, device, cfg.seed)?;
                fresh.dir = m.dir;
                fresh
            } else {
                m
            };
            (base, None, None)
        }
    };
    let (model, data) = prepare_with(cfg, base)?;
    if comm.world() > 1 {
        dist::agree(
            comm,
            &[
                ("the config", serde_json::to_string(cfg).unwrap_or_default()),
                ("the data", data_fingerprint(&data)),
                ("the binary", dist::binary_fingerprint()?),
            ],
        )?;
    }
    let (mut progress, state) = match saved {
        Some(s) => (s.progress, s.objective),
        None => (Progress::default(), FineTuneState::fresh(data.len())),
    };
    if resume.is_some() && comm.is_root() {
        eprintln!(
            "resuming from step {} ({})",
            progress.step,
            checkpoint_dir(&out).display()
        );
    }
    let mut objective = MultiTask::new(cfg, &model, &data, state)?;
    let completed = train_loop::run(
        &mut objective,
        &cfg.loop_config(),
        &out,
        &mut progress,
        moments,
        opts,
    )?;
    let state = objective.state;
    if !completed || !comm.is_root() {
        return Ok(Report {
            steps: progress.step,
            completed,
            stopped_early: false,
            best: state.best,
            best_metric: String::new(),
            final_is_best: false,
            train_seconds: progress.elapsed_s,
            tasks: BTreeMap::new(),
            model_dir: if completed {
                out.join("model")
            } else {
                checkpoint_dir(&out)
            },
        });
    }
    finish(cfg, model, &data, &state, &progress, device)
}

/// `model` is a transformers task model (`BertForSequenceClassification`, …): its head becomes
/// the head of the config's first task of that kind, so fine-tuning continues training it,
/// with its output rows in that task's label order (`labels`, else sorted as prism infers
/// them, "O" first for tagging). A config with no such task leaves the head unused.
fn continue_transformers_head(
    cfg: &TrainConfig,
    dir: &std::path::Path,
    config: &prism_model::ModelConfig,
    source: &mut prism_model::nn::Source,
) -> prism_model::Result<()> {
    use prism_model::tasks::transformers;
    let Some(adopted) = transformers::adopt(dir, config, source)? else {
        return Ok(());
    };
    let Some(task) = cfg
        .tasks
        .iter()
        .find(|t| transformers::same_head(adopted.kind, t.kind))
    else {
        return Ok(());
    };
    let labels = match &task.labels {
        Some(l) => l.clone(),
        None => prepare::label_order(task.kind, adopted.labels.iter().cloned()),
    };
    transformers::retarget(source, &adopted, &task.name, &labels)
}

/// Save the final model (the best dev checkpoint when early stopping selects one, else the
/// last), evaluate it on every dev, test and extra test set, and write the reports.
fn finish(
    cfg: &TrainConfig,
    model: MultiTaskModel,
    data: &[TaskData],
    state: &FineTuneState,
    progress: &Progress,
    device: &Device,
) -> Result<Report> {
    let out = &cfg.output;
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
    let bs = cfg.eval_batch_size;
    let mut tasks = BTreeMap::new();
    for (ti, d) in data.iter().enumerate() {
        let t = &final_model.tasks[ti];
        let dev = match &d.dev_path {
            Some(_) => Some(eval_model.evaluate_features(ti, &d.dev, &d.dev_feats, bs)?),
            None => None,
        };
        let test = match &d.test_path {
            Some(_) => Some(eval_model.evaluate_features(ti, &d.test, &d.test_feats, bs)?),
            None => None,
        };
        let mut extra_test = BTreeMap::new();
        for (name, _, ex, feats) in &d.extra_test {
            extra_test.insert(
                name.clone(),
                eval_model.evaluate_features(ti, ex, feats, bs)?,
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
        steps: progress.step,
        completed: true,
        stopped_early: state.stopped_early,
        best: state.best,
        best_metric,
        final_is_best,
        train_seconds: progress.elapsed_s,
        tasks,
        model_dir,
    };
    write_json(&out.join("report.json"), &report)?;
    crate::report::write_html(out, &report, &out.join("metrics.jsonl"))?;
    Ok(report)
}

/// What every rank must have read the same: each task's training, target-domain and dev
/// features (token ids, targets), as the model's tokenizer made them.
fn data_fingerprint(data: &[TaskData]) -> String {
    use std::fmt::Write;
    let mut f = dist::Fingerprint::new();
    for d in data {
        for feats in [&d.train_feats, &d.dann_feats, &d.dev_feats] {
            let _ = write!(f, "{feats:?}");
        }
    }
    f.finish()
}

/// The flat parameter vector of a model (for comparing runs).
pub fn flat_params(model: &MultiTaskModel) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    for (_, v) in model.base.params.vars() {
        out.extend(v.as_tensor().flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}
