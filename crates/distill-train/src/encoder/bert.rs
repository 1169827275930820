//! Our own BERT encoder with a sequence-classification head, written so it can be *trained*.
//!
//! candle-transformers' BERT is inference-only: its fused LayerNorm records no backward op (so
//! nothing below the first LayerNorm ever learns, silently), dropout is a no-op and there is no
//! pooler or classifier. This module is Hugging Face's `BertForSequenceClassification`, op for op,
//! with the same tensor names, so pretrained checkpoints load and exported students load back into
//! `transformers`:
//!
//! ```text
//! embeddings = LayerNorm(word[ids] + position[0..s] + token_type[tt]) -> dropout
//! per layer:  a = LayerNorm(x + dropout(Wo · softmax(QKᵀ/√d + mask) V))
//!             x = LayerNorm(a + dropout(W2 · gelu(W1 a)))
//! pooled = tanh(Wp · x[CLS]);  logits = Wc · dropout(pooled)
//! ```
//!
//! In training mode LayerNorm and softmax are built from ordinary differentiable ops; in
//! inference mode the fused kernels are used, which are faster and give the same numbers.
//! The config (`bert/config.rs`) and the checkpoint-to-parameter loading (`bert/params.rs`) are
//! beside it.

use crate::error::{Result, TrainError};
use candle_core::{DType, Device, Tensor, Var, D};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod config;
mod params;
pub use config::{classifier_config_json, Activation, BertConfig};
use params::{canonical_name, Init, ParamBuilder};
pub use params::{refuse_unused, LoadOptions, LoadReport};

/// One padded batch on the model's device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// (b, s) u32 token ids.
    pub ids: Tensor,
    /// (b, s) u32 segment ids.
    pub type_ids: Tensor,
    /// (b, s) f32, 1 for real tokens, 0 for padding.
    pub mask: Tensor,
}

impl Batch {
    /// [`Self::from_ids`] with each sequence's segment ids (`types[r]` as long as `seqs[r]`).
    pub fn from_segments(
        seqs: &[&[u32]],
        types: &[&[u32]],
        pad_id: u32,
        device: &Device,
    ) -> Result<Self> {
        let mut batch = Self::from_ids(seqs, pad_id, device)?;
        let (b, s) = batch.ids.dims2()?;
        let mut t = vec![0u32; b * s];
        for (r, ty) in types.iter().enumerate() {
            t[r * s..r * s + ty.len()].copy_from_slice(ty);
        }
        batch.type_ids = Tensor::from_vec(t, (b, s), device)?;
        Ok(batch)
    }

    /// Pads `seqs` with `pad_id` to the longest one. Single-segment inputs: all type ids are 0.
    pub fn from_ids(seqs: &[&[u32]], pad_id: u32, device: &Device) -> Result<Self> {
        let b = seqs.len();
        let s = seqs.iter().map(|x| x.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![pad_id; b * s];
        let mut mask = vec![0f32; b * s];
        for (r, seq) in seqs.iter().enumerate() {
            ids[r * s..r * s + seq.len()].copy_from_slice(seq);
            mask[r * s..r * s + seq.len()].fill(1.0);
        }
        Ok(Batch {
            ids: Tensor::from_vec(ids, (b, s), device)?,
            type_ids: Tensor::zeros((b, s), DType::U32, device)?,
            mask: Tensor::from_vec(mask, (b, s), device)?,
        })
    }
}

/// Dropout that is reproducible from `--seed` on every device. candle's CPU RNG cannot be
/// seeded, so on the CPU the keep-masks come from our own generator; on CUDA the device RNG is
/// seeded once (`Device::set_seed`) and masks are drawn there, so no host round-trip sits in
/// the hot path.
pub struct Dropout {
    state: u64,
}

impl Dropout {
    pub fn new(seed: u64, device: &Device) -> Result<Self> {
        if !device.is_cpu() {
            device.set_seed(seed)?;
        }
        Ok(Dropout {
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        })
    }

