//! One error type for the runtime. Every variant carries the file (or tensor) it is about, so
//! that the CLI can print a single line that says what was wrong and where.

use std::path::PathBuf;

/// Errors from loading, tokenizing, templating and running models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    /// A file that exists but is malformed (truncated, corrupt, wrong format).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// A missing or malformed tensor.
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor { path: PathBuf, tensor: String, msg: String },
    /// Tokenizer problems (missing, mismatched, failed to build).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Chat template problems (missing, failed to compile or render).
    #[error("chat template: {0}")]
    Template(String),
    /// Bad arguments from the caller.
    #[error("{0}")]
    Invalid(String),
    /// An error from candle during compute.
    #[error("compute: {}", first_line(&.0.to_string()))]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The first line of a message: candle appends a backtrace to its errors when RUST_BACKTRACE is
/// set, and our errors promise one line.
pub fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim_end().to_string()
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Error::Io { path: path.into(), msg: first_line(&e.to_string()) }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: first_line(&msg.into()) }
    }
    pub fn tensor(path: impl Into<PathBuf>, tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { path: path.into(), tensor: tensor.into(), msg: first_line(&msg.into()) }
    }
}
