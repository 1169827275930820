use std::path::PathBuf;

/// Errors from reading and validating distill's files. Every variant names the file and,
/// where there is one, the line and field, because users fix their data from this message.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: field `{field}`: {message}")]
    Spec {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{path}:{line}: field `{field}`: {message}")]
    Data {
        path: PathBuf,
        line: u64,
        field: String,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("ledger {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl CoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CoreError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn spec(path: impl Into<PathBuf>, field: &str, message: impl Into<String>) -> Self {
        CoreError::Spec {
            path: path.into(),
            field: field.to_string(),
            message: message.into(),
        }
    }
    pub fn data(
        path: impl Into<PathBuf>,
        line: u64,
        field: &str,
        message: impl Into<String>,
    ) -> Self {
        CoreError::Data {
            path: path.into(),
            line,
            field: field.to_string(),
            message: message.into(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        CoreError::File {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
