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
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn main_metric(r: &Report, task: &str, split: &str) -> Option<(String, f64)> {
    let t = r.tasks.get(task)?;
    let res = if split == "dev" {
        t.dev.as_ref()?
    } else {
        t.test.as_ref()?
    };
    let key = t.kind.main_metric();
    res.metrics.get(key).map(|v| (key.to_string(), *v))
}

/// Run the comparison; each run writes under `cfg.output/seed-S/{multi,single-TASK}`.
pub fn mtl_vs_single(
    cfg: &TrainConfig,
    seeds: &[u64],
    device: &Device,
    progress: bool,
) -> Result<Vec<Row>> {
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for &seed in seeds {
        let base = cfg.output.join(format!("seed-{seed}"));
        let mut multi = cfg.clone();
        multi.seed = seed;
        multi.output = base.join("multi");
        let opts = RunOptions {
            progress,
            ..Default::default()
        };
        let mr = train(&multi, device, &opts)?;
        for t in &cfg.tasks {
            let mut single = cfg.clone();
            single.seed = seed;
            single.tasks = vec![t.clone()];
            single.output = base.join(format!("single-{}", t.name));
            if single
                .early_stopping
                .as_ref()
                .is_some_and(|es| !es.metric.starts_with(&format!("{}.", t.name)))
            {
                single.early_stopping = None;
            }
            let sr = train(&single, device, &opts)?;
            for split in ["dev", "test"] {
                if let (Some((metric, s)), Some((_, m))) = (
                    main_metric(&sr, &t.name, split),
                    main_metric(&mr, &t.name, split),
                ) {
                    let row = rows
                        .entry((t.name.clone(), split.to_string()))
                        .or_insert_with(|| Row {
                            task: t.name.clone(),
                            metric,
                            split: split.into(),
                            single: vec![],
                            multi: vec![],
                        });
                    row.single.push(s);
                    row.multi.push(m);
                }
            }
        }
    }
    Ok(rows.into_values().collect())
}

/// One cell of a sweep: a config's metric on one split of one task, over seeds.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub config: String,
    pub task: String,
    pub split: String,
    pub metric: String,
    pub values: Vec<f64>,
}

/// Train every config with every seed (outputs under `output/seed-S`) and collect each task's
/// final metrics on dev, test and the extra test sets.
pub fn sweep(
    configs: &[(String, TrainConfig)],
    seeds: &[u64],
    device: &Device,
    progress: bool,
    metrics: &[String],
) -> Result<Vec<SweepRow>> {
    let mut rows: BTreeMap<(usize, String, String, String), SweepRow> = BTreeMap::new();
    for (ci, (name, cfg)) in configs.iter().enumerate() {
        for &seed in seeds {
            let mut c = cfg.clone();
            c.seed = seed;
            c.output = cfg.output.join(format!("seed-{seed}"));
            let r = train(
                &c,
                device,
                &RunOptions {
                    progress,
                    ..Default::default()
                },
            )?;
            for (task, t) in &r.tasks {
                let mut splits: Vec<(String, &crate::tasks::EvalResult)> = Vec::new();
                if let Some(d) = &t.dev {
                    splits.push(("dev".into(), d));
                }
                if let Some(d) = &t.test {
                    splits.push(("test".into(), d));
                }
                for (k, v) in &t.extra_test {
                    splits.push((k.clone(), v));
                }
                for (split, res) in splits {
                    for (metric, v) in &res.metrics {
                        if !metrics.is_empty() && !metrics.contains(metric) {
                            continue;
                        }
                        rows.entry((ci, task.clone(), split.clone(), metric.clone()))
                            .or_insert_with(|| SweepRow {
                                config: name.clone(),
                                task: task.clone(),
                                split: split.clone(),
                                metric: metric.clone(),
                                values: vec![],
                            })
                            .values
                            .push(*v);
                    }
                }
            }
        }
    }
    Ok(rows.into_values().collect())
}

/// A sweep as a Markdown table (mean ± sample std over seeds).
pub fn format_sweep(rows: &[SweepRow], seeds: &[u64]) -> String {
    let mut s = format!("seeds {seeds:?}; mean ± std\n\n| config | task | split | metric | mean ± std | values |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let (m, sd) = mean_std(&r.values);
        let vals: Vec<String> = r.values.iter().map(|v| format!("{v:.4}")).collect();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {m:.4} ± {sd:.4} | {} |\n",
            r.config,
            r.task,
            r.split,
            r.metric,
            vals.join(", ")
        ));
    }
    s
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
        s.push_str(&format!(
            "{:<14} {:<5} {:<10} {:>11.4} ± {:<.4} {:>11.4} ± {:<.4} {:>+8.4}\n",
            r.task,
            r.split,
            r.metric,
            sm,
            ss,
            mm,
            ms,
            mm - sm
        ));
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
