//! Prints a student's raw logits, for checking exported models against other runtimes
//! (scripts/check_hf_compat.py compares them with `transformers`).
//!
//! ```text
//! emit_logits --model DIR --input TEXTS.jsonl [--threads 2]
//! ```
//! Input: one JSON object per line with a `text` field. Output: one JSON object per input line,
//! `{"text": ..., "logits": [...]}`, in input order, through the same `load_student` and
//! `Student::logits` that `distill predict` uses. For an encoder tagger (an extract task's
//! `encoder-finetune` student), inputs may carry a `context` object, and each output line is
//! the first window as the model sees it: `{"text", "ids", "type_ids", "logits": [[per tag]
//! per position]}`.

use distill_train::load_student;
use std::io::{BufRead, Write};

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
    let input = get("--input").ok_or("--input TEXTS.jsonl")?;
    if let Some(t) = get("--threads").and_then(|t| t.parse::<usize>().ok()) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .ok();
    }
    let mut texts = Vec::new();
    for line in std::io::BufReader::new(std::fs::File::open(&input)?).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)?;
        texts.push(
            v["text"]
                .as_str()
                .ok_or("every input line needs a string `text`")?
                .to_string(),
        );
    }
    let dir = std::path::Path::new(&model);
    if distill_train::tagging::model::is_tagger_dir(dir) {
        return emit_token_logits(dir, &input);
    }
    let student = load_student(dir, &candle_core::Device::Cpu)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let logits = student.logits(&refs)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (t, l) in texts.iter().zip(logits) {
        writeln!(out, "{}", serde_json::json!({"text": t, "logits": l}))?;
    }
    Ok(())
}

fn emit_token_logits(dir: &std::path::Path, input: &str) -> Res<()> {
    let text = std::fs::read_to_string(dir.join("distill.json"))?;
    let meta: distill_train::tagging::model::TaggerMeta = serde_json::from_str(&text)?;
    let tagger = distill_train::tagging::encoder::load(dir, &meta, &candle_core::Device::Cpu)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for line in std::io::BufReader::new(std::fs::File::open(input)?).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let t = v["text"]
            .as_str()
            .ok_or("every input line needs a string `text`")?;
        let context: distill_core::spec::Context = match v.get("context") {
            Some(c) => serde_json::from_value(c.clone())?,
            None => Default::default(),
        };
        let (ids, types, logits) = tagger.window_logits(t, &context)?;
        writeln!(
            out,
            "{}",
            serde_json::json!({"text": t, "ids": ids, "type_ids": types, "logits": logits})
        )?;
    }
    Ok(())
}
