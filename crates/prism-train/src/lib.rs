//! prism-train: data -> trained model. Real data sets from package registries, task kinds with
//! their heads, losses and metrics, AdamW with schedules, and the multi-task trainer with exact
//! resume.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod error;
pub mod experiment;
pub mod loss;
pub mod model;
pub mod optim;
pub mod pretrain;
pub mod report;
pub mod tasks;
pub mod trainer;

pub use error::{Error, Result};
