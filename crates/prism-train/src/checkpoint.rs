//! The resumable-run plumbing shared by fine-tuning and pre-training: the output folder, the
//! `checkpoint-last/` folder (model, AdamW moments, a JSON state) written to a temporary folder
//! and swapped into place, and reading it back with a check that the config did not change.
//!
//! Every checkpoint proves itself: `manifest.json`, written last, holds the size and SHA-256 of
//! each file; a resume verifies all of them before reading anything, so a damaged, truncated
//! or edited file (a flipped bit in the weights, an edited optimiser step or data cursor) is an
//! error naming the file and what differs, never a silently wrong run.

use crate::error::{Error, Result};
use crate::optim::AdamW;
use crate::train_loop::Moments;
use candle_core::Device;
use prism_model::checkpoint::write_atomic;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};

pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint-last")
}

/// Create `out`; with `restart`, delete what an earlier run left there (`also`: more folders).
pub fn prepare_output(out: &Path, restart: bool, also: &[&str]) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if restart {
        for d in [
            "checkpoint-last",
            "checkpoint-last.old",
            ".checkpoint-tmp",
            "model",
        ]
        .iter()
        .chain(also)
        {
            let _ = std::fs::remove_dir_all(out.join(d));
        }
        let _ = std::fs::remove_file(out.join("metrics.jsonl"));
    }
    Ok(())
}

/// Replace `dst` by the folder `tmp` as atomically as the file system allows: rename the old
/// one aside, rename the new one in, then delete the old one.
pub fn swap_dir(tmp: &Path, dst: &Path) -> Result<()> {
    let old = dst.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(dst, &old).map_err(|e| Error::io(dst, e))?;
    }
    std::fs::rename(tmp, dst).map_err(|e| Error::io(dst, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// The checkpoint to resume from, if any (a crash between the two renames of [`swap_dir`]
/// leaves only the `.old` copy). `state_file` names the run's JSON state.
pub fn find_checkpoint(out: &Path, state_file: &str) -> Option<PathBuf> {
    let dir = checkpoint_dir(out);
    [dir.clone(), dir.with_extension("old")]
        .into_iter()
        .find(|d| d.join(state_file).is_file())
}

/// What a checkpoint folder holds besides the model: the state and the optimiser moments.
pub struct Resumed<S> {
    pub state: S,
    pub moments: Moments,
}

/// The file a checkpoint's checksums are in.
pub const MANIFEST: &str = "manifest.json";

#[derive(Serialize, serde::Deserialize)]
struct Manifest {
    /// File name -> (bytes, lower-case hex SHA-256).
    files: std::collections::BTreeMap<String, (u64, String)>,
}

fn sha256_of(path: &Path) -> Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((n, hex))
}

/// Write `dir/manifest.json` over every file in `dir` and its subfolders (e.g. the RTD
/// generator's), by relative path with `/` separators (written last: its presence means the
/// rest is complete).
pub fn write_manifest(dir: &Path) -> Result<()> {
    fn walk(
        root: &Path,
        dir: &Path,
        files: &mut std::collections::BTreeMap<String, (u64, String)>,
    ) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io(dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if (dir == root && name == MANIFEST) || name.starts_with('.') {
                continue;
            }
            let kind = e.file_type().map_err(|e| Error::io(&p, e))?;
            if kind.is_dir() {
                walk(root, &p, files)?;
            } else if kind.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                files.insert(rel, sha256_of(&p)?);
            } else {
                return Err(Error::File {
                    path: p,
                    msg: "a checkpoint holds files and folders only".into(),
                });
            }
        }
        Ok(())
    }
    let mut files = std::collections::BTreeMap::new();
    walk(dir, dir, &mut files)?;
    write_json(&dir.join(MANIFEST), &Manifest { files })
}

