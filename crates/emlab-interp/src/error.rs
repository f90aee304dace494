//! One error type for the interpretability stage; every message is one line naming the file,
//! row or tensor at fault.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    /// A file that exists but is malformed (bad JSON row, wrong tensor shape, ...).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// Bad arguments or data that cannot support the analysis (e.g. too few samples).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Model(#[from] emlab_model::Error),
    #[error("sae: {0}")]
    Sae(#[from] emlab_sae::SaeError),
    #[error("adapter: {0}")]
    Train(String),
    #[error("compute: {}", emlab_model::error::first_line(&.0.to_string()))]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        Error::Io { path: path.to_path_buf(), msg: e.to_string() }
    }
    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        Error::Format { path: path.to_path_buf(), msg: msg.into() }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file that looks complete.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(emlab_model::util::write_atomic(path, bytes)?)
}
