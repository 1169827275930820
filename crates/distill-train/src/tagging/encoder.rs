//! The fine-tuned extraction student: our BERT encoder ([`crate::encoder::bert`]) with a
//! token-classification head, every weight trained on BIO tags over word pieces, decoded by
//! [`viterbi`] under the tag grammar. Saved as `BertForTokenClassification` in the Hugging Face
//! layout (`config.json` with the tags as `id2label`, `model.safetensors`, the tokenizer), so
//! `transformers` loads it as it is.
//!
//! An input is `[CLS] text [SEP] context [SEP]`: the context columns' values (joined by
//! " ; ") are the second segment (token type 1), and only the text's pieces are tagged. A
//! text longer than the model's window is read in overlapping windows (half a window apart);
//! each piece takes its tag scores from the window where it sits furthest from an edge, so no
//! span past a cut is lost. Confidence, as for every tagger, is the least sure piece's
//! probability of the tag it was given.
//!
//! Training runs candle's differentiable model; a tagger loaded on the CPU (predict, eval,
//! serve) runs the frozen encoder's packed forward instead (sentences packed end to end, no
//! padding, fused kernels) with the head applied to every token state: the same logits within
//! 1e-4 (tests/encoder_tagger.rs), several times the throughput.

use super::model::{read_records, span_f1, TaggerMeta, TaggerReport, KIND};
use super::{decode, encode, viterbi, TagSet, TokenRange};
use crate::encoder::bert::{
    classifier_config_json, model_files, Batch, BertClassifier, BertConfig, Head, LoadOptions,
};
use crate::encoder::embed::{fill_rows, matmul_acc, transpose, Backend, Encoded, FrozenEncoder};
use crate::encoder::finetune::packed::{take_tensor, unused};
use crate::encoder::finetune::{copy_tokenizer_files, epoch_batches, say, Hyper, Trainer};
use crate::encoder::tokenize::TextTokenizer;
use crate::error::{Result, TrainError};
use crate::student::TrainOptions;
use candle_core::{Device, Tensor};
use distill_core::spans::Span;
use distill_core::spec::{Context, TaskSpec};
use std::path::Path;

/// A window's ids, segment ids and logits per position (see [`EncoderTagger::window_logits`]).
pub type WindowLogits = (Vec<u32>, Vec<u32>, Vec<Vec<f32>>);

/// `distill.json` `student` of this kind.
pub const STUDENT: &str = "encoder-tagger";

/// Inputs per forward pass at inference.
const INFER_BATCH: usize = 64;

pub struct EncoderTagger {
    model: Forward,
    tok: TextTokenizer,
    pub tags: TagSet,
    context_columns: Vec<String>,
    cls: u32,
    sep: u32,
    device: Device,
}

/// The token-classification forward a tagger runs: our BERT in candle (training, and any
/// device), or on the CPU the packed encoder forward ([`FrozenEncoder::token_states`], what
/// serving a loaded tagger runs: no padding, fused kernels) with the head applied to each
/// token's state. Both compute `classifier · h_t + b` over the last layer's states.
enum Forward {
    Candle(Box<BertClassifier>),
    Packed {
        encoder: Box<FrozenEncoder>,
        /// (hidden, tags): the head's weight transposed to (in, out).
        head_w_t: Vec<f32>,
        head_b: Vec<f32>,
    },
}

