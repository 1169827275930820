//! Routing tasks (`kind = "route"`): which model tier can answer a free-form request well
//! enough. The spec names the tiers (cheapest first), the judge that grades their answers and
//! the playbook's heuristic; the route dataset holds, per prompt, every tier's outcome.
//!
//! A router learns, for each tier but the last, "this tier's answer passes"; at run time a
//! request goes to the cheapest tier whose calibrated pass probability reaches the threshold,
//! and to the top tier otherwise.
//!
//! Route dataset (JSONL, one record per prompt):
//! ```text
//! {"id": "17", "text": "<prompt>", "category": "abstract_algebra"|null, "status": "ok",
//!  "tiers": [{"tier": "mixtral", "model": "...", "passed": true, "score": null,
//!             "answer": "..."|null, "usage": {...}, "cost_usd": 0.0003, "judge_cost_usd": 0.0,
//!             "latency_ms": 812}, ...],
//!  "source": "imported"|"judged", "error": null}
//! ```

use crate::error::{CoreError, Result};
use crate::record::{RecordStatus, Usage};
use crate::spec::{Provider, TeacherSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

/// One model a request can be sent to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// Short name used in reports and records (`mixtral`, `gpt-4`).
    pub name: String,
    pub provider: Provider,
    /// The model as the provider names it; recorded outcomes are matched on it too.
    pub model: String,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Price it as this price-table model (e.g. a hosted Mixtral's); default: `model`.
    #[serde(default)]
    pub price_as: Option<String>,
    #[serde(default = "default_answer_tokens")]
    pub max_tokens: u32,
    #[serde(default)]
    pub temperature: f32,
    #[serde(default)]
    pub rpm: u32,
    #[serde(default)]
    pub tpm: u32,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_answer_tokens() -> u32 {
    1024
}
fn default_timeout() -> u64 {
    120
}

/// How the judge grades an answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Rubric {
    /// PASS or FAIL.
    #[default]
    PassFail,
    /// A 1–10 score; passing at `pass_mark`.
    Score,
}

/// The model that grades each tier's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeSpec {
    pub provider: Provider,
    pub model: String,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub rubric: Rubric,
    /// Score rubric: an answer passes at this score or above.
    #[serde(default = "default_pass_mark")]
    pub pass_mark: f64,
    #[serde(default = "default_judge_tokens")]
    pub max_tokens: u32,
    #[serde(default)]
    pub price_as: Option<String>,
    #[serde(default)]
    pub rpm: u32,
    #[serde(default)]
    pub tpm: u32,
}

fn default_pass_mark() -> f64 {
    7.0
}
fn default_judge_tokens() -> u32 {
    16
}

/// `[route]`: where the prompts' extra columns are and the playbook's heuristic router.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RouteOptions {
    /// Column holding a category (MMLU's subject): the category-prior baseline and the
    /// stratified split use it.
    #[serde(default)]
    pub category_column: Option<String>,
    /// Column with a reference answer shown to the judge.
    #[serde(default)]
    pub reference_column: Option<String>,
    /// Heuristic baseline: send to the top tier when the prompt has at least this many tokens…
    #[serde(default)]
    pub long_prompt_tokens: Option<u64>,
    /// …or contains one of these (case-insensitive) keywords.
    #[serde(default)]
    pub keywords: Vec<String>,
}

/// Everything a route task adds to a spec.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Cheapest first; at least two.
    pub tiers: Vec<TierSpec>,
    pub judge: Option<JudgeSpec>,
    pub options: RouteOptions,
}

