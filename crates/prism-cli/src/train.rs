//! `prism train`, `prism experiment` (single-task vs multi-task) and `prism sweep`.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use prism_train::config::TrainConfig;
use prism_train::dist::Comm;
use prism_train::trainer::{self, fmt_metrics, Report, RunOptions};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct TrainArgs {
    /// The training config (see examples/*.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Discard any checkpoint in the output folder and start over.
    #[arg(long)]
    pub restart: bool,
    /// Mixed precision (as `precision = "bf16"` in the config): linear layers in bf16 on AMX
    /// or AVX512-BF16, f32 master weights.
    #[arg(long)]
    pub bf16: bool,
    /// Activation checkpointing (as `gradient_checkpointing = true` in the config): each
    /// encoder layer recomputed in the backward pass, for less memory.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ExperimentArgs {
    /// A training config listing the tasks (e.g. examples/mtl_vs_single.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Seeds, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub seeds: Vec<u64>,
    #[arg(long)]
    pub quiet: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SweepArgs {
    /// Training configs (repeat --config).
    #[arg(long, required = true)]
    pub config: Vec<PathBuf>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub seeds: Vec<u64>,
    /// Only these metrics (comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub metric: Vec<String>,
    /// Also write the table here (Markdown).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub quiet: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: TrainArgs, dev: &Device, comm: &Comm) -> Result<()> {
    let mut cfg = TrainConfig::from_file(&a.config)?;
    if a.bf16 {
        cfg.precision = prism_train::optim::Precision::Bf16;
    }
    cfg.gradient_checkpointing |= a.gradient_checkpointing;
    let opts = RunOptions {
        restart: a.restart,
        stop_after: None,
        progress: !a.quiet,
        comm: comm.clone(),
    };
    report_training(&cfg, &opts, a.json, dev)
}

pub fn run_experiment(a: ExperimentArgs, dev: &Device) -> Result<()> {
    experiment(&a.config, &a.seeds, !a.quiet, a.json, dev)
}

pub fn run_sweep(a: SweepArgs, dev: &Device) -> Result<()> {
    sweep(
        &a.config,
        &a.seeds,
        &a.metric,
        a.out.as_deref(),
        !a.quiet,
        a.json,
        dev,
    )
}

fn print_report(r: &Report, out: &Path) {
    println!(
        "\n{} updates in {:.0} s{}",
        r.steps,
        r.train_seconds,
        if r.stopped_early {
            " (stopped early)"
        } else {
            ""
        }
    );
    println!(
        "{:<12} {:<20} {:>7} {:>5}  metrics",
        "task", "kind", "train", "split"
    );
    for (name, t) in &r.tasks {
        for (split, res) in [("dev", &t.dev), ("test", &t.test)] {
            if let Some(res) = res {
                println!(
                    "{:<12} {:<20} {:>7} {:>5}  {}",
                    name,
                    format!("{:?}", t.kind),
                    t.train_examples,
                    split,
                    fmt_metrics(&res.metrics)
                );
            }
        }
    }
    println!("\nmodel:   {}", r.model_dir.display());
    println!("report:  {}", out.join("report.html").display());
    println!("metrics: {}", out.join("metrics.jsonl").display());
}

pub(crate) fn run_training(
    cfg: &TrainConfig,
    restart: bool,
    progress: bool,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    let opts = RunOptions {
        restart,
        stop_after: None,
        progress,
        ..Default::default()
    };
    report_training(cfg, &opts, json_out, dev)
}

/// Train, then print the report (on rank 0 of a data-parallel job).
fn report_training(
    cfg: &TrainConfig,
    opts: &RunOptions,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    let report = trainer::train(cfg, dev, opts)?;
    if !opts.comm.is_root() {
        return Ok(());
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &cfg.output);
    }
    Ok(())
}

fn experiment(
    config: &Path,
    seeds: &[u64],
    progress: bool,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    if seeds.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    let cfg = TrainConfig::from_file(config)?;
    let rows = prism_train::experiment::mtl_vs_single(&cfg, seeds, dev, progress)?;
    let table = prism_train::experiment::format_table(&rows, &cfg, seeds);
    let out = cfg.output.join("mtl_vs_single.txt");
    std::fs::create_dir_all(&cfg.output).with_context(|| cfg.output.display().to_string())?;
    std::fs::write(&out, &table).with_context(|| out.display().to_string())?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{table}");
        println!("(also written to {})", out.display());
    }
    Ok(())
}

fn sweep(
    configs: &[PathBuf],
    seeds: &[u64],
    metrics: &[String],
    out: Option<&Path>,
    progress: bool,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    if seeds.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    let cfgs = configs
        .iter()
        .map(|p| {
            Ok((
                p.file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default(),
                TrainConfig::from_file(p)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    // The table's folder exists before hours of training, not after.
    if let Some(dir) = out
        .and_then(Path::parent)
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let rows = prism_train::experiment::sweep(&cfgs, seeds, dev, progress, metrics)?;
    let table = prism_train::experiment::format_sweep(&rows, seeds);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{table}");
    }
    if let Some(p) = out {
        std::fs::write(p, &table).with_context(|| p.display().to_string())?;
    }
    Ok(())
}
