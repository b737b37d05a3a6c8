//! The error type of prism-train: bad data names its file, line and field.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}:{line}: field `{field}`: {msg}")]
    Data {
        path: PathBuf,
        line: usize,
        field: String,
        msg: String,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    /// Training diverged: a loss became NaN or infinite. `step` counts updates from 1, as
    /// metrics.jsonl does.
    #[error(
        "update {step}: the {what} loss is {value}. The weights or the loss overflowed: a learning \
         rate or weight decay too large for this model, or a target out of range (a regression \
         label far from the others); lower `lr` or `weight_decay`, or check the data"
    )]
    NonFiniteLoss {
        step: usize,
        what: String,
        value: f64,
    },
    /// An update computed no gradient (an objective that ran no backward pass).
    #[error("update {step}: no gradient was computed")]
    NoGradient { step: usize },
    /// Ranks of a data-parallel job that cannot go on together (a different config, a
    /// failed engine).
    #[error("distributed: {0}")]
    Distributed(String),
    #[error("fetch {name}: {msg}")]
    Fetch { name: String, msg: String },
    #[error(transparent)]
    Model(#[from] prism_model::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether every rank of a data-parallel job meets this error at the same point (their
    /// agreement checks, a diverged loss seen after the all-reduce), so they can all end
    /// normally; any other error on one rank must end the whole job.
    pub fn is_collective(&self) -> bool {
        matches!(self, Error::Distributed(_) | Error::NonFiniteLoss { .. })
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn data(
        path: impl Into<PathBuf>,
        line: usize,
        field: &str,
        msg: impl Into<String>,
    ) -> Self {
        Error::Data {
            path: path.into(),
            line,
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
