//! The JSON API against a real server on loopback: predict, explain, faithfulness, the embedded
//! page, bad requests with readable 4xx errors, a load test and a graceful shutdown.

use crate::common;
use common::*;
use prism_serve::ServeOptions;
use serde_json::json;
use std::time::Instant;

#[test]
fn model_predict_explain_and_faithfulness() {
    let srv = Server::start(ServeOptions::default());
    let a = srv.addr;
    let (st, body) = http(a, "GET", "/api/model", None);
    assert_eq!(st, 200);
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["tasks"][0]["name"], "sentiment");
    assert_eq!(m["tasks"][0]["labels"], json!(["negative", "positive"]));
    assert_eq!(m["layers"], 2);
    // No absolute path of the model folder in the answer.
    assert_eq!(m["model_dir"], "tiny-bert-cls");
    assert!(
        !m.to_string().contains(&*fixtures().display().to_string()),
        "{m}"
    );

    let (st, p) = post_json(
        a,
        "/api/predict",
        &json!({"text": "A gorgeous, witty movie."}),
    );
    assert_eq!(st, 200, "{p}");
    let probs = &p["predictions"][0]["prediction"]["probabilities"];
    let sum = probs["negative"].as_f64().unwrap() + probs["positive"].as_f64().unwrap();
    assert!((sum - 1.0).abs() < 1e-5);

    let (st, e) = post_json(
        a,
        "/api/explain",
        &json!({"text": "A gorgeous, witty movie.", "methods": ["ig", "saliency", "rollout"], "steps": 20, "attention": true}),
    );
    assert_eq!(st, 200, "{e}");
    let n = e["tokens"].as_array().unwrap().len();
    assert_eq!(e["attributions"].as_array().unwrap().len(), 3);
    for at in e["attributions"].as_array().unwrap() {
        assert_eq!(at["scores"].as_array().unwrap().len(), n);
    }
    // IG's completeness: the attributions sum to F(x) - F(baseline).
    assert!(e["attributions"][0]["delta"].as_f64().unwrap().abs() < 0.05);
    let att = e["attention"].as_array().unwrap();
    assert_eq!(att.len(), 2); // layers
    assert_eq!(att[0].as_array().unwrap().len(), 4); // heads
    assert_eq!(att[0][0].as_array().unwrap().len(), n);
    assert_eq!(e["rollout"].as_array().unwrap().len(), n);
    // The same explanation through the API as through the library (same numbers).
    let (_, e2) = post_json(
        a,
        "/api/explain",
        &json!({"text": "A gorgeous, witty movie.", "methods": ["saliency"], "attention": false}),
    );
    assert_eq!(
        e2["attributions"][0]["scores"],
        e["attributions"][1]["scores"]
    );
    assert!(e2["attention"].is_null());

    // A class target by name, and words.
    let (st, e3) = post_json(
        a,
        "/api/explain",
        &json!({"text": "A gorgeous, witty movie.", "target": "negative", "methods": ["grad_x_input"], "words": true}),
    );
    assert_eq!(st, 200, "{e3}");
    assert!(e3["target"].as_str().unwrap().contains("negative"));
    assert!(e3["attributions"][0]["tokens"].as_array().unwrap().len() <= n);

    // The explained output and a foil: F = log p(positive) − log p(negative), recorded.
    let (st, e4) = post_json(
        a,
        "/api/explain",
        &json!({"text": "A gorgeous, witty movie.", "target": "positive", "foil": "negative", "output": "log_prob", "methods": ["saliency"]}),
    );
    assert_eq!(st, 200, "{e4}");
    assert_eq!(e4["output_kind"], "log_prob");
    assert_eq!(e4["foil"], "class negative");
    assert_eq!(e4["attributions"][0]["foil"], "class negative");
    let (pp, pn) = (
        probs["positive"].as_f64().unwrap(),
        probs["negative"].as_f64().unwrap(),
    );
    let f = e4["output"].as_f64().unwrap();
    assert!((f - (pp.ln() - pn.ln())).abs() < 1e-3, "{f} vs log-odds");
    let (st, bad) = post_json(
        a,
        "/api/explain",
        &json!({"text": "x", "output": "softmax", "methods": ["saliency"]}),
    );
    assert_eq!(st, 400, "{bad}");

    // A method asked for twice, and a text read in more windows than the server allows.
    let (st, bad) = post_json(
        a,
        "/api/explain",
        &json!({"text": "x", "methods": ["ig", "ig"]}),
    );
    assert_eq!(st, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("twice"), "{bad}");
    let long = "A gorgeous, witty movie. ".repeat(150);
    for (path, body) in [
        (
            "/api/explain",
            json!({"text": long, "methods": ["saliency"]}),
        ),
        ("/api/predict", json!({ "text": long })),
    ] {
        let (st, bad) = post_json(a, path, &body);
        assert_eq!(st, 413, "{path}: {bad}");
        assert!(bad["error"].as_str().unwrap().contains("windows"), "{bad}");
    }
    // A text of a few windows is explained over its whole length.
    let medium = "A gorgeous, witty movie. ".repeat(12);
    let (st, e) = post_json(
        a,
        "/api/explain",
        &json!({"text": medium, "methods": ["saliency"]}),
    );
    assert_eq!(st, 200, "{e}");
    assert!(e["windows"].as_u64().unwrap() > 1, "{e}");
    assert_eq!(
        e["attributions"][0]["scores"].as_array().unwrap().len(),
        e["tokens"].as_array().unwrap().len()
    );
    assert!(e["attention_tokens"].as_array().unwrap().len() <= 64);

    // A layer method at layer 0, with the layer maps.
    let (st, e5) = post_json(
        a,
        "/api/explain",
        &json!({"text": "A gorgeous, witty movie.", "methods": ["layer_ig", "layer_conductance"], "layer": 0, "layer_maps": true, "attention": false}),
    );
    assert_eq!(st, 200, "{e5}");
    let t = e5["tokens"].as_array().unwrap().len();
    let maps = &e5["layer_maps"];
    assert_eq!(maps["conductance"].as_array().unwrap().len(), 2, "{maps}");
    assert_eq!(maps["conductance"][0].as_array().unwrap().len(), t);
    assert_eq!(
        maps["head_importance"]["scores"].as_array().unwrap().len(),
        2
    );
    assert_eq!(
        maps["head_importance"]["scores"][1]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    // layer_conductance at layer 0 is the map's first row.
    let row: Vec<f64> = maps["conductance"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let got: Vec<f64> = e5["attributions"][1]["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(row.len(), got.len());
    for (a, b) in row.iter().zip(&got) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    let (st, bad) = post_json(
        a,
        "/api/explain",
        &json!({"text": "x", "methods": ["layer_ig"], "layer": 5}),
    );
    assert_eq!(st, 400, "{bad}");
    assert!(bad["error"].as_str().unwrap().contains("layer 5"), "{bad}");

    let (st, f) = post_json(
        a,
        "/api/faithfulness",
        &json!({"examples": [{"text": "A gorgeous, witty movie."}, {"text": "A dull remake."}], "methods": ["occlusion"]}),
    );
    assert_eq!(st, 200, "{f}");
    assert_eq!(f["examples"], 2);
    let rows: Vec<&str> = f["table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["method"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["occlusion", "random"]);

    // The page and its assets are embedded; the API documents itself.
    let (st, html) = http(a, "GET", "/", None);
    assert_eq!(st, 200);
    assert!(html.contains("<script src=\"/app.js\">"));
    assert_eq!(http(a, "GET", "/app.js", None).0, 200);
    let (st, spec) = http(a, "GET", "/api/openapi.json", None);
    assert_eq!(st, 200);
    let spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    assert!(spec["paths"]["/api/explain"]["post"].is_object());
    srv.stop();
}

#[test]
fn bad_requests_get_4xx_with_a_message() {
    let srv = Server::start(ServeOptions {
        max_text_chars: 200,
        max_body_bytes: 4096,
        ..Default::default()
    });
    let a = srv.addr;
    let cases: Vec<(serde_json::Value, u16, &str)> = vec![
        (
            json!({"text": "fine", "methods": ["nope"]}),
            400,
            "unknown method `nope`",
        ),
        (json!({"txt": "fine"}), 422, "unknown field `txt`"),
        (json!({"text": "   "}), 400, "`text` is empty"),
        (json!({"text": "x".repeat(300)}), 413, "the limit is 200"),
        (
            json!({"text": "fine", "task": "topic"}),
            400,
            "no task `topic`",
        ),
        (
            json!({"text": "fine", "target": "neutral"}),
            400,
            "unknown class `neutral`",
        ),
        (
            json!({"text": "fine", "steps": 100000}),
            400,
            "`steps` must be in",
        ),
        (
            json!({"text": "fine", "methods": []}),
            400,
            "`methods` is empty",
        ),
        (json!({"text": 5}), 422, "invalid type"),
        // Only an object is a request (serde would read a struct from an array of its fields).
        (json!(["fine"]), 422, "must be a JSON object, not an array"),
        (json!("fine"), 422, "not a string"),
    ];
    for (body, status, msg) in cases {
        let (st, v) = post_json(a, "/api/explain", &body);
        assert_eq!(st, status, "{body} -> {v}");
        let err = v["error"].as_str().unwrap_or_default();
        assert!(err.contains(msg), "{body}: {err}");
    }
    // Not JSON, malformed JSON, a body over the limit, unknown paths, path traversal.
    let (st, b) = http(a, "POST", "/api/predict", Some(("text/plain", b"hello")));
    assert_eq!(st, 415, "{b}");
    assert!(b.contains("error"));
    let (st, b) = http(
        a,
        "POST",
        "/api/predict",
        Some(("application/json", b"{\"text\": ")),
    );
    assert_eq!(st, 400, "{b}");
    let big = format!("{{\"text\": \"{}\"}}", "y".repeat(10_000));
    let (st, b) = http(
        a,
        "POST",
        "/api/predict",
        Some(("application/json", big.as_bytes())),
    );
    assert_eq!(st, 413, "{b}");
    assert_eq!(http(a, "GET", "/nope", None).0, 404);
    assert_eq!(http(a, "GET", "/../../etc/passwd", None).0, 404);
    assert_eq!(http(a, "GET", "/assets/../Cargo.toml", None).0, 404);
    let (st, b) = post_json(a, "/api/faithfulness", &json!({"examples": []}));
    assert_eq!(st, 400, "{b}");
    // A hostile text is just data (the page renders it with textContent; see the browser test).
    let (st, e) = post_json(
        a,
        "/api/explain",
        &json!({"text": "<script>alert(1)</script>", "methods": ["saliency"]}),
    );
    assert_eq!(st, 200, "{e}");
    assert!(e["tokens"].as_array().unwrap().len() > 3);
    srv.stop();
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// 200 concurrent IG-50 explanations; returns the report line.
fn load_test(srv: &Server) -> String {
    let a = srv.addr;
    let round = |n: usize| -> Vec<f64> {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    let (st, v) = post_json(
                        a,
                        "/api/explain",
                        &json!({"text": format!("Request {i}: a gorgeous, witty and seductive movie."), "methods": ["ig"], "steps": 50}),
                    );
                    assert_eq!(st, 200, "{v}");
                    t0.elapsed().as_secs_f64()
                })
            })
            .collect();
        let mut lat: Vec<f64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        lat.sort_by(|x, y| x.total_cmp(y));
        lat
    };
    let t0 = Instant::now();
    let lat = round(200);
    let wall = t0.elapsed().as_secs_f64();
    let (_, rss1) = memory_kb();
    let lat2 = round(200);
    let (peak, rss2) = memory_kb();
    assert_eq!(lat.len(), 200);
    // Flat memory: a second round of 200 requests does not grow the process materially.
    assert!(
        rss2 < rss1 + 64 * 1024,
        "memory grew from {rss1} kB to {rss2} kB over 200 requests"
    );
    format!(
        "load test: 200 concurrent IG-50 explains in {wall:.2} s, zero errors; latency p50 {:.3} s, p99 {:.3} s (second round p50 {:.3}, p99 {:.3}); RSS {} -> {} MB, peak {} MB",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        percentile(&lat2, 0.5),
        percentile(&lat2, 0.99),
        rss1 / 1024,
        rss2 / 1024,
        peak / 1024
    )
}

