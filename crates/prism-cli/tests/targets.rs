//! Every target kind: train a tiny model with a regression, QA and token-classification head
//! (prism-train, a few steps), then explain each head's output with gradient and perturbation
//! methods.

use candle_core::Device;
use prism_explain::gradient::IntegratedGradients;
use prism_explain::{method_by_name, ExplainModel, Method, Target};
use prism_model::tasks::MultiTaskModel;
use prism_train::config::TrainConfig;
use prism_train::trainer::{train, RunOptions};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[test]
fn regression_qa_and_token_targets_are_explained() {
    let out = tempfile::tempdir().unwrap();
    let d = fixtures().join("data");
    let cfg: TrainConfig = toml::from_str(&format!(
        r#"
model = "{model}"
output = "{out}"
steps = 3
batch_size = 2
[[task]]
name = "rating"
kind = "regression"
train = "{d}/rating.train.jsonl"
max_length = 32
[[task]]
name = "qa"
kind = "qa"
train = "{d}/qa.train.json"
max_length = 48
doc_stride = 16
[[task]]
name = "ner"
kind = "token"
train = "{d}/ner.train.jsonl"
max_length = 32
"#,
        model = fixtures().join("tiny-bert").display(),
        out = out.path().display(),
        d = d.display()
    ))
    .unwrap();
    train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    let mt = MultiTaskModel::load(&out.path().join("model"), &Device::Cpu).unwrap();

    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("rating", "A gorgeous, witty movie.", None),
        (
            "qa",
            "Where did the cast stay?",
            Some("The cast stayed in Paris for two years."),
        ),
        ("ner", "Ada Lovelace walks into a bar in London", None),
    ];
    for (task, text, text2) in cases {
        let m = ExplainModel::new(&mt, Some(task)).unwrap();
        let x = m.encode(text, text2).unwrap();
        let mut targets = vec![m.default_target(&x).unwrap()];
        if task == "qa" {
            let pos = x
                .enc
                .sequence_ids
                .iter()
                .position(|s| *s == Some(1))
                .unwrap();
            targets.push(Target::AnswerEnd { position: pos + 1 });
        }
        for target in targets {
            match (task, &target) {
                ("rating", Target::Value)
                | ("qa", Target::AnswerStart { .. } | Target::AnswerEnd { .. })
                | ("ner", Target::Tag { .. }) => {}
                other => panic!("unexpected default target {other:?}"),
            }
            let ig = IntegratedGradients::default()
                .attribute(&m, &x, &target)
                .unwrap();
            assert!(
                ig.delta.unwrap().abs() < 1e-2,
                "{task}: IG delta {:?}",
                ig.delta
            );
            for name in ["saliency", "occlusion", "kernel_shap", "rollout"] {
                let a = method_by_name(name, 0)
                    .unwrap()
                    .attribute(&m, &x, &target)
                    .unwrap();
                assert_eq!(a.scores.len(), x.enc.ids.len(), "{task} {name}");
                assert!(a.scores.iter().all(|s| s.is_finite()), "{task} {name}");
            }
        }
        // A target that does not fit the task is refused with a message.
        let bad = Target::Class { class: 5 };
        let e = method_by_name("saliency", 0)
            .unwrap()
            .attribute(&m, &x, &bad)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not fit"), "{e}");
    }
}
