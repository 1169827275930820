//! `distill teach` on a route task: every prompt to every tier, every answer to the judge,
//! one [`RouteRecord`] per prompt. The job is the same real-time job as labelling (journal,
//! resume, lock, budget, cache, ledger, progress: [`crate::runner::run_items`]); only what one
//! input costs differs ([`RouteLabeler`]). With `--batch`, the tiers' answers and then the
//! judge's gradings go through the Batch APIs first, at batch prices ([`batch_rounds`]).

use crate::batch::prefetch::{Prefetch, Request, Round};
use crate::client::{CallContext, ClientOptions, Pending, TeacherClient};
use crate::error::{Result, TeachError};
use crate::journal::{Journal, JournalHeader, JOURNAL_VERSION};
use crate::runner::{
    client_options, default_out, effective_spec, input_path, journal_path, reconcile, run_items,
    validate_inputs, Labeler, Labelled, TeachOptions, TeachSummary,
};
use distill_core::input::{read_inputs, Columns, InputItem};
use distill_core::route::{judge_prompt, JudgeSpec, RouteRecord, RouteSpec, Rubric, TierOutcome};
use distill_core::spec::ResponseFormat;
use distill_core::{RecordStatus, TaskSpec, Usage};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// A tier's or the judge's client: the task spec with that model as the teacher, answering in
/// free text.
fn client_for(
    spec: &TaskSpec,
    teacher: distill_core::spec::TeacherSpec,
    opts: &ClientOptions,
) -> Result<TeacherClient> {
    let mut s = spec.clone();
    s.teacher = teacher;
    s.output.format = ResponseFormat::Text;
    TeacherClient::new(&s, opts.clone())
}

/// Per prompt: every tier's answer, then the judge's verdict on each.
pub(crate) struct RouteLabeler {
    tiers: Vec<(distill_core::route::TierSpec, TeacherClient)>,
    judge: (JudgeSpec, TeacherClient),
    /// Reference answers by input id (the spec's `route.reference_column`).
    references: HashMap<String, String>,
    /// Categories by input id (`route.category_column`).
    categories: HashMap<String, String>,
    /// Cache keys of the answers this run's batches brought (`--batch`): paid for, not free.
    fetched: HashSet<String>,
}

/// What the judge's reply says: passed, and the score for the score rubric.
pub fn parse_verdict(reply: &str, rubric: Rubric, pass_mark: f64) -> Option<(bool, Option<f64>)> {
    let t = reply.trim();
    match rubric {
        Rubric::PassFail => {
            let word: String = t
                .chars()
                .skip_while(|c| !c.is_alphabetic())
                .take_while(|c| c.is_alphabetic())
                .collect::<String>()
                .to_ascii_uppercase();
            match word.as_str() {
                "PASS" => Some((true, None)),
                "FAIL" => Some((false, None)),
                _ => None,
            }
        }
        Rubric::Score => {
            let num: String = t
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            let score: f64 = num.parse().ok()?;
            (1.0..=10.0)
                .contains(&score)
                .then_some((score >= pass_mark, Some(score)))
        }
    }
}

impl Labeler for RouteLabeler {
    type Record = RouteRecord;

