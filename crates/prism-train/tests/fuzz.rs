//! Property-based fuzzing of every file a user hands prism-train: JSONL, CSV and TSV data,
//! SQuAD JSON, fine-tuning and pre-training TOML configs, and a checkpoint's run state, each
//! mutated from a real file (bytes flipped, inserted, deleted, the file cut). The property: no
//! panic, and an error names the file. `PRISM_FUZZ_CASES` sets the cases per parser (default
//! 48; e.g. 5000 for a longer run).

use proptest::prelude::*;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn cases() -> u32 {
    std::env::var("PRISM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

#[derive(Clone, Debug)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Cut(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    // Inserted bytes lean towards the characters the formats give meaning to.
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"\"\\,\t\n\r{}[]:=#' \xef\xbb\xbf0.-e".to_vec()),
    ];
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), proptest::collection::vec(byte, 1..8))
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<usize>(), 1usize..30).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Cut),
    ]
}

fn mutate(bytes: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for e in edits {
        let n = b.len().max(1);
        match e {
            Edit::Flip(i, x) if !b.is_empty() => b[i % n] ^= x,
            Edit::Insert(i, v) => {
                let i = i % (b.len() + 1);
                b.splice(i..i, v.iter().copied());
            }
            Edit::Delete(i, k) if !b.is_empty() => {
                let i = i % n;
                let j = (i + k).min(b.len());
                b.drain(i..j);
            }
            Edit::Cut(i) => b.truncate(i % (b.len() + 1)),
            _ => {}
        }
    }
    b
}

/// Write `bytes` as `name` in a temporary folder and run `parse` on it: no panic, and an error
/// names the file.
fn check<T, E: std::fmt::Display>(
    name: &str,
    bytes: &[u8],
    parse: impl Fn(&Path) -> Result<T, E>,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| parse(&p)));
    prop_assert!(
        r.is_ok(),
        "{name}: the parser panicked on {:?}",
        String::from_utf8_lossy(bytes)
    );
    if let Ok(Err(e)) = r {
        let msg = e.to_string();
        prop_assert!(
            msg.contains(&*p.display().to_string()),
            "{name}: the error does not name the file: {msg}"
        );
    }
    Ok(())
}

fn data(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("data").join(name)).unwrap()
}

/// A CSV (or TSV) of the sentiment fixture, with quotes and commas in the texts.
fn delimited(sep: char) -> Vec<u8> {
    let mut s = format!("text{sep}label\n");
    for (t, l) in [
        ("\"A gorgeous, witty movie.\"", "positive"),
        ("\"He said \"\"no\"\".\"", "negative"),
        ("Plain text", "positive"),
    ] {
        let t = if sep == '\t' {
            t.replace('"', "")
        } else {
            t.to_string()
        };
        s.push_str(&format!("{t}{sep}{l}\n"));
    }
    s.into_bytes()
}

fn read(
    kind: prism_train::data::TargetKind,
    pair: bool,
) -> impl Fn(&Path) -> prism_train::Result<Vec<prism_train::data::Example>> {
    move |p: &Path| prism_train::data::read_file(p, &Default::default(), kind, pair)
}

const TRAIN_TOML: &str = r#"model = "tiny-bert"
output = "out"
steps = 10
lr = 2e-5
warmup = 0.1
max_grad_norm = 1.0

[[task]]
name = "sentiment"
kind = "classification"
train = "data/sentiment.train.jsonl"
labels = ["negative", "positive"]
max_length = 64

[task.adversarial]
kind = "pgd"
epsilon = 1.0
steps = 3
"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn jsonl_labels(edits in proptest::collection::vec(edit(), 1..6)) {
        use prism_train::data::TargetKind;
        let b = mutate(&data("sentiment.train.jsonl"), &edits);
        check("x.jsonl", &b, read(TargetKind::Label, false))?;
        let b = mutate(&data("nli.train.jsonl"), &edits);
        check("x.jsonl", &b, read(TargetKind::Label, true))?;
        let b = mutate(&data("rating.train.jsonl"), &edits);
        check("x.jsonl", &b, read(TargetKind::Value, false))?;
        let b = mutate(&data("ner.train.jsonl"), &edits);
        check("x.jsonl", &b, read(TargetKind::Tags, false))?;
    }

    #[test]
    fn csv_and_tsv(edits in proptest::collection::vec(edit(), 1..6)) {
        use prism_train::data::TargetKind;
        check("x.csv", &mutate(&delimited(','), &edits), read(TargetKind::Label, false))?;
        check("x.tsv", &mutate(&delimited('\t'), &edits), read(TargetKind::Label, false))?;
    }

    #[test]
    fn squad_json(edits in proptest::collection::vec(edit(), 1..6)) {
        use prism_train::data::TargetKind;
        let b = mutate(&data("qa.train.json"), &edits);
        check("x.json", &b, read(TargetKind::Answers, false))?;
    }

    #[test]
    fn train_toml(edits in proptest::collection::vec(edit(), 1..6)) {
        let b = mutate(TRAIN_TOML.as_bytes(), &edits);
        check("run.toml", &b, prism_train::config::TrainConfig::from_file)?;
    }

    #[test]
    fn pretrain_toml(edits in proptest::collection::vec(edit(), 1..6)) {
        let raw = std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/pretrain/brown_scratch.toml"),
        )
        .unwrap();
        let b = mutate(&raw, &edits);
        check("pre.toml", &b, prism_train::pretrain::PretrainConfig::from_file)?;
    }
}

/// A real checkpoint of a 2-update run of the tiny fixture model (made once).
fn checkpoint() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let f = fixtures();
        let d = f.join("data");
        let text = format!(
            "model = \"{}\"\noutput = \"{}\"\nsteps = 4\nbatch_size = 2\ncheckpoint_every = 2\n\n[[task]]\nname = \"sentiment\"\nkind = \"classification\"\ntrain = \"{}\"\nmax_length = 16\n",
            f.join("tiny-bert").display(),
            dir.path().join("run").display(),
            d.join("sentiment.train.jsonl").display(),
        );
        let cfg: prism_train::config::TrainConfig = toml::from_str(&text).unwrap();
        prism_train::trainer::train(
            &cfg,
            &candle_core::Device::Cpu,
            &prism_train::train_loop::RunOptions {
                stop_after: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        dir
    })
    .path()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// A damaged or edited run state whose manifest was rewritten to match (so the state's own
    /// parser and consistency checks are what is tested): no panic, an error naming the file.
    #[test]
    fn checkpoint_state(edits in proptest::collection::vec(edit(), 1..6)) {
        use prism_train::objective::{TrainerState, TRAINER_STATE_FILE};
        let src = checkpoint().join("run/checkpoint-last");
        let dir = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
        let state = dir.path().join(TRAINER_STATE_FILE);
        let b = mutate(&std::fs::read(&state).unwrap(), &edits);
        std::fs::write(&state, &b).unwrap();
        prism_train::checkpoint::write_manifest(dir.path()).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            prism_train::checkpoint::read_checkpoint::<TrainerState>(dir.path(), TRAINER_STATE_FILE, |_| true)
                .and_then(|r| {
                    prism_train::checkpoint::check_progress(dir.path(), TRAINER_STATE_FILE, &r.state.progress, 4)
                })
        }));
        prop_assert!(r.is_ok(), "the state reader panicked on {:?}", String::from_utf8_lossy(&b));
        if let Ok(Err(e)) = r {
            let msg = e.to_string();
            prop_assert!(msg.contains(&*state.display().to_string()), "the error does not name the file: {msg}");
        }
    }
}
