//! `prism bench`: throughput of the four workloads that matter (inference, a fine-tuning step,
//! integrated gradients, a masked-LM step) at four model sizes, with warm-up, repetitions,
//! median/min/max, peak RSS, achieved GFLOP/s from the matmul FLOP count, and the practical
//! sgemm peak of this machine. `bench/reference.py` runs the same work in PyTorch eager and
//! Captum, and `bench/reference.py --compare` prints both side by side with the ratios.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use prism_explain::gradient::{GradientShap, IntegratedGradients};
use prism_explain::layer::LayerConductance;
use prism_explain::{ExplainInput, ExplainModel, Method, Target};
use prism_model::heads::{ElectraPretraining, MaskedLm};
use prism_model::tasks::MultiTaskModel;
use prism_model::{
    fetch, BertConfig, Encoded, Encoder, EncoderInput, Flavor, Mode, ModelConfig, PretrainedModel,
    PrismTokenizer,
};
use prism_train::dist::Comm;
use prism_train::optim::{AdamW, AdamWConfig};
use prism_train::pretrain::masking::MaskedBatch;
use prism_train::pretrain::rtd::{rtd_step_sampling, RtdBatch};
use prism_train::tasks::{cross_entropy, Batch, BatchTargets, Supervised, TaskKind, TaskSpec};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The model sizes of the benchmark (issue 7): the tiny test fixture's shape, "mini" (hidden
/// 256, 4 layers), the real MiniLM checkpoint, and BERT-base's shape.
pub const SIZES: [&str; 8] = [
    "tiny",
    "mini",
    "minilm",
    "base",
    "modernbert-mini",
    "modernbert-base",
    "deberta-v3-mini",
    "deberta-v3-base",
];
pub const WORKLOADS: [&str; 13] = [
    "infer",
    "infer-bf16",
    "train",
    "train-bf16",
    "ig",
    "ig-bf16",
    "gradient-shap",
    "conductance",
    "conductance-map",
    "mlm",
    "mlm-bf16",
    "rtd",
    "allreduce",
];

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model sizes: tiny, mini (H256 L4), minilm (the real checkpoint), base (H768 L12),
    /// modernbert-mini (H256 L4), modernbert-base (H768 L22), deberta-v3-mini (H256 L4),
    /// deberta-v3-base (H768 L12).
    #[arg(long, value_delimiter = ',', default_value = "tiny,mini,minilm,base")]
    pub sizes: Vec<String>,
    /// Workloads: infer, infer-bf16 (linear layers in bf16 on AMX or AVX512-BF16), train,
    /// train-bf16 (mixed precision: the linear layers' forward, dx and dW in bf16, f32 master
    /// weights), ig, ig-bf16, gradient-shap (20 samples, one pass), conductance (layer
    /// conductance of the last layer, --ig-steps + 1 points), conductance-map (every layer's,
    /// prism's one set of passes against Captum's one call per layer), mlm, mlm-bf16, rtd
    /// (ELECTRA's replaced-token detection: the size as the discriminator, a generator a
    /// quarter as wide on its embeddings, sampling, MLM + 50·RTD, one AdamW step);
    /// allreduce (the model's whole gradient summed over the ranks of an MPI job, as a
    /// data-parallel update does: run under `mpirun -np N`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "infer,infer-bf16,train,train-bf16,ig,ig-bf16,mlm,mlm-bf16"
    )]
    pub workloads: Vec<String>,
    /// Sequences per batch (and IG interpolations per pass).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Measured repetitions (median, min and max are reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Unmeasured warm-up repetitions.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Integrated-gradients steps.
    #[arg(long, default_value_t = 50)]
    pub ig_steps: usize,
    /// Size of the square sgemm that measures the practical matmul peak.
    #[arg(long, default_value_t = 2048)]
    pub sgemm: usize,
    /// Threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the JSON report here (`-` for stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Activation checkpointing in the training workloads (train, train-bf16, mlm, mlm-bf16),
    /// as `gradient_checkpointing = true` in a run's config.
    #[arg(long)]
    pub gradient_checkpointing: bool,
}

#[derive(Serialize)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        // As Python's statistics.median (the reference script): the mean of the middle two.
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stat {
            median,
            min: v[0],
            max: v[v.len() - 1],
        }
    }
}

