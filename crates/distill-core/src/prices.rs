//! The price table: dollars per million tokens for the common hosted models, derived from
//! LiteLLM's community price file (MIT; see `prices/LICENSE-litellm.txt`), overridable by a
//! file of the same shape. Every cost distill records carries the table's version.

use crate::error::{CoreError, Result};
use crate::record::Usage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

const BUILTIN: &str = include_str!("../prices/prices.json");

/// Prices of one model in USD per 1M tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub provider: String,
    pub input: f64,
    pub output: f64,
    /// Prompt-cache read rate; the input rate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
    /// Prompt-cache write rate (Anthropic); the input rate when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// Batch API rates; half the real-time rates when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_input: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_output: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
}

impl ModelPrice {
    /// Cost in USD of one call. `usage.prompt_tokens` counts every input token, including
    /// cache reads (`cached_tokens`) and cache writes (`cache_write_tokens`); reasoning tokens
    /// are part of `completion_tokens`, as OpenAI reports them.
    ///
    /// real time: (prompt − cached − written)·input + cached·cached_input + written·cache_write
    ///            + completion·output
    /// batch: the same with batch rates, or each rate halved when the table has none.
    pub fn cost(&self, usage: &Usage, batch: bool) -> f64 {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let written = usage.cache_write_tokens.min(usage.prompt_tokens - cached);
        let plain = usage.prompt_tokens - cached - written;
        let (input, output, cache_read, cache_write) = if batch {
            let half = |r: f64| r * 0.5;
            (
                self.batch_input.unwrap_or(half(self.input)),
                self.batch_output.unwrap_or(half(self.output)),
                half(self.cached_input.unwrap_or(self.input)),
                half(self.cache_write.unwrap_or(self.input)),
            )
        } else {
            (
                self.input,
                self.output,
                self.cached_input.unwrap_or(self.input),
                self.cache_write.unwrap_or(self.input),
            )
        };
        (plain as f64 * input
            + cached as f64 * cache_read
            + written as f64 * cache_write
            + usage.completion_tokens as f64 * output)
            / 1e6
    }

    fn validate(&self, model: &str, path: &Path) -> Result<()> {
        let rates = [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cached_input", self.cached_input),
            ("cache_write", self.cache_write),
            ("batch_input", self.batch_input),
            ("batch_output", self.batch_output),
        ];
        for (name, r) in rates {
            if let Some(r) = r {
                if !r.is_finite() || r < 0.0 {
                    return Err(CoreError::spec(
                        path,
                        &format!("models.{model}.{name}"),
                        format!("price must be a finite number ≥ 0, got {r}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    /// Recorded with every ledger row so old costs stay explainable after a price change.
    pub version: String,
    #[serde(default)]
    pub source: String,
    pub models: BTreeMap<String, ModelPrice>,
}

impl PriceTable {
    /// The table compiled into the binary.
    pub fn builtin() -> Self {
        serde_json::from_str(BUILTIN).expect("the built-in price table is valid JSON")
    }

    /// The built-in table with the models of `path` added or replaced.
    pub fn with_overrides(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        let over: PriceTable = serde_json::from_str(&text)
            .map_err(|e| CoreError::file(path, format!("not a price table: {e}")))?;
        for (m, p) in &over.models {
            p.validate(m, path)?;
        }
        let mut t = Self::builtin();
        t.version = format!("{}+{}", t.version, over.version);
        t.models.extend(over.models);
        Ok(t)
    }

    /// Looks a model up by its exact key, then without a `provider/` prefix, then by the
    /// longest known key that prefixes it (so dated snapshots like `gpt-4o-2024-11-20` resolve).
    pub fn get(&self, model: &str) -> Option<&ModelPrice> {
        if let Some(p) = self.models.get(model) {
            return Some(p);
        }
        let bare = model.rsplit('/').next().unwrap_or(model);
        if let Some(p) = self.models.get(bare) {
            return Some(p);
        }
        self.models
            .iter()
            .filter(|(k, _)| bare.starts_with(k.as_str()) && bare[k.len()..].starts_with('-'))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, p)| p)
    }

    /// Cost of one call, or `None` when the model is not in the table.
    pub fn cost(&self, model: &str, usage: &Usage, batch: bool) -> Option<f64> {
        self.get(model).map(|p| p.cost(usage, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_and_batch_costs() {
        let t = PriceTable::builtin();
        let u = Usage {
            prompt_tokens: 1_000_000,
            cached_tokens: 200_000,
            completion_tokens: 100_000,
            ..Default::default()
        };
        // gpt-4o: 2.5 in, 1.25 cached, 10 out, batch 1.25/5.
        let c = t.cost("gpt-4o", &u, false).unwrap();
        assert!(
            (c - (0.8 * 2.5 + 0.2 * 1.25 + 0.1 * 10.0)).abs() < 1e-9,
            "{c}"
        );
        let b = t.cost("gpt-4o", &u, true).unwrap();
        assert!(
            (b - (0.8 * 1.25 + 0.2 * 0.625 + 0.1 * 5.0)).abs() < 1e-9,
            "{b}"
        );
        assert!(t.get("gpt-4o-2024-11-20").is_some());
        assert!(t.get("openai/gpt-4o-mini").is_some());
        assert!(t.get("no-such-model").is_none());
    }

    #[test]
    fn anthropic_cache_write() {
        let t = PriceTable::builtin();
        let u = Usage {
            prompt_tokens: 1_000_000,
            cached_tokens: 100_000,
            cache_write_tokens: 100_000,
            completion_tokens: 0,
            ..Default::default()
        };
        let c = t.cost("claude-sonnet-4-5", &u, false).unwrap();
        assert!(
            (c - (0.8 * 3.0 + 0.1 * 0.3 + 0.1 * 3.75)).abs() < 1e-9,
            "{c}"
        );
    }

    #[test]
    fn override_rejects_negative_price() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("p.json");
        std::fs::write(
            &p,
            r#"{"version":"mine","models":{"m":{"provider":"x","input":-1,"output":1}}}"#,
        )
        .unwrap();
        let e = PriceTable::with_overrides(&p).unwrap_err().to_string();
        assert!(e.contains("models.m.input"), "{e}");
    }
}