impl Forward {
    /// Raw logits of each window, `out[w][position][tag]`.
    fn logits(
        &self,
        windows: &[&Window],
        pad_id: u32,
        device: &Device,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        match self {
            Forward::Candle(model) => {
                let ids: Vec<&[u32]> = windows.iter().map(|w| w.ids.as_slice()).collect();
                let types: Vec<&[u32]> = windows.iter().map(|w| w.types.as_slice()).collect();
                let batch = Batch::from_segments(&ids, &types, pad_id, device)?;
                let mut all = model.forward(&batch, None)?.to_vec3::<f32>()?;
                // Padding positions past each window's end are dropped.
                for (rows, w) in all.iter_mut().zip(windows) {
                    rows.truncate(w.ids.len());
                }
                Ok(all)
            }
            Forward::Packed {
                encoder,
                head_w_t,
                head_b,
            } => {
                let seqs: Vec<Encoded> = windows
                    .iter()
                    .map(|w| Encoded {
                        ids: w.ids.clone(),
                        type_ids: w.types.clone(),
                    })
                    .collect();
                let (h, k) = (encoder.dim(), head_b.len());
                Ok(encoder
                    .token_states(&seqs)?
                    .into_iter()
                    .map(|x| {
                        let n = x.len() / h;
                        let mut out = vec![0f32; n * k];
                        fill_rows(&mut out, head_b);
                        matmul_acc(&mut out, &x, head_w_t, n, h, k, gemm::Parallelism::None);
                        out.chunks_exact(k).map(<[f32]>::to_vec).collect()
                    })
                    .collect())
            }
        }
    }

    /// On the CPU: the packed encoder and the head from a saved tagger's directory.
    fn packed(dir: &Path, max_len: usize, n_tags: usize) -> Result<Self> {
        let threads = rayon::current_num_threads();
        let (encoder, mut extra) = FrozenEncoder::load_with_extra(
            dir,
            Some(max_len),
            threads,
            &Device::Cpu,
            &["classifier."],
        )?;
        let h = encoder.dim();
        let w = take_tensor(dir, &mut extra, "classifier.weight", &[n_tags, h])?;
        let head_b = take_tensor(dir, &mut extra, "classifier.bias", &[n_tags])?;
        unused(dir, &extra)?;
        Ok(Forward::Packed {
            encoder: Box::new(encoder),
            head_w_t: transpose(&w, n_tags, h),
            head_b,
        })
    }
}

/// One window of an input, laid out for the encoder: its ids and segment ids, and which text
/// pieces it holds (`first..first + len`, at positions `1..1 + len`).
struct Window {
    ids: Vec<u32>,
    types: Vec<u32>,
    first: usize,
    len: usize,
}

/// An input's word pieces and the windows that cover them.
struct Laid {
    ranges: Vec<TokenRange>,
    windows: Vec<Window>,
}