#[derive(Serialize)]
struct Row {
    size: String,
    workload: String,
    /// Throughput unit: sequences/s (infer, train), examples/s (ig), tokens/s (mlm).
    unit: &'static str,
    /// Throughput per repetition: median, slowest (min), fastest (max).
    throughput: Stat,
    /// Seconds per repetition (one batch, one IG example, one MLM batch).
    seconds: Stat,
    /// Matmul GFLOP/s at the median.
    gflops: f64,
    /// Seconds of the phases of a training step at the median repetition (train, mlm).
    #[serde(skip_serializing_if = "Option::is_none")]
    phases: Option<Phases>,
    peak_rss_mb: f64,
}

#[derive(Serialize, Clone, Copy, Default)]
struct Phases {
    forward: f64,
    backward: f64,
    optimizer: f64,
}

#[derive(Serialize)]
struct Report {
    threads: usize,
    /// Ranks of the MPI job (1: one process) and their engine.
    ranks: usize,
    engine: &'static str,
    batch: usize,
    seq: usize,
    reps: usize,
    ig_steps: usize,
    /// The bf16 kernel the `*-bf16` workloads ran on (`amx`, `avx512bf16`), or null (f32).
    bf16_kernel: Option<&'static str>,
    /// Whether the training workloads ran with activation checkpointing.
    gradient_checkpointing: bool,
    sgemm: SgemmRow,
    results: Vec<Row>,
}

#[derive(Serialize)]
struct SgemmRow {
    n: usize,
    seconds: f64,
    gflops: f64,
}

/// The configuration of a named size (None for `minilm`, which is loaded).
pub fn size_config(size: &str) -> Result<Option<BertConfig>> {
    let base = prism_model::models::bert::tiny_config(Flavor::Bert);
    let shaped = |c: usize, l: usize, h: usize, f: usize, v: usize| BertConfig {
        vocab_size: v,
        hidden_size: c,
        num_hidden_layers: l,
        num_attention_heads: h,
        intermediate_size: f,
        max_position_embeddings: 512,
        ..base.clone()
    };
    Ok(match size {
        "tiny" => Some(base.clone()),
        "mini" => Some(shaped(256, 4, 4, 1024, 30522)),
        "base" => Some(shaped(768, 12, 12, 3072, 30522)),
        "minilm" | "modernbert-mini" | "modernbert-base" | "deberta-v3-mini"
        | "deberta-v3-base" => None,
        other => bail!("unknown size `{other}` (one of {})", SIZES.join(", ")),
    })
}

/// A word-piece vocabulary of `n` made-up tokens with BERT's specials, written to `dir` so the
/// synthetic sizes have a tokenizer (IG's [PAD] baseline, the [MASK] id).
fn synthetic_tokenizer(n: usize, dir: &Path, max_len: usize) -> Result<PrismTokenizer> {
    std::fs::create_dir_all(dir)?;
    let mut vocab = String::from("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n");
    for i in 5..n {
        vocab.push_str(&format!("w{i}\n"));
    }
    std::fs::write(dir.join("vocab.txt"), vocab)?;
    let tok = PrismTokenizer::load(dir, max_len);
    let _ = std::fs::remove_dir_all(dir);
    Ok(tok?)
}

/// ModernBERT at the benchmark's sizes: mini (H256, L4, GeGLU 384) and ModernBERT-base's shape
/// (H768, L22, GeGLU 1152), a global layer every third, 128-token local windows.
pub fn modernbert_size(size: &str) -> Option<prism_model::models::modernbert::ModernBertConfig> {
    let (c, l, h, f) = match size {
        "modernbert-mini" => (256, 4, 4, 384),
        "modernbert-base" => (768, 22, 12, 1152),
        _ => return None,
    };
    let json = serde_json::json!({
        "model_type": "modernbert", "vocab_size": 30522, "hidden_size": c,
        "num_hidden_layers": l, "num_attention_heads": h, "intermediate_size": f,
        "max_position_embeddings": 512, "local_attention": 128,
        "global_attn_every_n_layers": 3, "pad_token_id": 0,
    });
    serde_json::from_value(json).ok()
}

