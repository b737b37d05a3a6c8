//! prism-train: data -> trained model. Real data sets from package registries, task kinds with
//! their heads, losses and metrics, AdamW with schedules, and the multi-task trainer with exact
//! resume.

pub mod data;
pub mod error;
pub mod optim;
pub mod tasks;

pub use error::{Error, Result};
