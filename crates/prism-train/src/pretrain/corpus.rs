//! Corpus streaming for pre-training: plain text files are read line by line, tokenised on the
//! fly by a background thread and packed into sequences of `max_length` tokens in RoBERTa's
//! FULL-SENTENCES style (`[CLS] tokens... [SEP]`, running on across sentence and document
//! boundaries, with a separator between documents). The corpus is never held in memory: the
//! worker stays a bounded channel ahead of the trainer.
//!
//! Order and resume: each epoch visits the files in a seeded order and shuffles the packed
//! sequences within a buffer, so the stream is a pure function of (files, tokenizer, seed); the
//! trainer's position is (epoch, sequences taken), and a resumed stream skips to it.

use crate::data::Cursor;
use crate::error::{Error, Result};
use crate::rng::{rng_for, Stream};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use tokenizers::Tokenizer;

/// How documents are delimited in the text files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocFormat {
    /// Each file is one document.
    #[default]
    File,
    /// Each non-blank line is one document.
    Line,
    /// Documents are separated by blank lines.
    BlankLine,
    /// JSON Lines (a labelled data set's file): each record's `text` is one document, its
    /// labels are not read (domain- and task-adaptive pre-training on a task's own text).
    Jsonl,
}

/// One packed training sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    /// Whether each token begins a word (for whole-word masking); false for specials.
    pub word_start: Vec<bool>,
    /// `[CLS]`/`[SEP]` positions: never masked.
    pub special: Vec<bool>,
}

/// Packs a token stream into sequences.
pub struct Packer {
    max_len: usize,
    cls: u32,
    sep: u32,
    /// XLNet's layout `tokens... <sep> <cls>` instead of `[CLS] tokens... [SEP]`.
    pub cls_last: bool,
    body: Vec<(u32, bool, bool)>,
    pub out: Vec<Sequence>,
}

impl Packer {
    pub fn new(max_len: usize, cls: u32, sep: u32) -> Self {
        Self {
            max_len,
            cls,
            sep,
            cls_last: false,
            body: Vec::new(),
            out: Vec::new(),
        }
    }

    fn emit(&mut self) {
        while self.body.last().is_some_and(|t| t.2) {
            self.body.pop(); // a document separator at the very end: the closing [SEP] serves
        }
        if self.body.is_empty() {
            return;
        }
        let n = self.body.len() + 2;
        let mut s = Sequence {
            ids: Vec::with_capacity(n),
            word_start: Vec::with_capacity(n),
            special: Vec::with_capacity(n),
        };
        let (first, last) = if self.cls_last {
            (None, [self.sep, self.cls])
        } else {
            (Some(self.cls), [self.sep, u32::MAX])
        };
        if let Some(c) = first {
            s.ids.push(c);
            s.word_start.push(false);
            s.special.push(true);
        }
        for (id, ws, sp) in self.body.drain(..) {
            s.ids.push(id);
            s.word_start.push(ws);
            s.special.push(sp);
        }
        for id in last.into_iter().filter(|&i| i != u32::MAX) {
            s.ids.push(id);
            s.word_start.push(false);
            s.special.push(true);
        }
        self.out.push(s);
    }

    /// Add the tokens of one piece of text (ids with word-start flags).
    pub fn push_tokens(&mut self, ids: &[u32], word_start: &[bool]) {
        for (&id, &ws) in ids.iter().zip(word_start) {
            self.body.push((id, ws, false));
            if self.body.len() == self.max_len - 2 {
                self.emit();
            }
        }
    }

    /// A document ended: the next one follows after a separator.
    pub fn end_document(&mut self) {
        if !self.body.is_empty() && !self.body.last().is_some_and(|t| t.2) {
            self.body.push((self.sep, false, true));
            if self.body.len() == self.max_len - 2 {
                self.emit();
            }
        }
    }

    /// Emit what is left (the end of an epoch).
    pub fn finish(&mut self) {
        self.emit();
    }
}

/// Every regular file under the given files and folders, sorted, hidden files skipped.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|e| {
                    !e.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            entries.sort();
            for e in entries {
                walk(&e, out)?;
            }
            Ok(())
        } else if p.is_file() {
            out.push(p.to_path_buf());
            Ok(())
        } else {
            Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "corpus path not found"),
            ))
        }
    }
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out)?;
    }
    if out.is_empty() {
        return Err(Error::Config("the corpus has no files".into()));
    }
    Ok(out)
}

/// Tokenises text without specials or truncation, with word-start flags.
#[derive(Clone)]
pub struct TextEncoder {
    tk: Tokenizer,
}

