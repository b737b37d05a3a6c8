//! Texts longer than the task's max_length: overlapping windows, stitched back over the text
//! (tiny fixture classifier, max_length 64), and predictions read the same windows.

use candle_core::Device;
use prism_explain::gradient::IntegratedGradients;
use prism_explain::{method_by_name, ExplainModel, Method, Target};
use prism_model::tasks::{MultiTaskModel, Prediction};
use std::path::PathBuf;

fn model() -> MultiTaskModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-bert-cls");
    MultiTaskModel::load(&dir, &Device::Cpu).unwrap()
}

fn long_text() -> String {
    [
        "A gorgeous, witty, seductive movie.",
        "The plot is dull and the acting is worse.",
        "Still, the music carries every scene.",
        "I would not watch it again.",
    ]
    .iter()
    .cycle()
    .take(24)
    .cloned()
    .collect::<Vec<_>>()
    .join(" ")
}

#[test]
fn a_long_text_is_explained_window_by_window_and_stitched() {
    let mt = model().frozen().unwrap();
    let m = ExplainModel::new(&mt, None).unwrap();
    let text = long_text();
    let w = m.encode_windows(&text, None, None).unwrap();
    let max = m.tokenizer().unwrap().max_len();
    assert!(w.full.ids.len() > 3 * max, "{} tokens", w.full.ids.len());
    assert!(
        w.len() > 3,
        "{} windows: {:?}",
        w.len(),
        w.windows
            .iter()
            .map(|x| x.enc.ids.len())
            .collect::<Vec<_>>()
    );
    // Every window fits, shares half a window with the next, and maps onto the whole text.
    for (x, pos) in w.windows.iter().zip(&w.positions) {
        assert!(x.enc.ids.len() <= max);
        for (j, &g) in pos.iter().enumerate() {
            assert_eq!(x.enc.ids[j], w.full.ids[g], "window token {j} -> {g}");
        }
    }
    let text_tokens = |p: &[usize]| -> Vec<usize> {
        p.iter()
            .copied()
            .filter(|&g| w.full.special_tokens_mask[g] == 0)
            .collect()
    };
    let (a, b) = (text_tokens(&w.positions[0]), text_tokens(&w.positions[1]));
    let shared = a.iter().filter(|g| b.contains(g)).count();
    assert_eq!(shared, a.len() / 2, "half a window shared");
    // Every token of the text is in some window.
    let mut covered = vec![false; w.full.ids.len()];
    w.positions
        .iter()
        .flatten()
        .for_each(|&g| covered[g] = true);
    assert!(covered.iter().all(|&c| c));

    let target = m.default_target_windows(&w).unwrap();
    let ig = IntegratedGradients::default();
    let a = m.attribute_windows(&ig, &w, &target).unwrap();
    assert_eq!(a.windows, Some(w.len()));
    assert_eq!(a.tokens, w.full.tokens);
    assert_eq!(a.scores.len(), w.full.ids.len());
    // The documented rule, by hand: each token's mean over the windows that contain it; F the
    // windows' mean; delta the largest in magnitude.
    let per: Vec<_> = w
        .windows
        .iter()
        .map(|x| ig.attribute(&m, x, &target).unwrap())
        .collect();
    let mut sum = vec![0f64; a.scores.len()];
    let mut n = vec![0f64; a.scores.len()];
    for (p, pos) in per.iter().zip(&w.positions) {
        for (s, &g) in p.scores.iter().zip(pos) {
            sum[g] += *s as f64;
            n[g] += 1.0;
        }
    }
    for (g, s) in a.scores.iter().enumerate() {
        assert!((*s as f64 - sum[g] / n[g]).abs() < 1e-6, "token {g}");
    }
    let f: f32 = per.iter().map(|p| p.output).sum::<f32>() / per.len() as f32;
    assert!((a.output - f).abs() < 1e-6);
    let worst = per
        .iter()
        .map(|p| p.delta.unwrap())
        .max_by(|x, y| x.abs().total_cmp(&y.abs()))
        .unwrap();
    assert_eq!(a.delta, Some(worst));
    // The explained F is the prediction's probability: predictions read the same windows.
    let Prediction::Class {
        label,
        probabilities,
        windows,
    } = mt.predict_text(0, &text, None).unwrap()
    else {
        panic!("a class prediction")
    };
    assert_eq!(windows, w.len());
    let Target::Class { class } = target else {
        panic!()
    };
    assert_eq!(label, m.labels()[class]);
    assert!(
        (probabilities[&label] - a.output).abs() < 1e-5,
        "{probabilities:?} vs F {}",
        a.output
    );
    // Any registered method stitches the same way; a custom overlap changes the windows.
    for name in ["occlusion", "rollout", "gradient_shap"] {
        let s = m
            .attribute_windows(method_by_name(name, 0).unwrap().as_ref(), &w, &target)
            .unwrap();
        assert_eq!(s.scores.len(), w.full.ids.len(), "{name}");
        assert!(s.scores.iter().all(|v| v.is_finite()), "{name}");
    }
    let narrow = m.encode_windows(&text, None, Some(4)).unwrap();
    assert!(narrow.len() < w.len());
    let e = m
        .encode_windows(&text, None, Some(max))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("overlap"), "{e}");
    // A text that fits is one window, explained as before.
    let short = m.encode_windows("A gorgeous movie.", None, None).unwrap();
    assert_eq!(short.len(), 1);
    let one = m.attribute_windows(&ig, &short, &target).unwrap();
    assert_eq!(one.windows, None);
    assert_eq!(
        one.scores,
        ig.attribute(&m, &short.windows[0], &target).unwrap().scores
    );
}

