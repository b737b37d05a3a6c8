//! `prism fetch data`, `prism train`, `prism eval`, `prism predict` and `prism demo`.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use prism_train::config::TrainConfig;
use prism_train::data::{self, registry};
use prism_model::tasks::MultiTaskModel;
use prism_train::tasks::Evaluate;
use prism_train::trainer::{self, fmt_metrics, Report, RunOptions};
use serde_json::json;
use std::path::{Path, PathBuf};

/// The demo's config, embedded so `prism demo` works from any directory.
pub const DEMO_TOML: &str = include_str!("../../../examples/demo.toml");

pub fn fetch_data(name: Option<String>, force: bool, list: bool) -> Result<()> {
    if list {
        for d in registry::DATASETS {
            println!(
                "{:<7} {}\n        source: {}",
                d.name, d.description, d.source
            );
        }
        return Ok(());
    }
    let name = name.unwrap_or_default();
    let written = registry::fetch_dataset(&name, force)?;
    println!("{} -> {}", name, registry::data_dir(&name).display());
    for w in written {
        println!(
            "  {:>7} rows  {}",
            w.rows,
            w.path
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default()
        );
    }
    Ok(())
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

pub fn train(
    config: &Path,
    restart: bool,
    progress: bool,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    let cfg = TrainConfig::from_file(config)?;
    run_training(&cfg, restart, progress, json_out, dev)
}

fn run_training(
    cfg: &TrainConfig,
    restart: bool,
    progress: bool,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    let report = trainer::train(
        cfg,
        dev,
        &RunOptions {
            restart,
            stop_after: None,
            progress,
        },
    )?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &cfg.output);
    }
    Ok(())
}

pub fn demo(
    out: Option<PathBuf>,
    steps: Option<usize>,
    restart: bool,
    progress: bool,
    dev: &Device,
) -> Result<()> {
    let mut cfg: TrainConfig = toml::from_str(DEMO_TOML).context("the embedded demo config")?;
    if let Some(o) = out {
        cfg.output = o;
    }
    if let Some(s) = steps {
        cfg.steps = s;
        cfg.eval_every = cfg.eval_every.min(s);
    }
    cfg.validate()?;
    eprintln!("prism demo: fine-tuning MiniLM on sentiment (vader movie reviews), topic (BBC News) and NLI (presuppositions) at once");
    eprintln!(
        "            {} updates of {} examples; output in {}",
        cfg.steps,
        cfg.batch_size,
        cfg.output.display()
    );
    run_training(&cfg, restart, progress, false, dev)?;
    // Explain: the trained model's sentiment head on the first held-out reviews, five methods
    // side by side with their faithfulness against a random baseline, as one HTML page.
    let html = cfg.output.join("explanations.html");
    eprintln!("\nprism demo: explaining 6 held-out movie reviews (ig, grad_x_input, rollout, occlusion, lime) with faithfulness");
    crate::explain_cmd::explain(
        &crate::explain_cmd::ExplainArgs {
            model: cfg.output.join("model").display().to_string(),
            task: Some("sentiment".into()),
            methods: ["ig", "grad_x_input", "rollout", "occlusion", "lime"]
                .map(String::from)
                .to_vec(),
            text: None,
            text2: None,
            input: Some(registry::data_dir("vader").join("movie_binary.dev.jsonl")),
            limit: 6,
            target: None,
            steps: 50,
            rule: "gausslegendre".into(),
            html: Some(html),
            svg: None,
            json: false,
            words: true,
            faithfulness: true,
            seed: 0,
            bf16: false,
            progress,
        },
        dev,
    )
}

fn load(model: &str, dev: &Device) -> Result<MultiTaskModel> {
    let dir = prism_model::fetch::resolve_model(model)?;
    let m = MultiTaskModel::load(&dir, dev)?;
    if m.tasks.is_empty() {
        bail!(
            "{}: no prism.json with task heads (train one with `prism train`)",
            dir.display()
        );
    }
    Ok(m)
}

/// `m` frozen with its linear layers in bf16 on AMX (`--bf16`), with a note where this CPU has
/// no AMX-BF16 and the layers stay f32.
pub fn bf16_or_note(m: &MultiTaskModel) -> Result<MultiTaskModel> {
    if !prism_model::ops::amx::available() {
        eprintln!("note: no AMX-BF16 on this CPU; running in f32");
    }
    Ok(m.frozen_bf16()?)
}

pub fn eval(
    model: &str,
    task: Option<&str>,
    data_file: &Path,
    batch_size: usize,
    bf16: bool,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    // Frozen (no graph, weights transposed once), in bf16 on AMX with `--bf16`.
    let m = load(model, dev)?;
    let m = if bf16 { bf16_or_note(&m)? } else { m.frozen()? };
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

pub fn predict(
    model: &str,
    text: &str,
    text2: Option<&str>,
    task: Option<&str>,
    bf16: bool,
    json_out: bool,
    dev: &Device,
) -> Result<()> {
    // Frozen (no graph, weights transposed once), in bf16 on AMX with `--bf16`.
    let m = load(model, dev)?;
    let m = if bf16 { bf16_or_note(&m)? } else { m.frozen()? };
    let mut results = Vec::new();
    for (ti, t) in m.tasks.iter().enumerate() {
        if task.is_some_and(|n| n != t.spec.name) {
            continue;
        }
        if t.spec.kind.is_pair() && text2.is_none() {
            results.push(json!({"task": t.spec.name, "skipped": format!("{:?} needs a second text (--text2)", t.spec.kind)}));
            continue;
        }
        let p = m.predict_text(ti, text, text2)?;
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

pub fn experiment(
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

pub fn sweep(
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
    let rows = prism_train::experiment::sweep(&cfgs, seeds, dev, progress, metrics)?;
    let table = prism_train::experiment::format_sweep(&rows, seeds);
    if let Some(p) = out {
        std::fs::write(p, &table).with_context(|| p.display().to_string())?;
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{table}");
    }
    Ok(())
}