impl TextEncoder {
    pub fn new(tk: &Tokenizer) -> Result<Self> {
        let mut tk = tk.clone();
        tk.with_truncation(None)
            .map_err(|e| Error::Config(format!("tokenizer: {e}")))?;
        tk.with_padding(None);
        Ok(Self { tk })
    }

    pub fn encode(&self, text: &str) -> std::result::Result<(Vec<u32>, Vec<bool>), String> {
        let enc = self.tk.encode(text, false).map_err(|e| e.to_string())?;
        let words = enc.get_word_ids();
        let mut starts = Vec::with_capacity(words.len());
        let mut prev: Option<u32> = None;
        for w in words {
            starts.push(w.is_none() || *w != prev);
            prev = *w;
        }
        Ok((enc.get_ids().to_vec(), starts))
    }
}

/// Tokenise one file into the packer, document by document.
/// The trimmed `text` of one JSON Lines record (`None` for a blank line); an error names the
/// file, line and field.
pub fn jsonl_text(line: &str, path: &Path, line_no: usize) -> Result<Option<String>> {
    let l = line.trim_start_matches('\u{feff}').trim();
    if l.is_empty() {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(l)
        .map_err(|e| Error::data(path, line_no, "(line)", format!("not a JSON object: {e}")))?;
    match v.get("text") {
        Some(serde_json::Value::String(t)) => Ok(Some(t.trim().to_string())),
        Some(other) => Err(Error::data(
            path,
            line_no,
            "text",
            format!("must be a string, found {other}"),
        )),
        None => Err(Error::data(path, line_no, "text", "missing")),
    }
}

/// The texts of JSON Lines files, one per line, written to `dir` (what a tokenizer trains on
/// when the corpus is `format = "jsonl"`, so it learns the text, not the JSON around it).
pub fn jsonl_to_text_files(files: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::with_capacity(files.len());
    for (k, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        let mut body = String::with_capacity(text.len() / 2);
        for (i, line) in text.lines().enumerate() {
            if let Some(t) = jsonl_text(line, f, i + 1)? {
                body.push_str(&t.replace(['\n', '\r'], " "));
                body.push('\n');
            }
        }
        let p = dir.join(format!("{k:04}.txt"));
        std::fs::write(&p, body).map_err(|e| Error::io(&p, e))?;
        out.push(p);
    }
    Ok(out)
}

/// Texts never packed (`corpus.exclude`: e.g. the dev and test texts of the task a model is
/// being adapted to), compared line by line after trimming.
pub fn excluded_texts(files: &[PathBuf]) -> Result<std::collections::HashSet<String>> {
    let mut set = std::collections::HashSet::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?;
        let jsonl = f.extension().is_some_and(|e| e == "jsonl");
        for (i, line) in text.lines().enumerate() {
            let t = if jsonl {
                jsonl_text(line, f, i + 1)?
            } else {
                Some(line.trim().to_string()).filter(|t| !t.is_empty())
            };
            if let Some(t) = t {
                set.insert(t);
            }
        }
    }
    Ok(set)
}

fn pack_file(
    path: &Path,
    format: DocFormat,
    exclude: &std::collections::HashSet<String>,
    enc: &TextEncoder,
    packer: &mut Packer,
) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = std::io::BufReader::with_capacity(1 << 16, f);
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| Error::data(path, i + 1, "(text)", e.to_string()))?;
        let record;
        let text = if format == DocFormat::Jsonl {
            match jsonl_text(&line, path, i + 1)? {
                Some(t) => {
                    record = t;
                    record.as_str()
                }
                None => continue,
            }
        } else {
            line.trim()
        };
        if exclude.contains(text) {
            continue;
        }
        if text.is_empty() {
            if format == DocFormat::BlankLine {
                packer.end_document();
            }
            continue;
        }
        let (ids, starts) = enc
            .encode(text)
            .map_err(|e| Error::data(path, i + 1, "(text)", e))?;
        packer.push_tokens(&ids, &starts);
        if matches!(format, DocFormat::Line | DocFormat::Jsonl) {
            packer.end_document();
        }
    }
    packer.end_document();
    Ok(())
}

/// What the stream needs to know to pack.
#[derive(Clone)]
pub struct PackSpec {
    pub files: Vec<PathBuf>,
    /// XLNet's layout (`<sep> <cls>` at the end).
    pub cls_last: bool,
    pub format: DocFormat,
    /// Texts skipped ([`excluded_texts`]).
    pub exclude: std::sync::Arc<std::collections::HashSet<String>>,
    pub max_len: usize,
    pub cls: u32,
    pub sep: u32,
    pub shuffle_buffer: usize,
    pub seed: u64,
}

