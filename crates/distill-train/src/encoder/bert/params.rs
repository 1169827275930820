//! Pretrained tensors into parameters: checkpoint names mapped to ours, missing head weights
//! initialised as `transformers` does, every tensor accounted for in a [`LoadReport`].

use super::{Dropout, LayerNorm, Linear};
use crate::error::{Result, TrainError};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// How pretrained tensors are turned into parameters.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Wrap every parameter in a `Var` so it can be trained.
    pub trainable: bool,
    /// Pooler and classifier may be freshly initialised when the checkpoint lacks them (a
    /// sentence encoder as the base); when false (loading a trained student) they must exist.
    pub init_missing_head: bool,
    /// Seed for the initialisation of missing head weights.
    pub seed: u64,
}

impl LoadOptions {
    pub fn inference() -> Self {
        LoadOptions {
            trainable: false,
            init_missing_head: false,
            seed: 0,
        }
    }
}

/// What loading matched: tests assert that nothing pretrained was left over.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// Parameters not in the checkpoint, initialised as in `transformers`.
    pub initialised: Vec<String>,
    /// Checkpoint tensors the model has no use for (e.g. a masked-LM head), by original name.
    pub unused: Vec<String>,
}

impl LoadReport {
    /// A trained student's checkpoint holds its model and nothing else: a leftover tensor means
    /// the directory is not the model it claims to be.
    pub fn refuse_unused(&self, dir: &Path) -> Result<()> {
        refuse_unused(dir, self.unused.iter().map(String::as_str))
    }
}

/// Refuses the checkpoint at `dir` when any tensor in `names` went unused (listed sorted).
pub fn refuse_unused<'a>(dir: &Path, names: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut names: Vec<&str> = names.into_iter().collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort_unstable();
    Err(TrainError::model(
        dir,
        format!(
            "model.safetensors has tensors this model does not use: {}",
            names.join(", ")
        ),
    ))
}

/// Maps a checkpoint's tensor name to ours (`bert.`-prefixed, `LayerNorm.weight/bias`).
/// `None` for non-parameter buffers.
pub(super) fn canonical_name(name: &str) -> Option<String> {
    if name.ends_with("position_ids") {
        return None;
    }
    let n = name
        .replace("LayerNorm.gamma", "LayerNorm.weight")
        .replace("LayerNorm.beta", "LayerNorm.bias");
    if n.starts_with("bert.") || n.starts_with("classifier.") {
        Some(n)
    } else if n.starts_with("embeddings.") || n.starts_with("encoder.") || n.starts_with("pooler.")
    {
        Some(format!("bert.{n}"))
    } else {
        Some(n)
    }
}

pub(super) enum Init {
    Normal,
    Zeros,
    Ones,
}

pub(super) struct ParamBuilder<'a> {
    pub(super) pretrained: HashMap<String, (String, Tensor)>,
    pub(super) source: &'a Path,
    pub(super) device: &'a Device,
    pub(super) opts: LoadOptions,
    pub(super) init_std: f32,
    pub(super) rng: Dropout,
    pub(super) report: LoadReport,
    pub(super) params: Vec<(String, Tensor)>,
    pub(super) vars: Vec<(String, Var)>,
    pub(super) hint: String,
    pub(super) init_all: bool,
}

impl ParamBuilder<'_> {
    pub(super) fn may_init(&self, name: &str) -> bool {
        self.init_all
            || self.opts.init_missing_head
                && (name.starts_with("bert.pooler.") || name.starts_with("classifier."))
    }

    pub(super) fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let t = match self.pretrained.remove(name) {
            Some((orig, t)) if t.dims() == shape => {
                self.report.loaded.push(orig);
                t
            }
            Some((orig, t)) if !self.may_init(name) => {
                return Err(TrainError::model(
                    self.source,
                    format!(
                        "tensor `{orig}` has shape {:?} but the model expects {shape:?} ({}); \
                         is config.json from the same model as model.safetensors?",
                        t.dims(),
                        self.hint
                    ),
                ))
            }
            found => {
                if !self.may_init(name) {
                    return Err(TrainError::model(
                        self.source,
                        format!("missing tensor `{name}` in model.safetensors"),
                    ));
                }
                if let Some((orig, _)) = found {
                    // A classifier for another label set: start a fresh one.
                    self.report.unused.push(orig);
                }
                self.report.initialised.push(name.to_string());
                self.init(shape, init)?
            }
        };
        let t = t
            .to_dtype(DType::F32)?
            .to_device(self.device)?
            .contiguous()?;
        if self.opts.trainable {
            let v = Var::from_tensor(&t)?;
            let t = v.as_tensor().clone();
            self.vars.push((name.to_string(), v));
            self.params.push((name.to_string(), t.clone()));
            Ok(t)
        } else {
            self.params.push((name.to_string(), t.clone()));
            Ok(t)
        }
    }

    pub(super) fn init(&mut self, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal => (0..n)
                .map(|_| {
                    // Box-Muller from two uniforms in (0, 1].
                    let u1 = ((self.rng.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
                    let u2 = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    z as f32 * self.init_std
                })
                .collect(),
        };
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }

    pub(super) fn linear(&mut self, prefix: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        Ok(Linear {
            w: self.get(
                &format!("{prefix}.weight"),
                &[out_dim, in_dim],
                Init::Normal,
            )?,
            b: self.get(&format!("{prefix}.bias"), &[out_dim], Init::Zeros)?,
        })
    }

    pub(super) fn layer_norm(&mut self, prefix: &str, dim: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            w: self.get(&format!("{prefix}.weight"), &[dim], Init::Ones)?,
            b: self.get(&format!("{prefix}.bias"), &[dim], Init::Zeros)?,
            eps: eps as f32,
        })
    }
}