impl EncoderTagger {
    fn new(
        model: Forward,
        tok: TextTokenizer,
        slots: Vec<String>,
        context_columns: Vec<String>,
        device: &Device,
    ) -> Result<Self> {
        let id = |t: &str| {
            tok.inner()
                .token_to_id(t)
                .ok_or_else(|| TrainError::Other(format!("the tokenizer has no {t} token")))
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        Ok(Self {
            model,
            tok,
            tags: TagSet::new(slots),
            context_columns,
            cls,
            sep,
            device: device.clone(),
        })
    }

    /// The model's window in tokens, special tokens and context included.
    pub fn max_len(&self) -> usize {
        self.tok.max_len
    }

    /// `text`'s word pieces.
    pub fn token_len(&self, text: &str) -> usize {
        self.tok.pieces(text).map(|p| p.len()).unwrap_or(0)
    }

    /// The second segment: the context columns' values, at most a quarter of the window.
    fn context_ids(&self, context: &Context) -> Result<Vec<u32>> {
        let text: Vec<&str> = self
            .context_columns
            .iter()
            .filter_map(|c| context.get(c).map(String::as_str))
            .filter(|v| !v.trim().is_empty())
            .collect();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<u32> = self
            .tok
            .pieces(&text.join(" ; "))?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.truncate(self.tok.max_len / 4);
        Ok(ids)
    }

    fn lay_out(&self, text: &str, context: &Context) -> Result<Laid> {
        let pieces = self.tok.pieces(text)?;
        let ctx = self.context_ids(context)?;
        let room = self
            .tok
            .max_len
            .saturating_sub(2 + if ctx.is_empty() { 0 } else { ctx.len() + 1 })
            .max(1);
        let n = pieces.len();
        let mut starts = vec![0usize];
        if n > room {
            let stride = (room / 2).max(1);
            let mut s = 0;
            while s + room < n {
                s = (s + stride).min(n - room);
                starts.push(s);
            }
        }
        let windows = starts
            .into_iter()
            .map(|first| {
                let len = room.min(n - first);
                let mut ids = Vec::with_capacity(len + ctx.len() + 3);
                ids.push(self.cls);
                ids.extend(pieces[first..first + len].iter().map(|p| p.0));
                ids.push(self.sep);
                let mut types = vec![0u32; ids.len()];
                if !ctx.is_empty() {
                    ids.extend(&ctx);
                    ids.push(self.sep);
                    types.resize(ids.len(), 1);
                }
                Window {
                    ids,
                    types,
                    first,
                    len,
                }
            })
            .collect();
        Ok(Laid {
            ranges: pieces.into_iter().map(|p| p.1).collect(),
            windows,
        })
    }

    /// Tag log-probabilities of every window, `out[w][position][tag]`, in order.
    fn window_scores(&self, windows: &[&Window]) -> Result<Vec<Vec<Vec<f32>>>> {
        let mut order: Vec<usize> = (0..windows.len()).collect();
        order.sort_by_key(|&i| windows[i].ids.len());
        let mut out = vec![Vec::new(); windows.len()];
        for chunk in order.chunks(INFER_BATCH) {
            let batch: Vec<&Window> = chunk.iter().map(|&i| windows[i]).collect();
            let logits = self.model.logits(&batch, self.tok.pad_id, &self.device)?;
            for (&i, mut rows) in chunk.iter().zip(logits) {
                rows.iter_mut().for_each(|r| log_softmax(r));
                out[i] = rows;
            }
        }
        Ok(out)
    }

    /// Spans and confidence for each input, in order.
    pub fn predict_batch(&self, inputs: &[(&str, &Context)]) -> Result<Vec<(Vec<Span>, f32)>> {
        let laid: Vec<Laid> = inputs
            .iter()
            .map(|(t, c)| self.lay_out(t, c))
            .collect::<Result<_>>()?;
        let windows: Vec<&Window> = laid.iter().flat_map(|l| &l.windows).collect();
        let mut scores = self.window_scores(&windows)?.into_iter();
        let mut out = Vec::with_capacity(inputs.len());
        for ((text, _), l) in inputs.iter().zip(&laid) {
            let mine: Vec<Vec<Vec<f32>>> = scores.by_ref().take(l.windows.len()).collect();
            let rows: Vec<Vec<f32>> = (0..l.ranges.len())
                .map(|i| {
                    // The window where piece i is furthest from an edge.
                    let (w, win) = l
                        .windows
                        .iter()
                        .enumerate()
                        .filter(|(_, w)| w.first <= i && i < w.first + w.len)
                        .max_by_key(|(_, w)| (i - w.first).min(w.first + w.len - 1 - i))
                        .expect("the windows cover every piece");
                    mine[w][1 + i - win.first].clone()
                })
                .collect();
            let path = viterbi(&rows, &self.tags);
            let confidence = path
                .iter()
                .zip(&rows)
                .map(|(&t, r)| r[t].exp())
                .fold(1.0f32, f32::min);
            out.push((decode(&path, &l.ranges, text, &self.tags), confidence));
        }
        Ok(out)
    }
}

/// In place: a row of logits to log-probabilities.
fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
    row.iter_mut().for_each(|v| *v -= log_sum);
}

/// Loads a directory [`train`] wrote: on the CPU onto the packed encoder forward (unless
/// `DISTILL_ENCODER_BACKEND=candle`), elsewhere onto candle.
pub fn load(dir: &Path, meta: &TaggerMeta, device: &Device) -> Result<EncoderTagger> {
    load_backend(dir, meta, device, Backend::for_device(device))
}

