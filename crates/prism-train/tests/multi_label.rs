//! Multi-label classification (`kind = "multi_label"`): the loss and its gradient equal
//! transformers' `BCEWithLogitsLoss` on its own multi-label models, a run trains and scores it
//! (micro/macro F1, per-label scores) with every parameter updated, and bad labels or
//! thresholds are errors naming the file, line and field.

use candle_core::Device;
use prism_model::tasks::{Example, MultiTaskModel, Target};
use prism_model::{Encoder, Mode};
use prism_train::config::TrainConfig;
use prism_train::loss::LossConfig;
use prism_train::tasks::{Evaluate, Supervised};
use prism_train::trainer::{train, RunOptions};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn bce_loss_and_head_gradient_equal_transformers() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("task_models_expected.json")).unwrap(),
    )
    .unwrap();
    for fam in ["bert", "roberta", "xlnet"] {
        let name = format!("{fam}-multilabel");
        let m = MultiTaskModel::load(&fixtures().join("task-models").join(&name), &Device::Cpu)
            .unwrap();
        let task = &m.tasks[0];
        let out_w = m
            .base
            .params
            .get("prism.heads.text-classification.out_proj.weight")
            .expect("the output layer");
        for case in expected[&name]["cases"].as_array().unwrap() {
            let labels: Vec<String> = case["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_str().unwrap().to_string())
                .collect();
            let mut ex = Example::unlabelled(
                prism_model::tasks::TaskKind::MultiLabel,
                case["text"].as_str().unwrap(),
                case["pair"].as_str(),
            );
            ex.target = Target::Labels(labels);
            let feats = task.featurize(&[ex], Path::new("case")).unwrap();
            let batch = task.batch(&[&feats[0]], &Device::Cpu).unwrap();
            let enc = m.base.encoder.forward(&batch.input, &Mode::Eval).unwrap();
            let loss = task
                .loss(&LossConfig::CrossEntropy, &enc, &batch, &Mode::Eval)
                .unwrap();
            let got = loss.to_scalar::<f32>().unwrap();
            let want = case["loss"].as_f64().unwrap() as f32;
            assert!((got - want).abs() < 1e-5, "{name}: loss {got} vs {want}");
            let grads = loss.backward().unwrap();
            let g: Vec<Vec<f32>> = grads.get(out_w.as_tensor()).unwrap().to_vec2().unwrap();
            let want: Vec<Vec<f64>> =
                serde_json::from_value(case["grad_out_weight"].clone()).unwrap();
            let scale = want.iter().flatten().fold(0f64, |a, b| a.max(b.abs()));
            for (i, (row, wrow)) in g.iter().zip(&want).enumerate() {
                for (j, (a, b)) in row.iter().zip(wrow).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() <= 1e-3 * scale,
                        "{name}: dL/dW[{i}][{j}] {a} vs torch {b}"
                    );
                }
            }
        }
    }
}

fn config(out: &Path, extra: &str) -> TrainConfig {
    let d = fixtures().join("data");
    toml::from_str(&format!(
        r#"
model = "{model}"
output = "{out}"
seed = 5
steps = 120
batch_size = 8
lr = 5e-3
warmup = 0
eval_every = 60

[[task]]
name = "topics"
kind = "multi_label"
train = "{d}/topics.train.jsonl"
dev = "{d}/topics.dev.jsonl"
max_length = 32
{extra}
"#,
        model = fixtures().join("tiny-bert").display(),
        out = out.display(),
        d = d.display(),
    ))
    .unwrap()
}

