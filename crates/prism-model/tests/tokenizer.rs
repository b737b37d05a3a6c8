//! Tokenizers against transformers' fast tokenizers: ids, tokens, offsets and type ids, loaded
//! from `tokenizer.json` and from the legacy vocabulary files.

use crate::common;
use common::*;
use prism_model::PrismTokenizer;
use std::path::Path;

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    pair: Option<String>,
    ids: Vec<u32>,
    tokens: Vec<String>,
    offsets: Vec<(usize, usize)>,
    type_ids: Vec<u32>,
}

fn check(dir: &Path, expected: &str, check_offsets: bool) {
    let tok = PrismTokenizer::load(dir, 512).unwrap();
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join(expected)).unwrap()).unwrap();
    assert!(cases.len() >= 6);
    for c in cases {
        let e = tok.encode(&c.text, c.pair.as_deref()).unwrap();
        assert_eq!(e.ids, c.ids, "{}: ids", c.text);
        // transformers names an unknown piece by the unknown token; tokenizers keeps the
        // piece's text (the ids, checked above, agree).
        let unk = ["<unk>", "[UNK]"];
        assert_eq!(e.tokens.len(), c.tokens.len(), "{}: tokens", c.text);
        for (g, w) in e.tokens.iter().zip(&c.tokens) {
            assert!(
                g == w || unk.contains(&w.as_str()),
                "{}: token {g} vs {w}",
                c.text
            );
        }
        assert_eq!(e.type_ids, c.type_ids, "{}: type ids", c.text);
        if check_offsets {
            assert_eq!(e.offsets, c.offsets, "{}: offsets", c.text);
        }
    }
}

