//! Data parallelism on an existing engine, as PyTorch's DDP runs on NCCL or MPI: one small
//! [`Communicator`] trait (rank, world size, all-reduce sum, broadcast, barrier) with a
//! single-process implementation that does nothing, MPI (cargo feature `distributed`, rsmpi
//! over the system's OpenMPI) and NCCL for tensors on GPUs (feature `nccl`). The training loop
//! calls it at one point per update ([`all_reduce_grads`]); everything else a rank does is what
//! one process does, so W ranks end at the weights one process reaches.

#[cfg(feature = "distributed")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::rc::Rc;

/// What the loop needs from a communication engine. Every call is collective: all ranks make
/// it, in the same order.
pub trait Communicator {
    /// This process's rank, 0..world.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// Rank among the processes on this host (picks the GPU).
    fn local_rank(&self) -> usize;
    /// The engine's name, for messages (`single`, `mpi`, `nccl`).
    fn engine(&self) -> &'static str;
    /// Sum `buf` element-wise over ranks, in place.
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// Sum `buf` element-wise over ranks, in place.
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()>;
    /// Sum a tensor over ranks. The default goes through host memory; an engine that reduces
    /// on the tensor's device (NCCL) overrides it.
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if self.world() == 1 {
            return Ok(t.clone());
        }
        let mut host = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.all_reduce_f32(&mut host)?;
        Ok(Tensor::from_vec(host, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
    /// Replace `buf` on every rank by `root`'s (lengths may differ before the call).
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()>;
    /// Replace `buf` on every rank by `root`'s (the same length everywhere).
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;
    fn barrier(&self) -> Result<()>;
    /// End every rank of the job now (after an error on this one, so the others do not wait
    /// for it forever).
    fn abort(&self, code: i32) -> !;
}

/// The single process: world 1, every collective is a no-op.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn engine(&self) -> &'static str {
        "single"
    }
    fn all_reduce_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_f32(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bytes(&self, _: &mut Vec<u8>, _: usize) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _: &mut [f32], _: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A shared handle on the job's communicator (a single process by default). MPI handles are
/// not thread-safe, so neither is this: collectives run on the thread that drives the loop.
#[derive(Clone)]
pub struct Comm(Rc<dyn Communicator>);

impl Default for Comm {
    fn default() -> Self {
        Comm(Rc::new(Single))
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Comm({}, rank {} of {})",
            self.engine(),
            self.rank(),
            self.world()
        )
    }
}

impl std::ops::Deref for Comm {
    type Target = dyn Communicator;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Comm {
    pub fn new(c: impl Communicator + 'static) -> Self {
        Comm(Rc::new(c))
    }

    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Rank 0's `flag`, on every rank.
    pub fn broadcast_flag(&self, flag: bool) -> Result<bool> {
        if self.world() == 1 {
            return Ok(flag);
        }
        let mut b = vec![flag as u8];
        self.broadcast_bytes(&mut b, 0)?;
        Ok(b.first() == Some(&1))
    }
}

/// The environment variables by which MPI launchers (mpirun/mpiexec of Open MPI, MPICH, and
/// srun with PMI or PMIx) tell a process it is one rank of a job, and the world size if given.
fn launched_world() -> Option<usize> {
    for var in [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "MPI_LOCALNRANKS",
    ] {
        if let Some(n) = std::env::var(var).ok().and_then(|v| v.parse().ok()) {
            return Some(n);
        }
    }
    ["PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
        .then_some(0)
}

/// The job's communicator: MPI when the process was started by an MPI launcher and prism was
/// built with `distributed`, else the single process. A launcher's world of several ranks with
/// a build that has no MPI is an error: each rank would train alone and overwrite the others.
pub fn init() -> Result<Comm> {
    let launched = launched_world();
    #[cfg(feature = "distributed")]
    if launched.is_some() {
        return Ok(Comm::new(mpi::Mpi::init()?));
    }
    if launched.is_some_and(|n| n > 1) {
        return Err(Error::Distributed(
            "started by an MPI launcher with several ranks, but this prism was built without \
             MPI: build it with `cargo build --release -p prism-cli --features distributed`"
                .into(),
        ));
    }
    Ok(Comm::default())
}

/// The NCCL communicator beside `comm` for gradients on `device` (a CUDA device): the unique id
/// is made on rank 0 and broadcast over MPI, as NVIDIA's documentation does it.
#[cfg(feature = "nccl")]
pub fn with_nccl(comm: Comm, device: &candle_core::Device) -> Result<Comm> {
    Ok(Comm::new(nccl::Nccl::new(comm, device)?))
}

/// Bytes per gradient bucket, as DDP's default `bucket_cap_mb = 25`.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Sum the gradients of `params` over ranks, in place in `grads`. Parameters are packed in
/// their fixed order into flat buckets of about [`BUCKET_BYTES`]; one that has no gradient on
/// this rank adds zeros. `present` holds, per parameter, how many ranks had a gradient (already
/// summed over ranks): a parameter gets a gradient iff some rank had one, as on one process,
/// where a task head that no micro-batch of the update sampled is not stepped.
pub fn all_reduce_grads(
    comm: &Comm,
    params: &[(String, Var)],
    grads: &mut GradStore,
    present: &[f64],
) -> Result<()> {
    // One process has nothing to sum; a job of one MPI rank still goes through its engine
    // (NCCL's world-size-1 smoke run in bench/gpu-check.sh relies on it).
    if comm.engine() == "single" {
        return Ok(());
    }
    let cap = BUCKET_BYTES / 4;
    let mut start = 0;
    while start < params.len() {
        // -- one bucket: parameters start..end, at least one of them
        let mut end = start;
        let mut elems = 0;
        while end < params.len() && (end == start || elems + params[end].1.elem_count() <= cap) {
            elems += params[end].1.elem_count();
            end += 1;
        }
        let parts = params[start..end]
            .iter()
            .map(|(_, v)| {
                let t = v.as_tensor();
                Ok(match grads.get(t) {
                    Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
                    None => Tensor::zeros(t.elem_count(), DType::F32, t.device())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let flat = Tensor::cat(&parts, 0)?;
        drop(parts);
        let summed = comm.all_reduce_tensor(&flat)?;
        let mut at = 0;
        for (i, (_, v)) in params.iter().enumerate().take(end).skip(start) {
            let t = v.as_tensor();
            let n = t.elem_count();
            if present[i] > 0.0 {
                let g = summed
                    .narrow(0, at, n)?
                    .reshape(t.shape())?
                    .to_dtype(t.dtype())?;
                grads.insert(t, g.contiguous()?);
            } else {
                grads.remove(t);
            }
            at += n;
        }
        start = end;
    }
    Ok(())
}

/// Which parameters have a gradient on this rank (1) and which not (0), in `params` order.
pub fn presence(params: &[(String, Var)], grads: &GradStore) -> Vec<f64> {
    params
        .iter()
        .map(|(_, v)| grads.get(v.as_tensor()).is_some() as u8 as f64)
        .collect()
}

/// A SHA-256 fingerprint, as hex.
#[derive(Default)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }
    /// The bytes of a file (streamed, so a corpus of any size fits).
    pub fn file(&mut self, path: &Path) -> Result<&mut Self> {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            self.0.update(&buf[..n]);
        }
        Ok(self)
    }
    pub fn finish(&mut self) -> String {
        let d = std::mem::take(&mut self.0).finalize();
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Formatted text streams into the hash (no string of the whole is built).
impl std::fmt::Write for Fingerprint {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// The fingerprint of the running executable and its version: ranks must run the same build.
pub fn binary_fingerprint() -> Result<String> {
    let mut f = Fingerprint::new();
    f.bytes(env!("CARGO_PKG_VERSION").as_bytes());
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    f.file(&exe)?;
    Ok(f.finish())
}

/// The fingerprint of the parameters' values (a checksum of every weight, in order).
pub fn params_fingerprint(params: &[(String, Var)]) -> Result<String> {
    let mut f = Fingerprint::new();
    for (name, v) in params {
        f.bytes(name.as_bytes());
        let vals = v
            .as_tensor()
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        let bytes: Vec<u8> = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        f.bytes(&bytes);
    }
    Ok(f.finish())
}

/// Check that every rank has the same value of each named item (rank 0's is the reference);
/// every rank returns the same error, naming the items and ranks that differ, so none is left
/// waiting in a later collective.
pub fn agree(comm: &Comm, items: &[(&str, String)]) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let (w, r) = (comm.world(), comm.rank());
    let mut differ = vec![0f64; items.len() * w];
    for (i, (_, value)) in items.iter().enumerate() {
        let mut b = value.as_bytes().to_vec();
        comm.broadcast_bytes(&mut b, 0)?;
        if b != value.as_bytes() {
            differ[i * w + r] = 1.0;
        }
    }
    comm.all_reduce_f64(&mut differ)?;
    let bad: Vec<String> = items
        .iter()
        .enumerate()
        .filter_map(|(i, (name, _))| {
            let ranks: Vec<String> = (0..w)
                .filter(|&k| differ[i * w + k] > 0.0)
                .map(|k| k.to_string())
                .collect();
            (!ranks.is_empty()).then(|| format!("{name} (rank {})", ranks.join(", ")))
        })
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::Distributed(format!(
        "ranks disagree with rank 0 on: {}; every rank must run the same binary with the same \
         config, data and output folder",
        bad.join("; ")
    )))
}

/// `grad_accum` counts global micro-batches: each of the `world` ranks takes every
/// `world`-th, so it must be a multiple.
pub fn check_accumulation(grad_accum: usize, world: usize) -> Result<()> {
    if grad_accum == 0 || grad_accum % world != 0 {
        return Err(Error::Distributed(format!(
            "grad_accum = {grad_accum} must be a multiple of the {world} ranks (it counts the \
             micro-batches of one update over all ranks; rank r takes micro-batches r, r + {world}, ...)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulation_must_divide_among_ranks() {
        assert!(check_accumulation(4, 2).is_ok());
        assert!(check_accumulation(4, 1).is_ok());
        let e = check_accumulation(3, 2).unwrap_err().to_string();
        assert!(
            e.contains("grad_accum = 3") && e.contains("multiple of the 2 ranks"),
            "{e}"
        );
    }

    #[test]
    fn single_process_is_world_one_and_reduces_nothing() {
        let c = Comm::default();
        assert_eq!((c.rank(), c.world(), c.engine()), (0, 1, "single"));
        let mut v = vec![1.0f64, 2.0];
        c.all_reduce_f64(&mut v).unwrap();
        assert_eq!(v, [1.0, 2.0]);
        assert!(c.broadcast_flag(true).unwrap());
        assert!(agree(&c, &[("config", "a".into())]).is_ok());
    }

    #[test]
    fn fingerprints_tell_contents_apart() {
        let a = Fingerprint::new().bytes(b"ab").bytes(b"c").finish();
        let b = Fingerprint::new().bytes(b"a").bytes(b"bc").finish();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