/// Pack every file in order, once (the held-out set); at most `limit` sequences.
pub fn pack_all(spec: &PackSpec, enc: &TextEncoder, limit: usize) -> Result<Vec<Sequence>> {
    let mut packer = Packer::new(spec.max_len, spec.cls, spec.sep);
    packer.cls_last = spec.cls_last;
    for f in &spec.files {
        pack_file(f, spec.format, &spec.exclude, enc, &mut packer)?;
        if packer.out.len() >= limit {
            break;
        }
    }
    packer.finish();
    packer.out.truncate(limit);
    Ok(packer.out)
}

/// The background tokeniser: sequences in a deterministic order, each with the cursor just
/// after it.
pub struct CorpusStream {
    rx: Receiver<Result<(Sequence, Cursor)>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl CorpusStream {
    /// Start streaming at `start` (the cursor saved with a checkpoint, or the beginning).
    pub fn start(spec: PackSpec, enc: TextEncoder, start: Cursor) -> Self {
        let (tx, rx) = sync_channel::<Result<(Sequence, Cursor)>>(1024);
        let worker = std::thread::spawn(move || {
            let mut epoch = start.epoch;
            loop {
                let mut files = spec.files.clone();
                files.shuffle(&mut rng_for(spec.seed, Stream::CorpusFiles, epoch));
                let mut packer = Packer::new(spec.max_len, spec.cls, spec.sep);
                packer.cls_last = spec.cls_last;
                let mut pos = 0usize;
                let mut chunk = 0u64;
                let mut any = false;
                let mut fi = 0;
                while fi < files.len() || !packer.out.is_empty() {
                    // Fill the buffer, then shuffle and hand it out.
                    while fi < files.len() && packer.out.len() < spec.shuffle_buffer {
                        if let Err(e) =
                            pack_file(&files[fi], spec.format, &spec.exclude, &enc, &mut packer)
                        {
                            let _ = tx.send(Err(e));
                            return;
                        }
                        fi += 1;
                        if fi == files.len() {
                            packer.finish();
                        }
                    }
                    let mut buf: Vec<Sequence> = packer.out.drain(..).collect();
                    buf.shuffle(&mut rng_for(
                        spec.seed,
                        Stream::CorpusShuffle,
                        (epoch << 32) | chunk,
                    ));
                    chunk += 1;
                    for s in buf {
                        any = true;
                        pos += 1;
                        if epoch == start.epoch && pos <= start.pos {
                            continue; // already trained on before the interruption
                        }
                        if tx.send(Ok((s, Cursor { epoch, pos }))).is_err() {
                            return; // the trainer has gone
                        }
                    }
                }
                if !any {
                    let _ = tx.send(Err(Error::Config(
                        "the corpus produced no tokens (are the files empty?)".into(),
                    )));
                    return;
                }
                epoch += 1;
            }
        });
        Self {
            rx,
            worker: Some(worker),
        }
    }

    pub fn next_sequence(&mut self) -> Result<(Sequence, Cursor)> {
        match self.rx.recv() {
            Ok(r) => r,
            Err(_) => Err(Error::Config(
                "the corpus reader stopped unexpectedly".into(),
            )),
        }
    }
}

impl Drop for CorpusStream {
    fn drop(&mut self) {
        // Close the channel so a worker blocked on `send` returns, then wait for it.
        let (_, dead) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_full_sentences_across_documents() {
        let mut p = Packer::new(6, 100, 101); // 4 body tokens per sequence
        p.push_tokens(&[1, 2, 3], &[true, false, true]);
        p.end_document();
        p.push_tokens(&[4, 5, 6, 7, 8], &[true; 5]);
        p.end_document();
        p.finish();
        let ids: Vec<Vec<u32>> = p.out.iter().map(|s| s.ids.clone()).collect();
        assert_eq!(
            ids,
            vec![
                vec![100, 1, 2, 3, 101],
                vec![100, 4, 5, 6, 7, 101],
                vec![100, 8, 101]
            ]
        );
        assert_eq!(p.out[0].special, vec![true, false, false, false, true]);
        assert_eq!(p.out[0].word_start, vec![false, true, false, true, false]);
        // A document boundary inside a sequence keeps its separator.
        let mut p = Packer::new(8, 100, 101);
        p.push_tokens(&[1, 2], &[true, true]);
        p.end_document();
        p.push_tokens(&[3], &[true]);
        p.finish();
        assert_eq!(p.out[0].ids, vec![100, 1, 2, 101, 3, 101]);
        assert_eq!(
            p.out[0].special,
            vec![true, false, false, true, false, true]
        );
    }
}
