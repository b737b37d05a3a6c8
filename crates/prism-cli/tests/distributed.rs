//! Data-parallel training over MPI: `mpirun -np 2 prism-mpi train|pretrain` against one
//! `prism` process with the same global micro-batches (final weights within 1e-6, the same
//! logged losses), a rank killed with SIGKILL (the job ends non-zero within seconds; the run
//! resumes with 2 ranks and with 1 to the uninterrupted weights), and ranks that disagree (a
//! different config, a `grad_accum` that 2 ranks cannot share) stopped before the first step.
//!
//! `prism-mpi` is prism built with the `distributed` feature; the first test that needs it
//! builds it into this test's own target folder. `.ci/run` installs Open MPI and sets
//! PRISM_REQUIRE_MPI=1, so there these tests cannot skip; elsewhere they skip (saying so) when
//! `mpirun` or MPI's development files are missing. Loopback only, one thread per process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn required() -> bool {
    std::env::var_os("PRISM_REQUIRE_MPI").is_some()
}

fn skip(why: &str) -> Option<PathBuf> {
    if required() {
        panic!("PRISM_REQUIRE_MPI is set: {why}");
    }
    eprintln!("SKIPPED: the MPI tests need Open MPI (apt-get install openmpi-bin libopenmpi-dev libclang-dev): {why}");
    None
}

/// `prism-mpi`, built once per test run beside `prism` (same target folder and profile), or
/// None where MPI is not installed.
fn prism_mpi() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let ok = Command::new("mpirun")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Err("`mpirun --version` does not run".into());
        }
        let prism = PathBuf::from(env!("CARGO_BIN_EXE_prism"));
        let profile_dir = prism.parent().unwrap();
        let target = profile_dir.parent().unwrap();
        let mut c = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        c.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "-p",
            "prism-cli",
            "--features",
            "distributed",
            "--bin",
            "prism-mpi",
            "--target-dir",
        ]);
        c.arg(target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        let out = c.output().map_err(|e| format!("cargo: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`cargo build --features distributed --bin prism-mpi` failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(profile_dir.join("prism-mpi"))
    });
    match built {
        Ok(p) => Some(p.clone()),
        Err(why) => skip(why),
    }
}

/// One MPI job at a time: each takes both cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

const TAG: &str = "PRISM_MPI_TEST_TAG";

/// `mpirun` on loopback only, as root too, one thread per rank; `tag` marks the ranks'
/// environment so that a test can find them.
fn mpirun(tag: &str) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--oversubscribe",
        "--bind-to",
        "none",
        "--mca",
        "btl",
        "self,vader,tcp",
        "--mca",
        "btl_tcp_if_include",
        "lo",
        "--mca",
        "oob_tcp_if_include",
        "lo",
        "-x",
        "RAYON_NUM_THREADS",
        "-x",
        TAG,
    ]);
    env(&mut c, tag);
    c
}

fn env(c: &mut Command, tag: &str) {
    c.env("RAYON_NUM_THREADS", "1")
        .env(TAG, tag)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env(
            "PRISM_HOME",
            std::env::temp_dir().join("prism-cli-test-home"),
        );
}

/// The one-process run, with the same thread count as each rank.
fn prism() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_prism"));
    env(&mut c, "single");
    c
}

fn check(out: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{err}");
    err
}

