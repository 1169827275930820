//! Extraction inference throughput: an encoder (or linear) tagger's `predict_batch` over a
//! JSONL of turns (`text` and the tagger's context columns), in batches, repeated; prints the
//! median sentences per second as JSON (scripts/bench/extract_inference.sh compares it with
//! `transformers`' AutoModelForTokenClassification on the same turns).
//!
//! ```text
//! tag_throughput --model DIR --data test.jsonl [--n 2048] [--batch 64] [--reps 3]
//! ```

/// The same allocator as the `distill` binary (see `distill_train::alloc`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use distill_core::spec::Context;
use std::io::BufRead;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let model = get("--model").ok_or("--model DIR")?;
    let data = get("--data").ok_or("--data TURNS.jsonl")?;
    let n: usize = get("--n").and_then(|v| v.parse().ok()).unwrap_or(2048);
    let batch: usize = get("--batch").and_then(|v| v.parse().ok()).unwrap_or(64);
    let reps: usize = get("--reps").and_then(|v| v.parse().ok()).unwrap_or(3);
    let (tagger, meta) = distill_train::tagging::model::load(
        std::path::Path::new(&model),
        &candle_core::Device::Cpu,
    )?;
    let mut turns: Vec<(String, Context)> = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(&data)?).lines() {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let ctx: Context = meta
            .context_columns
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    distill_core::input::context_text(v.get(c)).unwrap_or_default(),
                )
            })
            .collect();
        turns.push((v["text"].as_str().unwrap_or_default().to_string(), ctx));
        if turns.len() == n {
            break;
        }
    }
    let asked: Vec<(&str, &Context)> = turns.iter().map(|(t, c)| (t.as_str(), c)).collect();
    let run = || -> Res<f64> {
        let t = std::time::Instant::now();
        for chunk in asked.chunks(batch) {
            tagger.predict_batch(chunk)?;
        }
        Ok(asked.len() as f64 / t.elapsed().as_secs_f64())
    };
    run()?; // warm-up
    let mut rates: Vec<f64> = (0..reps).map(|_| run()).collect::<Res<_>>()?;
    rates.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"sentences_per_s": rates[rates.len() / 2], "n": asked.len(),
            "batch": batch, "reps": reps, "threads": rayon::current_num_threads()})
    );
    Ok(())
}
