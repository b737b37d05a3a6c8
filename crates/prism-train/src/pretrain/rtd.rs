//! ELECTRA's replaced-token detection (`objective = "rtd"`, Clark et al. 2020): a small
//! generator is trained with MLM on the masked positions; a token is sampled from its
//! distribution at each of them (not its argmax); the discriminator reads the original sequence
//! with those samples in place and classifies every attended token as original or replaced (a
//! sample equal to the original counts as original). The loss is MLM + λ·RTD (λ = 50 by
//! default). The samples are discrete, so the discriminator's loss sends no gradient into the
//! generator; the embeddings both read are one set of parameters and receive both gradients,
//! as in ELECTRA.

use super::config::PretrainConfig;
use super::corpus::Sequence;
use super::lm::batch_input;
use super::masking::{mask_batch, MaskedBatch, Vocab};
use crate::error::{Error, Result};
use crate::loss::{binary_cross_entropy_with_logits, cross_entropy};
use crate::rng::{rng_for, Stream};
use candle_core::{Device, Tensor};
use prism_model::heads::ElectraPretraining;
use prism_model::{EncoderInput, Mode};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

fn d_generator_size() -> f64 {
    0.25
}
fn d_weight() -> f64 {
    50.0
}

/// `[rtd]`: the generator and the weight of the discriminator's loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtdConfig {
    /// The generator's width as a fraction of the discriminator's, in whole attention heads
    /// (ELECTRA: 1/4 to 1/3).
    #[serde(default = "d_generator_size")]
    pub generator_size: f64,
    /// λ, the weight of the discriminator's loss (ELECTRA: 50).
    #[serde(default = "d_weight")]
    pub weight: f64,
    /// Continue a generator saved earlier (an `ElectraForMaskedLM` folder) beside `model.from`
    /// (the discriminator); without it a fresh one is built on the discriminator's embeddings.
    #[serde(default)]
    pub generator: Option<PathBuf>,
}

impl Default for RtdConfig {
    fn default() -> Self {
        Self {
            generator_size: d_generator_size(),
            weight: d_weight(),
            generator: None,
        }
    }
}

impl RtdConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.generator_size > 0.0 && self.generator_size <= 1.0) {
            return Err(format!(
                "`rtd.generator_size` {} must be in (0, 1] (a fraction of the discriminator's width)",
                self.generator_size
            ));
        }
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return Err(format!(
                "`rtd.weight` {} must be a finite number above 0",
                self.weight
            ));
        }
        Ok(())
    }
}

/// One token per masked position, drawn from the softmax of the generator's logits (P, V) by
/// inverse-CDF sampling with `rng` (one uniform draw per position, so the draws are a function
/// of the seed).
pub fn sample_replacements(logits: &Tensor, rng: &mut rand::rngs::StdRng) -> Result<Vec<u32>> {
    let probs = prism_model::ops::softmax_last_dim(&logits.detach())?;
    let (p, v) = probs.dims2()?;
    let flat: Vec<f32> = probs.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(p);
    for row in flat.chunks(v) {
        let u: f64 = rng.random::<f64>();
        let total: f64 = row.iter().map(|&x| x as f64).sum();
        let target = u * total;
        let mut acc = 0.0f64;
        let mut pick = v - 1;
        for (j, &x) in row.iter().enumerate() {
            acc += x as f64;
            if acc > target {
                pick = j;
                break;
            }
        }
        out.push(pick as u32);
    }
    Ok(out)
}

/// The discriminator's input ids: `original` (B * T) with the flat `positions` set to
/// `sampled`; and the labels (B * T): 1 where the token now differs from the original.
pub fn corrupt(original: &[u32], positions: &[u32], sampled: &[u32]) -> (Vec<u32>, Vec<f32>) {
    let mut ids = original.to_vec();
    let mut replaced = vec![0f32; original.len()];
    for (&p, &s) in positions.iter().zip(sampled) {
        let p = p as usize;
        replaced[p] = (s != original[p]) as u8 as f32;
        ids[p] = s;
    }
    (ids, replaced)
}

