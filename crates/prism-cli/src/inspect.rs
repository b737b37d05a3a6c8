//! The model-inspection commands: `prism info`, `tokenize`, `embed`, `convert`, `export` and
//! `fill-mask`.

use crate::common::{load, load_tasks};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use prism_model::fetch;
use prism_model::heads::MaskedLm;
use prism_model::{mean_pool, Encoder, Mode};
use serde_json::json;
use std::path::PathBuf;

#[derive(Args)]
pub struct ModelArgs {
    /// A Hugging Face model folder, or a registered model name such as `minilm`.
    pub model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text.
    pub text: String,
    /// The second text of a pair (NLI hypothesis, QA context).
    pub text2: Option<String>,
}

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Texts to embed.
    #[arg(required = true)]
    pub texts: Vec<String>,
    /// Scale each embedding to unit length (as sentence-transformers' all-MiniLM does).
    #[arg(long)]
    pub normalize: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

#[derive(Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Output folder.
    pub out: PathBuf,
}

#[derive(Args)]
pub struct FillMaskArgs {
    /// A model folder with an MLM head (written by `prism pretrain`, or any BertForMaskedLM).
    pub model: String,
    /// Texts with the tokenizer's mask token ([MASK] or <mask>).
    #[arg(required = true)]
    pub texts: Vec<String>,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn tokenize(a: TokenizeArgs, dev: &Device) -> Result<()> {
    let TokenizeArgs { model, text, text2 } = a;
    let m = load(&model.model, &dev)?;
    let e = m.tokenizer()?.encode(&text, text2.as_deref())?;
    if model.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        println!(
            "{:>4}  {:>7}  {:>5}  {:>11}  token",
            "i", "id", "type", "chars"
        );
        for i in 0..e.ids.len() {
            let (s, t) = e.offsets[i];
            println!(
                "{i:>4}  {:>7}  {:>5}  {:>11}  {}",
                e.ids[i],
                e.type_ids[i],
                format!("{s}..{t}"),
                e.tokens[i]
            );
        }
        if e.truncated {
            println!("(truncated to {} tokens)", m.tokenizer()?.max_len());
        }
    }
    Ok(())
}

pub fn convert(a: ConvertArgs, dev: &Device) -> Result<()> {
    let m = load(&a.model.model, dev)?;
    m.save(&a.out)?;
    println!("wrote {}", a.out.display());
    Ok(())
}

#[derive(Args)]
pub struct ExportArgs {
    /// A prism model folder (or a transformers task model).
    #[arg(long)]
    pub model: String,
    /// The task to write (needed when the model has several).
    #[arg(long)]
    pub task: Option<String>,
    /// Output folder.
    pub out: PathBuf,
}

pub fn export(a: ExportArgs, dev: &Device) -> Result<()> {
    let (m, _) = load_tasks(&a.model, dev)?;
    let ti = match &a.task {
        Some(t) => m.task_index(t)?,
        None if m.tasks.len() == 1 => 0,
        None => {
            let names: Vec<&str> = m.tasks.iter().map(|t| t.spec.name.as_str()).collect();
            bail!(
                "the model has {} tasks ({}): choose one with --task",
                names.len(),
                names.join(", ")
            )
        }
    };
    let e = m.export_transformers(ti, &a.out)?;
    println!(
        "wrote {} as {} ({} tensors)",
        a.out.display(),
        e.architecture,
        e.tensors.len()
    );
    if !e.dropped.is_empty() {
        println!(
            "left out (no place in {}): {}",
            e.architecture,
            e.dropped.join(", ")
        );
    }
    Ok(())
}

pub fn run_embed(a: EmbedArgs, dev: &Device) -> Result<()> {
    embed(&a.model, &a.texts, a.normalize, a.batch_size, dev)
}

pub fn run_fill_mask(a: FillMaskArgs, dev: &Device) -> Result<()> {
    fill_mask(&a.model, &a.texts, a.top_k, a.json, dev)
}