    async fn label(&self, item: InputItem, ctx: CallContext) -> Result<Labelled<RouteRecord>> {
        let mut pending = Pending::default();
        let mut usage = Usage::default();
        let (mut cost, mut cached, mut paid) = (0.0, true, 0u32);
        let mut tiers = Vec::with_capacity(self.tiers.len());
        let mut status = RecordStatus::Ok;
        let mut error = None;
        let (judge_spec, judge) = &self.judge;
        for (tier, client) in &self.tiers {
            let asked = match &item.turns {
                Some(turns) => client.complete_turns_deferred(turns, &ctx).await,
                None => client.complete_deferred(&item.text, &ctx).await,
            };
            let (answer, p) = self.client().persist_on_error(asked, &pending)?;
            pending.ledger.extend(p.ledger);
            pending.cache.extend(p.cache);
            usage.add(&answer.usage);
            cost += answer.cost_usd;
            let from_batch = self.fetched.contains(&answer.request_hash);
            cached &= answer.cached && !from_batch;
            // A batch answer was paid by this job, though it reads from the cache now.
            paid += if from_batch {
                u32::from(answer.text.is_some())
            } else {
                answer.paid_calls
            };
            let mut outcome = TierOutcome {
                tier: tier.name.clone(),
                model: tier.model.clone(),
                passed: None,
                score: None,
                answer: answer.text.clone(),
                usage: answer.usage,
                // What routing to this tier costs, even when this job did not pay for it.
                cost_usd: client.cost(&answer.usage, false),
                judge_cost_usd: 0.0,
                latency_ms: answer.latency_ms,
            };
            match &answer.text {
                None => {
                    status = RecordStatus::Failed;
                    error.get_or_insert(format!(
                        "tier {}: {}",
                        tier.name,
                        answer.error.unwrap_or_default()
                    ));
                }
                Some(text) => {
                    let prompt = judge_prompt(
                        &item.text,
                        text,
                        self.references.get(&item.id).map(String::as_str),
                    );
                    let graded = judge.complete_deferred(&prompt, &ctx).await;
                    let (verdict, p) = self.client().persist_on_error(graded, &pending)?;
                    pending.ledger.extend(p.ledger);
                    pending.cache.extend(p.cache);
                    usage.add(&verdict.usage);
                    cost += verdict.cost_usd;
                    let from_batch = self.fetched.contains(&verdict.request_hash);
                    cached &= verdict.cached && !from_batch;
                    paid += if from_batch {
                        u32::from(verdict.text.is_some())
                    } else {
                        verdict.paid_calls
                    };
                    outcome.judge_cost_usd = judge.cost(&verdict.usage, false);
                    match verdict
                        .text
                        .as_deref()
                        .map(|v| (v, parse_verdict(v, judge_spec.rubric, judge_spec.pass_mark)))
                    {
                        Some((_, Some((passed, score)))) => {
                            outcome.passed = Some(passed);
                            outcome.score = score;
                        }
                        Some((v, None)) => {
                            if status == RecordStatus::Ok {
                                status = RecordStatus::Invalid;
                            }
                            error.get_or_insert(format!(
                                "judge on tier {}: `{}` is not a verdict",
                                tier.name,
                                v.chars().take(80).collect::<String>()
                            ));
                        }
                        None => {
                            status = RecordStatus::Failed;
                            error.get_or_insert(format!(
                                "judge on tier {}: {}",
                                tier.name,
                                verdict.error.unwrap_or_default()
                            ));
                        }
                    }
                }
            }
            tiers.push(outcome);
        }
        Ok(Labelled {
            record: RouteRecord {
                category: self.categories.get(&item.id).cloned(),
                id: item.id,
                text: item.text,
                turns: item.turns,
                status,
                tiers,
                source: "judged".into(),
                error,
            },
            pending,
            status,
            usage,
            cost_usd: cost,
            cached,
            paid_calls: paid,
        })
    }

    fn worst_case_cost(&self, text: &str) -> f64 {
        let (judge_spec, judge) = &self.judge;
        let mut total = 0.0;
        for (tier, client) in &self.tiers {
            let answer = Usage {
                prompt_tokens: client.prompt_tokens(text),
                completion_tokens: u64::from(tier.max_tokens),
                ..Default::default()
            };
            let grading = Usage {
                prompt_tokens: judge.prompt_tokens(text) + u64::from(tier.max_tokens) + 16,
                completion_tokens: u64::from(judge_spec.max_tokens),
                ..Default::default()
            };
            total += client.cost(&answer, false) + judge.cost(&grading, false);
        }
        total
    }

    fn client(&self) -> &TeacherClient {
        &self.tiers[0].1
    }
}

/// Reads one optional column of the input by id (for categories and reference answers).
fn column_by_id(
    spec: &TaskSpec,
    input: &std::path::Path,
    column: Option<&str>,
) -> Result<HashMap<String, String>> {
    let Some(column) = column else {
        return Ok(HashMap::new());
    };
    let cols = Columns {
        gold: Some(column.to_string()),
        ..Columns::from(&spec.input)
    };
    let mut out = HashMap::new();
    for item in read_inputs(input, spec.input.format, &cols)? {
        let item = item?;
        if let Some(v) = item.gold {
            out.insert(item.id, v);
        }
    }
    Ok(out)
}

