//! Parity with Captum 0.9 on the tiny fixture classifier (tests/fixtures/make_fixtures.py
//! --captum), plus checks that hold by theory and batching invariance.

use candle_core::Device;
use prism_explain::gradient::{Baseline, GradientXInput, IntegratedGradients, Rule, Saliency};
use prism_explain::{faithfulness, method_by_name, ExplainModel, Method, Target, METHODS};
use prism_model::tasks::MultiTaskModel;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    pair: Option<String>,
    target: usize,
    ids: Vec<u32>,
    baseline: Vec<u32>,
    f: f32,
    f_baseline: f32,
    saliency: Vec<f32>,
    grad_x_input: Vec<f32>,
    ig: Vec<f32>,
    ig_delta: f32,
}

fn model() -> MultiTaskModel {
    MultiTaskModel::load(&fixtures().join("tiny-bert-cls"), &Device::Cpu).unwrap()
}

fn cases() -> Vec<Case> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("captum_expected.json")).unwrap())
        .unwrap()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol, "{what}[{i}]: {a} vs Captum {b}");
    }
}

#[test]
fn frozen_model_computes_no_weight_gradients() {
    use prism_model::{Encoder, Mode};
    let mt = model().frozen().unwrap();
    let m = ExplainModel::new(&mt, None).unwrap();
    let x = m
        .encode("a gorgeous, witty, seductive movie", None)
        .unwrap();
    let e = candle_core::Var::from_tensor(&m.embeddings(&x).unwrap()).unwrap();
    let out = mt
        .base
        .encoder
        .forward_from_word_embeddings(e.as_tensor(), &x.input, &Mode::Eval)
        .unwrap();
    let logits = mt.tasks[0].logits(&out, &Mode::Eval).unwrap();
    let grads = logits.sum_all().unwrap().backward().unwrap();
    assert!(grads.get(e.as_tensor()).is_some(), "input gradient");
    for (name, v) in mt.base.params.vars() {
        assert!(grads.get(v.as_tensor()).is_none(), "{name} got a gradient");
    }
}

#[test]
fn gradient_methods_match_captum() {
    let base = model();
    // The frozen copy (what `prism explain` and `prism serve` use) gives the same numbers.
    for mt in [base.frozen().unwrap(), base] {
        gradient_methods_match_captum_on(&mt);
    }
}

fn gradient_methods_match_captum_on(mt: &MultiTaskModel) {
    let m = ExplainModel::new(mt, Some("sentiment")).unwrap();
    for c in cases() {
        let x = m.encode(&c.text, c.pair.as_deref()).unwrap();
        assert_eq!(x.enc.ids, c.ids);
        let target = Target::Class { class: c.target };
        let s = Saliency.attribute(&m, &x, &target).unwrap();
        assert!((s.output - c.f).abs() < 1e-5);
        close("saliency", &s.scores, &c.saliency, 1e-4);
        close(
            "grad_x_input",
            &GradientXInput.attribute(&m, &x, &target).unwrap().scores,
            &c.grad_x_input,
            1e-4,
        );
        let ig = IntegratedGradients::default();
        let a = ig.attribute(&m, &x, &target).unwrap();
        close("ig", &a.scores, &c.ig, 1e-4);
        assert!(
            (a.delta.unwrap() - c.ig_delta).abs() < 1e-3,
            "delta {} vs Captum {}",
            a.delta.unwrap(),
            c.ig_delta
        );
        // The default baseline is Captum's: pad everywhere but the special tokens.
        let custom = IntegratedGradients {
            baseline: Baseline::Ids(c.baseline.clone()),
            ..Default::default()
        };
        close(
            "ig (explicit baseline)",
            &custom.attribute(&m, &x, &target).unwrap().scores,
            &c.ig,
            1e-4,
        );
        let fb = m.f_from_ids(&[c.baseline.clone()], &x, &target, 1).unwrap()[0];
        assert!((fb - c.f_baseline).abs() < 1e-5);
    }
}

