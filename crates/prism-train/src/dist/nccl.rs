//! NCCL for gradients that live on a GPU (cudarc's `nccl` module, through candle-core's
//! `nccl` feature), beside MPI for everything else: rank 0 makes the NCCL unique id, MPI
//! broadcasts it, and each rank joins the communicator on the GPU its local rank picked —
//! NVIDIA's documented pattern ("Example 2: one device per process or thread"). The all-reduce
//! runs on the device's stream, as a candle op (the pattern of candle's multi-process llama).

use super::{Comm, Communicator};
use crate::error::{Error, Result};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm as NcclComm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

pub struct Nccl {
    host: Comm,
    nccl: NcclComm,
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Distributed(format!(
        "NCCL {what}: {e:?} (is libnccl.so on LD_LIBRARY_PATH?)"
    ))
}

impl Nccl {
    pub fn new(host: Comm, device: &Device) -> Result<Self> {
        let dev = device
            .as_cuda_device()
            .map_err(|_| Error::Distributed("NCCL needs a CUDA device (--device cuda)".into()))?;
        // -- the unique id: made on rank 0, broadcast over MPI as its 128 bytes
        let id = if host.is_root() {
            Some(Id::new().map_err(|e| nccl_error("unique id", e))?)
        } else {
            None
        };
        let mut bytes: Vec<u8> = match &id {
            Some(id) => id.internal().iter().map(|&c| c as u8).collect(),
            None => Vec::new(),
        };
        host.broadcast_bytes(&mut bytes, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        if bytes.len() != internal.len() {
            return Err(Error::Distributed(format!(
                "NCCL unique id of {} bytes from rank 0",
                bytes.len()
            )));
        }
        for (d, s) in internal.iter_mut().zip(&bytes) {
            *d = *s as std::ffi::c_char;
        }
        let nccl = NcclComm::from_rank(
            dev.cuda_stream(),
            host.rank(),
            host.world(),
            Id::uninit(internal),
        )
        .map_err(|e| nccl_error("communicator", e))?;
        Ok(Self { host, nccl })
    }
}

/// Sum over ranks of a contiguous f32 tensor on the GPU, into a fresh buffer.
struct AllReduce<'a>(&'a NcclComm);

impl CustomOp1 for AllReduce<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let n = l.shape().elem_count();
        let dev = s.device().clone();
        let src = s.as_cuda_slice::<f32>()?;
        if !matches!(l.contiguous_offsets(), Some((0, end)) if end == n) {
            candle_core::bail!("the NCCL all-reduce takes a contiguous tensor from offset 0");
        }
        // SAFETY: every element of `dst` is written by the all-reduce before it is read.
        let mut dst = unsafe { dev.alloc::<f32>(n) }?;
        self.0
            .all_reduce(src, &mut dst, &ReduceOp::Sum)
            .map_err(candle_core::Error::debug)?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

impl Communicator for Nccl {
    fn rank(&self) -> usize {
        self.host.rank()
    }
    fn world(&self) -> usize {
        self.host.world()
    }
    fn local_rank(&self) -> usize {
        self.host.local_rank()
    }
    fn engine(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.host.all_reduce_f64(buf)
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()> {
        self.host.all_reduce_f32(buf)
    }
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().is_cuda() {
            let mut host = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            self.host.all_reduce_f32(&mut host)?;
            return Ok(Tensor::from_vec(host, t.shape(), t.device())?.to_dtype(t.dtype())?);
        }
        let flat = t.to_dtype(DType::F32)?.flatten_all()?.contiguous()?;
        // A copy that starts at offset 0 (`contiguous` keeps a narrowed view's offset).
        let flat = if flat.layout().start_offset() == 0 {
            flat
        } else {
            flat.copy()?
        };
        let sum = flat.apply_op1_no_bwd(&AllReduce(&self.nccl))?;
        Ok(sum.reshape(t.shape())?.to_dtype(t.dtype())?)
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        self.host.broadcast_bytes(buf, root)
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.host.broadcast_f32(buf, root)
    }
    fn barrier(&self) -> Result<()> {
        self.host.barrier()
    }
    fn abort(&self, code: i32) -> ! {
        self.host.abort(code)
    }
}
