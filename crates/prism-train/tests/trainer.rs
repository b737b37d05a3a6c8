//! The multi-task trainer end to end on the tiny fixture model and hand-written data: every task
//! kind at once, determinism, exact resume after an interruption, and bad-data errors.

use candle_core::Device;
use prism_model::tasks::MultiTaskModel;
use prism_train::config::TrainConfig;
use prism_train::tasks::Evaluate;
use prism_train::trainer::{flat_params, train, RunOptions};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn config(out: &Path, steps: usize, extra_tasks: &str) -> TrainConfig {
    let f = fixtures();
    let d = f.join("data");
    let text = format!(
        r#"
model = "{model}"
output = "{out}"
seed = 7
steps = {steps}
batch_size = 4
grad_accum = 2
lr = 2e-3
warmup = 0.2
eval_every = 5
checkpoint_every = 3

[sampling]
kind = "annealed"

[[task]]
name = "sentiment"
kind = "classification"
train = "{d}/sentiment.train.jsonl"
dev = "{d}/sentiment.dev.jsonl"
max_length = 32

[[task]]
name = "nli"
kind = "pair_classification"
train = "{d}/nli.train.jsonl"
dev = "{d}/nli.dev.jsonl"
max_length = 48
{extra_tasks}
"#,
        model = f.join("tiny-bert").display(),
        out = out.display(),
        d = d.display(),
    );
    let cfg: TrainConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// The run's metrics.jsonl records.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `cfg` trained for `n` updates of this invocation, as if interrupted then.
fn stop_after(cfg: &TrainConfig, n: usize) -> prism_train::trainer::Report {
    train(
        cfg,
        &Device::Cpu,
        &RunOptions {
            stop_after: Some(n),
            ..Default::default()
        },
    )
    .unwrap()
}

fn all_kinds() -> String {
    let d = fixtures().join("data");
    format!(
        r#"
[[task]]
name = "rating"
kind = "regression"
train = "{d}/rating.train.jsonl"
dev = "{d}/rating.dev.jsonl"
max_length = 32

[[task]]
name = "ner"
kind = "token"
train = "{d}/ner.train.jsonl"
dev = "{d}/ner.dev.jsonl"
max_length = 32

[[task]]
name = "qa"
kind = "qa"
train = "{d}/qa.train.json"
dev = "{d}/qa.train.json"
max_length = 32
doc_stride = 8
"#,
        d = d.display()
    )
}

#[test]
fn every_task_kind_trains_together_and_the_folder_predicts() {
    let out = tempfile::tempdir().unwrap();
    let cfg = config(out.path(), 12, &all_kinds());
    let report = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(report.completed);
    assert_eq!(report.tasks.len(), 5);
    for (name, t) in &report.tasks {
        let dev = t
            .dev
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no dev result"));
        assert!(!dev.metrics.is_empty(), "{name}");
        assert!(
            dev.metrics.values().all(|v| v.is_finite()),
            "{name}: {:?}",
            dev.metrics
        );
    }
    assert!(report.tasks["qa"]
        .dev
        .as_ref()
        .unwrap()
        .metrics
        .contains_key("exact_match"));
    assert!(report.tasks["sentiment"]
        .dev
        .as_ref()
        .unwrap()
        .confusion
        .is_some());
    for f in [
        "metrics.jsonl",
        "report.json",
        "report.html",
        "model/prism.json",
        "model/model.safetensors",
        "best/prism.json",
    ] {
        assert!(out.path().join(f).is_file(), "{f} missing");
    }
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Confusion matrix"));
    // The saved folder carries its heads: reloading gives the same predictions.
    let m = MultiTaskModel::load(&out.path().join("model"), &Device::Cpu).unwrap();
    assert_eq!(m.tasks.len(), 5);
    let ti = m.task_index("sentiment").unwrap();
    let d = fixtures().join("data/sentiment.dev.jsonl");
    let ex = prism_train::data::read_file(
        &d,
        &Default::default(),
        prism_train::data::TargetKind::Label,
        false,
    )
    .unwrap();
    let r = m.evaluate(ti, &ex, &d, 8).unwrap();
    assert_eq!(
        r.metrics["accuracy"],
        report.tasks["sentiment"].dev.as_ref().unwrap().metrics["accuracy"]
    );
}

#[test]
fn same_config_and_seed_give_the_same_weights() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    train(
        &config(a.path(), 6, ""),
        &Device::Cpu,
        &RunOptions::default(),
    )
    .unwrap();
    train(
        &config(b.path(), 6, ""),
        &Device::Cpu,
        &RunOptions::default(),
    )
    .unwrap();
    let pa =
        flat_params(&MultiTaskModel::load(&a.path().join("model"), &Device::Cpu).unwrap()).unwrap();
    let pb =
        flat_params(&MultiTaskModel::load(&b.path().join("model"), &Device::Cpu).unwrap()).unwrap();
    assert_eq!(pa, pb);
    // And training moved them away from the initial checkpoint.
    let init =
        prism_model::PretrainedModel::load(&fixtures().join("tiny-bert"), &Device::Cpu).unwrap();
    let w0: Vec<f32> = init
        .params
        .get("encoder.layer.0.output.dense.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let m = MultiTaskModel::load(&a.path().join("model"), &Device::Cpu).unwrap();
    let w1: Vec<f32> = m
        .base
        .params
        .get("encoder.layer.0.output.dense.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_ne!(w0, w1);
}

#[test]
fn an_interrupted_run_resumes_to_the_same_weights() {
    let full = tempfile::tempdir().unwrap();
    train(
        &config(full.path(), 10, ""),
        &Device::Cpu,
        &RunOptions::default(),
    )
    .unwrap();

    let split = tempfile::tempdir().unwrap();
    let cfg = config(split.path(), 10, "");
    let first = train(
        &cfg,
        &Device::Cpu,
        &RunOptions {
            stop_after: Some(4),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!first.completed);
    assert_eq!(first.steps, 4);
    let second = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(second.completed);
    assert_eq!(second.steps, 10);
    let pa = flat_params(&MultiTaskModel::load(&full.path().join("model"), &Device::Cpu).unwrap())
        .unwrap();
    let pb = flat_params(&MultiTaskModel::load(&split.path().join("model"), &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(
        pa, pb,
        "resumed run must end at the uninterrupted run's weights"
    );
    // The metrics log has each step exactly once.
    let count = |p: &Path| {
        std::fs::read_to_string(p.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"loss\""))
            .count()
    };
    assert_eq!(count(full.path()), count(split.path()));
}

/// `gradient_checkpointing = true` trains the same model: a run checkpointed from the start,
/// and a run interrupted without checkpointing and resumed with it (the switch is not part of
/// what a resumed run must match), both end within 1e-5 of the plain run's weights, with the
/// same losses, on every task kind.
#[test]
fn gradient_checkpointing_trains_the_same_model_and_resumes_across_the_switch() {
    let params = |dir: &Path| {
        flat_params(&MultiTaskModel::load(&dir.join("model"), &Device::Cpu).unwrap()).unwrap()
    };
    let losses = |dir: &Path| -> Vec<f64> {
        records(dir)
            .iter()
            .filter_map(|v| v["loss"].as_f64())
            .collect()
    };
    let plain = tempfile::tempdir().unwrap();
    train(
        &config(plain.path(), 8, &all_kinds()),
        &Device::Cpu,
        &RunOptions::default(),
    )
    .unwrap();
    let ck = tempfile::tempdir().unwrap();
    let mut cfg = config(ck.path(), 8, &all_kinds());
    cfg.gradient_checkpointing = true;
    train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    let split = tempfile::tempdir().unwrap();
    let mut cfg = config(split.path(), 8, &all_kinds());
    assert_eq!(stop_after(&cfg, 3).steps, 3);
    cfg.gradient_checkpointing = true;
    let second = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(second.completed && second.steps == 8);
    let (lp, pp) = (losses(plain.path()), params(plain.path()));
    for dir in [ck.path(), split.path()] {
        let l = losses(dir);
        assert_eq!(l.len(), lp.len());
        for (a, b) in lp.iter().zip(&l) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "loss {a} vs {b}");
        }
        let p = params(dir);
        assert_eq!(p.len(), pp.len());
        let d = pp
            .iter()
            .zip(&p)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-5, "weights differ by {d}");
    }
}

#[test]
fn a_changed_config_is_not_silently_resumed() {
    let out = tempfile::tempdir().unwrap();
    train(
        &config(out.path(), 6, ""),
        &Device::Cpu,
        &RunOptions {
            stop_after: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let mut cfg = config(out.path(), 6, "");
    cfg.lr = 1e-3;
    let e = train(&cfg, &Device::Cpu, &RunOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("trainer_state.json") && e.contains("--restart"),
        "{e}"
    );
    train(
        &cfg,
        &Device::Cpu,
        &RunOptions {
            restart: true,
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn robust_losses_are_configured_per_task() {
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(out.path(), 4, "");
    cfg.tasks[0].loss = toml::from_str("kind = \"gce\"\nq = 0.5").unwrap();
    cfg.tasks[1].loss = toml::from_str("kind = \"focal\"\ngamma = 2.0").unwrap();
    let r = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(r.completed);
    let mut bad = config(out.path(), 4, "");
    bad.tasks[0].loss = toml::from_str("kind = \"gce\"\nq = 0.0").unwrap();
    let e = train(
        &bad,
        &Device::Cpu,
        &RunOptions {
            restart: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("GCE q"), "{e}");
}

#[test]
fn every_adversarial_method_trains_and_logs_its_loss() {
    for kind in [
        "kind = \"fgm\"\nepsilon = 0.5",
        "kind = \"pgd\"\nsteps = 2",
        "kind = \"free_lb\"\nsteps = 2\nmax_norm = 1.0",
        "kind = \"smart\"",
        "kind = \"r_drop\"\nalpha = 2.0",
    ] {
        let out = tempfile::tempdir().unwrap();
        let mut cfg = config(out.path(), 3, "");
        cfg.tasks[0].adversarial = Some(toml::from_str(kind).unwrap());
        cfg.tasks[1].adversarial = Some(toml::from_str(kind).unwrap());
        let r = train(&cfg, &Device::Cpu, &RunOptions::default())
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert!(r.completed);
        let log = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
        assert!(log.contains("adversarial_loss"), "{kind}");
        // Deterministic like plain training.
        let again = tempfile::tempdir().unwrap();
        let mut cfg2 = cfg.clone();
        cfg2.output = again.path().to_path_buf();
        train(&cfg2, &Device::Cpu, &RunOptions::default()).unwrap();
        let pa =
            flat_params(&MultiTaskModel::load(&out.path().join("model"), &Device::Cpu).unwrap())
                .unwrap();
        let pb =
            flat_params(&MultiTaskModel::load(&again.path().join("model"), &Device::Cpu).unwrap())
                .unwrap();
        assert_eq!(pa, pb, "{kind}");
    }
}

#[test]
fn dann_trains_with_an_unlabelled_target_domain_and_reports_extra_test_sets() {
    let out = tempfile::tempdir().unwrap();
    let d = fixtures().join("data");
    let mut cfg = config(out.path(), 6, "");
    cfg.tasks[0].dann = Some(prism_train::config::DannConfig {
        target: d.join("rating.train.jsonl").display().to_string(),
        weight: 1.0,
        gamma: 10.0,
        max_examples: None,
    });
    cfg.tasks[0].extra_test = vec![d.join("sentiment.train.jsonl").display().to_string()];
    let r = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    let extra = &r.tasks["sentiment"].extra_test;
    assert_eq!(extra.len(), 1);
    assert!(extra
        .values()
        .next()
        .unwrap()
        .metrics
        .contains_key("accuracy"));
    let log = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let dann_lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("domain_loss").is_some())
        .collect();
    assert!(!dann_lines.is_empty());
    assert!(dann_lines
        .iter()
        .all(|v| v["lambda"].as_f64().unwrap() >= 0.0 && v["lambda"].as_f64().unwrap() < 1.0));
    // The domain classifier is saved with the model and reloads, and the run resumes exactly.
    let m = MultiTaskModel::load(&out.path().join("model"), &Device::Cpu).unwrap();
    assert!(m
        .base
        .head_tensors
        .iter()
        .any(|(k, _)| k.starts_with("prism.heads.sentiment.domain.")));
    let split = tempfile::tempdir().unwrap();
    let mut cfg2 = cfg.clone();
    cfg2.output = split.path().to_path_buf();
    train(
        &cfg2,
        &Device::Cpu,
        &RunOptions {
            stop_after: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    train(&cfg2, &Device::Cpu, &RunOptions::default()).unwrap();
    let pa = flat_params(&m).unwrap();
    let pb = flat_params(&MultiTaskModel::load(&split.path().join("model"), &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(pa, pb);
}

#[test]
fn label_noise_and_a_perturbed_dev_copy_are_configurable() {
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(out.path(), 3, "");
    cfg.tasks[0].label_noise = Some(0.4);
    cfg.tasks[0].perturbed_dev = Some(prism_train::config::Perturbation {
        typo_rate: 0.5,
        word_dropout: 0.1,
    });
    let r = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(r.tasks["sentiment"]
        .extra_test
        .contains_key("dev_perturbed"));
    cfg.tasks[0].label_noise = Some(1.5);
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("label_noise"));
}

#[test]
fn training_fits_the_training_set() {
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(out.path(), 60, "");
    cfg.tasks.truncate(1);
    cfg.tasks[0].dev = cfg.tasks[0].train.clone();
    cfg.eval_every = 0;
    let r = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    let acc = r.tasks["sentiment"].dev.as_ref().unwrap().metrics["accuracy"];
    assert!(acc >= 0.9, "training accuracy {acc}");
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn bad_data_is_an_error_with_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |train_file: PathBuf, labels: Option<Vec<String>>| -> String {
        let mut cfg = config(&tmp.path().join("out"), 2, "");
        cfg.tasks.truncate(1);
        cfg.tasks[0].train = Some(train_file);
        cfg.tasks[0].dev = None;
        cfg.tasks[0].labels = labels;
        train(
            &cfg,
            &Device::Cpu,
            &RunOptions {
                restart: true,
                ..Default::default()
            },
        )
        .err()
        .expect("should fail")
        .to_string()
    };
    let bad_json = write(tmp.path(), "bad.jsonl", "{\"text\": \"ok\", \"label\": \"positive\"}\n{\"text\": \"oops\" \"label\": \"negative\"}\n");
    let e = run(bad_json.clone(), None);
    assert!(
        e.contains(&format!("{}:2:", bad_json.display())) && e.contains("not a JSON object"),
        "{e}"
    );
    let unknown = write(tmp.path(), "unknown.jsonl", "{\"text\": \"ok\", \"label\": \"positive\"}\n{\"text\": \"meh\", \"label\": \"neutral\"}\n");
    let e = run(
        unknown.clone(),
        Some(vec!["negative".into(), "positive".into()]),
    );
    assert!(
        e.contains(&format!(
            "{}:2: field `label`: unknown label \"neutral\"",
            unknown.display()
        )),
        "{e}"
    );
    let csv = write(tmp.path(), "cols.csv", "sentence,label\nfine,positive\n");
    let e = run(csv.clone(), None);
    assert!(
        e.contains(&format!(
            "{}:2: field `text`: no column `text` (columns: sentence, label)",
            csv.display()
        )),
        "{e}"
    );
    let unlabelled = write(tmp.path(), "nolabel.jsonl", "{\"text\": \"ok\"}\n");
    let e = run(unlabelled.clone(), None);
    assert!(
        e.contains(&format!(
            "{}:1: field `label`: missing",
            unlabelled.display()
        )),
        "{e}"
    );
}

#[test]
fn early_stopping_stops_and_keeps_the_best_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(out.path(), 50, "");
    cfg.lr = 1e-12; // the dev metric cannot improve after the first evaluation
    cfg.eval_every = 2;
    cfg.early_stopping = Some(prism_train::config::EarlyStopping {
        metric: "sentiment.accuracy".into(),
        patience: 1,
    });
    let r = train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(r.stopped_early);
    assert_eq!(r.steps, 4);
    assert!(r.final_is_best);
    assert_eq!(r.best.unwrap().0, 2);
}

/// Every `[multitask] weighting` method trains both tasks together on the tiny model: each
/// update logs both tasks' losses with their weight and shared-gradient norm, and the cosine of
/// their shared gradients; the weights follow the method (1 for equal, a point of the simplex
/// for RLW and MGDA, the learned parameter moving for uncertainty and GradNorm); an interrupted
/// run resumes to the uninterrupted run's weights (the method's state is in the checkpoint).
#[test]
fn every_weighting_method_trains_logs_conflict_and_resumes_exactly() {
    let methods = [
        "equal",
        "uncertainty",
        "dwa",
        "gradnorm",
        "rlw",
        "pcgrad",
        "cagrad",
        "mgda",
    ];
    let mut finals = Vec::new();
    for m in methods {
        let section =
            format!("\n[multitask]\ntasks_per_update = 2\nweighting = \"{m}\"\ndwa_window = 2\n");
        let full = tempfile::tempdir().unwrap();
        let cfg = config(full.path(), 8, &section);
        train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
        let log = records(full.path());
        let task_rows: Vec<&serde_json::Value> =
            log.iter().filter(|v| v.get("weight").is_some()).collect();
        // 8 updates x 2 micro-batches x 2 tasks.
        assert_eq!(task_rows.len(), 32, "{m}: task records");
        for r in &task_rows {
            assert!(r["loss"].as_f64().unwrap().is_finite(), "{m}: {r}");
            assert!(r["task_grad_norm"].as_f64().unwrap() > 0.0, "{m}: {r}");
        }
        let cos: Vec<f64> = log
            .iter()
            .filter_map(|v| v["gradient_cosine"]["nli/sentiment"].as_f64())
            .collect();
        assert_eq!(cos.len(), 16, "{m}: one cosine per micro-batch");
        assert!(cos.iter().all(|c| (-1.0..=1.0).contains(c)), "{m}: {cos:?}");
        let html = std::fs::read_to_string(full.path().join("report.html")).unwrap();
        assert!(
            html.contains("gradient cosine per task pair"),
            "{m}: report without the conflict chart"
        );
        let weights: Vec<f64> = task_rows
            .iter()
            .map(|r| r["weight"].as_f64().unwrap())
            .collect();
        let pair_sums: Vec<f64> = weights.chunks(2).map(|w| w[0] + w[1]).collect();
        match m {
            "equal" => assert!(weights.iter().all(|&w| w == 1.0), "{weights:?}"),
            "rlw" | "mgda" => assert!(
                pair_sums.iter().all(|s| (s - 1.0).abs() < 1e-6),
                "{m}: {pair_sums:?}"
            ),
            "uncertainty" | "gradnorm" | "dwa" => assert!(
                weights.iter().any(|&w| (w - weights[0]).abs() > 1e-9),
                "{m}: the weights never moved: {weights:?}"
            ),
            _ => assert!(
                weights.iter().all(|w| w.is_finite() && *w > 0.0),
                "{m}: {weights:?}"
            ),
        }
        // Interrupted after 3 updates and resumed: the same weights.
        let split = tempfile::tempdir().unwrap();
        let cfg = config(split.path(), 8, &section);
        assert_eq!(stop_after(&cfg, 3).steps, 3);
        train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
        let pa =
            flat_params(&MultiTaskModel::load(&full.path().join("model"), &Device::Cpu).unwrap())
                .unwrap();
        let pb =
            flat_params(&MultiTaskModel::load(&split.path().join("model"), &Device::Cpu).unwrap())
                .unwrap();
        assert_eq!(
            pa, pb,
            "{m}: resumed run must end at the uninterrupted run's weights"
        );
        finals.push(pa);
    }
    // The methods are different updates: no two end at the same weights.
    for i in 0..finals.len() {
        for j in i + 1..finals.len() {
            assert_ne!(
                finals[i], finals[j],
                "{} and {} trained identically",
                methods[i], methods[j]
            );
        }
    }
}

#[test]
fn multitask_settings_are_checked() {
    let out = tempfile::tempdir().unwrap();
    let text = |extra: &str| {
        let mut c = config(out.path(), 4, "");
        let m: prism_train::multitask::MultitaskConfig = toml::from_str(extra).unwrap();
        c.multitask = m;
        c.validate().unwrap_err().to_string()
    };
    assert!(text("tasks_per_update = 3").contains("between 1 and the 2 tasks"));
    assert!(text("weighting = \"pcgrad\"").contains("set `tasks_per_update` to 2 or more"));
    let e = toml::from_str::<prism_train::multitask::MultitaskConfig>("weighting = \"pcgard\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("pcgard") && e.contains("pcgrad"), "{e}");
}

/// Fewer tasks per micro-batch than tasks: each micro-batch trains k distinct tasks drawn from
/// the sampling distribution, and over the run every task is drawn.
#[test]
fn tasks_per_update_below_the_task_count_draws_distinct_tasks() {
    let out = tempfile::tempdir().unwrap();
    let extra = format!(
        "{}\n[multitask]\ntasks_per_update = 2\nweighting = \"cagrad\"\n",
        all_kinds()
    );
    let cfg = config(out.path(), 10, &extra);
    assert!(cfg.tasks.len() > 2);
    train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    let log = records(out.path());
    let rows: Vec<&serde_json::Value> = log.iter().filter(|v| v.get("weight").is_some()).collect();
    assert_eq!(
        rows.len(),
        10 * 2 * 2,
        "10 updates x 2 micro-batches x 2 tasks"
    );
    let mut seen = std::collections::BTreeSet::new();
    for pair in rows.chunks(2) {
        let (a, b) = (
            pair[0]["task"].as_str().unwrap(),
            pair[1]["task"].as_str().unwrap(),
        );
        assert_ne!(a, b, "a micro-batch drew one task twice");
        seen.insert(a.to_string());
        seen.insert(b.to_string());
    }
    assert_eq!(
        seen.len(),
        cfg.tasks.len(),
        "every task drawn at least once: {seen:?}"
    );
}

#[test]
fn eval_train_examples_logs_the_train_dev_gap_without_changing_training() {
    let plain = tempfile::tempdir().unwrap();
    train(
        &config(plain.path(), 10, ""),
        &Device::Cpu,
        &RunOptions::default(),
    )
    .unwrap();
    let gap = tempfile::tempdir().unwrap();
    let mut cfg = config(gap.path(), 10, "");
    cfg.eval_train_examples = Some(6);
    train(&cfg, &Device::Cpu, &RunOptions::default()).unwrap();
    let (a, b) = (records(plain.path()), records(gap.path()));
    let losses = |log: &[serde_json::Value]| -> Vec<f64> {
        log.iter().filter_map(|v| v["loss"].as_f64()).collect()
    };
    assert!(!losses(&a).is_empty());
    assert_eq!(
        losses(&a),
        losses(&b),
        "scoring training examples changed training"
    );
    let train_rows: Vec<&serde_json::Value> = b.iter().filter(|v| v["split"] == "train").collect();
    assert!(a.iter().all(|v| v["split"] != "train"));
    // eval_every = 5 over 10 updates: two evaluations, each of both tasks.
    assert_eq!(train_rows.len(), 4, "{train_rows:?}");
    for r in &train_rows {
        assert_eq!(r["examples"], 6, "{r}");
        let acc = r["metrics"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{r}");
    }
    let dev_rows = |log: &[serde_json::Value]| -> Vec<serde_json::Value> {
        log.iter()
            .filter(|v| v["split"] == "dev")
            .cloned()
            .collect()
    };
    assert_eq!(dev_rows(&a), dev_rows(&b));
    let html = std::fs::read_to_string(gap.path().join("report.html")).unwrap();
    assert!(
        html.contains("sentiment.accuracy (train)"),
        "no train series in the report"
    );
}

#[test]
fn fine_tuning_a_transformers_classifier_continues_its_head() {
    let f = fixtures();
    let d = f.join("data");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.join("task_models_expected.json")).unwrap(),
    )
    .unwrap();
    let case = &expected["bert-seq"]["cases"][0];
    let run = |labels: &str| {
        let out = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
model = "{model}"
output = "{out}"
steps = 1
batch_size = 2
lr = 1e-12
weight_decay = 0.0
warmup = 0

[[task]]
name = "sentiment"
kind = "classification"
train = "{d}/sentiment.train.jsonl"
dev = "{d}/sentiment.dev.jsonl"
max_length = 32
{labels}
"#,
            model = f.join("task-models/bert-seq").display(),
            out = out.path().display(),
            d = d.display(),
        );
        let cfg: TrainConfig = toml::from_str(&text).unwrap();
        train(&cfg, &Device::Cpu, &RunOptions::default()).map(|_| out)
    };
    // The head's rows follow the task's label order, whatever the checkpoint's id2label order.
    let out = run(r#"labels = ["positive", "neutral", "negative"]"#).unwrap();
    let m =
        prism_model::tasks::MultiTaskModel::load(&out.path().join("model"), &Device::Cpu).unwrap();
    assert_eq!(m.tasks[0].spec.labels, ["positive", "neutral", "negative"]);
    let p = m
        .predict_text(0, case["text"].as_str().unwrap(), None)
        .unwrap();
    let probs = serde_json::to_value(&p).unwrap()["probabilities"].clone();
    let logits: Vec<f64> = case["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let z: f64 = logits.iter().map(|l| l.exp()).sum();
    for (i, label) in ["negative", "neutral", "positive"].iter().enumerate() {
        let want = logits[i].exp() / z;
        let got = probs[label].as_f64().unwrap();
        assert!(
            (got - want).abs() < 1e-4,
            "{label}: {got} vs transformers {want}"
        );
    }
    // A task whose labels are not the head's is an error, not a silently misaligned head.
    let err = run(r#"labels = ["negative", "positive"]"#)
        .err()
        .expect("trains")
        .to_string();
    assert!(err.contains("keeps its labels"), "{err}");
}

/// A checkpoint proves itself: a flipped bit in its weights, an edited optimiser step or data
/// cursor is refused on resume, naming the file; a state whose step is past the run's end is
/// refused even with a matching manifest; a run folder moved elsewhere resumes.
#[test]
fn damaged_or_edited_checkpoints_are_refused_and_moved_runs_resume() {
    let out = tempfile::tempdir().unwrap();
    let stop = RunOptions {
        stop_after: Some(2),
        ..Default::default()
    };
    train(&config(out.path(), 6, ""), &Device::Cpu, &stop).unwrap();
    let ck = out.path().join("checkpoint-last");
    assert!(ck.join("manifest.json").is_file());
    let pristine = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(&ck).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, pristine.path().join(f.file_name().unwrap())).unwrap();
    }
    let restore = || {
        for f in std::fs::read_dir(pristine.path()).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, ck.join(f.file_name().unwrap())).unwrap();
        }
    };
    let resume_err = || {
        train(
            &config(out.path(), 6, ""),
            &Device::Cpu,
            &RunOptions::default(),
        )
        .err()
        .expect("resumed a damaged checkpoint")
        .to_string()
    };
    // One flipped bit in the weights.
    let w = ck.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let i = bytes.len() - 17;
    bytes[i] ^= 0x10;
    std::fs::write(&w, bytes).unwrap();
    let e = resume_err();
    assert!(
        e.contains("model.safetensors") && e.contains("SHA-256"),
        "{e}"
    );
    restore();
    // An edited optimiser step and data cursor.
    let sp = ck.join("trainer_state.json");
    let mut st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sp).unwrap()).unwrap();
    st["adam_t"] = serde_json::json!(1);
    std::fs::write(&sp, serde_json::to_string_pretty(&st).unwrap()).unwrap();
    let e = resume_err();
    assert!(
        e.contains("trainer_state.json") && e.contains("manifest"),
        "{e}"
    );
    // A state past the run's end, with a manifest rewritten to match it.
    st["step"] = serde_json::json!(60);
    std::fs::write(&sp, serde_json::to_string_pretty(&st).unwrap()).unwrap();
    prism_train::checkpoint::write_manifest(&ck).unwrap();
    let e = resume_err();
    assert!(e.contains("update 60") && e.contains("6-update run"), "{e}");
    restore();
    // A truncated optimiser file.
    let op = ck.join("optimizer.safetensors");
    let len = std::fs::metadata(&op).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&op)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = resume_err();
    assert!(
        e.contains("optimizer.safetensors") && e.contains("bytes"),
        "{e}"
    );
    restore();
    // Moved elsewhere, the run resumes and completes.
    let moved = tempfile::tempdir().unwrap();
    let dst = moved.path().join("run");
    std::fs::rename(out.path(), &dst)
        .or_else(|_| {
            // Across file systems: copy the folder.
            copy_dir(out.path(), &dst);
            Ok::<(), std::io::Error>(())
        })
        .unwrap();
    let r = train(&config(&dst, 6, ""), &Device::Cpu, &RunOptions::default()).unwrap();
    assert!(r.completed);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let q = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &q);
        } else {
            std::fs::copy(&p, &q).unwrap();
        }
    }
}