/// DeBERTa-v3 at the benchmark's sizes: mini (H256, L4, FFN 1024) and DeBERTa-v3-base's shape
/// (H768, L12, FFN 3072), with v3's attention (c2p + p2c over 256 log buckets of 512 positions,
/// shared keys, a LayerNorm'd relative table, no absolute positions) and its 128,100 tokens.
pub fn deberta_size(size: &str) -> Option<prism_model::models::deberta_v2::DebertaV2Config> {
    let (c, l, h, f) = match size {
        "deberta-v3-mini" => (256, 4, 4, 1024),
        "deberta-v3-base" => (768, 12, 12, 3072),
        _ => return None,
    };
    let json = serde_json::json!({
        "model_type": "deberta-v2", "vocab_size": 128100, "hidden_size": c,
        "num_hidden_layers": l, "num_attention_heads": h, "intermediate_size": f,
        "max_position_embeddings": 512, "relative_attention": true, "position_buckets": 256,
        "max_relative_positions": -1, "pos_att_type": ["p2c", "c2p"], "share_att_key": true,
        "norm_rel_ebd": "layer_norm", "position_biased_input": false, "type_vocab_size": 0,
        "layer_norm_eps": 1e-7, "hidden_act": "gelu", "pad_token_id": 0,
    });
    serde_json::from_value(json).ok()
}

fn load_size(size: &str, seq: usize, dev: &Device) -> Result<PretrainedModel> {
    let family = match (modernbert_size(size), deberta_size(size)) {
        (Some(mut cfg), _) => {
            cfg.max_position_embeddings = cfg.max_position_embeddings.max(seq);
            Some(ModelConfig::ModernBert(cfg))
        }
        (None, Some(mut cfg)) => {
            cfg.max_position_embeddings = cfg.max_position_embeddings.max(seq);
            Some(ModelConfig::DebertaV2(cfg))
        }
        (None, None) => None,
    };
    if let Some(cfg) = family {
        let (vocab, max) = (cfg.sizes().vocab, cfg.max_tokens());
        let dir =
            std::env::temp_dir().join(format!("prism-bench-vocab-{vocab}-{}", std::process::id()));
        let tok = synthetic_tokenizer(vocab, &dir, max)?;
        return Ok(PretrainedModel::fresh(cfg, Some(tok), dev, 0)?);
    }
    match size_config(size)? {
        None => {
            let dir = fetch::resolve_model(size)?;
            Ok(PretrainedModel::load(&dir, dev)?)
        }
        Some(mut cfg) => {
            cfg.max_position_embeddings = cfg.max_position_embeddings.max(seq);
            // One folder per process: the ranks of an MPI job write theirs at the same time.
            let dir = std::env::temp_dir().join(format!(
                "prism-bench-vocab-{}-{}",
                cfg.vocab_size,
                std::process::id()
            ));
            let tok = synthetic_tokenizer(cfg.vocab_size, &dir, cfg.max_position_embeddings)?;
            Ok(PretrainedModel::fresh(
                ModelConfig::Bert(cfg),
                Some(tok),
                dev,
                0,
            )?)
        }
    }
}

/// Random ids that avoid the specials, with [CLS] first and [SEP] last.
/// A random example of `t` tokens (the first and last special), as `ExplainModel::encode`
/// builds it for a sequence head.
fn explain_input(
    mt: &MultiTaskModel,
    t: usize,
    v: usize,
    rng: &mut StdRng,
    dev: &Device,
) -> Result<ExplainInput> {
    let ids = random_ids(1, t, v, rng);
    let mut special = vec![0u32; t];
    special[0] = 1;
    special[t - 1] = 1;
    Ok(ExplainInput {
        input: batch_input(ids.clone(), 1, t, dev)?
            .with_first_token_only(mt.tasks[0].reads_first_token_only()),
        enc: Encoded {
            tokens: ids.iter().map(|i| format!("w{i}")).collect(),
            type_ids: vec![0; t],
            offsets: vec![(0, 0); t],
            sequence_ids: (0..t)
                .map(|j| (j != 0 && j + 1 != t).then_some(0))
                .collect(),
            special_tokens_mask: special,
            ids,
            truncated: false,
        },
        texts: vec![String::new()],
    })
}

fn random_ids(b: usize, t: usize, vocab: usize, rng: &mut StdRng) -> Vec<u32> {
    let mut ids = Vec::with_capacity(b * t);
    for _ in 0..b {
        for j in 0..t {
            ids.push(if j == 0 {
                101.min(vocab as u32 - 1).max(2)
            } else if j + 1 == t {
                102.min(vocab as u32 - 1).max(3)
            } else {
                rng.random_range(5..vocab as u32)
            });
        }
    }
    ids
}

