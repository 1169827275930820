//! The packed CPU forward of a frozen BERT encoder: fused Q|K|V weights stored transposed,
//! one pass per layer over a sentence's rows, AVX2+FMA kernels where the CPU has them (bit
//! identical to the portable ones, tested below), a fast `exp` and `erf` for softmax and GELU.

use super::*;
use crate::encoder::int8::{Kernel, QuantizedLinear};

struct LayerWeights {
    /// Fused Q|K|V projection (3·hidden outputs).
    wqkv: Dense,
    bqkv: Vec<f32>,
    wo: Dense,
    bo: Vec<f32>,
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    wi: Dense,
    bi: Vec<f32>,
    wo2: Dense,
    bo2: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
}

/// A dense layer's weights in the form the forward multiplies by.
enum Dense {
    /// f32, stored transposed: (in, out) row-major, what `gemm` reads.
    F32 {
        w_t: Vec<f32>,
        inp: usize,
        out: usize,
    },
    /// int8, packed once at load ([`crate::encoder::int8`]).
    Int8(QuantizedLinear),
}

/// How the dense layers run: gemm's threading for f32, the int8 kernel and worker count.
#[derive(Clone, Copy)]
struct Compute {
    par: gemm::Parallelism,
    threads: usize,
    kernel: Kernel,
}

impl Dense {
    /// Builds the layer from stored weights ((out, in) row-major, PyTorch layout).
    fn from_stored(w: StoredWeight, out: usize, inp: usize) -> std::result::Result<Self, String> {
        Ok(match w {
            StoredWeight::F32(w) => Dense::F32 {
                w_t: transpose(&w, out, inp),
                inp,
                out,
            },
            StoredWeight::Int8(q, scales) => {
                Dense::Int8(QuantizedLinear::from_int8(&q, &scales, out, inp)?)
            }
        })
    }

    /// dst (m × out) += x (m × in) · W.
    fn matmul_acc(&self, dst: &mut [f32], x: &[f32], m: usize, c: Compute) {
        match self {
            Dense::F32 { w_t, inp, out } => matmul_acc(dst, x, w_t, m, *inp, *out, c.par),
            Dense::Int8(q) => q.matmul_acc(dst, x, m, c.kernel, c.threads),
        }
    }

    fn is_int8(&self) -> bool {
        matches!(self, Dense::Int8(_))
    }
}

/// A dense weight as `model.safetensors` stores it: f32 (`<layer>.weight`), or int8 values with
/// per-output-channel scales (`<layer>.weight_int8`, `<layer>.weight_scale`: `distill quantize`).
pub(crate) enum StoredWeight {
    F32(Vec<f32>),
    Int8(Vec<i8>, Vec<f32>),
}

impl StoredWeight {
    /// Stacks the output channels of several weights of one form (the fused Q|K|V).
    fn stack(parts: Vec<StoredWeight>) -> std::result::Result<StoredWeight, String> {
        let mut iter = parts.into_iter();
        let mut acc = iter.next().ok_or("nothing to stack")?;
        for p in iter {
            match (&mut acc, p) {
                (StoredWeight::F32(a), StoredWeight::F32(b)) => a.extend(b),
                (StoredWeight::Int8(a, s), StoredWeight::Int8(b, t)) => {
                    a.extend(b);
                    s.extend(t);
                }
                _ => return Err("query, key and value must all be f32 or all int8".into()),
            }
        }
        Ok(acc)
    }
}

pub(super) struct FastBert {
    /// The int8 kernel, when any dense layer is int8.
    kernel: Option<Kernel>,
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
pub(super) struct TensorSource<'a> {
    pub(super) dir: &'a Path,
    pub(super) st: safetensors::SafeTensors<'a>,
}

