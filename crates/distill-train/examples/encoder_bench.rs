//! Benchmark driver for scripts/bench/encoder_{inference,head}.sh: the distill side of the
//! encoder-head comparisons, through the library directly (no CLI flags to drift).
//!
//! ```text
//! encoder_bench throughput --model DIR --data CSV [--n 2048] [--batch 64] [--threads 2]
//! encoder_bench latency    --model DIR --data CSV [--n 300] [--threads 2]
//! encoder_bench train      --model DIR --data TRAIN.csv --test TEST.csv --out DIR --cache DIR
//!                          [--head logistic|mlp] [--threads 2] [--dev-fraction 0.1]
//! ```
//! Each prints one JSON object on its last line.

/// The same allocator as the `distill` binary (see `distill_train::alloc`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use candle_core::Device;
use distill_core::LabelSet;
use distill_train::encoder::embed::FrozenEncoder;
use distill_train::encoder::head;
use distill_train::{ModelMeta, TrainData, TrainOptions};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn read_csv(path: &str) -> Res<Vec<(String, String)>> {
    let mut r = csv::Reader::from_path(path)?;
    let headers = r.headers()?.clone();
    let ti = headers
        .iter()
        .position(|h| h == "text")
        .ok_or("no text column")?;
    let li = headers.iter().position(|h| h == "category" || h == "label");
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec?;
        out.push((
            rec[ti].to_string(),
            li.map(|i| rec[i].to_string()).unwrap_or_default(),
        ));
    }
    Ok(out)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).cloned().unwrap_or_default();
    let mut kv: HashMap<String, String> = HashMap::new();
    let mut i = 2;
    while i + 1 < args.len() {
        kv.insert(
            args[i].trim_start_matches("--").to_string(),
            args[i + 1].clone(),
        );
        i += 2;
    }
    let get = |k: &str, d: &str| kv.get(k).cloned().unwrap_or_else(|| d.to_string());
    let model = PathBuf::from(get("model", "models/base/all-MiniLM-L6-v2"));
    let threads: usize = get("threads", "2").parse()?;
    let rows = read_csv(&get("data", "datasets/banking77/test.csv"))?;
    let texts: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    match mode.as_str() {
        "throughput" => {
            let n: usize = get("n", "2048").parse()?;
            let batch: usize = get("batch", "64").parse()?;
            let repeat: usize = get("repeat", "3").parse()?;
            let enc = FrozenEncoder::load(&model, None, threads, &Device::Cpu)?;
            let sents: Vec<&str> = texts.iter().cycle().take(n).copied().collect();
            enc.embed(&sents[..batch.min(n) * 2], batch)?;
            let mut runs = Vec::with_capacity(repeat);
            for _ in 0..repeat {
                let t = Instant::now();
                let e = enc.embed(&sents, batch)?;
                std::hint::black_box(e);
                runs.push(sents.len() as f64 / t.elapsed().as_secs_f64());
            }
            let best = runs.iter().copied().fold(0f64, f64::max);
            let mut sorted = runs.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
            println!(
                "{}",
                serde_json::json!({"peer": "distill", "backend": enc.backend().as_str(),
                    "int8_kernel": enc.int8_kernel().map(|k| k.as_str()),
                    "sentences_per_s": best, "runs": runs, "median_per_s": median,
                    "n": n, "batch": batch, "threads": threads})
            );
        }
        "latency" => {
            let n: usize = get("n", "300").parse()?;
            let enc = FrozenEncoder::load(&model, None, threads, &Device::Cpu)?;
            for t in texts.iter().take(10) {
                enc.embed(&[t], 1)?;
            }
            let mut ms: Vec<f64> = texts
                .iter()
                .take(n)
                .map(|t| {
                    let s = Instant::now();
                    let e = enc.embed(&[t], 1);
                    std::hint::black_box(e.ok());
                    s.elapsed().as_secs_f64() * 1e3
                })
                .collect();
            ms.sort_by(|a, b| a.total_cmp(b));
            let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
            println!(
                "{}",
                serde_json::json!({"peer": "distill", "backend": enc.backend().as_str(),
                    "int8_kernel": enc.int8_kernel().map(|k| k.as_str()),
                    "p50_ms": pct(0.5), "p95_ms": pct(0.95), "n": ms.len()})
            );
        }
        "train" => {
            let t0 = Instant::now();
            let mut names: Vec<String> = rows.iter().map(|(_, l)| l.clone()).collect();
            names.sort();
            names.dedup();
            let labels = LabelSet::new(names);
            let mut all: Vec<(String, usize)> = rows
                .iter()
                .map(|(t, l)| (t.clone(), labels.index_of(l).unwrap_or(0)))
                .collect();
            let dev_fraction: f64 = get("dev-fraction", "0.1").parse()?;
            all.shuffle(&mut rand::rngs::StdRng::seed_from_u64(0));
            let n_dev = (all.len() as f64 * dev_fraction).round() as usize;
            let dev = all.split_off(all.len() - n_dev);
            let data = TrainData {
                task: "banking77".into(),
                labels,
                train: all,
                dev,
                sets: None,
                data_hash: "bench".into(),
                label_source: "gold".into(),
            };
            let out = PathBuf::from(get("out", "target/bench-encoder-head"));
            let opts = TrainOptions {
                out: out.clone(),
                seed: get("seed", "0").parse()?,
                device: Device::Cpu,
                threads,
                epochs: kv.get("epochs").map(|s| s.parse()).transpose()?,
                batch_size: kv.get("batch").map(|s| s.parse()).transpose()?,
                lr: kv.get("lr").map(|s| s.parse()).transpose()?,
                head_lr_mult: kv.get("head_lr_mult").map(|s| s.parse()).transpose()?,
                weight_decay: kv.get("l2").map(|s| s.parse()).transpose()?,
                max_len: None,
                patience: Some(5),
                class_balanced: false,
                dropout: kv.get("dropout").map(|s| s.parse()).transpose()?,
                base: Some(model.display().to_string()),
                offline: true,
                head: Some(get("head", "logistic")),
                cache_dir: Some(PathBuf::from(get("cache", "target/bench-embed-cache"))),
                progress: false,
                force: false,
            };
            let meta = head::train(&data, &opts)?;
            let wall = t0.elapsed().as_secs_f64();
            let test = read_csv(&get("test", "datasets/banking77/test.csv"))?;
            let student = head::load(&out, ModelMeta::load(&out)?, &Device::Cpu)?;
            let tt: Vec<&str> = test.iter().map(|(t, _)| t.as_str()).collect();
            let preds = student.predict(&tt, 1)?;
            let right = preds
                .iter()
                .zip(&test)
                .filter(|(p, (_, l))| &p.label == l)
                .count();
            println!(
                "{}",
                serde_json::json!({"peer": "distill", "train_wall_s": wall,
                    "embed_s": meta.hyper["embed_s"], "head_s": meta.hyper["head_s"],
                    "embeddings_computed": meta.hyper["embeddings_computed"],
                    "dev_accuracy": meta.dev_accuracy, "epochs": meta.epochs_run,
                    "test_accuracy": right as f64 / test.len() as f64,
                    "n_train": meta.n_train, "n_dev": meta.n_dev, "head": opts.head})
            );
        }
        other => {
            return Err(format!("unknown mode `{other}`: throughput | latency | train").into())
        }
    }
    Ok(())
}
