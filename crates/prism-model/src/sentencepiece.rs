//! SentencePiece models (`spiece.model`, any `*.model`): the protobuf is parsed with the
//! `sentencepiece-model` crate and rebuilt as a `tokenizers` pipeline the way transformers'
//! `SpmConverter` does: the model's precompiled normaliser, whitespace cleanup, `▁` word
//! marking, and a Unigram model (scores as log-probabilities) or a BPE model whose merges are
//! recovered from the vocabulary. Models with `<sep>` and `<cls>` get XLNet's conventions:
//! `A <sep> <cls>` / `A <sep> B <sep> <cls>` (type id 2 for `<cls>`), left padding, and
//! XLNetTokenizer's normalisation (quotes, accents stripped). Models with `[CLS]` and `[SEP]`
//! get DeBERTa-v2/v3's (transformers 5's `DebertaV2Tokenizer`): `[CLS] A [SEP]` /
//! `[CLS] A [SEP] B [SEP]` (type id 1 for B), the precompiled normaliser with the trailing
//! space stripped (or NFC and whitespace folding when the model has none), optional
//! lower-casing and punctuation splitting, and `[MASK]` added after the pieces when the model
//! lacks it (the released checkpoints' id 128000).

use crate::error::{Error, Result};
use sentencepiece_model::{ModelType, SentencePieceModel, Type};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{
    Precompiled, Replace, Sequence as NormSeq, Strip, StripAccents, NFKD,
};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

/// What the model file says beyond the pipeline.
#[derive(Clone, Debug)]
pub struct SpmInfo {
    /// XLNet's conventions apply (`<sep>`, `<cls>` at the end, left padding).
    pub xlnet: bool,
    /// DeBERTa's conventions apply (`[CLS]` ... `[SEP]`).
    pub deberta: bool,
    pub unigram: bool,
    pub pieces: usize,
}

fn err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// The settings of `tokenizer_config.json` that change a DeBERTa tokenizer built from its
/// `spm.model` (transformers' defaults: no lower-casing, no punctuation split, a prefix space).
#[derive(Clone, Debug)]
pub struct SpmOptions {
    pub do_lower_case: bool,
    pub split_by_punct: bool,
    pub add_prefix_space: bool,
}

impl Default for SpmOptions {
    fn default() -> Self {
        Self {
            do_lower_case: false,
            split_by_punct: false,
            add_prefix_space: true,
        }
    }
}

impl SpmOptions {
    /// Read from a folder's `tokenizer_config.json` (defaults when it is absent).
    pub fn from_folder(dir: &Path) -> Self {
        let v: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let flag = |k: &str, d: bool| v.get(k).and_then(|b| b.as_bool()).unwrap_or(d);
        Self {
            do_lower_case: flag("do_lower_case", false),
            split_by_punct: flag("split_by_punct", false),
            add_prefix_space: flag("add_prefix_space", true),
        }
    }
}

/// Build a tokenizer from a SentencePiece model file (default [`SpmOptions`]).
pub fn tokenizer_from_spm(path: &Path) -> Result<(Tokenizer, SpmInfo)> {
    tokenizer_from_spm_with(path, &SpmOptions::default())
}

