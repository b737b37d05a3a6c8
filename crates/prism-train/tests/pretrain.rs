//! Pre-training end to end on a hand-written corpus: tokenizer training for every kind, a fresh
//! model whose held-out perplexity falls, continued pre-training of an encoder without an MLM
//! head, exact resume after an interruption, and bad-input errors.

use candle_core::Device;
use prism_model::heads::MaskedLm;
use prism_model::PrismTokenizer;
use prism_train::pretrain::corpus::{pack_all, DocFormat, PackSpec, TextEncoder};
use prism_train::pretrain::{
    pretrain, save_trained_tokenizer, train_tokenizer, PretrainConfig, PretrainOptions,
    TokenizerKind, TokenizerTrainConfig,
};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn corpus() -> PathBuf {
    fixtures().join("data/corpus")
}

fn config(out: &Path, steps: usize, model: &str) -> PretrainConfig {
    let text = format!(
        r#"
output = "{out}"
seed = 3
steps = {steps}
batch_size = 4
grad_accum = 2
lr = 3e-3
warmup = 2
eval_every = 4
checkpoint_every = 2
eval_batch_size = 8
{model}
[corpus]
train = ["{c}"]
dev = ["{c}/doc3.txt"]
max_length = 24
shuffle_buffer = 8
[mlm]
probability = 0.2
whole_word = true
"#,
        out = out.display(),
        c = corpus().display(),
    );
    let cfg: PretrainConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// A fresh model with a tokenizer trained on the corpus into `dir`. (The `tokenizers` trainers
/// break frequency ties in hash-map order, so two trainings may differ; runs that must match
/// share one tokenizer, as `train_tokenizer` does by writing it once to `output/tokenizer`.)
fn fresh_model(dir: &Path) -> String {
    if !dir.join("tokenizer.json").is_file() {
        let cfg = TokenizerTrainConfig {
            kind: TokenizerKind::Wordpiece,
            vocab_size: 200,
            min_frequency: 1,
            lowercase: true,
            xlnet: false,
        };
        let tk = train_tokenizer(
            &cfg,
            &[
                corpus().join("doc1.txt"),
                corpus().join("doc2.txt"),
                corpus().join("doc3.txt"),
            ],
        )
        .unwrap();
        save_trained_tokenizer(&tk, TokenizerKind::Wordpiece, true, 64, dir).unwrap();
    }
    format!(
        r#"
[model]
tokenizer = "{}"
hidden_size = 32
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 64
dropout = 0.0
"#,
        dir.display()
    )
}

fn quiet() -> PretrainOptions {
    PretrainOptions::default()
}

fn flat(model_dir: &Path) -> Vec<f32> {
    let m = MaskedLm::load(model_dir, &Device::Cpu).unwrap();
    let mut v = Vec::new();
    for (_, var) in m.base.params.vars() {
        v.extend(
            var.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    v
}

#[test]
fn tokenizers_of_every_kind_train_and_load() {
    let files: Vec<PathBuf> = ["doc1.txt", "doc2.txt", "doc3.txt"]
        .iter()
        .map(|f| corpus().join(f))
        .collect();
    for (kind, cls, mask) in [
        (TokenizerKind::Wordpiece, "[CLS]", "[MASK]"),
        (TokenizerKind::Bpe, "<s>", "<mask>"),
        (TokenizerKind::Unigram, "[CLS]", "[MASK]"),
    ] {
        let cfg = TokenizerTrainConfig {
            kind,
            vocab_size: 300,
            min_frequency: 1,
            lowercase: true,
            xlnet: false,
        };
        let tk = train_tokenizer(&cfg, &files).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_trained_tokenizer(&tk, kind, true, 64, dir.path()).unwrap();
        let tok = PrismTokenizer::load(dir.path(), 64).unwrap();
        // (byte-level BPE always has its 256-byte alphabet)
        assert!(
            tok.vocab_size() <= 300 && tok.vocab_size() > 40,
            "{kind:?} {}",
            tok.vocab_size()
        );
        let e = tok
            .encode("The jury praised the river festival.", None)
            .unwrap();
        assert_eq!(e.tokens[0], cls, "{kind:?}: {:?}", e.tokens);
        assert!(tok.token_to_id(mask).is_some());
        assert!(e.tokens.len() > 6, "{kind:?}: {:?}", e.tokens);
        if kind == TokenizerKind::Wordpiece {
            assert!(dir.path().join("vocab.txt").is_file());
        }
    }
}

#[test]
fn packing_respects_max_length_and_documents() {
    let files: Vec<PathBuf> = ["doc1.txt", "doc2.txt"]
        .iter()
        .map(|f| corpus().join(f))
        .collect();
    let cfg = TokenizerTrainConfig {
        kind: TokenizerKind::Wordpiece,
        vocab_size: 200,
        min_frequency: 1,
        lowercase: true,
        xlnet: false,
    };
    let tk = train_tokenizer(&cfg, &files).unwrap();
    let enc = TextEncoder::new(&tk).unwrap();
    let (cls, sep) = (
        tk.token_to_id("[CLS]").unwrap(),
        tk.token_to_id("[SEP]").unwrap(),
    );
    let spec = PackSpec {
        files: files.clone(),
        cls_last: false,
        format: DocFormat::File,
        exclude: Default::default(),
        max_len: 16,
        cls,
        sep,
        shuffle_buffer: 1,
        seed: 0,
    };
    let seqs = pack_all(&spec, &enc, usize::MAX).unwrap();
    let total: usize = files
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| enc.encode(l).unwrap().0.len())
                .sum::<usize>()
        })
        .sum();
    let body: usize = seqs
        .iter()
        .map(|s| s.special.iter().filter(|&&x| !x).count())
        .sum();
    assert_eq!(body, total, "every token is packed exactly once");
    for s in &seqs {
        assert!(s.ids.len() <= 16);
        assert_eq!(s.ids[0], cls);
        assert_eq!(*s.ids.last().unwrap(), sep);
    }
    // All but the last sequence are full (FULL-SENTENCES packing).
    assert!(seqs[..seqs.len() - 1].iter().all(|s| s.ids.len() >= 15));
    // One document per line gives a separator at every line end.
    let line_spec = PackSpec {
        format: DocFormat::Line,
        ..spec
    };
    let seps: usize = pack_all(&line_spec, &enc, usize::MAX)
        .unwrap()
        .iter()
        .map(|s| s.ids.iter().filter(|&&i| i == sep).count())
        .sum();
    assert!(seps >= 14, "{seps}");
}

