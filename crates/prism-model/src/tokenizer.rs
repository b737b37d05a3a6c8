//! A thin wrapper over Hugging Face `tokenizers`: loads whatever a model folder has
//! (`tokenizer.json`, or BERT's `vocab.txt`, or RoBERTa's `vocab.json` + `merges.txt`) and
//! returns ids with character offsets, type ids and special-token marks.

use crate::error::{Error, Result};
use crate::models::EncoderInput;
use candle_core::{Device, Tensor};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

/// One tokenised input (a text or a text pair).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Encoded {
    pub tokens: Vec<String>,
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Character offsets `(start, end)` into the text the token came from (byte offsets are
    /// converted to chars by `tokenizers`); (0, 0) for special tokens.
    pub offsets: Vec<(usize, usize)>,
    /// Which sequence each token came from: 0, 1, or none for special tokens.
    pub sequence_ids: Vec<Option<usize>>,
    pub special_tokens_mask: Vec<u32>,
    /// Whether the input was cut to fit the model's maximum length.
    pub truncated: bool,
}

impl Encoded {
    fn from_encoding(enc: &tokenizers::Encoding, truncated: bool) -> Self {
        Encoded {
            tokens: enc.get_tokens().to_vec(),
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
            sequence_ids: enc.get_sequence_ids(),
            special_tokens_mask: enc.get_special_tokens_mask().to_vec(),
            truncated,
        }
    }
}

/// A long input's windows ([`PrismTokenizer::encode_long_windows`]).
#[derive(Clone, Debug)]
pub struct LongWindows {
    /// The text that was cut (0: the first, 1: the second); the other is whole in each window.
    pub cut: usize,
    /// Each window, and the index (among the cut text's tokens) where its piece starts.
    pub windows: Vec<(Encoded, usize)>,
}

/// The tokenizer of a model folder.
#[derive(Clone)]
pub struct PrismTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    pad_id: u32,
    max_len: usize,
    /// Pad batches on the left (XLNet's convention; `padding_side` in tokenizer_config.json).
    pad_left: bool,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// `do_lower_case` from `tokenizer_config.json`, defaulting to true as BERT's uncased models do.
fn lower_case(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v.get("do_lower_case").and_then(|b| b.as_bool()))
        .unwrap_or(true)
}