/// A batch for replaced-token detection: the generator's masked input, the masked positions
/// and their original tokens, and the original ids (B * T) the discriminator's input is made
/// from.
pub struct RtdBatch {
    pub generator_input: EncoderInput,
    pub positions: Tensor,
    pub labels: Tensor,
    pub original: Vec<u32>,
    pub masked: MaskedBatch,
}

impl RtdBatch {
    /// From a masked batch and the unmasked ids it was made from (B * T, padded alike).
    pub fn new(masked: MaskedBatch, original: Vec<u32>, device: &Device) -> Result<Self> {
        let (generator_input, positions, labels) = batch_input(&masked, device)?;
        Ok(Self {
            generator_input,
            positions,
            labels,
            original,
            masked,
        })
    }
}

/// The parts of one replaced-token-detection step.
pub struct RtdStep {
    /// The generator's mean cross-entropy at the masked positions.
    pub mlm: Tensor,
    /// The discriminator's mean binary cross-entropy over the attended tokens.
    pub rtd: Tensor,
    /// `mlm + weight * rtd`.
    pub total: Tensor,
    /// The generator's logits at the masked positions, (P, V).
    pub generator_logits: Tensor,
    /// The discriminator's logits at the attended tokens, (A), and their labels.
    pub discriminator_logits: Tensor,
    pub replaced: Vec<f32>,
}

/// Both losses of a batch whose replacements are `sampled` (one per masked position): the
/// generator's MLM, the discriminator reading the corrupted sequence, and their weighted sum.
/// Training draws `sampled` with [`sample_replacements`] from the generator's logits (which
/// this recomputes: pass the logits of a first call when they are at hand, see
/// [`rtd_step_sampling`]); the parity test passes the fixture's.
pub fn rtd_step(
    model: &ElectraPretraining,
    batch: &RtdBatch,
    sampled: &[u32],
    weight: f64,
    mode: &Mode,
) -> Result<RtdStep> {
    let logits = model.generator_logits(&batch.generator_input, &batch.positions, mode)?;
    rtd_from_logits(model, batch, logits, sampled, weight, mode)
}

/// [`rtd_step`] with the replacements drawn from the generator's own logits of this step
/// (the generator runs once).
pub fn rtd_step_sampling(
    model: &ElectraPretraining,
    batch: &RtdBatch,
    weight: f64,
    mode: &Mode,
    rng: &mut rand::rngs::StdRng,
) -> Result<RtdStep> {
    let logits = model.generator_logits(&batch.generator_input, &batch.positions, mode)?;
    let sampled = sample_replacements(&logits, rng)?;
    rtd_from_logits(model, batch, logits, &sampled, weight, mode)
}

fn rtd_from_logits(
    model: &ElectraPretraining,
    batch: &RtdBatch,
    logits: Tensor,
    sampled: &[u32],
    weight: f64,
    mode: &Mode,
) -> Result<RtdStep> {
    let m = &batch.masked;
    if sampled.len() != m.positions.len() {
        return Err(Error::Config(format!(
            "{} replacements for {} masked positions",
            sampled.len(),
            m.positions.len()
        )));
    }
    let mlm = cross_entropy(&logits, &batch.labels)?;
    let (ids, replaced) = corrupt(&batch.original, &m.positions, sampled);
    let device = logits.device().clone();
    let (b, t) = (m.batch, m.len);
    let input = EncoderInput::new(
        Tensor::from_vec(ids, (b, t), &device)?,
        Tensor::from_vec(m.attention_mask.clone(), (b, t), &device)?,
    )
    .with_token_type_ids(Tensor::zeros((b, t), candle_core::DType::U32, &device)?);
    // The discriminator's dropout draws continue the step's generator after the generator's.
    let all = model.discriminator_logits(&input, mode)?; // (B, T)
    let attended: Vec<u32> = m
        .attention_mask
        .iter()
        .enumerate()
        .filter(|(_, &a)| a == 1)
        .map(|(i, _)| i as u32)
        .collect();
    let idx = Tensor::new(attended.as_slice(), &device)?;
    let d_logits = all.reshape(b * t)?.index_select(&idx, 0)?; // (A)
    let y: Vec<f32> = attended.iter().map(|&i| replaced[i as usize]).collect();
    let targets = Tensor::new(y.as_slice(), &device)?;
    let rtd = binary_cross_entropy_with_logits(&d_logits, &targets)?;
    let total = (&mlm + (&rtd * weight)?)?;
    Ok(RtdStep {
        mlm,
        rtd,
        total,
        generator_logits: logits,
        discriminator_logits: d_logits,
        replaced: y,
    })
}

