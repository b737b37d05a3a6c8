//! Explanations and faithfulness on RoBERTa and XLNet (transformers' own task models from
//! make_fixtures.py --task-models): every registered method on a sequence, a tag and a QA
//! target; and faithfulness keeps a position target on its token when tokens are removed
//! (XLNet's batches are padded on the left, which moves it too).

use candle_core::Device;
use prism_explain::{faithfulness, method_by_name, Attributions, ExplainModel, Target, METHODS};
use prism_model::tasks::MultiTaskModel;
use std::path::PathBuf;

fn load(name: &str) -> MultiTaskModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/task-models")
        .join(name);
    MultiTaskModel::load(&dir, &Device::Cpu)
        .unwrap()
        .frozen()
        .unwrap()
}

fn input(kind: &str) -> (&'static str, Option<&'static str>) {
    match kind {
        "qa" => (
            "Where does the man walk?",
            Some("The man walks into a bar and orders a drink."),
        ),
        _ => ("The man walks into a bar and orders a drink.", None),
    }
}

#[test]
fn every_method_and_faithfulness_run_on_roberta_and_xlnet_for_every_target_kind() {
    for fam in ["roberta", "xlnet"] {
        for kind in ["seq", "token", "qa"] {
            let name = format!("{fam}-{kind}");
            let mt = load(&name);
            let m = ExplainModel::new(&mt, None).unwrap();
            let (text, pair) = input(kind);
            let x = m.encode(text, pair).unwrap();
            let t = m.default_target(&x).unwrap();
            assert_eq!(t.position().is_some(), kind != "seq", "{name}: {t:?}");
            for method in METHODS {
                let a = method_by_name(method, 0)
                    .unwrap()
                    .attribute(&m, &x, &t)
                    .unwrap_or_else(|e| panic!("{name} {method}: {e}"));
                assert_eq!(a.scores.len(), x.enc.ids.len(), "{name} {method}");
                assert!(
                    a.scores.iter().all(|s| s.is_finite()),
                    "{name} {method}: {:?}",
                    a.scores
                );
                let f = faithfulness::evaluate(&m, &x, &t, &a, 8).unwrap();
                for v in [
                    f.comprehensiveness,
                    f.sufficiency,
                    f.deletion_auc,
                    f.insertion_auc,
                ] {
                    assert!(v.is_finite(), "{name} {method}: {f:?}");
                }
            }
        }
    }
}

/// Hand-made attributions that rank the tokens before the target first, so every removal
/// moves the target; comprehensiveness by hand, one reduced input at a time, equals the
/// batched evaluation, and differs from reading the old position.
#[test]
fn faithfulness_keeps_a_position_target_on_its_token() {
    for name in ["roberta-token", "xlnet-token", "roberta-qa", "xlnet-qa"] {
        let mt = load(name);
        let m = ExplainModel::new(&mt, None).unwrap();
        let kind = name.split('-').nth(1).unwrap();
        let (text, pair) = input(kind);
        let x = m.encode(text, pair).unwrap();
        let feats = ExplainModel::features(&x);
        // The target: a token with removable tokens before it.
        let p = feats[feats.len() / 2];
        let t = match m.default_target(&x).unwrap() {
            Target::Tag { tag, .. } => Target::Tag { position: p, tag },
            _ => Target::AnswerStart { position: p },
        };
        let n = x.enc.ids.len();
        let scores: Vec<f32> = (0..n)
            .map(|j| {
                if j < p {
                    10.0 - j as f32 * 0.01
                } else {
                    -(j as f32)
                }
            })
            .collect();
        let a = Attributions {
            scores,
            ..method_by_name("saliency", 0)
                .unwrap()
                .attribute(&m, &x, &t)
                .unwrap()
        };
        let got = faithfulness::evaluate(&m, &x, &t, &a, 16).unwrap();
        // By hand: remove the top k removable tokens (never the target), find the target.
        let order: Vec<usize> = {
            let mut o: Vec<usize> = feats.iter().copied().filter(|&j| j != p).collect();
            o.sort_by(|&i, &j| a.scores[j].total_cmp(&a.scores[i]));
            o
        };
        let f_of = |removed: &[usize], track: bool| -> f64 {
            let keep: Vec<usize> = (0..n).filter(|j| !removed.contains(j)).collect();
            let ids: Vec<u32> = keep.iter().map(|&j| x.enc.ids[j]).collect();
            let types: Vec<u32> = keep.iter().map(|&j| x.enc.type_ids[j]).collect();
            let enc = prism_model::Encoded {
                tokens: vec![String::new(); ids.len()],
                offsets: vec![(0, 0); ids.len()],
                sequence_ids: vec![None; ids.len()],
                special_tokens_mask: vec![0; ids.len()],
                truncated: false,
                ids,
                type_ids: types,
            };
            let input = m.tokenizer().unwrap().batch(&[enc], m.device()).unwrap();
            let at = if track {
                keep.iter().position(|&j| j == p).unwrap()
            } else {
                p.min(keep.len() - 1)
            };
            m.f_from_input(&input, &t.at(at)).unwrap()[0] as f64
        };
        let f0 = f_of(&[], true);
        let ks: Vec<usize> = faithfulness::BINS
            .iter()
            .map(|b| ((b * order.len() as f64).ceil() as usize).clamp(1, order.len()))
            .collect();
        let comp = |track: bool| -> f64 {
            ks.iter()
                .map(|&k| f0 - f_of(&order[..k], track))
                .sum::<f64>()
                / ks.len() as f64
        };
        let tracked = comp(true);
        assert!(
            (got.comprehensiveness - tracked).abs() < 1e-5,
            "{name}: {} vs by hand {tracked}",
            got.comprehensiveness
        );
        assert!(
            (comp(false) - tracked).abs() > 1e-4,
            "{name}: the old position reads another token"
        );
    }
}
