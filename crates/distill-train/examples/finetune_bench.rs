//! Benchmark driver for scripts/bench/finetune.sh: full fine-tuning throughput of the
//! `encoder-finetune` training step (forward with dropout, cross-entropy, backward, clipping,
//! AdamW), through the same `Trainer` that `distill train` runs.
//!
//! ```text
//! finetune_bench --model DIR --data TRAIN.csv [--batch 32] [--max-len 64] [--steps 20]
//!                [--warmup 3] [--threads 2]
//! ```
//! Batches are fixed so every peer sees the same ones: example `(i * 7919) % n` in order, cut
//! into batches, each padded to its longest row. Prints one JSON object on its last line.

/// The same allocator as the `distill` binary (see `distill_train::alloc`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::{Device, Tensor};
use distill_train::encoder::bert::{model_files, Batch, BertClassifier, BertConfig, LoadOptions};
use distill_train::encoder::finetune::{Hyper, Trainer};
use distill_train::encoder::tokenize::TextTokenizer;
use std::collections::BTreeMap;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let num = |k: &str, d: usize| get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let model_dir = std::path::PathBuf::from(get("--model").ok_or("--model DIR")?);
    let data = get("--data").ok_or("--data CSV")?;
    let (batch, max_len) = (num("--batch", 32), num("--max-len", 64));
    let (steps, warmup, threads) = (num("--steps", 20), num("--warmup", 3), num("--threads", 2));
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();

    let mut r = csv::Reader::from_path(&data)?;
    let mut rows = Vec::new();
    for rec in r.deserialize::<BTreeMap<String, String>>() {
        let rec = rec?;
        rows.push((rec["text"].clone(), rec["category"].clone()));
    }
    let mut names: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
    names.sort();
    names.dedup();
    let n = rows.len();
    let need = batch * (steps + warmup);
    let picked: Vec<usize> = (0..need).map(|i| (i * 7919) % n).collect();

    let (cfg_path, weights, tok_path) = model_files(&model_dir);
    let (cfg, _) = BertConfig::from_file(&cfg_path)?;
    let tok = TextTokenizer::from_file(&tok_path, max_len, cfg.pad_token_id)?;
    let texts: Vec<&str> = picked.iter().map(|&i| rows[i].0.as_str()).collect();
    let ids = tok.encode_batch(&texts)?;
    let labels: Vec<u32> = picked
        .iter()
        .map(|&i| names.binary_search(&rows[i].1).unwrap_or(0) as u32)
        .collect();
    let dev = Device::Cpu;
    let (model, _) = BertClassifier::load(
        &weights,
        &cfg,
        names.len(),
        &dev,
        LoadOptions {
            trainable: true,
            init_missing_head: true,
            seed: 42,
        },
    )?;
    let hp = Hyper {
        batch_size: batch,
        max_len,
        lr: 1e-4,
        weight_decay: 0.01,
        epochs: 1,
        warmup_frac: 0.1,
        clip_norm: 1.0,
        patience: 1,
        class_balanced: false,
        seed: 42,
        head_lr_mult: 10.0,
    };
    let mut trainer = Trainer::new(&model, &hp, steps + warmup, None, &dev)?;
    let (mut timed_s, mut fwd, mut bwd, mut upd, mut tokens) = (0f64, 0f64, 0f64, 0f64, 0usize);
    let mut last_loss = 0f32;
    for s in 0..steps + warmup {
        let range = s * batch..(s + 1) * batch;
        let seqs: Vec<&[u32]> = ids[range.clone()].iter().map(|v| v.as_slice()).collect();
        let t0 = Instant::now();
        let b = Batch::from_ids(&seqs, tok.pad_id, &dev)?;
        let y = Tensor::new(&labels[range], &dev)?;
        let st = trainer.step(&b, &y)?;
        let el = t0.elapsed().as_secs_f64();
        last_loss = st.loss;
        if s >= warmup {
            timed_s += el;
            fwd += st.forward_s;
            bwd += st.backward_s;
            upd += st.update_s;
            tokens += b.ids.dims2()?.1 * batch;
        }
        eprintln!(
            "step {s}: {el:.3}s (fwd {:.3} bwd {:.3} upd {:.3}) loss {:.4}",
            st.forward_s, st.backward_s, st.update_s, st.loss
        );
    }
    let tokens_per_step = tokens as f64 / steps as f64;
    let matmul_gflops = matmul_probe(tokens_per_step.round() as usize, &dev)?;
    println!(
        "{}",
        serde_json::json!({
            "impl": "distill",
            "allocator": "mimalloc (freed memory kept while training)",
            "matmul_gflops": matmul_gflops,
            "examples_per_s": (steps * batch) as f64 / timed_s,
            "step_s": timed_s / steps as f64,
            "forward_s": fwd / steps as f64,
            "backward_s": bwd / steps as f64,
            "update_s": upd / steps as f64,
            "padded_tokens_per_step": tokens_per_step,
            "last_loss": last_loss,
            "batch": batch, "max_len": max_len, "steps": steps, "threads": threads,
        })
    );
    Ok(())
}

/// GFLOP/s of the matmul that dominates a step (the feed-forward up-projection: tokens × 384
/// times 384 × 1536), through the same candle call the model uses: the peer's probe does the
/// same, so a peer far below its own matmul speed shows in the report.
fn matmul_probe(tokens: usize, dev: &Device) -> Res<f64> {
    let (m, k, n) = (tokens.max(1), 384, 1536);
    let a = Tensor::randn(0f32, 1.0, (m, k), dev)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), dev)?;
    for _ in 0..3 {
        a.matmul(&b)?;
    }
    let reps = 30;
    let t = Instant::now();
    for _ in 0..reps {
        a.matmul(&b)?;
    }
    Ok(2.0 * (m * k * n * reps) as f64 / t.elapsed().as_secs_f64() / 1e9)
}