impl TensorSource<'_> {
    /// The stored tensor `name` (or its `bert.`-prefixed / old LayerNorm spelling), if any.
    fn find(&self, name: &str) -> Option<safetensors::tensor::TensorView<'_>> {
        let mut candidates = vec![name.to_string(), format!("bert.{name}")];
        if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
            candidates.push(format!("{stem}LayerNorm.gamma"));
            candidates.push(format!("bert.{stem}LayerNorm.gamma"));
        }
        if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
            candidates.push(format!("{stem}LayerNorm.beta"));
            candidates.push(format!("bert.{stem}LayerNorm.beta"));
        }
        candidates.iter().find_map(|c| self.st.tensor(c).ok())
    }

    fn view(&self, name: &str, shape: &[usize]) -> Result<safetensors::tensor::TensorView<'_>> {
        let view = self.find(name).ok_or_else(|| {
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
        Ok(view)
    }

    pub(super) fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        tensor_to_f32(&self.view(name, shape)?).map_err(|m| {
            TrainError::model(self.dir, format!("model.safetensors: tensor `{name}` {m}"))
        })
    }

    /// The weight of dense layer `layer` ((out, inp) as stored): f32 `<layer>.weight`, else the
    /// int8 pair `distill quantize` writes.
    pub(crate) fn dense(&self, layer: &str, out: usize, inp: usize) -> Result<StoredWeight> {
        let f32_name = format!("{layer}.weight");
        let q_name = format!("{layer}.{}", crate::quantize::INT8_SUFFIX);
        if self.find(&f32_name).is_some() || self.find(&q_name).is_none() {
            return Ok(StoredWeight::F32(self.get(&f32_name, &[out, inp])?));
        }
        let view = self.view(&q_name, &[out, inp])?;
        if view.dtype() != safetensors::Dtype::I8 {
            return Err(TrainError::model(
                self.dir,
                format!(
                    "model.safetensors: tensor `{q_name}` has dtype {:?}, expected I8",
                    view.dtype()
                ),
            ));
        }
        let q: Vec<i8> = view.data().iter().map(|&b| b as i8).collect();
        let scales = self.get(
            &format!("{layer}.{}", crate::quantize::SCALE_SUFFIX),
            &[out],
        )?;
        Ok(StoredWeight::Int8(q, scales))
    }
}

/// A stored f32, f16 or bf16 tensor's values as f32.
pub(crate) fn tensor_to_f32(
    view: &safetensors::tensor::TensorView<'_>,
) -> std::result::Result<Vec<f32>, String> {
    let data = view.data();
    Ok(match view.dtype() {
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
        other => return Err(format!("has unsupported dtype {other:?}")),
    })
}

/// Transposes a (rows, cols) row-major matrix.
pub(crate) fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

