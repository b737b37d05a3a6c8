//! Language-model pre-training as an objective: each micro-batch takes the next packed
//! sequences of the corpus stream, masks (MLM) or permutes (PLM) them afresh, and trains the
//! encoder and its LM head with cross-entropy at the predicted positions. Evaluation is
//! held-out loss, perplexity and predicted-token accuracy with fixed masks.

use crate::checkpoint::write_checkpoint;
use crate::data::Cursor;
use crate::error::Result;
use crate::loss::cross_entropy;
use crate::optim::AdamW;
use crate::pretrain::config::{Objective as LmObjective, PretrainConfig};
use crate::pretrain::corpus::{CorpusStream, Sequence};
use crate::pretrain::lm::{evaluate_lm, lm_logits, make_batch, LmEval, LmModel};
use crate::pretrain::masking::Vocab;
use crate::pretrain::probe::{Probe, ProbeResult};
use crate::pretrain::rtd::{rtd_batch, rtd_step_sampling};
use crate::rng::{rng_for, Stream};
use crate::train_loop::{Log, Micro, Objective, Progress, Update};
use candle_core::{Device, Var};
use prism_model::heads::ElectraPretraining;
use prism_model::Mode;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The JSON state in a pre-training checkpoint.
pub const PRETRAIN_STATE_FILE: &str = "pretrain_state.json";

/// Everything besides weights and optimiser moments that a resumed run needs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PretrainState {
    #[serde(flatten)]
    pub progress: Progress,
    /// Where the corpus stream is.
    pub cursor: Cursor,
    pub tokens_seen: u64,
    pub config: PretrainConfig,
}

/// Masked or permutation language modelling of `model` on a packed corpus stream.
pub struct LanguageModelling<'a> {
    cfg: &'a PretrainConfig,
    model: &'a LmModel,
    vocab: &'a Vocab,
    dev: &'a [Sequence],
    stream: CorpusStream,
    device: Device,
    pub cursor: Cursor,
    pub tokens_seen: u64,
    /// The last held-out evaluation.
    pub last_eval: Option<LmEval>,
    tokens_this_run: u64,
    running: Option<f64>,
    /// The downstream probe (`[probe]`), and its score of the starting model, logged with the
    /// first update as step 0 (a fresh run only).
    probe: Option<&'a Probe>,
    pub probe_at_start: Option<ProbeResult>,
}

impl<'a> LanguageModelling<'a> {
    pub fn new(
        cfg: &'a PretrainConfig,
        model: &'a LmModel,
        vocab: &'a Vocab,
        dev: &'a [Sequence],
        stream: CorpusStream,
        cursor: Cursor,
        tokens_seen: u64,
    ) -> Self {
        Self {
            cfg,
            model,
            vocab,
            dev,
            stream,
            device: model.base().params.device().clone(),
            cursor,
            tokens_seen,
            last_eval: None,
            tokens_this_run: 0,
            running: None,
            probe: None,
            probe_at_start: None,
        }
    }

    /// Score `probe` at each evaluation; `at_start` (the starting model's score) is logged as
    /// step 0 with the first update.
    pub fn with_probe(mut self, probe: Option<&'a Probe>, at_start: Option<ProbeResult>) -> Self {
        self.probe = probe;
        self.probe_at_start = at_start;
        self
    }

    /// The stream's next `batch_size` packed sequences (every rank reads and tokenises the
    /// whole stream and keeps the micro-batches it computes).
    fn next_sequences(&mut self) -> Result<Vec<Sequence>> {
        let mut seqs = Vec::with_capacity(self.cfg.batch_size);
        for _ in 0..self.cfg.batch_size {
            let (s, c) = self.stream.next_sequence()?;
            seqs.push(s);
            self.cursor = c;
        }
        Ok(seqs)
    }

