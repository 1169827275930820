//! BERT-family students: `encoder-head` (frozen encoder + head) and `encoder-finetune`.

use crate::error::{Result, TrainError};
use crate::student::{ModelMeta, Student};
use std::path::Path;

pub fn load(dir: &Path, _meta: ModelMeta, _device: &candle_core::Device) -> Result<Box<dyn Student>> {
    Err(TrainError::model(dir, "encoder students are not implemented yet"))
}