    fn next_u64(&mut self) -> u64 {
        // splitmix64: tiny, fast and good enough for keep/drop decisions.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn apply(&mut self, x: &Tensor, p: f32) -> Result<Tensor> {
        if p <= 0.0 {
            return Ok(x.clone());
        }
        let scale = 1.0 / (1.0 - p);
        let mask = if x.device().is_cpu() {
            let n = x.elem_count();
            let threshold = (p as f64 * u32::MAX as f64) as u32;
            let mut m = Vec::with_capacity(n);
            while m.len() < n {
                let r = self.next_u64();
                for half in [r as u32, (r >> 32) as u32] {
                    if m.len() < n {
                        m.push(if half >= threshold { scale } else { 0.0 });
                    }
                }
            }
            Tensor::from_vec(m, x.shape(), x.device())?
        } else {
            let r = Tensor::rand(0f32, 1f32, x.shape(), x.device())?;
            (r.ge(p as f64)?.to_dtype(DType::F32)? * scale as f64)?
        };
        Ok(x.mul(&mask)?)
    }
}

struct Linear {
    w: Tensor,
    b: Tensor,
}

impl Linear {
    /// x: (n, in) -> (n, out). Kept 2-D so the matmul and its backward are plain GEMMs.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.w.t()?)?.broadcast_add(&self.b)?)
    }
}

impl Layer {
    /// Query, key and value stacked into one (3h, h) projection; `cat` is differentiable, so
    /// gradients still reach the three Hugging Face tensors.
    fn qkv_weight(&self) -> Result<Linear> {
        Ok(Linear {
            w: Tensor::cat(&[&self.query.w, &self.key.w, &self.value.w], 0)?,
            b: Tensor::cat(&[&self.query.b, &self.key.b, &self.value.b], 0)?,
        })
    }
}

struct LayerNorm {
    w: Tensor,
    b: Tensor,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &Tensor, train: bool, fused: bool) -> Result<Tensor> {
        // candle's fused kernel has no backward (candle issue #3011): use it only for
        // inference; on the CPU our own fused kernel (with backward) serves both.
        if fused && fused::usable(x) {
            let x = if x.is_contiguous() {
                x.clone()
            } else {
                x.contiguous()?
            };
            Ok(x.apply_op3(&self.w, &self.b, fused::LayerNorm { eps: self.eps })?)
        } else if train {
            Ok(candle_nn::ops::layer_norm_slow(
                x, &self.w, &self.b, self.eps,
            )?)
        } else {
            Ok(candle_nn::ops::layer_norm(x, &self.w, &self.b, self.eps)?)
        }
    }
}

struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// The word-embedding rows a training forward looked up, as a leaf of the autograd graph: the
/// optimiser applies their gradient to the embedding table as sparse rows (see
/// [`BertClassifier::forward_with_word_rows`]).
pub struct WordRows {
    /// The looked-up rows, `(batch · seq, hidden)`.
    pub leaf: Var,
    /// The token id of each row.
    pub ids: Vec<u32>,
}

/// What the classifier reads of the encoder's last hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `BertForSequenceClassification`: the pooled `[CLS]` state, one label per input.
    Sequence,
    /// `BertForTokenClassification`: every token's state, one tag per token (no pooler).
    Token,
}

/// `BertForSequenceClassification` (or, with [`Head::Token`], `BertForTokenClassification`)
/// with Hugging Face tensor names.
pub struct BertClassifier {
    pub config: BertConfig,
    pub n_labels: usize,
    pub head: Head,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    classifier: Linear,
    params: Vec<(String, Tensor)>,
    vars: Vec<(String, Var)>,
    fused: bool,
}

impl BertClassifier {
    /// Turns the fused CPU kernels (LayerNorm, masked softmax, GELU with hand-written
    /// backward passes) on or off; on by default. Off, the model is built from candle's own
    /// differentiable ops, which tests use as the reference.
    pub fn with_fused_kernels(mut self, on: bool) -> Self {
        self.fused = on;
        self
    }

