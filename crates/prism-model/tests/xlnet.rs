//! XLNet parity with transformers' `XLNetModel` / `XLNetLMHeadModel` on a tiny random model
//! (tests/fixtures/make_fixtures.py --xlnet): the single-stream pass with left padding and two
//! segments, the two-stream pass with `perm_mask` and `target_mapping`, a pass with memories,
//! and the LM head — outputs within 1e-4, every parameter's gradient within 1e-3.

use crate::common;
use candle_core::{DType, Device, Tensor, D};
use common::*;
use prism_model::models::xlnet::{Xlnet, XlnetExtras};
use prism_model::{AnyEncoder, Encoder, EncoderInput, Mode, PretrainedModel};
use std::collections::HashMap;

fn load() -> (PretrainedModel, HashMap<String, Tensor>) {
    let m = PretrainedModel::load(&fixtures().join("tiny-xlnet"), &Device::Cpu).unwrap();
    (m, expected("tiny-xlnet"))
}

fn xl(m: &PretrainedModel) -> &Xlnet {
    match &m.encoder {
        AnyEncoder::Xlnet(x) => x,
        _ => panic!("not an XLNet"),
    }
}

fn input(exp: &HashMap<String, Tensor>, types: bool) -> EncoderInput {
    let get = |k: &str| exp[k].to_dtype(DType::U32).unwrap();
    let mut i = EncoderInput::new(get("input_ids"), get("attention_mask")).with_outputs(true, true);
    if types {
        i = i.with_token_type_ids(get("token_type_ids"));
    }
    i
}

fn check_grads(
    case: &str,
    m: &PretrainedModel,
    exp: &HashMap<String, Tensor>,
    grads: &candle_core::backprop::GradStore,
) {
    let mut compared = 0;
    for (name, var) in m.params.vars() {
        let got = grads.get(var.as_tensor());
        match exp.get(&format!("{case}.grad.{name}")) {
            Some(want) => {
                let got = got.unwrap_or_else(|| panic!("{case}: no gradient for {name}"));
                assert_rel(&format!("{case} grad {name}"), got, want, 1e-3);
                compared += 1;
            }
            None => {
                if let Some(g) = got {
                    assert!(
                        max_abs(g) < 1e-6,
                        "{case}: {name} has a gradient PyTorch does not"
                    );
                }
            }
        }
    }
    let want = exp
        .keys()
        .filter(|k| k.starts_with(&format!("{case}.grad.")))
        .count();
    assert_eq!(compared, want, "{case}: every PyTorch gradient compared");
}

fn run_case(case: &str, types: bool, extras: XlnetExtras) {
    let (m, exp) = load();
    let x = xl(&m);
    let inp = input(&exp, types);
    let e = x.word_embeddings(&inp.input_ids).unwrap();
    let out = x.forward_xlnet(&e, &inp, &extras, &Mode::Eval).unwrap();
    assert_close(
        &format!("{case} output"),
        &out.output,
        &exp[&format!("{case}.output")],
        1e-4,
    );
    if extras.target_mapping.is_none() {
        let hs = out.hidden_states.as_ref().unwrap();
        for (i, h) in hs.iter().enumerate() {
            assert_close(
                &format!("{case} hidden {i}"),
                h,
                &exp[&format!("{case}.hidden_states.{i}")],
                1e-4,
            );
        }
        for (i, a) in out.attentions.as_ref().unwrap().iter().enumerate() {
            assert_close(
                &format!("{case} attention {i}"),
                a,
                &exp[&format!("{case}.attentions.{i}")],
                1e-4,
            );
        }
    }
    let loss = (&out.output * &exp[&format!("{case}.r")])
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    check_grads(case, &m, &exp, &grads);
}

#[test]
fn single_stream_with_left_padding_and_segments_matches_pytorch() {
    run_case("plain", true, XlnetExtras::default());
}

#[test]
fn two_stream_with_perm_mask_and_target_mapping_matches_pytorch() {
    let exp = expected("tiny-xlnet");
    run_case(
        "perm",
        true,
        XlnetExtras {
            perm_mask: Some(exp["perm_mask"].clone()),
            target_mapping: Some(exp["target_mapping"].clone()),
            ..Default::default()
        },
    );
}

#[test]
fn memories_match_pytorch() {
    let exp = expected("tiny-xlnet");
    let mems = (0..2).map(|i| exp[&format!("mems.{i}")].clone()).collect();
    run_case(
        "mems",
        false,
        XlnetExtras {
            mems: Some(mems),
            ..Default::default()
        },
    );
}

