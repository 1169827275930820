//! distill-train: the students. Three kinds, one [`Student`] trait, one model-directory format
//! (Hugging Face layout plus `distill.json`), so eval and serve never care which kind they load.
//!
//! - `linear`: hashed word/char n-grams into multinomial logistic regression.
//! - `encoder-head`: a frozen BERT-family sentence encoder with a small head.
//! - `encoder-finetune`: the whole encoder fine-tuned (our own differentiable BERT).

pub mod alloc;
pub mod device;
pub mod encoder;
pub mod ensemble;
pub mod error;
pub mod linear;
pub mod objective;
pub mod predict;
pub mod quantize;
pub mod route;
pub mod student;
pub mod tagging;
pub mod train;

/// The device students run on, so callers need not depend on candle themselves.
pub use candle_core::Device;
pub use device::select_device;
pub use error::{Result, TrainError};
pub use student::{
    load_student, model_fingerprint, write_model_dir, ModelMeta, Prediction, Student, StudentKind,
    TrainData, TrainOptions,
};
