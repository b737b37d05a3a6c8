//! prism-cli's integration tests, one binary (each file below is a module).

mod cli;
mod distributed;
mod explain;
mod pretrain;
mod targets;
mod train;