#[test]
fn fresh_model_learns_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    // Uninterrupted.
    let full = config(
        &dir.path().join("full"),
        12,
        &fresh_model(&dir.path().join("tok")),
    );
    let r = pretrain(&full, &Device::Cpu, &quiet()).unwrap();
    assert!(r.completed);
    assert_eq!(r.perplexity_curve.len(), 3);
    let (first, last) = (r.perplexity_curve[0].1, r.perplexity_curve[2].1);
    assert!(
        last < first,
        "held-out perplexity should fall: {:?}",
        r.perplexity_curve
    );
    let log = std::fs::read_to_string(dir.path().join("full/metrics.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"tokens_per_s\""))
            .count(),
        12
    );
    assert!(dir.path().join("full/report.html").is_file());

    // Interrupted after 5 updates (checkpoint at 4), resumed with a new invocation.
    let part = config(
        &dir.path().join("part"),
        12,
        &fresh_model(&dir.path().join("tok")),
    );
    let r1 = pretrain(
        &part,
        &Device::Cpu,
        &PretrainOptions {
            stop_after: Some(5),
            ..quiet()
        },
    )
    .unwrap();
    assert!(!r1.completed);
    let r2 = pretrain(&part, &Device::Cpu, &quiet()).unwrap();
    assert!(r2.completed);
    assert_eq!(r2.tokens_seen, r.tokens_seen);
    assert_eq!(
        flat(&dir.path().join("full/model")),
        flat(&dir.path().join("part/model")),
        "a resumed run must end at the same weights"
    );
    let log2 = std::fs::read_to_string(dir.path().join("part/metrics.jsonl")).unwrap();
    assert_eq!(
        log2.lines()
            .filter(|l| l.contains("\"tokens_per_s\""))
            .count(),
        12
    );

    // A changed config refuses to resume.
    let mut changed = part.clone();
    changed.lr = 1e-3;
    changed.steps = 20;
    let e = pretrain(&changed, &Device::Cpu, &quiet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("config changed"), "{e}");

    // The output is a BertForMaskedLM folder with a tokenizer that fill-mask can use.
    let m = MaskedLm::load(&dir.path().join("full/model"), &Device::Cpu).unwrap();
    let out = m.fill_mask("the jury [MASK] the election.", 5).unwrap();
    assert_eq!(out[0].len(), 5);
    let cfg = std::fs::read_to_string(dir.path().join("full/model/config.json")).unwrap();
    assert!(cfg.contains("BertForMaskedLM"));
}

