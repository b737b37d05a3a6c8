//! Pre-training with masked (BERT, RoBERTa) or permutation (XLNet) language modelling: from a
//! fresh model (sizes in the config, a tokenizer trained on the corpus) or continued from an
//! existing one, on [`crate::train_loop`] with the [`LanguageModelling`] objective; the data is
//! a streamed, packed corpus ([`corpus`]) masked afresh for every batch ([`masking`]).
//!
//! Determinism: the sequence order is a function of the seed and the files; masks and dropout
//! of update `s` come from generators seeded by `(seed, stream, s)`. A checkpoint stores the
//! corpus position, so a resumed run ends at the same weights as an uninterrupted one.

pub(crate) mod config;
pub mod corpus;
pub(crate) mod lm;
pub mod masking;
pub mod plm;
pub mod probe;
pub mod rtd;
pub mod tokenizer;

pub use config::{
    resolve_corpus, CorpusConfig, ModelSpec, Objective, PretrainConfig, TrainTokenizer,
};
pub use lm::{evaluate_lm, lm_logits, make_batch, LmBatch, LmEval, LmModel};
use lm::{fresh_model, vocab_of};
pub use tokenizer::{
    save_trained_tokenizer, save_trained_tokenizer_with, train_tokenizer, TokenizerKind,
    TokenizerTrainConfig,
};

use crate::checkpoint::{
    checkpoint_dir, find_checkpoint, prepare_output, read_checkpoint, swap_dir, write_json,
};
use crate::data::Cursor;
use crate::error::{Error, Result};
pub use crate::objective::PretrainState;
use crate::objective::{LanguageModelling, PRETRAIN_STATE_FILE as STATE_FILE};
use crate::rng::{seed_for, Stream};
use crate::train_loop::{self, Progress, RunOptions};
use candle_core::Device;
use corpus::{pack_all, CorpusStream, PackSpec, Sequence, TextEncoder};
use prism_model::checkpoint::write_atomic;
use prism_model::{fetch, ModelConfig, PretrainedModel};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Options of one invocation (restart, stop after N updates, progress).
pub type PretrainOptions = RunOptions;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainReport {
    pub steps: usize,
    pub completed: bool,
    pub train_seconds: f64,
    pub tokens_seen: u64,
    pub parameters: usize,
    pub dev: Option<LmEval>,
    /// (step, held-out perplexity) at every evaluation.
    pub perplexity_curve: Vec<(usize, f64)>,
    /// (step, probe dev accuracy), step 0 being the starting model's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe_curve: Vec<(usize, f64)>,
    /// RTD: (step, held-out discriminator accuracy, all-original accuracy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtd_accuracy_curve: Vec<(usize, f64, f64)>,
    pub model_dir: PathBuf,
}

