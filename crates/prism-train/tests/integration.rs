//! prism-train's integration tests, one binary (each file below is a module).

mod examples;
mod pretrain;
mod trainer;
mod xlnet;
