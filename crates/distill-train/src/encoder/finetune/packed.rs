//! A fine-tuned classifier on the packed CPU encoder forward ([`FrozenEncoder`]): what an int8
//! (`distill quantize`) `encoder-finetune` student runs. The pooler and classifier stay f32:
//! `logits = Wc · tanh(Wp · h[CLS] + bp) + bc`, as in `BertForSequenceClassification`.

use crate::encoder::embed::{fill_rows, matmul_acc, transpose, ExtraTensors, FrozenEncoder};
use crate::error::{Result, TrainError};
use candle_core::Device;
use std::path::Path;

/// Sentences per forward pass.
const BATCH: usize = 64;
const POOLER: &str = "bert.pooler.dense.";
const CLASSIFIER: &str = "classifier.";

pub struct PackedClassifier {
    encoder: FrozenEncoder,
    /// (hidden, hidden) transposed to (in, out).
    pooler_w_t: Vec<f32>,
    pooler_b: Vec<f32>,
    /// (hidden, labels) transposed to (in, out).
    classifier_w_t: Vec<f32>,
    classifier_b: Vec<f32>,
    n_labels: usize,
}

impl PackedClassifier {
    pub fn load(
        dir: &Path,
        max_len: usize,
        n_labels: usize,
        threads: usize,
        device: &Device,
    ) -> Result<Self> {
        if !device.is_cpu() {
            return Err(TrainError::model(
                dir,
                "an int8 model (`distill quantize`) runs on the CPU only: use --device cpu",
            ));
        }
        let (encoder, mut extra) = FrozenEncoder::load_with_extra(
            dir,
            Some(max_len),
            threads,
            device,
            &[POOLER, CLASSIFIER],
        )?;
        let h = encoder.dim();
        let mut take = |name: &str, shape: &[usize]| take_tensor(dir, &mut extra, name, shape);
        let pooler_w = take(&format!("{POOLER}weight"), &[h, h])?;
        let pooler_b = take(&format!("{POOLER}bias"), &[h])?;
        let classifier_w = take(&format!("{CLASSIFIER}weight"), &[n_labels, h])?;
        let classifier_b = take(&format!("{CLASSIFIER}bias"), &[n_labels])?;
        unused(dir, &extra)?;
        Ok(Self {
            encoder,
            pooler_w_t: transpose(&pooler_w, h, h),
            pooler_b,
            classifier_w_t: transpose(&classifier_w, n_labels, h),
            classifier_b,
            n_labels,
        })
    }

    pub fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let h = self.encoder.dim();
        let n = texts.len();
        let cls = self.encoder.first_token_states(texts, BATCH)?;
        let mut pooled = vec![0f32; n * h];
        fill_rows(&mut pooled, &self.pooler_b);
        matmul_acc(
            &mut pooled,
            &cls,
            &self.pooler_w_t,
            n,
            h,
            h,
            gemm::Parallelism::None,
        );
        pooled.iter_mut().for_each(|v| *v = v.tanh());
        let c = self.n_labels;
        let mut out = vec![0f32; n * c];
        fill_rows(&mut out, &self.classifier_b);
        matmul_acc(
            &mut out,
            &pooled,
            &self.classifier_w_t,
            n,
            h,
            c,
            gemm::Parallelism::None,
        );
        Ok(out.chunks_exact(c.max(1)).map(<[f32]>::to_vec).collect())
    }

    pub fn token_len(&self, text: &str) -> usize {
        self.encoder.token_len(text)
    }

    pub fn encoder(&self) -> &FrozenEncoder {
        &self.encoder
    }
}

/// Takes `name` out of the tensors a packed model loaded beside its encoder, checking its
/// shape; errors name the tensor and the directory.
pub(crate) fn take_tensor(
    dir: &Path,
    extra: &mut ExtraTensors,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    match extra.remove(name) {
        Some((s, v)) if s == shape => Ok(v),
        Some((s, _)) => Err(TrainError::model(
            dir,
            format!("model.safetensors: `{name}` has shape {s:?}, expected {shape:?}"),
        )),
        None => Err(TrainError::model(
            dir,
            format!("model.safetensors: missing tensor `{name}`"),
        )),
    }
}

/// Refuses tensors left over once a packed model took what it reads.
pub(crate) fn unused(dir: &Path, extra: &ExtraTensors) -> Result<()> {
    crate::encoder::bert::refuse_unused(dir, extra.keys().map(String::as_str))
}