#[test]
fn continued_pretraining_initialises_and_ties_a_head() {
    let dir = tempfile::tempdir().unwrap();
    let model = format!(
        "[model]\nfrom = \"{}\"\n",
        fixtures().join("tiny-bert").display()
    );
    let cfg = config(&dir.path().join("cont"), 4, &model);
    let before = MaskedLm::load(&fixtures().join("tiny-bert"), &Device::Cpu).unwrap();
    let table0: Vec<f32> = before
        .base
        .params
        .get("embeddings.word_embeddings.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let r = pretrain(&cfg, &Device::Cpu, &quiet()).unwrap();
    assert!(r.completed);
    let after = MaskedLm::load(&r.model_dir, &Device::Cpu).unwrap();
    // The head came from the checkpoint this time, and the tied table was trained.
    assert!(after.base.params.source_has("cls.predictions.bias"));
    let table1: Vec<f32> = after
        .base
        .params
        .get("embeddings.word_embeddings.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_ne!(table0, table1);
}

#[test]
fn bad_corpus_input_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // A missing corpus path.
    let mut cfg = config(
        &dir.path().join("a"),
        2,
        &fresh_model(&dir.path().join("tok")),
    );
    cfg.corpus.train = vec![dir.path().join("nope.txt").to_string_lossy().to_string()];
    let e = pretrain(&cfg, &Device::Cpu, &quiet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.txt") && e.contains("not found"), "{e}");
    // A line that is not UTF-8.
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("x.txt"),
        b"fine line one\nfine line two\nbroken \xff\xfe here\n",
    )
    .unwrap();
    let mut cfg = config(
        &dir.path().join("b"),
        2,
        &fresh_model(&dir.path().join("tok")),
    );
    cfg.corpus.train = vec![bad.to_string_lossy().to_string()];
    let e = pretrain(&cfg, &Device::Cpu, &quiet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("x.txt:3"), "{e}");
    // An empty corpus.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("e.txt"), b"\n\n").unwrap();
    let mut cfg = config(
        &dir.path().join("c"),
        2,
        &format!(
            "[model]\nfrom = \"{}\"\n",
            fixtures().join("tiny-bert").display()
        ),
    );
    cfg.corpus.train = vec![empty.to_string_lossy().to_string()];
    let e = pretrain(&cfg, &Device::Cpu, &quiet())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no tokens"), "{e}");
    // A config without a model.
    let text = "output = \"x\"\nsteps = 1\n[model]\nhidden_size = 8\n[corpus]\ntrain = [\"a\"]\n";
    let cfg: PretrainConfig = toml::from_str(text).unwrap();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("from"), "{e}");
}