/// A SQuAD training question without an answer is an error naming the file, the question and
/// its id when the data is read, not a failure deep in batching; a dev file without labels is
/// refused rather than scored as accuracy 0.
#[test]
fn unanswerable_training_questions_and_unlabelled_dev_sets_are_named() {
    let out = tempfile::tempdir().unwrap();
    let d = fixtures().join("data");
    let mut squad: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("qa.train.json")).unwrap()).unwrap();
    squad["data"][0]["paragraphs"][0]["qas"][0]["answers"] = serde_json::json!([]);
    let qa = out.path().join("qa.json");
    std::fs::write(&qa, squad.to_string()).unwrap();
    let extra = format!(
        "[[task]]\nname = \"qa\"\nkind = \"qa\"\ntrain = \"{}\"\nmax_length = 48\ndoc_stride = 16\n",
        qa.display()
    );
    let e = train(
        &config(out.path(), 4, &extra),
        &Device::Cpu,
        &RunOptions::default(),
    )
    .err()
    .expect("trained on an unanswerable question")
    .to_string();
    assert!(
        e.contains(&*qa.display().to_string()) && e.contains("no answer") && e.contains("q1"),
        "{e}"
    );
    // A dev set whose examples carry no label.
    let dev = out.path().join("dev.jsonl");
    std::fs::write(
        &dev,
        "{\"text\": \"A fine film.\"}\n{\"text\": \"Dull.\"}\n",
    )
    .unwrap();
    let mut cfg = config(out.path(), 4, "");
    cfg.tasks[0].dev = Some(dev.clone());
    let e = train(
        &cfg,
        &Device::Cpu,
        &RunOptions {
            restart: true,
            ..Default::default()
        },
    )
    .err()
    .expect("scored a dev set without labels")
    .to_string();
    assert!(
        e.contains(&format!("{}:1:", dev.display())) && e.contains("need a label"),
        "{e}"
    );
}

