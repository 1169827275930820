//! `distill quantize`: an int8 copy of an encoder student (`encoder-head` or `encoder-finetune`)
//! that `predict`, `eval` and `serve` load like any other model directory.
//!
//! What changes is the encoder's dense layers (Q, K, V, attention output, both feed-forward
//! matrices: about 90% of its multiply-adds): each `<layer>.weight` (f32, (out, in)) becomes
//! `<layer>.weight_int8` (I8, (out, in), values in ±127) and `<layer>.weight_scale` (F32, (out)),
//! with `weight ≈ weight_int8 · weight_scale[row]`. Every other tensor (embeddings, LayerNorm,
//! biases, the pooler, the head) is copied unchanged under its Hugging Face name, as are the
//! config and tokenizer files. Activations are quantised per row while the model runs
//! ([`crate::encoder::int8`]). `distill.json` records the scheme and the f32 parent under
//! `quantization`, so eval can set the two side by side.

use crate::encoder::embed::tensor_to_f32;
use crate::encoder::int8::QuantizedLinear;
use crate::error::{Result, TrainError};
use crate::student::{write_model_dir, ModelMeta, StudentKind};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Suffix of a dense layer's int8 values (replacing `weight`).
pub const INT8_SUFFIX: &str = "weight_int8";
/// Suffix of its per-output-channel scales.
pub const SCALE_SUFFIX: &str = "weight_scale";
/// The only scheme so far.
pub const SCHEME: &str = "int8-dynamic";

/// `distill.json`'s `quantization`: how the model was quantised and from what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    /// `int8-dynamic`.
    pub scheme: String,
    pub weights: String,
    pub activations: String,
    /// The dense layers stored as int8 (tensor-name prefixes).
    pub layers: Vec<String>,
    /// The f32 student this was quantised from.
    pub parent: ParentModel,
    /// Size of `model.safetensors` before and after.
    pub f32_bytes: u64,
    pub int8_bytes: u64,
}

/// Identifies the f32 parent: where it was, and what it was (a moved parent still matches on
/// `created` + `data_hash`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentModel {
    pub path: String,
    pub created: String,
    pub data_hash: String,
    pub dev_accuracy: f64,
}

impl ParentModel {
    /// Whether `meta` is this parent.
    pub fn is(&self, meta: &ModelMeta) -> bool {
        meta.created == self.created
            && meta.data_hash == self.data_hash
            && meta.quantization.is_none()
    }
}

/// The stem of a dense encoder weight the int8 scheme covers, e.g.
/// `bert.encoder.layer.3.intermediate.dense` for `bert.encoder.layer.3.intermediate.dense.weight`.
pub fn quantizable_stem(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".weight")?;
    let local = stem.strip_prefix("bert.").unwrap_or(stem);
    let rest = local.strip_prefix("encoder.layer.")?;
    let (n, layer) = rest.split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    matches!(
        layer,
        "attention.self.query"
            | "attention.self.key"
            | "attention.self.value"
            | "attention.output.dense"
            | "intermediate.dense"
            | "output.dense"
    )
    .then_some(stem)
}

