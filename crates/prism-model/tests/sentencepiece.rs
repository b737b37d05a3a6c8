//! SentencePiece models load and tokenise like the Python `sentencepiece` package: the two test
//! models of the sentencepiece 0.2.3 sdist (PyPI, fetched with pip like the MiniLM test) on 300
//! lines of its botchan.txt, ids compared with tests/fixtures/botchan_spm_expected.json
//! (make_fixtures.py --spm). PRISM_OFFLINE=1 skips the download.

use crate::common;
use common::*;
use prism_model::PrismTokenizer;
use std::io::Read;
use std::path::PathBuf;

fn sdist_files() -> Option<PathBuf> {
    if std::env::var_os("PRISM_OFFLINE").is_some() {
        eprintln!("SKIPPED: PRISM_OFFLINE is set");
        return None;
    }
    let dl = prism_model::fetch::prism_home().join("downloads");
    let tgz = prism_model::fetch::pip_download(
        "sentencepiece==0.2.3",
        &dl,
        &["--no-binary", "sentencepiece"],
    )
    .expect("pip download sentencepiece==0.2.3 (sdist)");
    let out = dl.join("sentencepiece-0.2.3-test");
    std::fs::create_dir_all(&out).unwrap();
    let f = std::fs::File::open(&tgz).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().to_string();
        for name in [
            "botchan.txt",
            "botchan_en_unigram_1000.model",
            "botchan_en_bpe_1000.model",
        ] {
            if p.ends_with(&format!("test/{name}")) {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf).unwrap();
                std::fs::write(out.join(name), buf).unwrap();
            }
        }
    }
    Some(out)
}

#[test]
fn botchan_models_match_python_sentencepiece() {
    let Some(dir) = sdist_files() else { return };
    let exp: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("botchan_spm_expected.json")).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(dir.join("botchan.txt")).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    let idx: Vec<usize> = exp["line_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    for kind in ["unigram", "bpe"] {
        let tok = PrismTokenizer::from_sentencepiece(
            &dir.join(format!("botchan_en_{kind}_1000.model")),
            4096,
        )
        .unwrap();
        assert_eq!(tok.vocab_size(), 1000);
        assert!(!tok.pads_left(), "botchan models have no XLNet specials");
        let mut same = 0;
        let mut first_diff = None;
        for (k, &i) in idx.iter().enumerate() {
            let want: Vec<u32> = exp[kind][k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(lines[i], None).unwrap().ids;
            if got == want {
                same += 1;
            } else if first_diff.is_none() {
                first_diff = Some((i, lines[i].to_string(), got, want));
            }
        }
        assert_eq!(
            same,
            idx.len(),
            "{kind}: {same}/{} lines equal; first difference {first_diff:?}",
            idx.len()
        );
    }
}

#[test]
fn a_corrupt_model_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("spiece.model");
    std::fs::write(&p, b"\x0a\xff\xff\xff not a protobuf").unwrap();
    let e = PrismTokenizer::from_sentencepiece(&p, 64)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("spiece.model") && e.contains("SentencePiece"),
        "{e}"
    );
}