impl RouteSpec {
    /// Validates the tiers (at least two, unique names) and the judge.
    pub fn new(
        tiers: Vec<TierSpec>,
        judge: Option<JudgeSpec>,
        options: RouteOptions,
        path: &Path,
    ) -> Result<Self> {
        if tiers.len() < 2 {
            return Err(CoreError::spec(
                path,
                "tier",
                "a route task needs at least two [[tier]] tables, cheapest first",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in tiers.iter().enumerate() {
            if t.name.trim().is_empty() || !seen.insert(t.name.as_str()) {
                return Err(CoreError::spec(
                    path,
                    &format!("tier[{i}].name"),
                    "every tier needs a unique, non-empty name",
                ));
            }
            if t.model.trim().is_empty() {
                return Err(CoreError::spec(
                    path,
                    &format!("tier[{i}].model"),
                    "must not be empty",
                ));
            }
        }
        if let Some(j) = &judge {
            if !(1.0..=10.0).contains(&j.pass_mark) {
                return Err(CoreError::spec(
                    path,
                    "judge.pass_mark",
                    "must be between 1 and 10",
                ));
            }
        }
        Ok(RouteSpec {
            tiers,
            judge,
            options,
        })
    }

    pub fn tier_index(&self, name: &str) -> Option<usize> {
        self.tiers.iter().position(|t| t.name == name)
    }

    /// The name the price table knows a tier by.
    pub fn price_model(tier: &TierSpec) -> &str {
        tier.price_as.as_deref().unwrap_or(&tier.model)
    }

    /// A tier as a teacher, for the teach client (free-form answers, no schema).
    pub fn tier_teacher(tier: &TierSpec) -> TeacherSpec {
        TeacherSpec {
            provider: tier.provider,
            model: tier.model.clone(),
            base_url: tier.base_url.clone(),
            api_key_env: tier.api_key_env.clone(),
            max_tokens: tier.max_tokens,
            max_tokens_field: Default::default(),
            temperature: tier.temperature,
            system_prompt: String::new(),
            user_template: "{text}".into(),
            rpm: tier.rpm,
            tpm: tier.tpm,
            timeout_s: tier.timeout_s,
        }
    }

    /// The judge as a teacher.
    pub fn judge_teacher(judge: &JudgeSpec) -> TeacherSpec {
        TeacherSpec {
            provider: judge.provider,
            model: judge.model.clone(),
            base_url: judge.base_url.clone(),
            api_key_env: judge.api_key_env.clone(),
            max_tokens: judge.max_tokens,
            max_tokens_field: Default::default(),
            temperature: 0.0,
            system_prompt: judge_system_prompt(judge.rubric).into(),
            user_template: "{text}".into(),
            rpm: judge.rpm,
            tpm: judge.tpm,
            timeout_s: 60,
        }
    }
}

/// What the judge is told.
pub fn judge_system_prompt(rubric: Rubric) -> &'static str {
    match rubric {
        Rubric::PassFail => {
            "You grade an AI assistant's answer to a user's request. Reply with exactly one word: \
             PASS if the answer is correct and fully serves the request, FAIL otherwise."
        }
        Rubric::Score => {
            "You grade an AI assistant's answer to a user's request on a scale of 1 to 10 \
             (10: correct, complete and clear). Reply with the number only."
        }
    }
}

/// The judge's user message for one answer (the sim-teacher's replay mode parses it back).
pub fn judge_prompt(request: &str, answer: &str, reference: Option<&str>) -> String {
    let mut s = format!("[Request]\n{request}\n\n[Answer]\n{answer}\n");
    if let Some(r) = reference {
        s.push_str(&format!("\n[Reference answer]\n{r}\n"));
    }
    s
}

/// Splits a judge prompt back into (request, answer).
pub fn parse_judge_prompt(prompt: &str) -> Option<(&str, &str)> {
    let rest = prompt.strip_prefix("[Request]\n")?;
    let (request, rest) = rest.split_once("\n\n[Answer]\n")?;
    let answer = rest
        .split_once("\n\n[Reference answer]\n")
        .map(|(a, _)| a)
        .unwrap_or(rest);
    Some((request, answer.strip_suffix('\n').unwrap_or(answer)))
}

/// One tier's outcome on one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierOutcome {
    pub tier: String,
    pub model: String,
    /// Whether the answer passes (the judge's verdict, or the recorded correctness).
    pub passed: Option<bool>,
    /// The judge's 1–10 score, for the score rubric.
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    pub usage: Usage,
    /// What the tier's answer costs at its real-time price: what routing this prompt to it
    /// costs at run time, whether this job paid for it, took it from the cache or bought it
    /// through a Batch API (estimated from token counts for imported outcomes).
    #[serde(default)]
    pub cost_usd: f64,
    /// What grading it costs at the judge's real-time price.
    #[serde(default)]
    pub judge_cost_usd: f64,
    /// How long the tier took to answer; 0 when the answer came from the cache, a batch or
    /// a recording.
    #[serde(default)]
    pub latency_ms: u64,
}

/// One prompt's outcomes on every tier, in the spec's tier order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub id: String,
    /// The prompt; for a conversation, its transcript (what the router reads).
    pub text: String,
    /// The conversation the tiers were asked, for multi-turn prompts (`[input]
    /// messages_column`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turns: Option<Vec<crate::conversation::Turn>>,
    #[serde(default)]
    pub category: Option<String>,
    pub status: RecordStatus,
    pub tiers: Vec<TierOutcome>,
    /// `imported` (recorded outcomes) or `judged` (asked and graded by `distill teach`).
    pub source: String,
    #[serde(default)]
    pub error: Option<String>,
}

impl RouteRecord {
    /// Whether every tier has a verdict (what training and eval use).
    pub fn complete(&self) -> bool {
        self.status == RecordStatus::Ok && self.tiers.iter().all(|t| t.passed.is_some())
    }
}