#[test]
fn xlnet_permutation_lm_learns_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let model = format!(
        "objective = \"plm\"\n[model]\nfrom = \"{}\"\n",
        fixtures().join("tiny-xlnet").display()
    );
    let make = |out: &str| {
        let mut cfg = config(&dir.path().join(out), 12, &model);
        cfg.lr = 1e-2;
        cfg
    };
    let full = make("full");
    let r = pretrain(&full, &Device::Cpu, &quiet()).unwrap();
    assert!(r.completed);
    let (first, last) = (
        r.perplexity_curve[0].1,
        r.perplexity_curve.last().unwrap().1,
    );
    assert!(
        last < first,
        "PLM held-out perplexity should fall: {:?}",
        r.perplexity_curve
    );
    let cfg_json = std::fs::read_to_string(dir.path().join("full/model/config.json")).unwrap();
    assert!(cfg_json.contains("XLNetLMHeadModel"), "{cfg_json}");
    let st = candle_core::safetensors::load(
        dir.path().join("full/model/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(st.contains_key("lm_loss.bias") && st.contains_key("transformer.mask_emb"));

    let part = make("part");
    let r1 = pretrain(
        &part,
        &Device::Cpu,
        &PretrainOptions {
            stop_after: Some(5),
            ..quiet()
        },
    )
    .unwrap();
    assert!(!r1.completed);
    pretrain(&part, &Device::Cpu, &quiet()).unwrap();
    let w = |d: &str| {
        let m = prism_model::PretrainedModel::load(&dir.path().join(d).join("model"), &Device::Cpu)
            .unwrap();
        m.params
            .vars()
            .into_iter()
            .flat_map(|(_, v)| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect::<Vec<f32>>()
    };
    assert_eq!(
        w("full"),
        w("part"),
        "a resumed PLM run must end at the same weights"
    );
    // MLM on an XLNet is refused with a reason.
    let mut wrong = make("wrong");
    wrong.objective = prism_train::pretrain::Objective::Mlm;
    let e = pretrain(&wrong, &Device::Cpu, &quiet())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("permutation"), "{e}");
}

#[test]
fn a_fresh_xlnet_trains_its_own_xlnet_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let model = r#"
objective = "plm"
[model]
train_tokenizer = { kind = "unigram", vocab_size = 150 }
model_type = "xlnet"
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32
"#;
    let cfg = config(&dir.path().join("x"), 3, model);
    let r = pretrain(&cfg, &Device::Cpu, &quiet()).unwrap();
    assert!(r.completed);
    let tok = PrismTokenizer::load(&dir.path().join("x/model"), 64).unwrap();
    let e = tok.encode("the river runs", None).unwrap();
    assert_eq!(&e.tokens[e.tokens.len() - 2..], ["<sep>", "<cls>"]);
    assert!(tok.pads_left());
    // BERT with `plm` is refused before anything runs.
    let mut bad = cfg.clone();
    bad.model.model_type = "bert".into();
    assert!(bad.validate().unwrap_err().to_string().contains("plm"));
}