/// [`load`] onto a chosen forward (tests compare the two).
pub fn load_backend(
    dir: &Path,
    meta: &TaggerMeta,
    device: &Device,
    backend: Backend,
) -> Result<EncoderTagger> {
    let (cfg_path, weights, tok_path) = model_files(dir);
    let (cfg, _) = BertConfig::from_file(&cfg_path)?;
    let max_len = meta
        .max_len
        .unwrap_or(crate::encoder::finetune::DEFAULT_MAX_LEN);
    let tok = TextTokenizer::from_file(&tok_path, max_len, cfg.pad_token_id)?;
    let n_tags = TagSet::new(meta.slots.clone()).len();
    let model = if backend == Backend::Fast && device.is_cpu() {
        Forward::packed(dir, max_len, n_tags)?
    } else {
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .map_err(|e| TrainError::model(&weights, format!("cannot read safetensors: {e}")))?;
        let (model, report) = BertClassifier::from_tensors_with_head(
            Head::Token,
            tensors,
            &weights,
            &cfg,
            n_tags,
            device,
            LoadOptions::inference(),
        )?;
        report.refuse_unused(dir)?;
        Forward::Candle(Box::new(model))
    };
    EncoderTagger::new(
        model,
        tok,
        meta.slots.clone(),
        meta.context_columns.clone(),
        device,
    )
}

/// A training input laid out as one window: ids, segments, and each position's tag with
/// whether it counts (text pieces only).
struct TagExample {
    ids: Vec<u32>,
    types: Vec<u32>,
    tags: Vec<u32>,
    counts: Vec<f32>,
}

