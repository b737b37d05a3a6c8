//! Metrics of a task's predictions against its examples' targets, and evaluating a model's
//! task on a data set.

use super::metrics;
use super::{Feature, Prediction, Supervised, Task, TaskKind};
use crate::error::Result;
use prism_model::tasks::{Example, MultiTaskModel, Target};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Metrics on a data set plus, for classification, the confusion matrix (`[gold][pred]`).
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct EvalResult {
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Vec<Vec<usize>>>,
    /// Multi-label: each label's precision, recall, F1 and support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_label: Option<BTreeMap<String, metrics::LabelScores>>,
    pub examples: usize,
}

/// Evaluating a task of a model on labelled examples.
pub trait Evaluate {
    /// Featurise, predict and score task `ti` on `examples`.
    fn evaluate(
        &self,
        ti: usize,
        examples: &[Example],
        path: &Path,
        batch_size: usize,
    ) -> Result<EvalResult>;
    /// Predict and score task `ti` on already featurised `examples`.
    fn evaluate_features(
        &self,
        ti: usize,
        examples: &[Example],
        feats: &[Feature],
        batch_size: usize,
    ) -> Result<EvalResult>;
}

impl Evaluate for MultiTaskModel {
    fn evaluate(
        &self,
        ti: usize,
        examples: &[Example],
        path: &Path,
        batch_size: usize,
    ) -> Result<EvalResult> {
        let feats = self.tasks[ti].featurize_for_eval(examples, path)?;
        self.evaluate_features(ti, examples, &feats, batch_size)
    }

    fn evaluate_features(
        &self,
        ti: usize,
        examples: &[Example],
        feats: &[Feature],
        batch_size: usize,
    ) -> Result<EvalResult> {
        let preds = self.predict(ti, examples, feats, batch_size)?;
        Ok(self.tasks[ti].score(examples, &preds))
    }
}

/// Metrics of predictions against the examples' targets.
pub(super) fn score(task: &Task, examples: &[Example], preds: &[Prediction]) -> EvalResult {
    let spec = &task.spec;
    let mut r = EvalResult {
        examples: examples.len(),
        ..Default::default()
    };
    match spec.kind {
        TaskKind::Classification | TaskKind::PairClassification => {
            let mut gold = Vec::new();
            let mut pred = Vec::new();
            for (ex, p) in examples.iter().zip(preds) {
                if let (Target::Label(g), Prediction::Class { label, .. }) = (&ex.target, p) {
                    if let Some(gi) = spec.labels.iter().position(|l| l == g) {
                        gold.push(gi);
                        pred.push(spec.labels.iter().position(|l| l == label).unwrap_or(0));
                    }
                }
            }
            let n = spec.labels.len();
            r.metrics
                .insert("accuracy".into(), metrics::accuracy(&pred, &gold));
            r.metrics
                .insert("macro_f1".into(), metrics::macro_f1(&pred, &gold, n));
            r.metrics
                .insert("mcc".into(), metrics::mcc(&pred, &gold, n));
            r.confusion = Some(metrics::confusion(&pred, &gold, n));
        }
        TaskKind::MultiLabel => {
            let mut gold = Vec::new();
            let mut pred = Vec::new();
            let row = |names: &[String]| -> Vec<bool> {
                spec.labels.iter().map(|l| names.contains(l)).collect()
            };
            for (ex, p) in examples.iter().zip(preds) {
                if let (Target::Labels(g), Prediction::Labels { labels, .. }) = (&ex.target, p) {
                    gold.push(row(g));
                    pred.push(row(labels));
                }
            }
            let s = metrics::multi_label(&pred, &gold, spec.labels.len());
            for (k, v) in [
                ("micro_f1", s.micro_f1),
                ("micro_precision", s.micro_precision),
                ("micro_recall", s.micro_recall),
                ("macro_f1", s.macro_f1),
                ("exact_match", s.exact_match),
                ("hamming_loss", s.hamming_loss),
            ] {
                r.metrics.insert(k.into(), v);
            }
            r.per_label = Some(spec.labels.iter().cloned().zip(s.per_label).collect());
        }
        TaskKind::Regression => {
            let (gold, pred): (Vec<f64>, Vec<f64>) = examples
                .iter()
                .zip(preds)
                .filter_map(|(ex, p)| match (&ex.target, p) {
                    (Target::Value(g), Prediction::Value { value, .. }) => {
                        Some((*g, *value as f64))
                    }
                    _ => None,
                })
                .unzip();
            r.metrics
                .insert("pearson".into(), metrics::pearson(&pred, &gold));
            r.metrics
                .insert("spearman".into(), metrics::spearman(&pred, &gold));
            let mse = gold
                .iter()
                .zip(&pred)
                .map(|(g, p)| (g - p).powi(2))
                .sum::<f64>()
                / gold.len().max(1) as f64;
            r.metrics.insert("mse".into(), mse);
        }
        TaskKind::Qa => {
            let (mut em, mut f1, mut n) = (0.0, 0.0, 0usize);
            for (ex, p) in examples.iter().zip(preds) {
                if let (Target::Answers(golds), Prediction::Span { answer, .. }) = (&ex.target, p) {
                    if golds.is_empty() {
                        continue;
                    }
                    let texts: Vec<String> = golds.iter().map(|a| a.text.clone()).collect();
                    let (e, f) = metrics::squad_scores(answer, &texts);
                    em += e;
                    f1 += f;
                    n += 1;
                }
            }
            r.metrics
                .insert("exact_match".into(), 100.0 * em / n.max(1) as f64);
            r.metrics.insert("f1".into(), 100.0 * f1 / n.max(1) as f64);
        }
        TaskKind::Token => {
            let mut gold = Vec::new();
            let mut pred = Vec::new();
            for (ex, p) in examples.iter().zip(preds) {
                if let (Target::Tags(g), Prediction::Tags { tags }) = (&ex.target, p) {
                    gold.push(g.clone());
                    pred.push(tags.clone());
                }
            }
            let (p, rc, f) = metrics::entity_prf(&pred, &gold);
            let flat_g: Vec<usize> = gold
                .iter()
                .flatten()
                .map(|t| spec.labels.iter().position(|l| l == t).unwrap_or(0))
                .collect();
            let flat_p: Vec<usize> = pred
                .iter()
                .flatten()
                .map(|t| spec.labels.iter().position(|l| l == t).unwrap_or(0))
                .collect();
            r.metrics.insert("precision".into(), p);
            r.metrics.insert("recall".into(), rc);
            r.metrics.insert("f1".into(), f);
            r.metrics
                .insert("token_accuracy".into(), metrics::accuracy(&flat_p, &flat_g));
        }
    }
    r
}
