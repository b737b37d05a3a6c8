//! prism-serve's integration tests, one binary (each file below is a module).

mod common;
mod api;
mod browser;
