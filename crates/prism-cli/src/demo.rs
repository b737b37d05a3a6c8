//! `prism demo`: the main job end to end — fine-tune MiniLM on three real data sets at once,
//! evaluate, and explain held-out reviews with five methods and their faithfulness.

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use prism_train::config::TrainConfig;
use prism_train::data::registry;
use std::path::PathBuf;

/// The demo's config, embedded so `prism demo` works from any directory.
pub const DEMO_TOML: &str = include_str!("../../../examples/demo.toml");

#[derive(Args)]
pub struct DemoArgs {
    /// Output folder (default: runs/demo).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Override the number of updates (the default run takes about ten minutes on 2 cores).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub restart: bool,
    #[arg(long)]
    pub quiet: bool,
}

pub fn run(a: DemoArgs, dev: &Device) -> Result<()> {
    demo(a.out, a.steps, a.restart, !a.quiet, dev)
}

fn demo(
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
    crate::train::run_training(&cfg, restart, progress, false, dev)?;
    // Explain: the trained model's sentiment head on the first held-out reviews, five methods
    // side by side with their faithfulness against a random baseline, as one HTML page.
    let html = cfg.output.join("explanations.html");
    eprintln!("\nprism demo: explaining 6 held-out movie reviews (ig, grad_x_input, rollout, occlusion, lime) with faithfulness");
    crate::explain::explain(
        &crate::explain::ExplainArgs {
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
            output: "prob".into(),
            foil: None,
            layer: None,
            layer_maps: true,
            stride: None,
            steps: 50,
            rule: "gausslegendre".into(),
            baseline: "pad".into(),
            html: Some(html),
            svg: None,
            json: false,
            words: true,
            faithfulness: true,
            seed: 0,
            bf16: false,
            quiet: !progress,
        },
        dev,
    )
}
