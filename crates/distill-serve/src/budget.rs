//! Escalation budgets: per-tag daily and monthly caps on teacher spend, so a traffic spike or an
//! unexpectedly unsure student cannot run up the bill. When a cap is hit the server keeps
//! answering from the student and says so.
//!
//! Flag syntax: `--budget TAG=daily:5,monthly:100` (repeatable; `*` caps the total over all
//! tags; requests without `X-Distill-Tag` count under `default`), or `--budget budgets.toml`:
//!
//! ```toml
//! [tags.support]
//! daily = 5.0
//! monthly = 100.0
//! ["tags.*"]
//! monthly = 500.0
//! ```

use crate::error::{Result, ServeError};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// Tag used for requests without `X-Distill-Tag`.
pub const DEFAULT_TAG: &str = "default";
/// Budget key that caps spend summed over every tag.
pub const TOTAL: &str = "*";

#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    #[serde(default)]
    pub daily: Option<f64>,
    #[serde(default)]
    pub monthly: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Daily,
    Monthly,
}

impl Period {
    pub fn as_str(&self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Monthly => "monthly",
        }
    }
    /// The current period's key (UTC): `2026-11-26` or `2026-11`.
    pub fn key(&self, now: chrono::DateTime<chrono::Utc>) -> String {
        match self {
            Period::Daily => now.format("%Y-%m-%d").to_string(),
            Period::Monthly => now.format("%Y-%m").to_string(),
        }
    }
}

/// A cap that has been reached.
#[derive(Debug, Clone, PartialEq)]
pub struct CapHit {
    /// The budget key that is exhausted (the request's tag or `*`).
    pub budget: String,
    pub period: Period,
    pub period_key: String,
    pub cap_usd: f64,
    pub spent_usd: f64,
}

impl CapHit {
    /// The webhook body; `consequence` says what the server does now ("answering from the
    /// student").
    pub fn alert_json(&self, consequence: &str) -> serde_json::Value {
        serde_json::json!({
            "event": "distill.budget_capped",
            "tag": self.budget,
            "period": self.period.as_str(),
            "period_key": self.period_key,
            "cap_usd": self.cap_usd,
            "spent_usd": self.spent_usd,
            "ts": distill_core::ledger::LedgerRow::now(),
            "message": format!(
                "distill: the {} budget `{}` (${:.2}) is spent; {consequence} until the period ends",
                self.period.as_str(), self.budget, self.cap_usd
            ),
        })
    }
}

#[derive(Default)]
pub struct Budgets {
    caps: BTreeMap<String, Caps>,
    /// (budget key, period, period key) → dollars.
    spent: Mutex<HashMap<(String, Period, String), f64>>,
    alerted: Mutex<HashSet<(String, Period, String)>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    tags: BTreeMap<String, Caps>,
}

