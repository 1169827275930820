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

mod fast;
pub(crate) use fast::{fill_rows, matmul_acc, tensor_to_f32, transpose};
use fast::{FastBert, TensorSource};

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
        Ok(Self::load_with_extra(dir, max_len, threads, device, &[])?.0)
    }

    /// [`FrozenEncoder::load`] that also returns the f32 tensors of `model.safetensors` whose names
    /// start with one of `extra_prefixes` (a head stored beside the encoder), read in the same
    /// pass.
    pub fn load_with_extra(
        dir: &Path,
        max_len: Option<usize>,
        threads: usize,
        device: &Device,
        extra_prefixes: &[&str],
    ) -> Result<(Self, ExtraTensors)> {
        Self::load_inner(
            dir,
            max_len,
            threads,
            device,
            extra_prefixes,
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
        Ok(Self::load_inner(dir, max_len, threads, device, &[], backend)?.0)
    }

    fn load_inner(
        dir: &Path,
        max_len: Option<usize>,
        threads: usize,
        device: &Device,
        extra_prefixes: &[&str],
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
        let extra = if extra_prefixes.is_empty() {
            ExtraTensors::new()
        } else {
            read_prefixed(dir, &bytes, extra_prefixes)?
        };
        let model = match backend {
            Backend::Fast => Model::Fast(Box::new(FastBert::from_safetensors(dir, &cfg, &bytes)?)),
            Backend::Candle => {
                // Validate names and shapes with the same checks as the fast path, so a mismatched
                // checkpoint fails the same way whichever backend runs.
                if FastBert::from_safetensors(dir, &cfg, &bytes)?
                    .int8_kernel()
                    .is_some()
                {
                    return Err(TrainError::model(
                        dir,
                        "an int8 model (`distill quantize`) runs on the CPU only: use --device cpu",
                    ));
                }
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
        self.in_length_sorted_batches(texts, batch, |seqs| self.embed_encoded(seqs))
    }

    /// The last layer's `[CLS]` state of each text (what a sequence-classification pooler
    /// reads), batched like [`FrozenEncoder::embed`]. The packed CPU forward only.
    pub fn first_token_states(&self, texts: &[&str], batch: usize) -> Result<Vec<f32>> {
        let Model::Fast(m) = &self.model else {
            return Err(TrainError::Other(
                "first-token states come from the CPU encoder forward only".into(),
            ));
        };
        self.in_length_sorted_batches(texts, batch, |seqs| {
            self.forward_calls.fetch_add(1, Ordering::Relaxed);
            self.sentences_encoded
                .fetch_add(seqs.len(), Ordering::Relaxed);
            Ok(self
                .pool
                .install(|| m.first_token_states(seqs, self.threads)))
        })
    }

    /// The last layer's state of every token of sequences laid out by the caller (ids and
    /// segment ids, each within the model's positions): one (tokens × dim) block per sequence,
    /// in order. What a token classifier's head reads. The packed CPU forward only.
    pub fn token_states(&self, seqs: &[Encoded]) -> Result<Vec<Vec<f32>>> {
        let Model::Fast(m) = &self.model else {
            return Err(TrainError::Other(
                "token states come from the CPU encoder forward only".into(),
            ));
        };
        let h = self.dim();
        let refs: Vec<&Encoded> = seqs.iter().collect();
        self.forward_calls.fetch_add(1, Ordering::Relaxed);
        self.sentences_encoded
            .fetch_add(seqs.len(), Ordering::Relaxed);
        let (x, spans) = self.pool.install(|| m.hidden_states(&refs, self.threads));
        Ok(spans
            .iter()
            .map(|&(start, n)| x[start * h..(start + n) * h].to_vec())
            .collect())
    }

    /// The int8 kernel this encoder's dense layers run on, if it is a quantised model.
    pub fn int8_kernel(&self) -> Option<crate::encoder::int8::Kernel> {
        match &self.model {
            Model::Fast(m) => m.int8_kernel(),
            Model::Candle { .. } => None,
        }
    }

    /// Runs `forward` over `texts` tokenised, longest first in batches of `batch`, and puts each
    /// text's row (dim floats) back in input order.
    fn in_length_sorted_batches(
        &self,
        texts: &[&str],
        batch: usize,
        forward: impl Fn(&[&Encoded]) -> Result<Vec<f32>>,
    ) -> Result<Vec<f32>> {
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
            let rows = forward(&seqs)?;
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

fn read_prefixed(dir: &Path, bytes: &[u8], prefixes: &[&str]) -> Result<ExtraTensors> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| TrainError::model(dir, format!("model.safetensors: {e}")))?;
    let src = TensorSource { dir, st };
    let mut out = ExtraTensors::new();
    for name in src.st.names() {
        if prefixes.iter().any(|p| name.starts_with(p)) {
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
