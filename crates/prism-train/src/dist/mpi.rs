//! MPI through rsmpi (the `mpi` crate) on the system's Open MPI or MPICH: `MPI_Allreduce`,
//! `MPI_Bcast` and `MPI_Barrier` on `MPI_COMM_WORLD`. MPI's default error handler is fatal, so
//! a rank that dies ends the whole job (mpirun reports which one) instead of leaving the others
//! blocked in a collective.

use super::Communicator;
use crate::error::{Error, Result};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};
use mpi::Threading;

/// MPI counts are C ints: large buffers move in pieces of at most this many elements.
const MAX_COUNT: usize = 1 << 30;

pub struct Mpi {
    world: SimpleCommunicator,
    local_rank: usize,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

impl Mpi {
    /// `MPI_Init_thread` with `MPI_THREAD_FUNNELED`: the compute kernels run thread pools, but
    /// only the thread that drives the training loop calls MPI.
    pub fn init() -> Result<Self> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Distributed("MPI was already initialised".into()))?;
        let world = universe.world();
        // The ranks that share this host's memory: their order picks each one's GPU.
        let local_rank = world.split_shared(world.rank()).rank() as usize;
        Ok(Self {
            world,
            local_rank,
            _universe: universe,
        })
    }
}

impl Communicator for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn world(&self) -> usize {
        self.world.size() as usize
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn engine(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        for chunk in buf.chunks_mut(MAX_COUNT) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()> {
        for chunk in buf.chunks_mut(MAX_COUNT) {
            let send = chunk.to_vec();
            self.world
                .all_reduce_into(&send[..], chunk, SystemOperation::sum());
        }
        Ok(())
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>, root: usize) -> Result<()> {
        let root = self.world.process_at_rank(root as i32);
        let mut len = buf.len() as u64;
        root.broadcast_into(&mut len);
        buf.resize(len as usize, 0);
        for chunk in buf.chunks_mut(MAX_COUNT) {
            root.broadcast_into(chunk);
        }
        Ok(())
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        let root = self.world.process_at_rank(root as i32);
        for chunk in buf.chunks_mut(MAX_COUNT) {
            root.broadcast_into(chunk);
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
