//! `prism explain` end to end on the tiny fixture classifier.

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn prism(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn explain_writes_json_and_an_escaped_html_report() {
    let m = fixtures().join("tiny-bert-cls");
    let html = tempfile::NamedTempFile::with_suffix(".html").unwrap();
    let (ok, out, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--method",
        "ig,saliency,occlusion,rollout",
        "--json",
        "--faithfulness",
        "--html",
        html.path().to_str().unwrap(),
        "<script>alert('x')</script> a gorgeous movie",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ex = &v["examples"][0];
    assert_eq!(ex.as_array().unwrap().len(), 4);
    assert_eq!(ex[0]["method"], "ig");
    assert!(ex[0]["delta"].as_f64().unwrap().abs() < 1e-3);
    assert_eq!(
        ex[0]["tokens"].as_array().unwrap().len(),
        ex[0]["scores"].as_array().unwrap().len()
    );
    assert_eq!(
        v["faithfulness"].as_array().unwrap().len(),
        5,
        "four methods plus the random baseline"
    );
    let page = std::fs::read_to_string(html.path()).unwrap();
    assert!(
        !page.contains("<script>alert"),
        "unescaped input in the report"
    );
    assert!(page.contains("&lt;script&gt;alert"));
    assert!(page.contains("Faithfulness"));
}

#[test]
fn explain_reads_a_data_file_and_aggregates_words() {
    let m = fixtures().join("tiny-bert-cls");
    let data = fixtures().join("data/sentiment.dev.jsonl");
    let (ok, out, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--input",
        data.to_str().unwrap(),
        "--limit",
        "3",
        "--method",
        "grad_x_input",
        "--words",
        "--json",
        "--target",
        "positive",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["examples"].as_array().unwrap().len(), 3);
    let svg = tempfile::tempdir().unwrap();
    let (ok, _, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--method",
        "saliency",
        "--svg",
        svg.path().to_str().unwrap(),
        "--quiet",
        "A dull remake.",
    ]);
    assert!(ok, "{err}");
    let s = std::fs::read_to_string(svg.path().join("001-saliency.svg")).unwrap();
    assert!(s.starts_with("<svg") && s.contains("dull"));
    assert_eq!(v["examples"][0][0]["target"], "class positive");
}

#[test]
fn explain_rejects_unknown_methods_and_targets_with_the_choices() {
    let m = fixtures().join("tiny-bert-cls");
    let (ok, _, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--method",
        "deeplift",
        "x",
    ]);
    assert!(!ok);
    assert!(
        err.contains("unknown method `deeplift`") && err.contains("kernel_shap"),
        "{err}"
    );
    let (ok, _, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--target",
        "neutral",
        "x",
    ]);
    assert!(!ok);
    assert!(
        err.contains("unknown class `neutral` (classes: negative, positive)"),
        "{err}"
    );
}

/// `--bf16` (linear layers forward and backward on AMX) gives the same explanation as f32 up to
/// bf16 rounding; on CPUs without AMX-BF16 it says so and runs in f32.
#[test]
fn explain_bf16_agrees_with_f32() {
    let m = fixtures().join("tiny-bert-cls");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--model",
            m.to_str().unwrap(),
            "--method",
            "ig,grad_x_input",
            "--json",
            "--quiet",
            "a gorgeous, moving film",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = prism(&args);
        assert!(ok, "{err}");
        (
            serde_json::from_str::<serde_json::Value>(&out).unwrap(),
            err,
        )
    };
    let (f32_run, _) = run(&[]);
    let (bf16_run, err) = run(&["--bf16"]);
    if err.contains("no AMX-BF16") {
        eprintln!("skipped the comparison: no AMX-BF16 on this machine");
        return;
    }
    for (a, b) in f32_run["examples"][0]
        .as_array()
        .unwrap()
        .iter()
        .zip(bf16_run["examples"][0].as_array().unwrap())
    {
        assert_eq!(a["method"], b["method"]);
        let (sa, sb): (Vec<f64>, Vec<f64>) = (
            serde_json::from_value(a["scores"].clone()).unwrap(),
            serde_json::from_value(b["scores"].clone()).unwrap(),
        );
        let scale = sa.iter().fold(0f64, |m, x| m.max(x.abs()));
        let diff = sa
            .iter()
            .zip(&sb)
            .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff > 0.0, "{}: bf16 path not taken", a["method"]);
        assert!(
            diff < 0.05 * scale,
            "{}: bf16 scores differ by {diff} (largest score {scale})",
            a["method"]
        );
    }
    // Completeness still holds to bf16 precision.
    assert!(bf16_run["examples"][0][0]["delta"].as_f64().unwrap().abs() < 1e-2);
}

