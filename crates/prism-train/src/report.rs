//! The HTML training report: per-task loss curves and dev-metric curves as inline SVG, the
//! final dev/test table, and a confusion matrix per classification task. Self-contained (no
//! network) and every piece of text escaped.

use crate::error::{Error, Result};
use crate::tasks::{EvalResult, TaskKind};
use prism_model::html::escape;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// What a finished run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub steps: usize,
    pub completed: bool,
    pub stopped_early: bool,
    pub best: Option<(usize, f64)>,
    pub best_metric: String,
    /// Whether `model_dir` holds the best dev checkpoint (early stopping) or the last update.
    #[serde(default)]
    pub final_is_best: bool,
    pub train_seconds: f64,
    pub tasks: BTreeMap<String, TaskReport>,
    pub model_dir: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskReport {
    pub kind: TaskKind,
    pub labels: Vec<String>,
    pub train_examples: usize,
    pub dev: Option<EvalResult>,
    pub test: Option<EvalResult>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra_test: BTreeMap<String, EvalResult>,
}

pub fn fmt_metrics(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
];

/// A line chart of named series of (x, y) points.
pub(crate) fn svg_chart(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h, pad) = (520.0, 220.0, 40.0);
    let pts: Vec<&(f64, f64)> = series.iter().flat_map(|s| s.1.iter()).collect();
    if pts.is_empty() {
        return String::new();
    }
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in &pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1e-6;
    }
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0) * (h - 2.0 * pad);
    let mut s = format!("<figure><figcaption>{}</figcaption><svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">", escape(title));
    let _ = write!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
        h - pad,
        w - pad,
        h - pad
    );
    let _ = write!(
        s,
        "<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#999\"/>",
        h - pad
    );
    let _ = write!(s, "<text x=\"4\" y=\"{}\" font-size=\"10\">{y1:.3}</text><text x=\"4\" y=\"{}\" font-size=\"10\">{y0:.3}</text>", pad, h - pad);
    let _ = write!(s, "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">{x0:.0}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{x1:.0}</text>", h - pad + 14.0, w - pad, h - pad + 14.0);
    for (i, (name, p)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
            path.join(" ")
        );
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{color}\">{}</text>",
            w - pad - 150.0,
            pad + 12.0 * i as f64,
            escape(name)
        );
    }
    s.push_str("</svg></figure>");
    s
}

/// Smooth a noisy per-step loss with an exponential moving average for display.
pub(crate) fn ema(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut acc: Option<f64> = None;
    for &(x, y) in points {
        let v = acc.map_or(y, |a| (1.0 - alpha) * a + alpha * y);
        acc = Some(v);
        out.push((x, v));
    }
    out
}

