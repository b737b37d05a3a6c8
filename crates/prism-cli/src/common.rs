//! What several commands share: the device, loading a model by name or path, and the one
//! choice between a frozen f32 model and a bf16 one.

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::ValueEnum;
use prism_model::tasks::MultiTaskModel;
use prism_model::{fetch, PretrainedModel};

#[derive(Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
}

/// The GPU of the rank with this local rank (its rank among the ranks on its host, as
/// `OMPI_COMM_WORLD_LOCAL_RANK`): its own on a node with a GPU per rank, shared round-robin
/// where ranks outnumber GPUs (MPI's all-reduce allows that; NCCL refuses two ranks per GPU).
#[cfg(feature = "cuda")]
fn gpu_ordinal(local_rank: usize) -> candle_core::Result<usize> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    let n = CudaContext::device_count().map_err(candle_core::Error::wrap)?;
    Ok(if n > 0 {
        local_rank % n as usize
    } else {
        local_rank
    })
}

#[cfg(not(feature = "cuda"))]
fn gpu_ordinal(local_rank: usize) -> candle_core::Result<usize> {
    Ok(local_rank)
}

/// The device: the CPU, or the GPU of this rank (see [`gpu_ordinal`]).
pub fn device(d: DeviceArg, local_rank: usize) -> Result<Device> {
    Ok(match d {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => {
            // The CUDA libraries are opened at first use (see vendor/README.md), and the
            // bindings panic when one is missing: report that as an error, not a crash (only
            // where panics unwind; with `panic = "abort"` the panic message is the report).
            const HINT: &str = "CUDA device (build with `--features cuda`: scripts/build-cuda.sh)";
            if cfg!(panic = "abort") {
                return Device::new_cuda(gpu_ordinal(local_rank)?).context(HINT);
            }
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let dev = std::panic::catch_unwind(|| Device::new_cuda(gpu_ordinal(local_rank)?));
            std::panic::set_hook(hook);
            match dev {
                Ok(d) => d.context(HINT)?,
                Err(p) => {
                    let msg = p
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| p.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown cause");
                    bail!("CUDA device: {msg} (the NVIDIA driver and the CUDA 13 libraries must be on the library path)")
                }
            }
        }
    })
}

/// A model folder or registered name, as a bare encoder with its tokenizer.
pub fn load(spec: &str, dev: &Device) -> Result<PretrainedModel> {
    let dir = fetch::resolve_model(spec)?;
    Ok(PretrainedModel::load(&dir, dev)?)
}

/// A model folder or registered name with prism task heads (an error naming the folder when it
/// has none), and the folder it came from.
pub fn load_tasks(spec: &str, dev: &Device) -> Result<(MultiTaskModel, std::path::PathBuf)> {
    let dir = fetch::resolve_model(spec)?;
    let m = MultiTaskModel::load(&dir, dev)?;
    if m.tasks.is_empty() {
        bail!(
            "{}: no task heads: no prism.json, and config.json names no transformers task class \
             (…ForSequenceClassification, …ForTokenClassification, …ForQuestionAnswering); \
             train one with `prism train` (a masked-LM folder predicts with `prism fill-mask`)",
            dir.display()
        );
    }
    Ok((m, dir))
}

/// The copy of `m` that inference and explanations run: frozen (no graph, no weight
/// gradients, weights transposed once), with its linear layers in bf16 on AMX when `bf16` is
/// asked for, and a note where this CPU has no AMX-BF16 and the layers stay f32.
pub fn frozen(m: &MultiTaskModel, bf16: bool) -> Result<MultiTaskModel> {
    if !bf16 {
        return Ok(m.frozen()?);
    }
    if !prism_model::ops::bf16::available() {
        eprintln!("note: no AMX-BF16 on this CPU; running in f32");
    }
    Ok(m.frozen_bf16()?)
}

/// Keep freed tensor buffers in the heap instead of returning them to the kernel: glibc serves
/// allocations above 128 KiB with fresh `mmap`s by default, so every activation and gradient of
/// every step paid page faults and kernel zeroing (measured: 20-25% of an inference pass). With
/// no `mmap` allocations at all (glibc will not raise the threshold above 32 MiB, and a
/// masked-LM's logits over 30,522 tokens are 37.5 MB per step) and a 1 GiB trim threshold, a
/// training loop reuses its own memory.
pub fn tune_runtime() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    // candle's element-wise thread pool spins 25,000 times after each op before parking; its
    // spinning worker then competes with rayon's GEMM threads for the same cores (4-7 % of a
    // mini training step on 2 cores). Park almost at once unless the user chose otherwise.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "64");
    }
}
