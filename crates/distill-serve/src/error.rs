use std::path::PathBuf;

/// Errors from setting a server up (bad flags, unreadable files). Request-time failures never
/// surface as these: they become OpenAI-shaped HTTP errors or degraded answers.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Core(#[from] distill_core::CoreError),
    #[error(transparent)]
    Train(#[from] distill_train::TrainError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A flag or config file that cannot be used; `what` names the flag or file and field.
    #[error("{what}: {message}")]
    Config { what: String, message: String },
    #[error("shadow store {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl ServeError {
    pub fn config(what: impl Into<String>, message: impl Into<String>) -> Self {
        ServeError::Config {
            what: what.into(),
            message: message.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ServeError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ServeError> = std::result::Result<T, E>;
