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
    foil: usize,
    /// Captum with other forward functions: `logit`, `log_prob`, `prob_foil`, `logit_foil`.
    variants: std::collections::BTreeMap<String, Variant>,
    noise_tunnel: NoiseTunnelCase,
    gradient_shap: GradientShapCase,
    word_ablation: WordAblationCase,
    attention: AttentionCase,
    /// Captum's layer methods on `encoder.layer[N]`, by N.
    layers: std::collections::BTreeMap<String, LayerCase>,
    /// |Σ A ⊙ dF/dA| per layer and head, from transformers' attention probabilities.
    head_importance: Vec<Vec<f32>>,
}

#[derive(serde::Deserialize)]
struct LayerCase {
    ig: Vec<f32>,
    ig_delta: f32,
    grad_x_act: Vec<f32>,
    conductance: Vec<f32>,
    conductance_delta: f32,
}

/// Raw attention, rollout and flow from the [CLS] row, by NumPy and networkx.
#[derive(serde::Deserialize)]
struct AttentionCase {
    raw: Vec<f32>,
    rollout: Vec<f32>,
    flow: Vec<f32>,
}

/// Captum's NoiseTunnel given its recorded noise (samples × T × C).
#[derive(serde::Deserialize)]
struct NoiseTunnelCase {
    samples: usize,
    noise: Vec<Vec<Vec<f32>>>,
    /// `BASE:SMOOTHING` -> per-token scores.
    scores: std::collections::BTreeMap<String, Vec<f32>>,
}

#[derive(serde::Deserialize)]
struct GradientShapCase {
    samples: usize,
    baseline: Vec<usize>,
    alpha: Vec<f32>,
    noise: Vec<Vec<Vec<f32>>>,
    scores: Vec<f32>,
}

#[derive(serde::Deserialize)]
struct WordAblationCase {
    /// Captum's feature mask: the word (group) of each token.
    groups: Vec<usize>,
    /// Captum's attribution per token (the group's drop).
    scores: Vec<f32>,
}

fn tensor3(v: &[Vec<Vec<f32>>]) -> candle_core::Tensor {
    let (s, t, c) = (v.len(), v[0].len(), v[0][0].len());
    let flat: Vec<f32> = v.iter().flatten().flatten().copied().collect();
    candle_core::Tensor::from_vec(flat, (s, t, c), &Device::Cpu).unwrap()
}