/// Check every file `dir/manifest.json` lists: present, of its size and its SHA-256.
pub fn verify_manifest(dir: &Path) -> Result<()> {
    let mp = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&mp).map_err(|e| Error::File {
        path: mp.clone(),
        msg: format!(
            "cannot read the checkpoint's manifest ({e}): it was written by an older prism or \
             damaged; run with --restart to start over"
        ),
    })?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::File {
        path: mp.clone(),
        msg: format!("corrupt manifest: {e}"),
    })?;
    for (name, (bytes, sum)) in &m.files {
        // Plain names joined by `/` only: no `..`, root, drive or backslash-separated parts.
        let inside = name.split('/').all(|c| {
            let mut parts = Path::new(c).components();
            matches!(parts.next(), Some(std::path::Component::Normal(_)))
                && parts.next().is_none()
                && !c.contains('\\')
        });
        if !inside {
            return Err(Error::File {
                path: mp.clone(),
                msg: format!("lists `{name}`, which is not a path inside the checkpoint"),
            });
        }
        let p = dir.join(name);
        if !p.is_file() {
            return Err(Error::File {
                path: p,
                msg: "listed in the checkpoint's manifest but missing; run with --restart to \
                      start over"
                    .into(),
            });
        }
        let (n, got) = sha256_of(&p)?;
        if n != *bytes {
            return Err(Error::File {
                path: p,
                msg: format!(
                    "is {n} bytes, the checkpoint's manifest says {bytes}: the file was cut or \
                     replaced; run with --restart to start over"
                ),
            });
        }
        if got != *sum {
            return Err(Error::File {
                path: p,
                msg: format!(
                    "its SHA-256 {got} differs from the manifest's {sum}: the file was damaged \
                     or edited since the checkpoint was written; run with --restart to start \
                     over"
                ),
            });
        }
    }
    Ok(())
}

/// Read the state and moments of the checkpoint in `dir`; `same_config` tells whether the
/// config the state was written with is the one given now. (Where the output folder is does
/// not count: a run folder moved to another disk or machine, or copied, resumes.)
pub fn read_checkpoint<S: DeserializeOwned>(
    dir: &Path,
    state_file: &str,
    same_config: impl Fn(&S) -> bool,
) -> Result<Resumed<S>> {
    verify_manifest(dir)?;
    let sp = dir.join(state_file);
    let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
    let state: S = serde_json::from_str(&text).map_err(|e| Error::File {
        path: sp.clone(),
        msg: format!("corrupt run state: {e}"),
    })?;
    if !same_config(&state) {
        return Err(Error::File {
            path: sp,
            msg: "the config changed since this checkpoint was written; run with --restart to start over".into(),
        });
    }
    let op = dir.join("optimizer.safetensors");
    let moments = candle_core::safetensors::load(&op, &Device::Cpu).map_err(|e| Error::File {
        path: op.clone(),
        msg: format!("corrupt optimizer state: {e}"),
    })?;
    Ok(Resumed {
        state,
        moments: Moments {
            tensors: moments,
            path: op,
        },
    })
}

/// A state consistent with its run: no more updates done than the run has, AdamW's step count
/// not beyond them.
pub fn check_progress(
    dir: &Path,
    state_file: &str,
    p: &crate::train_loop::Progress,
    steps: usize,
) -> Result<()> {
    if p.step > steps || p.adam_t > p.step as u64 {
        return Err(Error::File {
            path: dir.join(state_file),
            msg: format!(
                "records update {} (AdamW step {}) of a {steps}-update run: not a state this run \
                 can have written; run with --restart to start over",
                p.step, p.adam_t
            ),
        });
    }
    Ok(())
}

/// Write `checkpoint-last/`: the model (by `save_model` into the folder it is given), the
/// optimiser moments and the state, all into a temporary folder that is then swapped in.
pub fn write_checkpoint<S: Serialize>(
    out: &Path,
    save_model: impl FnOnce(&Path) -> Result<()>,
    opt: &AdamW,
    state_file: &str,
    state: &S,
) -> Result<()> {
    let tmp = out.join(".checkpoint-tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    save_model(&tmp)?;
    let opt_path = tmp.join("optimizer.safetensors");
    candle_core::safetensors::save(&opt.state_tensors()?, &opt_path).map_err(|e| Error::File {
        path: opt_path.clone(),
        msg: e.to_string(),
    })?;
    write_json(&tmp.join(state_file), state)?;
    write_manifest(&tmp)?;
    swap_dir(&tmp, &checkpoint_dir(out))
}

/// Write `value` as pretty JSON to `path` (atomically); a value that does not serialise is an
/// error naming the file, never an empty file.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    Ok(write_atomic(path, text.as_bytes())?)
}