/// A classifier saved by transformers (`BertForSequenceClassification.save_pretrained`):
/// `prism explain --method ig` equals Captum's LayerIntegratedGradients on it, and
/// `prism export` of a prism-trained task writes a folder prism reads back the same.
#[test]
fn explain_and_export_work_on_transformers_classifiers() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("task_models_expected.json")).unwrap(),
    )
    .unwrap();
    let case = &expected["bert-seq"]["cases"][0];
    let m = fixtures().join("task-models/bert-seq");
    let text = case["text"].as_str().unwrap();
    let (ok, out, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--method",
        "ig",
        "--json",
        text,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &v["examples"][0][0];
    // id2label of the fixture: 0 negative, 1 neutral, 2 positive.
    let labels = ["negative", "neutral", "positive"];
    let class = labels[case["target"].as_u64().unwrap() as usize];
    assert_eq!(a["target"], format!("class {class}").as_str(), "{a}");
    let got: Vec<f64> = a["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let want: Vec<f64> = case["ig"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-4, "{g} vs Captum {w}");
    }

    let src = fixtures().join("tiny-bert-cls");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("exported");
    let (ok, said, err) = prism(&[
        "export",
        "--model",
        src.to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(said.contains("BertForSequenceClassification"), "{said}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    assert_eq!(config["id2label"]["1"], "positive");
    let predict = |model: &std::path::Path| {
        let (ok, out, err) = prism(&[
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--json",
            "a witty movie",
        ]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["prediction"].clone()
    };
    assert_eq!(predict(&src), predict(&dir));
    let (ok, _, err) = prism(&[
        "export",
        "--model",
        fixtures().join("tiny-bert").to_str().unwrap(),
        out.path().join("x").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no task heads"), "{err}");
}

#[test]
fn predict_reads_a_pair_on_a_transformers_classifier_and_label_sets_on_a_multi_label_one() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("task_models_expected.json")).unwrap(),
    )
    .unwrap();
    let run = |name: &str, case: &serde_json::Value| {
        let m = fixtures().join("task-models").join(name);
        let mut args = vec![
            "predict".to_string(),
            "--model".into(),
            m.display().to_string(),
            "--json".into(),
            case["text"].as_str().unwrap().into(),
        ];
        if let Some(p) = case["pair"].as_str() {
            args.extend(["--text2".into(), p.into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = prism(&args);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["prediction"].clone()
    };
    let logits = |case: &serde_json::Value| -> Vec<f64> {
        case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    // The last case of the sequence fixtures is a pair: `--text2` is its second segment.
    let case = expected["bert-seq"]["cases"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(case["pair"].is_string());
    let p = run("bert-seq", &case);
    let l = logits(&case);
    let z: f64 = l.iter().map(|x| x.exp()).sum();
    for (i, label) in ["negative", "neutral", "positive"].iter().enumerate() {
        let got = p["probabilities"][label].as_f64().unwrap();
        assert!((got - l[i].exp() / z).abs() < 1e-4, "{label}: {got} (pair)");
    }
    for case in expected["bert-multilabel"]["cases"].as_array().unwrap() {
        let p = run("bert-multilabel", case);
        let mut want = Vec::new();
        for (label, z) in ["sports", "politics", "tech"].iter().zip(logits(case)) {
            let sig = 1.0 / (1.0 + (-z).exp());
            let got = p["probabilities"][label].as_f64().unwrap();
            assert!((got - sig).abs() < 1e-4, "{label}: {got} vs {sig}");
            if sig >= 0.5 {
                want.push(*label);
            }
        }
        assert_eq!(p["labels"], serde_json::json!(want), "{p}");
    }
}

#[test]
fn explain_records_the_output_and_foil_it_explains() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("captum_expected.json")).unwrap(),
    )
    .unwrap();
    let c = &cases[0];
    let labels = ["negative", "positive"];
    let (target, foil) = (
        labels[c["target"].as_u64().unwrap() as usize],
        labels[c["foil"].as_u64().unwrap() as usize],
    );
    let m = fixtures().join("tiny-bert-cls");
    let (ok, out, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--method",
        "saliency",
        "--output",
        "logit",
        "--target",
        target,
        "--foil",
        foil,
        "--json",
        c["text"].as_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let a = &v["examples"][0][0];
    assert_eq!(a["output_kind"], "logit", "{a}");
    assert_eq!(a["foil"], format!("class {foil}").as_str(), "{a}");
    let want = &c["variants"]["logit_foil"];
    assert!((a["output"].as_f64().unwrap() - want["f"].as_f64().unwrap()).abs() < 1e-5);
    for (g, w) in a["scores"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["saliency"].as_array().unwrap())
    {
        assert!(
            (g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-4,
            "{g} vs Captum {w}"
        );
    }
    let (ok, _, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--output",
        "softmax",
        "a text",
    ]);
    assert!(!ok && err.contains("unknown output `softmax`"), "{err}");
}

/// `--layer N` picks the layer of the layer methods (Captum's `encoder.layer[N]`) and
/// `--layer-maps` adds the layer × token conductance and layer × head importance maps to the JSON
/// and the HTML report.
#[test]
fn explain_attributes_at_a_chosen_layer_and_draws_the_layer_maps() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("captum_expected.json")).unwrap(),
    )
    .unwrap();
    let c = &cases[0];
    let target = ["negative", "positive"][c["target"].as_u64().unwrap() as usize];
    let m = fixtures().join("tiny-bert-cls");
    let html = tempfile::NamedTempFile::with_suffix(".html").unwrap();
    let (ok, out, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--method",
        "layer_ig,layer_grad_x_act",
        "--layer",
        "0",
        "--layer-maps",
        "--target",
        target,
        "--json",
        "--html",
        html.path().to_str().unwrap(),
        c["text"].as_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let want = &c["layers"]["0"];
    for (i, key) in ["ig", "grad_x_act"].iter().enumerate() {
        let got = v["examples"][0][i]["scores"].as_array().unwrap();
        let w = want[key].as_array().unwrap();
        assert_eq!(got.len(), w.len());
        for (g, w) in got.iter().zip(w) {
            assert!(
                (g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-4,
                "{key}"
            );
        }
    }
    let maps = &v["layer_maps"][0];
    for (l, key) in ["0", "1"].iter().enumerate() {
        let got = maps["conductance"][l].as_array().unwrap();
        let w = c["layers"][key]["conductance"].as_array().unwrap();
        for (g, w) in got.iter().zip(w) {
            assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-4);
        }
    }
    assert_eq!(
        maps["head_importance"]["scores"].as_array().unwrap().len(),
        2
    );
    let page = std::fs::read_to_string(html.path()).unwrap();
    assert!(page.contains("layer conductance") && page.contains("head importance"));
    // A layer the model does not have is an error naming it.
    let (ok, _, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--method",
        "layer_ig",
        "--layer",
        "9",
        "a movie",
    ]);
    assert!(!ok && err.contains("layer 9"), "{err}");
}

/// A real BBC article of over 1,000 tokens (the `bbc` data set from its registry package) on
/// the fixture classifier (max_length 64): explained in overlapping windows stitched over the
/// whole article, and predicted from the same windows (the explained F is the predicted
/// probability). Needs the package registry; PRISM_OFFLINE=1 skips it.
#[test]
fn a_bbc_article_longer_than_the_model_is_explained_and_predicted_in_windows() {
    if std::env::var("PRISM_OFFLINE").is_ok_and(|v| v == "1") {
        eprintln!("PRISM_OFFLINE=1: skipping the BBC long-article test");
        return;
    }
    let written = prism_train::data::registry::fetch_dataset("bbc", false).unwrap();
    let dev = written
        .iter()
        .find(|w| w.path.to_string_lossy().ends_with("dev.jsonl"))
        .unwrap();
    let m = fixtures().join("tiny-bert-cls");
    let tok = prism_model::PrismTokenizer::load(&m, 64).unwrap();
    let article = std::fs::read_to_string(&dev.path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .find(|t| {
            let n = tok.encode_untruncated(t, None).unwrap().ids.len();
            (1000..1600).contains(&n)
        })
        .expect("a dev article of 1,000 to 1,600 tokens");
    let n_tokens = tok.encode_untruncated(&article, None).unwrap().ids.len();
    // As a user would: the article in a JSONL file, through --input.
    let file = tempfile::NamedTempFile::with_suffix(".jsonl").unwrap();
    std::fs::write(
        file.path(),
        format!("{}\n", serde_json::json!({ "text": article })),
    )
    .unwrap();
    let (ok, out, err) = prism(&[
        "explain",
        "--model",
        m.to_str().unwrap(),
        "--method",
        "ig,occlusion",
        "--json",
        "--input",
        file.path().to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ig = &v["examples"][0][0];
    let windows = ig["windows"].as_u64().unwrap() as usize;
    // 62 text tokens per window, 31 shared with the next.
    assert_eq!(
        windows,
        (n_tokens - 2 - 62).div_ceil(31) + 1,
        "{n_tokens} tokens"
    );
    assert_eq!(ig["tokens"].as_array().unwrap().len(), n_tokens);
    assert_eq!(ig["scores"].as_array().unwrap().len(), n_tokens);
    assert!(ig["scores"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s.as_f64().unwrap().is_finite()));
    assert_eq!(v["examples"][0][1]["windows"], windows);
    let (ok, out, err) = prism(&[
        "predict",
        "--model",
        m.to_str().unwrap(),
        "--json",
        &article,
    ]);
    assert!(ok, "{err}");
    let p: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pred = &p[0]["prediction"];
    assert_eq!(pred["windows"], windows, "{pred}");
    let label = pred["label"].as_str().unwrap();
    assert!(
        ig["target"].as_str().unwrap().ends_with(label),
        "{}",
        ig["target"]
    );
    let prob = pred["probabilities"][label].as_f64().unwrap();
    assert!(
        (prob - ig["output"].as_f64().unwrap()).abs() < 1e-5,
        "{prob} vs F {}",
        ig["output"]
    );
}
