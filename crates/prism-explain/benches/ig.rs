//! Integrated-gradients throughput on the real MiniLM checkpoint (fetched into $PRISM_HOME):
//! 50 Gauss-Legendre steps per example, internal batch 16 and 50, examples per second (median of
//! 3 repetitions after a warm-up). `cargo bench -p prism-explain --bench ig`; compare with
//! `python bench/ig_reference.py` (Captum LayerIntegratedGradients, same model and sentences).

use candle_core::Device;
use prism_explain::gradient::IntegratedGradients;
use prism_explain::{ExplainModel, Method, Target};
use prism_model::tasks::MultiTaskModel;
use prism_model::tasks::{TaskKind, TaskSpec};
use prism_model::{fetch, PretrainedModel};
use std::time::Instant;

pub const SENTENCES: [&str; 8] = [
    "A gorgeous, witty, seductive movie.",
    "The acting was wooden and the plot made no sense at all.",
    "It is a film that rewards patience with genuine emotion, even if the middle act drags.",
    "I would not watch this again, even for free.",
    "The soundtrack is lovely but the dialogue is clumsy and the pacing uneven.",
    "An unexpected delight from start to finish!",
    "Nobody in the theatre laughed at the jokes, and several people left early.",
    "The director's vision is clear, bold and beautifully shot.",
];

fn main() {
    let dir = fetch::resolve_model("minilm").expect("fetch minilm");
    let base = PretrainedModel::load(&dir, &Device::Cpu).expect("load minilm");
    let spec = TaskSpec {
        name: "sentiment".into(),
        kind: TaskKind::Classification,
        labels: vec!["negative".into(), "positive".into()],
        max_length: 128,
        doc_stride: 64,
        max_question_length: None,
        threshold: None,
    };
    let mt = MultiTaskModel::new(base, vec![spec], 0).expect("head");
    let mt = mt.frozen().expect("frozen copy");
    let m = ExplainModel::new(&mt, None).expect("task");
    let inputs: Vec<_> = SENTENCES
        .iter()
        .map(|s| m.encode(s, None).expect("encode"))
        .collect();
    let tokens: usize = inputs.iter().map(|x| x.enc.ids.len()).sum();
    let mut results = Vec::new();
    for batch in [16usize, 50] {
        let ig = IntegratedGradients {
            batch_size: batch,
            ..Default::default()
        };
        let run = || {
            let t0 = Instant::now();
            for x in &inputs {
                ig.attribute(&m, x, &Target::Class { class: 1 })
                    .expect("ig");
            }
            t0.elapsed().as_secs_f64()
        };
        run(); // warm-up
        let mut times: Vec<f64> = (0..3).map(|_| run()).collect();
        times.sort_by(f64::total_cmp);
        let eps = inputs.len() as f64 / times[1];
        eprintln!("IG 50 steps, internal batch {batch:>2}: {eps:.2} examples/s (median of 3; min {:.2}, max {:.2}; {} examples, mean {:.1} tokens, {} threads)", inputs.len() as f64 / times[2], inputs.len() as f64 / times[0], inputs.len(), tokens as f64 / inputs.len() as f64, rayon_threads());
        results.push(serde_json::json!({"bench": "ig50_minilm", "internal_batch": batch, "examples_per_s": eps, "seconds": times}));
    }
    println!("{}", serde_json::to_string(&results).unwrap_or_default());
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
