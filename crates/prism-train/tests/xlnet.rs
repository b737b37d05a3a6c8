//! An XLNet encoder trains through the same multi-task configs as BERT: sequence tasks use its
//! last-token summary, pair tasks its segments, and every parameter is updated.

use candle_core::Device;
use prism_train::config::TrainConfig;
use prism_model::tasks::MultiTaskModel;
use prism_train::trainer::{train, RunOptions};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn xlnet_fine_tunes_on_classification_and_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let d = fixtures().join("data");
    let text = format!(
        r#"
model = "{model}"
output = "{out}"
seed = 3
steps = 6
batch_size = 4
lr = 5e-3
eval_every = 3

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
"#,
        model = fixtures().join("tiny-xlnet").display(),
        out = dir.path().join("run").display(),
        d = d.display()
    );
    let cfg: TrainConfig = toml::from_str(&text).unwrap();
    let before = MultiTaskModel::new(
        prism_model::PretrainedModel::load(&fixtures().join("tiny-xlnet"), &Device::Cpu).unwrap(),
        vec![],
        0,
    )
    .unwrap();
    let report = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(report.completed);
    let log = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    for line in log.lines().filter(|l| l.contains("\"loss\"")) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["loss"].as_f64().unwrap().is_finite(), "{line}");
    }
    let after = MultiTaskModel::load(&report.model_dir, &Device::Cpu).unwrap();
    assert_eq!(after.base.config.model_type(), "xlnet");
    // Every encoder weight moved (mask_emb is only used by the two-stream objective).
    for (name, var) in before.base.params.vars() {
        if name == "mask_emb" {
            continue;
        }
        let a: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = after
            .base
            .params
            .get(&name)
            .unwrap()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_ne!(a, b, "{name} was not updated");
    }
    let p = after.predict_text(0, "a good movie", None).unwrap();
    assert!(matches!(p, prism_train::tasks::Prediction::Class { .. }));
}
