//! Evaluation reads a text longer than the task's max_length in overlapping windows, as
//! `prism predict` does: the example's prediction is the mean over its windows (here a
//! regression value; class probabilities alike), not the first window's.

use candle_core::Device;
use prism_model::tasks::{Example, MultiTaskModel, Prediction, Target, TaskKind};
use prism_train::tasks::{Evaluate, Supervised};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn value(p: &Prediction) -> f64 {
    match p {
        Prediction::Value { value, .. } => *value as f64,
        other => panic!("{other:?}"),
    }
}

#[test]
fn evaluation_scores_long_texts_by_the_mean_of_their_windows() {
    let dir = fixtures().join("task-models").join("bert-regression");
    let m = MultiTaskModel::load(&dir, &Device::Cpu).unwrap();
    let task = &m.tasks[0];
    let text = [
        "A gorgeous, witty, seductive movie.",
        "The plot is dull and the acting is worse.",
        "Still, the music carries every scene.",
        "I would not watch it again.",
        "The man walks into a bar.",
    ]
    .repeat(5)
    .join(" ");
    let p = m.predict_text(0, &text, None).unwrap();
    let Prediction::Value { windows, .. } = p else {
        panic!("{p:?}")
    };
    assert!(windows > 3, "{windows} windows");
    // The windowed value is the mean of the windows' values.
    let ex = [Example::unlabelled(TaskKind::Regression, &text, None)];
    let feats = task.encode_windowed(&ex, None).unwrap();
    assert_eq!(feats.len(), windows);
    let per: Vec<f64> = feats
        .iter()
        .map(|f| {
            let one = [Example::unlabelled(TaskKind::Regression, "x", None)];
            let g = prism_model::tasks::Feature {
                example: 0,
                ..f.clone()
            };
            value(&m.predict(0, &one, &[g], 1).unwrap()[0])
        })
        .collect();
    let mean = per.iter().sum::<f64>() / per.len() as f64;
    assert!((value(&p) - mean).abs() < 1e-6, "{} vs {mean}", value(&p));
    assert!(
        (per[0] - mean).abs() > 1e-4,
        "the windows disagree: {per:?}"
    );
    // Evaluation scores that mean: gold = the windowed values gives zero error...
    let short = "A gorgeous movie.";
    let mut examples = vec![
        Example::unlabelled(TaskKind::Regression, &text, None),
        Example::unlabelled(TaskKind::Regression, short, None),
    ];
    examples[0].target = Target::Value(mean);
    examples[1].target = Target::Value(value(&m.predict_text(0, short, None).unwrap()));
    let path = Path::new("dev.jsonl");
    let r = m.evaluate(0, &examples, path, 4).unwrap();
    assert_eq!(r.examples, 2);
    assert!(r.metrics["mse"] < 1e-10, "{:?}", r.metrics);
    // ...where the first window alone (truncation) would not.
    let truncated = task.featurize(&examples, path).unwrap();
    assert_eq!(truncated.len(), 2);
    let t = m.evaluate_features(0, &examples, &truncated, 4).unwrap();
    assert!(
        (t.metrics["mse"] - (per[0] - mean).powi(2) / 2.0).abs() < 1e-6,
        "{:?}",
        t.metrics
    );
}
