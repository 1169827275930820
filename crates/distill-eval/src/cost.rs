//! The money side of the verdict: what one request costs through the teacher, a student or a
//! cascade, what distillation cost up front, and when it pays for itself.
//!
//! Everything here is a pure function of token counts, prices and measured seconds, so the
//! arithmetic a user is asked to trust is unit-tested on its own.
//!
//! - Teacher $/request: the mean of (real tokens × price) over ledger rows, or over the teacher
//!   records' usage, or (when neither exists) tiktoken counts of the rendered prompt. Real-time
//!   and Batch API prices are both reported.
//! - Student $/request: batched inference seconds per request × hardware price per second
//!   (CPU: threads × $/core-hour; GPU: $/GPU-hour).
//! - Month 1 $ = 30 × volume/day × $/request + one-time costs, i.e. labelling and training are
//!   charged in full to the first month (the conservative reading of "amortised over a month");
//!   steady $/month (every later month) = 30 × volume/day × $/request. Both are reported: the
//!   first hides the run rate behind the labelling bill, the second hides the bill.
//! - Break-even requests = one-time cost / (teacher $/request − option $/request).

use crate::error::{EvalError, Result};
use distill_core::prices::ModelPrice;
use distill_core::{TaskSpec, Usage};
use serde::{Deserialize, Serialize};

/// Days in the monthly projection.
pub const DAYS_PER_MONTH: f64 = 30.0;

/// Hardware prices in USD. Defaults are `distill_train::student::DEFAULT_*` (documented there).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HardwarePrices {
    pub core_hour_usd: f64,
    pub gpu_hour_usd: f64,
}

impl Default for HardwarePrices {
    fn default() -> Self {
        Self {
            core_hour_usd: distill_train::student::DEFAULT_CPU_CORE_HOUR_USD,
            gpu_hour_usd: distill_train::student::DEFAULT_GPU_HOUR_USD,
        }
    }
}

impl HardwarePrices {
    /// A zero or negative hardware price would make every student look free: refuse it.
    pub fn validate(&self) -> Result<()> {
        for (flag, v) in [
            ("--core-hour-usd", self.core_hour_usd),
            ("--gpu-hour-usd", self.gpu_hour_usd),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return Err(EvalError::Invalid(format!(
                    "{flag} must be a price above 0, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// Dollars per second of wall time on `device` (`cpu`, `cuda`, ...) with `threads` CPU threads.
    pub fn usd_per_second(&self, device: &str, threads: usize) -> f64 {
        if device == "cpu" {
            self.core_hour_usd * threads.max(1) as f64 / 3600.0
        } else {
            self.gpu_hour_usd / 3600.0
        }
    }
}

/// Mean real-time and batch cost of one request over `usages`.
pub fn mean_cost(usages: &[Usage], price: &ModelPrice) -> (f64, f64) {
    if usages.is_empty() {
        return (0.0, 0.0);
    }
    let n = usages.len() as f64;
    let rt: f64 = usages.iter().map(|u| price.cost(u, false)).sum();
    let batch: f64 = usages.iter().map(|u| price.cost(u, true)).sum();
    (rt / n, batch / n)
}

/// Mean token usage (rounded) of `usages`, for the report.
pub fn mean_usage(usages: &[Usage]) -> (f64, f64) {
    if usages.is_empty() {
        return (0.0, 0.0);
    }
    let n = usages.len() as f64;
    (
        usages.iter().map(|u| u.prompt_tokens as f64).sum::<f64>() / n,
        usages
            .iter()
            .map(|u| u.completion_tokens as f64)
            .sum::<f64>()
            / n,
    )
}

/// Tokens OpenAI adds per chat message and to prime the reply (their cookbook's count).
const TOKENS_PER_MESSAGE: u64 = 3;
const REPLY_PRIMING_TOKENS: u64 = 3;

/// Estimates what the teacher would be billed for each text, by tokenising the spec's prompts
/// with the model's tiktoken encoding (o200k for the GPT-4o/4.1/5 and o-series, cl100k for
/// everything else, an approximation for non-OpenAI models). The reply is `{"label": "<label>"}`
/// with `reply_labels[i]` (or the longest label when unknown). The JSON-schema response format
/// the provider adds is not counted, so this errs low.
pub fn estimate_usages(
    spec: &TaskSpec,
    price_model: &str,
    texts: &[&str],
    replies: &[Option<String>],
) -> Result<Vec<Usage>> {
    let bare = price_model.rsplit('/').next().unwrap_or(price_model);
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
    ]
    .iter()
    .any(|p| bare.starts_with(p));
    let bpe = if o200k {
        tiktoken_rs::o200k_base()
    } else {
        tiktoken_rs::cl100k_base()
    }
    .map_err(|e| EvalError::Other(format!("tokenizer: {e}")))?;
    let count = |s: &str| bpe.encode_with_special_tokens(s).len() as u64;
    // The prompt is fixed apart from the text: count the fixed part once.
    let fixed = count(&spec.teacher.system_prompt)
        + count(&spec.render_user(""))
        + 2 * TOKENS_PER_MESSAGE
        + REPLY_PRIMING_TOKENS;
    let longest = spec
        .labels
        .names
        .iter()
        .max_by_key(|l| l.len())
        .cloned()
        .unwrap_or_default();
    // An item without a known answer is charged the task's typical reply with its longest label.
    let fallback = spec.example_reply(&longest);
    Ok(texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let reply = replies
                .get(i)
                .and_then(Option::as_deref)
                .unwrap_or(fallback.as_str());
            Usage {
                prompt_tokens: fixed + count(t),
                completion_tokens: count(reply),
                ..Default::default()
            }
        })
        .collect())
}

/// Monthly cost, saving and break-even of an option against sending everything to the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Economics {
    /// The first month: traffic plus every one-time cost.
    pub monthly_usd: f64,
    /// 1 − option month-1 $ ÷ teacher $/month; `None` when the teacher costs nothing.
    pub saving: Option<f64>,
    /// Every later month: traffic only.
    pub steady_monthly_usd: f64,
    /// 1 − option steady $/month ÷ teacher $/month; `None` when the teacher costs nothing.
    pub steady_saving: Option<f64>,
    /// Requests until the one-time cost is repaid; `None` when it never is (the option costs
    /// as much as the teacher per request, or more) or the teacher costs nothing.
    pub break_even_requests: Option<f64>,
}

pub fn economics(
    teacher_per_request: f64,
    option_per_request: f64,
    one_time: f64,
    volume_per_day: f64,
) -> Economics {
    let month = DAYS_PER_MONTH * volume_per_day;
    let steady_monthly_usd = option_per_request * month;
    let monthly_usd = steady_monthly_usd + one_time;
    let teacher_month = teacher_per_request * month;
    let saving = (teacher_month > 0.0).then(|| 1.0 - monthly_usd / teacher_month);
    let steady_saving = (teacher_month > 0.0).then(|| 1.0 - steady_monthly_usd / teacher_month);
    let margin = teacher_per_request - option_per_request;
    let break_even_requests = if teacher_per_request > 0.0 && margin > 0.0 {
        Some(one_time / margin)
    } else {
        None
    };
    Economics {
        monthly_usd,
        saving,
        steady_monthly_usd,
        steady_saving,
        break_even_requests,
    }
}

/// Latency percentiles (milliseconds) by the nearest-rank method.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub samples: usize,
}

