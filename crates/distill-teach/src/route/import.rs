//! `distill teach --import-outcomes FILE...`: a route dataset from recorded outcomes, no call
//! made. The files are CSV with a prompt column and, per tier, a column named like the tier's
//! model (or the tier) holding whether its answer was right (`True`/`False`); a
//! `<column>_response` column, when present, holds the answer itself. This is the layout of
//! RouteLLM's released evaluation data (MMLU, GSM8K).
//!
//! Imported outcomes carry no token counts, so each tier's cost is estimated: prompt tokens
//! counted with the tier's tokenizer (tiktoken for OpenAI-compatible models, bytes/3.5
//! otherwise) plus chat framing, completion tokens counted from the recorded answer or, without
//! one, `completion_tokens`; priced at the tier's `price_as` model.

use crate::dry_run::Tokenizer;
use crate::error::{Result, TeachError};
use distill_core::prices::PriceTable;
use distill_core::route::{RouteRecord, RouteSpec, TierOutcome};
use distill_core::{CoreError, RecordStatus, TaskSpec, Usage};
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// Chat framing tokens around one user message (OpenAI's cookbook rule).
const FRAMING_TOKENS: u64 = 7;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// JSONL files of prompts to leave out (RouteLLM's `contaminated_prompts.jsonl`: the
    /// `eval_prompt` field; else `prompt` or `text`).
    pub exclude: Vec<PathBuf>,
    /// Completion tokens assumed for an outcome without a recorded answer.
    pub completion_tokens: u64,
    pub prices: PriceTable,
}

#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub records: Vec<RouteRecord>,
    pub files: usize,
    pub excluded: usize,
    /// Per tier: the price-table model and whether it had a price.
    pub priced: Vec<(String, String, bool)>,
}

