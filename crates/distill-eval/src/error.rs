use std::path::PathBuf;

/// Eval errors. Bad input names the file (and line and field where there is one) and says
/// what to do, because an eval that quietly reports a wrong number is worse than none.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Core(#[from] distill_core::CoreError),
    #[error(transparent)]
    Train(#[from] distill_train::TrainError),
    /// A student trained on a different label set than the task's.
    #[error("model {model}: its labels differ from the task's ({detail}); was it trained for this task?")]
    LabelMismatch { model: PathBuf, detail: String },
    /// An invalid option or setting (a zero price, a bad fraction).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