    fn name(&self) -> &'static str {
        match self.cfg.objective {
            LmObjective::Mlm => "mlm",
            LmObjective::Plm => "plm",
            LmObjective::Rtd => "rtd",
        }
    }

    /// RTD: the generator's MLM and the discriminator's loss on freshly masked sequences with
    /// replacements sampled from the generator; the gradient is the micro-batch's mean loss
    /// (mean MLM over its masked tokens + λ · mean BCE over its attended tokens) times its
    /// sequences, and the update divides by all micro-batches' sequences: with one micro-batch
    /// on one rank, ELECTRA's (and transformers') per-batch means exactly; with several, their
    /// sequence-weighted average.
    fn rtd_micro_batch(&mut self, model: &ElectraPretraining, k: u64) -> Result<Micro> {
        let cfg = self.cfg;
        let seqs = self.next_sequences()?;
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let batch = rtd_batch(
            cfg,
            &refs,
            self.vocab,
            &mut rng_for(cfg.seed, Stream::LmMask, k),
            &self.device,
        )?;
        let mode = Mode::train(rng_for(cfg.seed, Stream::LmDropout, k).random::<u64>());
        let step = rtd_step_sampling(
            model,
            &batch,
            cfg.rtd.weight,
            &mode,
            &mut rng_for(cfg.seed, Stream::RtdSample, k),
        )?;
        let n = seqs.len() as f64;
        let (mlm, rtd) = (
            step.mlm.to_scalar::<f32>()? as f64,
            step.rtd.to_scalar::<f32>()? as f64,
        );
        let attended = step.replaced.len() as f64;
        let replaced = step.replaced.iter().sum::<f32>() as f64;
        let grads = (step.total * n)?.backward()?;
        Ok(Micro {
            grads,
            weight: n,
            values: vec![
                mlm,
                batch.masked.labels.len() as f64,
                batch.masked.tokens as f64,
                rtd,
                attended,
                replaced,
                n,
            ],
        })
    }
}