#[test]
fn a_multi_label_task_trains_scores_and_predicts_label_sets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&dir.path().join("run"), "threshold = 0.4");
    let report = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(report.completed);
    let m = MultiTaskModel::load(&report.model_dir, &Device::Cpu).unwrap();
    let spec = &m.tasks[0].spec;
    // Labels from the training lists, sorted; the threshold saved with the task.
    assert_eq!(spec.labels, ["politics", "sports", "tech"]);
    assert_eq!(spec.threshold, Some(0.4));
    let dev = prism_train::data::read_file(
        &fixtures().join("data/topics.dev.jsonl"),
        &Default::default(),
        spec.kind.target_kind(),
        false,
    )
    .unwrap();
    let r = m.evaluate(0, &dev, Path::new("dev"), 8).unwrap();
    for k in [
        "micro_f1",
        "macro_f1",
        "exact_match",
        "hamming_loss",
        "micro_precision",
    ] {
        assert!(r.metrics.contains_key(k), "{k} in {:?}", r.metrics);
    }
    let per = r.per_label.as_ref().expect("per-label scores");
    assert_eq!(
        per.keys().collect::<Vec<_>>(),
        ["politics", "sports", "tech"]
    );
    // Each dev label occurs in 3 of the 7 examples.
    assert!(per.values().all(|s| s.support == 3), "{per:?}");
    // The keyword task is learnt: better than predicting every label (micro F1 = 18/30 = 0.6)
    // or none (0).
    assert!(r.metrics["micro_f1"] > 0.8, "{:?}", r.metrics);
    // The training log and the report carry the task's metrics.
    let log = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    assert!(log.contains("\"micro_f1\""), "{log}");
    let html = std::fs::read_to_string(dir.path().join("run/report.html")).unwrap();
    assert!(html.contains("Per-label scores: topics"), "report.html");
    // A prediction names every label at or above the threshold.
    let p = serde_json::to_value(
        m.predict_text(
            0,
            "The striker scored twice. Parliament passed the new law.",
            None,
        )
        .unwrap(),
    )
    .unwrap();
    let probs = p["probabilities"].as_object().unwrap();
    let want: Vec<&str> = spec
        .labels
        .iter()
        .filter(|l| probs[l.as_str()].as_f64().unwrap() >= 0.4)
        .map(String::as_str)
        .collect();
    assert_eq!(p["labels"], serde_json::json!(want));
    assert!(
        want.contains(&"sports") && want.contains(&"politics"),
        "{p}"
    );
    // Every trainable parameter was updated (the pooler feeds the BERT head).
    let before =
        prism_model::PretrainedModel::load(&fixtures().join("tiny-bert"), &Device::Cpu).unwrap();
    for (name, var) in before.params.vars() {
        let a: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let Some(b) = m.base.params.get(&name) else {
            continue;
        };
        let b: Vec<f32> = b.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        assert_ne!(a, b, "{name} was not updated");
    }
}

#[test]
fn r_drop_and_smart_regularise_a_multi_label_task_with_the_bernoulli_divergence() {
    for adv in ["kind = \"r_drop\"", "kind = \"smart\""] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(
            &dir.path().join("run"),
            &format!("[task.adversarial]\n{adv}"),
        );
        cfg.steps = 4;
        let report = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
        assert!(report.completed);
        let log = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
        let logged = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["adversarial_loss"]
                    .as_f64()
                    .is_some_and(|x| x.is_finite() && x >= 0.0)
            })
            .count();
        assert_eq!(logged, 4, "{adv}: {log}");
    }
}

#[test]
fn bad_multi_label_data_and_thresholds_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"text\": \"a\", \"label\": [\"sports\"]}\n{\"text\": \"b\", \"label\": \"sports\"}\n",
    )
    .unwrap();
    let e = prism_train::data::read_file(
        &bad,
        &Default::default(),
        prism_model::tasks::TargetKind::LabelSet,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad.jsonl:2") && e.contains("label"), "{e}");
    assert!(e.contains("list of label names"), "{e}");
    // A dev label the task does not have names its file and line.
    let dev = dir.path().join("dev.jsonl");
    std::fs::write(
        &dev,
        "{\"text\": \"a\", \"label\": [\"sports\"]}\n{\"text\": \"b\", \"label\": [\"weather\"]}\n",
    )
    .unwrap();
    let mut cfg = config(&dir.path().join("run"), "");
    cfg.tasks[0].dev = Some(dev);
    let e = train(&cfg, &Device::Cpu, &RunOptions::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("dev.jsonl:2") && e.contains("weather"), "{e}");
    for (t, says) in [("threshold = 1.5", "strictly between 0 and 1")] {
        let cfg = config(&dir.path().join("run2"), t);
        let e = train(&cfg, &Device::Cpu, &RunOptions::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains(says), "{e}");
    }
    let mut cfg = config(&dir.path().join("run3"), "");
    cfg.tasks[0].kind = prism_model::tasks::TaskKind::Classification;
    cfg.tasks[0].threshold = Some(0.3);
    cfg.tasks[0].train = Some(fixtures().join("data/sentiment.train.jsonl"));
    cfg.tasks[0].dev = None;
    let e = train(&cfg, &Device::Cpu, &RunOptions::default())
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("multi-label tasks only"), "{e}");
}