/// Mask a batch of packed sequences (MLM's masking, `[mlm]`) for RTD, keeping the original ids.
pub fn rtd_batch(
    cfg: &PretrainConfig,
    seqs: &[&Sequence],
    vocab: &Vocab,
    rng: &mut rand::rngs::StdRng,
    device: &Device,
) -> Result<RtdBatch> {
    let masked = mask_batch(seqs, &cfg.mlm, vocab, rng);
    let t = masked.len;
    let mut original = vec![vocab.pad_id; masked.batch * t];
    for (bi, s) in seqs.iter().enumerate() {
        original[bi * t..bi * t + s.ids.len()].copy_from_slice(&s.ids);
    }
    RtdBatch::new(masked, original, device)
}

/// The discriminator's held-out figures, over the attended tokens of the held-out set with its
/// fixed masks and replacements drawn from the generator with a fixed seed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct RtdEval {
    /// Mean binary cross-entropy.
    pub loss: f64,
    /// Tokens classified right (replaced when the logit is above 0).
    pub accuracy: f64,
    /// The accuracy of calling every token original: what the discriminator must beat.
    pub baseline_accuracy: f64,
    /// Of the replaced tokens, the share found.
    pub replaced_recall: f64,
    /// Of the tokens called replaced, the share that were.
    pub replaced_precision: f64,
    pub tokens: usize,
}

/// [`RtdEval`] of `model` on `dev`; the masks are [`super::evaluate_lm`]'s (the same seed and
/// stream), the replacements come from `Stream::RtdDevSample`.
pub fn evaluate_rtd(
    model: &ElectraPretraining,
    dev: &[Sequence],
    cfg: &PretrainConfig,
    vocab: &Vocab,
    seed: u64,
) -> Result<RtdEval> {
    let device = model.discriminator.params.device().clone();
    let (mut bce, mut n, mut correct, mut original) = (0f64, 0usize, 0usize, 0usize);
    let (mut found, mut replaced, mut called) = (0usize, 0usize, 0usize);
    for (bi, chunk) in dev.chunks(cfg.eval_batch_size.max(1)).enumerate() {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let batch = rtd_batch(
            cfg,
            &refs,
            vocab,
            &mut rng_for(seed, Stream::LmDevMask, bi as u64),
            &device,
        )?;
        let step = rtd_step_sampling(
            model,
            &batch,
            cfg.rtd.weight,
            &Mode::Eval,
            &mut rng_for(seed, Stream::RtdDevSample, bi as u64),
        )?;
        let logits: Vec<f32> = step.discriminator_logits.detach().to_vec1()?;
        let k = logits.len();
        bce += step.rtd.to_scalar::<f32>()? as f64 * k as f64;
        n += k;
        for (&z, &y) in logits.iter().zip(&step.replaced) {
            let (is, says) = (y > 0.5, z > 0.0);
            correct += (is == says) as usize;
            original += (!is) as usize;
            replaced += is as usize;
            called += says as usize;
            found += (is && says) as usize;
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Ok(RtdEval {
        loss: bce / n.max(1) as f64,
        accuracy: ratio(correct, n),
        baseline_accuracy: ratio(original, n),
        replaced_recall: ratio(found, replaced),
        replaced_precision: ratio(found, called),
        tokens: n,
    })
}
