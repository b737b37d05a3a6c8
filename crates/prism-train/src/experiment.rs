//! Multi-task vs single-task: the same tasks trained together and one at a time, with equal
//! update budgets, over several seeds; reported as mean ± standard deviation of each task's main
//! dev (and test) metric, side by side.

use crate::config::TrainConfig;
use crate::error::Result;
use crate::trainer::{train, Report, RunOptions};
use candle_core::Device;
use serde::Serialize;
use std::collections::BTreeMap;

/// One row of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub task: String,
    pub metric: String,
    pub split: String,
    pub single: Vec<f64>,
    pub multi: Vec<f64>,
}

pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64 } else { 0.0 };
    (m, var.sqrt())
}

fn main_metric(r: &Report, task: &str, split: &str) -> Option<(String, f64)> {
    let t = r.tasks.get(task)?;
    let res = if split == "dev" { t.dev.as_ref()? } else { t.test.as_ref()? };
    let key = t.kind.main_metric();
    res.metrics.get(key).map(|v| (key.to_string(), *v))
}

/// Run the comparison; each run writes under `cfg.output/seed-S/{multi,single-TASK}`.
pub fn mtl_vs_single(cfg: &TrainConfig, seeds: &[u64], device: &Device, progress: bool) -> Result<Vec<Row>> {
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for &seed in seeds {
        let base = cfg.output.join(format!("seed-{seed}"));
        let mut multi = cfg.clone();
        multi.seed = seed;
        multi.output = base.join("multi");
        let opts = RunOptions { progress, ..Default::default() };
        let mr = train(&multi, device, &opts)?;
        for t in &cfg.tasks {
            let mut single = cfg.clone();
            single.seed = seed;
            single.tasks = vec![t.clone()];
            single.output = base.join(format!("single-{}", t.name));
            if single.early_stopping.as_ref().is_some_and(|es| !es.metric.starts_with(&format!("{}.", t.name))) {
                single.early_stopping = None;
            }
            let sr = train(&single, device, &opts)?;
            for split in ["dev", "test"] {
                if let (Some((metric, s)), Some((_, m))) = (main_metric(&sr, &t.name, split), main_metric(&mr, &t.name, split)) {
                    let row = rows.entry((t.name.clone(), split.to_string())).or_insert_with(|| Row { task: t.name.clone(), metric, split: split.into(), single: vec![], multi: vec![] });
                    row.single.push(s);
                    row.multi.push(m);
                }
            }
        }
    }
    Ok(rows.into_values().collect())
}

/// The side-by-side table as text.
pub fn format_table(rows: &[Row], cfg: &TrainConfig, seeds: &[u64]) -> String {
    let mut s = format!(
        "{} updates of batch {} per run, seeds {:?}; mean ± std over seeds\n{:<14} {:<5} {:<10} {:>18} {:>18} {:>8}\n",
        cfg.steps, cfg.batch_size, seeds, "task", "split", "metric", "single-task", "multi-task", "delta"
    );
    for r in rows {
        let (sm, ss) = mean_std(&r.single);
        let (mm, ms) = mean_std(&r.multi);
        s.push_str(&format!("{:<14} {:<5} {:<10} {:>11.4} ± {:<.4} {:>11.4} ± {:<.4} {:>+8.4}\n", r.task, r.split, r.metric, sm, ss, mm, ms, mm - sm));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((s - 1.0).abs() < 1e-12);
        assert_eq!(mean_std(&[5.0]), (5.0, 0.0));
    }
}