/// Three tasks (sentiment with DANN on the rating texts, NLI, NER), 2 global micro-batches per
/// update, written as `dir/run.toml` with `output = "run"` (relative: the folder can be copied).
fn fine_tune_config(dir: &Path, steps: usize, lr: &str, grad_accum: usize) -> PathBuf {
    let f = fixtures();
    let d = f.join("data");
    std::fs::create_dir_all(dir).unwrap();
    let text = format!(
        "model = \"{m}\"\noutput = \"run\"\nsteps = {steps}\nbatch_size = 4\ngrad_accum = {grad_accum}\nlr = {lr}\ncheckpoint_every = 10\neval_every = 6\n\n\
         [[task]]\nname = \"sentiment\"\nkind = \"classification\"\ntrain = \"{d}/sentiment.train.jsonl\"\ndev = \"{d}/sentiment.dev.jsonl\"\nmax_length = 32\n\
         [task.dann]\ntarget = \"{d}/rating.train.jsonl\"\n\n\
         [[task]]\nname = \"nli\"\nkind = \"pair_classification\"\ntrain = \"{d}/nli.train.jsonl\"\ndev = \"{d}/nli.dev.jsonl\"\nmax_length = 48\n\n\
         [[task]]\nname = \"ner\"\nkind = \"token\"\ntrain = \"{d}/ner.train.jsonl\"\ndev = \"{d}/ner.dev.jsonl\"\nmax_length = 32\n",
        m = f.join("tiny-bert").display(),
        d = d.display(),
    );
    let p = dir.join("run.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn tensors(run: &Path) -> BTreeMap<String, Vec<f32>> {
    let p = run.join("model/model.safetensors");
    candle_core::safetensors::load(&p, &candle_core::Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .into_iter()
        .map(|(k, t)| {
            let v = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (k, v)
        })
        .collect()
}

/// The largest difference between two runs' final weights (same names, same shapes), and
/// whether the files are byte for byte the same.
fn weight_difference(a: &Path, b: &Path) -> (f32, bool) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    let mut max = 0f32;
    for (k, va) in &ta {
        let vb = &tb[k];
        assert_eq!(va.len(), vb.len(), "{k}");
        for (x, y) in va.iter().zip(vb) {
            max = max.max((x - y).abs());
        }
    }
    let same = std::fs::read(a.join("model/model.safetensors")).unwrap()
        == std::fs::read(b.join("model/model.safetensors")).unwrap();
    (max, same)
}

/// metrics.jsonl without its clock readings.
fn logged(run: &Path) -> Vec<serde_json::Value> {
    let p = run.join("metrics.jsonl");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("elapsed_s");
            o.remove("tokens_per_s");
            v
        })
        .collect()
}

fn assert_same_log(a: &Path, b: &Path) {
    let (la, lb) = (logged(a), logged(b));
    assert_eq!(la.len(), lb.len());
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(
            x.as_object().unwrap().keys().collect::<Vec<_>>(),
            y.as_object().unwrap().keys().collect::<Vec<_>>()
        );
        for (k, vx) in x.as_object().unwrap() {
            let vy = &y[k];
            match (vx.as_f64(), vy.as_f64()) {
                (Some(p), Some(q)) => assert!(
                    (p - q).abs() <= 1e-9 * p.abs().max(1.0),
                    "{k}: {p} vs {q} in\n{x}\n{y}"
                ),
                _ => assert_eq!(vx, vy, "{k}"),
            }
        }
    }
    assert!(la.iter().any(|l| l.get("loss").is_some()));
}

#[test]
fn two_ranks_fine_tune_three_tasks_to_the_one_process_weights() {
    let Some(mpi) = prism_mpi() else { return };
    let _one_job = serial();
    let tmp = tempfile::tempdir().unwrap();
    let one = fine_tune_config(&tmp.path().join("one"), 16, "1e-3", 2);
    let two = fine_tune_config(&tmp.path().join("two"), 16, "1e-3", 2);
    check(
        &prism()
            .args(["train", "--config", one.to_str().unwrap(), "--quiet"])
            .output()
            .unwrap(),
        "prism train",
    );
    check(
        &mpirun("fine-tune")
            .args(["-np", "2"])
            .arg(&mpi)
            .args(["train", "--config", two.to_str().unwrap(), "--quiet"])
            .output()
            .unwrap(),
        "mpirun -np 2 prism-mpi train",
    );
    let (a, b) = (tmp.path().join("one/run"), tmp.path().join("two/run"));
    let (diff, identical) = weight_difference(&a, &b);
    eprintln!("fine-tuning, 1 process vs 2 ranks: largest weight difference {diff:e} (bit-identical: {identical})");
    assert!(diff <= 1e-6, "{diff}");
    assert_same_log(&a, &b);
    // DANN's domain loss and every task were trained and logged.
    let log = logged(&b);
    for task in ["sentiment", "nli", "ner"] {
        assert!(log.iter().any(|l| l["task"] == task), "{task}");
    }
    assert!(log.iter().any(|l| l.get("domain_loss").is_some()));
    // Only rank 0 reported: one report, one log line per (update, task).
    assert!(b.join("report.json").is_file() && b.join("model/prism.json").is_file());
}

