//! `prism eval` (a task head's metrics on a labelled file) and `prism predict` (every task
//! head on a text).

use crate::common::{frozen, load_tasks};
use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use prism_train::data;
use prism_train::tasks::Evaluate;
use prism_train::trainer::fmt_metrics;
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct EvalArgs {
    /// A folder written by `prism train` (with prism.json).
    #[arg(long)]
    pub model: String,
    /// Task to evaluate (needed when the model has several).
    #[arg(long)]
    pub task: Option<String>,
    /// Labelled data file.
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Run the linear layers in bf16 on AMX or AVX512-BF16 (f32 accumulation), to measure
    /// what bf16 inference changes (f32 on CPUs with neither AMX-BF16 nor AVX512-BF16).
    #[arg(long)]
    pub bf16: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PredictArgs {
    /// A folder written by `prism train` (with prism.json).
    #[arg(long)]
    pub model: String,
    /// The text (NLI premise, QA question; words split on spaces for tagging).
    pub text: String,
    /// Second text for pair tasks (NLI hypothesis, QA context). With `--task`, or on a one-task
    /// model, also the second text of a classification, multi-label or regression task (a
    /// transformers classifier fine-tuned on pairs, e.g. MNLI).
    #[arg(long)]
    pub text2: Option<String>,
    /// Only this task.
    #[arg(long)]
    pub task: Option<String>,
    /// Linear layers in bf16 on AMX or AVX512-BF16 (as `prism eval --bf16`).
    #[arg(long)]
    pub bf16: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run_eval(a: EvalArgs, dev: &Device) -> Result<()> {
    eval(
        &a.model,
        a.task.as_deref(),
        &a.data,
        a.batch_size,
        a.bf16,
        a.json,
        dev,
    )
}

pub fn run_predict(a: PredictArgs, dev: &Device) -> Result<()> {
    predict(
        &a.model,
        &a.text,
        a.text2.as_deref(),
        a.task.as_deref(),
        a.bf16,
        a.json,
        dev,
    )
}

fn eval(
    model: &str,
    task: Option<&str>,
    data_file: &Path,
    batch_size: usize,
    bf16: bool,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    // Frozen (no graph, weights transposed once), in bf16 on AMX with `--bf16`.
    let m = frozen(&load_tasks(model, dev)?.0, bf16)?;
    let ti = match task {
        Some(t) => m.task_index(t)?,
        None if m.tasks.len() == 1 => 0,
        None => bail!(
            "this model has {} tasks; choose one with --task ({})",
            m.tasks.len(),
            m.tasks
                .iter()
                .map(|t| t.spec.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let spec = &m.tasks[ti].spec;
    let examples = data::read_file(
        data_file,
        &Default::default(),
        spec.kind.target_kind(),
        spec.kind.is_pair(),
    )?;
    let r = m.evaluate(ti, &examples, data_file, batch_size)?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"task": spec.name, "data": data_file, "result": r})
            )?
        );
    } else {
        println!(
            "{} on {} ({} examples): {}",
            spec.name,
            data_file.display(),
            r.examples,
            fmt_metrics(&r.metrics)
        );
    }
    Ok(())
}

fn predict(
    model: &str,
    text: &str,
    text2: Option<&str>,
    task: Option<&str>,
    bf16: bool,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    // Frozen (no graph, weights transposed once), in bf16 on AMX with `--bf16`.
    let m = frozen(&load_tasks(model, dev)?.0, bf16)?;
    let mut results = Vec::new();
    for (ti, t) in m.tasks.iter().enumerate() {
        if task.is_some_and(|n| n != t.spec.name) {
            continue;
        }
        if t.spec.kind.is_pair() && text2.is_none() {
            results.push(json!({"task": t.spec.name, "skipped": format!("{:?} needs a second text (--text2)", t.spec.kind)}));
            continue;
        }
        let p = m.predict_text(ti, text, m.second_text(ti, text2, task.is_some()))?;
        results.push(json!({"task": t.spec.name, "kind": t.spec.kind, "prediction": p}));
    }
    if task.is_some() && results.is_empty() {
        m.task_index(task.unwrap_or_default())?;
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            println!(
                "{}: {}",
                r["task"].as_str().unwrap_or("?"),
                if r["skipped"].is_null() {
                    r["prediction"].to_string()
                } else {
                    r["skipped"].to_string()
                }
            );
        }
    }
    Ok(())
}
