//! Property-based fuzzing of every file a user hands prism-model: `config.json`,
//! `model.safetensors` (its header above all), `tokenizer.json`, `spm.model` and `prism.json`,
//! each mutated from a real fixture (bytes flipped, inserted, deleted, the file cut). The
//! property: no panic, and an error names the file. `PRISM_FUZZ_CASES` sets the cases per
//! parser (default 48: seconds in `cargo test`; `PRISM_FUZZ_CASES=5000` for a longer run).

use crate::common::fixtures;
use proptest::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

fn cases() -> u32 {
    std::env::var("PRISM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

/// One edit of a byte string.
#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Cut(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Edit::Flip(i, b)),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 1..12)
        )
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Cut),
    ]
}

/// Apply `edits` to `bytes`, positions taken modulo the length (within the first `window`
/// bytes when given: a safetensors header).
fn mutate(bytes: &[u8], edits: &[Edit], window: Option<usize>) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in edits {
        let n = window.unwrap_or(b.len()).min(b.len()).max(1);
        match e {
            Edit::Flip(i, x) => {
                if !b.is_empty() {
                    let i = i % n;
                    b[i] ^= x;
                }
            }
            Edit::Insert(i, v) => {
                let i = i % (n + 1).min(b.len() + 1);
                b.splice(i..i, v.iter().copied());
            }
            Edit::Delete(i, k) => {
                if !b.is_empty() {
                    let i = i % n;
                    let j = (i + k).min(b.len());
                    b.drain(i..j);
                }
            }
            Edit::Cut(i) => {
                let i = i % (b.len() + 1);
                b.truncate(i);
            }
        }
    }
    b
}

/// Copy fixture `name` into a temporary folder, replace `file` by `bytes`, run `load` on the
/// folder: it must not panic, and an error must name the folder or the file.
fn check<T, E: std::fmt::Display>(
    name: &str,
    file: &str,
    bytes: &[u8],
    load: impl Fn(&Path) -> Result<T, E>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let f = f.unwrap().path();
        if f.is_file() {
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(dir.path().join(file), bytes).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| load(dir.path())));
    prop_assert!(r.is_ok(), "{name}/{file}: the parser panicked");
    if let Ok(Err(e)) = r {
        let msg = e.to_string();
        let folder = dir.path().display().to_string();
        prop_assert!(
            msg.contains(&folder) || msg.contains(file),
            "{name}/{file}: the error does not name the file: {msg}"
        );
    }
    Ok(())
}

fn config(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name).join("config.json")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn config_json(fixture in prop::sample::select(vec!["tiny-bert", "tiny-deberta-v3", "tiny-modernbert", "tiny-distilbert", "tiny-xlnet"]),
                   edits in proptest::collection::vec(edit(), 1..6)) {
        let bytes = mutate(&config(fixture), &edits, None);
        check(fixture, "config.json", &bytes, |d| prism_model::ModelConfig::from_file(&d.join("config.json")))?;
    }

    #[test]
    fn safetensors_header(edits in proptest::collection::vec(edit(), 1..4)) {
        let raw = std::fs::read(fixtures().join("tiny-bert").join("model.safetensors")).unwrap();
        // The 8-byte length and the JSON header hold nearly every way to go wrong.
        let bytes = mutate(&raw, &edits, Some(600));
        check("tiny-bert", "model.safetensors", &bytes, |d| {
            prism_model::PretrainedModel::load(d, &candle_core::Device::Cpu)
        })?;
    }

    #[test]
    fn tokenizer_json(edits in proptest::collection::vec(edit(), 1..6)) {
        let raw = std::fs::read(fixtures().join("tiny-bert").join("tokenizer.json")).unwrap();
        let bytes = mutate(&raw, &edits, None);
        check("tiny-bert", "tokenizer.json", &bytes, |d| prism_model::PrismTokenizer::load(d, 64))?;
    }

    #[test]
    fn spm_model(edits in proptest::collection::vec(edit(), 1..6)) {
        let raw = std::fs::read(fixtures().join("tiny-deberta-v3").join("spm.model")).unwrap();
        let bytes = mutate(&raw, &edits, None);
        check("tiny-deberta-v3", "spm.model", &bytes, |d| {
            prism_model::PrismTokenizer::from_sentencepiece(&d.join("spm.model"), 64)
        })?;
    }

    #[test]
    fn prism_json(edits in proptest::collection::vec(edit(), 1..6)) {
        let raw = std::fs::read(fixtures().join("tiny-bert-cls").join("prism.json")).unwrap();
        let bytes = mutate(&raw, &edits, None);
        check("tiny-bert-cls", "prism.json", &bytes, |d| {
            prism_model::tasks::MultiTaskModel::load(d, &candle_core::Device::Cpu)
        })?;
    }
}