/// Writes an int8 copy of the encoder student in `src` to `out` (a new directory, swapped in
/// whole; an existing model directory is replaced only with `force`).
pub fn quantize_model_dir(src: &Path, out: &Path, force: bool) -> Result<ModelMeta> {
    let mut meta = ModelMeta::load(src)?;
    match meta.kind {
        StudentKind::EncoderHead | StudentKind::EncoderFinetune => {}
        StudentKind::Linear => {
            return Err(TrainError::model(
                src,
                "a linear student has no encoder to quantise (it is already a few sparse \
                 dot products per input)",
            ))
        }
        StudentKind::Ensemble => {
            return Err(TrainError::model(
                src,
                "an ensemble is quantised member by member: quantise the encoder student and \
                 build the ensemble from the int8 copy",
            ))
        }
    }
    if meta.quantization.is_some() {
        return Err(TrainError::model(src, "this model is already int8"));
    }
    if same_dir(src, out) {
        return Err(TrainError::Other(format!(
            "--out {} is the model being quantised: write the int8 copy beside it",
            out.display()
        )));
    }
    let bytes = crate::encoder::weights::read(src)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| TrainError::model(src, format!("model.safetensors: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    // (name, dtype, shape, bytes) of every tensor of the new file.
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut layers = Vec::new();
    for name in &names {
        let view = st
            .tensor(name)
            .map_err(|e| TrainError::model(src, format!("model.safetensors: {e}")))?;
        match (quantizable_stem(name), view.shape()) {
            (Some(stem), &[out_f, in_f]) => {
                let w = tensor_to_f32(&view).map_err(|m| {
                    TrainError::model(src, format!("model.safetensors: tensor `{name}` {m}"))
                })?;
                let (q, scales) = QuantizedLinear::quantize(&w, out_f, in_f).int8_weights();
                tensors.push((
                    format!("{stem}.{INT8_SUFFIX}"),
                    safetensors::Dtype::I8,
                    vec![out_f, in_f],
                    q.iter().map(|&v| v as u8).collect(),
                ));
                tensors.push((
                    format!("{stem}.{SCALE_SUFFIX}"),
                    safetensors::Dtype::F32,
                    vec![out_f],
                    scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                ));
                layers.push(stem.to_string());
            }
            _ => tensors.push((
                name.clone(),
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            )),
        }
    }
    if layers.is_empty() {
        return Err(TrainError::model(
            src,
            "model.safetensors has no encoder dense layers (`encoder.layer.N.….weight`) to quantise",
        ));
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| TrainError::Other(format!("model.safetensors: {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    // One key: a map of several serialises in random order, and the file must be reproducible
    // byte for byte (`distill.json` records the scheme).
    let file_meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let encoded = safetensors::serialize(views, Some(file_meta))
        .map_err(|e| TrainError::Other(format!("model.safetensors: {e}")))?;
    meta.quantization = Some(Quantization {
        scheme: SCHEME.into(),
        weights: "int8, symmetric, one scale per output channel (±127)".into(),
        activations: "int8, symmetric, one scale per row, computed at run time".into(),
        layers,
        parent: ParentModel {
            path: src.display().to_string(),
            created: meta.created.clone(),
            data_hash: meta.data_hash.clone(),
            dev_accuracy: meta.dev_accuracy,
        },
        f32_bytes: bytes.len() as u64,
        int8_bytes: encoded.len() as u64,
    });
    meta.created = chrono::Utc::now().to_rfc3339();
    let weight_files: Vec<String> = crate::encoder::weights::files(src)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .collect();
    write_model_dir(out, force, |tmp| {
        for entry in std::fs::read_dir(src).map_err(|e| TrainError::io(src, e))? {
            let entry = entry.map_err(|e| TrainError::io(src, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let skip = name == "distill.json"
                || name == crate::encoder::weights::SINGLE
                || name == crate::encoder::weights::INDEX
                || weight_files.contains(&name);
            if skip || !entry.path().is_file() {
                continue;
            }
            std::fs::copy(entry.path(), tmp.join(&name))
                .map_err(|e| TrainError::io(entry.path(), e))?;
        }
        let weights = tmp.join(crate::encoder::weights::SINGLE);
        std::fs::write(&weights, &encoded).map_err(|e| TrainError::io(&weights, e))?;
        meta.write(tmp)
    })?;
    Ok(meta)
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_six_dense_layers_of_each_encoder_layer_are_quantised_and_nothing_else() {
        for name in [
            "encoder.layer.0.attention.self.query.weight",
            "bert.encoder.layer.11.attention.self.value.weight",
            "encoder.layer.2.attention.output.dense.weight",
            "bert.encoder.layer.5.intermediate.dense.weight",
            "encoder.layer.5.output.dense.weight",
        ] {
            assert_eq!(
                quantizable_stem(name),
                name.strip_suffix(".weight"),
                "{name}"
            );
        }
        for name in [
            "encoder.layer.0.attention.self.query.bias",
            "encoder.layer.0.output.LayerNorm.weight",
            "encoder.layer.x.output.dense.weight",
            "bert.pooler.dense.weight",
            "classifier.weight",
            "distill_head.out_proj.weight",
            "embeddings.word_embeddings.weight",
        ] {
            assert_eq!(quantizable_stem(name), None, "{name}");
        }
    }
}