/// A loss that overflows (a regression label far out of range) stops the run with an error
/// that counts updates as metrics.jsonl does (from 1) and names the causes, not only the
/// learning rate.
#[test]
fn an_overflowing_loss_names_the_update_and_its_causes() {
    let out = tempfile::tempdir().unwrap();
    let d = fixtures().join("data");
    let mut rows = std::fs::read_to_string(d.join("rating.train.jsonl")).unwrap();
    for _ in 0..8 {
        rows.push_str("{\"text\": \"An absurd rating.\", \"label\": 3e37}\n");
    }
    let f = out.path().join("rating.jsonl");
    std::fs::write(&f, rows).unwrap();
    let extra = format!(
        "[[task]]\nname = \"rating\"\nkind = \"regression\"\ntrain = \"{}\"\nmax_length = 32\n",
        f.display()
    );
    let mut cfg = config(out.path(), 6, &extra);
    cfg.sampling.kind = prism_train::config::SamplingKind::Proportional;
    let e = train(&cfg, &Device::Cpu, &RunOptions::default())
        .err()
        .expect("trained through an infinite loss")
        .to_string();
    assert!(
        e.starts_with("update ") && !e.starts_with("update 0"),
        "{e}"
    );
    assert!(
        e.contains("rating") && e.contains("target out of range"),
        "{e}"
    );
}
