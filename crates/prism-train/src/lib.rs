//! prism-train: data -> trained model. Real data sets from package registries, training targets,
//! losses and metrics for the task heads of `prism_model::tasks`, AdamW with schedules, and the
//! multi-task trainer and pre-training with exact resume.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod error;
pub mod experiment;
pub mod loss;
pub mod multitask;
pub mod objective;
pub mod optim;
pub mod pretrain;
pub mod report;
pub mod rng;
pub mod tasks;
pub mod train_loop;
pub mod trainer;

pub use error::{Error, Result};