fn only(fixture: &str, files: &[&str]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(fixtures().join(fixture).join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

#[test]
fn bert_tokenizer_json_matches_transformers() {
    check(
        &fixtures().join("tiny-bert"),
        "tiny-bert_tokenizer_expected.json",
        true,
    );
}

#[test]
fn bert_vocab_txt_matches_transformers() {
    let d = only("tiny-bert", &["vocab.txt", "tokenizer_config.json"]);
    check(d.path(), "tiny-bert_tokenizer_expected.json", true);
}

#[test]
fn roberta_tokenizer_json_matches_transformers() {
    check(
        &fixtures().join("tiny-roberta"),
        "tiny-roberta_tokenizer_expected.json",
        true,
    );
}

#[test]
fn roberta_vocab_and_merges_match_transformers() {
    let d = only("tiny-roberta", &["vocab.json", "merges.txt"]);
    check(d.path(), "tiny-roberta_tokenizer_expected.json", true);
}

#[test]
fn long_input_is_truncated_and_flagged() {
    let tok = PrismTokenizer::load(&fixtures().join("tiny-bert"), 16).unwrap();
    let e = tok.encode(&"the movie ".repeat(50), None).unwrap();
    assert_eq!(e.ids.len(), 16);
    assert!(e.truncated);
    assert_eq!(e.tokens.last().unwrap(), "[SEP]");
}

#[test]
fn missing_tokenizer_files_are_an_error_naming_the_folder() {
    let d = tempfile::tempdir().unwrap();
    let e = PrismTokenizer::load(d.path(), 8).err().unwrap().to_string();
    assert!(
        e.contains(&d.path().display().to_string()) && e.contains("vocab.txt"),
        "{e}"
    );
}

/// Windows of long inputs equal transformers' `return_overflowing_tokens` windows (ids and
/// offsets) for a text alone, a text with a short pair (`only_first`) and QA's question with a
/// long context (`only_second`), on WordPiece and byte-level BPE.
#[test]
fn long_input_windows_match_transformers_overflowing_tokens() {
    #[derive(serde::Deserialize)]
    struct W {
        model: String,
        kind: String,
        text: String,
        pair: Option<String>,
        max_length: usize,
        stride: usize,
        ids: Vec<Vec<u32>>,
        offsets: Vec<Vec<(usize, usize)>>,
    }
    let cases: Vec<W> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("windows_expected.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let tok = PrismTokenizer::load(&fixtures().join(&c.model), c.max_length).unwrap();
        let got = match c.kind.as_str() {
            "qa" => tok
                .encode_windows(
                    &c.text,
                    c.pair.as_deref().unwrap(),
                    c.stride,
                    prism_model::tasks::question_budget(c.max_length, c.stride, None).unwrap(),
                )
                .unwrap(),
            _ => tok
                .encode_long(&c.text, c.pair.as_deref(), Some(c.stride))
                .unwrap(),
        };
        let what = format!("{} {}", c.model, c.kind);
        assert!(c.ids.len() > 5, "{what}: a long input");
        assert_eq!(got.len(), c.ids.len(), "{what}: windows");
        for (i, (g, (ids, offs))) in got.iter().zip(c.ids.iter().zip(&c.offsets)).enumerate() {
            assert_eq!(&g.ids, ids, "{what}: window {i} ids");
            let real: Vec<(usize, usize)> = g
                .offsets
                .iter()
                .zip(&g.special_tokens_mask)
                .map(|(o, &s)| if s == 1 { (0, 0) } else { *o })
                .collect();
            let want: Vec<(usize, usize)> = offs
                .iter()
                .zip(&g.special_tokens_mask)
                .map(|(o, &s)| if s == 1 { (0, 0) } else { *o })
                .collect();
            assert_eq!(real, want, "{what}: window {i} offsets");
        }
    }
    // An overlap that leaves no room is an error, not a panic.
    let tok = PrismTokenizer::load(&fixtures().join("tiny-bert"), 24).unwrap();
    let long = "the man walks into a bar and the woman walks into a bar ".repeat(8);
    let e = tok
        .encode_windows("who walks into the bar?", &long, 20, 10)
        .unwrap_err();
    assert!(e.to_string().contains("overlap 20"), "{e}");
}

/// Issue 22: a question of 61-124 tokens with 128-token windows overlapping by 64 panicked in
/// the tokenizer. The question is now cut to its budget (transformers' `max_query_length`) and
/// every window holds the same cut question and a context piece longer than the overlap.
#[test]
fn long_questions_are_cut_to_their_budget() {
    use prism_model::tasks::question_budget;
    let tok = PrismTokenizer::load(&fixtures().join("tiny-bert"), 128).unwrap();
    let budget = question_budget(128, 64, None).unwrap();
    assert_eq!(budget, 59);
    let context = "the man walks into a bar and the woman walks into a bar ".repeat(30);
    for words in [5usize, 40, 61, 90, 124, 400] {
        let question = "who walks ".repeat(words / 2) + "?";
        let q_tokens = tok.encode(&question, None).unwrap().ids.len() - 2;
        let windows = tok.encode_windows(&question, &context, 64, budget).unwrap();
        assert!(windows.len() > 1, "{words}: the context is windowed");
        let kept = q_tokens.min(budget);
        let first_q = windows[0].ids[1..1 + kept].to_vec();
        for (i, w) in windows.iter().enumerate() {
            assert!(
                w.ids.len() <= 128,
                "{words}: window {i} has {}",
                w.ids.len()
            );
            assert_eq!(
                w.ids[1..1 + kept],
                first_q[..],
                "{words}: window {i} question"
            );
            // [CLS] question [SEP] context [SEP]
            let context_len = w.ids.len() - kept - 3;
            if i + 1 < windows.len() {
                assert!(
                    context_len > 64,
                    "{words}: window {i} context {context_len}"
                );
            }
        }
    }
    // Values that leave no room for a question have no budget.
    assert_eq!(question_budget(24, 20, None), None);
    assert_eq!(question_budget(128, 64, Some(60)), None);
    assert_eq!(question_budget(384, 128, None), Some(64));
}

/// XLM-RoBERTa's Unigram tokenizer.json (make_fixtures.py --families) and DistilBERT's
/// WordPiece give transformers' ids, tokens, offsets and type ids.
#[test]
fn xlm_roberta_and_distilbert_tokenizers_match_transformers() {
    check(
        &fixtures().join("tiny-xlmr"),
        "tiny-xlmr_tokenizer_expected.json",
        true,
    );
    check(
        &fixtures().join("tiny-distilbert"),
        "tiny-distilbert_tokenizer_expected.json",
        true,
    );
}

#[test]
fn modernbert_tokenizer_matches_transformers() {
    check(
        &fixtures().join("tiny-modernbert"),
        "tiny-modernbert_tokenizer_expected.json",
        true,
    );
}

/// DeBERTa-v3's tokenizer from its tokenizer.json and from `spm.model` alone (transformers
/// builds the same pipeline from it): ids, tokens, offsets and type ids; and, for a model
/// whose spm.model carries a precompiled NFKC charsmap as the released checkpoints' do
/// (full-width letters, ligatures, tabs, quotes, accents), from spm.model alone.
#[test]
fn deberta_tokenizers_from_spm_model_match_transformers() {
    for name in ["tiny-deberta-v3", "tiny-deberta-v2"] {
        let expected = format!("{name}_tokenizer_expected.json");
        check(&fixtures().join(name), &expected, true);
        let spm_only = only(name, &["spm.model"]);
        check(spm_only.path(), &expected, true);
    }
    check(
        &fixtures().join("deberta-spm-nfkc"),
        "deberta-spm-nfkc_tokenizer_expected.json",
        true,
    );
    // [MASK] is a piece of the tiny model; the released models add it after the pieces.
    let tok = PrismTokenizer::load(&fixtures().join("deberta-spm-nfkc"), 64).unwrap();
    assert!(tok.token_to_id("[MASK]").is_some());
}