/// Pre-train as configured, resuming from `output/checkpoint-last` when it exists.
pub fn pretrain(
    cfg: &PretrainConfig,
    device: &Device,
    opts: &PretrainOptions,
) -> Result<PretrainReport> {
    let out = cfg.output.clone();
    let comm = &opts.comm;
    if comm.is_root() {
        prepare_output(
            &out,
            opts.restart,
            &["generator", "generator.old", ".generator-tmp", ".model-tmp"],
        )?;
    }
    comm.barrier()?;
    let train_files = resolve_corpus(&cfg.corpus.train)?;
    let dev_files = if cfg.corpus.dev.is_empty() {
        Vec::new()
    } else {
        resolve_corpus(&cfg.corpus.dev)?
    };
    let exclude_files = if cfg.corpus.exclude.is_empty() {
        Vec::new()
    } else {
        resolve_corpus(&cfg.corpus.exclude)?
    };
    if cfg.corpus.format != corpus::DocFormat::Jsonl {
        if let Some(f) = train_files
            .iter()
            .chain(&dev_files)
            .find(|f| f.extension().is_some_and(|e| e == "jsonl"))
        {
            return Err(Error::File {
                path: f.clone(),
                msg: "a JSON Lines file in the corpus: set `corpus.format = \"jsonl\"` to read \
                      its `text` fields (otherwise its raw JSON would be the text)"
                    .into(),
            });
        }
    }
    let exclude = std::sync::Arc::new(corpus::excluded_texts(&exclude_files)?);
    let ck = checkpoint_dir(&out);
    let resume = find_checkpoint(&out, STATE_FILE);
    let load = || -> Result<_> {
        Ok(match &resume {
            Some(dir) => {
                let r = read_checkpoint(dir, STATE_FILE, |s: &PretrainState| {
                    s.config
                        == PretrainConfig {
                            output: s.config.output.clone(),
                            gradient_checkpointing: s.config.gradient_checkpointing,
                            ..cfg.clone()
                        }
                })?;
                crate::checkpoint::check_progress(dir, STATE_FILE, &r.state.progress, cfg.steps)?;
                (
                    PretrainedModel::load(dir, device)?,
                    Some(r.state),
                    Some(r.moments),
                    Some(dir.join("generator")),
                )
            }
            None => {
                let base = match &cfg.model.from {
                    Some(name) => PretrainedModel::load(&fetch::resolve_model(name)?, device)?,
                    None => fresh_model(cfg, &train_files, device)?,
                };
                (base, None, None, cfg.rtd.generator.clone())
            }
        })
    };
    // A fresh model may train its tokenizer into the output folder: rank 0 first, the others
    // then read it.
    let (base, saved, moments, generator) = if comm.is_root() {
        let b = load()?;
        comm.barrier()?;
        b
    } else {
        comm.barrier()?;
        load()?
    };
    // The LM heads' fresh parameters (a continued model without one) draw from their own stream.
    base.params.reseed(seed_for(cfg.seed, Stream::LmInit, 0));
    let xlnet = matches!(base.config, ModelConfig::Xlnet(_));
    let generator = generator.filter(|_| cfg.objective == Objective::Rtd);
    let model = LmModel::new(
        base,
        cfg,
        generator.as_deref(),
        seed_for(cfg.seed, Stream::LmInit, 1),
    )?;
    let tok = model.base().tokenizer()?.clone();
    if cfg.corpus.max_length > model.base().config.max_tokens() {
        return Err(Error::Config(format!(
            "corpus.max_length {} exceeds the model's {} positions",
            cfg.corpus.max_length,
            model.base().config.max_tokens()
        )));
    }
    let (vocab, cls, sep) = vocab_of(&tok)?;
    let enc = TextEncoder::new(tok.inner())?;
    if !exclude.is_empty() && comm.is_root() && resume.is_none() {
        eprintln!(
            "leaving out {} texts of {} files (corpus.exclude)",
            exclude.len(),
            exclude_files.len()
        );
    }
    let spec = PackSpec {
        files: train_files.clone(),
        cls_last: xlnet,
        format: cfg.corpus.format,
        exclude: exclude.clone(),
        max_len: cfg.corpus.max_length,
        cls,
        sep,
        shuffle_buffer: cfg.corpus.shuffle_buffer.max(1),
        seed: cfg.seed,
    };
    let dev_files_all = dev_files.clone();
    let dev: Vec<Sequence> = if dev_files.is_empty() {
        Vec::new()
    } else {
        pack_all(
            &PackSpec {
                files: dev_files,
                // corpus.exclude keeps texts out of training; the held-out set is what it is.
                exclude: Default::default(),
                ..spec.clone()
            },
            &enc,
            cfg.corpus.max_eval_sequences,
        )?
    };
    if comm.world() > 1 {
        let mut data = crate::dist::Fingerprint::new();
        for f in train_files.iter().chain(&dev_files_all) {
            data.bytes(f.to_string_lossy().as_bytes());
            data.file(f)?;
        }
        crate::dist::agree(
            comm,
            &[
                ("the config", serde_json::to_string(cfg).unwrap_or_default()),
                ("the corpus", data.finish()),
                (
                    "the tokenizer",
                    tok.inner().to_string(false).unwrap_or_default(),
                ),
                ("the binary", crate::dist::binary_fingerprint()?),
            ],
        )?;
    }
    let (mut progress, cursor, tokens_seen) = match saved {
        Some(s) => (s.progress, s.cursor, s.tokens_seen),
        None => (Progress::default(), Cursor::default(), 0),
    };
    if !comm.is_root() {
    } else if resume.is_some() {
        eprintln!("resuming from step {} ({})", progress.step, ck.display());
    } else {
        eprintln!(
            "pre-training a {}-parameter {} on {} files ({} held-out sequences)",
            model.base().num_parameters(),
            model.base().config.model_type(),
            train_files.len(),
            dev.len()
        );
    }
    let probe = match &cfg.probe {
        Some(p) if comm.is_root() => Some(probe::Probe::load(p, &tok, cfg.seed)?),
        _ => None,
    };
    // The starting model's probe score (random initialisation for a fresh model), logged as
    // step 0; a resumed run has it in its log already.
    let at_start = match &probe {
        Some(p) if progress.step == 0 => {
            let r = p.evaluate(model.base())?;
            eprintln!(
                "probe at step 0: accuracy {:.4} (majority {:.4}, {} train / {} dev examples)",
                r.accuracy, r.majority_accuracy, r.train_examples, r.dev_examples
            );
            Some(r)
        }
        _ => None,
    };
    let stream = CorpusStream::start(spec, enc, cursor);
    let mut objective =
        LanguageModelling::new(cfg, &model, &vocab, &dev, stream, cursor, tokens_seen)
            .with_probe(probe.as_ref(), at_start);
    let completed = train_loop::run(
        &mut objective,
        &cfg.loop_config(),
        &out,
        &mut progress,
        moments,
        opts,
    )?;
    let (tokens_seen, last_eval) = (objective.tokens_seen, objective.last_eval);
    drop(objective);
    // The perplexity and probe curves from the whole log (earlier invocations included).
    let mut curve: Vec<(usize, f64)> = Vec::new();
    let mut probe_curve: Vec<(usize, f64)> = Vec::new();
    let mut rtd_curve: Vec<(usize, f64, f64)> = Vec::new();
    if let Ok(text) = std::fs::read_to_string(out.join("metrics.jsonl")) {
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                let step = v["step"].as_u64().map(|s| s as usize);
                if v["split"] == "dev" {
                    if let (Some(s), Some(p)) = (step, v["perplexity"].as_f64()) {
                        curve.push((s, p));
                    }
                    if let (Some(s), Some(a), Some(b)) = (
                        step,
                        v["rtd"]["accuracy"].as_f64(),
                        v["rtd"]["baseline_accuracy"].as_f64(),
                    ) {
                        rtd_curve.push((s, a, b));
                    }
                } else if v["split"] == "probe" {
                    if let (Some(s), Some(a)) = (step, v["accuracy"].as_f64()) {
                        probe_curve.push((s, a));
                    }
                }
            }
        }
    }
    let model_dir = if completed && !comm.is_root() {
        out.join("model")
    } else if completed {
        let dir = out.join("model");
        let tmp = out.join(".model-tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let gen_tmp = out.join(".generator-tmp");
        let _ = std::fs::remove_dir_all(&gen_tmp);
        model.save(&tmp, &gen_tmp)?;
        if gen_tmp.is_dir() {
            swap_dir(&gen_tmp, &out.join("generator"))?;
        }
        swap_dir(&tmp, &dir)?;
        dir
    } else {
        ck
    };
    let report = PretrainReport {
        steps: progress.step,
        completed,
        train_seconds: progress.elapsed_s,
        tokens_seen,
        parameters: model.base().num_parameters(),
        dev: last_eval,
        perplexity_curve: curve,
        probe_curve,
        rtd_accuracy_curve: rtd_curve,
        model_dir,
    };
    if completed && comm.is_root() {
        write_json(&out.join("report.json"), &report)?;
        write_html(&out, &report)?;
    }
    Ok(report)
}