#[test]
fn lm_head_logits_loss_and_gradients_match_pytorch() {
    let (m, exp) = load();
    let x = xl(&m);
    let inp = input(&exp, true);
    let extras = XlnetExtras {
        perm_mask: Some(exp["perm_mask"].clone()),
        target_mapping: Some(exp["target_mapping"].clone()),
        ..Default::default()
    };
    let bias = m
        .params
        .root()
        .get_or_init(&[50], "lm_loss.bias", prism_model::nn::Init::Const(0.0))
        .unwrap();
    assert!(m.params.source_has("lm_loss.bias"));
    let e = x.word_embeddings(&inp.input_ids).unwrap();
    let out = x
        .forward_xlnet(&e, &inp, &extras, &Mode::Eval)
        .unwrap()
        .output; // (B, M, C)
    let (b, mm, c) = out.dims3().unwrap();
    let logits = out
        .reshape((b * mm, c))
        .unwrap()
        .matmul(&x.word_embedding_table().t().unwrap())
        .unwrap()
        .broadcast_add(&bias)
        .unwrap();
    assert_close(
        "lm logits",
        &logits.reshape((b, mm, 50)).unwrap(),
        &exp["lm.logits"],
        1e-4,
    );
    let labels = exp["lm.labels"]
        .flatten_all()
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap();
    let max = logits.max_keepdim(D::Minus1).unwrap().detach();
    let sh = logits.broadcast_sub(&max).unwrap();
    let lse = sh
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    let logp = sh.broadcast_sub(&lse).unwrap();
    let loss = (logp
        .gather(&labels.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .mean_all()
        .unwrap()
        * -1.0)
        .unwrap();
    assert_close("lm loss", &loss.reshape(1).unwrap(), &exp["lm.loss"], 1e-4);
    let grads = loss.backward().unwrap();
    check_grads("lm", &m, &exp, &grads);
}

#[test]
fn xlnet_folder_round_trips_under_transformer_prefix() {
    let (m, _) = load();
    assert_eq!(m.config.model_type(), "xlnet");
    assert!(m.head_tensors.iter().any(|(k, _)| k == "lm_loss.bias"));
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let st =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(
        st.contains_key("transformer.word_embedding.weight"),
        "{:?}",
        st.keys().collect::<Vec<_>>()
    );
    assert!(st.contains_key("lm_loss.bias"));
    let again = PretrainedModel::load(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(again.num_parameters(), m.num_parameters());
}

#[test]
fn padding_side_does_not_change_real_token_outputs() {
    // Relative positions: a row's real tokens see the same distances whether the padding is on
    // the left (XLNet's tokenizer) or on the right (the trainer's batches).
    let (m, _) = load();
    let x = xl(&m);
    let ids = [vec![7u32, 8, 9, 10, 11], vec![12, 13, 14]];
    let encs: Vec<prism_model::Encoded> = ids
        .iter()
        .map(|i| prism_model::Encoded {
            tokens: vec![String::new(); i.len()],
            ids: i.clone(),
            type_ids: vec![0; i.len()],
            offsets: vec![(0, 0); i.len()],
            sequence_ids: vec![Some(0); i.len()],
            special_tokens_mask: vec![0; i.len()],
            truncated: false,
        })
        .collect();
    let dev = Device::Cpu;
    let right = prism_model::tokenizer::batch_encodings(&encs, 5, &dev).unwrap();
    let left = prism_model::tokenizer::batch_encodings_left(&encs, 5, &dev).unwrap();
    let hr = x.forward(&right, &Mode::Eval).unwrap().last_hidden_state;
    let hl = x.forward(&left, &Mode::Eval).unwrap().last_hidden_state;
    assert_close("row 0", &hr.get(0).unwrap(), &hl.get(0).unwrap(), 1e-5);
    assert_close(
        "row 1",
        &hr.get(1).unwrap().narrow(0, 0, 3).unwrap(),
        &hl.get(1).unwrap().narrow(0, 2, 3).unwrap(),
        1e-5,
    );
    let last = prism_model::models::xlnet::last_token_positions(&left.attention_mask).unwrap();
    assert_eq!(last.to_vec1::<u32>().unwrap(), vec![4, 4]);
    let last = prism_model::models::xlnet::last_token_positions(&right.attention_mask).unwrap();
    assert_eq!(last.to_vec1::<u32>().unwrap(), vec![4, 2]);
}