/// Byte-level BPE splits an emoji into several tokens with the same offsets: windows are mapped
/// back by position, not by offsets, so every token keeps its own score.
#[test]
fn windows_map_back_tokens_that_share_their_offsets() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/task-models/roberta-seq");
    let mt = MultiTaskModel::load(&dir, &Device::Cpu)
        .unwrap()
        .frozen()
        .unwrap();
    let m = ExplainModel::new(&mt, None).unwrap();
    let text = "The man walks into a bar 🍺🎉 and orders a drink. ".repeat(12);
    let w = m.encode_windows(&text, None, None).unwrap();
    assert!(w.len() > 2, "{} windows", w.len());
    let shared = (1..w.full.ids.len())
        .filter(|&j| {
            w.full.offsets[j] == w.full.offsets[j - 1] && w.full.special_tokens_mask[j] == 0
        })
        .count();
    assert!(shared > 0, "the text has tokens sharing their offsets");
    for (x, pos) in w.windows.iter().zip(&w.positions) {
        for (j, &g) in pos.iter().enumerate() {
            assert_eq!(x.enc.ids[j], w.full.ids[g]);
        }
        // No two tokens of a window land on one place.
        let mut p = pos.clone();
        p.sort();
        p.dedup();
        assert_eq!(p.len(), pos.len());
    }
    let t = m.default_target_windows(&w).unwrap();
    let a = m
        .attribute_windows(method_by_name("saliency", 0).unwrap().as_ref(), &w, &t)
        .unwrap();
    assert_eq!(a.scores.len(), w.full.ids.len());
    assert!(a.scores.iter().all(|s| *s > 0.0), "every token scored");
    // A long second text is the one cut; the first stays whole in every window.
    let w = m
        .encode_windows("Is it about a bar?", Some(&text), None)
        .unwrap();
    assert!(w.len() > 2);
    for x in &w.windows {
        let first: Vec<u32> = (0..x.enc.ids.len())
            .filter(|&j| x.enc.sequence_ids[j] == Some(0))
            .map(|j| x.enc.ids[j])
            .collect();
        let whole: Vec<u32> = (0..w.full.ids.len())
            .filter(|&j| w.full.sequence_ids[j] == Some(0))
            .map(|j| w.full.ids[j])
            .collect();
        assert_eq!(first, whole);
    }
    // A first text that leaves less than a quarter of the window: truncated, as before.
    let long_first = "a long first text ".repeat(12);
    let w = m.encode_windows(&long_first, Some(&text), None).unwrap();
    assert_eq!(w.len(), 1);
    assert!(w.windows[0].enc.truncated);
}
