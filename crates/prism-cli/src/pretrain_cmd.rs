//! `prism tokenizer train`, `prism pretrain` and `prism fill-mask`.

use anyhow::{Context, Result};
use candle_core::Device;
use prism_model::fetch;
use prism_model::heads::MaskedLm;
use prism_train::pretrain::{
    pretrain as run_pretrain, resolve_corpus, save_trained_tokenizer, train_tokenizer, Objective,
    PretrainConfig, PretrainOptions, TokenizerKind, TokenizerTrainConfig,
};
use std::path::{Path, PathBuf};

pub struct TokenizerTrainArgs {
    pub kind: TokenizerKind,
    pub vocab_size: usize,
    pub min_frequency: u64,
    pub cased: bool,
    pub max_length: usize,
    pub out: PathBuf,
    pub files: Vec<String>,
}

pub fn tokenizer_train(a: &TokenizerTrainArgs) -> Result<()> {
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

pub fn pretrain(
    config: &Path,
    objective: Option<Objective>,
    restart: bool,
    progress: bool,
    json: bool,
    dev: &Device,
) -> Result<()> {
    let mut cfg = PretrainConfig::from_file(config)?;
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
        },
    )
    .with_context(|| format!("pre-training with {}", config.display()))?;
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
    println!("model: {}", r.model_dir.display());
    println!("report: {}", cfg.output.join("report.html").display());
    Ok(())
}

pub fn fill_mask(
    model: &str,
    texts: &[String],
    top_k: usize,
    json: bool,
    dev: &Device,
) -> Result<()> {
    let dir = fetch::resolve_model(model)?;
    let m = MaskedLm::load(&dir, dev)?;
    let mut all = Vec::new();
    for text in texts {
        let res = m.fill_mask(text, top_k)?;
        if !json {
            println!("{text}");
            for (i, cands) in res.iter().enumerate() {
                if res.len() > 1 {
                    println!("  mask {}", i + 1);
                }
                for c in cands {
                    println!("  {:>7.4}  {:<16} {}", c.score, c.token, c.sequence);
                }
            }
        }
        all.push(serde_json::json!({"text": text, "masks": res}));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}