#[test]
fn two_hundred_concurrent_explains_without_errors_and_flat_memory() {
    let srv = Server::start(ServeOptions::default());
    println!("{}", load_test(&srv));
    srv.stop();
}

/// The same against a real model when PRISM_SERVE_MODEL names one (a folder written by `prism
/// train`): `PRISM_SERVE_MODEL=DIR cargo test --release -p prism-serve --test api -- --nocapture`.
#[test]
fn load_test_on_a_real_model() {
    let Some(dir) = std::env::var_os("PRISM_SERVE_MODEL") else {
        eprintln!("SKIPPED: set PRISM_SERVE_MODEL=DIR to load-test a real model");
        return;
    };
    let srv = Server::start_with(dir.into(), ServeOptions::default());
    println!("{}", load_test(&srv));
    srv.stop();
}

#[test]
fn the_server_answers_while_a_long_explanation_runs_and_stops_gracefully() {
    let srv = Server::start(ServeOptions::default());
    let a = srv.addr;
    let long = std::thread::spawn(move || {
        post_json(
            a,
            "/api/explain",
            &json!({"text": "A long explanation with many samples of a gorgeous witty movie.", "methods": ["kernel_shap", "lime", "ig"], "steps": 300}),
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    // Cheap requests are not blocked behind the model work.
    let t0 = Instant::now();
    assert_eq!(http(a, "GET", "/api/model", None).0, 200);
    assert!(t0.elapsed().as_secs_f64() < 5.0);
    // A graceful shutdown lets the in-flight request finish.
    srv.stop();
    let (st, v) = long.join().unwrap();
    assert_eq!(st, 200, "{v}");
    assert!(
        std::net::TcpStream::connect(a).is_err(),
        "still listening after shutdown"
    );
}

/// Every encoder family behind the server: a classifier on each tiny fixture (XLM-RoBERTa,
/// ELECTRA, DistilBERT, ModernBERT, DeBERTa-v3) answers predict and explain (IG, rollout,
/// occlusion) with finite scores and the attention of every layer.
#[test]
fn every_family_is_served() {
    use prism_model::tasks::{MultiTaskModel, TaskKind, TaskSpec};
    use prism_model::PretrainedModel;
    for fixture in [
        "tiny-xlmr",
        "tiny-electra",
        "tiny-distilbert",
        "tiny-modernbert",
        "tiny-deberta-v3",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let base =
            PretrainedModel::load(&fixtures().join(fixture), &candle_core::Device::Cpu).unwrap();
        let layers = base.config.sizes().layers;
        let spec = TaskSpec {
            name: "sentiment".into(),
            kind: TaskKind::Classification,
            labels: vec!["negative".into(), "positive".into()],
            max_length: 32,
            doc_stride: 8,
            max_question_length: None,
            threshold: None,
        };
        let nli = TaskSpec {
            name: "nli".into(),
            kind: TaskKind::PairClassification,
            labels: vec!["entailment".into(), "contradiction".into()],
            ..spec.clone()
        };
        MultiTaskModel::new(base, vec![spec, nli], 3)
            .unwrap()
            .save(dir.path())
            .unwrap();
        let srv = Server::start_with(dir.path().to_path_buf(), ServeOptions::default());
        let (st, p) = post_json(srv.addr, "/api/predict", &json!({"text": "A witty movie."}));
        assert_eq!(st, 200, "{fixture}: {p}");
        let (st, e) = post_json(
            srv.addr,
            "/api/explain",
            &json!({"text": "A witty movie.", "task": "sentiment", "methods": ["ig", "rollout", "occlusion"], "steps": 16, "attention": true}),
        );
        assert_eq!(st, 200, "{fixture}: {e}");
        let n = e["tokens"].as_array().unwrap().len();
        for at in e["attributions"].as_array().unwrap() {
            let s = at["scores"].as_array().unwrap();
            assert_eq!(s.len(), n, "{fixture}");
            assert!(
                s.iter().all(|v| v.as_f64().is_some_and(f64::is_finite)),
                "{fixture}"
            );
        }
        assert_eq!(
            e["attention"].as_array().unwrap().len(),
            layers,
            "{fixture}"
        );
        // A pair task explained without its second text is a 400, not an answer.
        let (st, e) = post_json(
            srv.addr,
            "/api/explain",
            &json!({"text": "A man walks.", "task": "nli", "methods": ["saliency"]}),
        );
        assert_eq!(st, 400, "{fixture}: {e}");
        assert!(e["error"].as_str().unwrap().contains("text2"), "{e}");
        srv.stop();
    }
}

/// Issue 22: a QA question of 61-124 tokens with 128-token windows overlapping by 64 (the
/// MiniLM defaults) was a 500 with the tokenizer's panic text; the question is now cut to its
/// budget and answered (here 29-60 tokens in tiny-bert's 64-token windows overlapping by 32).
#[test]
fn a_long_question_is_answered() {
    use prism_model::tasks::{MultiTaskModel, TaskKind, TaskSpec};
    use prism_model::PretrainedModel;
    let dir = tempfile::tempdir().unwrap();
    let base =
        PretrainedModel::load(&fixtures().join("tiny-bert"), &candle_core::Device::Cpu).unwrap();
    let spec = TaskSpec {
        name: "squad".into(),
        kind: TaskKind::Qa,
        labels: Vec::new(),
        max_length: 64,
        doc_stride: 32,
        max_question_length: None,
        threshold: None,
    };
    // More overlap than the model's 64 positions allow is refused when the model is built.
    let too_much = TaskSpec {
        max_length: 128,
        doc_stride: 64,
        ..spec.clone()
    };
    let again =
        PretrainedModel::load(&fixtures().join("tiny-bert"), &candle_core::Device::Cpu).unwrap();
    let e = MultiTaskModel::new(again, vec![too_much], 3)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("doc_stride 64") && e.contains("cut to the model's positions"),
        "{e}"
    );
    MultiTaskModel::new(base, vec![spec], 3)
        .unwrap()
        .save(dir.path())
        .unwrap();
    let srv = Server::start_with(dir.path().to_path_buf(), ServeOptions::default());
    let context = "the man walks into a bar and the woman walks into a bar . ".repeat(20);
    for words in [4usize, 30, 45, 60, 124] {
        let question = "who walks into ".repeat(words / 3) + "?";
        let (st, p) = post_json(
            srv.addr,
            "/api/predict",
            &json!({"text": question, "text2": context}),
        );
        assert_eq!(st, 200, "{words}-word question: {p}");
        let answer = &p["predictions"][0]["prediction"];
        assert!(
            answer["answer"].is_string() || answer["text"].is_string(),
            "{p}"
        );
    }
    srv.stop();
}

/// Attention only on request and capped; a work budget (tokens × methods × steps) per request:
/// over either, a 422 naming the numbers, before any work is done.
#[test]
fn attention_is_opt_in_and_capped_and_work_has_a_budget() {
    let srv = Server::start(ServeOptions {
        max_attention_values: 2 * 4 * 10 * 10,
        max_work: 20 * 2 * 50,
        ..ServeOptions::default()
    });
    let a = srv.addr;
    let (st, e) = post_json(
        a,
        "/api/explain",
        &json!({"text": "A witty movie.", "methods": ["saliency"]}),
    );
    assert_eq!(st, 200, "{e}");
    assert!(e["attention"].is_null(), "attention without asking: {e}");
    let long = "A gorgeous, witty, seductive movie with a plot.";
    let (st, e) = post_json(
        a,
        "/api/explain",
        &json!({"text": long, "methods": ["saliency"], "attention": true}),
    );
    assert_eq!(st, 422, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains("attention") && msg.contains("800"), "{msg}");
    let (st, e) = post_json(
        a,
        "/api/explain",
        &json!({"text": long, "methods": ["ig", "saliency", "occlusion"], "steps": 300}),
    );
    assert_eq!(st, 422, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("3 methods") && msg.contains("300 steps") && msg.contains("2000"),
        "{msg}"
    );
    srv.stop();
}

/// The `Host` header must name this server: a DNS-rebinding page (another site's name resolved
/// to 127.0.0.1) gets 403; `localhost` at the port and `allow_hosts` names are answered.
#[test]
fn requests_for_another_host_are_refused() {
    use std::io::{Read, Write};
    let srv = Server::start(ServeOptions {
        allow_hosts: vec!["prism.example:443".into()],
        ..ServeOptions::default()
    });
    let status = |host: &str| -> (u16, String) {
        let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
        write!(
            s,
            "GET /api/model HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, out)
    };
    let port = srv.addr.port();
    assert_eq!(status(&srv.addr.to_string()).0, 200);
    assert_eq!(status(&format!("localhost:{port}")).0, 200);
    assert_eq!(status("prism.example:443").0, 200);
    let (code, body) = status(&format!("attacker.example:{port}"));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--allow-host"), "{body}");
    srv.stop();
}

/// A client that never finishes its headers is disconnected after the header timeout, and
/// connections beyond the limit are closed on accept, while a normal request is still
/// answered.
#[test]
fn half_sent_headers_time_out_and_connections_are_limited() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let srv = Server::start(ServeOptions {
        header_timeout: Duration::from_millis(500),
        max_connections: 3,
        ..ServeOptions::default()
    });
    let closed_within = |s: &mut std::net::TcpStream, limit: Duration| -> bool {
        s.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 64];
        // EOF (0) or a reset is a close; a timeout is not.
        !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            || e.kind() == std::io::ErrorKind::TimedOut)
    };
    // Three half-sent requests hold every connection slot until the timeout.
    let t0 = Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..3)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
            s.write_all(b"GET /api/model HTTP/1.1\r\nHost: ").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // A fourth connection beyond the limit is closed at once.
    let mut extra = std::net::TcpStream::connect(srv.addr).unwrap();
    let _ = extra.write_all(b"GET /api/model HTTP/1.1\r\n");
    assert!(
        closed_within(&mut extra, Duration::from_secs(3)),
        "over the limit, still open"
    );
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(5)),
            "a half-sent request stayed open"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    // The slots are free again.
    let (st, _) = http(srv.addr, "GET", "/api/model", None);
    assert_eq!(st, 200);
    srv.stop();
}

