//! Property-based fuzzing of the JSON API's request bodies: valid requests mutated byte by
//! byte (and a few structural changes) are sent to `/api/predict`, `/api/explain` and
//! `/api/faithfulness`. The property: never a 500, always a JSON answer, and the server still
//! answers afterwards. `PRISM_FUZZ_CASES` sets the cases (default 48).

use crate::common::*;
use prism_serve::ServeOptions;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PRISM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

const BODIES: [(&str, &str); 3] = [
    (
        "/api/predict",
        r#"{"text": "A witty movie.", "task": "sentiment"}"#,
    ),
    (
        "/api/explain",
        r#"{"text": "A witty movie.", "methods": ["ig", "occlusion"], "steps": 8, "target": "positive", "words": true}"#,
    ),
    (
        "/api/faithfulness",
        r#"{"examples": [{"text": "A witty movie."}], "methods": ["saliency"]}"#,
    ),
];

#[test]
fn mutated_request_bodies_never_get_a_500() {
    let srv = Server::start(ServeOptions::default());
    let a = srv.addr;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..BODIES.len(),
        proptest::collection::vec(
            (
                any::<usize>(),
                prop_oneof![
                    any::<u8>(),
                    prop::sample::select(b"\"{}[]:,0-9e.nul".to_vec())
                ],
                0..3u8,
            ),
            1..5,
        ),
    );
    runner
        .run(&strategy, |(which, edits)| {
            let (path, body) = BODIES[which];
            let mut b = body.as_bytes().to_vec();
            for (i, x, op) in edits {
                let i = i % (b.len() + 1);
                match op {
                    0 if i < b.len() => b[i] = x,
                    1 => b.insert(i, x),
                    _ if i < b.len() => {
                        b.remove(i);
                    }
                    _ => {}
                }
            }
            let (st, text) = http(a, "POST", path, Some(("application/json", &b)));
            prop_assert!(
                st != 500 && st != 0,
                "{path} {:?} -> {st} {text}",
                String::from_utf8_lossy(&b)
            );
            prop_assert!(
                serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                "{path}: not JSON: {text}"
            );
            Ok(())
        })
        .unwrap();
    let (st, _) = http(a, "GET", "/api/model", None);
    assert_eq!(st, 200, "the server stopped answering");
    srv.stop();
}
