//! The evaluation stage's error type: one line that names the file, row or setting at fault.

use std::path::Path;

/// Errors of sampling, judging, logging and reporting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings (flags, config file, intervention spec).
    #[error("{0}")]
    Config(String),
    /// The output log holds answers made with other settings (model, adapter, sampling, prompts):
    /// they cannot be resumed from. A caller that owns the log may set it aside and start over.
    #[error("{0}")]
    LogMismatch(String),
    /// The output log's answers are valid but judged by another judge than the run's:
    /// [`crate::rescore`] judges them again (a caller that owns the log may do so itself).
    #[error("{0}")]
    JudgeMismatch(String),
    /// A file problem, message already names the file (and line).
    #[error("{0}")]
    File(String),
    /// An HTTP server problem that survived the retries.
    #[error("{0}")]
    Http(String),
    /// The run finished but some answers could not be generated or judged; what was done is
    /// in the log and a re-run does the rest ([`crate::RunSummary::complete`]).
    #[error("{0}")]
    Incomplete(String),
    #[error("{0}")]
    Model(#[from] emlab_model::Error),
    #[error("{0}")]
    Data(#[from] emlab_data::Error),
    #[error("adapter: {0}")]
    Adapter(#[from] emlab_train::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        Error::File(format!("{}: {}", path.display(), first_line(&e.to_string())))
    }
    pub fn at(path: &Path, line: usize, msg: impl std::fmt::Display) -> Self {
        Error::File(format!("{}:{line}: {msg}", path.display()))
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Model(emlab_model::Error::Candle(e))
    }
}

/// A TOML error as one line naming file and line: toml's `Display` spans several lines (a source
/// excerpt, then the message), so its first line alone says where but not what.
pub(crate) fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    let line = e.span().map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1);
    let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match line {
        Some(l) => Error::at(path, l, msg),
        None => Error::File(format!("{}: {msg}", path.display())),
    }
}

pub(crate) fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim_end().to_string()
}