impl Objective for LanguageModelling<'_> {
    fn params(&self) -> Vec<(String, Var)> {
        self.model.vars()
    }

    fn values_per_micro(&self) -> usize {
        match self.cfg.objective {
            LmObjective::Rtd => 7,
            _ => 3,
        }
    }

    fn micro_batch(&mut self, step: usize, micro: usize) -> Result<Micro> {
        let cfg = self.cfg;
        let k = (step * cfg.grad_accum + micro) as u64;
        if let LmModel::Rtd(m) = self.model {
            return self.rtd_micro_batch(m, k);
        }
        // -- the next packed sequences, masked afresh
        let seqs = self.next_sequences()?;
        let refs: Vec<&Sequence> = seqs.iter().collect();
        let mut rng = rng_for(cfg.seed, Stream::LmMask, k);
        let batch = make_batch(cfg, &refs, self.vocab, &mut rng, &self.device)?;
        // -- forward, loss, backward: the loss summed over the predicted tokens, so that the
        //    update (divided by all micro-batches' predicted tokens) is the mean over the
        //    update's tokens, however they fall into micro-batches and ranks
        let mode = Mode::train(rng_for(cfg.seed, Stream::LmDropout, k).random::<u64>());
        let logits = lm_logits(self.model, &batch, &mode)?;
        let loss = cross_entropy(&logits, &batch.labels)?;
        let lv = loss.to_scalar::<f32>()? as f64;
        let predicted = batch.labels_vec.len() as f64;
        let grads = (loss * predicted)?.backward()?;
        Ok(Micro {
            grads,
            weight: predicted,
            values: vec![lv, predicted, batch.tokens as f64],
        })
    }

    fn skip_micro_batch(&mut self, _step: usize, _micro: usize) -> Result<()> {
        self.next_sequences()?;
        Ok(())
    }

    fn value_name(&self, _micro: usize, slot: usize) -> String {
        match slot {
            0 if self.cfg.objective == LmObjective::Rtd => "the generator's MLM loss".into(),
            0 => format!("the {}", self.name().to_uppercase()),
            1 => "the predicted-token count".into(),
            2 => "the token count".into(),
            3 => "the discriminator's RTD loss".into(),
            4 => "the attended-token count".into(),
            5 => "the replaced-token count".into(),
            _ => "the sequence count".into(),
        }
    }

    fn log(&mut self, u: &Update, values: &[f64]) -> Vec<serde_json::Value> {
        // The update's loss: the mean over its predicted tokens. RTD: what the update
        // optimises, each micro-batch's mean MLM + λ · mean BCE weighted by its sequences (as
        // the gradient is), both parts logged the same way.
        let per = self.values_per_micro();
        let rtd = per == 7;
        let (mut sum, mut predicted, mut tokens) = (0.0, 0.0, 0.0);
        let (mut mlm_w, mut rtd_w, mut seqs) = (0.0, 0.0, 0.0);
        let (mut attended, mut replaced) = (0.0, 0.0);
        for v in values.chunks(per) {
            sum += v[0] * v[1];
            predicted += v[1];
            tokens += v[2];
            if rtd {
                mlm_w += v[0] * v[6];
                rtd_w += v[3] * v[6];
                seqs += v[6];
                attended += v[4];
                replaced += v[5];
            }
        }
        let mean = |s: f64, n: f64| if n > 0.0 { s / n } else { 0.0 };
        let (mlm, rtd_loss) = if rtd {
            (mean(mlm_w, seqs), mean(rtd_w, seqs))
        } else {
            (mean(sum, predicted), 0.0)
        };
        let loss = if rtd {
            mlm + self.cfg.rtd.weight * rtd_loss
        } else {
            mlm
        };
        self.tokens_seen += tokens as u64;
        self.tokens_this_run += tokens as u64;
        self.running = Some(self.running.map_or(loss, |r| 0.95 * r + 0.05 * loss));
        let tps = self.tokens_this_run as f64 / u.run_s.max(1e-9);
        let mut out = Vec::new();
        if let Some(p) = self.probe_at_start.take() {
            out.push(probe_record(0, &p));
        }
        let mut rec = serde_json::json!({
            "step": u.step, "loss": loss, "lr": u.lr, "grad_norm": u.grad_norm,
            "tokens": self.tokens_seen, "tokens_per_s": tps, "elapsed_s": u.elapsed_s,
        });
        if rtd {
            rec["mlm_loss"] = mlm.into();
            rec["rtd_loss"] = rtd_loss.into();
            rec["replaced_fraction"] = mean(replaced, attended).into();
        }
        out.push(rec);
        out
    }

    fn status(&self, u: &Update) -> String {
        let tps = self.tokens_this_run as f64 / u.run_s.max(1e-9);
        format!(
            "{} loss {:.3} | {tps:.0} tok/s",
            self.name(),
            self.running.unwrap_or(f64::NAN)
        )
    }

    fn evaluate(&mut self, step: usize, log: &mut Log) -> Result<Option<String>> {
        let probe = match self.probe {
            Some(p) => {
                let r = p.evaluate(self.model.base())?;
                log.write(probe_record(step, &r))?;
                Some(format!(
                    "  probe accuracy {:.4} (majority {:.4})",
                    r.accuracy, r.majority_accuracy
                ))
            }
            None => None,
        };
        if self.dev.is_empty() {
            return Ok(probe.map(|p| format!("step {step:>6} {p}")));
        }
        let r = evaluate_lm(self.model, self.dev, self.cfg, self.vocab, self.cfg.seed)?;
        let mut rec = serde_json::json!({
            "step": step, "split": "dev", "loss": r.loss,
            "perplexity": r.perplexity, "accuracy": r.accuracy,
        });
        let mut line = format!(
            "step {step:>6}  held-out  loss {:.4}  perplexity {:.2}  masked-token accuracy {:.4}",
            r.loss, r.perplexity, r.accuracy
        );
        if let Some(d) = &r.rtd {
            rec["rtd"] = serde_json::to_value(d).unwrap_or_default();
            line.push_str(&format!(
                "  RTD accuracy {:.4} (all-original {:.4}, replaced recall {:.3})",
                d.accuracy, d.baseline_accuracy, d.replaced_recall
            ));
        }
        log.write(rec)?;
        self.last_eval = Some(r);
        if let Some(p) = probe {
            line.push_str(&p);
        }
        Ok(Some(line))
    }

    fn checkpoint(&self, out: &Path, opt: &AdamW, progress: &Progress) -> Result<()> {
        let state = PretrainState {
            progress: progress.clone(),
            cursor: self.cursor,
            tokens_seen: self.tokens_seen,
            config: self.cfg.clone(),
        };
        let save = |d: &Path| self.model.save(d, &d.join("generator"));
        write_checkpoint(out, save, opt, PRETRAIN_STATE_FILE, &state)
    }
}

/// The metrics.jsonl record of a probe score.
fn probe_record(step: usize, r: &ProbeResult) -> serde_json::Value {
    serde_json::json!({
        "step": step, "split": "probe", "accuracy": r.accuracy,
        "train_accuracy": r.train_accuracy, "majority_accuracy": r.majority_accuracy,
        "train_examples": r.train_examples, "dev_examples": r.dev_examples,
    })
}
