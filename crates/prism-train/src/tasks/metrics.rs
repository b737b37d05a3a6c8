//! Evaluation metrics: accuracy, macro-F1, multi-label micro/macro F1 and per-label scores, Matthews correlation (multi-class, Gorodkin 2004),
//! Pearson and Spearman correlation, and SQuAD exact match / F1 with the official answer
//! normalisation (lower-case, strip punctuation and articles a/an/the, collapse whitespace).

use std::collections::HashMap;

pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// `confusion[g][p]`: how often gold class g was predicted as p.
pub fn confusion(pred: &[usize], gold: &[usize], n: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0usize; n]; n];
    for (&p, &g) in pred.iter().zip(gold) {
        if p < n && g < n {
            m[g][p] += 1;
        }
    }
    m
}

/// Unweighted mean of per-class F1 over classes that occur in gold or predictions.
pub fn macro_f1(pred: &[usize], gold: &[usize], n: usize) -> f64 {
    let m = confusion(pred, gold, n);
    let mut total = 0.0;
    let mut classes = 0;
    for c in 0..n {
        let tp = m[c][c] as f64;
        let gold_c: usize = m[c].iter().sum();
        let pred_c: usize = (0..n).map(|g| m[g][c]).sum();
        if gold_c == 0 && pred_c == 0 {
            continue;
        }
        classes += 1;
        let denom = (gold_c + pred_c) as f64;
        total += if denom > 0.0 { 2.0 * tp / denom } else { 0.0 };
    }
    if classes == 0 {
        0.0
    } else {
        total / classes as f64
    }
}

/// Matthews correlation coefficient for K classes (equals the binary MCC when K = 2).
pub fn mcc(pred: &[usize], gold: &[usize], n: usize) -> f64 {
    let m = confusion(pred, gold, n);
    let s = gold.len() as f64;
    let c: f64 = (0..n).map(|k| m[k][k] as f64).sum();
    let t: Vec<f64> = (0..n).map(|k| m[k].iter().sum::<usize>() as f64).collect();
    let p: Vec<f64> = (0..n)
        .map(|k| (0..n).map(|g| m[g][k]).sum::<usize>() as f64)
        .collect();
    let tp: f64 = t.iter().zip(&p).map(|(a, b)| a * b).sum();
    let num = c * s - tp;
    let den = ((s * s - p.iter().map(|x| x * x).sum::<f64>())
        * (s * s - t.iter().map(|x| x * x).sum::<f64>()))
    .sqrt();
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Precision, recall, F1 and support (gold count) of one label of a multi-label task.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LabelScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

fn prf(tp: usize, fp: usize, fn_: usize) -> (f64, f64, f64) {
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (p, r) = (ratio(tp, tp + fp), ratio(tp, tp + fn_));
    (p, r, ratio(2 * tp, 2 * tp + fp + fn_))
}

/// Multi-label scores of predicted against gold label sets (each a 0/1 row over `n` labels),
/// as scikit-learn computes them with `zero_division=0`: micro F1 (over all label decisions),
/// macro F1 (the unweighted mean over labels), exact match (subset accuracy), Hamming loss,
/// and each label's precision, recall, F1 and support.
pub struct MultiLabelScores {
    pub micro_precision: f64,
    pub micro_recall: f64,
    pub micro_f1: f64,
    pub macro_f1: f64,
    pub exact_match: f64,
    pub hamming_loss: f64,
    pub per_label: Vec<LabelScores>,
}

pub fn multi_label(pred: &[Vec<bool>], gold: &[Vec<bool>], n: usize) -> MultiLabelScores {
    let mut counts = vec![(0usize, 0usize, 0usize); n];
    let (mut exact, mut wrong) = (0usize, 0usize);
    for (p, g) in pred.iter().zip(gold) {
        let mut all = true;
        for j in 0..n {
            let (pj, gj) = (p.get(j) == Some(&true), g.get(j) == Some(&true));
            match (pj, gj) {
                (true, true) => counts[j].0 += 1,
                (true, false) => counts[j].1 += 1,
                (false, true) => counts[j].2 += 1,
                (false, false) => {}
            }
            if pj != gj {
                all = false;
                wrong += 1;
            }
        }
        exact += all as usize;
    }
    let per_label: Vec<LabelScores> = counts
        .iter()
        .map(|&(tp, fp, fn_)| {
            let (precision, recall, f1) = prf(tp, fp, fn_);
            LabelScores {
                precision,
                recall,
                f1,
                support: tp + fn_,
            }
        })
        .collect();
    let sum = |f: fn(&(usize, usize, usize)) -> usize| counts.iter().map(f).sum::<usize>();
    let (p, r, f) = prf(sum(|c| c.0), sum(|c| c.1), sum(|c| c.2));
    let m = gold.len();
    MultiLabelScores {
        micro_precision: p,
        micro_recall: r,
        micro_f1: f,
        macro_f1: if n == 0 {
            0.0
        } else {
            per_label.iter().map(|s| s.f1).sum::<f64>() / n as f64
        },
        exact_match: if m == 0 { 0.0 } else { exact as f64 / m as f64 },
        hamming_loss: if m * n == 0 {
            0.0
        } else {
            wrong as f64 / (m * n) as f64
        },
        per_label,
    }
}

pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        0.0
    } else {
        cov / (vx * vy).sqrt()
    }
}