/// Build a tokenizer from a SentencePiece model file with a folder's settings.
pub fn tokenizer_from_spm_with(path: &Path, opts: &SpmOptions) -> Result<(Tokenizer, SpmInfo)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let model = SentencePieceModel::from_slice(&bytes)
        .map_err(|e| err(path, format!("not a SentencePiece model: {e}")))?;
    let pieces = model.pieces();
    if pieces.is_empty() {
        return Err(err(path, "the model has no pieces"));
    }
    let trainer = model.trainer();
    let model_type = trainer
        .map(|t| t.model_type())
        .unwrap_or(ModelType::Unigram);
    let byte_fallback = trainer.is_some_and(|t| t.byte_fallback());
    let vocab: Vec<(String, f64)> = pieces
        .iter()
        .map(|p| (p.piece().to_string(), p.score() as f64))
        .collect();
    let unk_id = pieces.iter().position(|p| p.r#type() == Type::Unknown);
    let mut tk = match model_type {
        ModelType::Unigram => Tokenizer::new(
            Unigram::from(vocab.clone(), unk_id, byte_fallback)
                .map_err(|e| err(path, format!("unigram model: {e}")))?,
        ),
        ModelType::Bpe => {
            let ids: HashMap<String, u32> = vocab
                .iter()
                .enumerate()
                .map(|(i, (p, _))| (p.clone(), i as u32))
                .collect();
            // transformers' SentencePieceExtractor: every split of a piece into two pieces is a
            // merge, ranked by the merged piece's score (ties keep the piece order).
            let mut merges: Vec<(String, String, f64)> = Vec::new();
            for (piece, score) in &vocab {
                let mut local = Vec::new();
                for (i, _) in piece.char_indices().skip(1) {
                    let (l, r) = piece.split_at(i);
                    if let (Some(&li), Some(&ri)) = (ids.get(l), ids.get(r)) {
                        local.push((li, ri, l.to_string(), r.to_string()));
                    }
                }
                local.sort_by_key(|x| (x.0, x.1));
                merges.extend(local.into_iter().map(|(_, _, l, r)| (l, r, *score)));
            }
            merges.sort_by(|a, b| b.2.total_cmp(&a.2));
            let merges: Vec<(String, String)> =
                merges.into_iter().map(|(l, r, _)| (l, r)).collect();
            let vocab_map: tokenizers::models::bpe::Vocab = ids.into_iter().collect();
            let mut b = BPE::builder()
                .vocab_and_merges(vocab_map, merges)
                .fuse_unk(true)
                .byte_fallback(byte_fallback);
            if let Some(u) = unk_id {
                b = b.unk_token(vocab[u].0.clone());
            }
            Tokenizer::new(
                b.build()
                    .map_err(|e| err(path, format!("bpe model: {e}")))?,
            )
        }
        other => {
            return Err(err(
                path,
                format!(
                    "{} SentencePiece models are not supported (unigram, bpe)",
                    other.as_str_name()
                ),
            ))
        }
    };
    let has = |t: &str| vocab.iter().position(|(p, _)| p == t);
    let xlnet = has("<sep>").is_some() && has("<cls>").is_some();
    let deberta = !xlnet && has("[CLS]").is_some() && has("[SEP]").is_some();
    if deberta {
        return deberta_pipeline(path, tk, &model, opts, has("[MASK]").is_none()).map(|tk| {
            (
                tk,
                SpmInfo {
                    xlnet,
                    deberta,
                    unigram: model_type == ModelType::Unigram,
                    pieces: pieces.len(),
                },
            )
        });
    }
    // -- normaliser
    let norm = model.normalizer();
    let mut steps: Vec<NormalizerWrapper> = Vec::new();
    if xlnet {
        // XLNetTokenizer.preprocess_text: `` and '' are quotes; accents are stripped.
        steps.push(Replace::new("``", "\"").map_err(|e| err(path, e))?.into());
        steps.push(Replace::new("''", "\"").map_err(|e| err(path, e))?.into());
        steps.push(NFKD.into());
        steps.push(StripAccents.into());
    }
    if let Some(map) = norm
        .map(|n| n.precompiled_charsmap())
        .filter(|m| !m.is_empty())
    {
        steps.push(
            Precompiled::from(map)
                .map_err(|e| err(path, format!("precompiled normaliser: {e}")))?
                .into(),
        );
    }
    if norm.is_none_or(|n| n.remove_extra_whitespaces()) {
        steps.push(Strip::new(true, true).into());
        steps.push(
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()),
                " ",
            )
            .map_err(|e| err(path, e))?
            .into(),
        );
    }
    tk.with_normalizer(Some(NormSeq::new(steps)))
        .map_err(|e| err(path, e))?;
    let prepend = if norm.is_none_or(|n| n.add_dummy_prefix()) {
        PrependScheme::Always
    } else {
        PrependScheme::Never
    };
    tk.with_pre_tokenizer(Some(Metaspace::new('▁', prepend, true)));
    tk.with_decoder(Some(Metaspace::new('▁', prepend, true)));
    // -- control pieces are special tokens (never produced from ordinary text)
    let specials: Vec<AddedToken> = pieces
        .iter()
        .filter(|p| matches!(p.r#type(), Type::Control | Type::Unknown))
        .map(|p| AddedToken::from(p.piece().to_string(), true))
        .collect();
    tk.add_special_tokens(specials)
        .map_err(|e| err(path, format!("special tokens: {e}")))?;
    if xlnet {
        let (sep, cls) = (
            has("<sep>").unwrap_or(0) as u32,
            has("<cls>").unwrap_or(0) as u32,
        );
        let tp = TemplateProcessing::builder()
            .try_single("$A:0 <sep>:0 <cls>:2")
            .and_then(|b| b.try_pair("$A:0 <sep>:0 $B:1 <sep>:1 <cls>:2"))
            .map_err(|e| err(path, e))?
            .special_tokens(vec![("<sep>", sep), ("<cls>", cls)])
            .build()
            .map_err(|e| err(path, e))?;
        tk.with_post_processor(Some(tp));
    }
    Ok((
        tk,
        SpmInfo {
            xlnet,
            deberta,
            unigram: model_type == ModelType::Unigram,
            pieces: pieces.len(),
        },
    ))
}

/// transformers 5's `DebertaV2Tokenizer` around the model's pieces.
fn deberta_pipeline(
    path: &Path,
    mut tk: Tokenizer,
    model: &SentencePieceModel,
    opts: &SpmOptions,
    add_mask: bool,
) -> Result<Tokenizer> {
    use tokenizers::normalizers::replace::ReplacePattern;
    use tokenizers::normalizers::{Lowercase, NFC};
    use tokenizers::pre_tokenizers::punctuation::Punctuation;
    use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
    use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior};
    let mut steps: Vec<NormalizerWrapper> = Vec::new();
    if opts.do_lower_case {
        steps.push(Lowercase.into());
    }
    let charsmap = model
        .normalizer()
        .map(|n| n.precompiled_charsmap())
        .filter(|m| !m.is_empty());
    let regex = |p: &str| -> Result<NormalizerWrapper> {
        Ok(Replace::new(ReplacePattern::Regex(p.into()), " ")
            .map_err(|e| err(path, e))?
            .into())
    };
    match charsmap {
        Some(map) => {
            steps.push(
                Precompiled::from(map)
                    .map_err(|e| err(path, format!("precompiled normaliser: {e}")))?
                    .into(),
            );
            steps.push(Strip::new(false, true).into());
            steps.push(regex(" {2,}")?);
        }
        None => {
            steps.push(regex(r"\s{2,}|[\n\r\t]")?);
            steps.push(NFC.into());
            steps.push(Strip::new(false, true).into());
        }
    }
    tk.with_normalizer(Some(NormSeq::new(steps)))
        .map_err(|e| err(path, e))?;
    let prepend = if opts.add_prefix_space {
        PrependScheme::Always
    } else {
        PrependScheme::First
    };
    let mut pre: Vec<PreTokenizerWrapper> = Vec::new();
    if opts.split_by_punct {
        pre.push(Punctuation::new(SplitDelimiterBehavior::Isolated).into());
    }
    pre.push(Metaspace::new('▁', prepend, true).into());
    tk.with_pre_tokenizer(Some(PreSeq::new(pre)));
    tk.with_decoder(Some(Metaspace::new('▁', prepend, true)));
    let mut specials: Vec<AddedToken> = model
        .pieces()
        .iter()
        .filter(|p| matches!(p.r#type(), Type::Control | Type::Unknown))
        .map(|p| AddedToken::from(p.piece().to_string(), true))
        .collect();
    if add_mask {
        specials.push(AddedToken::from("[MASK]", true));
    }
    tk.add_special_tokens(specials)
        .map_err(|e| err(path, format!("special tokens: {e}")))?;
    let id = |t: &str| tk.token_to_id(t).unwrap_or(0);
    let (cls, sep) = (id("[CLS]"), id("[SEP]"));
    let tp = TemplateProcessing::builder()
        .try_single("[CLS]:0 $A:0 [SEP]:0")
        .and_then(|b| b.try_pair("[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1"))
        .map_err(|e| err(path, e))?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(|e| err(path, e))?;
    tk.with_post_processor(Some(tp));
    Ok(tk)
}
