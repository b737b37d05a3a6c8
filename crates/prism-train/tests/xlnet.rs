//! An XLNet encoder trains through the same multi-task configs as BERT: sequence tasks use its
//! last-token summary, pair tasks its segments, and every parameter is updated.

use candle_core::Device;
use prism_model::tasks::MultiTaskModel;
use prism_train::config::TrainConfig;
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

/// DANN's domain classifier reads each sequence's summary token — XLNet's last real token,
/// wherever left padding put it — not position 0 (a `<pad>` for every shorter sequence).
#[test]
fn dann_domain_loss_reads_xlnets_summary_token() {
    use prism_model::heads::DomainHead;
    use prism_model::{Encoder, Mode};
    let base =
        prism_model::PretrainedModel::load(&fixtures().join("tiny-xlnet"), &Device::Cpu).unwrap();
    let tok = base.tokenizer().unwrap();
    let batch = |texts: &[&str]| {
        let encs: Vec<_> = texts.iter().map(|t| tok.encode(t, None).unwrap()).collect();
        tok.batch(&encs, &Device::Cpu).unwrap()
    };
    let source = batch(&["a good movie with a long and winding plot", "bad"]);
    let target = batch(&["fine", "an ending nobody saw coming at all"]);
    let head = DomainHead::load(
        &base.params.root().pp("prism.heads.s.domain"),
        base.config.hidden_size(),
        // Large weights, so reading another position changes the loss well beyond 1e-5.
        1.0,
    )
    .unwrap();
    let enc = &base.encoder;
    let zero = |o: &prism_model::EncoderOutput| Ok((o.last_hidden_state.sum_all()? * 0.0)?);
    let (grads, losses) =
        prism_train::loss::dann_step(enc, &zero, &head, &source, &target, &Mode::Eval, 1.0, 1.0)
            .unwrap();
    // The expected domain loss, from the hidden state at each row's last real token.
    let last = |input: &prism_model::EncoderInput| {
        let out = enc.forward(input, &Mode::Eval).unwrap();
        let pos: Vec<u32> = out.summary_positions.as_ref().unwrap().to_vec1().unwrap();
        let mask: Vec<Vec<u32>> = input
            .attention_mask
            .to_dtype(candle_core::DType::U32)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (row, &p) in mask.iter().zip(&pos) {
            assert_eq!(
                row[p as usize], 1,
                "summary position {p} is padding in {row:?}"
            );
        }
        assert!(
            mask.iter().any(|r| r[0] == 0),
            "the batch should be left-padded"
        );
        let rows: Vec<_> = pos
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                out.last_hidden_state
                    .get(i)
                    .unwrap()
                    .get(p as usize)
                    .unwrap()
            })
            .collect();
        candle_core::Tensor::stack(&rows, 0).unwrap()
    };
    let both = candle_core::Tensor::cat(&[last(&source), last(&target)], 0).unwrap();
    let logits = head.forward(&both).unwrap();
    let y = candle_core::Tensor::new(&[0u32, 0, 1, 1], &Device::Cpu).unwrap();
    let want: f32 = prism_train::loss::cross_entropy(&logits, &y)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        (losses.domain - want as f64).abs() < 1e-5,
        "{} vs {want}",
        losses.domain
    );
    // The reversed domain gradient reaches the encoder.
    let (_, w) = base
        .params
        .vars()
        .into_iter()
        .find(|(k, _)| k.contains("word_embedding"))
        .unwrap();
    assert!(
        grads.get(w.as_tensor()).is_some(),
        "no gradient for the word embeddings"
    );
}
