//! Checkpoint I/O: round trip, and one clear error for each kind of damage.

use crate::common;
use candle_core::{Device, Tensor};
use common::*;
use prism_model::{Encoder, Mode, PretrainedModel};
use std::collections::HashMap;

fn load_err(dir: &std::path::Path) -> String {
    match PretrainedModel::load(dir, &Device::Cpu) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn rewrite_weights(dir: &std::path::Path, f: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    f(&mut t);
    candle_core::safetensors::save(&t, &path).unwrap();
}

#[test]
fn save_then_load_round_trips_exactly() {
    for fixture in ["tiny-bert", "tiny-roberta"] {
        let exp = expected(fixture);
        let model = PretrainedModel::load(&fixtures().join(fixture), &Device::Cpu).unwrap();
        let out = tempfile::tempdir().unwrap();
        model.save(out.path()).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert!(out.path().join(f).is_file(), "{fixture}: {f} not written");
        }
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
                .unwrap();
        assert!(cfg["architectures"][0].as_str().unwrap().ends_with("Model"));
        let back = PretrainedModel::load(out.path(), &Device::Cpu).unwrap();
        let input = input_from(&exp);
        let a = model
            .encoder
            .forward(&input, &Mode::Eval)
            .unwrap()
            .last_hidden_state;
        let b = back
            .encoder
            .forward(&input, &Mode::Eval)
            .unwrap()
            .last_hidden_state;
        assert_close(fixture, &a, &b, 0.0);
        assert_eq!(model.config, back.config);
        let t1 = model
            .tokenizer()
            .unwrap()
            .encode("A gorgeous movie.", None)
            .unwrap();
        let t2 = back
            .tokenizer()
            .unwrap()
            .encode("A gorgeous movie.", None)
            .unwrap();
        assert_eq!(t1, t2);
    }
}

#[test]
fn truncated_safetensors_is_an_error_naming_the_file() {
    let dir = copy_fixture("tiny-bert");
    let p = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("corrupt"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    std::fs::write(&p, b"this is not a checkpoint").unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("model.safetensors") && e.contains("corrupt"),
        "{e}"
    );
}

#[test]
fn missing_weight_is_named() {
    let dir = copy_fixture("tiny-bert");
    rewrite_weights(dir.path(), |t| {
        t.remove("encoder.layer.1.attention.self.value.weight");
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("missing weight `encoder.layer.1.attention.self.value.weight`"),
        "{e}"
    );
    assert!(e.contains("[32, 32]"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn wrongly_shaped_weight_names_both_shapes() {
    let dir = copy_fixture("tiny-bert");
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "encoder.layer.0.intermediate.dense.bias".into(),
            Tensor::zeros(65, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("encoder.layer.0.intermediate.dense.bias")
            && e.contains("[65]")
            && e.contains("[64]"),
        "{e}"
    );
}

#[test]
fn unexpected_weight_is_named_but_head_weights_are_kept() {
    let dir = copy_fixture("tiny-bert");
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "classifier.weight".into(),
            Tensor::zeros((3, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let model = PretrainedModel::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(model.head_tensors.len(), 1);
    rewrite_weights(dir.path(), |t| {
        t.insert(
            "encoder.layer.7.output.dense.weight".into(),
            Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("unexpected weight `encoder.layer.7.output.dense.weight`"),
        "{e}"
    );
}

#[test]
fn bad_config_is_an_error_naming_the_file_and_field() {
    let dir = copy_fixture("tiny-bert");
    let p = dir.path().join("config.json");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"num_attention_heads\": 4", "\"num_attention_heads\": 5");
    std::fs::write(&p, text).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json")
            && e.contains("`hidden_size` 32 is not divisible by `num_attention_heads` 5"),
        "{e}"
    );
    std::fs::write(&p, "{\"model_type\": \"bert\",\n \"hidden_size\": }").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("config.json") && e.contains("line 2"), "{e}");
}

#[test]
fn no_weights_file_is_an_error() {
    let dir = copy_fixture("tiny-bert");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("no model.safetensors"), "{e}");
}

#[test]
fn fresh_model_saves_and_reloads() {
    let cfg = prism_model::ModelConfig::Bert(prism_model::models::bert::tiny_config(
        prism_model::Flavor::Roberta,
    ));
    let m = PretrainedModel::fresh(cfg, None, &Device::Cpu, 3).unwrap();
    let out = tempfile::tempdir().unwrap();
    m.save(out.path()).unwrap();
    let back = PretrainedModel::load(out.path(), &Device::Cpu).unwrap();
    assert_eq!(back.num_parameters(), m.num_parameters());
    assert!(back.encoder.word_embedding_table().dims() == [100, 32]);
}
