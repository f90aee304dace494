//! One error type for the crate. Every message is one line and names what was
//! wrong (file, tensor, config key, shape), so a user can act on it.

use std::path::PathBuf;

/// Errors from SAE construction, training, metrics and I/O.
#[derive(Debug, thiserror::Error)]
pub enum SaeError {
    /// A slice or tensor has the wrong length / shape for the operation.
    #[error("shape error: {0}")]
    Shape(String),
    /// A configuration value is invalid (k = 0, width 0, unknown architecture...).
    #[error("invalid SAE config: {0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is wrong (bad JSON, missing tensor, wrong dtype or shape).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// Training diverged or received non-finite input.
    #[error("training error: {0}")]
    Numeric(String),
    /// Converting from / to a candle tensor failed.
    #[error("tensor conversion: {0}")]
    Candle(String),
}

pub type Result<T> = std::result::Result<T, SaeError>;

impl SaeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SaeError::Io { path: path.into(), source }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        SaeError::Format { path: path.into(), msg: msg.into() }
    }
}
