//! `prism-mpi`: `prism` linked with MPI (feature `distributed`), for `mpirun -np N prism-mpi
//! train|pretrain ...`. The same program as `prism`; see the library's documentation.

fn main() -> std::process::ExitCode {
    prism_cli::main()
}