impl PrismTokenizer {
    /// Load the tokenizer in `dir`, truncating inputs to `max_len` tokens (specials included).
    pub fn load(dir: &Path, max_len: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab_txt = dir.join("vocab.txt");
        let (vocab_json, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        // XLNet's and ALBERT's `spiece.model`, DeBERTa's `spm.model`.
        let spiece = [dir.join("spiece.model"), dir.join("spm.model")]
            .into_iter()
            .find(|p| p.is_file())
            .unwrap_or_else(|| dir.join("spiece.model"));
        let mut spm_xlnet = false;
        let (inner, path) = if json.is_file() {
            // tokenizers 0.23 panics on some malformed files (a truncated decoder section):
            // that is an error naming the file here.
            let read = std::panic::catch_unwind(|| Tokenizer::from_file(&json));
            let tk = match read {
                Ok(r) => r.map_err(|e| tok_err(&json, e))?,
                Err(_) => {
                    return Err(tok_err(
                        &json,
                        "the tokenizers library failed on malformed data (not a valid \
                         tokenizer.json)",
                    ))
                }
            };
            (tk, json)
        } else if vocab_txt.is_file() {
            (
                Self::bert_from_vocab(&vocab_txt, lower_case(dir))?,
                vocab_txt,
            )
        } else if vocab_json.is_file() && merges.is_file() {
            (Self::roberta_from_bpe(&vocab_json, &merges)?, vocab_json)
        } else if spiece.is_file() {
            let (tk, info) = crate::sentencepiece::tokenizer_from_spm_with(
                &spiece,
                &crate::sentencepiece::SpmOptions::from_folder(dir),
            )?;
            spm_xlnet = info.xlnet;
            (tk, spiece)
        } else {
            return Err(Error::Tokenizer {
                path: dir.to_path_buf(),
                msg: "no tokenizer.json, vocab.txt, vocab.json + merges.txt, spiece.model or \
                      spm.model"
                    .into(),
            });
        };
        let mut tok = Self::from_tokenizer(inner, path, max_len)?;
        tok.pad_left = spm_xlnet || padding_side(dir).as_deref() == Some("left");
        Ok(tok)
    }

    /// A SentencePiece model file (`spiece.model` or any `*.model`), with XLNet's conventions
    /// when it has `<sep>` and `<cls>`.
    pub fn from_sentencepiece(path: &Path, max_len: usize) -> Result<Self> {
        let (tk, info) = crate::sentencepiece::tokenizer_from_spm(path)?;
        let mut tok = Self::from_tokenizer(tk, path.to_path_buf(), max_len)?;
        tok.pad_left = info.xlnet;
        Ok(tok)
    }

    /// Whether batches are padded on the left.
    pub fn pads_left(&self) -> bool {
        self.pad_left
    }

    /// Wrap an already-built `tokenizers::Tokenizer`.
    pub fn from_tokenizer(mut inner: Tokenizer, path: PathBuf, max_len: usize) -> Result<Self> {
        let pad_id = ["[PAD]", "<pad>", "<PAD>"]
            .iter()
            .find_map(|t| inner.token_to_id(t))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                ..Default::default()
            }))
            .map_err(|e| tok_err(&path, e))?;
        Ok(Self {
            inner,
            path,
            pad_id,
            max_len,
            pad_left: false,
        })
    }

    fn bert_from_vocab(vocab: &Path, lowercase: bool) -> Result<Tokenizer> {
        let model = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tok_err(vocab, e))?;
        let mut tk = Tokenizer::new(model);
        let id = |t: &str| {
            tk.token_to_id(t)
                .ok_or_else(|| tok_err(vocab, format!("vocabulary has no {t} token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        tk.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .map_err(|e| tok_err(vocab, e))?;
        tk.with_pre_tokenizer(Some(BertPreTokenizer));
        tk.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        tk.with_decoder(Some(WordPieceDecoder::default()));
        Ok(tk)
    }

    fn roberta_from_bpe(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
        let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| tok_err(vocab, e))?;
        let mut tk = Tokenizer::new(model);
        let id = |t: &str| {
            tk.token_to_id(t)
                .ok_or_else(|| tok_err(vocab, format!("vocabulary has no {t} token")))
        };
        let (cls, sep) = (id("<s>")?, id("</s>")?);
        tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tk.with_post_processor(Some(
            RobertaProcessing::new(("</s>".into(), sep), ("<s>".into(), cls))
                .trim_offsets(true)
                .add_prefix_space(false),
        ));
        tk.with_decoder(Some(ByteLevelDecoder::default()));
        Ok(tk)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// A copy that truncates to `max_len` tokens instead (at most the model's maximum).
    pub fn with_max_len(&self, max_len: usize) -> Result<Self> {
        Self::from_tokenizer(
            self.inner.clone(),
            self.path.clone(),
            max_len.min(self.max_len),
        )
    }

    /// Tokenise a text, or a text pair (NLI premise + hypothesis, QA question + context).
    pub fn encode(&self, text: &str, pair: Option<&str>) -> Result<Encoded> {
        let enc = match pair {
            Some(b) => self.inner.encode_char_offsets((text, b), true),
            None => self.inner.encode_char_offsets(text, true),
        }
        .map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Encoded::from_encoding(
            &enc,
            !enc.get_overflowing().is_empty(),
        ))
    }

    /// A text (or pair) as overlapping windows of at most `max_len` tokens each, special tokens
    /// in every window (see [`PrismTokenizer::encode_long_windows`]).
    pub fn encode_long(
        &self,
        text: &str,
        pair: Option<&str>,
        overlap: Option<usize>,
    ) -> Result<Vec<Encoded>> {
        Ok(self
            .encode_long_windows(text, pair, overlap)?
            .windows
            .into_iter()
            .map(|(e, _)| e)
            .collect())
    }

    /// A text (or pair) as overlapping windows: one window when it fits; else the longer text
    /// is cut into pieces whose consecutive windows share `overlap` tokens (default: half a
    /// window's room), the other text whole in each. When the other text leaves less than a
    /// quarter of the window for the cut one, windowing would make a window per few tokens:
    /// the input is then truncated as [`PrismTokenizer::encode`] does (`truncated` set).
    /// Offsets index into the original texts.
    pub fn encode_long_windows(
        &self,
        text: &str,
        pair: Option<&str>,
        overlap: Option<usize>,
    ) -> Result<LongWindows> {
        let first = self.encode(text, pair)?;
        if !first.truncated {
            return Ok(LongWindows {
                cut: 0,
                windows: vec![(first, 0)],
            });
        }
        match self.windows(text, pair, None, overlap, (self.max_len / 4).max(2), None)? {
            Some(w) => Ok(w),
            None => Ok(LongWindows {
                cut: 0,
                windows: vec![(first, 0)],
            }),
        }
    }

    /// `first` (and `second`) with one sequence (`cut`, or the longer) split into pieces of the
    /// room the other sequence and the special tokens leave in `max_len`, consecutive pieces
    /// sharing `overlap` tokens (default: half the room), each piece post-processed (special
    /// tokens, type ids) with the other sequence whole; `None` when the room is below
    /// `min_room`. The other sequence is first cut to `other_max` tokens when given (a QA
    /// question's budget). Done by hand because tokenizers 0.23.2 cuts a sequence to `max_length`
    /// before its truncation can window it (the overflow, and so every window after the first,
    /// is lost).
    fn windows(
        &self,
        first: &str,
        second: Option<&str>,
        cut: Option<usize>,
        overlap: Option<usize>,
        min_room: usize,
        other_max: Option<usize>,
    ) -> Result<Option<LongWindows>> {
        use tokenizers::PostProcessor;
        let mut tk = self.inner.clone();
        tk.with_truncation(None)
            .map_err(|e| Error::Encode(e.to_string()))?;
        // Raw pieces: encode() runs the post-processor even without special tokens (RoBERTa's
        // offset trimming), so the pieces come from a copy without one, and are processed once.
        let mut bare = tk.clone();
        bare.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        let raw = |t: &str| -> Result<tokenizers::Encoding> {
            bare.encode_char_offsets(t, false)
                .map_err(|e| Error::Encode(e.to_string()))
        };
        let a = raw(first)?;
        let b = second.map(raw).transpose()?;
        let added = tk
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(b.is_some()));
        let cut = cut.unwrap_or(match &b {
            Some(b) if b.get_ids().len() > a.get_ids().len() => 1,
            _ => 0,
        });
        let (mut long, mut other) = match (cut, b) {
            (1, Some(b)) => (b, Some(a)),
            (_, b) => (a, b),
        };
        if let (Some(o), Some(m)) = (other.as_mut(), other_max) {
            if o.get_ids().len() > m {
                o.truncate(m, 0, tokenizers::TruncationDirection::Right);
                o.take_overflowing();
            }
        }
        let other_len = other.as_ref().map_or(0, |o| o.get_ids().len());
        let room = self.max_len.saturating_sub(added + other_len);
        if room < min_room {
            return Ok(None);
        }
        let stride = overlap.unwrap_or(room / 2);
        if stride >= room {
            return Err(Error::Encode(format!(
                "window overlap {stride} must be below the {room} tokens a {}-token window \
                 leaves for the text (after {added} special tokens{})",
                self.max_len,
                if other_len > 0 {
                    format!(" and the other text's {other_len}")
                } else {
                    String::new()
                }
            )));
        }
        long.truncate(room, stride, tokenizers::TruncationDirection::Right);
        let rest = long.take_overflowing();
        let mut windows = Vec::with_capacity(rest.len() + 1);
        for (k, piece) in std::iter::once(long).chain(rest).enumerate() {
            let (x, y) = match (cut, &other) {
                (1, Some(o)) => (o.clone(), Some(piece)),
                (_, o) => (piece, o.clone()),
            };
            let enc = tk
                .post_process(x, y, true)
                .map_err(|e| Error::Encode(e.to_string()))?;
            windows.push((Encoded::from_encoding(&enc, false), k * (room - stride)));
        }
        Ok(Some(LongWindows { cut, windows }))
    }

    /// A text (or pair) whole, however long (for mapping windows back onto it).
    pub fn encode_untruncated(&self, text: &str, pair: Option<&str>) -> Result<Encoded> {
        let mut tk = self.inner.clone();
        tk.with_truncation(None)
            .map_err(|e| Error::Encode(e.to_string()))?;
        let enc = match pair {
            Some(b) => tk.encode_char_offsets((text, b), true),
            None => tk.encode_char_offsets(text, true),
        }
        .map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Encoded::from_encoding(&enc, false))
    }

    /// Question + context windows for extractive QA: the question is cut to `max_question`
    /// tokens (transformers' `max_query_length`) and the context into windows of at most
    /// `max_len` tokens (question included) that overlap by `stride` tokens, as transformers'
    /// `doc_stride`; offsets of context tokens index into `context`.
    pub fn encode_windows(
        &self,
        question: &str,
        context: &str,
        stride: usize,
        max_question: usize,
    ) -> Result<Vec<Encoded>> {
        let question_len = self
            .inner
            .encode_char_offsets(question, false)
            .map_err(|e| Error::Encode(e.to_string()))?
            .get_ids()
            .len();
        if question_len <= max_question {
            let whole = self.encode(question, Some(context))?;
            if !whole.truncated {
                return Ok(vec![whole]);
            }
        }
        match self.windows(
            question,
            Some(context),
            Some(1),
            Some(stride),
            2,
            Some(max_question),
        )? {
            Some(w) => Ok(w.windows.into_iter().map(|(e, _)| e).collect()),
            None => Err(Error::Encode(format!(
                "the question leaves no room for the context in a {}-token window (shorten \
                 it or raise max_length)",
                self.max_len
            ))),
        }
    }

    /// Tokenise pre-split words (token classification); also returns, per token, the index of
    /// the word it came from (`None` for special tokens).
    pub fn encode_words(&self, words: &[String]) -> Result<(Encoded, Vec<Option<u32>>)> {
        let enc = self
            .inner
            .encode_char_offsets(words, true)
            .map_err(|e| Error::Encode(e.to_string()))?;
        Ok((
            Encoded::from_encoding(&enc, !enc.get_overflowing().is_empty()),
            enc.get_word_ids().to_vec(),
        ))
    }

    /// Pad a batch to its longest member (on the right, or on the left for XLNet) and build
    /// the model input.
    ///
    /// # Shapes
    /// result tensors: (B, T) with T the longest encoding
    pub fn batch(&self, encs: &[Encoded], device: &Device) -> Result<EncoderInput> {
        if self.pad_left {
            batch_encodings_left(encs, self.pad_id, device)
        } else {
            batch_encodings(encs, self.pad_id, device)
        }
    }

    /// Write `tokenizer.json` (the format Python `tokenizers` and transformers load) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut tk = self.inner.clone();
        tk.with_truncation(None)
            .map_err(|e| tok_err(&self.path, e))?;
        let out = dir.join("tokenizer.json");
        tk.save(&out, true).map_err(|e| tok_err(&out, e))?;
        Ok(())
    }
}