impl Budgets {
    /// Parses every `--budget` value (inline specs or a TOML file).
    pub fn parse(values: &[String]) -> Result<Self> {
        let mut caps = BTreeMap::new();
        for v in values {
            if v.ends_with(".toml") && !v.contains('=') {
                let text = std::fs::read_to_string(v).map_err(|e| ServeError::io(v, e))?;
                let file: BudgetFile =
                    distill_core::spec::parse_toml(&text, std::path::Path::new(v))
                        .map_err(|e| ServeError::config(v.clone(), e.to_string()))?;
                for (tag, c) in file.tags {
                    check_caps(&c, &format!("{v}: tags.{tag}"))?;
                    caps.insert(tag, c);
                }
                continue;
            }
            let (tag, spec) = v.split_once('=').ok_or_else(|| {
                ServeError::config(
                    "--budget",
                    format!("`{v}`: expected TAG=daily:USD,monthly:USD or a .toml file"),
                )
            })?;
            let mut c = Caps::default();
            for part in spec.split(',') {
                let (period, usd) = part.split_once(':').ok_or_else(|| {
                    ServeError::config(
                        "--budget",
                        format!("`{part}` in `{v}`: expected daily:USD or monthly:USD"),
                    )
                })?;
                let usd: f64 = usd.trim().parse().map_err(|_| {
                    ServeError::config(
                        "--budget",
                        format!("`{usd}` in `{v}` is not a dollar amount"),
                    )
                })?;
                match period.trim() {
                    "daily" => c.daily = Some(usd),
                    "monthly" => c.monthly = Some(usd),
                    p => {
                        return Err(ServeError::config(
                            "--budget",
                            format!("unknown period `{p}` in `{v}` (use daily or monthly)"),
                        ))
                    }
                }
            }
            check_caps(&c, &format!("--budget {v}"))?;
            caps.insert(tag.trim().to_string(), c);
        }
        Ok(Self {
            caps,
            ..Default::default()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.caps.is_empty()
    }

    /// Adds (or replaces) the caps kept under `key` (a gateway route's `route:NAME`).
    pub fn with_cap(mut self, key: String, caps: Caps) -> Self {
        self.caps.insert(key, caps);
        self
    }

    pub fn caps(&self) -> &BTreeMap<String, Caps> {
        &self.caps
    }

    /// Seeds spend already recorded (e.g. from the ledger) so caps survive a restart.
    pub fn seed(&self, budget: &str, period: Period, period_key: &str, usd: f64) {
        let mut s = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        *s.entry((budget.to_string(), period, period_key.to_string()))
            .or_insert(0.0) += usd;
    }

    /// The first exhausted cap that applies to `tag`, if any.
    pub fn check(&self, tag: &str) -> Option<CapHit> {
        let now = chrono::Utc::now();
        let s = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        for budget in [tag, TOTAL] {
            let Some(c) = self.caps.get(budget) else {
                continue;
            };
            for (period, cap) in [(Period::Daily, c.daily), (Period::Monthly, c.monthly)] {
                let Some(cap) = cap else { continue };
                let key = period.key(now);
                let spent = s
                    .get(&(budget.to_string(), period, key.clone()))
                    .copied()
                    .unwrap_or(0.0);
                if spent >= cap {
                    return Some(CapHit {
                        budget: budget.to_string(),
                        period,
                        period_key: key,
                        cap_usd: cap,
                        spent_usd: spent,
                    });
                }
            }
        }
        None
    }

    /// Adds a teacher call's cost to the tag's and the total's running spend.
    pub fn record(&self, tag: &str, usd: f64) {
        if self.caps.is_empty() || usd <= 0.0 {
            return;
        }
        let now = chrono::Utc::now();
        let mut s = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        for budget in [tag, TOTAL] {
            if self.caps.contains_key(budget) {
                for period in [Period::Daily, Period::Monthly] {
                    *s.entry((budget.to_string(), period, period.key(now)))
                        .or_insert(0.0) += usd;
                }
            }
        }
    }

    /// Current spend per (budget, period) for the gauges.
    pub fn snapshot(&self) -> Vec<(String, Period, f64, bool)> {
        let now = chrono::Utc::now();
        let s = self.spent.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (budget, c) in &self.caps {
            for (period, cap) in [(Period::Daily, c.daily), (Period::Monthly, c.monthly)] {
                let Some(cap) = cap else { continue };
                let spent = s
                    .get(&(budget.clone(), period, period.key(now)))
                    .copied()
                    .unwrap_or(0.0);
                out.push((budget.clone(), period, spent, spent >= cap));
            }
        }
        out
    }

    /// True the first time a given cap is hit in its period: alerts go out once per cap.
    pub fn first_hit(&self, hit: &CapHit) -> bool {
        self.alerted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((hit.budget.clone(), hit.period, hit.period_key.clone()))
    }
}

fn check_caps(c: &Caps, what: &str) -> Result<()> {
    for v in [c.daily, c.monthly].into_iter().flatten() {
        if !v.is_finite() || v < 0.0 {
            return Err(ServeError::config(
                what,
                format!("a cap must be ≥ 0 dollars, got {v}"),
            ));
        }
    }
    if c.daily.is_none() && c.monthly.is_none() {
        return Err(ServeError::config(what, "give a daily or a monthly cap"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_caps() {
        let b =
            Budgets::parse(&["support=daily:0.02,monthly:1".into(), "*=monthly:5".into()]).unwrap();
        assert_eq!(b.caps()["support"].daily, Some(0.02));
        assert!(b.check("support").is_none());
        b.record("support", 0.015);
        assert!(b.check("support").is_none());
        b.record("support", 0.01);
        let hit = b.check("support").unwrap();
        assert_eq!(
            (hit.budget.as_str(), hit.period),
            ("support", Period::Daily)
        );
        assert!(b.first_hit(&hit));
        assert!(!b.first_hit(&hit));
        assert!(b.check("other").is_none());
        for bad in ["support", "x=weekly:1", "x=daily:-1", "x=daily:abc"] {
            assert!(Budgets::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_a_toml_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("b.toml");
        std::fs::write(
            &p,
            "[tags.support]\ndaily = 5.0\n[tags.\"*\"]\nmonthly = 100\n",
        )
        .unwrap();
        let b = Budgets::parse(&[p.display().to_string()]).unwrap();
        assert_eq!(b.caps()["*"].monthly, Some(100.0));
    }
}
