use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the simulated teacher could not start. Each message names the file, line and field
/// (or the flag) to fix, because the user fixes their gold file or flags from it.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Core(#[from] distill_core::CoreError),
    #[error("{path}:{line}: field `{field}`: {message}")]
    Gold {
        path: PathBuf,
        line: u64,
        field: String,
        message: String,
    },
    #[error("invalid setting `{setting}`: {message}")]
    Config {
        setting: &'static str,
        message: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer for `{model}`: {message}")]
    Tokenizer { model: String, message: String },
    #[error("sim-teacher runtime: {0}")]
    Runtime(String),
}

pub type Result<T, E = SimError> = std::result::Result<T, E>;
