//! `prism tokenizer train` and `prism pretrain`.

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, Subcommand};
use prism_train::dist::Comm;
use prism_train::pretrain::{
    pretrain as run_pretrain, resolve_corpus, save_trained_tokenizer, train_tokenizer, Objective,
    PretrainConfig, PretrainOptions, TokenizerKind, TokenizerTrainConfig,
};
use std::path::{Path, PathBuf};

/// `prism tokenizer ...`.
#[derive(Args)]
pub struct TokenizerArgs {
    #[command(subcommand)]
    pub what: TokenizerWhat,
}

#[derive(Subcommand)]
pub enum TokenizerWhat {
    /// Train on text files or folders (or `brown/train` after `prism fetch data brown`).
    Train(TokenizerTrainArgs),
}

#[derive(Args)]
pub struct TokenizerTrainArgs {
    /// wordpiece (BERT), bpe (RoBERTa byte-level) or unigram (SentencePiece-style).
    #[arg(long)]
    pub kind: TokenizerKind,
    #[arg(long, default_value_t = 8000)]
    pub vocab_size: usize,
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Keep case (wordpiece/unigram lower-case by default).
    #[arg(long)]
    pub cased: bool,
    /// model_max_length written to tokenizer_config.json.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Text files or folders.
    #[arg(required = true)]
    pub files: Vec<String>,
}

pub fn tokenizer(a: TokenizerArgs) -> Result<()> {
    match a.what {
        TokenizerWhat::Train(t) => tokenizer_train(&t),
    }
}

#[derive(Args)]
pub struct PretrainArgs {
    /// The pre-training config (see examples/pretrain/*.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// mlm (BERT, RoBERTa), plm (permutation LM, XLNet) or rtd (replaced-token detection,
    /// ELECTRA); overrides the config's.
    #[arg(long)]
    pub objective: Option<Objective>,
    /// Discard any checkpoint in the output folder and start over.
    #[arg(long)]
    pub restart: bool,
    /// Mixed precision (as `precision = "bf16"` in the config).
    #[arg(long)]
    pub bf16: bool,
    /// Activation checkpointing (as `gradient_checkpointing = true` in the config).
    #[arg(long)]
    pub gradient_checkpointing: bool,
    #[arg(long)]
    pub quiet: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PretrainArgs, dev: &Device, comm: &Comm) -> Result<()> {
    pretrain(
        &a.config,
        a.objective,
        (a.bf16, a.gradient_checkpointing),
        a.restart,
        !a.quiet,
        a.json,
        dev,
        comm,
    )
}

fn tokenizer_train(a: &TokenizerTrainArgs) -> Result<()> {
    let files = resolve_corpus(&a.files)?;
    let t0 = std::time::Instant::now();
    let tk = train_tokenizer(
        &TokenizerTrainConfig {
            kind: a.kind,
            vocab_size: a.vocab_size,
            min_frequency: a.min_frequency,
            lowercase: !a.cased,
            xlnet: false,
        },
        &files,
    )?;
    save_trained_tokenizer(&tk, a.kind, !a.cased, a.max_length, &a.out)?;
    println!(
        "trained a {:?} tokenizer of {} tokens on {} files in {:.1} s -> {}",
        a.kind,
        tk.get_vocab_size(true),
        files.len(),
        t0.elapsed().as_secs_f64(),
        a.out.join("tokenizer.json").display()
    );
    Ok(())
}

fn pretrain(
    config: &Path,
    objective: Option<Objective>,
    (bf16, checkpointing): (bool, bool),
    restart: bool,
    progress: bool,
    json: bool,
    dev: &Device,
    comm: &Comm,
) -> Result<()> {
    let mut cfg = PretrainConfig::from_file(config)?;
    if bf16 {
        cfg.precision = prism_train::optim::Precision::Bf16;
    }
    cfg.gradient_checkpointing |= checkpointing;
    if let Some(o) = objective {
        cfg.objective = o;
        cfg.validate()
            .with_context(|| format!("{} with --objective", config.display()))?;
    }
    let r = run_pretrain(
        &cfg,
        dev,
        &PretrainOptions {
            restart,
            stop_after: None,
            progress,
            comm: comm.clone(),
        },
    )
    .with_context(|| format!("pre-training with {}", config.display()))?;
    if !comm.is_root() {
        return Ok(());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{} updates, {} tokens in {:.0} s ({:.0} tokens/s)",
        r.steps,
        r.tokens_seen,
        r.train_seconds,
        r.tokens_seen as f64 / r.train_seconds.max(1e-9)
    );
    if let Some(d) = &r.dev {
        println!(
            "held-out: loss {:.4}  perplexity {:.2}  masked-token accuracy {:.4}",
            d.loss, d.perplexity, d.accuracy
        );
    }
    if r.perplexity_curve.len() > 1 {
        let pts: Vec<String> = r
            .perplexity_curve
            .iter()
            .map(|(s, p)| format!("{s}:{p:.1}"))
            .collect();
        println!("perplexity curve (step:ppl): {}", pts.join(" "));
    }
    if !r.rtd_accuracy_curve.is_empty() {
        let pts: Vec<String> = r
            .rtd_accuracy_curve
            .iter()
            .map(|(s, a, b)| format!("{s}:{a:.4}/{b:.4}"))
            .collect();
        println!(
            "RTD accuracy curve (step:discriminator/all-original): {}",
            pts.join(" ")
        );
    }
    if !r.probe_curve.is_empty() {
        let pts: Vec<String> = r
            .probe_curve
            .iter()
            .map(|(s, a)| format!("{s}:{a:.3}"))
            .collect();
        println!("probe accuracy curve (step:accuracy): {}", pts.join(" "));
    }
    println!("model: {}", r.model_dir.display());
    println!("report: {}", cfg.output.join("report.html").display());
    Ok(())
}