pub fn info(args: &ModelArgs, dev: &Device) -> Result<()> {
    let m = load(&args.model, dev)?;
    let c = m.config.sizes();
    let has_pooler = match &m.encoder {
        prism_model::AnyEncoder::Bert(b) => b.has_pooler(),
        prism_model::AnyEncoder::Xlnet(_)
        | prism_model::AnyEncoder::ModernBert(_)
        | prism_model::AnyEncoder::DebertaV2(_) => false,
    };
    // ELECTRA's embeddings can be narrower than the layers (projected up).
    let embedding_size = match &m.config {
        prism_model::ModelConfig::Bert(b) => b.embedding_width(),
        prism_model::ModelConfig::DebertaV2(d) => d.embedding_width(),
        prism_model::ModelConfig::Xlnet(_) | prism_model::ModelConfig::ModernBert(_) => c.hidden,
    };
    let positions = m.config.positions();
    // A tokenizer that can produce ids past the embedding table fails on those inputs only.
    let mut warnings = Vec::new();
    if let Some(t) = &m.tokenizer {
        if t.vocab_size() > c.vocab {
            warnings.push(format!(
                "the tokenizer has {} tokens but the embedding table {} rows: ids from {} on \
                 cannot be embedded (a mismatched tokenizer or config.json `vocab_size`)",
                t.vocab_size(),
                c.vocab,
                c.vocab
            ));
        }
    }
    let v = json!({
        "folder": m.dir,
        "model_type": m.config.model_type(),
        "architecture": m.config.base_architecture(),
        "layers": c.layers,
        "hidden_size": c.hidden,
        "embedding_size": embedding_size,
        "heads": c.heads,
        "intermediate_size": c.intermediate,
        "vocab_size": c.vocab,
        "max_tokens": m.config.max_tokens(),
        "positions": positions,
        "hidden_act": c.activation,
        "parameters": m.num_parameters(),
        "pooler": has_pooler,
        "tokenizer": m.tokenizer.as_ref().map(|t| t.path().display().to_string()),
        "warnings": warnings,
        "head_tensors": m.head_tensors.iter().map(|(k, t)| json!({"name": k, "shape": t.dims()})).collect::<Vec<_>>(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "folder        {}",
            m.dir
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default()
        );
        println!(
            "architecture  {} ({})",
            m.config.base_architecture(),
            m.config.model_type()
        );
        println!("layers        {}", c.layers);
        println!(
            "hidden        {} ({} heads of {}), FFN {}",
            c.hidden,
            c.heads,
            c.hidden / c.heads.max(1),
            c.intermediate
        );
        if embedding_size != c.hidden {
            println!("embeddings    {embedding_size} (projected to {})", c.hidden);
        }
        println!("vocabulary    {}", c.vocab);
        println!("max tokens    {}", m.config.max_tokens());
        println!("positions     {positions}");
        println!("activation    {}", c.activation);
        println!(
            "parameters    {} ({:.1} M)",
            m.num_parameters(),
            m.num_parameters() as f64 / 1e6
        );
        println!("pooler        {}", if has_pooler { "yes" } else { "no" });
        if let Some(t) = &m.tokenizer {
            println!(
                "tokenizer     {} ({} tokens)",
                t.path().display(),
                t.vocab_size()
            );
        }
        for (k, t) in &m.head_tensors {
            println!("head tensor   {k} {:?}", t.dims());
        }
        for w in &warnings {
            println!("warning       {w}");
        }
    }
    Ok(())
}

fn embed(
    args: &ModelArgs,
    texts: &[String],
    normalize: bool,
    batch_size: usize,
    dev: &Device,
) -> Result<()> {
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let m = load(&args.model, dev)?;
    let tok = m.tokenizer()?;
    let mut mean_rows = Vec::new();
    let mut cls_rows = Vec::new();
    let mut truncated = Vec::new();
    for chunk in texts.chunks(batch_size) {
        let encs = chunk
            .iter()
            .map(|t| tok.encode(t, None))
            .collect::<prism_model::Result<Vec<_>>>()?;
        truncated.extend(encs.iter().map(|e| e.truncated));
        let input = tok.batch(&encs, dev)?;
        let out = m.encoder.forward(&input, &Mode::Eval)?;
        let mut mean = mean_pool(&out.last_hidden_state, &input.attention_mask)?; // (B, C)
        let mut cls = out.last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?; // (B, C)
        if normalize {
            mean = l2_normalize(&mean)?;
            cls = l2_normalize(&cls)?;
        }
        mean_rows.extend(mean.to_vec2::<f32>()?);
        cls_rows.extend(cls.to_vec2::<f32>()?);
    }
    let cos = |a: &[f32], b: &[f32]| -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb).max(1e-12)
    };
    let sims: Vec<Vec<f32>> = mean_rows
        .iter()
        .map(|a| mean_rows.iter().map(|b| cos(a, b)).collect())
        .collect();
    if args.json {
        let rows: Vec<_> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| json!({"text": t, "mean": mean_rows[i], "cls": cls_rows[i], "truncated": truncated[i]}))
            .collect();
        println!(
            "{}",
            serde_json::to_string(
                &json!({"model": args.model, "dim": mean_rows[0].len(), "normalized": normalize, "embeddings": rows, "cosine_mean": sims})
            )?
        );
    } else {
        for (i, t) in texts.iter().enumerate() {
            let head: Vec<String> = mean_rows[i]
                .iter()
                .take(6)
                .map(|v| format!("{v:+.4}"))
                .collect();
            let norm: f32 = mean_rows[i].iter().map(|v| v * v).sum::<f32>().sqrt();
            println!("[{i}] {t}");
            println!(
                "    mean-pooled ({} dims, norm {norm:.4}): [{}, ...]{}",
                mean_rows[i].len(),
                head.join(", "),
                if truncated[i] { " (truncated)" } else { "" }
            );
        }
        if texts.len() > 1 {
            println!("\ncosine similarity (mean-pooled):");
            for (i, row) in sims.iter().enumerate() {
                let cells: Vec<String> = row.iter().map(|v| format!("{v:6.3}")).collect();
                println!("  [{i}] {}", cells.join(" "));
            }
        }
    }
    Ok(())
}

fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&n)?)
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
