//! `prism explain`: attributions for one text or a JSONL file, as a table, JSON or an HTML report,
//! optionally with the faithfulness table.

use crate::common::{frozen, load_tasks};
use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::Args;
use prism_explain::faithfulness::{self, Faithfulness};
use prism_explain::gradient::{IntegratedGradients, Rule};
use prism_explain::layer::LayerMaps;
use prism_explain::render::{html_report, ExampleView};
use prism_explain::{
    aggregate_words, attention, method_with, Attributions, ExplainModel, Method, MethodOptions,
};
use prism_train::data;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct ExplainArgs {
    /// A folder written by `prism train` (with prism.json).
    #[arg(long)]
    pub model: String,
    /// The task head to explain (needed when the model has several).
    #[arg(long)]
    pub task: Option<String>,
    /// Methods, comma-separated (the list comes from prism-explain's registry).
    #[arg(
        long = "method",
        help = methods_help(),
        value_name = "METHOD",
        value_delimiter = ',',
        default_value = "ig,saliency,rollout"
    )]
    pub methods: Vec<String>,
    /// The text to explain (or use --input).
    pub text: Option<String>,
    /// Second text for pair tasks.
    #[arg(long)]
    pub text2: Option<String>,
    /// A JSONL/CSV data file; its first --limit examples are explained.
    #[arg(long)]
    pub input: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// What to explain: a class name (default: the predicted one), `value`, `start:N`,
    /// `end:N`, or `N:TAG`.
    #[arg(long)]
    pub target: Option<String>,
    /// What of a class or tag score is explained: prob (softmax; a label's sigmoid for
    /// multi-label), logit, or log_prob. Regression values and QA logits are explained raw.
    #[arg(long, default_value = "prob")]
    pub output: String,
    /// Contrastive explanation: F = output(target) − output(foil), for another class (or, for
    /// a tag target, another tag at the same token).
    #[arg(long)]
    pub foil: Option<String>,
    /// The encoder layer (0-based, as Captum's `encoder.layer[N]`) that the layer methods
    /// (layer_ig, layer_grad_x_act, layer_conductance) attribute at; default: the last.
    #[arg(long)]
    pub layer: Option<usize>,
    /// Also compute layer conductance for every layer (a layer × token map) and attention-head
    /// importance (a layer × head map): in the JSON (`layer_maps`) and the HTML report.
    #[arg(long)]
    pub layer_maps: bool,
    /// A text longer than the task's max_length is explained in overlapping windows that
    /// share this many tokens (default: half a window), its scores stitched over the whole
    /// text (each token's mean over the windows that contain it).
    #[arg(long)]
    pub stride: Option<usize>,
    /// Integrated-gradients steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Integrated-gradients rule: gausslegendre, riemann_left/right/middle/trapezoid.
    #[arg(long, default_value = "gausslegendre")]
    pub rule: String,
    /// Integrated-gradients baseline: `pad` (every text token replaced by the pad token,
    /// special tokens kept), `mask` (by the mask token) or `zero` (the zero embedding). A pad
    /// row of zeros makes `pad` and `zero` the same path; on an encoder whose embedding
    /// LayerNorm sees the word embedding alone (DeBERTa-v3: no absolute positions or token
    /// types) that path is flat but for its start, so use `mask` there.
    #[arg(long, default_value = "pad")]
    pub baseline: String,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Write one SVG heatmap per example and method into this folder.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Aggregate sub-word scores to words.
    #[arg(long)]
    pub words: bool,
    /// Score each method's faithfulness (comprehensiveness, sufficiency, deletion and
    /// insertion AUC) against a random baseline.
    #[arg(long)]
    pub faithfulness: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run the linear layers in bf16 on AMX or AVX512-BF16, forward and input gradients
    /// (f32 accumulation; f32 on CPUs with neither AMX-BF16 nor AVX512-BF16): IG ~1.5x faster, attributions
    /// within bf16 rounding of f32 (README "Performance").
    #[arg(long)]
    pub bf16: bool,
    #[arg(long)]
    pub quiet: bool,
}

/// `--method`'s help: every registered method, as the registry lists them.
fn methods_help() -> String {
    format!(
        "Methods, comma-separated: {}",
        prism_explain::METHODS.join(", ")
    )
}