#[test]
fn integrated_gradients_is_complete_and_converges() {
    let mt = model();
    let m = ExplainModel::new(&mt, None).unwrap();
    let x = m
        .encode("A gorgeous, witty, seductive movie.", None)
        .unwrap();
    let target = Target::Class { class: 1 };
    let mut deltas = Vec::new();
    for steps in [2, 8, 32, 128] {
        let ig = IntegratedGradients {
            steps,
            rule: Rule::RiemannTrapezoid,
            ..Default::default()
        };
        let a = ig.attribute(&m, &x, &target).unwrap();
        deltas.push(a.delta.unwrap().abs());
    }
    assert!(
        deltas[3] < deltas[0] && deltas[2] < deltas[0],
        "|delta| should fall with more steps: {deltas:?}"
    );
    assert!(deltas[3] < 1e-3, "{deltas:?}");
    // Completeness with Gauss-Legendre: sum of attributions = F(x) - F(baseline).
    let a = IntegratedGradients::default()
        .attribute(&m, &x, &target)
        .unwrap();
    assert!(a.delta.unwrap().abs() < 1e-4);
}

#[test]
fn results_do_not_depend_on_the_internal_batch_size() {
    let mt = model();
    let m = ExplainModel::new(&mt, None).unwrap();
    let x = m
        .encode("The man walks into a bar.", Some("A man is in a bar."))
        .unwrap();
    let t = Target::Class { class: 0 };
    let a = IntegratedGradients {
        batch_size: 1,
        ..Default::default()
    }
    .attribute(&m, &x, &t)
    .unwrap();
    let b = IntegratedGradients {
        batch_size: 50,
        ..Default::default()
    }
    .attribute(&m, &x, &t)
    .unwrap();
    close("ig batch 1 vs 50", &a.scores, &b.scores, 1e-6);
    let o1 = prism_explain::perturbation::Occlusion {
        batch_size: 1,
        ..Default::default()
    }
    .attribute(&m, &x, &t)
    .unwrap();
    let o2 = prism_explain::perturbation::Occlusion {
        batch_size: 64,
        ..Default::default()
    }
    .attribute(&m, &x, &t)
    .unwrap();
    close("occlusion batch 1 vs 64", &o1.scores, &o2.scores, 1e-6);
}

#[test]
fn every_method_runs_and_gives_one_score_per_token() {
    let mt = model();
    let m = ExplainModel::new(&mt, None).unwrap();
    let x = m
        .encode("A dull, lifeless remake of a classic.", None)
        .unwrap();
    let t = m.default_target(&x).unwrap();
    for name in METHODS {
        let a = method_by_name(name, 1)
            .unwrap()
            .attribute(&m, &x, &t)
            .unwrap();
        assert_eq!(a.scores.len(), x.enc.ids.len(), "{name}");
        assert!(
            a.scores.iter().all(|s| s.is_finite()),
            "{name}: {:?}",
            a.scores
        );
        assert_eq!(a.tokens, x.enc.tokens);
        let f = faithfulness::evaluate(&m, &x, &t, &a, 16).unwrap();
        assert!(
            f.comprehensiveness.is_finite() && f.deletion_auc.is_finite(),
            "{name}"
        );
    }
    // Rollout rows are distributions.
    let r = method_by_name("rollout", 0)
        .unwrap()
        .attribute(&m, &x, &t)
        .unwrap();
    assert!((r.scores.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    // Sampling methods are seeded.
    let l1 = method_by_name("lime", 9)
        .unwrap()
        .attribute(&m, &x, &t)
        .unwrap();
    let l2 = method_by_name("lime", 9)
        .unwrap()
        .attribute(&m, &x, &t)
        .unwrap();
    assert_eq!(l1.scores, l2.scores);
    let e = method_by_name("deeplift", 0).err().unwrap().to_string();
    assert!(
        e.contains("unknown method `deeplift`") && e.contains("kernel_shap"),
        "{e}"
    );
}

#[test]
fn words_aggregate_subword_scores_in_order_with_duplicates_kept() {
    let mt = model();
    let m = ExplainModel::new(&mt, None).unwrap();
    let text = "movie movie unseenwordz";
    let x = m.encode(text, None).unwrap();
    let a = Saliency
        .attribute(&m, &x, &Target::Class { class: 1 })
        .unwrap();
    let w = prism_explain::aggregate_words(&a, &[text]);
    let words: Vec<&str> = w.tokens.iter().map(|s| s.as_str()).collect();
    assert_eq!(words, ["[CLS]", "movie", "movie", "unseenwordz", "[SEP]"]);
    assert!((w.scores.iter().sum::<f32>() - a.scores.iter().sum::<f32>()).abs() < 1e-4);
}