pub fn write_html(out: &Path, report: &Report, metrics_log: &Path) -> Result<()> {
    let log = std::fs::read_to_string(metrics_log).unwrap_or_default();
    let mut losses: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    // metric -> split ("dev", and "train" with `eval_train_examples`) -> points.
    let mut dev: BTreeMap<String, BTreeMap<String, Vec<(f64, f64)>>> = BTreeMap::new();
    // Multi-task updates ([multitask] tasks_per_update > 1): pairwise cosines of the tasks'
    // shared-encoder gradients, and each task's gradient norm.
    let mut cosines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut norms: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(step), Some(pairs)) = (v["step"].as_f64(), v["gradient_cosine"].as_object()) {
            for (pair, c) in pairs {
                if let Some(c) = c.as_f64() {
                    cosines.entry(pair.clone()).or_default().push((step, c));
                }
            }
            continue;
        }
        if let (Some(step), Some(task), Some(n)) = (
            v["step"].as_f64(),
            v["task"].as_str(),
            v["task_grad_norm"].as_f64(),
        ) {
            norms.entry(task.to_string()).or_default().push((step, n));
        }
        let (Some(step), Some(task)) = (v["step"].as_f64(), v["task"].as_str()) else {
            continue;
        };
        if let Some(l) = v["loss"].as_f64() {
            losses.entry(task.to_string()).or_default().push((step, l));
        } else if let Some(m) = v["metrics"].as_object() {
            for (k, val) in m {
                if let Some(x) = val.as_f64() {
                    // `eval_train_examples`: the training subset in the same chart as dev.
                    let split = v["split"].as_str().unwrap_or("dev").to_string();
                    dev.entry(format!("{task}.{k}"))
                        .or_default()
                        .entry(split)
                        .or_default()
                        .push((step, x));
                }
            }
        }
    }
    let mut h = String::new();
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><title>prism training report</title><style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}figcaption{font-weight:600}.cm td{min-width:2.5em}</style></head><body>");
    let _ = write!(h, "<h1>prism training report</h1><p>{} updates in {:.0} s{}; evaluated model: <code>{}</code> ({}). Best dev score ({}) at step {}, kept in <code>best/</code>.</p>",
        report.steps, report.train_seconds, if report.stopped_early { " (stopped early)" } else { "" }, escape(&report.model_dir.display().to_string()),
        if report.final_is_best { "the best dev checkpoint" } else { "the last update" },
        escape(&report.best_metric), report.best.map_or("-".to_string(), |b| b.0.to_string()));
    h.push_str("<h2>Results</h2><table><tr><th>task</th><th>kind</th><th>train</th><th>split</th><th>examples</th><th>metrics</th></tr>");
    for (name, t) in &report.tasks {
        for (split, r) in [("dev", &t.dev), ("test", &t.test)] {
            if let Some(r) = r {
                let _ = write!(h, "<tr><td>{}</td><td>{:?}</td><td>{}</td><td>{split}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>", escape(name), t.kind, t.train_examples, r.examples, escape(&fmt_metrics(&r.metrics)));
            }
        }
    }
    h.push_str("</table><h2>Training loss (EMA 0.1)</h2>");
    let loss_series: Vec<(String, Vec<(f64, f64)>)> = losses
        .iter()
        .map(|(k, v)| (k.clone(), ema(v, 0.1)))
        .collect();
    h.push_str(&svg_chart("loss per task", &loss_series));
    if !cosines.is_empty() {
        h.push_str("<h2>Gradient conflict</h2><p>Cosine similarity of each task pair's shared-encoder gradients per micro-batch (EMA 0.1): below 0 the tasks pull the encoder in opposing directions.</p>");
        let series: Vec<(String, Vec<(f64, f64)>)> = cosines
            .iter()
            .map(|(k, v)| (k.clone(), ema(v, 0.1)))
            .collect();
        h.push_str(&svg_chart("gradient cosine per task pair", &series));
        let series: Vec<(String, Vec<(f64, f64)>)> = norms
            .iter()
            .map(|(k, v)| (k.clone(), ema(v, 0.1)))
            .collect();
        h.push_str(&svg_chart("shared-encoder gradient norm per task", &series));
    }
    h.push_str("<h2>Evaluation metrics (dev; and the training subset with <code>eval_train_examples</code>)</h2>");
    for (name, splits) in &dev {
        let series: Vec<(String, Vec<(f64, f64)>)> = splits
            .iter()
            .map(|(split, pts)| (format!("{name} ({split})"), pts.clone()))
            .collect();
        h.push_str(&svg_chart(name, &series));
    }
    for (name, t) in &report.tasks {
        if let Some(cm) = t.dev.as_ref().and_then(|d| d.confusion.as_ref()) {
            let _ = write!(h, "<h2>Confusion matrix: {} (dev; rows gold, columns predicted)</h2><table class=\"cm\"><tr><th></th>", escape(name));
            for l in &t.labels {
                let _ = write!(h, "<th>{}</th>", escape(l));
            }
            h.push_str("</tr>");
            let max = cm.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
            for (g, row) in cm.iter().enumerate() {
                let _ = write!(
                    h,
                    "<tr><th>{}</th>",
                    escape(t.labels.get(g).map_or("?", |s| s))
                );
                for &c in row {
                    let a = c as f64 / max;
                    let _ = write!(
                        h,
                        "<td style=\"background:rgba(31,119,180,{a:.2})\">{c}</td>"
                    );
                }
                h.push_str("</tr>");
            }
            h.push_str("</table>");
        }
    }
    for (name, t) in &report.tasks {
        for (split, r) in [("dev", &t.dev), ("test", &t.test)] {
            let Some(per) = r.as_ref().and_then(|r| r.per_label.as_ref()) else {
                continue;
            };
            let _ = write!(h, "<h2>Per-label scores: {} ({split})</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>", escape(name));
            for (label, s) in per {
                let _ = write!(
                    h,
                    "<tr><th>{}</th><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{}</td></tr>",
                    escape(label),
                    s.precision,
                    s.recall,
                    s.f1,
                    s.support
                );
            }
            h.push_str("</table>");
        }
    }
    h.push_str("</body></html>\n");
    let path = out.join("report.html");
    prism_model::checkpoint::write_atomic(&path, h.as_bytes()).map_err(Error::from)
}