/// `padding_side` from `tokenizer_config.json`.
fn padding_side(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| {
            v.get("padding_side")
                .and_then(|b| b.as_str())
                .map(String::from)
        })
}

/// Left-pad encodings (XLNet): the real tokens end every row, so the last one is `<cls>`.
pub fn batch_encodings_left(
    encs: &[Encoded],
    pad_id: u32,
    device: &Device,
) -> Result<EncoderInput> {
    let t = encs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let shifted: Vec<Encoded> = encs
        .iter()
        .map(|e| {
            let n = t - e.ids.len();
            let mut p = e.clone();
            p.ids = std::iter::repeat_n(pad_id, n)
                .chain(e.ids.iter().copied())
                .collect();
            p.type_ids = std::iter::repeat_n(0, n)
                .chain(e.type_ids.iter().copied())
                .collect();
            p
        })
        .collect();
    let mut input = batch_encodings(&shifted, pad_id, device)?;
    let (b, _) = input.input_ids.dims2()?;
    let mut mask = vec![0u32; b * t];
    for (i, e) in encs.iter().enumerate() {
        for j in t - e.ids.len()..t {
            mask[i * t + j] = 1;
        }
    }
    input.attention_mask = Tensor::from_vec(mask, (b, t), device)?;
    Ok(input)
}

/// Right-pad encodings with `pad_id` into (B, T) id, mask and type-id tensors.
pub fn batch_encodings(encs: &[Encoded], pad_id: u32, device: &Device) -> Result<EncoderInput> {
    if encs.is_empty() {
        return Err(Error::Input("empty batch".into()));
    }
    let t = encs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
    let b = encs.len();
    let mut ids = vec![pad_id; b * t];
    let mut mask = vec![0u32; b * t];
    let mut types = vec![0u32; b * t];
    for (i, e) in encs.iter().enumerate() {
        for (j, &id) in e.ids.iter().enumerate() {
            ids[i * t + j] = id;
            mask[i * t + j] = 1;
            types[i * t + j] = e.type_ids.get(j).copied().unwrap_or(0);
        }
    }
    Ok(EncoderInput::new(
        Tensor::from_vec(ids, (b, t), device)?,
        Tensor::from_vec(mask, (b, t), device)?,
    )
    .with_token_type_ids(Tensor::from_vec(types, (b, t), device)?))
}