/// Reads a route dataset; errors name the file, line and field.
pub fn read_route_records(path: &Path) -> Result<Vec<RouteRecord>> {
    let f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| CoreError::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let r: RouteRecord = serde_json::from_str(&line).map_err(|e| {
            CoreError::data(
                path,
                i as u64 + 1,
                "record",
                format!("not a route record ({e}); route datasets come from `distill teach` on a route task"),
            )
        })?;
        out.push(r);
    }
    if out.is_empty() {
        return Err(CoreError::file(path, "no route records"));
    }
    Ok(out)
}

/// Whether a JSONL file's first record is a route record.
pub fn is_route_dataset(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .is_some_and(|v| v.get("tiers").is_some_and(|t| t.is_array()))
}

/// Each category's record indices in a seeded random order.
fn shuffled_by_category(records: &[RouteRecord], seed: u64) -> BTreeMap<&str, Vec<usize>> {
    let mut by_cat: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        by_cat
            .entry(r.category.as_deref().unwrap_or(""))
            .or_default()
            .push(i);
    }
    let mut state = seed ^ 0x0a0f_f1ce_5eed;
    let mut next = move || {
        // SplitMix64: stable across dependency versions.
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for idx in by_cat.values_mut() {
        for i in (1..idx.len()).rev() {
            let j = (next() % (i as u64 + 1)) as usize;
            idx.swap(i, j);
        }
    }
    by_cat
}

/// Seeded split of records into (first, second) index lists, stratified by category: each
/// category contributes `fraction` of its records (rounded) to the first part.
pub fn stratified_split(
    records: &[RouteRecord],
    fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for idx in shuffled_by_category(records, seed).values() {
        let k = (idx.len() as f64 * fraction).round() as usize;
        a.extend_from_slice(&idx[..k]);
        b.extend_from_slice(&idx[k..]);
    }
    a.sort_unstable();
    b.sort_unstable();
    (a, b)
}

/// Seeded K-fold assignment stratified by category: fold k's test indices (sorted).
pub fn stratified_folds(records: &[RouteRecord], k: usize, seed: u64) -> Vec<Vec<usize>> {
    let k = k.max(1);
    let mut folds = vec![Vec::new(); k];
    let mut next = 0usize;
    for idx in shuffled_by_category(records, seed).values() {
        for &i in idx {
            folds[next % k].push(i);
            next += 1;
        }
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    folds
}

/// The text a router sees: long prompts keep their head and tail (the question is usually at
/// the end, the context at the start), `max_chars` in all, joined by " … ".
pub fn router_text(prompt: &str, max_chars: usize) -> String {
    let n = prompt.chars().count();
    if n <= max_chars {
        return prompt.to_string();
    }
    let head = max_chars * 2 / 3;
    let tail = max_chars - head;
    let h: String = prompt.chars().take(head).collect();
    let t: String = prompt.chars().skip(n - tail).collect();
    format!("{h} … {t}")
}

/// The longest prompt a linear router reads, in characters (head two thirds, tail one third);
/// encoder routers read about four characters per token of their `max_len`.
pub const ROUTER_MAX_CHARS: usize = 2000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judge_prompts_round_trip_and_long_prompts_keep_head_and_tail() {
        let p = judge_prompt("What is 2+2?\nShow work.", "4", Some("4"));
        assert_eq!(
            parse_judge_prompt(&p),
            Some(("What is 2+2?\nShow work.", "4"))
        );
        let p = judge_prompt("q", "multi\nline", None);
        assert_eq!(parse_judge_prompt(&p), Some(("q", "multi\nline")));
        let long: String = (0..3000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let t = router_text(&long, 300);
        assert!(
            t.starts_with(&long[..200]) && t.ends_with(&long[2900..]),
            "{t}"
        );
        assert_eq!(router_text("short", 300), "short");
    }

    #[test]
    fn split_is_stratified_seeded_and_disjoint() {
        let recs: Vec<RouteRecord> = (0..100)
            .map(|i| RouteRecord {
                id: i.to_string(),
                text: format!("p{i}"),
                turns: None,
                category: Some(if i < 80 { "a" } else { "b" }.into()),
                status: RecordStatus::Ok,
                tiers: vec![],
                source: "imported".into(),
                error: None,
            })
            .collect();
        let (a, b) = stratified_split(&recs, 0.5, 7);
        assert_eq!((a.len(), b.len()), (50, 50));
        assert_eq!(
            a.iter().filter(|&&i| i >= 80).count(),
            10,
            "half of category b"
        );
        assert_eq!(stratified_split(&recs, 0.5, 7).0, a);
        assert_ne!(stratified_split(&recs, 0.5, 8).0, a);
        assert!(a.iter().all(|i| !b.contains(i)));
    }
}
