//! Every committed example config (training and pre-training) parses and validates (no
//! training, no download).

use prism_train::config::TrainConfig;
use prism_train::pretrain::PretrainConfig;
use std::path::{Path, PathBuf};

fn configs(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            configs(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

#[test]
fn example_configs_are_valid() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files = Vec::new();
    configs(&root, &mut files);
    assert!(files.len() >= 20, "{files:?}");
    let mut pretrain = 0;
    for f in files {
        if std::fs::read_to_string(&f).unwrap().contains("\n[corpus]") {
            PretrainConfig::from_file(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            pretrain += 1;
            continue;
        }
        let cfg = TrainConfig::from_file(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!cfg.tasks.is_empty());
    }
    assert!(pretrain >= 2);
}
