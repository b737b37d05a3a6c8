//! Masked-LM parity with transformers' `BertForMaskedLM` / `RobertaForMaskedLM` on the tiny
//! fixtures (tests/fixtures/make_fixtures.py --mlm): logits at every position, the loss over the
//! labelled positions, and the gradient of that loss for every parameter, including the word
//! embeddings that the decoder shares.

use crate::common;
use candle_core::{DType, Device, Tensor, D};
use common::*;
use prism_model::heads::MaskedLm;
use prism_model::{EncoderInput, Mode, PretrainedModel};

fn check(name: &str) {
    let exp = expected(&format!("{name}-mlm"));
    let model = MaskedLm::load(&fixtures().join(format!("{name}-mlm")), &Device::Cpu).unwrap();
    let get = |k: &str| exp[k].to_dtype(DType::U32).unwrap();
    let ids = get("input_ids");
    let input = EncoderInput::new(ids.clone(), get("attention_mask"))
        .with_token_type_ids(ids.zeros_like().unwrap());

    let logits = model.logits(&input, &Mode::Eval).unwrap();
    assert_close(&format!("{name} logits"), &logits, &exp["logits"], 1e-4);

    // The loss over the labelled positions only (-100 elsewhere), as transformers computes it.
    let labels: Vec<i64> = exp["labels"].flatten_all().unwrap().to_vec1().unwrap();
    let (pos, tgt): (Vec<u32>, Vec<u32>) = labels
        .iter()
        .enumerate()
        .filter(|(_, &l)| l >= 0)
        .map(|(i, &l)| (i as u32, l as u32))
        .unzip();
    let n = pos.len();
    let pos = Tensor::new(pos, &Device::Cpu).unwrap();
    let tgt = Tensor::new(tgt, &Device::Cpu).unwrap();
    let z = model.logits_at(&input, &pos, &Mode::Eval).unwrap(); // (M, V)
    let max = z.max_keepdim(D::Minus1).unwrap().detach();
    let shifted = z.broadcast_sub(&max).unwrap();
    let lse = shifted
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    let logp = shifted.broadcast_sub(&lse).unwrap();
    let picked = logp.gather(&tgt.unsqueeze(1).unwrap(), 1).unwrap();
    let loss = (picked.sum_all().unwrap() * (-1.0 / n as f64)).unwrap();
    assert_close(
        &format!("{name} loss"),
        &loss.reshape(1).unwrap(),
        &exp["loss"],
        1e-4,
    );

    let grads = loss.backward().unwrap();
    let vars = model.base.params.vars();
    let n_expected = exp.keys().filter(|k| k.starts_with("grad.param.")).count();
    let names: Vec<&String> = vars.iter().map(|(k, _)| k).collect();
    assert_eq!(vars.len(), n_expected, "{name}: parameters {names:?}");
    for (pname, var) in &vars {
        // DistilBERT's parameters have its own names in PyTorch.
        let hf_name = if model.base.config.model_type() == "distilbert" {
            prism_model::models::distilbert::from_bert_key(pname)
        } else {
            pname.clone()
        };
        let want = exp
            .get(&format!("grad.param.{hf_name}"))
            .unwrap_or_else(|| panic!("{name}: PyTorch has no parameter {hf_name}"));
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        assert_rel(&format!("{name} grad {pname}"), got, want, 1e-3);
    }
}

#[test]
fn bert_mlm_logits_loss_and_gradients_match_pytorch() {
    check("tiny-bert");
}

#[test]
fn roberta_mlm_logits_loss_and_gradients_match_pytorch() {
    check("tiny-roberta");
}

#[test]
fn mlm_folder_round_trips_with_transformers_key_names() {
    let dir = tempfile::tempdir().unwrap();
    let m = MaskedLm::load(&fixtures().join("tiny-bert-mlm"), &Device::Cpu).unwrap();
    m.base.save(dir.path()).unwrap();
    let st =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let orig = candle_core::safetensors::load(
        fixtures().join("tiny-bert-mlm/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut a: Vec<&String> = st.keys().collect();
    let mut b: Vec<&String> = orig.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "prism writes the same keys as transformers' BertForMaskedLM"
    );
    let cfg = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(cfg.contains("BertForMaskedLM"), "{cfg}");
    // A bare encoder (no MLM head) gets a fresh head: continued pre-training of MiniLM-like models.
    let base = PretrainedModel::load(&fixtures().join("tiny-bert"), &Device::Cpu).unwrap();
    let m = MaskedLm::new(base).unwrap();
    assert!(m.base.params.get("cls.predictions.bias").is_some());
    let out = m.fill_mask("a gorgeous [MASK] movie.", 3).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].len(), 3);
    assert!(out[0][0].score >= out[0][1].score);
    let e = m.fill_mask("no mask here", 3).unwrap_err().to_string();
    assert!(e.contains("[MASK]"), "{e}");
}