/// Continued MLM pre-training of the other families with their own heads: ELECTRA's generator,
/// DistilBERT's vocab_* head, ModernBERT's prediction head + decoder and DeBERTa's two heads
/// (`lm_predictions`, legacy `cls.predictions`); each output folder is
/// its transformers MLM class, with the head from the checkpoint and fill-mask working.
#[test]
fn continued_mlm_pretraining_runs_on_the_other_families() {
    for (fixture, class, head_key) in [
        (
            "tiny-electra-mlm",
            "ElectraForMaskedLM",
            "generator_lm_head.bias",
        ),
        (
            "tiny-distilbert-mlm",
            "DistilBertForMaskedLM",
            "vocab_projector.bias",
        ),
        (
            "tiny-modernbert-mlm",
            "ModernBertForMaskedLM",
            "decoder.bias",
        ),
        (
            "tiny-deberta-v3-mlm",
            "DebertaV2ForMaskedLM",
            "lm_predictions.lm_head.bias",
        ),
        (
            "tiny-deberta-v2-mlm",
            "DebertaV2ForMaskedLM",
            "cls.predictions.bias",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let model = format!(
            "[model]\nfrom = \"{}\"\n",
            fixtures().join(fixture).display()
        );
        let cfg = config(&dir.path().join("cont"), 4, &model);
        let r = pretrain(&cfg, &Device::Cpu, &quiet()).unwrap_or_else(|e| panic!("{fixture}: {e}"));
        assert!(r.completed, "{fixture}");
        let after = MaskedLm::load(&r.model_dir, &Device::Cpu).unwrap();
        assert!(
            after.base.params.source_has(head_key),
            "{fixture}: {head_key}"
        );
        let cfg = std::fs::read_to_string(r.model_dir.join("config.json")).unwrap();
        assert!(cfg.contains(class), "{fixture}: {cfg}");
        let mask = after
            .base
            .tokenizer()
            .unwrap()
            .inner()
            .get_added_tokens_decoder()
            .values()
            .find(|t| t.content.contains("MASK"))
            .map(|t| t.content.clone())
            .unwrap_or("[MASK]".into());
        let out = after
            .fill_mask(&format!("the jury {mask} the election."), 3)
            .unwrap();
        assert_eq!(out[0].len(), 3, "{fixture}");
    }
}

/// Issue 23: ELECTRA's replaced-token detection at PyTorch parity (make_fixtures.py --rtd):
/// transformers' `ElectraForMaskedLM` generator whose embeddings are the
/// `ElectraForPreTraining` discriminator's, the same masks and the same sampled tokens (one
/// equal to the original, so labelled original): the generator's logits, the MLM loss, the
/// discriminator's logits, its BCE, MLM + 50·RTD, and the gradient of every parameter of both
/// models (the shared embeddings' once, both uses summed).
#[test]
fn replaced_token_detection_matches_pytorch() {
    use candle_core::{DType, Tensor};
    use prism_model::heads::ElectraPretraining;
    use prism_model::PretrainedModel;
    use prism_train::pretrain::masking::MaskedBatch;
    use prism_train::pretrain::rtd::{rtd_step, RtdBatch};
    let dir = fixtures().join("tiny-electra-rtd");
    let exp = candle_core::safetensors::load(
        fixtures().join("tiny-electra-rtd_expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let disc = PretrainedModel::load(&dir, &Device::Cpu).unwrap();
    let generator = ElectraPretraining::load_generator(&dir.join("generator"), &disc).unwrap();
    let model = ElectraPretraining::new(disc, generator).unwrap();
    let u32s = |k: &str| -> Vec<u32> {
        exp[k]
            .to_dtype(DType::U32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (b, t) = exp["input_ids"].dims2().unwrap();
    let original = u32s("input_ids");
    let positions = u32s("positions");
    let masked = MaskedBatch {
        batch: b,
        len: t,
        input_ids: u32s("masked_ids"),
        attention_mask: u32s("attention_mask"),
        labels: positions.iter().map(|&p| original[p as usize]).collect(),
        tokens: u32s("attention_mask").iter().filter(|&&m| m == 1).count(),
        positions: positions.clone(),
    };
    let sampled_all = u32s("sampled_ids");
    let sampled: Vec<u32> = positions.iter().map(|&p| sampled_all[p as usize]).collect();
    let batch = RtdBatch::new(masked, original, &Device::Cpu).unwrap();
    let step = rtd_step(&model, &batch, &sampled, 50.0, &prism_model::Mode::Eval).unwrap();
    let max_abs = |t: &Tensor| -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let close = |what: &str, got: &Tensor, want: &Tensor, tol: f32| {
        let d = max_abs(&(got - want).unwrap());
        assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
    };
    close(
        "generator logits",
        &step.generator_logits,
        &exp["generator_logits"],
        1e-4,
    );
    let mask = u32s("attention_mask");
    let attended: Vec<u32> = (0..mask.len() as u32)
        .filter(|&i| mask[i as usize] == 1)
        .collect();
    let want_d = exp["discriminator_logits"]
        .flatten_all()
        .unwrap()
        .index_select(&Tensor::new(attended.as_slice(), &Device::Cpu).unwrap(), 0)
        .unwrap();
    close(
        "discriminator logits",
        &step.discriminator_logits,
        &want_d,
        1e-4,
    );
    let want_replaced: Vec<f32> = {
        let r = u32s("replaced");
        attended.iter().map(|&i| r[i as usize] as f32).collect()
    };
    assert_eq!(step.replaced, want_replaced, "replaced labels");
    assert_eq!(want_replaced.iter().sum::<f32>(), 3.0);
    for (what, got) in [
        ("mlm", &step.mlm),
        ("rtd", &step.rtd),
        ("total", &step.total),
    ] {
        let key = if what == "total" {
            "loss".to_string()
        } else {
            format!("{what}_loss")
        };
        close(what, &got.reshape(1).unwrap(), &exp[&key], 1e-4);
    }
    let grads = step.total.backward().unwrap();
    let vars = model.vars();
    let n_expected = exp.keys().filter(|k| k.starts_with("grad.param.")).count();
    assert_eq!(vars.len(), n_expected, "parameters of both models");
    for (name, var) in &vars {
        let want = &exp[&format!("grad.param.{name}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let (d, scale) = (max_abs(&(got - want).unwrap()), max_abs(want));
        assert!(
            d <= 1e-3 * scale + 1e-5,
            "grad {name}: diff {d} vs scale {scale}"
        );
    }
}

fn all_weights(dir: &Path) -> Vec<f32> {
    let m = prism_model::PretrainedModel::load(dir, &Device::Cpu).unwrap();
    let mut v = Vec::new();
    for (_, var) in m.params.vars() {
        v.extend(
            var.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
    }
    v.extend(
        m.head_tensors
            .iter()
            .flat_map(|(_, t)| t.flatten_all().unwrap().to_vec1::<f32>().unwrap()),
    );
    v
}

/// Issue 23: RTD pre-training of a fresh ELECTRA learns (after a short run the
/// discriminator's held-out accuracy beats calling every token original; λ = 10,000 and 20 %
/// masking here: at this size, with λ = 50 the shared embeddings serve the generator's MLM and
/// the discriminator stays near the baseline for longer than a test should run), logs both
/// losses, resumes to the same discriminator and generator, and writes an
/// `ElectraForPreTraining` folder with an `ElectraForMaskedLM` generator beside it.
#[test]
fn rtd_pretraining_learns_resumes_and_saves_both_models() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_model(&dir.path().join("tok")).replace(
        "[model]\n",
        "objective = \"rtd\"\n[rtd]\ngenerator_size = 0.5\nweight = 10000.0\n[model]\nmodel_type = \"electra\"\n",
    );
    let mut full = config(&dir.path().join("full"), 400, &model);
    full.eval_every = 200;
    // Held-out: the whole corpus (more tokens to compare on than one document).
    full.corpus.dev = vec![corpus().display().to_string()];
    full.mlm.probability = 0.2;
    full.mlm.whole_word = false;
    full.checkpoint_every = 10;
    full.validate().unwrap();
    let r = pretrain(&full, &Device::Cpu, &quiet()).unwrap();
    assert!(r.completed);
    let d = r.dev.unwrap().rtd.expect("held-out RTD figures");
    assert!(
        d.accuracy > d.baseline_accuracy && d.replaced_recall > 0.0,
        "the discriminator should beat all-original: {d:?}"
    );
    eprintln!("held-out RTD after 400 updates: {d:?}");
    let log = std::fs::read_to_string(dir.path().join("full/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for k in ["loss", "mlm_loss", "rtd_loss", "replaced_fraction"] {
        assert!(
            first[k].as_f64().is_some_and(f64::is_finite),
            "{k}: {first}"
        );
    }
    let cfg = std::fs::read_to_string(dir.path().join("full/model/config.json")).unwrap();
    assert!(cfg.contains("ElectraForPreTraining"), "{cfg}");
    let gcfg = std::fs::read_to_string(dir.path().join("full/generator/config.json")).unwrap();
    assert!(gcfg.contains("ElectraForMaskedLM"), "{gcfg}");
    let gen = MaskedLm::load(&dir.path().join("full/generator"), &Device::Cpu).unwrap();
    assert_eq!(
        gen.fill_mask("the jury [MASK] the election.", 3).unwrap()[0].len(),
        3
    );

    // Interrupted after 17 updates (checkpoint at 10), resumed.
    let mut part = full.clone();
    part.output = dir.path().join("part");
    let r1 = pretrain(
        &part,
        &Device::Cpu,
        &PretrainOptions {
            stop_after: Some(17),
            ..quiet()
        },
    )
    .unwrap();
    assert!(!r1.completed);
    assert!(dir
        .path()
        .join("part/checkpoint-last/generator/model.safetensors")
        .is_file());
    let r2 = pretrain(&part, &Device::Cpu, &quiet()).unwrap();
    assert!(r2.completed);
    for sub in ["model", "generator"] {
        assert_eq!(
            all_weights(&dir.path().join("full").join(sub)),
            all_weights(&dir.path().join("part").join(sub)),
            "{sub}: a resumed run must end at the same weights"
        );
    }
}

/// Issue 23: `[probe]` scores a linear classifier on frozen features of a labelled task at
/// every evaluation and at step 0 (the starting model), logs it in metrics.jsonl and draws it
/// in report.html; a bad probe section is a config error naming the key.
#[test]
fn a_downstream_probe_is_logged_and_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let d = fixtures().join("data");
    let mut cfg = config(
        &dir.path().join("run"),
        8,
        &fresh_model(&dir.path().join("tok")),
    );
    cfg.probe = Some(
        toml::from_str(&format!(
            "train = \"{}\"\ndev = \"{}\"\nsteps = 50\nmax_length = 32\n",
            d.join("sentiment.train.jsonl").display(),
            d.join("sentiment.dev.jsonl").display()
        ))
        .unwrap(),
    );
    cfg.validate().unwrap();
    let r = pretrain(&cfg, &Device::Cpu, &quiet()).unwrap();
    let steps: Vec<usize> = r.probe_curve.iter().map(|p| p.0).collect();
    assert_eq!(steps, [0, 4, 8], "{:?}", r.probe_curve);
    assert!(r.probe_curve.iter().all(|p| (0.0..=1.0).contains(&p.1)));
    let log = std::fs::read_to_string(dir.path().join("run/metrics.jsonl")).unwrap();
    let probes: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["split"] == "probe")
        .collect();
    assert_eq!(probes.len(), 3);
    assert!(probes[0]["train_examples"].as_u64().unwrap() > 0);
    assert!(probes[0]["majority_accuracy"].as_f64().is_some());
    let html = std::fs::read_to_string(dir.path().join("run/report.html")).unwrap();
    assert!(html.contains("downstream probe"), "no probe chart");
    // A probe without data, or with a zero budget, is refused naming the key.
    let mut bad = cfg.clone();
    bad.probe.as_mut().unwrap().steps = 0;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("`probe.steps`"), "{e}");
    bad.probe.as_mut().unwrap().steps = 10;
    bad.probe.as_mut().unwrap().dev = None;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("[probe]"), "{e}");
}

/// Issue 23: a labelled set's JSON Lines file as a corpus (`format = "jsonl"`: each record's
/// `text`, labels dropped), `corpus.exclude` keeping the evaluation texts out, a tokenizer
/// trained on the texts rather than the JSON, and a `.jsonl` corpus read in another format
/// refused.
#[test]
fn jsonl_corpora_read_their_texts_and_exclude_evaluation_texts() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.jsonl");
    let mut body = String::new();
    for i in 0..40 {
        body.push_str(&format!(
            "{{\"id\": \"a{i}\", \"text\": \"the jury said the election number {i} was fair\", \"label\": \"positive\"}}\n"
        ));
    }
    body.push_str("{\"id\": \"held\", \"text\": \"a sentence only the test set has\", \"label\": \"negative\"}\n");
    std::fs::write(&train, body).unwrap();
    let test = dir.path().join("test.jsonl");
    std::fs::write(
        &test,
        "{\"text\": \"a sentence only the test set has\", \"label\": \"negative\"}\n",
    )
    .unwrap();
    let text = format!(
        r#"
output = "{out}"
steps = 2
batch_size = 2
[model]
train_tokenizer = {{ kind = "wordpiece", vocab_size = 120, min_frequency = 1 }}
hidden_size = 16
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 32
[corpus]
train = ["{train}"]
exclude = ["{test}"]
format = "jsonl"
max_length = 16
"#,
        out = dir.path().join("run").display(),
        train = train.display(),
        test = test.display(),
    );
    let cfg: PretrainConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    pretrain(&cfg, &Device::Cpu, &quiet()).unwrap();
    let vocab: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("run/tokenizer/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let v = vocab["model"]["vocab"].as_object().unwrap();
    assert!(
        v.contains_key("jury"),
        "the texts' words are in the vocabulary"
    );
    for json_only in ["label", "positive", "id", "\""] {
        assert!(
            !v.contains_key(json_only),
            "`{json_only}` came from the JSON, not the texts"
        );
    }
    // The packed stream leaves the excluded text out.
    let tok = PrismTokenizer::load(&dir.path().join("run/tokenizer"), 16).unwrap();
    let enc = TextEncoder::new(tok.inner()).unwrap();
    let exclude = prism_train::pretrain::corpus::excluded_texts(&[test.clone()]).unwrap();
    let spec = PackSpec {
        files: vec![train.clone()],
        cls_last: false,
        format: DocFormat::Jsonl,
        exclude: std::sync::Arc::new(exclude),
        max_len: 16,
        cls: tok.token_to_id("[CLS]").unwrap(),
        sep: tok.token_to_id("[SEP]").unwrap(),
        shuffle_buffer: 1,
        seed: 0,
    };
    let ids: Vec<u32> = pack_all(&spec, &enc, usize::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.ids)
        .collect();
    // Exactly the 40 kept texts' tokens, besides [CLS] and [SEP].
    let (cls, sep) = (spec.cls, spec.sep);
    let body: usize = ids.iter().filter(|&&i| i != cls && i != sep).count();
    let kept: usize = (0..40)
        .map(|i| {
            enc.encode(&format!("the jury said the election number {i} was fair"))
                .unwrap()
                .0
                .len()
        })
        .sum();
    assert_eq!(
        body, kept,
        "an excluded text was packed, or a kept one lost"
    );
    // The same file read as plain text is refused, naming it.
    let mut raw = cfg.clone();
    raw.corpus.format = DocFormat::File;
    raw.output = dir.path().join("raw");
    let e = pretrain(&raw, &Device::Cpu, &quiet())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.jsonl") && e.contains("format = \"jsonl\""),
        "{e}"
    );
}
