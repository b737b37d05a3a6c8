//! The model being pre-trained with its objective's head, batches of either objective (masked
//! or permuted packed sequences), vocabulary logits at the predicted positions, held-out
//! evaluation, and a fresh model of the configured sizes.

use super::config::{Objective, PretrainConfig};
use super::corpus::Sequence;
use super::masking::{mask_batch, MaskedBatch, Vocab};
use super::plm::plm_batch;
use super::tokenizer::{save_trained_tokenizer_with, train_tokenizer, TokenizerTrainConfig};
use crate::error::{Error, Result};
use crate::rng::{rng_for, Stream};
use candle_core::{Device, Tensor};
use prism_model::heads::{ElectraPretraining, MaskedLm, PermutationLm};
use prism_model::models::xlnet::{XlnetConfig, XlnetExtras};
use prism_model::{BertConfig, EncoderInput, Mode, ModelConfig, PretrainedModel, PrismTokenizer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Held-out language-modelling figures (MLM or PLM).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct LmEval {
    /// The (generator's, for RTD) cross-entropy at the predicted positions.
    pub loss: f64,
    pub perplexity: f64,
    pub accuracy: f64,
    pub predicted_tokens: usize,
    /// RTD: the discriminator's figures on the attended tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtd: Option<super::rtd::RtdEval>,
}

/// The special ids that masking must know.
pub(crate) fn vocab_of(tok: &PrismTokenizer) -> Result<(Vocab, u32, u32)> {
    let find = |c: &[&str]| c.iter().find_map(|t| tok.token_to_id(t));
    let path = tok.path().to_path_buf();
    let missing = |what: &str| Error::File {
        path: path.clone(),
        msg: format!("the tokenizer has no {what} token"),
    };
    let mask_id = find(&["[MASK]", "<mask>"]).ok_or_else(|| missing("mask"))?;
    let cls = find(&["[CLS]", "<cls>", "<s>"]).ok_or_else(|| missing("[CLS]/<cls>/<s>"))?;
    let sep = find(&["[SEP]", "<sep>", "</s>"]).ok_or_else(|| missing("[SEP]/<sep>/</s>"))?;
    let mut special_ids: Vec<u32> = tok
        .inner()
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(&i, _)| i)
        .collect();
    for t in [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>", "<pad>", "<unk>", "<mask>",
        "<cls>", "<sep>", "<eod>", "<eop>",
    ] {
        if let Some(i) = tok.token_to_id(t) {
            special_ids.push(i);
        }
    }
    special_ids.sort_unstable();
    special_ids.dedup();
    let vocab = Vocab {
        mask_id,
        pad_id: tok.pad_id(),
        size: tok.vocab_size() as u32,
        special_ids,
    };
    Ok((vocab, cls, sep))
}

pub(crate) fn batch_input(
    mb: &MaskedBatch,
    device: &Device,
) -> Result<(EncoderInput, Tensor, Tensor)> {
    let ids = Tensor::from_vec(mb.input_ids.clone(), (mb.batch, mb.len), device)?;
    let mask = Tensor::from_vec(mb.attention_mask.clone(), (mb.batch, mb.len), device)?;
    let types = ids.zeros_like()?;
    let pos = Tensor::new(mb.positions.as_slice(), device)?;
    let labels = Tensor::new(mb.labels.as_slice(), device)?;
    Ok((
        EncoderInput::new(ids, mask).with_token_type_ids(types),
        pos,
        labels,
    ))
}

/// The model being pre-trained, with its objective's head.
pub enum LmModel {
    Mlm(MaskedLm),
    Plm(PermutationLm),
    /// The discriminator (the model being pre-trained) and its generator.
    Rtd(ElectraPretraining),
}

impl LmModel {
    /// `base` with the head of `cfg.objective`; RTD also gets its generator: the one saved in
    /// `generator` (a checkpoint's, or `rtd.generator`), else a fresh one drawn from
    /// `generator_seed` on the discriminator's embeddings.
    pub fn new(
        base: PretrainedModel,
        cfg: &PretrainConfig,
        generator: Option<&std::path::Path>,
        generator_seed: u64,
    ) -> Result<Self> {
        Ok(match cfg.objective {
            Objective::Mlm => LmModel::Mlm(MaskedLm::new(base)?),
            Objective::Plm => LmModel::Plm(PermutationLm::new(base)?),
            Objective::Rtd => {
                let g = match generator {
                    Some(dir) => ElectraPretraining::load_generator(dir, &base)?,
                    None => ElectraPretraining::fresh_generator(
                        &base,
                        cfg.rtd.generator_size,
                        generator_seed,
                    )?,
                };
                LmModel::Rtd(ElectraPretraining::new(base, g)?)
            }
        })
    }

    /// The model being pre-trained (RTD: the discriminator).
    pub fn base(&self) -> &PretrainedModel {
        match self {
            LmModel::Mlm(m) => &m.base,
            LmModel::Plm(m) => &m.base,
            LmModel::Rtd(m) => &m.discriminator,
        }
    }

