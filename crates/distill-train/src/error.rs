use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Core(#[from] distill_core::CoreError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A `--base` found in no local directory, cache or download.
    #[error(transparent)]
    Base(#[from] crate::encoder::BaseError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model directory that cannot be loaded (missing file, wrong shape, missing tensor).
    #[error("model {path}: {message}")]
    Model { path: PathBuf, message: String },
    /// Training data that cannot be trained on (empty, one class, unknown label).
    #[error("{0}")]
    Data(String),
    #[error(
        "training diverged: loss became {loss} at step {step} (learning rate {}); lower --lr",
        readable_number(*lr)
    )]
    NonFinite { step: usize, lr: f64, loss: f32 },
    #[error("{0}")]
    Other(String),
}

impl TrainError {
    pub fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TrainError::Model {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = TrainError> = std::result::Result<T, E>;

/// `0.02` stays `0.02`, `1e38` stays `1e38`: `{}` would print 39 digits for the latter.
fn readable_number(x: f64) -> String {
    if x != 0.0 && !(1e-4..1e6).contains(&x.abs()) {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}