/// A keep-alive connection serves several requests, and one left idle between requests is
/// closed after the header timeout (three clients that never send their next request must not
/// hold the server's connections forever).
#[test]
fn idle_keep_alive_connections_are_closed() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let srv = Server::start(ServeOptions {
        header_timeout: Duration::from_millis(600),
        ..ServeOptions::default()
    });
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // One whole response: its head, then Content-Length bytes.
    let mut response = |s: &mut std::net::TcpStream| -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).expect("an answer");
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("a Content-Length");
                if got.len() >= end + 4 + len {
                    return text[..end].to_string();
                }
            }
        }
    };
    for _ in 0..2 {
        write!(s, "GET /api/model HTTP/1.1\r\nHost: {}\r\n\r\n", srv.addr).unwrap();
        let head = response(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let idle = Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf);
    assert!(
        matches!(n, Ok(0))
            || matches!(&n, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "an idle keep-alive connection stayed open: {n:?}"
    );
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    srv.stop();
}

/// A `Content-Length` over the body limit is answered with 413 at once, before any of the
/// body is sent.
#[test]
fn an_oversized_content_length_is_refused_before_reading() {
    use std::io::{Read, Write};
    let srv = Server::start(ServeOptions::default());
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    write!(
        s,
        "POST /api/predict HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n",
        srv.addr
    )
    .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s
        .read(&mut buf)
        .expect("no answer within 5 s without a body");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    srv.stop();
}