    /// Every trainable parameter once, by name (RTD: the generator's own under `generator.`).
    pub fn vars(&self) -> Vec<(String, candle_core::Var)> {
        match self {
            LmModel::Rtd(m) => m.vars(),
            _ => self.base().params.vars(),
        }
    }

    /// Save the model (RTD: the discriminator) into `dir`, and RTD's generator into
    /// `generator_dir`.
    pub fn save(&self, dir: &std::path::Path, generator_dir: &std::path::Path) -> Result<()> {
        self.base().save(dir)?;
        if let LmModel::Rtd(m) = self {
            m.generator.base.save(generator_dir)?;
        }
        Ok(())
    }
}

/// A batch of either objective, ready for the model.
pub struct LmBatch {
    pub input: EncoderInput,
    /// PLM: the permutation mask and two-stream flag.
    pub extras: Option<XlnetExtras>,
    /// Flat positions of the predicted tokens, (P) u32, and their ids.
    pub positions: Tensor,
    pub labels: Tensor,
    pub labels_vec: Vec<u32>,
    /// Real tokens in the batch.
    pub tokens: usize,
}

/// Mask (MLM) or permute (PLM) a batch of packed sequences with `rng`.
pub fn make_batch(
    cfg: &PretrainConfig,
    seqs: &[&Sequence],
    vocab: &Vocab,
    rng: &mut rand::rngs::StdRng,
    device: &Device,
) -> Result<LmBatch> {
    match cfg.objective {
        // RTD's batches are made by `rtd::rtd_batch` (the generator's are MLM's).
        Objective::Mlm | Objective::Rtd => {
            let mb = mask_batch(seqs, &cfg.mlm, vocab, rng);
            let (input, positions, labels) = batch_input(&mb, device)?;
            Ok(LmBatch {
                input,
                extras: None,
                positions,
                labels,
                labels_vec: mb.labels,
                tokens: mb.tokens,
            })
        }
        Objective::Plm => {
            let pb = plm_batch(seqs, &cfg.plm, vocab.pad_id, rng);
            let (b, t) = (pb.batch, pb.len);
            let ids = Tensor::from_vec(pb.input_ids, (b, t), device)?;
            let mask = Tensor::from_vec(pb.attention_mask, (b, t), device)?;
            // One query-stream slot per position (transformers' identity target_mapping,
            // without materialising it).
            let extras = XlnetExtras {
                perm_mask: Some(Tensor::from_vec(pb.perm_mask, (b, t, t), device)?),
                target_mapping: None,
                mems: None,
                two_stream: true,
            };
            Ok(LmBatch {
                input: EncoderInput::new(ids, mask),
                extras: Some(extras),
                positions: Tensor::new(pb.positions.as_slice(), device)?,
                labels: Tensor::new(pb.labels.as_slice(), device)?,
                labels_vec: pb.labels,
                tokens: pb.tokens,
            })
        }
    }
}

/// Vocabulary logits at the batch's predicted positions, (P, V).
pub fn lm_logits(model: &LmModel, b: &LmBatch, mode: &Mode) -> Result<Tensor> {
    Ok(match (model, &b.extras) {
        (LmModel::Mlm(m), _) => m.logits_at(&b.input, &b.positions, mode)?,
        (LmModel::Rtd(m), _) => m.generator_logits(&b.input, &b.positions, mode)?,
        (LmModel::Plm(m), Some(x)) => m.logits_at(&b.input, x, &b.positions, mode)?,
        (LmModel::Plm(_), None) => {
            return Err(Error::Config(
                "a PLM batch needs its permutation mask".into(),
            ))
        }
    })
}

/// Held-out loss, perplexity and predicted-token accuracy, with masks (or permutations) fixed
/// by the seed, the same at every evaluation, so the curve compares like with like.
pub fn evaluate_lm(
    model: &LmModel,
    dev: &[Sequence],
    cfg: &PretrainConfig,
    vocab: &Vocab,
    seed: u64,
) -> Result<LmEval> {
    let device = model.base().params.device().clone();
    let (mut nll, mut correct, mut n) = (0f64, 0usize, 0usize);
    for (bi, chunk) in dev.chunks(cfg.eval_batch_size.max(1)).enumerate() {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let b = make_batch(
            cfg,
            &refs,
            vocab,
            &mut rng_for(seed, Stream::LmDevMask, bi as u64),
            &device,
        )?;
        let logits = lm_logits(model, &b, &Mode::Eval)?.detach(); // (P, V)
        let labels: Vec<i64> = b.labels_vec.iter().map(|&x| x as i64).collect();
        let rows: Vec<f32> = prism_model::ops::cross_entropy_rows(&logits, &labels)?.to_vec1()?;
        let argmax: Vec<u32> = logits.argmax(1)?.to_vec1()?;
        nll += rows.iter().map(|&x| x as f64).sum::<f64>();
        correct += argmax
            .iter()
            .zip(&b.labels_vec)
            .filter(|(a, b)| a == b)
            .count();
        n += b.labels_vec.len();
    }
    let loss = nll / n.max(1) as f64;
    let rtd = match model {
        LmModel::Rtd(m) => Some(super::rtd::evaluate_rtd(m, dev, cfg, vocab, seed)?),
        _ => None,
    };
    Ok(LmEval {
        loss,
        perplexity: loss.exp(),
        accuracy: correct as f64 / n.max(1) as f64,
        predicted_tokens: n,
        rtd,
    })
}

