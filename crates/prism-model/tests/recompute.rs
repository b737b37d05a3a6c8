//! Activation checkpointing (`prism_model::recompute`): a training pass with dropout gives the
//! same loss and the same gradient for every parameter and for the input embeddings with and
//! without checkpointing, for BERT, RoBERTa and XLNet (single- and two-stream, with memories),
//! in f32 and under bf16 autocast.

use crate::common;
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use common::*;
use prism_model::models::xlnet::{Xlnet, XlnetExtras};
use prism_model::ops::bf16;
use prism_model::recompute::gradient_checkpointing;
use prism_model::{AnyEncoder, Encoder, EncoderInput, Mode, PretrainedModel};
use std::collections::HashMap;

/// Each parameter has a gradient in both stores or in neither, equal within 1e-6, and so has
/// the input.
fn compare(m: &PretrainedModel, plain: &GradStore, ckpt: &GradStore, e: (&Var, &Var), what: &str) {
    let mut n = 0;
    for (name, var) in m.params.vars() {
        let (a, b) = (plain.get(var.as_tensor()), ckpt.get(var.as_tensor()));
        if a.is_none() && b.is_none() {
            continue; // unused by this pass (the word table: the passes start from its lookup)
        }
        let (Some(a), Some(b)) = (a, b) else {
            panic!(
                "{what}: {name} has a gradient {} without and {} with checkpointing",
                plain.get(var.as_tensor()).is_some(),
                ckpt.get(var.as_tensor()).is_some()
            );
        };
        let d = max_abs(&(a - b).unwrap());
        assert!(d <= 1e-6, "{what}: {name} differs by {d}");
        n += 1;
    }
    assert!(n >= 10, "{what}: only {n} parameters have gradients");
    let (a, b) = (plain.get(e.0.as_tensor()), ckpt.get(e.1.as_tensor()));
    let d = max_abs(&(a.expect("embedding gradient") - b.expect("embedding gradient")).unwrap());
    assert!(d <= 1e-6, "{what}: input gradient differs by {d}");
}

/// Loss and gradients of `sum(out * r)` from a fresh `Var` of word embeddings, with a
/// training-mode (dropout) pass from seed 7.
/// Also returns how many parameters the recorded graph reaches (a checkpointed graph reaches
/// the embeddings', not the layers').
fn run<F>(
    m: &PretrainedModel,
    ids: &Tensor,
    checkpointed: bool,
    forward: F,
) -> (f32, GradStore, Var, usize)
where
    F: Fn(&Tensor, &Mode) -> Tensor,
{
    let _ck = gradient_checkpointing(checkpointed);
    let e = Var::from_tensor(&m.encoder.word_embeddings(ids).unwrap()).unwrap();
    let out = forward(e.as_tensor(), &Mode::train(7));
    let r = Tensor::from_vec(
        (0..out.elem_count())
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect::<Vec<_>>(),
        out.shape(),
        &Device::Cpu,
    )
    .unwrap();
    let loss = (out * r).unwrap().sum_all().unwrap();
    let reached = loss
        .sorted_nodes()
        .iter()
        .filter(|n| n.is_variable())
        .count();
    let grads = loss.backward().unwrap();
    (loss.to_scalar::<f32>().unwrap(), grads, e, reached)
}

fn both<F>(m: &PretrainedModel, ids: &Tensor, what: &str, forward: F)
where
    F: Fn(&Tensor, &Mode) -> Tensor,
{
    let mut precisions = vec![false];
    if bf16::available() {
        precisions.push(true);
    }
    for autocast in precisions {
        let _precision = bf16::autocast(autocast);
        let what = format!("{what}{}", if autocast { " (bf16 autocast)" } else { "" });
        let (l0, g0, e0, n0) = run(m, ids, false, &forward);
        let (l1, g1, e1, n1) = run(m, ids, true, &forward);
        assert_eq!(l0, l1, "{what}: loss");
        assert!(
            n1 < n0,
            "{what}: the checkpointed graph reaches {n1} of {n0} parameters"
        );
        compare(m, &g0, &g1, (&e0, &e1), &what);
    }
}

#[test]
fn bert_and_roberta_gradients_are_those_of_the_plain_pass() {
    for name in ["tiny-bert", "tiny-roberta"] {
        let m = PretrainedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        let input = input_from(&expected(name));
        both(&m, &input.input_ids, name, |e, mode| {
            m.encoder
                .forward_from_word_embeddings(e, &input, mode)
                .unwrap()
                .last_hidden_state
        });
        // The sequence-head path (the last layer for the first token only).
        let first = EncoderInput {
            first_token_only: true,
            ..input.clone()
        };
        both(
            &m,
            &input.input_ids,
            &format!("{name} first token"),
            |e, mode| {
                m.encoder
                    .forward_from_word_embeddings(e, &first, mode)
                    .unwrap()
                    .last_hidden_state
            },
        );
    }
}

fn xl(m: &PretrainedModel) -> &Xlnet {
    match &m.encoder {
        AnyEncoder::Xlnet(x) => x,
        _ => panic!("not an XLNet"),
    }
}

#[test]
fn xlnet_gradients_are_those_of_the_plain_pass() {
    let m = PretrainedModel::load(&fixtures().join("tiny-xlnet"), &Device::Cpu).unwrap();
    let exp: HashMap<String, Tensor> = expected("tiny-xlnet");
    let get = |k: &str| exp[k].to_dtype(DType::U32).unwrap();
    let input = EncoderInput::new(get("input_ids"), get("attention_mask"))
        .with_token_type_ids(get("token_type_ids"));
    let (b, t) = input.input_ids.dims2().unwrap();
    let mems: Vec<Tensor> = (0..2)
        .map(|i| {
            Tensor::from_vec(
                (0..b * 3 * 16)
                    .map(|j| ((j * 13 + i) % 17) as f32 / 17.0)
                    .collect::<Vec<_>>(),
                (b, 3, 16),
                &Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    let cases = [
        ("xlnet single stream", XlnetExtras::default()),
        (
            "xlnet two-stream",
            XlnetExtras {
                perm_mask: Some(exp["perm_mask"].clone()),
                target_mapping: Some(exp["target_mapping"].clone()),
                ..Default::default()
            },
        ),
        (
            "xlnet with memories",
            XlnetExtras {
                mems: Some(mems),
                ..Default::default()
            },
        ),
    ];
    assert_eq!(t, exp["input_ids"].dim(1).unwrap());
    for (what, extras) in cases {
        both(&m, &input.input_ids, what, |e, mode| {
            xl(&m)
                .forward_xlnet(e, &input, &extras, mode)
                .unwrap()
                .output
        });
    }
}

#[test]
fn checkpointing_outside_training_changes_nothing() {
    let m = PretrainedModel::load(&fixtures().join("tiny-bert"), &Device::Cpu).unwrap();
    let input = input_from(&expected("tiny-bert"));
    let plain = m
        .encoder
        .forward(&input, &Mode::Eval)
        .unwrap()
        .last_hidden_state;
    let _ck = gradient_checkpointing(true);
    let ck = m
        .encoder
        .forward(&input, &Mode::Eval)
        .unwrap()
        .last_hidden_state;
    assert_eq!(max_abs(&(plain - ck).unwrap()), 0.0);
}

#[test]
fn contributing_outside_a_backward_pass_is_an_error() {
    let t = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let e = candle_core::backprop::contribute(&t, t.clone()).unwrap_err();
    assert!(e.to_string().contains("outside a backward pass"), "{e}");
}