pub fn latency(mut ms: Vec<f64>) -> Option<Latency> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_by(f64::total_cmp);
    let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Some(Latency {
        p50_ms: rank(0.50),
        p95_ms: rank(0.95),
        p99_ms: rank(0.99),
        samples: ms.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_core::prices::PriceTable;

    #[test]
    fn economics_and_break_even() {
        // Teacher $0.002, student $0.00001, one-time $20, 10k/day.
        let e = economics(0.002, 0.000_01, 20.0, 10_000.0);
        assert!((e.monthly_usd - (0.000_01 * 300_000.0 + 20.0)).abs() < 1e-9);
        let teacher_month = 0.002 * 300_000.0;
        assert!((e.saving.unwrap() - (1.0 - e.monthly_usd / teacher_month)).abs() < 1e-12);
        assert!((e.break_even_requests.unwrap() - 20.0 / 0.001_99).abs() < 1e-6);
        // Later months carry no one-time cost: the run rate alone.
        assert!((e.steady_monthly_usd - 0.000_01 * 300_000.0).abs() < 1e-9);
        assert!((e.steady_saving.unwrap() - (1.0 - 0.000_01 / 0.002)).abs() < 1e-12);
        assert!(e.steady_saving.unwrap() > e.saving.unwrap());
        // An option dearer than the teacher never breaks even.
        assert_eq!(
            economics(0.001, 0.002, 5.0, 100.0).break_even_requests,
            None
        );
        // A free teacher: no saving or break-even can be claimed.
        let free = economics(0.0, 0.0, 1.0, 100.0);
        assert_eq!(free.saving, None);
        assert_eq!(free.steady_saving, None);
        assert_eq!(free.break_even_requests, None);
    }

    #[test]
    fn hardware_prices_reject_zero_and_negative() {
        let ok = HardwarePrices::default();
        ok.validate().unwrap();
        assert!((ok.usd_per_second("cpu", 2) - 2.0 * 0.02 / 3600.0).abs() < 1e-15);
        assert!((ok.usd_per_second("cuda", 2) - 2.5 / 3600.0).abs() < 1e-15);
        let zero = HardwarePrices {
            core_hour_usd: 0.0,
            ..ok
        };
        assert!(zero
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--core-hour-usd"));
        let neg = HardwarePrices {
            gpu_hour_usd: -1.0,
            ..ok
        };
        assert!(neg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--gpu-hour-usd"));
    }

    #[test]
    fn mean_cost_uses_real_time_and_batch_rates() {
        let t = PriceTable::builtin();
        let p = t.get("gpt-4o").unwrap();
        let u = vec![
            Usage {
                prompt_tokens: 1000,
                completion_tokens: 10,
                ..Default::default()
            },
            Usage {
                prompt_tokens: 3000,
                completion_tokens: 30,
                ..Default::default()
            },
        ];
        let (rt, b) = mean_cost(&u, p);
        assert!(
            (rt - (2000.0 * 2.5 + 20.0 * 10.0) / 1e6).abs() < 1e-12,
            "{rt}"
        );
        assert!((b - rt / 2.0).abs() < 1e-12, "{b}");
    }

    #[test]
    fn latency_percentiles_by_nearest_rank() {
        let l = latency((1..=100).map(|x| x as f64).collect()).unwrap();
        assert_eq!((l.p50_ms, l.p95_ms, l.p99_ms), (50.0, 95.0, 99.0));
        assert!(latency(vec![]).is_none());
    }
}
