//! prism-explain's integration tests, one binary (each file below is a module).

mod captum;
mod families;
mod transformers_models;
mod windows;