/// Ranks with ties given their average rank (as scipy.stats.rankdata).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// The official SQuAD v1.1 answer normalisation.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn exact_match(pred: &str, gold: &str) -> f64 {
    (normalize_answer(pred) == normalize_answer(gold)) as u8 as f64
}

/// Token-overlap F1 between normalised answers.
pub fn f1_score(pred: &str, gold: &str) -> f64 {
    let p = normalize_answer(pred);
    let g = normalize_answer(gold);
    let pt: Vec<&str> = p.split_whitespace().collect();
    let gt: Vec<&str> = g.split_whitespace().collect();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &gt {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in &pt {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pt.len() as f64;
    let recall = same as f64 / gt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// Max over gold answers, as the official script scores each question.
pub fn squad_scores(pred: &str, golds: &[String]) -> (f64, f64) {
    let em = golds
        .iter()
        .map(|g| exact_match(pred, g))
        .fold(0.0, f64::max);
    let f1 = golds.iter().map(|g| f1_score(pred, g)).fold(0.0, f64::max);
    (em, f1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_label_scores_follow_their_definitions() {
        // By hand (sklearn's definitions, zero_division=0): label 0 tp 2; label 1 tp 1, fn 1;
        // label 2 fp 1, fn 1. Micro: tp 3, fp 1, fn 2.
        let b = |r: [u8; 3]| r.iter().map(|&x| x == 1).collect::<Vec<bool>>();
        let gold = [b([1, 0, 1]), b([0, 1, 0]), b([1, 1, 0]), b([0, 0, 0])];
        let pred = [b([1, 0, 0]), b([0, 1, 1]), b([1, 0, 0]), b([0, 0, 0])];
        let s = multi_label(&pred, &gold, 3);
        let near = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        near(s.micro_precision, 0.75);
        near(s.micro_recall, 0.6);
        near(s.micro_f1, 6.0 / 9.0);
        near(s.macro_f1, (1.0 + 2.0 / 3.0 + 0.0) / 3.0);
        near(s.hamming_loss, 3.0 / 12.0);
        near(s.exact_match, 0.25);
        assert_eq!(
            s.per_label[1],
            LabelScores {
                precision: 1.0,
                recall: 0.5,
                f1: 2.0 / 3.0,
                support: 2
            }
        );
        assert_eq!(s.per_label[2].support, 1);
        near(s.per_label[2].f1, 0.0);
    }

    #[test]
    fn classification_metrics_match_sklearn() {
        // sklearn: accuracy 0.625, f1_score(average="macro") 0.6222..., matthews_corrcoef 0.452380...
        let gold = [0, 0, 1, 1, 2, 2, 2, 0];
        let pred = [0, 1, 1, 1, 2, 0, 2, 2];
        assert!((accuracy(&pred, &gold) - 0.625).abs() < 1e-12);
        assert!(
            (macro_f1(&pred, &gold, 3) - 0.6222222222222222).abs() < 1e-9,
            "{}",
            macro_f1(&pred, &gold, 3)
        );
        assert!(
            (mcc(&pred, &gold, 3) - 0.4523809523809524).abs() < 1e-9,
            "{}",
            mcc(&pred, &gold, 3)
        );
        // Binary MCC of a perfect and an inverted classifier.
        assert!((mcc(&[0, 1, 0, 1], &[0, 1, 0, 1], 2) - 1.0).abs() < 1e-12);
        assert!((mcc(&[1, 0, 1, 0], &[0, 1, 0, 1], 2) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn correlations_match_scipy() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 1.0, 4.0, 3.0, 7.0];
        // scipy.stats.pearsonr -> 0.8241633836921339; spearmanr -> 0.8
        assert!((pearson(&x, &y) - 0.8241633836921339).abs() < 1e-12);
        assert!((spearman(&x, &y) - 0.8).abs() < 1e-9);
        // Ties get average ranks: spearmanr([1,2,2,3],[1,3,2,4]) = 0.9486832980505138
        assert!(
            (spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]) - 0.9486832980505139).abs()
                < 1e-9
        );
    }

    #[test]
    fn squad_normalisation_follows_the_official_script() {
        assert_eq!(normalize_answer("The  Denver Broncos!"), "denver broncos");
        assert_eq!(exact_match("the Denver Broncos", "Denver Broncos"), 1.0);
        assert!((f1_score("Denver Broncos team", "Denver Broncos") - 0.8).abs() < 1e-12);
        assert_eq!(
            squad_scores("Carolina", &["Denver".into(), "Carolina Panthers".into()]).0,
            0.0
        );
        assert!(
            (squad_scores("Carolina", &["Denver".into(), "Carolina Panthers".into()]).1
                - 2.0 / 3.0)
                .abs()
                < 1e-12
        );
    }
}

/// Entity spans `(type, start, end)` of a BIO tag sequence (an I- without a matching B- starts
/// an entity, as seqeval's default mode).
fn entities(tags: &[String]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, usize)> = None;
    for (i, t) in tags.iter().enumerate() {
        let (prefix, kind) = t.split_once('-').unwrap_or((t.as_str(), ""));
        let continues = prefix == "I" && cur.as_ref().is_some_and(|(k, _)| k == kind);
        if !continues {
            if let Some((k, s)) = cur.take() {
                out.push((k, s, i));
            }
            if prefix == "B" || prefix == "I" {
                cur = Some((kind.to_string(), i));
            }
        }
    }
    if let Some((k, s)) = cur {
        out.push((k, s, tags.len()));
    }
    out
}

/// Entity-level micro precision, recall and F1 over BIO-tagged sequences (CoNLL style).
pub fn entity_prf(pred: &[Vec<String>], gold: &[Vec<String>]) -> (f64, f64, f64) {
    let (mut tp, mut np, mut ng) = (0usize, 0usize, 0usize);
    for (p, g) in pred.iter().zip(gold) {
        let pe = entities(p);
        let ge = entities(g);
        np += pe.len();
        ng += ge.len();
        tp += pe.iter().filter(|e| ge.contains(e)).count();
    }
    let precision = if np == 0 { 0.0 } else { tp as f64 / np as f64 };
    let recall = if ng == 0 { 0.0 } else { tp as f64 / ng as f64 };
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    (precision, recall, f1)
}

#[cfg(test)]
mod entity_tests {
    use super::*;

    fn tags(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn entity_f1_counts_whole_spans() {
        let gold = vec![tags("B-PER I-PER O B-LOC")];
        let pred = vec![tags("B-PER I-PER O B-ORG")];
        let (p, r, f) = entity_prf(&pred, &gold);
        assert_eq!((p, r, f), (0.5, 0.5, 0.5));
        let pred = vec![tags("B-PER O O B-LOC")];
        assert_eq!(entity_prf(&pred, &gold).2, 0.5);
    }
}
