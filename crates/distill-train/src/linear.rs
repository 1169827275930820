//! The `linear` student: hashed n-gram features into multinomial logistic regression.

use crate::error::{Result, TrainError};
use crate::student::{ModelMeta, Student};
use std::path::Path;

pub struct LinearStudent {
    meta: ModelMeta,
}

impl LinearStudent {
    pub fn load(dir: &Path, _meta: ModelMeta) -> Result<Self> {
        Err(TrainError::model(dir, "linear students are not implemented yet"))
    }
}

impl Student for LinearStudent {
    fn meta(&self) -> &ModelMeta {
        &self.meta
    }
    fn logits(&self, _texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        unimplemented!()
    }
}