fn build_method(name: &str, a: &ExplainArgs) -> Result<Box<dyn Method>> {
    let opts = MethodOptions {
        seed: a.seed,
        steps: a.steps,
        rule: Rule::parse(&a.rule)?,
        layer: a.layer,
        baseline: prism_explain::gradient::Baseline::parse(&a.baseline)?,
    };
    Ok(method_with(name, &opts)?)
}

pub fn explain(a: &ExplainArgs, dev: &Device) -> Result<()> {
    // Explanations need input gradients only: a frozen copy skips every weight gradient.
    let (loaded, dir) = load_tasks(&a.model, dev)?;
    let mt = frozen(&loaded, a.bf16)?;
    drop(loaded);
    let mut m = ExplainModel::new(&mt, a.task.as_deref())?
        .with_output(prism_explain::Output::parse(&a.output)?);
    let methods: Vec<Box<dyn Method>> = a
        .methods
        .iter()
        .map(|n| build_method(n.trim(), a))
        .collect::<Result<_>>()?;
    // Inputs: the text, or the first `limit` examples of a JSONL/CSV file.
    let mut inputs: Vec<(String, Option<String>)> = Vec::new();
    match (&a.text, &a.input) {
        (Some(t), None) => inputs.push((t.clone(), a.text2.clone())),
        (None, Some(p)) => {
            let spec = &mt.tasks[m.task].spec;
            // The task's own target kind: a regression file is read as values, a classification
            // file as labels (unlabelled lines are fine), and a malformed line is its own error.
            let kind = spec.kind.target_kind();
            let ex = data::read_file(p, &Default::default(), kind, spec.kind.is_pair())?;
            for e in ex.into_iter().take(a.limit) {
                inputs.push((e.text, e.text_b));
            }
        }
        _ => bail!("give a TEXT or --input FILE (not both)"),
    }
    let bar = if !a.quiet && !a.json {
        let b = indicatif::ProgressBar::new((inputs.len() * methods.len()) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {pos}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Some(b)
    } else {
        None
    };
    let mut views = Vec::new();
    let mut all: Vec<Vec<Attributions>> = Vec::new();
    let mut faith: Vec<(String, Vec<Faithfulness>)> = methods
        .iter()
        .map(|mm| (mm.name().to_string(), Vec::new()))
        .collect();
    if a.faithfulness {
        faith.push(("random".into(), Vec::new()));
    }
    let mut seconds: Vec<f64> = vec![0.0; methods.len()];
    let mut layer_maps: Vec<LayerMaps> = Vec::new();
    for (ei, (text, text2)) in inputs.iter().enumerate() {
        // A text longer than the task's max_length: overlapping windows, stitched.
        let w = m
            .encode_windows(text, text2.as_deref(), a.stride)
            .with_context(|| format!("example {}", ei + 1))?;
        let x = w.windows[0].clone();
        if x.enc.truncated {
            eprintln!(
                "warning: example {} is longer than the task's {} tokens and is not windowed \
                 (a tag or QA target, or a second text that leaves too little room); only the \
                 first {} tokens are explained",
                ei + 1,
                m.tokenizer()?.max_len(),
                x.enc.ids.len()
            );
        }
        let target = match &a.target {
            None if w.len() > 1 => m.default_target_windows(&w)?,
            None => m.default_target(&x)?,
            Some(t) => m.parse_target(t)?,
        };
        if w.len() > 1 && a.faithfulness {
            eprintln!(
                "note: example {} is read in {} windows; its faithfulness is scored on the \
                 first window (with that window's scores)",
                ei + 1,
                w.len()
            );
        }
        m.foil = a
            .foil
            .as_deref()
            .map(|f| m.parse_foil(f, &target))
            .transpose()?;
        let mut attrs = Vec::new();
        for (mi, method) in methods.iter().enumerate() {
            if let Some(b) = &bar {
                b.set_message(format!("example {} {}", ei + 1, method.name()));
            }
            let t0 = Instant::now();
            let at = m
                .attribute_windows(method.as_ref(), &w, &target)
                .with_context(|| format!("{} on example {}", method.name(), ei + 1))?;
            seconds[mi] += t0.elapsed().as_secs_f64();
            if a.faithfulness {
                let first = if w.len() > 1 {
                    method.attribute(&m, &x, &target)?
                } else {
                    at.clone()
                };
                faith[mi]
                    .1
                    .push(faithfulness::evaluate(&m, &x, &target, &first, 32)?);
            }
            attrs.push(at);
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        if a.faithfulness {
            let r = faithfulness::random_attributions(&m, &x, &target, a.seed + ei as u64);
            let last = faith.len() - 1;
            faith[last]
                .1
                .push(faithfulness::evaluate(&m, &x, &target, &r, 32)?);
        }
        let texts: Vec<&str> = x.texts.iter().map(|s| s.as_str()).collect();
        let shown: Vec<Attributions> = if a.words {
            attrs.iter().map(|at| aggregate_words(at, &texts)).collect()
        } else {
            attrs.clone()
        };
        let prediction = format!(
            "{} (F = {:.4})",
            m.describe(&target),
            attrs.first().map_or(f32::NAN, |at| at.output)
        );
        let att = if a.html.is_some() {
            Some(attention::attention_maps(&m, &x)?)
        } else {
            None
        };
        let layers = if a.layer_maps {
            let ig = IntegratedGradients {
                steps: a.steps,
                rule: Rule::parse(&a.rule)?,
                baseline: prism_explain::gradient::Baseline::parse(&a.baseline)?,
                ..Default::default()
            };
            let maps = LayerMaps::compute(&m, &x, &target, &ig)
                .with_context(|| format!("layer maps of example {}", ei + 1))?;
            layer_maps.push(maps.clone());
            Some(maps)
        } else {
            None
        };
        views.push(ExampleView {
            text: text.clone(),
            text2: text2.clone(),
            prediction,
            attributions: shown.clone(),
            attention: att,
            layers,
        });
        all.push(shown);
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let table: Vec<(String, Faithfulness)> = faith
        .iter()
        .map(|(n, rows)| (n.clone(), faithfulness::mean(rows)))
        .collect();
    if let Some(p) = &a.html {
        let html = html_report(
            &format!("prism explain: {}", dir.display()),
            &views,
            if a.faithfulness { Some(&table) } else { None },
        );
        std::fs::write(p, html).with_context(|| p.display().to_string())?;
        eprintln!("wrote {}", p.display());
    }
    if let Some(dir) = &a.svg {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        for (i, attrs) in all.iter().enumerate() {
            for at in attrs {
                let p = dir.join(format!("{:03}-{}.svg", i + 1, at.method));
                std::fs::write(&p, prism_explain::render::heatmap_svg(at))
                    .with_context(|| p.display().to_string())?;
            }
        }
        eprintln!(
            "wrote {} SVG files to {}",
            all.iter().map(|v| v.len()).sum::<usize>(),
            dir.display()
        );
    }
    if a.json {
        let mut v = serde_json::json!({"examples": all, "faithfulness": if a.faithfulness { serde_json::to_value(&table)? } else { serde_json::Value::Null }});
        if a.layer_maps {
            v["layer_maps"] = serde_json::to_value(&layer_maps)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for (view, attrs) in views.iter().zip(&all) {
        println!(
            "{}{}",
            view.text,
            view.text2
                .as_ref()
                .map(|t| format!(" || {t}"))
                .unwrap_or_default()
        );
        println!("  prediction: {}", view.prediction);
        for at in attrs {
            let cells: Vec<String> = at
                .tokens
                .iter()
                .zip(&at.scores)
                .map(|(t, s)| format!("{t}:{s:+.3}"))
                .collect();
            let delta = at
                .delta
                .map(|d| format!(" [delta {d:+.1e}]"))
                .unwrap_or_default();
            println!("  {:<13}{} {}", at.method, delta, cells.join(" "));
        }
    }
    println!(
        "\nseconds per example: {}",
        methods
            .iter()
            .zip(&seconds)
            .map(|(mm, s)| format!("{} {:.3}", mm.name(), s / inputs.len().max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if a.faithfulness {
        println!("\nfaithfulness over {} examples (comprehensiveness and insertion AUC: higher is better; sufficiency and deletion AUC: lower is better)", inputs.len());
        println!(
            "{:<14} {:>17} {:>11} {:>12} {:>13}",
            "method", "comprehensiveness", "sufficiency", "deletion_auc", "insertion_auc"
        );
        for (n, f) in &table {
            println!(
                "{:<14} {:>17.4} {:>11.4} {:>12.4} {:>13.4}",
                n, f.comprehensiveness, f.sufficiency, f.deletion_auc, f.insertion_auc
            );
        }
    }
    Ok(())
}
