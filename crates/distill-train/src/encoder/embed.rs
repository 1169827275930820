//! The frozen sentence-embedding pipeline behind `encoder-head`: tokenise, run a BERT-family
//! encoder forward-only, mean-pool over the real tokens, L2-normalise (what sentence-transformers
//! does for all-MiniLM-L6-v2).
//!
//! Why a hand-written forward instead of `candle_transformers::models::bert::BertModel`: a frozen
//! encoder needs no autograd, so on the CPU we can (1) pack every sentence of a batch end to end
//! with no padding at all (attention runs per sentence, the dense layers run once over all real
//! tokens), (2) fuse bias and residual into the matmul (`gemm` accumulates into a destination that
//! already holds them), (3) use one fused QKV projection, and (4) skip the broadcast/contiguous
//! copies a generic tensor graph makes. The candle model stays as the `candle` backend: the
//! reference the tests compare against, and the path for CUDA devices.

use crate::error::{Result, TrainError};
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use tokenizers::{Tokenizer, TruncationParams};

/// Longest input when neither `--max-len` nor the base's `sentence_bert_config.json` says.
pub const DEFAULT_MAX_LEN: usize = 128;

/// The subset of a Hugging Face BERT `config.json` the forward pass needs.
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_type_vocab() -> usize {
    2
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl EncoderConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join("config.json");
        let text = std::fs::read_to_string(&p)
            .map_err(|e| TrainError::model(dir, format!("cannot read config.json: {e}")))?;
        let cfg: EncoderConfig = serde_json::from_str(&text)
            .map_err(|e| TrainError::model(dir, format!("config.json: {e}")))?;
        if let Some(t) = &cfg.model_type {
            if !matches!(t.as_str(), "bert" | "minilm") {
                return Err(TrainError::model(
                    dir,
                    format!("config.json: model_type `{t}` is not supported (BERT-family only)"),
                ));
            }
        }
        if let Some(p) = &cfg.position_embedding_type {
            if p != "absolute" {
                return Err(TrainError::model(
                    dir,
                    format!("config.json: position_embedding_type `{p}` is not supported"),
                ));
            }
        }
        if cfg.hidden_size == 0
            || cfg.num_attention_heads == 0
            || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(TrainError::model(
                dir,
                format!(
                    "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        cfg.activation()
            .map_err(|m| TrainError::model(dir, format!("config.json: {m}")))?;
        Ok(cfg)
    }

    fn activation(&self) -> std::result::Result<Activation, String> {
        match self.hidden_act.as_str() {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(format!("hidden_act `{other}` is not supported")),
        }
    }
}

/// Which implementation runs the encoder. `Fast` is the packed CPU forward in this file;
/// `Candle` is candle-transformers' `BertModel` (used on CUDA, and as the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Fast,
    Candle,
}

impl Backend {
    /// `DISTILL_ENCODER_BACKEND=candle|fast` overrides the choice (for benchmarks); otherwise the
    /// fast path on the CPU and candle elsewhere.
    pub fn for_device(device: &Device) -> Self {
        match std::env::var("DISTILL_ENCODER_BACKEND").ok().as_deref() {
            Some("candle") => Backend::Candle,
            Some("fast") if device.is_cpu() => Backend::Fast,
            _ if device.is_cpu() => Backend::Fast,
            _ => Backend::Candle,
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Backend::Fast => "fast",
            Backend::Candle => "candle",
        }
    }
}

/// Tokenised input: token ids and token-type ids of one sentence, truncated to `max_len`.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// A frozen sentence encoder: tokenizer plus weights, producing unit-length embeddings.
pub struct FrozenEncoder {
    dir: PathBuf,
    cfg: EncoderConfig,
    tokenizer: Tokenizer,
    max_len: usize,
    threads: usize,
    pool: rayon::ThreadPool,
    model: Model,
    /// `model.safetensors`, or a sharded checkpoint's shards.
    weights_files: Vec<PathBuf>,
    fingerprint: OnceLock<String>,
    forward_calls: AtomicUsize,
    sentences_encoded: AtomicUsize,
}

enum Model {
    Fast(Box<FastBert>),
    Candle {
        model: Box<candle_transformers::models::bert::BertModel>,
        device: Device,
        pad_id: u32,
    },
}

impl FrozenEncoder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`. `max_len` caps
    /// tokens per sentence (default: the base's `sentence_bert_config.json`, else 128).
    pub fn load(
        dir: &Path,
        max_len: Option<usize>,
        threads: usize,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self::load_with_extra(dir, max_len, threads, device, "")?.0)
    }

    /// [`FrozenEncoder::load`] that also returns the f32 tensors of `model.safetensors` whose names
    /// start with `extra_prefix` (a head stored beside the encoder), read in the same pass.
    pub fn load_with_extra(
        dir: &Path,
        max_len: Option<usize>,
        threads: usize,
        device: &Device,
        extra_prefix: &str,
    ) -> Result<(Self, ExtraTensors)> {
        Self::load_inner(
            dir,
            max_len,
            threads,
            device,
            extra_prefix,
            Backend::for_device(device),
        )
    }

    /// [`FrozenEncoder::load`] with an explicit backend (tests compare the two).
    pub fn load_backend(
        dir: &Path,
        max_len: Option<usize>,
        threads: usize,
        device: &Device,
        backend: Backend,
    ) -> Result<Self> {
        Ok(Self::load_inner(dir, max_len, threads, device, "", backend)?.0)
    }

    fn load_inner(
        dir: &Path,
        max_len: Option<usize>,
        threads: usize,
        device: &Device,
        extra_prefix: &str,
        backend: Backend,
    ) -> Result<(Self, ExtraTensors)> {
        if backend == Backend::Fast && !device.is_cpu() {
            return Err(TrainError::Other(
                "the fast encoder backend runs on the CPU only".into(),
            ));
        }
        let cfg = EncoderConfig::read(dir)?;
        let max_len = max_len
            .or_else(|| sentence_bert_max_len(dir))
            .unwrap_or(DEFAULT_MAX_LEN)
            .clamp(2, cfg.max_position_embeddings);
        let tokenizer = load_tokenizer(dir, max_len)?;
        let bytes = super::weights::read(dir)?;
        let extra = if extra_prefix.is_empty() {
            ExtraTensors::new()
        } else {
            read_prefixed(dir, &bytes, extra_prefix)?
        };
        let model = match backend {
            Backend::Fast => Model::Fast(Box::new(FastBert::from_safetensors(dir, &cfg, &bytes)?)),
            Backend::Candle => {
                // Validate names and shapes with the same checks as the fast path, so a mismatched
                // checkpoint fails the same way whichever backend runs.
                FastBert::from_safetensors(dir, &cfg, &bytes)?;
                let vb =
                    candle_nn::VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)?;
                let ccfg: candle_transformers::models::bert::Config = serde_json::from_str(
                    &std::fs::read_to_string(dir.join("config.json"))
                        .map_err(|e| TrainError::io(dir.join("config.json"), e))?,
                )
                .map_err(|e| TrainError::model(dir, format!("config.json: {e}")))?;
                let model = candle_transformers::models::bert::BertModel::load(vb, &ccfg)
                    .map_err(|e| TrainError::model(dir, format!("model.safetensors: {e}")))?;
                Model::Candle {
                    model: Box::new(model),
                    device: device.clone(),
                    pad_id: tokenizer.get_padding().map(|p| p.pad_id).unwrap_or(0),
                }
            }
        };
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("distill-embed-{i}"))
            .build()
            .map_err(|e| TrainError::Other(format!("cannot start {threads} threads: {e}")))?;
        let encoder = Self {
            dir: dir.to_path_buf(),
            cfg,
            tokenizer,
            max_len,
            threads,
            pool,
            model,
            weights_files: super::weights::files(dir)?,
            fingerprint: OnceLock::new(),
            forward_calls: AtomicUsize::new(0),
            sentences_encoded: AtomicUsize::new(0),
        };
        Ok((encoder, extra))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn dim(&self) -> usize {
        self.cfg.hidden_size
    }
    pub fn max_len(&self) -> usize {
        self.max_len
    }
    pub fn threads(&self) -> usize {
        self.threads
    }
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }
    pub fn backend(&self) -> Backend {
        match self.model {
            Model::Fast(_) => Backend::Fast,
            Model::Candle { .. } => Backend::Candle,
        }
    }
    /// How many batches went through the encoder (tests use it to prove the cache is used).
    pub fn forward_calls(&self) -> usize {
        self.forward_calls.load(Ordering::Relaxed)
    }
    pub fn sentences_encoded(&self) -> usize {
        self.sentences_encoded.load(Ordering::Relaxed)
    }

    /// Identifies what the embeddings depend on: weights, tokenizer, length limit, pooling.
    /// Computed on first use (hashing ~90 MB is wasted work when nothing is cached).
    pub fn fingerprint(&self) -> Result<String> {
        if let Some(f) = self.fingerprint.get() {
            return Ok(f.clone());
        }
        let weights = match self.weights_files.as_slice() {
            [one] => distill_core::fsutil::sha256_file(one)?,
            shards => {
                let hashes = shards
                    .iter()
                    .map(distill_core::fsutil::sha256_file)
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                distill_core::fsutil::sha256_hex(hashes.join("|").as_bytes())
            }
        };
        let tok = distill_core::fsutil::sha256_file(self.dir.join("tokenizer.json"))?;
        let f = distill_core::fsutil::sha256_hex(
            format!(
                "distill-embed-v1|{weights}|{tok}|max_len={}|mean|l2",
                self.max_len
            )
            .as_bytes(),
        );
        Ok(self.fingerprint.get_or_init(|| f).clone())
    }

    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let enc = self
            .pool
            .install(|| self.tokenizer.encode_batch(texts.to_vec(), true))
            .map_err(|e| TrainError::Other(format!("tokenizer: {e}")))?;
        Ok(enc
            .into_iter()
            .map(|e| Encoded {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }

    pub fn token_len(&self, text: &str) -> usize {
        self.tokenizer
            .encode(text, true)
            .map(|e| e.get_ids().len())
            .unwrap_or_else(|_| text.split_whitespace().count() + 2)
    }

    /// Embeds `texts` in batches of `batch` sentences; row i of the result (dim floats) belongs
    /// to `texts[i]`. Sentences are length-sorted so batches hold similar lengths.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Result<Vec<f32>> {
        let dim = self.dim();
        let mut out = vec![0f32; texts.len() * dim];
        if texts.is_empty() {
            return Ok(out);
        }
        let encoded = self.tokenize(texts)?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encoded[i].ids.len()));
        for chunk in order.chunks(batch.max(1)) {
            let seqs: Vec<&Encoded> = chunk.iter().map(|&i| &encoded[i]).collect();
            let rows = self.embed_encoded(&seqs)?;
            for (j, &i) in chunk.iter().enumerate() {
                out[i * dim..(i + 1) * dim].copy_from_slice(&rows[j * dim..(j + 1) * dim]);
            }
        }
        Ok(out)
    }

    /// One forward pass over already-tokenised sentences, in the given order.
    pub fn embed_encoded(&self, seqs: &[&Encoded]) -> Result<Vec<f32>> {
        self.forward_calls.fetch_add(1, Ordering::Relaxed);
        self.sentences_encoded
            .fetch_add(seqs.len(), Ordering::Relaxed);
        match &self.model {
            Model::Fast(m) => Ok(self.pool.install(|| m.embed(seqs, self.threads))),
            Model::Candle {
                model,
                device,
                pad_id,
            } => self
                .pool
                .install(|| candle_embed(model, device, *pad_id, seqs, self.dim())),
        }
    }
}

/// Tensors by name: (shape, f32 values).
pub type ExtraTensors = std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>;

fn read_prefixed(dir: &Path, bytes: &[u8], prefix: &str) -> Result<ExtraTensors> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| TrainError::model(dir, format!("model.safetensors: {e}")))?;
    let src = TensorSource { dir, st };
    let mut out = ExtraTensors::new();
    for name in src.st.names() {
        if name.starts_with(prefix) {
            let view = src
                .st
                .tensor(name)
                .map_err(|e| TrainError::model(dir, format!("model.safetensors: {e}")))?;
            let shape = view.shape().to_vec();
            out.insert(name.to_string(), (shape.clone(), src.get(name, &shape)?));
        }
    }
    Ok(out)
}

fn sentence_bert_max_len(dir: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(dir.join("sentence_bert_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("max_seq_length")?.as_u64().map(|n| n as usize)
}

fn load_tokenizer(dir: &Path, max_len: usize) -> Result<Tokenizer> {
    let p = dir.join("tokenizer.json");
    let mut tok = Tokenizer::from_file(&p)
        .map_err(|e| TrainError::model(dir, format!("cannot load tokenizer.json: {e}")))?;
    // Padding is ours to decide (the fast path packs, the candle path pads to the batch max).
    tok.with_padding(None);
    tok.with_truncation(Some(TruncationParams {
        max_length: max_len,
        ..Default::default()
    }))
    .map_err(|e| TrainError::model(dir, format!("tokenizer.json: {e}")))?;
    Ok(tok)
}

/// The reference path: candle's BertModel over a right-padded batch, masked mean pooling.
fn candle_embed(
    model: &candle_transformers::models::bert::BertModel,
    device: &Device,
    pad_id: u32,
    seqs: &[&Encoded],
    dim: usize,
) -> Result<Vec<f32>> {
    let b = seqs.len();
    let s = seqs.iter().map(|e| e.ids.len()).max().unwrap_or(0).max(1);
    let mut ids = vec![pad_id; b * s];
    let mut types = vec![0u32; b * s];
    let mut mask = vec![0f32; b * s];
    for (i, e) in seqs.iter().enumerate() {
        for (j, (&id, &t)) in e.ids.iter().zip(&e.type_ids).enumerate() {
            ids[i * s + j] = id;
            types[i * s + j] = t;
            mask[i * s + j] = 1.0;
        }
    }
    let ids = Tensor::from_vec(ids, (b, s), device)?;
    let types = Tensor::from_vec(types, (b, s), device)?;
    let mask = Tensor::from_vec(mask, (b, s), device)?;
    let hidden = model.forward(&ids, &types, Some(&mask))?;
    let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
    let counts = mask.sum_keepdim(1)?.clamp(1.0, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    let out = mean.broadcast_div(&norm)?.to_dtype(DType::F32)?;
    let v = out.flatten_all()?.to_vec1::<f32>()?;
    debug_assert_eq!(v.len(), b * dim);
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// The packed CPU forward.

struct LayerWeights {
    /// Fused Q|K|V projection, stored transposed: (hidden, 3*hidden) row-major.
    wqkv_t: Vec<f32>,
    bqkv: Vec<f32>,
    wo_t: Vec<f32>,
    bo: Vec<f32>,
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    wi_t: Vec<f32>,
    bi: Vec<f32>,
    wo2_t: Vec<f32>,
    bo2: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
}

struct FastBert {
    hidden: usize,
    heads: usize,
    inter: usize,
    eps: f32,
    act: Activation,
    vocab: usize,
    type_vocab: usize,
    max_pos: usize,
    word: Vec<f32>,
    pos: Vec<f32>,
    types: Vec<f32>,
    emb_ln_w: Vec<f32>,
    emb_ln_b: Vec<f32>,
    layers: Vec<LayerWeights>,
}

/// Reads the tensors of a BERT checkpoint by Hugging Face name, accepting a `bert.` prefix and
/// the old `gamma`/`beta` LayerNorm names; every tensor must exist with the configured shape.
struct TensorSource<'a> {
    dir: &'a Path,
    st: safetensors::SafeTensors<'a>,
}

impl TensorSource<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let mut candidates = vec![name.to_string(), format!("bert.{name}")];
        if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
            candidates.push(format!("{stem}LayerNorm.gamma"));
            candidates.push(format!("bert.{stem}LayerNorm.gamma"));
        }
        if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
            candidates.push(format!("{stem}LayerNorm.beta"));
            candidates.push(format!("bert.{stem}LayerNorm.beta"));
        }
        let view = candidates
            .iter()
            .find_map(|c| self.st.tensor(c).ok())
            .ok_or_else(|| {
                TrainError::model(
                    self.dir,
                    format!("model.safetensors: missing tensor `{name}`"),
                )
            })?;
        if view.shape() != shape {
            return Err(TrainError::model(
                self.dir,
                format!(
                    "model.safetensors: tensor `{name}` has shape {:?}, config.json implies {:?}",
                    view.shape(),
                    shape
                ),
            ));
        }
        let data = view.data();
        let out: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(TrainError::model(
                    self.dir,
                    format!("model.safetensors: tensor `{name}` has unsupported dtype {other:?}"),
                ))
            }
        };
        Ok(out)
    }
}

/// Transposes a (rows, cols) row-major matrix.
fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

impl FastBert {
    fn from_safetensors(dir: &Path, cfg: &EncoderConfig, bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| TrainError::model(dir, format!("model.safetensors: {e}")))?;
        let src = TensorSource { dir, st };
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = src.get(&format!("{p}.attention.self.query.weight"), &[h, h])?;
            let k = src.get(&format!("{p}.attention.self.key.weight"), &[h, h])?;
            let v = src.get(&format!("{p}.attention.self.value.weight"), &[h, h])?;
            let mut wqkv = q;
            wqkv.extend_from_slice(&k);
            wqkv.extend_from_slice(&v);
            let mut bqkv = src.get(&format!("{p}.attention.self.query.bias"), &[h])?;
            bqkv.extend(src.get(&format!("{p}.attention.self.key.bias"), &[h])?);
            bqkv.extend(src.get(&format!("{p}.attention.self.value.bias"), &[h])?);
            layers.push(LayerWeights {
                wqkv_t: transpose(&wqkv, 3 * h, h),
                bqkv,
                wo_t: transpose(
                    &src.get(&format!("{p}.attention.output.dense.weight"), &[h, h])?,
                    h,
                    h,
                ),
                bo: src.get(&format!("{p}.attention.output.dense.bias"), &[h])?,
                ln1_w: src.get(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                ln1_b: src.get(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                wi_t: transpose(
                    &src.get(&format!("{p}.intermediate.dense.weight"), &[i, h])?,
                    i,
                    h,
                ),
                bi: src.get(&format!("{p}.intermediate.dense.bias"), &[i])?,
                wo2_t: transpose(
                    &src.get(&format!("{p}.output.dense.weight"), &[h, i])?,
                    h,
                    i,
                ),
                bo2: src.get(&format!("{p}.output.dense.bias"), &[h])?,
                ln2_w: src.get(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                ln2_b: src.get(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
        Ok(Self {
            hidden: h,
            heads: cfg.num_attention_heads,
            inter: i,
            eps: cfg.layer_norm_eps as f32,
            act: cfg
                .activation()
                .map_err(|m| TrainError::model(dir, format!("config.json: {m}")))?,
            vocab: cfg.vocab_size,
            type_vocab: cfg.type_vocab_size,
            max_pos: cfg.max_position_embeddings,
            word: src.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            pos: src.get(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            types: src.get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            )?,
            emb_ln_w: src.get("embeddings.LayerNorm.weight", &[h])?,
            emb_ln_b: src.get("embeddings.LayerNorm.bias", &[h])?,
            layers,
        })
    }

    /// Mean-pooled, L2-normalised embeddings of `seqs`, packed without padding.
    fn embed(&self, seqs: &[&Encoded], threads: usize) -> Vec<f32> {
        let h = self.hidden;
        // Row ranges of each sentence in the packed (tokens, hidden) activations.
        let mut spans = Vec::with_capacity(seqs.len());
        let mut total = 0usize;
        for e in seqs {
            let n = e.ids.len().min(self.max_pos);
            spans.push((total, n));
            total += n;
        }
        let mut x = vec![0f32; total * h];
        for (e, &(start, n)) in seqs.iter().zip(&spans) {
            for t in 0..n {
                let id = (e.ids[t] as usize).min(self.vocab - 1);
                let ty =
                    (e.type_ids.get(t).copied().unwrap_or(0) as usize).min(self.type_vocab - 1);
                let row = &mut x[(start + t) * h..(start + t + 1) * h];
                let w = &self.word[id * h..(id + 1) * h];
                let p = &self.pos[t * h..(t + 1) * h];
                let ty = &self.types[ty * h..(ty + 1) * h];
                for c in 0..h {
                    row[c] = w[c] + p[c] + ty[c];
                }
            }
        }
        layer_norm_rows(&mut x, h, &self.emb_ln_w, &self.emb_ln_b, self.eps);

        let par = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        let mut qkv = vec![0f32; total * 3 * h];
        let mut ctx = vec![0f32; total * h];
        let mut inter = vec![0f32; total * self.inter];
        for lw in &self.layers {
            fill_rows(&mut qkv, &lw.bqkv);
            matmul_acc(&mut qkv, &x, &lw.wqkv_t, total, h, 3 * h, par);
            self.attention(&qkv, &mut ctx, &spans);
            add_rows(&mut x, &lw.bo);
            matmul_acc(&mut x, &ctx, &lw.wo_t, total, h, h, par);
            layer_norm_rows(&mut x, h, &lw.ln1_w, &lw.ln1_b, self.eps);
            fill_rows(&mut inter, &lw.bi);
            matmul_acc(&mut inter, &x, &lw.wi_t, total, h, self.inter, par);
            activate(&mut inter, self.act);
            add_rows(&mut x, &lw.bo2);
            matmul_acc(&mut x, &inter, &lw.wo2_t, total, self.inter, h, par);
            layer_norm_rows(&mut x, h, &lw.ln2_w, &lw.ln2_b, self.eps);
        }

        let mut out = vec![0f32; seqs.len() * h];
        for (o, &(start, n)) in out.chunks_exact_mut(h).zip(&spans) {
            for t in 0..n {
                let row = &x[(start + t) * h..(start + t + 1) * h];
                for c in 0..h {
                    o[c] += row[c];
                }
            }
            let inv_n = 1.0 / n.max(1) as f32;
            o.iter_mut().for_each(|v| *v *= inv_n);
            let norm = o.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            o.iter_mut().for_each(|v| *v /= norm);
        }
        out
    }

    /// Softmax attention, each sentence attending only to itself; sentences run in parallel.
    fn attention(&self, qkv: &[f32], ctx: &mut [f32], spans: &[(usize, usize)]) {
        let h = self.hidden;
        let heads = self.heads;
        // Split ctx into one mutable row block per sentence.
        let mut blocks: Vec<(&mut [f32], usize, usize)> = Vec::with_capacity(spans.len());
        let mut rest = ctx;
        for &(start, n) in spans {
            let (head, tail) = rest.split_at_mut(n * h);
            blocks.push((head, start, n));
            rest = tail;
        }
        blocks.into_par_iter().for_each(|(block, start, n)| {
            let rows = &qkv[start * 3 * h..(start + n) * 3 * h];
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU has the features the function was compiled for.
                return unsafe { attend_sentence_avx2(rows, block, n, h, heads) };
            }
            attend_sentence(rows, block, n, h, heads)
        });
    }
}

/// One sentence's multi-head attention: `qkv` holds its n rows of [q | k | v] (3·h wide),
/// `out` receives its n context rows (h wide).
#[inline(always)]
fn attend_sentence(qkv: &[f32], out: &mut [f32], n: usize, h: usize, heads: usize) {
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let stride = 3 * h;
    let mut scores = vec![0f32; n];
    for hd in 0..heads {
        let (qo, ko, vo) = (hd * d, h + hd * d, 2 * h + hd * d);
        for r in 0..n {
            let q = &qkv[r * stride + qo..r * stride + qo + d];
            for (j, s) in scores.iter_mut().enumerate() {
                *s = dot(q, &qkv[j * stride + ko..j * stride + ko + d]) * scale;
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            scores.iter_mut().for_each(|s| *s = fast_exp(*s - max));
            let inv = 1.0 / scores.iter().sum::<f32>();
            let o = &mut out[r * h + qo..r * h + qo + d];
            o.fill(0.0);
            for (j, &p) in scores.iter().enumerate() {
                let v = &qkv[j * stride + vo..j * stride + vo + d];
                let p = p * inv;
                o.iter_mut().zip(v).for_each(|(o, &v)| *o += p * v);
            }
        }
    }
}

// AVX2 + FMA builds of the element-wise loops (GELU, attention): the same plain Rust, compiled
// for those features and chosen at run time, vectorises eight lanes wide instead of SSE2's four
// while the binary stays portable. The numbers do not change: Rust never fuses or reassociates
// float operations, so each lane computes exactly what the scalar code would.

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn attend_sentence_avx2(qkv: &[f32], out: &mut [f32], n: usize, h: usize, heads: usize) {
    attend_sentence(qkv, out, n, h, heads)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gelu_erf_avx2(x: &mut [f32]) {
    gelu_erf(x)
}

#[inline(always)]
fn gelu_erf(x: &mut [f32]) {
    x.iter_mut()
        .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2)))
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociation flags.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// dst (m×n) += lhs (m×k) · rhs (k×n), all row-major.
pub(crate) fn matmul_acc(
    dst: &mut [f32],
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    k: usize,
    n: usize,
    par: gemm::Parallelism,
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    if m == 0 {
        return;
    }
    // SAFETY: the assert above guarantees every index gemm touches is in bounds for these
    // row-major strides, and dst does not alias lhs or rhs (distinct &mut / & borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Sets every row of `m` to `row`.
pub(crate) fn fill_rows(m: &mut [f32], row: &[f32]) {
    m.chunks_exact_mut(row.len())
        .for_each(|r| r.copy_from_slice(row));
}

fn add_rows(m: &mut [f32], row: &[f32]) {
    m.chunks_exact_mut(row.len()).for_each(|r| {
        r.iter_mut().zip(row).for_each(|(a, b)| *a += b);
    });
}

fn layer_norm_rows(x: &mut [f32], h: usize, w: &[f32], b: &[f32], eps: f32) {
    x.par_chunks_mut(h * 32).for_each(|block| {
        for row in block.chunks_exact_mut(h) {
            let mean = row.iter().sum::<f32>() / h as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for c in 0..h {
                row[c] = (row[c] - mean) * inv * w[c] + b[c];
            }
        }
    });
}

fn activate(x: &mut [f32], act: Activation) {
    x.par_chunks_mut(16 * 1024).for_each(|c| match act {
        Activation::GeluErf => {
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU has the features the function was compiled for.
                return unsafe { gelu_erf_avx2(c) };
            }
            gelu_erf(c)
        }
        Activation::GeluTanh => c.iter_mut().for_each(|v| {
            let x = *v;
            *v = 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh())
        }),
        Activation::Relu => c.iter_mut().for_each(|v| *v = v.max(0.0)),
    });
}

/// exp for f32 (Cephes polynomial, ~1 ulp on the range that matters) written without libm
/// calls so the loops around it vectorise.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3);
    // Round to nearest via the 1.5·2^23 trick (no libm `round` call); the same sum's low
    // mantissa bits are k as an integer, which avoids a float-to-int cast (Rust's saturating
    // `as i32` compiles to branches that keep the loop scalar).
    let biased = x * std::f32::consts::LOG2_E + 12_582_912.0;
    let k = biased - 12_582_912.0;
    let k_int = (biased.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = x - k * 0.693_359_4 + k * 2.121_944_4e-4;
    let mut y = 1.987_569_1e-4f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 1.666_666_5e-1;
    y = y * r + 0.5;
    let y = y * r * r + r + 1.0;
    y * f32::from_bits((k_int.wrapping_add(127) as u32) << 23)
}

/// erf with |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26); exact-erf GELU is what BERT
/// checkpoints were trained with, and the tanh form differs by up to 1e-3.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152 + t * 1.061_405_4))));
    let e = 1.0 - poly * fast_exp(-z * z);
    e.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_std_exp_across_the_range() {
        let mut worst = 0f32;
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let rel = ((fast_exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
        // Out-of-range inputs clamp instead of wrapping the exponent bits.
        assert_eq!(fast_exp(-1000.0), fast_exp(-87.3));
        assert!(fast_exp(-87.3) > 0.0 && fast_exp(88.3).is_finite());
    }

    /// Pseudo-random values in [-3, 3), reproducible.
    fn noise(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 24) as f32 * 6.0 - 3.0
            })
            .collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_give_bit_identical_results_to_the_portable_ones() {
        if !has_avx2_fma() {
            eprintln!("skipped: this CPU has no AVX2+FMA");
            return;
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let x = noise(1037, 1);
        let (mut a, mut b) = (x.clone(), x.clone());
        gelu_erf(&mut a);
        // SAFETY: AVX2 and FMA were detected above.
        unsafe { gelu_erf_avx2(&mut b) };
        assert_eq!(bits(&a), bits(&b));
        // Head width 20 leaves a remainder after the 8-wide dot product chunks.
        for (n, h, heads) in [(1, 64, 2), (7, 60, 3), (23, 384, 12)] {
            let qkv = noise(n * 3 * h, n as u32);
            let (mut a, mut b) = (vec![0f32; n * h], vec![0f32; n * h]);
            attend_sentence(&qkv, &mut a, n, h, heads);
            // SAFETY: AVX2 and FMA were detected above.
            unsafe { attend_sentence_avx2(&qkv, &mut b, n, h, heads) };
            assert_eq!(bits(&a), bits(&b), "n={n} h={h} heads={heads}");
            assert!(a.iter().all(|v| v.is_finite() && v.abs() <= 3.0));
        }
    }

    #[test]
    fn erf_matches_reference_values() {
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
            (3.0, 0.999_977_9),
        ] {
            assert!((erf(x) - want).abs() < 1e-6, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn matmul_acc_accumulates_into_destination() {
        // [1 2; 3 4] · [1 0; 0 1] + [10 10; 10 10]
        let mut dst = vec![10f32; 4];
        matmul_acc(
            &mut dst,
            &[1., 2., 3., 4.],
            &[1., 0., 0., 1.],
            2,
            2,
            2,
            gemm::Parallelism::None,
        );
        assert_eq!(dst, vec![11., 12., 13., 14.]);
    }
}