    /// Loads `model.safetensors` (any float dtype; with or without the `bert.` prefix).
    pub fn load(
        weights: &Path,
        config: &BertConfig,
        n_labels: usize,
        device: &Device,
        opts: LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        if !weights.is_file() {
            return Err(TrainError::model(
                weights,
                "model.safetensors not found".to_string(),
            ));
        }
        // Loaded on the CPU first: weights are converted and checked before they reach the device.
        let tensors = candle_core::safetensors::load(weights, &Device::Cpu)
            .map_err(|e| TrainError::model(weights, format!("cannot read safetensors: {e}")))?;
        Self::from_tensors(tensors, weights, config, n_labels, device, opts)
    }

    /// A randomly initialised model (as `transformers` initialises BERT), for tests and tiny models.
    pub fn random(
        config: &BertConfig,
        n_labels: usize,
        device: &Device,
        opts: LoadOptions,
    ) -> Result<Self> {
        Self::random_with_head(Head::Sequence, config, n_labels, device, opts)
    }

    /// Builds the model from named tensors. Every tensor the architecture needs must be
    /// present with the right shape (except a missing head when `opts` allows it).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        source: &Path,
        config: &BertConfig,
        n_labels: usize,
        device: &Device,
        opts: LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        Self::build(
            tensors,
            source,
            config,
            n_labels,
            device,
            opts,
            false,
            Head::Sequence,
        )
    }

    /// [`Self::from_tensors`] with the given head; a token head has no pooler.
    pub fn from_tensors_with_head(
        head: Head,
        tensors: HashMap<String, Tensor>,
        source: &Path,
        config: &BertConfig,
        n_labels: usize,
        device: &Device,
        opts: LoadOptions,
    ) -> Result<(Self, LoadReport)> {
        Self::build(tensors, source, config, n_labels, device, opts, false, head)
    }

    /// [`Self::random`] with the given head.
    pub fn random_with_head(
        head: Head,
        config: &BertConfig,
        n_labels: usize,
        device: &Device,
        opts: LoadOptions,
    ) -> Result<Self> {
        let source = Path::new("<random>");
        Ok(Self::build(
            HashMap::new(),
            source,
            config,
            n_labels,
            device,
            opts,
            true,
            head,
        )?
        .0)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        tensors: HashMap<String, Tensor>,
        source: &Path,
        config: &BertConfig,
        n_labels: usize,
        device: &Device,
        opts: LoadOptions,
        init_all: bool,
        head: Head,
    ) -> Result<(Self, LoadReport)> {
        if n_labels == 0 {
            return Err(TrainError::Data(
                "a classifier needs at least one label".into(),
            ));
        }
        let mut pretrained = HashMap::new();
        for (name, t) in tensors {
            if let Some(c) = canonical_name(&name) {
                pretrained.insert(c, (name, t));
            }
        }
        let c = config;
        let h = c.hidden_size;
        let mut pb = ParamBuilder {
            pretrained,
            source,
            device,
            opts,
            init_std: c.initializer_range,
            rng: Dropout {
                state: opts.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x5DEE_CE66,
            },
            report: LoadReport::default(),
            params: Vec::new(),
            vars: Vec::new(),
            hint: format!(
                "config.json: vocab_size {}, hidden_size {}, intermediate_size {}, {} labels",
                c.vocab_size, h, c.intermediate_size, n_labels
            ),
            init_all,
        };
        let p = "bert.embeddings";
        let embeddings = Embeddings {
            word: pb.get(
                &format!("{p}.word_embeddings.weight"),
                &[c.vocab_size, h],
                Init::Normal,
            )?,
            position: pb.get(
                &format!("{p}.position_embeddings.weight"),
                &[c.max_position_embeddings, h],
                Init::Normal,
            )?,
            token_type: pb.get(
                &format!("{p}.token_type_embeddings.weight"),
                &[c.type_vocab_size, h],
                Init::Normal,
            )?,
            norm: pb.layer_norm(&format!("{p}.LayerNorm"), h, c.layer_norm_eps)?,
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("bert.encoder.layer.{i}");
            layers.push(Layer {
                query: pb.linear(&format!("{p}.attention.self.query"), h, h)?,
                key: pb.linear(&format!("{p}.attention.self.key"), h, h)?,
                value: pb.linear(&format!("{p}.attention.self.value"), h, h)?,
                attn_out: pb.linear(&format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: pb.layer_norm(
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    c.layer_norm_eps,
                )?,
                intermediate: pb.linear(
                    &format!("{p}.intermediate.dense"),
                    h,
                    c.intermediate_size,
                )?,
                output: pb.linear(&format!("{p}.output.dense"), c.intermediate_size, h)?,
                out_norm: pb.layer_norm(&format!("{p}.output.LayerNorm"), h, c.layer_norm_eps)?,
            });
        }
        let pooler = match head {
            Head::Sequence => Some(pb.linear("bert.pooler.dense", h, h)?),
            Head::Token => None,
        };
        let classifier = pb.linear("classifier", h, n_labels)?;
        let mut report = pb.report;
        report
            .unused
            .extend(pb.pretrained.into_values().map(|(orig, _)| orig));
        report.unused.sort();
        Ok((
            BertClassifier {
                config: config.clone(),
                n_labels,
                head,
                embeddings,
                layers,
                pooler,
                classifier,
                params: pb.params,
                vars: pb.vars,
                fused: true,
            },
            report,
        ))
    }

    /// The word-embedding table's variable (trainable models).
    pub fn word_embeddings_var(&self) -> Option<&Var> {
        self.vars
            .iter()
            .find(|(n, _)| n.ends_with("embeddings.word_embeddings.weight"))
            .map(|(_, v)| v)
    }

    /// Trainable parameters by name (empty unless loaded with `trainable`).
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Every parameter by its Hugging Face name, in the model's current state.
    pub fn named_tensors(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Writes `model.safetensors` with Hugging Face names.
    pub fn save(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.detach().to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        candle_core::safetensors::save(&map, path)
            .map_err(|e| TrainError::model(path, format!("cannot write safetensors: {e}")))
    }

    /// Last hidden states (b, s, hidden). `dropout` is `Some` in training mode.
    pub fn encode(&self, batch: &Batch, dropout: Option<&mut Dropout>) -> Result<Tensor> {
        self.encode_with(batch, dropout, None)
    }

    /// `encode`; with `word_rows`, the word embeddings are looked up from a detached copy of the
    /// table and the rows become a leaf whose gradient the caller applies as sparse rows.
    /// Autograd would otherwise build a dense zeroed 47 MB gradient for a 30,522-row table
    /// (and copy it twice) every step to carry the few hundred rows a batch uses.
    fn encode_with(
        &self,
        batch: &Batch,
        mut dropout: Option<&mut Dropout>,
        word_rows: Option<&mut Option<WordRows>>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let train = dropout.is_some();
        let (b, s) = batch.ids.dims2()?;
        if s > c.max_position_embeddings {
            return Err(TrainError::Other(format!(
                "sequence of {s} tokens is longer than the model's {} positions",
                c.max_position_embeddings
            )));
        }
        let h = c.hidden_size;
        let (heads, hd) = (c.num_attention_heads, c.head_dim());
        let e = &self.embeddings;
        let flat_ids = batch.ids.flatten_all()?;
        let word = match word_rows {
            Some(out) => {
                let rows = e.word.detach().index_select(&flat_ids, 0)?;
                let leaf = Var::from_tensor(&rows)?;
                let word = leaf.as_tensor().clone();
                *out = Some(WordRows {
                    leaf,
                    ids: flat_ids.to_vec1::<u32>()?,
                });
                word
            }
            None => e.word.index_select(&flat_ids, 0)?,
        };
        let tt = e
            .token_type
            .index_select(&batch.type_ids.flatten_all()?, 0)?;
        let pos = e.position.narrow(0, 0, s)?;
        let x = (word + tt)?
            .reshape((b, s, h))?
            .broadcast_add(&pos)?
            .reshape((b * s, h))?;
        let mut x = e.norm.forward(&x, train, self.fused)?;
        if let Some(d) = dropout.as_deref_mut() {
            x = d.apply(&x, c.hidden_dropout_prob)?;
        }
        // Additive mask, computed once for all layers: 0 for tokens, a large negative for padding.
        let mask_add = ((batch.mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?;
        let fused_ok = self.fused && fused::usable(&x);
        let mask_4d = mask_add.reshape((b, 1, 1, s))?;
        let scale = 1.0 / (hd as f64).sqrt();
        for layer in &self.layers {
            // Q, K and V from one GEMM, split into heads with one copy:
            // (b·s, 3h) -> (b, s, 3, heads, hd) -> (3, b, heads, s, hd).
            let qkv = layer
                .qkv_weight()?
                .forward(&x)?
                .reshape((b, s, 3, heads, hd))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?;
            let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
            let scores = q.matmul(&k.t()?)?;
            let mut probs = if fused_ok {
                scores.apply_op2(
                    &mask_add,
                    fused::MaskedSoftmax {
                        scale: scale as f32,
                    },
                )?
            } else {
                let scores = (scores * scale)?.broadcast_add(&mask_4d)?;
                if train {
                    candle_nn::ops::softmax(&scores, D::Minus1)?
                } else {
                    candle_nn::ops::softmax_last_dim(&scores)?
                }
            };
            if let Some(d) = dropout.as_deref_mut() {
                probs = d.apply(&probs, c.attention_probs_dropout_prob)?;
            }
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b * s, h))?;
            let mut a = layer.attn_out.forward(&ctx)?;
            if let Some(d) = dropout.as_deref_mut() {
                a = d.apply(&a, c.hidden_dropout_prob)?;
            }
            let a = layer.attn_norm.forward(&(a + &x)?, train, fused_ok)?;
            let inter = layer.intermediate.forward(&a)?;
            let inter = match c.hidden_act {
                Activation::GeluErf if fused_ok => inter.apply_op1(fused::GeluErf)?,
                Activation::GeluErf => inter.gelu_erf()?,
                Activation::GeluTanh => inter.gelu()?,
                Activation::Relu => inter.relu()?,
            };
            let mut o = layer.output.forward(&inter)?;
            if let Some(d) = dropout.as_deref_mut() {
                o = d.apply(&o, c.hidden_dropout_prob)?;
            }
            x = layer.out_norm.forward(&(o + a)?, train, fused_ok)?;
        }
        Ok(x.reshape((b, s, h))?)
    }

    /// Classification logits (b, n_labels); with a token head, (b, s, n_labels).
    pub fn forward(&self, batch: &Batch, dropout: Option<&mut Dropout>) -> Result<Tensor> {
        self.forward_with(batch, dropout, None)
    }

    /// Training forward whose word-embedding gradient comes back as sparse rows: the logits,
    /// and the [`WordRows`] leaf to read the rows' gradient from after `backward`.
    pub fn forward_with_word_rows(
        &self,
        batch: &Batch,
        dropout: Option<&mut Dropout>,
    ) -> Result<(Tensor, WordRows)> {
        let mut rows = None;
        let logits = self.forward_with(batch, dropout, Some(&mut rows))?;
        let rows = rows.ok_or_else(|| TrainError::Other("no word rows recorded".into()))?;
        Ok((logits, rows))
    }

    fn forward_with(
        &self,
        batch: &Batch,
        mut dropout: Option<&mut Dropout>,
        word_rows: Option<&mut Option<WordRows>>,
    ) -> Result<Tensor> {
        let hidden = self.encode_with(batch, dropout.as_deref_mut(), word_rows)?;
        let p = self
            .config
            .classifier_dropout
            .unwrap_or(self.config.hidden_dropout_prob);
        let Some(pooler) = &self.pooler else {
            // A token head: dropout and the classifier on every token's state.
            let (b, s, h) = hidden.dims3()?;
            let mut x = hidden.reshape((b * s, h))?;
            if let Some(d) = dropout {
                x = d.apply(&x, p)?;
            }
            return Ok(self
                .classifier
                .forward(&x)?
                .reshape((b, s, self.n_labels))?);
        };
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let mut pooled = pooler.forward(&cls)?.tanh()?;
        if let Some(d) = dropout {
            pooled = d.apply(&pooled, p)?;
        }
        self.classifier.forward(&pooled)
    }
}

/// Where a model directory's files are.
pub fn model_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("config.json"),
        dir.join("model.safetensors"),
        dir.join("tokenizer.json"),
    )
}

/// Fused CPU kernels with hand-written backward passes (LayerNorm, masked softmax, GELU).
mod fused;
