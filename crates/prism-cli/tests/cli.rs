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

/// A NaN in the weights makes `predict` and `explain` fail with a message, never a label with
/// null probabilities or an explanation of F = NaN with exit status 0.
#[test]
fn a_nan_weight_is_an_error_not_a_null_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-bert-cls");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let w = dir.path().join("model.safetensors");
    let mut t = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    let key = t
        .keys()
        .find(|k| k.ends_with("attention.output.dense.weight"))
        .unwrap()
        .clone();
    let nan = (t[&key].ones_like().unwrap() * f64::NAN).unwrap();
    t.insert(key, nan);
    candle_core::safetensors::save(&t, &w).unwrap();
    let m = dir.path().to_str().unwrap();
    let (ok, out, err) = prism(&["predict", "--model", m, "A witty movie."]);
    assert!(!ok, "predict succeeded: {out}");
    assert!(err.contains("not finite"), "{err}");
    let (ok, out, err) = prism(&["explain", "--model", m, "--method", "ig", "A witty movie."]);
    assert!(!ok, "explain succeeded: {out}");
    assert!(err.contains("not finite"), "{err}");
}

/// `info` flags a tokenizer larger than the embedding table; a `model.safetensors` that is a
/// folder is named as such, not reported missing.
#[test]
fn info_flags_a_tokenizer_larger_than_the_embeddings_and_odd_weight_files() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-bert");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let cfg = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    let n = v["vocab_size"].as_u64().unwrap();
    // A smaller table: the checkpoint's rows no longer fit, so shrink the weights too.
    let w = dir.path().join("model.safetensors");
    let mut t = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    let key = "embeddings.word_embeddings.weight".to_string();
    let small = t[&key].narrow(0, 0, (n - 10) as usize).unwrap();
    t.insert(key, small);
    candle_core::safetensors::save(&t, &w).unwrap();
    v["vocab_size"] = serde_json::json!(n - 10);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let (ok, out, err) = prism(&["info", dir.path().to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    let warn = info["warnings"][0].as_str().unwrap_or_default();
    assert!(warn.contains("embedding table"), "{out}");

    let odd = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), odd.path().join("config.json")).unwrap();
    std::fs::create_dir(odd.path().join("model.safetensors")).unwrap();
    let (ok, _, err) = prism(&["info", odd.path().to_str().unwrap()]);
    assert!(!ok && err.contains("not a regular file"), "{err}");
}