/// Reads recorded outcomes into route records (in file order, files sorted by name).
pub fn import_outcomes(
    spec: &TaskSpec,
    files: &[PathBuf],
    opts: &ImportOptions,
) -> Result<ImportReport> {
    let route = spec.route.as_ref().ok_or_else(|| {
        TeachError::Invalid(format!(
            "--import-outcomes needs a route task (kind = \"route\"); {} is not one",
            spec.path.display()
        ))
    })?;
    let excluded: HashSet<String> = read_excluded(&opts.exclude)?;
    let tokenizers: Vec<Tokenizer> = route
        .tiers
        .iter()
        .map(|t| Tokenizer::for_model(t.provider, &t.model))
        .collect();
    let mut report = ImportReport {
        priced: route
            .tiers
            .iter()
            .map(|t| {
                let m = RouteSpec::price_model(t).to_string();
                let known = opts.prices.get(&m).is_some();
                (t.name.clone(), m, known)
            })
            .collect(),
        ..Default::default()
    };
    let mut files: Vec<PathBuf> = files.to_vec();
    files.sort();
    let prompt_col = spec.input.text_column.clone();
    let category_col = route.options.category_column.clone();
    for path in &files {
        report.files += 1;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(false)
            .from_path(path)
            .map_err(|e| TeachError::file(path, format!("cannot read as CSV: {e}")))?;
        let headers = rdr
            .headers()
            .map_err(|e| TeachError::file(path, format!("no header row: {e}")))?
            .clone();
        let col = |name: &str| headers.iter().position(|h| h == name);
        let prompt_at = col(&prompt_col).or_else(|| col("prompt")).ok_or_else(|| {
            TeachError::Core(CoreError::spec(
                path,
                &prompt_col,
                "no prompt column (set input.text_column)",
            ))
        })?;
        let mut tier_cols = Vec::with_capacity(route.tiers.len());
        for t in &route.tiers {
            let at = col(&t.model).or_else(|| col(&t.name)).ok_or_else(|| {
                TeachError::Core(CoreError::spec(
                    path,
                    &t.model,
                    format!(
                        "no outcome column for tier `{}` (looked for `{}` and `{}`)",
                        t.name, t.model, t.name
                    ),
                ))
            })?;
            let name = headers.get(at).unwrap_or_default().to_string();
            tier_cols.push((at, col(&format!("{name}_response"))));
        }
        let cat_at = category_col.as_deref().and_then(col);
        for (row, rec) in rdr.records().enumerate() {
            let line = row as u64 + 2;
            let rec = rec
                .map_err(|e| TeachError::Core(CoreError::data(path, line, "row", e.to_string())))?;
            let prompt = rec.get(prompt_at).unwrap_or_default().to_string();
            if excluded.contains(&prompt) {
                report.excluded += 1;
                continue;
            }
            if prompt.trim().is_empty() {
                return Err(TeachError::Core(CoreError::data(
                    path,
                    line,
                    &prompt_col,
                    "empty prompt",
                )));
            }
            let mut tiers = Vec::with_capacity(route.tiers.len());
            for ((t, (at, resp_at)), tok) in route.tiers.iter().zip(&tier_cols).zip(&tokenizers) {
                let raw = rec.get(*at).unwrap_or_default();
                let passed = parse_bool(raw).ok_or_else(|| {
                    TeachError::Core(CoreError::data(
                        path,
                        line,
                        headers.get(*at).unwrap_or_default(),
                        format!("`{raw}` is not True/False"),
                    ))
                })?;
                let answer = resp_at.and_then(|a| rec.get(a)).map(str::to_string);
                let usage = Usage {
                    prompt_tokens: tok.count(&prompt) + FRAMING_TOKENS,
                    completion_tokens: answer
                        .as_deref()
                        .map(|a| tok.count(a))
                        .unwrap_or(opts.completion_tokens),
                    ..Default::default()
                };
                let cost = opts
                    .prices
                    .get(RouteSpec::price_model(t))
                    .map(|p| p.cost(&usage, false))
                    .unwrap_or(0.0);
                tiers.push(TierOutcome {
                    tier: t.name.clone(),
                    model: t.model.clone(),
                    passed: Some(passed),
                    score: None,
                    answer,
                    usage,
                    cost_usd: cost,
                    judge_cost_usd: 0.0,
                    latency_ms: 0,
                });
            }
            let category = match cat_at {
                Some(c) => rec.get(c).map(str::to_string),
                None => Some(stem.strip_prefix("mmlu_").unwrap_or(&stem).to_string()),
            };
            report.records.push(RouteRecord {
                id: format!("{stem}:{}", row + 1),
                text: prompt,
                turns: None,
                category,
                status: RecordStatus::Ok,
                tiers,
                source: "imported".into(),
                error: None,
            });
        }
    }
    if report.records.is_empty() {
        return Err(TeachError::Invalid(
            "--import-outcomes: no outcomes were read (every prompt excluded, or empty files)"
                .into(),
        ));
    }
    Ok(report)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "pass" => Some(true),
        "false" | "0" | "no" | "fail" => Some(false),
        _ => None,
    }
}

fn read_excluded(files: &[PathBuf]) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for path in files {
        let f = std::fs::File::open(path).map_err(|e| TeachError::io(path, e))?;
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| TeachError::io(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
                TeachError::Core(CoreError::data(path, i as u64 + 1, "record", e.to_string()))
            })?;
            let p = ["eval_prompt", "prompt", "text"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|x| x.as_str()))
                .ok_or_else(|| {
                    TeachError::Core(CoreError::data(
                        path,
                        i as u64 + 1,
                        "eval_prompt",
                        "no eval_prompt, prompt or text field",
                    ))
                })?;
            out.insert(p.to_string());
        }
    }
    Ok(out)
}

/// Writes route records as JSONL, atomically.
pub fn write_route_dataset(path: &Path, records: &[RouteRecord]) -> Result<()> {
    let mut f = distill_core::fsutil::AtomicFile::create(path)?;
    for r in records {
        serde_json::to_writer(&mut f, r)
            .map_err(|e| TeachError::file(path, format!("cannot serialise a record: {e}")))?;
        f.write_all(b"\n").map_err(|e| TeachError::io(path, e))?;
    }
    f.commit()?;
    Ok(())
}
