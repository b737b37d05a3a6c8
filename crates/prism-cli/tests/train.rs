//! `prism train / predict / eval` end to end, including a run killed with SIGKILL and resumed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn prism() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prism"));
    c.env(
        "PRISM_HOME",
        std::env::temp_dir().join("prism-cli-test-home"),
    );
    c
}

fn write_config(dir: &Path, out: &str, steps: usize) -> PathBuf {
    let f = fixtures();
    let d = f.join("data");
    let text = format!(
        "model = \"{}\"\noutput = \"{out}\"\nsteps = {steps}\nbatch_size = 4\nlr = 1e-3\ncheckpoint_every = 10\n\n[[task]]\nname = \"sentiment\"\nkind = \"classification\"\ntrain = \"{}\"\ndev = \"{}\"\nmax_length = 32\n\n[[task]]\nname = \"nli\"\nkind = \"pair_classification\"\ntrain = \"{}\"\ndev = \"{}\"\nmax_length = 48\n",
        f.join("tiny-bert").display(),
        d.join("sentiment.train.jsonl").display(),
        d.join("sentiment.dev.jsonl").display(),
        d.join("nli.train.jsonl").display(),
        d.join("nli.dev.jsonl").display(),
    );
    let p = dir.join(format!("{out}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn weights(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("model/model.safetensors")).unwrap()
}

#[test]
fn train_predict_eval_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = write_config(tmp.path(), "run", 20);
    let out = prism()
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--quiet",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["steps"], 20);
    let model = tmp.path().join("run/model");
    let out = prism()
        .args([
            "predict",
            "--model",
            model.to_str().unwrap(),
            "A gorgeous movie.",
            "--text2",
            "A movie.",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let label = v[0]["prediction"]["label"].as_str().unwrap();
    assert!(label == "positive" || label == "negative");
    let p: f64 = v[0]["prediction"]["probabilities"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!((p - 1.0).abs() < 1e-4);
    let data = fixtures().join("data/sentiment.dev.jsonl");
    let out = prism()
        .args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--task",
            "sentiment",
            "--data",
            data.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["result"]["metrics"]["accuracy"],
        report["tasks"]["sentiment"]["dev"]["metrics"]["accuracy"]
    );
    let out = prism()
        .args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("choose one with --task (sentiment, nli)")
    );
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_uninterrupted_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 400;
    let full = write_config(tmp.path(), "full", steps);
    let st = prism()
        .args(["train", "--config", full.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let cfg = write_config(tmp.path(), "killed", steps);
    let mut child = prism()
        .args(["train", "--config", cfg.to_str().unwrap(), "--quiet"])
        .spawn()
        .unwrap();
    let state = tmp.path().join("killed/checkpoint-last/trainer_state.json");
    let t0 = Instant::now();
    let mut killed_at = None;
    while t0.elapsed() < Duration::from_secs(120) {
        if let Ok(s) = std::fs::read_to_string(&state) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
                let step = v["step"].as_u64().unwrap_or(0);
                if step >= 20 {
                    child.kill().unwrap(); // SIGKILL
                    killed_at = Some(step);
                    break;
                }
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.wait();
    let killed_at = killed_at.expect("the run finished before it could be killed");
    assert!((killed_at as usize) < steps);
    let out = prism()
        .args(["train", "--config", cfg.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming from step"));
    assert_eq!(
        weights(&tmp.path().join("full")),
        weights(&tmp.path().join("killed"))
    );
}

/// Issue 22: killed with SIGKILL at 20 random (seeded) moments, from model loading through
/// training steps, checkpoint writes and log appends, and resumed each time, a run ends with
/// the uninterrupted run's weights and a metrics.jsonl whose every line parses and whose
/// records are the uninterrupted run's, each step once.
#[test]
fn twenty_random_kills_lose_no_step_and_no_log_line() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let steps = 300;
    let config = |name: &str| {
        let p = write_config(tmp.path(), name, steps);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("checkpoint_every = 10", "checkpoint_every = 5");
        std::fs::write(&p, text).unwrap();
        p
    };
    let full = config("full");
    let t0 = Instant::now();
    let st = prism()
        .args(["train", "--config", full.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let whole = t0.elapsed();
    let cfg = config("killed");
    let state = tmp.path().join("killed/checkpoint-last/trainer_state.json");
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let (mut kills, mut resumed_from) = (0, std::collections::BTreeSet::new());
    for _ in 0..20 {
        // On average a twentieth of the whole run, so the kills spread over it.
        let after = whole.mul_f64(rng.random_range(0.0..0.1));
        let mut child = prism()
            .args(["train", "--config", cfg.to_str().unwrap(), "--quiet"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        let _ = child.wait();
        if let Some(step) = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["step"].as_u64())
        {
            resumed_from.insert(step);
        }
    }
    let out = prism()
        .args(["train", "--config", cfg.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{kills} kills; checkpoints reached between them: {resumed_from:?} (whole run {whole:.1?})"
    );
    assert!(
        kills >= 15,
        "only {kills} of 20 runs were still running when killed"
    );
    assert!(
        resumed_from.len() >= 3,
        "the kills did not spread over the run: {resumed_from:?}"
    );
    assert_eq!(
        weights(&tmp.path().join("full")),
        weights(&tmp.path().join("killed")),
        "final weights"
    );
    let log = |name: &str| -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(tmp.path().join(name).join("metrics.jsonl")).unwrap();
        assert!(!text.contains('\0'), "{name}: NUL bytes in the log");
        assert!(text.ends_with('\n'), "{name}: the log ends mid-line");
        text.lines()
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{name} metrics.jsonl line {}: {e}: {l}", i + 1))
            })
            .collect()
    };
    // Every record but the timings (seconds, throughput) equals the uninterrupted run's.
    let strip = |v: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
        v.into_iter()
            .map(|mut r| {
                if let Some(o) = r.as_object_mut() {
                    o.retain(|k, _| {
                        !(k.contains("time")
                            || k.contains("per_s")
                            || k.contains("seconds")
                            || k.contains("elapsed")
                            || k.ends_with("_s"))
                    });
                }
                r
            })
            .collect()
    };
    let (a, b) = (strip(log("full")), strip(log("killed")));
    assert!(a.len() >= steps, "{} records", a.len());
    assert_eq!(a.len(), b.len(), "records");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "metrics.jsonl record {}", i + 1);
    }
}

#[test]
fn sweep_tabulates_configs_over_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write_config(tmp.path(), "a", 3);
    let b = write_config(tmp.path(), "b", 4);
    let table = tmp.path().join("tables/sweep.md"); // a folder that does not exist yet
    let out = prism()
        .args([
            "sweep",
            "--config",
            a.to_str().unwrap(),
            "--config",
            b.to_str().unwrap(),
            "--seeds",
            "1,2",
            "--metric",
            "accuracy",
            "--quiet",
            "--out",
            table.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = std::fs::read_to_string(table).unwrap();
    assert!(
        t.contains("| a | sentiment | dev | accuracy |")
            && t.contains("| b | nli | dev | accuracy |"),
        "{t}"
    );
    assert!(tmp.path().join("a/seed-2/model/prism.json").is_file());
}

/// Per-record training losses of a run's metrics.jsonl, in order.
fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}

/// `--bf16` trains the same model in mixed precision: on a CPU with a bf16 unit the weights
/// differ from the f32 run's (the bf16 products ran) while the loss curve stays within a few
/// per cent of it; without one the run is f32, bit for bit.
#[test]
fn mixed_precision_training_follows_the_f32_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    for (name, bf16) in [("f32", false), ("bf16", true)] {
        let cfg = write_config(tmp.path(), name, 20);
        let mut cmd = prism();
        cmd.args(["train", "--config", cfg.to_str().unwrap(), "--quiet"]);
        if bf16 {
            cmd.arg("--bf16");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if bf16 {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("precision bf16: linear layers in"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        dirs.push(tmp.path().join(name));
    }
    let (f, h) = (losses(&dirs[0]), losses(&dirs[1]));
    assert_eq!(f.len(), h.len());
    assert!(f.len() >= 20, "{} loss records", f.len());
    let bf16_unit = weights(&dirs[0]) != weights(&dirs[1]);
    let probe = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args([
            "bench",
            "--sizes",
            "tiny",
            "--workloads",
            "infer",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--sgemm",
            "32",
            "--json",
            "-",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    assert_eq!(
        bf16_unit,
        v["bf16_kernel"].is_string(),
        "weights differ iff a bf16 kernel ran ({})",
        v["bf16_kernel"]
    );
    for (i, (a, b)) in f.iter().zip(&h).enumerate() {
        assert!(b.is_finite(), "bf16 loss {i} is {b}");
        assert!(
            (a - b).abs() <= 0.05 * a.abs().max(0.1),
            "record {i}: f32 loss {a}, bf16 loss {b}"
        );
    }
}