impl FastBert {
    pub(super) fn from_safetensors(dir: &Path, cfg: &EncoderConfig, bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| TrainError::model(dir, format!("model.safetensors: {e}")))?;
        let src = TensorSource { dir, st };
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let dense = |w: StoredWeight, out: usize, inp: usize, layer: &str| {
            Dense::from_stored(w, out, inp)
                .map_err(|m| TrainError::model(dir, format!("model.safetensors: `{layer}`: {m}")))
        };
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let qkv = ["query", "key", "value"]
                .iter()
                .map(|n| src.dense(&format!("{p}.attention.self.{n}"), h, h))
                .collect::<Result<Vec<_>>>()?;
            let qkv = StoredWeight::stack(qkv).map_err(|m| {
                TrainError::model(dir, format!("model.safetensors: layer {l}: {m}"))
            })?;
            let mut bqkv = src.get(&format!("{p}.attention.self.query.bias"), &[h])?;
            bqkv.extend(src.get(&format!("{p}.attention.self.key.bias"), &[h])?);
            bqkv.extend(src.get(&format!("{p}.attention.self.value.bias"), &[h])?);
            let (ao, fi, fo) = (
                format!("{p}.attention.output.dense"),
                format!("{p}.intermediate.dense"),
                format!("{p}.output.dense"),
            );
            layers.push(LayerWeights {
                wqkv: dense(qkv, 3 * h, h, &format!("{p}.attention.self"))?,
                bqkv,
                wo: dense(src.dense(&ao, h, h)?, h, h, &ao)?,
                bo: src.get(&format!("{ao}.bias"), &[h])?,
                ln1_w: src.get(&format!("{p}.attention.output.LayerNorm.weight"), &[h])?,
                ln1_b: src.get(&format!("{p}.attention.output.LayerNorm.bias"), &[h])?,
                wi: dense(src.dense(&fi, i, h)?, i, h, &fi)?,
                bi: src.get(&format!("{fi}.bias"), &[i])?,
                wo2: dense(src.dense(&fo, h, i)?, h, i, &fo)?,
                bo2: src.get(&format!("{fo}.bias"), &[h])?,
                ln2_w: src.get(&format!("{p}.output.LayerNorm.weight"), &[h])?,
                ln2_b: src.get(&format!("{p}.output.LayerNorm.bias"), &[h])?,
            });
        }
        let int8 = layers
            .iter()
            .any(|l| [&l.wqkv, &l.wo, &l.wi, &l.wo2].iter().any(|d| d.is_int8()));
        let kernel = if int8 {
            let k = Kernel::detect().map_err(TrainError::Other)?;
            if k == Kernel::Scalar {
                tracing::warn!(
                    "{}: int8 encoder on a CPU without AVX2: the portable int8 kernel runs, \
                     several times slower than the f32 model",
                    dir.display()
                );
            }
            Some(k)
        } else {
            None
        };
        Ok(Self {
            kernel,
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

    /// Whether any dense layer is int8 (a `distill quantize` model).
    pub(super) fn int8_kernel(&self) -> Option<Kernel> {
        self.kernel
    }

    /// Mean-pooled, L2-normalised embeddings of `seqs`, packed without padding.
    pub(super) fn embed(&self, seqs: &[&Encoded], threads: usize) -> Vec<f32> {
        let h = self.hidden;
        let (x, spans) = self.hidden_states(seqs, threads);
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

    /// The last layer's state of each sentence's first token (`[CLS]`), what a
    /// `BertForSequenceClassification` pooler reads.
    pub(super) fn first_token_states(&self, seqs: &[&Encoded], threads: usize) -> Vec<f32> {
        let h = self.hidden;
        let (x, spans) = self.hidden_states(seqs, threads);
        let mut out = vec![0f32; seqs.len() * h];
        for (o, &(start, n)) in out.chunks_exact_mut(h).zip(&spans) {
            if n > 0 {
                o.copy_from_slice(&x[start * h..(start + 1) * h]);
            }
        }
        out
    }

    /// The last layer's states of every token of `seqs`, packed end to end, and each sentence's
    /// (first row, rows).
    pub(super) fn hidden_states(
        &self,
        seqs: &[&Encoded],
        threads: usize,
    ) -> (Vec<f32>, Vec<(usize, usize)>) {
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

        let c = Compute {
            par: if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            },
            threads,
            kernel: self.kernel.unwrap_or(Kernel::Scalar),
        };
        let mut qkv = vec![0f32; total * 3 * h];
        let mut ctx = vec![0f32; total * h];
        let mut inter = vec![0f32; total * self.inter];
        for lw in &self.layers {
            fill_rows(&mut qkv, &lw.bqkv);
            lw.wqkv.matmul_acc(&mut qkv, &x, total, c);
            self.attention(&qkv, &mut ctx, &spans);
            add_rows(&mut x, &lw.bo);
            lw.wo.matmul_acc(&mut x, &ctx, total, c);
            layer_norm_rows(&mut x, h, &lw.ln1_w, &lw.ln1_b, self.eps);
            fill_rows(&mut inter, &lw.bi);
            lw.wi.matmul_acc(&mut inter, &x, total, c);
            activate(&mut inter, self.act);
            add_rows(&mut x, &lw.bo2);
            lw.wo2.matmul_acc(&mut x, &inter, total, c);
            layer_norm_rows(&mut x, h, &lw.ln2_w, &lw.ln2_b, self.eps);
        }
        (x, spans)
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
