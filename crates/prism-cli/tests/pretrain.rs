//! `prism tokenizer train`, `prism pretrain` (fresh, with `train_tokenizer`) and `prism
//! fill-mask` end to end on the hand-written corpus, then a fine-tuning run from the pre-trained
//! model and from its re-initialised twin (`reinit = true`).

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
fn tokenizer_pretrain_fill_mask_and_finetune_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = fixtures().join("data/corpus");
    let tok = dir.path().join("tok");
    let (ok, out, err) = prism(&[
        "tokenizer",
        "train",
        "--kind",
        "bpe",
        "--vocab-size",
        "300",
        "--min-frequency",
        "1",
        "--out",
        tok.to_str().unwrap(),
        corpus.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("Bpe tokenizer"), "{out}");
    assert!(tok.join("tokenizer.json").is_file() && tok.join("tokenizer_config.json").is_file());

    let cfg = dir.path().join("pt.toml");
    std::fs::write(
        &cfg,
        format!(
            "output = \"pt\"\nsteps = 6\nbatch_size = 4\nlr = 2e-3\neval_every = 3\n\n[model]\ntrain_tokenizer = {{ kind = \"wordpiece\", vocab_size = 200, min_frequency = 1 }}\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n\n[corpus]\ntrain = [\"{c}\"]\ndev = [\"{c}/doc3.txt\"]\nmax_length = 32\n",
            c = corpus.display()
        ),
    )
    .unwrap();
    let (ok, out, err) = prism(&["pretrain", "--config", cfg.to_str().unwrap(), "--quiet"]);
    assert!(ok, "{err}");
    assert!(out.contains("perplexity"), "{out}");
    let model = dir.path().join("pt/model");
    assert!(dir.path().join("pt/tokenizer/vocab.txt").is_file());
    let (ok, out, err) = prism(&[
        "fill-mask",
        model.to_str().unwrap(),
        "The jury [MASK] the mayor.",
        "--top-k",
        "3",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["masks"][0].as_array().unwrap().len(), 3);
    let (ok, _, err) = prism(&["fill-mask", model.to_str().unwrap(), "No mask."]);
    assert!(!ok && err.contains("[MASK]"), "{err}");

    // Fine-tune the pre-trained model and its randomly initialised twin.
    let d = fixtures().join("data");
    for (name, extra) in [("ft", ""), ("ft_random", "reinit = true\n")] {
        let c = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &c,
            format!(
                "model = \"pt/model\"\noutput = \"{name}\"\nsteps = 3\nbatch_size = 4\n{extra}\n[[task]]\nname = \"sentiment\"\nkind = \"classification\"\ntrain = \"{}\"\ndev = \"{}\"\nmax_length = 32\n",
                d.join("sentiment.train.jsonl").display(),
                d.join("sentiment.dev.jsonl").display()
            ),
        )
        .unwrap();
        let (ok, _, err) = prism(&["train", "--config", c.to_str().unwrap(), "--quiet"]);
        assert!(ok, "{name}: {err}");
    }
    let a = std::fs::read(dir.path().join("ft/model/model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("ft_random/model/model.safetensors")).unwrap();
    assert_ne!(a, b);
}