/// Gradient surgery across ranks: with `tasks_per_update = 2` and CAGrad, each micro-batch
/// combines its tasks' shared-encoder gradients on the rank that computed them, then the ranks
/// sum, so two ranks take the one process's steps and log its weights, norms and cosines.
#[test]
fn two_ranks_combine_per_task_gradients_as_one_process() {
    let Some(mpi) = prism_mpi() else { return };
    let _one_job = serial();
    let tmp = tempfile::tempdir().unwrap();
    let runs: Vec<PathBuf> = ["one", "two"]
        .iter()
        .map(|n| {
            let p = fine_tune_config(&tmp.path().join(n), 8, "1e-3", 2);
            let mut text = std::fs::read_to_string(&p).unwrap();
            let at = text.find("[[task]]").unwrap();
            text.insert_str(
                at,
                "[multitask]\ntasks_per_update = 2\nweighting = \"cagrad\"\n\n",
            );
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect();
    check(
        &prism()
            .args(["train", "--config", runs[0].to_str().unwrap(), "--quiet"])
            .output()
            .unwrap(),
        "prism train",
    );
    check(
        &mpirun("surgery")
            .args(["-np", "2"])
            .arg(&mpi)
            .args(["train", "--config", runs[1].to_str().unwrap(), "--quiet"])
            .output()
            .unwrap(),
        "mpirun -np 2 prism-mpi train",
    );
    let (a, b) = (tmp.path().join("one/run"), tmp.path().join("two/run"));
    let (diff, identical) = weight_difference(&a, &b);
    eprintln!("CAGrad, 1 process vs 2 ranks: largest weight difference {diff:e} (bit-identical: {identical})");
    assert!(diff <= 1e-6, "{diff}");
    assert_same_log(&a, &b);
    let log = logged(&b);
    assert!(log.iter().any(|l| l.get("gradient_cosine").is_some()));
    assert!(log.iter().any(|l| l.get("task_grad_norm").is_some()));
}

#[test]
fn two_ranks_pretrain_mlm_to_the_one_process_weights() {
    let Some(mpi) = prism_mpi() else { return };
    let _one_job = serial();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = fixtures().join("data/corpus");
    let write = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pt.toml");
        std::fs::write(
            &p,
            format!(
                "output = \"run\"\nsteps = 10\nbatch_size = 4\ngrad_accum = 2\nlr = 2e-3\neval_every = 5\ncheckpoint_every = 4\n\n[model]\ntokenizer = \"{t}\"\nhidden_size = 32\nnum_hidden_layers = 2\nnum_attention_heads = 2\n\n[corpus]\ntrain = [\"{c}\"]\ndev = [\"{c}/doc3.txt\"]\nmax_length = 32\n",
                t = fixtures().join("tiny-bert").display(),
                c = corpus.display()
            ),
        )
        .unwrap();
        p
    };
    let (one, two) = (write("one"), write("two"));
    check(
        &prism()
            .args(["pretrain", "--config", one.to_str().unwrap(), "--quiet"])
            .output()
            .unwrap(),
        "prism pretrain",
    );
    check(
        &mpirun("pretrain")
            .args(["-np", "2"])
            .arg(&mpi)
            .args(["pretrain", "--config", two.to_str().unwrap(), "--quiet"])
            .output()
            .unwrap(),
        "mpirun -np 2 prism-mpi pretrain",
    );
    let (a, b) = (tmp.path().join("one/run"), tmp.path().join("two/run"));
    let (diff, identical) = weight_difference(&a, &b);
    eprintln!("MLM pre-training, 1 process vs 2 ranks: largest weight difference {diff:e} (bit-identical: {identical})");
    assert!(diff <= 1e-6, "{diff}");
    assert_same_log(&a, &b);
    // The masked-token count is global: each update's tokens add up over both ranks' halves.
    let log = logged(&b);
    assert!(log.iter().any(|l| l["tokens"].as_u64().unwrap_or(0) > 0));
}

/// The process ids of rank `rank` of the job whose environment holds `tag`.
fn rank_pids(tag: &str, rank: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(environ) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |v: String| vars.iter().any(|x| *x == v.as_bytes());
        if has(format!("{TAG}={tag}")) && has(format!("OMPI_COMM_WORLD_RANK={rank}")) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_with_two_ranks_or_one() {
    let Some(mpi) = prism_mpi() else { return };
    let _one_job = serial();
    let tmp = tempfile::tempdir().unwrap();
    let steps = 600;
    let full = fine_tune_config(&tmp.path().join("full"), steps, "1e-3", 2);
    check(
        &prism()
            .args(["train", "--config", full.to_str().unwrap(), "--quiet"])
            .output()
            .unwrap(),
        "the uninterrupted run",
    );

    let tag = format!("kill-{}", std::process::id());
    let two = fine_tune_config(&tmp.path().join("two"), steps, "1e-3", 2);
    let mut job = mpirun(&tag)
        .args(["-np", "2"])
        .arg(&mpi)
        .args(["train", "--config", two.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let state = tmp
        .path()
        .join("two/run/checkpoint-last/trainer_state.json");
    let t0 = Instant::now();
    let mut killed = None;
    while t0.elapsed() < Duration::from_secs(120) && killed.is_none() {
        let step = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["step"].as_u64())
            .unwrap_or(0);
        if step >= 20 {
            for pid in rank_pids(&tag, 1) {
                // SAFETY: kill(2) on a process of this test's own job.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                killed = Some((step, Instant::now()));
            }
        }
        if job.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let (killed_at, when) = killed.expect("the job finished before rank 1 could be killed");
    assert!((killed_at as usize) < steps);
    // The job must end by itself: no rank waits forever for the dead one.
    let mut status = None;
    while when.elapsed() < Duration::from_secs(30) {
        if let Some(s) = job.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(status) = status else {
        let _ = job.kill();
        panic!("the job still ran 30 s after rank 1 was killed");
    };
    let ended_after = when.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("rank 1") && err.contains("signal 9"),
        "the message names the dead rank:\n{err}"
    );
    eprintln!(
        "rank 1 killed at step {killed_at}: the job ended {:.1} s later",
        ended_after.as_secs_f64()
    );
    assert!(ended_after < Duration::from_secs(20));

    // The same checkpoint resumes with 2 ranks and, copied, with 1 process.
    let one = tmp.path().join("one");
    copy_dir(&tmp.path().join("two"), &one);
    let err = check(
        &mpirun(&tag)
            .args(["-np", "2"])
            .arg(&mpi)
            .args(["train", "--config", two.to_str().unwrap(), "--quiet"])
            .output()
            .unwrap(),
        "the resumed 2-rank run",
    );
    assert!(err.contains("resuming from step"), "{err}");
    let err = check(
        &prism()
            .args([
                "train",
                "--config",
                one.join("run.toml").to_str().unwrap(),
                "--quiet",
            ])
            .output()
            .unwrap(),
        "the resumed 1-process run",
    );
    assert!(err.contains("resuming from step"), "{err}");
    for resumed in ["two", "one"] {
        let (diff, identical) = weight_difference(
            &tmp.path().join("full/run"),
            &tmp.path().join(resumed).join("run"),
        );
        eprintln!("resumed with {resumed} vs uninterrupted: largest weight difference {diff:e} (bit-identical: {identical})");
        assert!(diff <= 1e-6, "{resumed}: {diff}");
    }
    assert_same_log(&tmp.path().join("full/run"), &tmp.path().join("two/run"));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn ranks_that_disagree_stop_before_the_first_step() {
    let Some(mpi) = prism_mpi() else { return };
    let _one_job = serial();
    let tmp = tempfile::tempdir().unwrap();
    // Rank 1 runs a config with another learning rate, in the same folder (MPMD launch).
    let a = fine_tune_config(&tmp.path().join("job"), 8, "1e-3", 2);
    let b = tmp.path().join("job/other.toml");
    std::fs::write(
        &b,
        std::fs::read_to_string(&a)
            .unwrap()
            .replace("lr = 1e-3", "lr = 2e-3"),
    )
    .unwrap();
    let out = mpirun("mismatch")
        .args(["-np", "1"])
        .arg(&mpi)
        .args([
            "train",
            "--config",
            a.to_str().unwrap(),
            "--quiet",
            ":",
            "-np",
            "1",
        ])
        .arg(&mpi)
        .args(["train", "--config", b.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("ranks disagree with rank 0 on: the config (rank 1)"),
        "{err}"
    );
    let run = tmp.path().join("job/run");
    assert!(!run.join("metrics.jsonl").exists() && !run.join("checkpoint-last").exists());

    // 3 micro-batches per update cannot be shared by 2 ranks.
    let c = fine_tune_config(&tmp.path().join("odd"), 8, "1e-3", 3);
    let out = mpirun("odd")
        .args(["-np", "2"])
        .arg(&mpi)
        .args(["train", "--config", c.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("grad_accum") && err.contains("multiple of"),
        "{err}"
    );
    assert!(!tmp.path().join("odd/run/metrics.jsonl").exists());
}