#[derive(serde::Deserialize)]
struct Variant {
    f: f32,
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
fn logit_log_prob_and_contrastive_outputs_match_captum() {
    use prism_explain::Output;
    let mt = model().frozen().unwrap();
    for c in cases() {
        for (name, want) in &c.variants {
            let output = Output::parse(name.strip_suffix("_foil").unwrap_or(name)).unwrap();
            let target = Target::Class { class: c.target };
            let foil = name
                .ends_with("_foil")
                .then_some(Target::Class { class: c.foil });
            let m = ExplainModel::new(&mt, None)
                .unwrap()
                .with_output(output)
                .with_foil(foil);
            let x = m.encode(&c.text, c.pair.as_deref()).unwrap();
            let s = Saliency.attribute(&m, &x, &target).unwrap();
            assert!(
                (s.output - want.f).abs() < 1e-5,
                "{name}: F {} vs {}",
                s.output,
                want.f
            );
            assert_eq!(s.output_kind, output);
            assert_eq!(s.foil.is_some(), foil.is_some());
            close(&format!("{name} saliency"), &s.scores, &want.saliency, 1e-4);
            let g = GradientXInput.attribute(&m, &x, &target).unwrap();
            close(
                &format!("{name} grad_x_input"),
                &g.scores,
                &want.grad_x_input,
                1e-4,
            );
            let a = IntegratedGradients::default()
                .attribute(&m, &x, &target)
                .unwrap();
            close(&format!("{name} ig"), &a.scores, &want.ig, 1e-4);
            assert!(
                (a.delta.unwrap() - want.ig_delta).abs() < 1e-3,
                "{name}: delta {:?} vs {}",
                a.delta,
                want.ig_delta
            );
        }
        // The recorded target names the output and the foil.
        let m = ExplainModel::new(&mt, None)
            .unwrap()
            .with_output(Output::Logit)
            .with_foil(Some(Target::Class { class: c.foil }));
        let x = m.encode(&c.text, c.pair.as_deref()).unwrap();
        let a = Saliency
            .attribute(&m, &x, &Target::Class { class: c.target })
            .unwrap();
        assert!(a.target.contains("(logit) − class"), "{}", a.target);
        // A foil equal to the target explains nothing: refused.
        let e = Saliency
            .attribute(
                &m.with_foil(Some(Target::Class { class: c.target })),
                &x,
                &Target::Class { class: c.target },
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("foil"), "{e}");
    }
}

#[test]
fn noise_tunnel_gradient_shap_and_word_ablation_match_captum_given_its_draws() {
    use prism_explain::gradient::{Base, GradientShap, NoiseTunnel, ShapDraws, Smoothing};
    use prism_explain::perturbation::WordAblation;
    let mt = model().frozen().unwrap();
    let m = ExplainModel::new(&mt, None).unwrap();
    for c in cases() {
        let x = m.encode(&c.text, c.pair.as_deref()).unwrap();
        let target = Target::Class { class: c.target };
        let nt = &c.noise_tunnel;
        assert_eq!(nt.scores.len(), 9);
        for (name, want) in &nt.scores {
            let (base, kind) = name.split_once(':').unwrap();
            let base = match base {
                "saliency" => Base::Saliency,
                "grad_x_input" => Base::GradientXInput,
                _ => Base::IntegratedGradients(IntegratedGradients::default()),
            };
            let method = NoiseTunnel {
                samples: nt.samples,
                draws: Some(tensor3(&nt.noise)),
                ..NoiseTunnel::new(base, Smoothing::parse(kind).unwrap())
            };
            let a = method.attribute(&m, &x, &target).unwrap();
            // Registered under the fixture's name (`smoothgrad` is saliency's).
            let registered = if name == "saliency:smoothgrad" {
                "smoothgrad"
            } else {
                name
            };
            assert_eq!(a.method, registered);
            assert!(method_by_name(name, 0).is_ok(), "{name} is registered");
            close(name, &a.scores, want, 1e-4);
        }
        let gs = &c.gradient_shap;
        let a = GradientShap {
            samples: gs.samples,
            draws: Some(ShapDraws {
                baseline: gs.baseline.clone(),
                alpha: gs.alpha.clone(),
                noise: Some(tensor3(&gs.noise)),
            }),
            ..Default::default()
        }
        .attribute(&m, &x, &target)
        .unwrap();
        close("gradient_shap", &a.scores, &gs.scores, 1e-4);
        // Batching does not change it.
        let b = GradientShap {
            samples: gs.samples,
            batch_size: 1,
            draws: Some(ShapDraws {
                baseline: gs.baseline.clone(),
                alpha: gs.alpha.clone(),
                noise: Some(tensor3(&gs.noise)),
            }),
            ..Default::default()
        }
        .attribute(&m, &x, &target)
        .unwrap();
        close("gradient_shap batch 1", &b.scores, &a.scores, 1e-6);
        // Word ablation: each word's tokens share its drop; Captum gives each token the whole
        // drop of its group, so the word-level sums equal Captum's group values.
        let wa = WordAblation::default().attribute(&m, &x, &target).unwrap();
        let texts: Vec<&str> = x.texts.iter().map(|s| s.as_str()).collect();
        let words = prism_explain::aggregate_words(&wa, &texts);
        let spans = prism_explain::word_spans(&wa);
        assert_eq!(spans.len(), words.scores.len());
        for ((s, e), got) in spans.iter().zip(&words.scores) {
            assert!(c.word_ablation.groups[*s..*e]
                .iter()
                .all(|&g| g == c.word_ablation.groups[*s]));
            let want = c.word_ablation.scores[*s];
            assert!(
                (got - want).abs() < 1e-5,
                "word {s}..{e}: {got} vs Captum {want}"
            );
        }
    }
}

#[test]
fn attention_rollout_and_flow_match_an_independent_numpy_implementation() {
    let mt = model().frozen().unwrap();
    let m = ExplainModel::new(&mt, None).unwrap();
    for c in cases() {
        let x = m.encode(&c.text, c.pair.as_deref()).unwrap();
        let target = Target::Class { class: c.target };
        for (name, want) in [
            ("attention", &c.attention.raw),
            ("rollout", &c.attention.rollout),
            ("flow", &c.attention.flow),
        ] {
            let a = method_by_name(name, 0)
                .unwrap()
                .attribute(&m, &x, &target)
                .unwrap();
            close(name, &a.scores, want, 1e-5);
        }
    }
}

#[test]
fn layer_ig_gradient_x_activation_conductance_and_head_importance_match_captum() {
    use prism_explain::layer::{
        head_importance, LayerConductance, LayerGradientXActivation, LayerIntegratedGradients,
    };
    let mt = model().frozen().unwrap();
    let m = ExplainModel::new(&mt, None).unwrap();
    for c in cases() {
        let x = m.encode(&c.text, c.pair.as_deref()).unwrap();
        let target = Target::Class { class: c.target };
        assert_eq!(c.layers.len(), 2, "two layers compared");
        let cond = LayerConductance {
            layer: None,
            ig: IntegratedGradients::default(),
        };
        let (map, fx, fb) = cond.map(&m, &x, &target).unwrap();
        assert_eq!(map.len(), 2);
        for (n, want) in &c.layers {
            let n: usize = n.parse().unwrap();
            let a = LayerIntegratedGradients {
                layer: Some(n),
                ig: IntegratedGradients::default(),
            }
            .attribute(&m, &x, &target)
            .unwrap();
            close(&format!("layer {n} ig"), &a.scores, &want.ig, 1e-4);
            let d = a.delta.unwrap();
            assert!(
                (d - want.ig_delta).abs() < 1e-3,
                "layer {n} delta {d} vs {}",
                want.ig_delta
            );
            let g = LayerGradientXActivation { layer: Some(n) }
                .attribute(&m, &x, &target)
                .unwrap();
            close(
                &format!("layer {n} grad_x_act"),
                &g.scores,
                &want.grad_x_act,
                1e-4,
            );
            close(
                &format!("layer {n} conductance"),
                &map[n],
                &want.conductance,
                1e-4,
            );
            let a = LayerConductance {
                layer: Some(n),
                ig: IntegratedGradients::default(),
            }
            .attribute(&m, &x, &target)
            .unwrap();
            // One layer alone (its backward stops there) equals that layer's row of the map.
            close(&format!("layer {n} alone vs map"), &a.scores, &map[n], 1e-6);
            let d = a.delta.unwrap();
            assert!(
                (d - want.conductance_delta).abs() < 1e-3,
                "{d} vs {}",
                want.conductance_delta
            );
            assert!(((fx - fb) - (a.scores.iter().sum::<f32>() - d)).abs() < 1e-5);
            // Through the registry, with `--layer`.
            let opts = prism_explain::MethodOptions {
                layer: Some(n),
                ..Default::default()
            };
            let r = prism_explain::method_with("layer_ig", &opts)
                .unwrap()
                .attribute(&m, &x, &target)
                .unwrap();
            close("registered layer_ig", &r.scores, &want.ig, 1e-4);
        }
        // Batching the conductance points differently changes nothing.
        let (small, _, _) = LayerConductance {
            layer: None,
            ig: IntegratedGradients {
                batch_size: 3,
                ..Default::default()
            },
        }
        .map(&m, &x, &target)
        .unwrap();
        for (a, b) in small.iter().zip(&map) {
            close("conductance batch 3 vs 16", a, b, 1e-6);
        }
        let h = head_importance(&m, &x, &target).unwrap();
        for (l, (got, want)) in h.raw.iter().zip(&c.head_importance).enumerate() {
            close(&format!("head importance layer {l}"), got, want, 1e-5);
        }
        for row in &h.scores {
            let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(
                (norm - 1.0).abs() < 1e-5,
                "per-layer L2 normalisation: {norm}"
            );
        }
    }
    // A layer that does not exist is refused, naming the range.
    let x = m.encode("a movie", None).unwrap();
    let e = LayerGradientXActivation { layer: Some(7) }
        .attribute(&m, &x, &Target::Class { class: 0 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 7") && e.contains("0..=1"), "{e}");
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
