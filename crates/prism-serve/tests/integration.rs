//! prism-serve's integration tests, one binary (each file below is a module).

mod api;
mod browser;
mod common;
mod fuzz;
