//! Training a tokenizer on a corpus with the `tokenizers` crate's trainers, written as a
//! `tokenizer.json` (plus `tokenizer_config.json` and `special_tokens_map.json`) that prism,
//! Python `tokenizers` and transformers' `AutoTokenizer` all load.
//!
//! - `wordpiece`: BERT's uncased pipeline (BERT normaliser with lower-casing, BERT
//!   pre-tokeniser, `[CLS] .. [SEP]`), also writing `vocab.txt`;
//! - `bpe`: RoBERTa's byte-level BPE (`<s> .. </s>`, never an unknown token);
//! - `unigram`: a SentencePiece-style unigram model over `▁`-marked words with BERT's specials.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::unigram::{Unigram, UnigramTrainerBuilder};
use tokenizers::models::wordpiece::{WordPiece, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::normalizers::unicode::NFKC;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, Tokenizer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    Wordpiece,
    Bpe,
    Unigram,
}

impl std::str::FromStr for TokenizerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "wordpiece" => Ok(Self::Wordpiece),
            "bpe" => Ok(Self::Bpe),
            "unigram" => Ok(Self::Unigram),
            other => Err(format!(
                "unknown tokenizer kind `{other}` (wordpiece, bpe, unigram)"
            )),
        }
    }
}

/// The special tokens of a kind: (pad, unk, cls, sep, mask), in vocabulary order for BERT;
/// RoBERTa's order is `<s> <pad> </s> <unk> <mask>` as in its released vocabulary.
struct Specials {
    pad: &'static str,
    unk: &'static str,
    cls: &'static str,
    sep: &'static str,
    mask: &'static str,
    order: Vec<&'static str>,
}