/// Mask 15 % of the inner positions (not the first or last of each row of `t`) of `ids`
/// with `mask_id`: the flat positions and the original tokens there.
fn mask_inner(ids: &mut [u32], t: usize, mask_id: u32, rng: &mut StdRng) -> (Vec<u32>, Vec<u32>) {
    let (mut positions, mut labels) = (Vec::new(), Vec::new());
    for (k, id) in ids.iter_mut().enumerate() {
        let j = k % t;
        if j != 0 && j + 1 != t && rng.random_bool(0.15) {
            positions.push(k as u32);
            labels.push(*id);
            *id = mask_id;
        }
    }
    (positions, labels)
}

fn batch_input(ids: Vec<u32>, b: usize, t: usize, dev: &Device) -> Result<EncoderInput> {
    let ids = Tensor::from_vec(ids, (b, t), dev)?;
    let mask = Tensor::ones((b, t), DType::U32, dev)?;
    let types = Tensor::zeros((b, t), DType::U32, dev)?;
    Ok(EncoderInput::new(ids, mask).with_token_type_ids(types))
}

/// Forward matmul FLOPs of the encoder on `b` sequences of `t` tokens.
fn encoder_flops(cfg: &BertConfig, b: usize, t: usize) -> f64 {
    let (c, f, l) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.num_hidden_layers as f64,
    );
    let (b, t) = (b as f64, t as f64);
    // Q, K, V, output projections 4 * 2C^2, FFN 2 * 2CF per token; QK^T and PV 2 * 2TC per token.
    b * t * l * (8.0 * c * c + 4.0 * c * f + 4.0 * t * c)
}

/// Peak resident set since the last reset, in MB (Linux; 0 elsewhere).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// The practical matmul peak: one `n x n x n` f32 GEMM through the same path as the model.
fn sgemm(n: usize, dev: &Device) -> Result<SgemmRow> {
    let a = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), dev)?;
    let _ = a.matmul(&b)?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let c = a.matmul(&b)?;
        dev.synchronize()?;
        drop(c);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let s = times[0];
    Ok(SgemmRow {
        n,
        seconds: s,
        gflops: 2.0 * (n as f64).powi(3) / s / 1e9,
    })
}

/// Run `f` `warmup` times unmeasured and `reps` times measured; `f` returns its phases.
fn measure<F>(warmup: usize, reps: usize, mut f: F) -> Result<(Vec<f64>, Vec<Phases>)>
where
    F: FnMut() -> Result<Phases>,
{
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::new();
    let mut phases = Vec::new();
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        let p = f()?;
        times.push(t0.elapsed().as_secs_f64());
        phases.push(p);
    }
    Ok((times, phases))
}

/// One optimiser step: `loss()` (forward, read back so it is finished), backward, clipped AdamW,
/// each phase timed.
fn training_step<F>(opt: &mut AdamW, lr: f64, loss: F) -> Result<Phases>
where
    F: FnOnce() -> Result<Tensor>,
{
    let t0 = Instant::now();
    let loss = loss()?;
    loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    let t1 = Instant::now();
    let grads = loss.backward()?;
    let t2 = Instant::now();
    opt.clipped_step(&grads, lr, 1.0, 1.0)?;
    Ok(Phases {
        forward: (t1 - t0).as_secs_f64(),
        backward: (t2 - t1).as_secs_f64(),
        optimizer: t2.elapsed().as_secs_f64(),
    })
}

fn classification_model(base: PretrainedModel) -> Result<MultiTaskModel> {
    let spec = TaskSpec {
        name: "bench".into(),
        kind: TaskKind::Classification,
        labels: vec!["negative".into(), "positive".into()],
        max_length: base.config.max_tokens(),
        doc_stride: 64,
        max_question_length: None,
        threshold: None,
    };
    Ok(MultiTaskModel::new(base, vec![spec], 0)?)
}