/// A fresh model for the config, with its tokenizer (trained now if asked).
pub(crate) fn fresh_model(
    cfg: &PretrainConfig,
    train_files: &[PathBuf],
    device: &Device,
) -> Result<PretrainedModel> {
    let m = &cfg.model;
    let tok_dir = match (&m.tokenizer, &m.train_tokenizer) {
        (Some(dir), _) => dir.clone(),
        (None, Some(t)) => {
            let dir = cfg.output.join("tokenizer");
            if !dir.join("tokenizer.json").is_file() {
                eprintln!(
                    "training a {:?} tokenizer ({} tokens) on {} files",
                    t.kind,
                    t.vocab_size,
                    train_files.len()
                );
                // JSON Lines: the tokenizer learns the `text` fields, not the JSON around them.
                let text_dir = cfg.output.join(".tokenizer-corpus");
                let text_files = if cfg.corpus.format == super::corpus::DocFormat::Jsonl {
                    super::corpus::jsonl_to_text_files(train_files, &text_dir)?
                } else {
                    train_files.to_vec()
                };
                let tk = train_tokenizer(
                    &TokenizerTrainConfig {
                        kind: t.kind,
                        vocab_size: t.vocab_size,
                        min_frequency: t.min_frequency,
                        lowercase: t.lowercase,
                        xlnet: m.model_type == "xlnet",
                    },
                    &text_files,
                );
                let _ = std::fs::remove_dir_all(&text_dir);
                let tk = tk?;
                save_trained_tokenizer_with(
                    &tk,
                    t.kind,
                    m.model_type == "xlnet",
                    t.lowercase,
                    cfg.corpus.max_length,
                    &dir,
                )?;
            }
            dir
        }
        (None, None) => return Err(Error::Config("[model] needs a tokenizer".into())),
    };
    if m.model_type == "xlnet" {
        let tok = PrismTokenizer::load(&tok_dir, cfg.corpus.max_length)?;
        let hidden = m.hidden_size.unwrap_or(256);
        let heads = m.num_attention_heads.unwrap_or(4);
        let config = XlnetConfig {
            model_type: "xlnet".into(),
            architectures: vec![],
            vocab_size: tok.vocab_size(),
            d_model: hidden,
            n_layer: m.num_hidden_layers.unwrap_or(4),
            n_head: heads,
            d_head: Some(hidden / heads.max(1)),
            d_inner: m.intermediate_size.unwrap_or(4 * hidden),
            ff_activation: "gelu".into(),
            untie_r: true,
            attn_type: "bi".into(),
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            dropout: m.dropout,
            mem_len: None,
            bi_data: false,
            clamp_len: -1,
            same_length: false,
            pad_token_id: Some(tok.pad_id()),
            extra: serde_json::Map::from_iter([("tie_word_embeddings".to_string(), true.into())]),
        };
        let mut model =
            PretrainedModel::fresh(ModelConfig::Xlnet(config), Some(tok), device, cfg.seed)?;
        model.dir = Some(tok_dir);
        return Ok(model);
    }
    let roberta = m.model_type == "roberta";
    // ELECTRA's discriminator is BERT-shaped (WordPiece, token types, no pooler).
    let max_pos = cfg.corpus.max_length + if roberta { 2 } else { 0 };
    let tok = PrismTokenizer::load(&tok_dir, cfg.corpus.max_length)?;
    let hidden = m.hidden_size.unwrap_or(256);
    let mut extra = serde_json::Map::new();
    extra.insert("tie_word_embeddings".into(), true.into());
    if roberta {
        for (k, t) in [("bos_token_id", "<s>"), ("eos_token_id", "</s>")] {
            if let Some(i) = tok.token_to_id(t) {
                extra.insert(k.into(), i.into());
            }
        }
    }
    let config = BertConfig {
        model_type: m.model_type.clone(),
        architectures: vec![],
        vocab_size: tok.vocab_size(),
        hidden_size: hidden,
        num_hidden_layers: m.num_hidden_layers.unwrap_or(4),
        num_attention_heads: m.num_attention_heads.unwrap_or(4),
        intermediate_size: m.intermediate_size.unwrap_or(4 * hidden),
        hidden_act: "gelu".into(),
        hidden_dropout_prob: m.dropout,
        attention_probs_dropout_prob: m.dropout,
        max_position_embeddings: max_pos,
        type_vocab_size: if roberta { 1 } else { 2 },
        initializer_range: 0.02,
        layer_norm_eps: if roberta { 1e-5 } else { 1e-12 },
        pad_token_id: Some(tok.pad_id()),
        position_embedding_type: "absolute".into(),
        // transformers' ElectraConfig defaults `embedding_size` to 128: write it.
        embedding_size: (m.model_type == "electra").then_some(hidden),
        extra,
    };
    let mut model = PretrainedModel::fresh(ModelConfig::Bert(config), Some(tok), device, cfg.seed)?;
    model.dir = Some(tok_dir);
    Ok(model)
}