/// The route job: see the module docs.
pub async fn run_route_teach(spec: &TaskSpec, opts: TeachOptions) -> Result<TeachSummary> {
    let started = Instant::now();
    let spec = &effective_spec(spec, &opts);
    let route: &RouteSpec = spec
        .route
        .as_ref()
        .ok_or_else(|| TeachError::Invalid("not a route task".into()))?;
    let judge = route.judge.clone().ok_or_else(|| {
        TeachError::Invalid(format!(
            "{}: asking the tiers needs a [judge] to grade their answers (or build the route \
             dataset from recorded outcomes with --import-outcomes)",
            spec.path.display()
        ))
    })?;
    let input = input_path(spec, &opts)?;
    let out = opts.out.clone().unwrap_or_else(|| default_out(spec));
    let mut copts = client_options(&opts);
    if opts.dry_run {
        copts.api_key = Some(opts.api_key.clone().unwrap_or_else(|| "dry-run".into()));
        copts.ledger_path = None;
    }
    let mut tiers = Vec::with_capacity(route.tiers.len());
    for t in &route.tiers {
        let mut o = copts.clone();
        o.price_as = t.price_as.clone();
        let client = client_for(spec, RouteSpec::tier_teacher(t), &o)?;
        tiers.push((t.clone(), client));
    }
    let mut o = copts.clone();
    o.price_as = judge.price_as.clone();
    let judge_client = client_for(spec, RouteSpec::judge_teacher(&judge), &o)?;
    let total = validate_inputs(spec, &input, opts.limit)?;
    let opt = &route.options;
    let mut labeler = RouteLabeler {
        references: column_by_id(spec, &input, opt.reference_column.as_deref())?,
        categories: column_by_id(spec, &input, opt.category_column.as_deref())?,
        tiers,
        judge: (judge, judge_client),
        fetched: HashSet::new(),
    };
    if opts.batch && labeler.client().cache().is_none() {
        return Err(TeachError::Invalid(
            "--batch on a route task needs the response cache, which carries each round's \
             answers (the tiers', then the judge's) to the next: drop --no-cache"
                .into(),
        ));
    }
    if opts.dry_run {
        let mut worst = 0.0;
        for item in read_inputs(&input, spec.input.format, &Columns::from(&spec.input))?
            .take(total as usize)
        {
            worst += labeler.worst_case_cost(&item?.text);
        }
        return Err(TeachError::Invalid(format!(
            "dry run: {total} prompts × {} tiers, each answer graded: at most ${worst:.4} (every \
             answer at its tier's max_tokens); nothing was sent",
            labeler.tiers.len()
        )));
    }
    let _lock = crate::lock::JobLock::acquire(&out)?;
    let mut request = crate::journal::RequestShape::new();
    for (t, c) in &labeler.tiers {
        for (k, v) in c.request_shape() {
            request.insert(format!("{}.{k}", t.name), v);
        }
    }
    for (k, v) in labeler.judge.1.request_shape() {
        request.insert(format!("judge.{k}"), v);
    }
    let header = JournalHeader {
        distill_journal: JOURNAL_VERSION,
        task: spec.name.clone(),
        input_sha256: distill_core::fsutil::sha256_file(&input)?,
        provider: "route".into(),
        model: labeler
            .tiers
            .iter()
            .map(|(t, _)| t.model.as_str())
            .collect::<Vec<_>>()
            .join(","),
        request,
    };
    let jpath = journal_path(&out);
    if opts.resume && !jpath.exists() {
        return Err(TeachError::file(
            &jpath,
            "--resume: there is no interrupted run to resume: no journal",
        ));
    }
    let had_journal = jpath.exists() && !opts.restart;
    let (mut journal, mut recovered) = Journal::open(&jpath, &header, opts.restart)?;
    let mut batched = None;
    if opts.batch {
        // Answers cut off from SQLite by a kill go back first: the rounds read the cache.
        reconcile(labeler.client(), &recovered.last_batch)?;
        recovered.last_batch.clear();
        let mut pf = Prefetch::new(
            &mut journal,
            std::mem::take(&mut recovered.batches),
            std::mem::take(&mut recovered.collected),
            header.job_key(),
            had_journal,
            recovered.spent_usd,
            &opts,
        );
        batch_rounds(&labeler, spec, &input, total, &mut pf).await?;
        if !pf.may_continue() {
            return Ok(TeachSummary {
                out,
                total,
                cost_usd: pf.spent_usd,
                earlier_cost_usd: recovered.spent_usd,
                stopped_by_budget: pf.stopped_by_budget,
                awaiting_batches: pf.awaiting,
                batch_ids: pf.batch_ids,
                elapsed: started.elapsed(),
                ..Default::default()
            });
        }
        recovered.spent_usd += pf.spent_usd;
        labeler.fetched = std::mem::take(&mut pf.fetched);
        batched = Some((pf.spent_usd, pf.batch_ids));
    }
    let mut summary = run_items(
        Arc::new(labeler),
        spec,
        &opts,
        &input,
        &out,
        &jpath,
        journal,
        recovered,
        total,
        started,
    )
    .await?;
    if let Some((spent, ids)) = batched {
        // The batches' spending is this run's, not an earlier run's.
        summary.cost_usd += spent;
        summary.earlier_cost_usd -= spent;
        summary.batch_ids = ids;
        let paid = summary.ok + summary.invalid + summary.failed - summary.cached;
        if paid > 0 {
            summary.cost_per_1000 = Some(summary.cost_usd / paid as f64 * 1000.0);
        }
    }
    Ok(summary)
}

