//! The error type of prism-model: every variant names the file, tensor or field at fault.

use std::path::PathBuf;

/// Everything that can go wrong loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid config: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error("{path}: missing weight `{name}` (expected shape {expected:?})")]
    MissingWeight {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },
    #[error("{path}: unexpected weight `{name}` with shape {shape:?} (no such parameter in a {model} model)")]
    UnexpectedWeight {
        path: PathBuf,
        name: String,
        shape: Vec<usize>,
        model: String,
    },
    #[error("{path}: weight `{name}` has shape {found:?} but the config needs {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: corrupt or unreadable checkpoint: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Encode(String),
    #[error("{0}")]
    Input(String),
    #[error("{path}:{line}: field `{field}`: {msg}")]
    Data {
        path: PathBuf,
        line: usize,
        field: String,
        msg: String,
    },
    #[error("fetch {name}: {msg}")]
    Fetch { name: String, msg: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