fn specials(kind: TokenizerKind, xlnet: bool) -> Specials {
    if xlnet {
        // XLNet's special ids: <unk> 0, <s> 1, </s> 2, <cls> 3, <sep> 4, <pad> 5, <mask> 6.
        return Specials {
            pad: "<pad>",
            unk: "<unk>",
            cls: "<cls>",
            sep: "<sep>",
            mask: "<mask>",
            order: vec!["<unk>", "<s>", "</s>", "<cls>", "<sep>", "<pad>", "<mask>"],
        };
    }
    match kind {
        TokenizerKind::Bpe => Specials {
            pad: "<pad>",
            unk: "<unk>",
            cls: "<s>",
            sep: "</s>",
            mask: "<mask>",
            order: vec!["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        },
        _ => Specials {
            pad: "[PAD]",
            unk: "[UNK]",
            cls: "[CLS]",
            sep: "[SEP]",
            mask: "[MASK]",
            order: vec!["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        },
    }
}

/// What `train_tokenizer` needs besides the files.
#[derive(Clone, Debug)]
pub struct TokenizerTrainConfig {
    pub kind: TokenizerKind,
    pub vocab_size: usize,
    pub min_frequency: u64,
    /// Lower-case (wordpiece and unigram; byte-level BPE keeps case, like RoBERTa).
    pub lowercase: bool,
    /// XLNet's special tokens and layout (`A <sep> <cls>`), for unigram models.
    pub xlnet: bool,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Train a tokenizer on the text files (every line is text; blank lines are skipped).
pub fn train_tokenizer(cfg: &TokenizerTrainConfig, files: &[PathBuf]) -> Result<Tokenizer> {
    if files.is_empty() {
        return Err(Error::Config("no training files for the tokenizer".into()));
    }
    for f in files {
        if !f.is_file() {
            return Err(Error::io(
                f,
                std::io::Error::new(std::io::ErrorKind::NotFound, "corpus file not found"),
            ));
        }
        // Fail with the file and line of bad bytes, not a bare "stream did not contain valid UTF-8".
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        if let Err(e) = std::str::from_utf8(&bytes) {
            let line = bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            return Err(Error::data(f, line, "(text)", "not valid UTF-8"));
        }
    }
    if cfg.xlnet && cfg.kind != TokenizerKind::Unigram {
        return Err(Error::Config(
            "XLNet tokenizers are unigram (SentencePiece-style) models".into(),
        ));
    }
    let sp = specials(cfg.kind, cfg.xlnet);
    let special_tokens: Vec<AddedToken> = sp
        .order
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.to_string_lossy().to_string())
        .collect();
    let first = &files[0];
    let (mut tk, mut trainer): (Tokenizer, TrainerWrapper) = match cfg.kind {
        TokenizerKind::Wordpiece => {
            let mut tk = Tokenizer::new(
                WordPiece::builder()
                    .unk_token(sp.unk.into())
                    .build()
                    .map_err(|e| tok_err(first, e))?,
            );
            tk.with_normalizer(Some(BertNormalizer::new(true, true, None, cfg.lowercase)))
                .map_err(|e| tok_err(first, e))?;
            tk.with_pre_tokenizer(Some(BertPreTokenizer));
            tk.with_decoder(Some(WordPieceDecoder::default()));
            let t = WordPieceTrainer::builder()
                .vocab_size(cfg.vocab_size)
                .min_frequency(cfg.min_frequency)
                .special_tokens(special_tokens)
                .show_progress(false)
                .build();
            (tk, t.into())
        }
        TokenizerKind::Bpe => {
            let mut tk = Tokenizer::new(BPE::default());
            tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
            tk.with_decoder(Some(ByteLevelDecoder::default()));
            let t = BpeTrainer::builder()
                .vocab_size(cfg.vocab_size)
                .min_frequency(cfg.min_frequency)
                .special_tokens(special_tokens)
                .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                .show_progress(false)
                .build();
            (tk, t.into())
        }
        TokenizerKind::Unigram => {
            let mut tk = Tokenizer::new(Unigram::default());
            if cfg.lowercase {
                tk.with_normalizer(Some(tokenizers::normalizers::Sequence::new(vec![
                    NFKC.into(),
                    tokenizers::normalizers::Lowercase.into(),
                ])))
                .map_err(|e| tok_err(first, e))?;
            } else {
                tk.with_normalizer(Some(NFKC))
                    .map_err(|e| tok_err(first, e))?;
            }
            tk.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
            tk.with_decoder(Some(Metaspace::new('▁', PrependScheme::Always, true)));
            let t = UnigramTrainerBuilder::default()
                .vocab_size(cfg.vocab_size as u32)
                .special_tokens(special_tokens)
                .unk_token(Some(sp.unk.to_string()))
                .show_progress(false)
                .build()
                .map_err(|e| Error::Config(format!("unigram trainer: {e}")))?;
            (tk, t.into())
        }
    };
    tk.train_from_files(&mut trainer, names)
        .map_err(|e| tok_err(first, format!("training the tokenizer: {e}")))?;
    let id = |t: &str| {
        tk.token_to_id(t)
            .ok_or_else(|| tok_err(first, format!("the trained vocabulary has no {t}")))
    };
    let (cls, sep) = (id(sp.cls)?, id(sp.sep)?);
    match cfg.kind {
        _ if cfg.xlnet => {
            let tp = tokenizers::processors::template::TemplateProcessing::builder()
                .try_single("$A:0 <sep>:0 <cls>:2")
                .and_then(|b| b.try_pair("$A:0 <sep>:0 $B:1 <sep>:1 <cls>:2"))
                .map_err(|e| tok_err(first, e))?
                .special_tokens(vec![("<sep>", sep), ("<cls>", cls)])
                .build()
                .map_err(|e| tok_err(first, e))?;
            tk.with_post_processor(Some(tp));
        }
        TokenizerKind::Bpe => {
            tk.with_post_processor(Some(
                RobertaProcessing::new((sp.sep.into(), sep), (sp.cls.into(), cls))
                    .trim_offsets(true)
                    .add_prefix_space(false),
            ));
        }
        _ => {
            tk.with_post_processor(Some(BertProcessing::new(
                (sp.sep.into(), sep),
                (sp.cls.into(), cls),
            )));
        }
    }
    Ok(tk)
}

/// Write `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` (and `vocab.txt`
/// for WordPiece) into `dir`.
pub fn save_trained_tokenizer(
    tk: &Tokenizer,
    kind: TokenizerKind,
    lowercase: bool,
    model_max_length: usize,
    dir: &Path,
) -> Result<()> {
    save_trained_tokenizer_with(tk, kind, false, lowercase, model_max_length, dir)
}

/// [`save_trained_tokenizer`], for XLNet-convention tokenizers too (left padding).
pub fn save_trained_tokenizer_with(
    tk: &Tokenizer,
    kind: TokenizerKind,
    xlnet: bool,
    lowercase: bool,
    model_max_length: usize,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let json = dir.join("tokenizer.json");
    let text = tk.to_string(true).map_err(|e| tok_err(&json, e))?;
    prism_model::checkpoint::write_atomic(&json, text.as_bytes())?;
    let sp = specials(kind, xlnet);
    let mut map = serde_json::json!({
        "unk_token": sp.unk, "pad_token": sp.pad, "cls_token": sp.cls,
        "sep_token": sp.sep, "mask_token": sp.mask,
    });
    if kind == TokenizerKind::Bpe {
        map["bos_token"] = sp.cls.into();
        map["eos_token"] = sp.sep.into();
    }
    crate::checkpoint::write_json(&dir.join("special_tokens_map.json"), &map)?;
    let mut cfg = map.clone();
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast".into();
    cfg["model_max_length"] = model_max_length.into();
    cfg["do_lower_case"] = (lowercase && kind != TokenizerKind::Bpe).into();
    cfg["clean_up_tokenization_spaces"] = false.into();
    if xlnet {
        cfg["padding_side"] = "left".into();
    }
    crate::checkpoint::write_json(&dir.join("tokenizer_config.json"), &cfg)?;
    if kind == TokenizerKind::Wordpiece {
        let mut vocab: Vec<(String, u32)> = tk.get_vocab(true).into_iter().collect();
        vocab.sort_by_key(|(_, i)| *i);
        let mut text = String::new();
        for (t, _) in vocab {
            text.push_str(&t);
            text.push('\n');
        }
        prism_model::checkpoint::write_atomic(&dir.join("vocab.txt"), text.as_bytes())?;
    }
    Ok(())
}
