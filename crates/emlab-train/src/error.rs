//! One error type for training. Every message is one line naming the file (and line, row or
//! tensor) and the problem, so the CLI can print it as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] emlab_model::Error),
    #[error(transparent)]
    Data(#[from] emlab_data::Error),
    #[error("compute: {}", emlab_model::error::first_line(&.0.to_string()))]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    /// A malformed file (config, adapter, checkpoint).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// Bad settings or arguments.
    #[error("{0}")]
    Invalid(String),
    /// The output folder's checkpoint was made with other settings or data: it cannot be
    /// resumed. A caller that owns the folder may set it aside and start over.
    #[error("{0}")]
    ResumeMismatch(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Error::Io { path: path.into(), msg: emlab_model::error::first_line(&e.to_string()) }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: emlab_model::error::first_line(&msg.into()) }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
