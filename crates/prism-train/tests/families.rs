//! The other encoder families through the training loop: every task kind fine-tunes on each
//! (finite dev scores, every parameter updated), and each task exports as the family's own
//! transformers class and reads back with the same predictions.

use candle_core::Device;
use prism_model::tasks::MultiTaskModel;
use prism_train::config::TrainConfig;
use prism_train::tasks::Evaluate;
use prism_train::trainer::{train, RunOptions};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn config(model: &str, out: &Path) -> TrainConfig {
    let f = fixtures();
    let d = f.join("data");
    let text = format!(
        r#"
model = "{model}"
output = "{out}"
seed = 3
steps = 8
batch_size = 4
lr = 3e-3
eval_every = 8
checkpoint_every = 8

[[task]]
name = "sentiment"
kind = "classification"
train = "{d}/sentiment.train.jsonl"
dev = "{d}/sentiment.dev.jsonl"
max_length = 32

[[task]]
name = "nli"
kind = "pair_classification"
train = "{d}/nli.train.jsonl"
dev = "{d}/nli.dev.jsonl"
max_length = 48

[[task]]
name = "rating"
kind = "regression"
train = "{d}/rating.train.jsonl"
dev = "{d}/rating.dev.jsonl"
max_length = 32

[[task]]
name = "ner"
kind = "token"
train = "{d}/ner.train.jsonl"
dev = "{d}/ner.dev.jsonl"
max_length = 32

[[task]]
name = "qa"
kind = "qa"
train = "{d}/qa.train.json"
dev = "{d}/qa.train.json"
max_length = 32
doc_stride = 8
"#,
        model = f.join(model).display(),
        out = out.display(),
        d = d.display(),
    );
    let cfg: TrainConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

fn check_family(fixture: &str, class_prefix: &str, uses_pooler: bool) {
    let out = tempfile::tempdir().unwrap();
    let cfg = config(fixture, out.path());
    let before = MultiTaskModel::load(&fixtures().join(fixture), &Device::Cpu).unwrap();
    let report = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(report.completed, "{fixture}");
    assert_eq!(report.tasks.len(), 5);
    for (name, t) in &report.tasks {
        let dev = t
            .dev
            .as_ref()
            .unwrap_or_else(|| panic!("{fixture} {name}: no dev"));
        assert!(
            !dev.metrics.is_empty() && dev.metrics.values().all(|v| v.is_finite()),
            "{fixture} {name}: {:?}",
            dev.metrics
        );
    }
    // Every encoder parameter moved — but the pooler of a family whose sequence heads do not
    // read it (RoBERTa's: transformers builds its classes without one).
    let after = MultiTaskModel::load(&out.path().join("model"), &Device::Cpu).unwrap();
    let old: std::collections::HashMap<String, Vec<f32>> = before
        .base
        .params
        .vars()
        .into_iter()
        .map(|(k, v)| (k, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    for (k, v) in after.base.params.vars() {
        if let Some(o) = old.get(&k) {
            let n: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            if k.starts_with("pooler.") && !uses_pooler {
                assert!(n == *o, "{fixture}: {k} has no reader but changed");
                continue;
            }
            assert!(n != *o, "{fixture}: {k} was not updated");
        }
    }
    // Each task as the family's transformers class, read back with the same predictions.
    for (task, suffix) in [
        ("sentiment", "ForSequenceClassification"),
        ("ner", "ForTokenClassification"),
        ("qa", "ForQuestionAnswering"),
    ] {
        let ti = after.task_index(task).unwrap();
        let dir = out.path().join(format!("export-{task}"));
        let e = after.export_transformers(ti, &dir).unwrap();
        assert_eq!(
            e.architecture,
            format!("{class_prefix}{suffix}"),
            "{fixture}"
        );
        let back = MultiTaskModel::load(&dir, &Device::Cpu).unwrap();
        let (text, pair) = match task {
            "qa" => ("Who walks?", Some("The man walks into a bar.")),
            _ => ("The man walks into a bar.", None),
        };
        let a = serde_json::to_value(after.predict_text(ti, text, pair).unwrap()).unwrap();
        let b = serde_json::to_value(back.predict_text(0, text, pair).unwrap()).unwrap();
        assert_eq!(a, b, "{fixture} {task}");
    }
    let d = fixtures().join("data/sentiment.dev.jsonl");
    let ex = prism_train::data::read_file(
        &d,
        &Default::default(),
        prism_train::data::TargetKind::Label,
        false,
    )
    .unwrap();
    let r = after
        .evaluate(after.task_index("sentiment").unwrap(), &ex, &d, 8)
        .unwrap();
    assert_eq!(
        r.metrics["accuracy"],
        report.tasks["sentiment"].dev.as_ref().unwrap().metrics["accuracy"]
    );
}

#[test]
fn xlm_roberta_fine_tunes_every_task_kind_and_exports_its_classes() {
    check_family("tiny-xlmr", "XLMRoberta", false);
}

#[test]
fn electra_fine_tunes_every_task_kind_and_exports_its_classes() {
    check_family("tiny-electra", "Electra", false);
}

#[test]
fn distilbert_fine_tunes_every_task_kind_and_exports_its_classes() {
    check_family("tiny-distilbert", "DistilBert", false);
}

#[test]
fn modernbert_fine_tunes_every_task_kind_and_exports_its_classes() {
    check_family("tiny-modernbert", "ModernBert", false);
}

#[test]
fn deberta_fine_tunes_every_task_kind_and_exports_its_classes() {
    check_family("tiny-deberta-v3", "DebertaV2", false);
}
