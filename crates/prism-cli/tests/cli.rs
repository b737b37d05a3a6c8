//! The `prism` binary end to end on the tiny fixtures.

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn prism(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(args)
        .env(
            "PRISM_HOME",
            std::env::temp_dir().join("prism-cli-test-home"),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn embed_prints_json_embeddings_and_similarities() {
    let m = fixtures().join("tiny-bert");
    let (ok, out, err) = prism(&[
        "embed",
        m.to_str().unwrap(),
        "A gorgeous movie.",
        "A dull remake.",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dim"], 32);
    assert_eq!(v["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(v["embeddings"][0]["mean"].as_array().unwrap().len(), 32);
    let c = v["cosine_mean"][0][0].as_f64().unwrap();
    assert!((c - 1.0).abs() < 1e-5);
}

#[test]
fn info_and_tokenize_work_on_a_folder() {
    let m = fixtures().join("tiny-roberta");
    let (ok, out, err) = prism(&["info", m.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["architecture"], "RobertaModel");
    assert_eq!(v["parameters"], 33152);
    let (ok, out, err) = prism(&[
        "tokenize",
        m.to_str().unwrap(),
        "The man walks.",
        "A man.",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tokens"][0], "<s>");
    assert_eq!(
        v["ids"].as_array().unwrap().len(),
        v["offsets"].as_array().unwrap().len()
    );
}

#[test]
fn convert_writes_a_loadable_folder() {
    let out = tempfile::tempdir().unwrap();
    let m = fixtures().join("tiny-bert-bin");
    let (ok, _, err) = prism(&["convert", m.to_str().unwrap(), out.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.path().join("model.safetensors").is_file());
    let (ok, _, err) = prism(&["info", out.path().to_str().unwrap()]);
    assert!(ok, "{err}");
}

#[test]
fn errors_are_one_clear_line() {
    let (ok, _, err) = prism(&["info", "/definitely/not/here"]);
    assert!(!ok);
    assert!(
        err.starts_with("error: ") && err.contains("/definitely/not/here"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("tiny-bert/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let (ok, _, err) = prism(&["embed", dir.path().to_str().unwrap(), "x"]);
    assert!(!ok);
    assert!(
        err.contains("model.safetensors") && err.contains("corrupt"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        &["fetch", "model"][..],
        &["info"],
        &["tokenize"],
        &["embed"],
        &["convert"],
        &["export"],
    ] {
        let mut args: Vec<&str> = sub.to_vec();
        args.push("--help");
        let (ok, out, err) = prism(&args);
        assert!(ok, "{args:?}: {err}");
        assert!(out.contains("Usage"), "{args:?}: {out}");
    }
}

#[test]
fn bench_reports_every_workload_as_json() {
    let (ok, out, err) = prism(&[
        "bench",
        "--sizes",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "12",
        "--reps",
        "2",
        "--warmup",
        "0",
        "--sgemm",
        "64",
        "--threads",
        "1",
        "--json",
        "-",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["threads"], 1);
    assert!(v["sgemm"]["gflops"].as_f64().unwrap() > 0.0);
    let rows = v["results"].as_array().unwrap();
    let works: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        works,
        [
            "infer",
            "infer-bf16",
            "train",
            "train-bf16",
            "ig",
            "ig-bf16",
            "mlm",
            "mlm-bf16"
        ]
    );
    for r in rows {
        let t = &r["throughput"];
        let (lo, med, hi) = (
            t["min"].as_f64().unwrap(),
            t["median"].as_f64().unwrap(),
            t["max"].as_f64().unwrap(),
        );
        assert!(0.0 < lo && lo <= med && med <= hi, "{r}");
        assert!(r["gflops"].as_f64().unwrap() > 0.0, "{r}");
    }
    // Training steps report their phases, in f32 and mixed precision.
    for work in ["train", "train-bf16", "mlm-bf16"] {
        let train = rows.iter().find(|r| r["workload"] == work).unwrap();
        assert!(
            train["phases"]["backward"].as_f64().unwrap() > 0.0,
            "{train}"
        );
    }
    assert!(v["bf16_kernel"].is_null() || v["bf16_kernel"].is_string());
    // Bad sizes and workloads are named.
    let (ok, _, err) = prism(&["bench", "--sizes", "huge"]);
    assert!(!ok && err.contains("unknown size `huge`"), "{err}");
    let (ok, _, err) = prism(&["bench", "--sizes", "tiny", "--workloads", "sing"]);
    assert!(!ok && err.contains("unknown workload `sing`"), "{err}");
}

#[test]
fn info_describes_the_other_families_and_they_fine_tune_and_explain() {
    for (fixture, arch) in [
        ("tiny-xlmr", "XLMRobertaModel"),
        ("tiny-electra", "ElectraModel"),
        ("tiny-distilbert", "DistilBertModel"),
        ("tiny-modernbert", "ModernBertModel"),
        ("tiny-deberta-v3", "DebertaV2Model"),
    ] {
        let m = fixtures().join(fixture);
        let (ok, out, err) = prism(&["info", m.to_str().unwrap(), "--json"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["architecture"], arch);
        if fixture == "tiny-electra" {
            assert_eq!(v["embedding_size"], 16);
            assert_eq!(v["hidden_size"], 32);
            assert_eq!(v["pooler"], false);
        }
        if fixture == "tiny-deberta-v3" {
            assert_eq!(
                v["positions"],
                "disentangled c2p+p2c over 8 log buckets of 32 positions"
            );
        }
        // Fine-tuned briefly, it is explained by IG, rollout and occlusion.
        let dir = tempfile::tempdir().unwrap();
        let d = fixtures().join("data");
        let cfg = dir.path().join("run.toml");
        std::fs::write(
            &cfg,
            format!(
                "model = \"{}\"\noutput = \"{}\"\nsteps = 4\nbatch_size = 4\neval_every = 4\n\n[[task]]\nname = \"sentiment\"\nkind = \"classification\"\ntrain = \"{}\"\ndev = \"{}\"\nmax_length = 32\n",
                m.display(),
                dir.path().join("run").display(),
                d.join("sentiment.train.jsonl").display(),
                d.join("sentiment.dev.jsonl").display()
            ),
        )
        .unwrap();
        let (ok, _, err) = prism(&["train", "--config", cfg.to_str().unwrap(), "--quiet"]);
        assert!(ok, "{fixture}: {err}");
        let model = dir.path().join("run/model");
        // DeBERTa-v3's embedding LayerNorm sees the word embedding alone (no positions or
        // token types), so the path from its zero pad row is flat but at its start: IG's
        // baseline there is the mask token.
        let baseline = if fixture == "tiny-deberta-v3" {
            "mask"
        } else {
            "pad"
        };
        let (ok, out, err) = prism(&[
            "explain",
            "--model",
            model.to_str().unwrap(),
            "--method",
            "ig,rollout,occlusion",
            "--baseline",
            baseline,
            "--json",
            "The man walks into a bar.",
        ]);
        assert!(ok, "{fixture}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let ex = v["examples"][0].as_array().unwrap();
        assert_eq!(ex.len(), 3);
        for a in ex {
            assert!(a["scores"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s.as_f64().unwrap().is_finite()));
        }
        assert!(
            ex[0]["delta"].as_f64().unwrap().abs() < 1e-3,
            "{fixture}: IG delta"
        );
    }
}
