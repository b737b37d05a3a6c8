//! PyTorch parity: outputs and gradients of the tiny BERT and RoBERTa fixtures against what
//! transformers computed (tests/fixtures/make_fixtures.py).

use crate::common;
use candle_core::{Device, Tensor};
use common::*;
use prism_model::{embedding_gradients, Encoder, Mode, PretrainedModel};

/// Parity of the path that returns hidden states and attentions (unfused attention) and, with
/// `fused`, of the default path (no per-layer outputs: the fused attention kernel), whose
/// last hidden state, pooler output, loss and every gradient must match the same PyTorch run.
fn check_model(fixture: &str, name: &str) {
    check_model_path(fixture, name, false);
    check_model_path(fixture, name, true);
}

fn check_model_path(fixture: &str, name: &str, fused: bool) {
    let exp = expected(name);
    let model = PretrainedModel::load(&fixtures().join(fixture), &Device::Cpu).unwrap();
    let input = input_from(&exp).with_outputs(!fused, !fused);
    let name = &format!("{name}{}", if fused { " (fused)" } else { "" });
    let (r1, r2) = (exp["r1"].clone(), exp["r2"].clone());
    let g = embedding_gradients(&model.encoder, &input, &Mode::Eval, None, true, |out| {
        let a = (&out.last_hidden_state * &r1)?.sum_all()?;
        // The pooler, or the first token of a model without one (ELECTRA), as the fixture.
        let pooled = match &out.pooler_output {
            Some(p) => p.clone(),
            None => out.last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?,
        };
        let b = (pooled * &r2)?.sum_all()?;
        Ok((a + b)?)
    })
    .unwrap();

    let out = &g.output;
    let layers = model.config.sizes().layers;
    if fused {
        assert!(out.hidden_states.is_none() && out.attentions.is_none());
    }
    let hs = out.hidden_states.clone().unwrap_or_default();
    let att = out.attentions.clone().unwrap_or_default();
    if !fused {
        assert_eq!(att.len(), layers);
        assert_eq!(hs.len(), layers + 1);
    }
    for (i, h) in hs.iter().enumerate() {
        assert_close(
            &format!("{name} hidden_states.{i}"),
            h,
            &exp[&format!("hidden_states.{i}")],
            1e-4,
        );
    }
    for (i, a) in att.iter().enumerate() {
        assert_close(
            &format!("{name} attentions.{i}"),
            a,
            &exp[&format!("attentions.{i}")],
            1e-4,
        );
    }
    assert_close(
        &format!("{name} last_hidden_state"),
        &out.last_hidden_state,
        &exp[&format!("hidden_states.{layers}")],
        1e-4,
    );
    match (&out.pooler_output, exp.get("pooler_output")) {
        (Some(p), Some(want)) => assert_close(&format!("{name} pooler_output"), p, want, 1e-4),
        (None, None) => assert!(exp.contains_key("first_token"), "{name}"),
        (got, _) => panic!("{name}: pooler {} in prism, not in PyTorch", got.is_some()),
    }
    assert_close(
        &format!("{name} loss"),
        &g.loss.reshape(1).unwrap(),
        &exp["loss"],
        1e-3,
    );

    assert_rel(
        &format!("{name} grad embedding output"),
        &g.grad,
        &exp["grad.embedding_output"],
        1e-3,
    );
    let grads = g.params.as_ref().unwrap();
    let vars = model.params.vars();
    let n_expected = exp.keys().filter(|k| k.starts_with("grad.param.")).count();
    assert_eq!(
        vars.len(),
        n_expected,
        "{name}: parameter count differs from PyTorch"
    );
    for (pname, var) in vars {
        // DistilBERT's parameters have its own names in PyTorch.
        let hf_name = if model.config.model_type() == "distilbert" {
            prism_model::models::distilbert::from_bert_key(&pname)
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
fn bert_outputs_and_gradients_match_pytorch() {
    check_model("tiny-bert", "tiny-bert");
}

#[test]
fn roberta_outputs_and_gradients_match_pytorch() {
    check_model("tiny-roberta", "tiny-roberta");
}

#[test]
fn pytorch_bin_with_task_prefix_loads_the_same_weights() {
    let exp = expected("tiny-bert");
    let model = PretrainedModel::load(&fixtures().join("tiny-bert-bin"), &Device::Cpu).unwrap();
    let out = model
        .encoder
        .forward(&input_from(&exp), &Mode::Eval)
        .unwrap();
    let n = exp
        .keys()
        .filter(|k| k.starts_with("hidden_states."))
        .count()
        - 1;
    assert_close(
        "bin last_hidden_state",
        &out.last_hidden_state,
        &exp[&format!("hidden_states.{n}")],
        1e-4,
    );
}

#[test]
fn every_parameter_gets_a_nonzero_gradient_in_training_mode() {
    for fixture in [
        "tiny-bert",
        "tiny-roberta",
        "tiny-xlmr",
        "tiny-electra",
        "tiny-distilbert",
        "tiny-modernbert",
        "tiny-deberta-v3",
        "tiny-deberta-v2",
    ] {
        let exp = expected(fixture);
        let model = PretrainedModel::load(&fixtures().join(fixture), &Device::Cpu).unwrap();
        let out = model
            .encoder
            .forward(&input_from(&exp), &Mode::train(7))
            .unwrap();
        let pooled = match out.pooler_output {
            Some(p) => p,
            None => out
                .last_hidden_state
                .narrow(1, 0, 1)
                .unwrap()
                .squeeze(1)
                .unwrap(),
        };
        let loss = ((&out.last_hidden_state * &exp["r1"])
            .unwrap()
            .sum_all()
            .unwrap()
            + (pooled * &exp["r2"]).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let vars = model.params.vars();
        assert!(vars.len() > 15, "{fixture}: {} parameters", vars.len());
        for (name, var) in vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{fixture}: {name} got no gradient"));
            assert!(
                max_abs(g) > 0.0,
                "{fixture}: {name} has an all-zero gradient"
            );
        }
    }
}

#[test]
fn dropout_runs_in_training_and_not_in_eval() {
    let exp = expected("tiny-bert");
    let model = PretrainedModel::load(&fixtures().join("tiny-bert"), &Device::Cpu).unwrap();
    let input = input_from(&exp);
    let run = |mode: &Mode| {
        model
            .encoder
            .forward(&input, mode)
            .unwrap()
            .last_hidden_state
    };
    let e1 = run(&Mode::Eval);
    assert_close("eval is deterministic", &e1, &run(&Mode::Eval), 0.0);
    let t1 = run(&Mode::train(1));
    assert_close("same seed, same masks", &t1, &run(&Mode::train(1)), 0.0);
    assert!(
        max_abs(&(&t1 - &run(&Mode::train(2))).unwrap()) > 1e-3,
        "different seeds should differ"
    );
    assert!(
        max_abs(&(&t1 - &e1).unwrap()) > 1e-3,
        "training mode must apply dropout"
    );
}

#[test]
fn embedding_gradients_without_params_match_with_params() {
    let exp = expected("tiny-roberta");
    let model = PretrainedModel::load(&fixtures().join("tiny-roberta"), &Device::Cpu).unwrap();
    let input = input_from(&exp);
    let loss = |o: &prism_model::EncoderOutput| Ok((&o.last_hidden_state * &exp["r1"])?.sum_all()?);
    let a = embedding_gradients(&model.encoder, &input, &Mode::Eval, None, false, loss).unwrap();
    assert!(a.params.is_none());
    // Starting from explicitly supplied (here: identical) embeddings gives the same gradient.
    let e = model.encoder.word_embeddings(&input.input_ids).unwrap();
    let b = embedding_gradients(&model.encoder, &input, &Mode::Eval, Some(&e), true, loss).unwrap();
    assert_close("same embedding gradient", &a.grad, &b.grad, 1e-6);
    // The table's gradient is the scatter-add of the embedding gradient over the token ids,
    // except the padding row (id 1 for RoBERTa), which PyTorch's padding_idx keeps at zero.
    let table_grad = b
        .params
        .as_ref()
        .unwrap()
        .get(model.encoder.word_embedding_table())
        .unwrap()
        .clone();
    let ids: Vec<u32> = input.input_ids.flatten_all().unwrap().to_vec1().unwrap();
    let g = a.grad.flatten_to(1).unwrap();
    let c = g.dim(1).unwrap();
    let mut manual = vec![0f32; table_grad.elem_count()];
    let gv: Vec<Vec<f32>> = g.to_vec2().unwrap();
    for (row, id) in gv.iter().zip(ids) {
        if id == 1 {
            continue;
        }
        for j in 0..c {
            manual[id as usize * c + j] += row[j];
        }
    }
    let manual = Tensor::from_vec(manual, table_grad.shape(), &Device::Cpu).unwrap();
    assert_close("table gradient", &table_grad, &manual, 1e-5);
}

/// A sequence head's input path (`first_token_only`: the last layer runs for position 0 alone)
/// gives the full computation's first position, pooler output, loss, embedding gradients and
/// parameter gradients, for BERT (pooler) and RoBERTa (first token).
#[test]
fn first_token_only_matches_the_full_last_layer() {
    for fixture in ["tiny-bert", "tiny-roberta"] {
        let exp = expected(fixture);
        let model = PretrainedModel::load(&fixtures().join(fixture), &Device::Cpu).unwrap();
        let r2 = exp["r2"].clone();
        let run = |first: bool| {
            let input = input_from(&exp).with_first_token_only(first);
            embedding_gradients(&model.encoder, &input, &Mode::Eval, None, true, |out| {
                let cls = out
                    .last_hidden_state
                    .narrow(1, 0, 1)
                    .unwrap()
                    .squeeze(1)
                    .unwrap();
                let pooled = out.pooler_output.clone().unwrap_or(cls.clone());
                Ok(((cls * &r2)?.sum_all()? + (pooled * &r2)?.sum_all()?)?)
            })
            .unwrap()
        };
        let (full, first) = (run(false), run(true));
        let (b, _, c) = full.output.last_hidden_state.dims3().unwrap();
        assert_eq!(
            first.output.last_hidden_state.dims(),
            [b, 1, c],
            "{fixture}"
        );
        assert_close(
            &format!("{fixture} first position"),
            &first.output.last_hidden_state,
            &full.output.last_hidden_state.narrow(1, 0, 1).unwrap(),
            1e-5,
        );
        if let (Some(p1), Some(p2)) = (&first.output.pooler_output, &full.output.pooler_output) {
            assert_close(&format!("{fixture} pooler"), p1, p2, 1e-5);
        }
        assert_close(&format!("{fixture} loss"), &first.loss, &full.loss, 1e-5);
        assert_close(
            &format!("{fixture} d embeddings"),
            &first.grad,
            &full.grad,
            1e-5,
        );
        let (g1, g2) = (first.params.unwrap(), full.params.unwrap());
        let mut compared = 0;
        for (name, var) in model.params.vars() {
            let (a, r) = (g1.get(var.as_tensor()), g2.get(var.as_tensor()));
            match (a, r) {
                (Some(a), Some(r)) => {
                    assert_close(&format!("{fixture} d {name}"), a, r, 1e-5);
                    compared += 1;
                }
                (None, None) => {}
                _ => panic!("{fixture}: {name} has a gradient on one path only"),
            }
        }
        assert!(
            compared > 10,
            "{fixture}: only {compared} gradients compared"
        );
    }
}

/// bf16 inference on AMX (every linear layer, the fused query/key/value projection and the
/// GELU epilogue) stays within bf16 rounding of the f32 model, for BERT and RoBERTa; so do the
/// embedding gradients explanations take through it (the input gradients on the tile unit).
#[test]
fn bf16_inference_is_close_to_f32() {
    if !prism_model::ops::bf16::available() {
        eprintln!("skipped: no bf16 unit (AMX-BF16 or AVX512-BF16) on this machine");
        return;
    }
    for fixture in ["tiny-bert", "tiny-roberta"] {
        let exp = expected(fixture);
        let model = PretrainedModel::load(&fixtures().join(fixture), &Device::Cpu).unwrap();
        let bf16 = model.frozen_bf16().unwrap();
        assert!(
            bf16.params.bf16(),
            "{fixture}: the store did not switch to bf16"
        );
        for first in [false, true] {
            let input = input_from(&exp).with_first_token_only(first);
            let a = model.encoder.forward(&input, &Mode::Eval).unwrap();
            let b = bf16.encoder.forward(&input, &Mode::Eval).unwrap();
            let (x, y) = (&a.last_hidden_state, &b.last_hidden_state);
            let diff = max_abs(&(x - y).unwrap());
            let scale = max_abs(x);
            assert!(diff > 0.0, "{fixture}: bf16 path not taken");
            assert!(
                diff < 0.05 * scale,
                "{fixture}: bf16 differs by {diff} (scale {scale})"
            );
            let loss = |o: &prism_model::EncoderOutput| {
                Ok(
                    (o.last_hidden_state.narrow(1, 0, 1)? * exp["r1"].narrow(1, 0, 1)?)?
                        .sum_all()?,
                )
            };
            let ga = embedding_gradients(&model.encoder, &input, &Mode::Eval, None, false, loss)
                .unwrap()
                .grad;
            let gb = embedding_gradients(&bf16.encoder, &input, &Mode::Eval, None, false, loss)
                .unwrap()
                .grad;
            let diff = max_abs(&(&ga - &gb).unwrap());
            let scale = max_abs(&ga);
            assert!(diff > 0.0, "{fixture}: bf16 backward not taken");
            assert!(
                diff < 0.05 * scale,
                "{fixture}: bf16 embedding gradient differs by {diff} (scale {scale})"
            );
        }
    }
}

/// XLM-RoBERTa (RoBERTa's architecture, a Unigram SentencePiece tokenizer.json as the released
/// checkpoints ship; make_fixtures.py --families): outputs, attentions and every gradient.
#[test]
fn xlm_roberta_outputs_and_gradients_match_pytorch() {
    check_model("tiny-xlmr", "tiny-xlmr");
    let m = PretrainedModel::load(&fixtures().join("tiny-xlmr"), &Device::Cpu).unwrap();
    assert_eq!(m.config.base_architecture(), "XLMRobertaModel");
    // Its tokenizer gives transformers' ids (the fixture's inputs, before padding).
    let exp = expected("tiny-xlmr");
    let ids: Vec<Vec<u32>> = exp["input_ids"]
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .to_vec2()
        .unwrap();
    let tok = m.tokenizer().unwrap();
    let e = tok
        .encode("A gorgeous, witty, seductive movie.", None)
        .unwrap();
    assert_eq!(e.ids[..], ids[0][..e.ids.len()]);
}

/// ELECTRA (its encoder is BERT's; embeddings narrower than the hidden size, projected by
/// `embeddings_project`; no pooler): outputs, attentions and every gradient.
#[test]
fn electra_outputs_and_gradients_match_pytorch() {
    check_model("tiny-electra", "tiny-electra");
    let m = PretrainedModel::load(&fixtures().join("tiny-electra"), &Device::Cpu).unwrap();
    assert_eq!(m.config.base_architecture(), "ElectraModel");
    assert!(m.params.get("embeddings_project.weight").is_some());
}

/// DistilBERT (its own key names, no token types, no pooler; the encoder runs as BERT's):
/// outputs, attentions and every gradient, and its folder written back under its own names.
#[test]
fn distilbert_outputs_and_gradients_match_pytorch() {
    check_model("tiny-distilbert", "tiny-distilbert");
    let m = PretrainedModel::load(&fixtures().join("tiny-distilbert"), &Device::Cpu).unwrap();
    assert_eq!(m.config.base_architecture(), "DistilBertModel");
    let out = tempfile::tempdir().unwrap();
    m.save(out.path()).unwrap();
    let names: Vec<String> =
        candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    assert!(
        names.contains(&"transformer.layer.1.ffn.lin2.weight".to_string()),
        "{names:?}"
    );
    assert!(!names
        .iter()
        .any(|n| n.starts_with("encoder.") || n.contains("token_type")));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_type"], "distilbert");
    assert_eq!(cfg["dim"], 32);
    assert!(cfg.get("hidden_size").is_none(), "{cfg}");
    let back = PretrainedModel::load(out.path(), &Device::Cpu).unwrap();
    assert_eq!(back.num_parameters(), m.num_parameters());
}

/// ModernBERT (rotary positions with separate global and local θ, GeGLU, bias-free pre-norm
/// layers, a global layer then two local ones whose 8-token window is shorter than the inputs,
/// a final norm): outputs, attentions and every gradient.
#[test]
fn modernbert_outputs_and_gradients_match_pytorch() {
    check_model("tiny-modernbert", "tiny-modernbert");
    let m = PretrainedModel::load(&fixtures().join("tiny-modernbert"), &Device::Cpu).unwrap();
    assert_eq!(m.config.base_architecture(), "ModernBertModel");
    // Written back with the same config keys and weights, it reads the same.
    let out = tempfile::tempdir().unwrap();
    m.save(out.path()).unwrap();
    let back = PretrainedModel::load(out.path(), &Device::Cpu).unwrap();
    assert_eq!(back.config, m.config);
    assert_eq!(back.num_parameters(), m.num_parameters());
}

/// DeBERTa-v3 (disentangled attention: content→position and position→content terms over a
/// LayerNorm'd relative table with 8 log buckets, shared attention keys, no absolute positions
/// or token types) and DeBERTa-v2's older settings (separate position projections, distances
/// clamped at 12, absolute positions, token types, a narrower embedding with `embed_proj`):
/// outputs, attentions and every gradient; written back, each reads the same.
#[test]
fn deberta_outputs_and_gradients_match_pytorch() {
    for name in ["tiny-deberta-v3", "tiny-deberta-v2"] {
        check_model(name, name);
        let m = PretrainedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        assert_eq!(m.config.base_architecture(), "DebertaV2Model");
        let out = tempfile::tempdir().unwrap();
        m.save(out.path()).unwrap();
        let back = PretrainedModel::load(out.path(), &Device::Cpu).unwrap();
        assert_eq!(back.config, m.config);
        assert_eq!(back.num_parameters(), m.num_parameters());
        assert!(
            out.path().join("spm.model").is_file(),
            "{name}: spm.model copied"
        );
    }
}

/// A 6-token input reaches only part of the relative table, which is all DeBERTa projects:
/// the same output as transformers' full-table computation.
#[test]
fn deberta_short_input_projects_only_the_rows_it_reaches() {
    for name in ["tiny-deberta-v3", "tiny-deberta-v2"] {
        let exp = expected(&format!("{name}_short"));
        let m = PretrainedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        let ids = exp["input_ids"].to_dtype(candle_core::DType::U32).unwrap();
        let input = prism_model::EncoderInput::new(ids.clone(), ids.ones_like().unwrap());
        let out = m.encoder.forward(&input, &Mode::Eval).unwrap();
        assert_close(
            &format!("{name} short"),
            &out.last_hidden_state,
            &exp["last_hidden_state"],
            1e-4,
        );
    }
}