/// `report.html`: training loss and held-out perplexity curves.
fn write_html(out: &Path, report: &PretrainReport) -> Result<()> {
    let mut loss = Vec::new();
    if let Ok(text) = std::fs::read_to_string(out.join("metrics.jsonl")) {
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v.get("split").is_none() {
                    if let (Some(s), Some(l)) = (v["step"].as_f64(), v["loss"].as_f64()) {
                        loss.push((s, l));
                    }
                }
            }
        }
    }
    let ppl: Vec<(f64, f64)> = report
        .perplexity_curve
        .iter()
        .map(|&(s, p)| (s as f64, p))
        .collect();
    let mut html = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>prism pre-training report</title><style>body{font-family:sans-serif;max-width:900px;margin:2em auto}td,th{padding:2px 8px;text-align:right}</style></head><body><h1>Pre-training report</h1>");
    html.push_str(&format!(
        "<p>{} updates, {} tokens, {:.0} s, {} parameters.</p>",
        report.steps, report.tokens_seen, report.train_seconds, report.parameters
    ));
    if let Some(d) = &report.dev {
        html.push_str(&format!(
            "<p>Held-out: loss {:.4}, perplexity {:.2}, masked-token accuracy {:.4} ({} predicted tokens).</p>",
            d.loss, d.perplexity, d.accuracy, d.predicted_tokens
        ));
    }
    html.push_str(&crate::report::svg_chart(
        "training loss (EMA)",
        &[("loss".into(), crate::report::ema(&loss, 0.05))],
    ));
    html.push_str(&crate::report::svg_chart(
        "held-out perplexity",
        &[("perplexity".into(), ppl)],
    ));
    if !report.rtd_accuracy_curve.is_empty() {
        let pts = |f: fn(&(usize, f64, f64)) -> f64| -> Vec<(f64, f64)> {
            report
                .rtd_accuracy_curve
                .iter()
                .map(|p| (p.0 as f64, f(p)))
                .collect()
        };
        html.push_str(&crate::report::svg_chart(
            "held-out replaced-token detection accuracy",
            &[
                ("discriminator".into(), pts(|p| p.1)),
                ("all original".into(), pts(|p| p.2)),
            ],
        ));
    }
    if !report.probe_curve.is_empty() {
        let pts: Vec<(f64, f64)> = report
            .probe_curve
            .iter()
            .map(|&(s, a)| (s as f64, a))
            .collect();
        html.push_str(&crate::report::svg_chart(
            "downstream probe: dev accuracy of a linear classifier on frozen features (step 0: \
             the starting model)",
            &[("probe accuracy".into(), pts)],
        ));
    }
    html.push_str("</body></html>\n");
    Ok(write_atomic(&out.join("report.html"), html.as_bytes())?)
}