/// The BERT-shaped sizes the flop counts read. ModernBERT's GeGLU (Wi C x 2F, Wo F x C) costs
/// what BERT's feed-forward does with 1.5 F. DeBERTa's counts are BERT's: its position terms
/// (two (T x D) x (D x 2S) products per head, with S = 256 buckets) are left out, so its GFLOP/s
/// understate the work done.
fn bert_config(m: &PretrainedModel) -> Result<BertConfig> {
    match &m.config {
        ModelConfig::Bert(c) => Ok(c.clone()),
        ModelConfig::ModernBert(c) => Ok(BertConfig {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            intermediate_size: c.intermediate_size * 3 / 2,
            max_position_embeddings: c.max_position_embeddings,
            ..prism_model::models::bert::tiny_config(Flavor::Bert)
        }),
        ModelConfig::DebertaV2(c) => Ok(BertConfig {
            vocab_size: c.vocab_size,
            hidden_size: c.hidden_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            intermediate_size: c.intermediate_size,
            max_position_embeddings: c.max_position_embeddings,
            ..prism_model::models::bert::tiny_config(Flavor::Bert)
        }),
        _ => bail!("the benchmark sizes are BERT models"),
    }
}

pub fn run(args: BenchArgs, dev: &Device, comm: &Comm) -> Result<()> {
    let args = &args;
    if args.workloads.iter().any(|w| w == "allreduce") && comm.engine() == "single" {
        bail!(
            "the allreduce workload measures the ranks' engine: run it under `mpirun -np 2` with \
             a build that has `--features distributed`"
        );
    }
    // On several ranks every rank runs the same work (the collectives need them all); rank 0
    // reports.
    let say = comm.is_root();
    for s in &args.sizes {
        size_config(s)?;
    }
    for w in &args.workloads {
        if !WORKLOADS.contains(&w.as_str()) {
            bail!("unknown workload `{w}` (one of {})", WORKLOADS.join(", "));
        }
    }
    if args.batch == 0 || args.seq < 2 {
        bail!("--batch must be at least 1 and --seq at least 2");
    }
    let nthreads = threads();
    if say {
        eprintln!(
        "prism bench: batch {} x {} tokens, {} threads, {} warm-up + {} repetitions, IG {} steps",
        args.batch, args.seq, nthreads, args.warmup, args.reps, args.ig_steps
        );
        eprintln!("bf16 workloads: {}", prism_model::ops::bf16::describe());
        if comm.world() > 1 {
            eprintln!("{} ranks over {}", comm.world(), comm.engine());
        }
    }
    let sg = sgemm(args.sgemm, dev)?;
    if say {
        eprintln!(
            "sgemm {n}x{n}x{n}: {:.1} GFLOP/s (practical peak)",
            sg.gflops,
            n = sg.n
        );
        eprintln!(
            "{:<7} {:<6} {:>12} {:>10} {:>10} {:>10} {:>8} {:>9}  phases (fwd/bwd/opt ms)",
            "size", "work", "throughput", "unit", "min", "max", "GFLOP/s", "peak MB"
        );
    }
    let mut rows = Vec::new();
    let (b, t) = (args.batch, args.seq);
    for size in &args.sizes {
        let base = load_size(size, t, dev).with_context(|| format!("model size `{size}`"))?;
        let cfg = bert_config(&base)?;
        if t > cfg.max_position_embeddings {
            bail!(
                "--seq {t} is longer than {size}'s {} positions",
                cfg.max_position_embeddings
            );
        }
        let v = cfg.vocab_size;
        let mut rng = StdRng::seed_from_u64(7);
        let fwd_flops = encoder_flops(&cfg, b, t);
        let c = cfg.hidden_size as f64;
        // One model per size: MLM needs the tied head, the others a classification head.
        let is_mlm = |w: &String| w == "mlm" || w == "mlm-bf16";
        let modern = matches!(
            base.config,
            ModelConfig::ModernBert(_) | ModelConfig::DebertaV2(_)
        );
        let needs_cls = args.workloads.iter().any(|w| !is_mlm(w));
        let (mt, lm) = if needs_cls || modern {
            let mt = classification_model(base)?;
            // The MLM workload is BERT-shaped: ModernBERT's mlm rows are skipped.
            let lm = if args.workloads.iter().any(is_mlm) && !modern {
                Some(MaskedLm::new(load_size(size, t, dev)?)?)
            } else {
                None
            };
            (Some(mt), lm)
        } else {
            (None, Some(MaskedLm::new(base)?))
        };
        for work in &args.workloads {
            if modern && (is_mlm(work) || work == "rtd") {
                eprintln!("{size}: no {work} row (the MLM and RTD benches are BERT-shaped)");
                continue;
            }
            reset_peak_rss();
            // `*-bf16` training: forward and backward under mixed precision, as a run with
            // `precision = "bf16"` (the training loop's autocast).
            let _precision = prism_model::ops::bf16::autocast(matches!(
                work.as_str(),
                "train-bf16" | "mlm-bf16"
            ));
            let _recompute =
                prism_model::recompute::gradient_checkpointing(args.gradient_checkpointing);
            let row = match work.as_str() {
                "infer" | "infer-bf16" => {
                    let mt = mt.as_ref().context("classification model")?;
                    // `infer-bf16`: the same forward with every linear layer on AMX or AVX512-BF16
                    // in bf16 (f32 accumulation; attention products, softmax, layer norm in f32).
                    // Both frozen, as `prism eval`, `predict` and `serve` run (PyTorch: eval
                    // mode under `no_grad`): no graph, weights transposed or packed once.
                    let m = crate::common::frozen(mt, work == "infer-bf16")?;
                    let m = &m;
                    // As the task's own batches: a sequence head asks for position 0 only.
                    let input = batch_input(random_ids(b, t, v, &mut rng), b, t, dev)?
                        .with_first_token_only(m.tasks[0].reads_first_token_only());
                    let (times, _) = measure(args.warmup, args.reps, || {
                        let out = m.base.encoder.forward(&input, &Mode::Eval)?;
                        let logits = m.tasks[0].logits(&out, &Mode::Eval)?;
                        logits.to_dtype(DType::F32)?.to_vec2::<f32>()?;
                        Ok(Phases::default())
                    })?;
                    let flops = fwd_flops + 2.0 * c * c * b as f64;
                    row(size, work, "seq/s", b as f64, &times, flops, None)
                }
                "train" | "train-bf16" => {
                    let mt = mt.as_ref().context("classification model")?;
                    let mut opt = AdamW::new(mt.base.params.vars(), AdamWConfig::default());
                    let input = batch_input(random_ids(b, t, v, &mut rng), b, t, dev)?
                        .with_first_token_only(mt.tasks[0].reads_first_token_only());
                    let labels: Vec<u32> = (0..b).map(|_| rng.random_range(0..2)).collect();
                    let batch = Batch {
                        input,
                        targets: BatchTargets::Classes(Tensor::new(labels, dev)?),
                    };
                    let mode = Mode::train(1);
                    let (times, phases) = measure(args.warmup, args.reps, || {
                        training_step(&mut opt, 1e-5, || {
                            let out = mt.base.encoder.forward(&batch.input, &mode)?;
                            Ok(mt.tasks[0].loss(&Default::default(), &out, &batch, &mode)?)
                        })
                    })?;
                    let flops = 3.0 * (fwd_flops + 2.0 * c * c * b as f64);
                    row(size, work, "seq/s", b as f64, &times, flops, Some(phases))
                }
                "ig" | "ig-bf16" => {
                    let mt = mt.as_ref().context("classification model")?;
                    // As `prism explain` does: frozen weights, input gradients only; `ig-bf16`
                    // as `prism explain --bf16` (linear layers forward and backward on AMX).
                    let frozen = crate::common::frozen(mt, work == "ig-bf16")?;
                    let m = ExplainModel::new(&frozen, None)?;
                    let x = explain_input(&frozen, t, v, &mut rng, dev)?;
                    let ig = IntegratedGradients {
                        steps: args.ig_steps,
                        batch_size: b,
                        ..Default::default()
                    };
                    let target = Target::Class { class: 1 };
                    let (times, _) = measure(args.warmup, args.reps, || {
                        ig.attribute(&m, &x, &target)?;
                        Ok(Phases::default())
                    })?;
                    // Each interpolation: forward + backward (= 2 forwards); plus F(x), F(b).
                    let one = encoder_flops(&cfg, 1, t) + 2.0 * c * c;
                    let flops = one * (3.0 * args.ig_steps as f64 + 2.0);
                    row(size, work, "ex/s", 1.0, &times, flops, None)
                }
                "gradient-shap" | "conductance" | "conductance-map" => {
                    let mt = mt.as_ref().context("classification model")?;
                    let frozen = crate::common::frozen(mt, false)?;
                    let m = ExplainModel::new(&frozen, None)?;
                    let x = explain_input(&frozen, t, v, &mut rng, dev)?;
                    let target = Target::Class { class: 1 };
                    let one = encoder_flops(&cfg, 1, t) + 2.0 * c * c;
                    let layers = cfg.num_hidden_layers;
                    let ig = IntegratedGradients {
                        steps: args.ig_steps,
                        batch_size: b,
                        ..Default::default()
                    };
                    let (times, flops) = match work.as_str() {
                        "gradient-shap" => {
                            // 20 samples in one pass, as Captum's GradientShap runs them.
                            let shap = GradientShap {
                                batch_size: 20,
                                ..Default::default()
                            };
                            let (times, _) = measure(args.warmup, args.reps, || {
                                shap.attribute(&m, &x, &target)?;
                                Ok(Phases::default())
                            })?;
                            (times, one * (3.0 * shap.samples as f64 + 3.0))
                        }
                        "conductance" => {
                            let lc = LayerConductance {
                                layer: Some(layers - 1),
                                ig,
                            };
                            let (times, _) = measure(args.warmup, args.reps, || {
                                lc.attribute(&m, &x, &target)?;
                                Ok(Phases::default())
                            })?;
                            (times, one * (3.0 * (args.ig_steps + 1) as f64 + 2.0))
                        }
                        _ => {
                            let lc = LayerConductance { layer: None, ig };
                            let (times, _) = measure(args.warmup, args.reps, || {
                                lc.map(&m, &x, &target)?;
                                Ok(Phases::default())
                            })?;
                            (times, one * (3.0 * (args.ig_steps + 1) as f64 + 2.0))
                        }
                    };
                    row(size, work, "ex/s", 1.0, &times, flops, None)
                }
                "mlm" | "mlm-bf16" => {
                    let lm = lm.as_ref().context("masked-LM model")?;
                    let mut opt = AdamW::new(lm.base.params.vars(), AdamWConfig::default());
                    let mask_id = lm
                        .base
                        .tokenizer()?
                        .token_to_id("[MASK]")
                        .context("[MASK] token")?;
                    let mut ids = random_ids(b, t, v, &mut rng);
                    let (positions, labels) = mask_inner(&mut ids, t, mask_id, &mut rng);
                    let p = positions.len();
                    let input = batch_input(ids, b, t, dev)?;
                    let positions = Tensor::new(positions, dev)?;
                    let labels = Tensor::new(labels, dev)?;
                    let mode = Mode::train(1);
                    let (times, phases) = measure(args.warmup, args.reps, || {
                        training_step(&mut opt, 1e-4, || {
                            let logits = lm.logits_at(&input, &positions, &mode)?;
                            Ok(cross_entropy(&logits, &labels)?)
                        })
                    })?;
                    let head = p as f64 * (2.0 * c * c + 2.0 * c * v as f64);
                    let flops = 3.0 * (fwd_flops + head);
                    row(
                        size,
                        work,
                        "tok/s",
                        (b * t) as f64,
                        &times,
                        flops,
                        Some(phases),
                    )
                }
                "rtd" => {
                    // The size as an ELECTRA discriminator (the same encoder shape), a fresh
                    // generator a quarter as wide on its embeddings, 15 % of the inner
                    // positions masked, replacements sampled from the generator.
                    let mut dcfg = cfg.clone();
                    dcfg.model_type = "electra".into();
                    dcfg.embedding_size = Some(dcfg.hidden_size);
                    let disc = PretrainedModel::fresh(
                        ModelConfig::Bert(dcfg.clone()),
                        mt.as_ref().and_then(|m| m.base.tokenizer.clone()),
                        dev,
                        3,
                    )?;
                    let generator = ElectraPretraining::fresh_generator(&disc, 0.25, 4)?;
                    let gcfg = match &generator.base.config {
                        ModelConfig::Bert(g) => g.clone(),
                        _ => unreachable!("an ELECTRA generator is BERT-shaped"),
                    };
                    let model = ElectraPretraining::new(disc, generator)?;
                    let mut opt = AdamW::new(model.vars(), AdamWConfig::default());
                    let original = random_ids(b, t, v, &mut rng);
                    let mut ids = original.clone();
                    let (positions, labels) =
                        mask_inner(&mut ids, t, 103.min(v as u32 - 1), &mut rng);
                    let p = positions.len();
                    let masked = MaskedBatch {
                        batch: b,
                        len: t,
                        input_ids: ids,
                        attention_mask: vec![1; b * t],
                        positions,
                        labels,
                        tokens: b * t,
                    };
                    let batch = RtdBatch::new(masked, original, dev)?;
                    let mode = Mode::train(1);
                    let mut sample = StdRng::seed_from_u64(11);
                    let (times, phases) = measure(args.warmup, args.reps, || {
                        training_step(&mut opt, 1e-4, || {
                            Ok(rtd_step_sampling(&model, &batch, 50.0, &mode, &mut sample)?.total)
                        })
                    })?;
                    let (gc, e) = (gcfg.hidden_size as f64, dcfg.hidden_size as f64);
                    let generator =
                        encoder_flops(&gcfg, b, t) + p as f64 * (2.0 * gc * e + 2.0 * e * v as f64);
                    let discriminator = fwd_flops + (b * t) as f64 * (2.0 * c * c + 2.0 * c);
                    row(
                        size,
                        work,
                        "tok/s",
                        (b * t) as f64,
                        &times,
                        3.0 * (generator + discriminator),
                        Some(phases),
                    )
                }
                "allreduce" => {
                    // The update's all-reduce of a data-parallel run: every parameter's
                    // gradient, in the loop's 25 MiB buckets. Throughput is the algorithm
                    // bandwidth (gradient bytes per second per rank); a ring moves
                    // 2 (N - 1) / N times that over each rank's link.
                    let mt = mt.as_ref().context("classification model")?;
                    let params = mt.base.params.vars();
                    let bytes: usize = params.iter().map(|(_, v)| 4 * v.elem_count()).sum();
                    let mut total = Tensor::zeros((), DType::F32, dev)?;
                    for (_, v) in &params {
                        total = (total + v.as_tensor().sum_all()?)?;
                    }
                    let mut grads = total.backward()?;
                    let present = vec![comm.world() as f64; params.len()];
                    let (times, _) = measure(args.warmup, args.reps, || {
                        prism_train::dist::all_reduce_grads(comm, &params, &mut grads, &present)?;
                        dev.synchronize()?;
                        Ok(Phases::default())
                    })?;
                    row(size, work, "GB/s", bytes as f64 / 1e9, &times, 0.0, None)
                }
                _ => unreachable!("validated above"),
            };
            if say {
                print_row(&row);
            }
            rows.push(row);
        }
    }
    let report = Report {
        threads: nthreads,
        ranks: comm.world(),
        engine: comm.engine(),
        batch: b,
        seq: t,
        reps: args.reps,
        ig_steps: args.ig_steps,
        bf16_kernel: prism_model::ops::bf16::kernel().map(|k| k.name()),
        gradient_checkpointing: args.gradient_checkpointing,
        sgemm: sg,
        results: rows,
    };
    if !say {
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(p) if p.as_os_str() == "-" => println!("{text}"),
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => {}
    }
    Ok(())
}

