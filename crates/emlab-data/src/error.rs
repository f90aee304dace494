//! Error type shared by the data modules. Every message is one line that names the file
//! (and line, where there is one) and the problem.

use std::fmt;
use std::path::PathBuf;

/// One problem with one row of a JSONL file, shown as `file:line: problem`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowError {
    pub file: String,
    /// 1-based line number in the file.
    pub line: usize,
    pub problem: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.problem)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A JSONL file with bad rows, loaded without `skip_bad_rows`. `errors` holds every bad
    /// row (the message shows the first); a CLI prints them all with [`Error::row_errors`].
    #[error("{file}: {} bad row(s), file refused (skip them with the skip-bad-rows option); first: {}", errors.len(), errors[0])]
    BadRows { file: String, errors: Vec<RowError> },
    /// A YAML or schema problem, already formatted as `file[:line[:col]]: problem`.
    #[error("{0}")]
    Yaml(String),
    /// A bad argument (e.g. a held-out fraction outside [0, 1)).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// All row errors of a [`Error::BadRows`], empty for other kinds.
    pub fn row_errors(&self) -> &[RowError] {
        match self {
            Error::BadRows { errors, .. } => errors,
            _ => &[],
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
