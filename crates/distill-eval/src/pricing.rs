//! What the teacher costs per request, and what labelling cost: measured from the ledger's
//! calls for the test items (else for the task, else the teacher records' usage), estimated
//! from token counts only when nothing was measured. Every option is priced against it.

use crate::cost;
use crate::data::TestItems;
use crate::error::{EvalError, Result};
use crate::run::EvalOptions;
use distill_core::ledger::{Ledger, LedgerRow};
use distill_core::prices::PriceTable;
use distill_core::{TaskSpec, Usage};
use std::collections::HashSet;

/// The teacher's price per request and where it came from.
pub(crate) struct TeacherPricing {
    pub table: PriceTable,
    /// The price-table model the teacher is priced as.
    pub price_model: String,
    /// Mean real-time and Batch API cost per request.
    pub per_request: f64,
    pub per_request_batch: f64,
    pub mean_prompt: f64,
    pub mean_completion: f64,
    /// `ledger`, `teacher records` or `estimated`.
    pub basis: &'static str,
    pub basis_detail: String,
    /// What the task's labelling calls (the ledger's teach rows not for test items) cost.
    pub labelling_paid: f64,
    pub labelling_calls: usize,
}

impl TeacherPricing {
    pub fn priced(&self) -> bool {
        self.per_request > 0.0
    }
}

/// Prices the teacher for `items` (warnings about the basis go to `warnings`).
pub(crate) fn price_teacher(
    spec: &TaskSpec,
    opts: &EvalOptions,
    items: &TestItems,
    space: &crate::answer_space::AnswerSpace,
    warnings: &mut Vec<String>,
) -> Result<TeacherPricing> {
    let table = match &opts.prices {
        Some(p) => PriceTable::with_overrides(p)?,
        None => PriceTable::builtin(),
    };
    let price_model = opts
        .teacher_price_model
        .clone()
        .unwrap_or_else(|| spec.teacher.model.clone());
    let price = table.get(&price_model).cloned().ok_or_else(|| {
        EvalError::Invalid(format!(
            "no price for `{price_model}` in the price table (version {}); pass \
             --teacher-price-model with a known model (e.g. gpt-4o) or --prices FILE",
            table.version
        ))
    })?;
    let ledger_rows: Vec<LedgerRow> = match &opts.ledger {
        Some(p) if p.exists() => Ledger::open(p)?
            .rows_for_task(&spec.name)?
            .into_iter()
            .filter(|r| r.source == "teach")
            .collect(),
        _ => vec![],
    };
    let test_hashes: HashSet<&str> = items
        .teacher_hash
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    // Calls whose outcome was never recorded (a killed run) carry estimated tokens: they count
    // towards what labelling cost, not towards the measured per-request price.
    let (test_rows, train_rows): (Vec<&LedgerRow>, Vec<&LedgerRow>) = ledger_rows
        .iter()
        .partition(|r| test_hashes.contains(r.request_hash.as_str()));
    let measured = |rows: &[&LedgerRow]| -> Vec<Usage> {
        rows.iter()
            .filter(|r| r.status != distill_core::ledger::IN_FLIGHT)
            .map(|r| r.usage)
            .collect()
    };
    let record_usages: Vec<Usage> = items.teacher_usage.iter().flatten().copied().collect();
    let (test_usages, train_usages) = (measured(&test_rows), measured(&train_rows));
    let (usages, basis, basis_detail): (Vec<Usage>, &str, String) = if !test_usages.is_empty() {
        let n = test_usages.len();
        (
            test_usages,
            "ledger",
            format!("mean of {n} ledger calls for the test items, real tokens × price"),
        )
    } else if !train_usages.is_empty() {
        let n = train_usages.len();
        (
            train_usages,
            "ledger",
            format!(
                "mean of {n} ledger calls for task `{}` (same prompt), real tokens × price",
                spec.name
            ),
        )
    } else if !record_usages.is_empty() {
        (
            record_usages.clone(),
            "teacher records",
            format!(
                "mean usage of {} teacher records for the test items",
                record_usages.len()
            ),
        )
    } else {
        warnings.push(format!(
            "the ledger has no rows for task `{}`: the teacher's cost per request is estimated from \
             tiktoken counts of the prompt, and the labelling cost from the number of training examples",
            spec.name
        ));
        let texts: Vec<&str> = items.texts.iter().map(String::as_str).collect();
        let replies: Vec<Option<String>> = items
            .teacher
            .iter()
            .zip(&items.gold)
            .map(|(t, g)| t.or(*g).map(|i| space.reply_json(i)))
            .collect();
        (
            cost::estimate_usages(spec, &price_model, &texts, &replies)?,
            "estimated",
            format!(
                "tiktoken count of the rendered prompt and a {} reply; the provider's \
                 response-format overhead is not counted",
                if space.is_sets() {
                    "{\"labels\": [...]}"
                } else {
                    "{\"label\": ...}"
                }
            ),
        )
    };
    let (teacher_rt, teacher_batch) = cost::mean_cost(&usages, &price);
    let (mean_prompt, mean_completion) = cost::mean_usage(&usages);
    if teacher_rt <= 0.0 {
        warnings.push(format!(
            "the teacher costs $0 per request at `{price_model}`'s price: savings and break-even are \
             not defined (pass --teacher-price-model or --prices)"
        ));
    }

    Ok(TeacherPricing {
        per_request: teacher_rt,
        per_request_batch: teacher_batch,
        mean_prompt,
        mean_completion,
        basis,
        basis_detail,
        labelling_paid: train_rows.iter().map(|r| r.cost_usd).sum(),
        labelling_calls: train_rows.len(),
        price_model,
        table,
    })
}