fn row(
    size: &str,
    work: &str,
    unit: &'static str,
    per_rep: f64,
    times: &[f64],
    flops: f64,
    phases: Option<Vec<Phases>>,
) -> Row {
    let seconds = Stat::of(times.to_vec());
    let throughput = Stat::of(times.iter().map(|s| per_rep / s).collect());
    // The phases of the repetition whose time is the median.
    let phases = phases.map(|ph| {
        let mut idx: Vec<usize> = (0..times.len()).collect();
        idx.sort_by(|&a, &b| times[a].total_cmp(&times[b]));
        ph[idx[idx.len() / 2]]
    });
    Row {
        size: size.into(),
        workload: work.into(),
        unit,
        gflops: flops / seconds.median / 1e9,
        throughput,
        seconds,
        phases,
        peak_rss_mb: peak_rss_mb(),
    }
}

fn print_row(r: &Row) {
    let ph = r.phases.map_or(String::new(), |p| {
        format!(
            "{:.0}/{:.0}/{:.0}",
            p.forward * 1e3,
            p.backward * 1e3,
            p.optimizer * 1e3
        )
    });
    eprintln!(
        "{:<7} {:<6} {:>12.2} {:>10} {:>10.2} {:>10.2} {:>8.1} {:>9.0}  {ph}",
        r.size,
        r.workload,
        r.throughput.median,
        r.unit,
        r.throughput.min,
        r.throughput.max,
        r.gflops,
        r.peak_rss_mb
    );
}