/// `--batch`: the tiers' answers, then the judge's gradings of them, through the Batch API
/// into the response cache (see [`crate::batch::prefetch`]); the real-time pass that follows
/// reads them from there. A round's request numbers are `input × tiers + tier`.
async fn batch_rounds(
    labeler: &RouteLabeler,
    spec: &TaskSpec,
    input: &std::path::Path,
    total: u64,
    pf: &mut Prefetch<'_>,
) -> Result<()> {
    let mut items = Vec::new();
    for item in
        read_inputs(input, spec.input.format, &Columns::from(&spec.input))?.take(total as usize)
    {
        items.push(item?);
    }
    let n_tiers = labeler.tiers.len() as u64;
    let tier_rounds: Vec<Round<'_>> = labeler
        .tiers
        .iter()
        .enumerate()
        .map(|(k, (tier, client))| Round {
            name: format!("tier:{}", tier.name),
            client,
            requests: (0u64..)
                .zip(&items)
                .map(|(i, item)| {
                    let (body, hash) = match &item.turns {
                        Some(turns) => client.request_for_turns(turns),
                        None => client.request_for(&item.text),
                    };
                    let worst = Usage {
                        prompt_tokens: client.prompt_tokens(&item.text),
                        completion_tokens: u64::from(tier.max_tokens),
                        ..Default::default()
                    };
                    Request {
                        ordinal: i * n_tiers + k as u64,
                        body,
                        hash,
                        worst_usd: client.cost(&worst, true),
                    }
                })
                .collect(),
        })
        .collect();
    pf.run(&tier_rounds).await?;
    if !pf.may_continue() {
        return Ok(());
    }
    let (judge_spec, judge) = &labeler.judge;
    let mut judge_rounds = Vec::with_capacity(tier_rounds.len());
    for ((tier, client), round) in labeler.tiers.iter().zip(&tier_rounds) {
        let mut requests = Vec::new();
        for (item, asked) in items.iter().zip(&round.requests) {
            // An answer no batch brought is asked, and graded, in real time.
            let Some(answer) = client.cached_reply(&asked.hash)? else {
                continue;
            };
            let prompt = judge_prompt(
                &item.text,
                &answer.text,
                labeler.references.get(&item.id).map(String::as_str),
            );
            let (body, hash) = judge.request_for(&prompt);
            let worst = Usage {
                prompt_tokens: judge.prompt_tokens(&prompt),
                completion_tokens: u64::from(judge_spec.max_tokens),
                ..Default::default()
            };
            requests.push(Request {
                ordinal: asked.ordinal,
                body,
                hash,
                worst_usd: judge.cost(&worst, true),
            });
        }
        judge_rounds.push(Round {
            name: format!("judge:{}", tier.name),
            client: judge,
            requests,
        });
    }
    pf.run(&judge_rounds).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_parse_leniently_and_refuse_anything_else() {
        assert_eq!(
            parse_verdict("PASS", Rubric::PassFail, 7.0),
            Some((true, None))
        );
        assert_eq!(
            parse_verdict(" fail.\n", Rubric::PassFail, 7.0),
            Some((false, None))
        );
        assert_eq!(
            parse_verdict("**PASS**", Rubric::PassFail, 7.0),
            Some((true, None))
        );
        assert_eq!(parse_verdict("maybe", Rubric::PassFail, 7.0), None);
        assert_eq!(
            parse_verdict("8", Rubric::Score, 7.0),
            Some((true, Some(8.0)))
        );
        assert_eq!(
            parse_verdict("Score: 6/10", Rubric::Score, 7.0),
            Some((false, Some(6.0)))
        );
        assert_eq!(parse_verdict("11", Rubric::Score, 7.0), None);
    }
}