/// Fine-tunes the base encoder (`--base`) on a teacher dataset's spans (a seeded
/// `dev_fraction` held out; the epoch with the best dev span F1 is kept) and writes the model
/// directory.
pub fn train(
    spec: &TaskSpec,
    data: &Path,
    opts: &TrainOptions,
    dev_fraction: f64,
) -> Result<TaggerReport> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let started = std::time::Instant::now();
    let hp = Hyper::from_options(opts)?;
    let mut records: Vec<(String, Context, Vec<Span>)> = read_records(data, spec)?
        .into_iter()
        .filter_map(|r| Some((r.text, r.context, r.spans?)))
        .collect();
    if records.is_empty() {
        return Err(distill_core::CoreError::data(
            data,
            1,
            "output.spans",
            "no usable (status ok) extraction records",
        )
        .into());
    }
    records.shuffle(&mut rand::rngs::StdRng::seed_from_u64(hp.seed));
    let n_dev = ((records.len() as f64 * dev_fraction) as usize).min(records.len() - 1);
    let (dev, train) = records.split_at(n_dev);

    let base = crate::encoder::base_of(opts)?;
    let (cfg_path, _, tok_path) = model_files(&base.dir);
    let (mut cfg, raw_cfg) = BertConfig::from_file(&cfg_path)?;
    if let Some(p) = opts.dropout {
        if !(0.0..1.0).contains(&p) {
            return Err(TrainError::Other(format!(
                "--dropout must be in [0, 1), got {p}"
            )));
        }
        cfg.hidden_dropout_prob = p;
        cfg.attention_probs_dropout_prob = p;
        cfg.classifier_dropout = None;
    }
    let max_len = hp.max_len.min(cfg.max_position_embeddings);
    let tok = TextTokenizer::from_file(&tok_path, max_len, cfg.pad_token_id)?;
    let slots = spec.labels.names.clone();
    let n_tags = TagSet::new(slots.clone()).len();
    let tensors = candle_core::safetensors::load_buffer(
        &crate::encoder::weights::read(&base.dir)?,
        &Device::Cpu,
    )
    .map_err(|e| TrainError::model(&base.dir, format!("cannot read safetensors: {e}")))?;
    let (model, report) = BertClassifier::from_tensors_with_head(
        Head::Token,
        tensors,
        &base.dir,
        &cfg,
        n_tags,
        &opts.device,
        LoadOptions {
            trainable: true,
            init_missing_head: true,
            seed: hp.seed,
        },
    )?;
    if report.unused.iter().any(|n| !n.contains("pooler")) {
        tracing::warn!(unused = ?report.unused, "base checkpoint tensors not used by the tagger");
    }
    let tagger = EncoderTagger::new(
        Forward::Candle(Box::new(model)),
        tok,
        slots.clone(),
        spec.input.context_columns.clone(),
        &opts.device,
    )?;

    // Training inputs: one window each (a longer text is cut, and its spans past the cut
    // counted as lost).
    let (mut widened, mut lost, mut n_spans, mut n_pieces) = (0, 0, 0, 0);
    let mut examples = Vec::with_capacity(train.len());
    for (text, context, spans) in train {
        let laid = tagger.lay_out(text, context)?;
        let w = &laid.windows[0];
        let ranges = &laid.ranges[..w.len];
        let e = encode(spans, ranges, &tagger.tags);
        widened += e.misaligned;
        lost += e.lost;
        n_spans += spans.len();
        n_pieces += ranges.len();
        let mut tags = vec![0u32; w.ids.len()];
        let mut counts = vec![0f32; w.ids.len()];
        for (i, &t) in e.tags.iter().enumerate() {
            tags[1 + i] = t as u32;
            counts[1 + i] = 1.0;
        }
        examples.push(TagExample {
            ids: w.ids.clone(),
            types: w.types.clone(),
            tags,
            counts,
        });
    }
    let ids: Vec<Vec<u32>> = examples.iter().map(|e| e.ids.clone()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(hp.seed);
    let total_steps = examples.len().div_ceil(hp.batch_size) * hp.epochs;
    let mut trainer = Trainer::new(tagger.candle()?, &hp, total_steps, None, &opts.device)?;
    let vars = tagger.candle()?.vars();
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new((examples.len() * hp.epochs) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "fine-tune tagger {bar:30} {pos}/{len} examples {per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let dev_inputs: Vec<(&str, &Context)> = dev.iter().map(|d| (d.0.as_str(), &d.1)).collect();
    let dev_gold: Vec<Vec<Span>> = dev.iter().map(|d| d.2.clone()).collect();
    let mut best: Option<(f64, Vec<Tensor>)> = None;
    let (mut stale, mut epochs_run, mut seen, mut train_s) = (0, 0, 0usize, 0f64);
    for epoch in 0..hp.epochs {
        epochs_run = epoch + 1;
        let t0 = std::time::Instant::now();
        for chunk in epoch_batches(&ids, hp.batch_size, &mut rng) {
            let seqs: Vec<&[u32]> = chunk.iter().map(|&i| examples[i].ids.as_slice()).collect();
            let types: Vec<&[u32]> = chunk
                .iter()
                .map(|&i| examples[i].types.as_slice())
                .collect();
            let batch = Batch::from_segments(&seqs, &types, tagger.tok.pad_id, &opts.device)?;
            let s = batch.ids.dims2()?.1;
            let (mut tags, mut counts) = (vec![0u32; chunk.len() * s], vec![0f32; chunk.len() * s]);
            for (r, &i) in chunk.iter().enumerate() {
                let e = &examples[i];
                tags[r * s..r * s + e.tags.len()].copy_from_slice(&e.tags);
                counts[r * s..r * s + e.counts.len()].copy_from_slice(&e.counts);
            }
            let n = tags.len();
            let stats = trainer.step_tags(
                &batch,
                &Tensor::from_vec(tags, n, &opts.device)?,
                &Tensor::from_vec(counts, n, &opts.device)?,
            )?;
            seen += chunk.len();
            bar.inc(chunk.len() as u64);
            bar.set_message(format!("epoch {} loss {:.4}", epoch + 1, stats.loss));
        }
        train_s += t0.elapsed().as_secs_f64();
        if dev.is_empty() {
            continue;
        }
        let predicted: Vec<Vec<Span>> = tagger
            .predict_batch(&dev_inputs)?
            .into_iter()
            .map(|p| p.0)
            .collect();
        let f1 = span_f1(&dev_gold, &predicted);
        say(
            &bar,
            opts.progress,
            format!("epoch {}: dev span F1 {f1:.4}", epoch + 1),
        );
        if best.as_ref().is_none_or(|b| f1 > b.0) {
            let snapshot = vars
                .iter()
                .map(|(_, v)| Ok(v.as_detached_tensor().copy()?))
                .collect::<Result<Vec<_>>>()?;
            best = Some((f1, snapshot));
            stale = 0;
        } else {
            stale += 1;
            if stale >= hp.patience {
                say(
                    &bar,
                    opts.progress,
                    format!("early stop: dev span F1 has not improved for {stale} epoch(s)"),
                );
                break;
            }
        }
    }
    bar.finish_and_clear();
    let dev_span_f1 = match best {
        Some((f1, snapshot)) => {
            for ((_, v), t) in vars.iter().zip(snapshot) {
                v.set(&t)?;
            }
            Some(f1)
        }
        None => None,
    };
    drop(trainer);
    tracing::info!(
        examples_per_s = seen as f64 / train_s.max(1e-9),
        "tagger fine-tune done"
    );

    let meta = TaggerMeta {
        kind: KIND.into(),
        student: STUDENT.into(),
        task: spec.name.clone(),
        slots: slots.clone(),
        context_columns: spec.input.context_columns.clone(),
        buckets: 0,
        created: chrono::Utc::now().to_rfc3339(),
        train_inputs: train.len(),
        dev_inputs: dev.len(),
        dev_span_f1,
        widened_spans: widened,
        base_model: Some(base.source.clone()),
        max_len: Some(max_len),
        epochs_run: Some(epochs_run),
        device: Some(crate::device::device_name(&opts.device)),
        train_wall_s: Some(started.elapsed().as_secs_f64()),
        threads: Some(rayon::current_num_threads()),
    };
    let tag_names: Vec<String> = (0..n_tags).map(|t| tagger.tags.name(t)).collect();
    let mut config = classifier_config_json(&raw_cfg, &tag_names);
    if let serde_json::Value::Object(m) = &mut config {
        m.insert(
            "architectures".into(),
            serde_json::json!(["BertForTokenClassification"]),
        );
        m.remove("problem_type");
    }
    crate::write_model_dir(&opts.out, opts.force, |dir| {
        let write_json = |name: &str, v: &serde_json::Value| -> Result<()> {
            let p = dir.join(name);
            let text = serde_json::to_string_pretty(v)
                .map_err(|e| TrainError::Other(format!("{name}: {e}")))?;
            std::fs::write(&p, text).map_err(|e| TrainError::io(&p, e))
        };
        write_json("config.json", &config)?;
        tagger.candle()?.save(&dir.join("model.safetensors"))?;
        copy_tokenizer_files(&base.dir, dir)?;
        let meta_json = serde_json::to_value(&meta)
            .map_err(|e| TrainError::Other(format!("distill.json: {e}")))?;
        write_json("distill.json", &meta_json)
    })?;
    Ok(TaggerReport {
        meta,
        stats: super::linear::TaggerTrainStats {
            tokens: n_pieces,
            spans: n_spans,
            widened,
            lost,
        },
        seconds: started.elapsed().as_secs_f64(),
    })
}

impl EncoderTagger {
    /// The candle model a tagger trains (absent for one loaded onto the packed CPU forward).
    fn candle(&self) -> Result<&BertClassifier> {
        match &self.model {
            Forward::Candle(m) => Ok(m),
            Forward::Packed { .. } => Err(TrainError::Other(
                "a tagger on the packed CPU forward is not trainable".into(),
            )),
        }
    }

    /// The first window of an input as the model sees it (ids, segment ids) and its raw
    /// logits per position, for checking the export against `transformers`.
    pub fn window_logits(&self, text: &str, context: &Context) -> Result<WindowLogits> {
        let laid = self.lay_out(text, context)?;
        let w = &laid.windows[0];
        let logits = self
            .model
            .logits(&[w], self.tok.pad_id, &self.device)?
            .remove(0);
        Ok((w.ids.clone(), w.types.clone(), logits))
    }
}

impl super::SpanTagger for EncoderTagger {
    fn predict_batch(&self, inputs: &[(&str, &Context)]) -> Result<Vec<(Vec<Span>, f32)>> {
        EncoderTagger::predict_batch(self, inputs)
    }
    fn token_len(&self, text: &str) -> usize {
        EncoderTagger::token_len(self, text)
    }
}