#[test]
fn electra_generator_mlm_logits_loss_and_gradients_match_pytorch() {
    // ElectraForMaskedLM: its head goes down to the embedding width, GELU, tied decoder.
    check("tiny-electra");
}

#[test]
fn distilbert_mlm_logits_loss_and_gradients_match_pytorch() {
    check("tiny-distilbert");
}

/// ELECTRA's discriminator (`ElectraForPreTraining`, tiny-electra-disc): replaced-token logits at
/// every token, transformers' BCE loss over the attended tokens, and every parameter's gradient.
#[test]
fn electra_discriminator_logits_loss_and_gradients_match_pytorch() {
    use prism_model::heads::RtdHead;
    use prism_model::{Encoder, ModelConfig};
    let exp = expected("tiny-electra-disc");
    let base = PretrainedModel::load(&fixtures().join("tiny-electra-disc"), &Device::Cpu).unwrap();
    let ModelConfig::Bert(cfg) = &base.config else {
        panic!("ELECTRA is BERT-shaped")
    };
    let head = RtdHead::load(&base.params, cfg).unwrap();
    let get = |k: &str| exp[k].to_dtype(DType::U32).unwrap();
    let input = EncoderInput::new(get("input_ids"), get("attention_mask"))
        .with_token_type_ids(get("token_type_ids"));
    let out = base.encoder.forward(&input, &Mode::Eval).unwrap();
    let logits = head.forward(&out.last_hidden_state).unwrap(); // (B, T)
    assert_close("discriminator logits", &logits, &exp["logits"], 1e-4);
    // BCE with logits, mean over attended tokens: max(z, 0) - z y + log(1 + e^-|z|).
    let mask = exp["attention_mask"].to_dtype(DType::F32).unwrap();
    let y = exp["labels"].to_dtype(DType::F32).unwrap();
    let per = ((logits.relu().unwrap() - (&logits * &y).unwrap()).unwrap()
        + (logits.abs().unwrap().neg().unwrap().exp().unwrap() + 1.0)
            .unwrap()
            .log()
            .unwrap())
    .unwrap();
    let n = mask.sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let loss = ((per * &mask).unwrap().sum_all().unwrap() / n).unwrap();
    assert_close(
        "discriminator loss",
        &loss.reshape(1).unwrap(),
        &exp["loss"],
        1e-5,
    );
    let grads = loss.backward().unwrap();
    let vars = base.params.vars();
    let n_expected = exp.keys().filter(|k| k.starts_with("grad.param.")).count();
    assert_eq!(vars.len(), n_expected);
    for (pname, var) in &vars {
        let want = &exp[&format!("grad.param.{pname}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {pname}"));
        assert_rel(&format!("discriminator grad {pname}"), got, want, 1e-3);
    }
}

#[test]
fn modernbert_mlm_logits_loss_and_gradients_match_pytorch() {
    // ModernBertForMaskedLM: prediction head (dense, GELU, bias-free norm), tied decoder.
    check("tiny-modernbert");
}

#[test]
fn deberta_mlm_logits_loss_and_gradients_match_pytorch() {
    // DebertaV2ForMaskedLM: v3's `lm_predictions.lm_head` (legacy = false) and v2's legacy
    // `cls.predictions` (dense down to the 16-wide embeddings), both decoding with the tied
    // word-embedding table.
    check("tiny-deberta-v3");
    check("tiny-deberta-v2");
    let m = MaskedLm::load(&fixtures().join("tiny-deberta-v3-mlm"), &Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    m.base.save(out.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["architectures"][0], "DebertaV2ForMaskedLM");
    let back = MaskedLm::load(out.path(), &Device::Cpu).unwrap();
    assert_eq!(back.base.num_parameters(), m.base.num_parameters());
}
