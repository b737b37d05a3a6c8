//! prism-train's integration tests, one binary (each file below is a module).

mod examples;
mod families;
mod fuzz;
mod multi_label;
mod pretrain;
mod trainer;
mod windows;
mod xlnet;
