//! BERT-family students: `encoder-head` (frozen encoder + head) and `encoder-finetune` (the
//! whole encoder trained). They share base-model resolution, tokenisation and our own
//! differentiable BERT ([`bert`]), so both load the same Hugging Face checkpoints.

pub mod base;
pub mod bert;
pub mod embed;
pub mod embed_cache;
pub mod finetune;
pub mod head;
pub mod hub;
pub mod int8;
pub mod tokenize;
pub mod weights;

use crate::error::{Result, TrainError};
use crate::student::{ModelMeta, Student, StudentKind, TrainData, TrainOptions};
use candle_core::Device;
use std::path::Path;

pub use base::{
    resolve_base, BaseError, BaseModel, DownloadError, HubOptions, Unresolved, DEFAULT_BASE,
};

/// Loads an encoder student of either kind from its model directory.
pub fn load(dir: &Path, meta: ModelMeta, device: &Device) -> Result<Box<dyn Student>> {
    match meta.kind {
        StudentKind::EncoderFinetune => Ok(Box::new(finetune::FinetuneStudent::load(
            dir, meta, device,
        )?)),
        StudentKind::EncoderHead => head::load(dir, meta, device),
        StudentKind::Linear | StudentKind::Ensemble => Err(TrainError::model(
            dir,
            format!("a {} student is not an encoder model", meta.kind.as_str()),
        )),
    }
}

/// `--student encoder-finetune`.
pub fn train_finetune(data: &TrainData, opts: &TrainOptions) -> Result<ModelMeta> {
    finetune::train(data, opts)
}

/// `--student encoder-head`.
pub fn train_head(data: &TrainData, opts: &TrainOptions) -> Result<ModelMeta> {
    head::train(data, opts)
}

/// The base model of `opts` (`--base`, else [`DEFAULT_BASE`]), through the one resolver.
pub fn base_of(opts: &TrainOptions) -> Result<BaseModel> {
    let spec = opts.base.as_deref().unwrap_or(DEFAULT_BASE);
    let hub = HubOptions {
        offline: opts.offline,
        progress: opts.progress,
    };
    Ok(resolve_base(spec, hub)?)
}
