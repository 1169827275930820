//! Routers for route tasks: for every tier but the last, a binary student ("this tier's
//! answer passes") of any kind, trained on the route dataset; at run time a request goes to
//! the cheapest tier whose calibrated pass probability reaches the threshold, else to the top.
//!
//! A router directory holds `distill.json` ([`RouterMeta`], `"kind": "router"`) and one
//! ordinary student directory per routed tier under `tiers/<name>/` (Hugging Face layout,
//! labels `fail`/`pass`), so each is also servable and inspectable on its own.

use crate::error::{Result, TrainError};
use crate::student::{load_student, Student, StudentKind, TrainData, TrainOptions};
use crate::train::{stratified_split, train_on};
use distill_core::route::{router_text, RouteRecord, RouteSpec, ROUTER_MAX_CHARS};
use distill_core::{LabelSet, TaskSpec};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const ROUTER_FORMAT_VERSION: u32 = 1;

/// One tier as the router knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterTier {
    pub name: String,
    pub model: String,
    /// `tiers/<name>`: the pass/fail student, for every tier but the top one.
    pub student_dir: Option<String>,
    /// The tier's pass rate in the training data.
    pub train_pass_rate: f64,
}

/// `distill.json` of a router directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterMeta {
    pub format_version: u32,
    /// Always `router`.
    pub kind: String,
    pub task: String,
    pub student: StudentKind,
    pub tiers: Vec<RouterTier>,
    /// Longest prompt read, in characters (head and tail kept: [`router_text`]).
    pub max_chars: usize,
    pub n_train: usize,
    pub data_hash: String,
    pub train_wall_s: f64,
    pub train_cost_usd: f64,
    pub created: String,
    pub distill_version: String,
}

impl RouterMeta {
    pub fn load(dir: &Path) -> Result<Self> {
        let p = dir.join("distill.json");
        let text = std::fs::read_to_string(&p)
            .map_err(|e| TrainError::model(dir, format!("cannot read distill.json ({e})")))?;
        let meta: RouterMeta = serde_json::from_str(&text)
            .map_err(|e| TrainError::model(dir, format!("not a router's distill.json: {e}")))?;
        if meta.kind != "router" {
            return Err(TrainError::model(dir, "distill.json is not a router's"));
        }
        Ok(meta)
    }
}

/// Whether `dir` holds a router (rather than a single student).
pub fn is_router_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("distill.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some("router"))
}

/// What training produced, for the CLI.
#[derive(Debug, Clone)]
pub struct RouterReport {
    pub meta: RouterMeta,
    /// Per routed tier: (name, dev accuracy, epochs).
    pub tiers: Vec<(String, f64, usize)>,
}

/// Characters of a prompt a router of `kind` reads. Encoders read `max_len` tokens from the
/// start, so the prompt is first cut to about that many characters (head and tail kept) and the
/// tail, often the actual question or its choices, survives the tokenizer's truncation.
pub fn router_max_chars(kind: StudentKind, max_len: Option<usize>) -> usize {
    let tokens = match kind {
        // Never a router: train refuses to train an ensemble.
        StudentKind::Linear | StudentKind::Ensemble => return ROUTER_MAX_CHARS,
        StudentKind::EncoderFinetune => {
            max_len.unwrap_or(crate::encoder::finetune::DEFAULT_MAX_LEN)
        }
        StudentKind::EncoderHead => max_len.unwrap_or(128),
    };
    (tokens * 4).min(ROUTER_MAX_CHARS)
}

/// Trains one `kind` student per routed tier on `records` (complete ones; others skipped) and
/// writes the router directory at `opts.out`.
pub fn train_router(
    spec: &TaskSpec,
    records: &[RouteRecord],
    kind: StudentKind,
    opts: &TrainOptions,
    dev_fraction: f64,
    data_hash: &str,
) -> Result<RouterReport> {
    let route = spec
        .route
        .as_ref()
        .ok_or_else(|| TrainError::Other(format!("{} is not a route task", spec.path.display())))?;
    opts.validate()?;
    distill_core::fsutil::check_output_dir(&opts.out, distill_core::fsutil::MODEL_DIR, opts.force)?;
    let usable: Vec<&RouteRecord> = records.iter().filter(|r| r.complete()).collect();
    if usable.is_empty() {
        return Err(TrainError::Data(
            "no complete route records (every tier graded) to train on".into(),
        ));
    }
    for r in &usable {
        if r.tiers.len() != route.tiers.len()
            || r.tiers
                .iter()
                .zip(&route.tiers)
                .any(|(o, t)| o.tier != t.name)
        {
            return Err(TrainError::Data(format!(
                "record `{}` lists tiers {:?}, the task {:?}: was it made for this task?",
                r.id,
                r.tiers.iter().map(|o| &o.tier).collect::<Vec<_>>(),
                route.tiers.iter().map(|t| &t.name).collect::<Vec<_>>()
            )));
        }
    }
    let started = Instant::now();
    let labels = LabelSet::new(vec!["fail".into(), "pass".into()]);
    let n_tiers = route.tiers.len();
    let mut report_tiers = Vec::new();
    let mut tiers_meta = Vec::new();
    let mut cost = 0.0;
    let max_chars = router_max_chars(kind, opts.max_len);
    let mut texts: Vec<String> = usable
        .iter()
        .map(|r| router_text(&r.text, max_chars))
        .collect();
    distill_core::fsutil::replace_dir(
        &opts.out,
        distill_core::fsutil::MODEL_DIR,
        opts.force,
        |tmp| {
            for (t_idx, tier) in route.tiers.iter().enumerate() {
                let passed: Vec<usize> = usable
                    .iter()
                    .map(|r| usize::from(r.tiers[t_idx].passed == Some(true)))
                    .collect();
                let rate = passed.iter().sum::<usize>() as f64 / passed.len() as f64;
                if t_idx + 1 == n_tiers {
                    tiers_meta.push(RouterTier {
                        name: tier.name.clone(),
                        model: tier.model.clone(),
                        student_dir: None,
                        train_pass_rate: rate,
                    });
                    continue;
                }
                let examples: Vec<(String, usize)> =
                    texts.iter().cloned().zip(passed.iter().copied()).collect();
                let (train, dev) = stratified_split(examples, 2, dev_fraction, opts.seed);
                if train.iter().all(|(_, y)| *y == train[0].1) {
                    return Err(TrainError::Data(format!(
                        "tier `{}` {} every training prompt: there is nothing to learn",
                        tier.name,
                        if train[0].1 == 1 { "passes" } else { "fails" }
                    )));
                }
                let data = TrainData {
                    task: format!("{}:{}", spec.name, tier.name),
                    labels: labels.clone(),
                    train,
                    dev,
                    sets: None,
                    data_hash: data_hash.to_string(),
                    label_source: "route".into(),
                };
                let rel = format!("tiers/{}", tier.name);
                let mut o = opts.clone();
                o.out = tmp.join(&rel);
                o.force = true;
                let meta = train_on(&data, kind, &o)?;
                cost += meta.train_cost_usd;
                report_tiers.push((tier.name.clone(), meta.dev_accuracy, meta.epochs_run));
                tiers_meta.push(RouterTier {
                    name: tier.name.clone(),
                    model: tier.model.clone(),
                    student_dir: Some(rel),
                    train_pass_rate: rate,
                });
            }
            let meta = RouterMeta {
                format_version: ROUTER_FORMAT_VERSION,
                kind: "router".into(),
                task: spec.name.clone(),
                student: kind,
                tiers: std::mem::take(&mut tiers_meta),
                max_chars,
                n_train: usable.len(),
                data_hash: data_hash.to_string(),
                train_wall_s: started.elapsed().as_secs_f64(),
                train_cost_usd: cost,
                created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                distill_version: env!("CARGO_PKG_VERSION").into(),
            };
            let bytes = serde_json::to_vec_pretty(&meta)
                .map_err(|e| TrainError::Other(format!("distill.json: {e}")))?;
            distill_core::fsutil::write_atomic(tmp.join("distill.json"), &bytes)?;
            tiers_meta = meta.tiers;
            Ok(())
        },
    )?;
    texts.clear();
    Ok(RouterReport {
        meta: RouterMeta::load(&opts.out)?,
        tiers: report_tiers,
    })
}

/// A trained router, loaded.
pub struct Router {
    pub meta: RouterMeta,
    pub dir: PathBuf,
    /// One student per routed tier (all but the top), in tier order.
    students: Vec<Box<dyn Student>>,
}

impl Router {
    pub fn load(dir: &Path, device: &candle_core::Device) -> Result<Self> {
        let meta = RouterMeta::load(dir)?;
        let mut students = Vec::new();
        for t in &meta.tiers {
            if let Some(d) = &t.student_dir {
                students.push(load_student(&dir.join(d), device)?);
            }
        }
        if students.len() + 1 != meta.tiers.len() {
            return Err(TrainError::model(
                dir,
                "a router needs a student for every tier but the top one",
            ));
        }
        Ok(Router {
            meta,
            dir: dir.to_path_buf(),
            students,
        })
    }

    /// Checks the router was trained for this task's tiers.
    pub fn check_tiers(&self, spec: &RouteSpec) -> Result<()> {
        let mine: Vec<&str> = self.meta.tiers.iter().map(|t| t.name.as_str()).collect();
        let theirs: Vec<&str> = spec.tiers.iter().map(|t| t.name.as_str()).collect();
        if mine != theirs {
            return Err(TrainError::model(
                &self.dir,
                format!("router tiers {mine:?} are not the task's {theirs:?}"),
            ));
        }
        Ok(())
    }

    /// For each prompt, each routed tier's calibrated probability that its answer passes.
    pub fn pass_probabilities(&self, prompts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let texts: Vec<String> = prompts
            .iter()
            .map(|p| router_text(p, self.meta.max_chars))
            .collect();
        let mut out = vec![Vec::with_capacity(self.students.len()); prompts.len()];
        for s in &self.students {
            let pass = s
                .meta()
                .labels
                .iter()
                .position(|l| l == "pass")
                .ok_or_else(|| {
                    TrainError::model(&self.dir, "a tier student without a `pass` label")
                })?;
            for (chunk_i, chunk) in texts.chunks(batch.max(1)).enumerate() {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let probs = s.predict_proba(&refs)?;
                for (k, p) in probs.into_iter().enumerate() {
                    out[chunk_i * batch.max(1) + k].push(p[pass]);
                }
            }
        }
        Ok(out)
    }

    /// The tier (index) a request goes to: the cheapest whose pass probability reaches
    /// `threshold`, else the top tier.
    pub fn choose(pass: &[f32], threshold: f64) -> usize {
        pass.iter()
            .position(|&p| p as f64 >= threshold)
            .unwrap_or(pass.len())
    }

    pub fn students(&self) -> &[Box<dyn Student>] {
        &self.students
    }
}

#[cfg(test)]
mod max_chars_tests {
    use super::*;

    #[test]
    fn encoder_routers_cut_prompts_to_what_their_tokenizer_keeps() {
        // The fine-tuned encoder reads 64 tokens by default: a 512-character cut would lose the
        // prompt's tail (the choices) to the tokenizer's truncation.
        assert_eq!(router_max_chars(StudentKind::EncoderFinetune, None), 256);
        assert_eq!(router_max_chars(StudentKind::EncoderHead, None), 512);
        assert_eq!(
            router_max_chars(StudentKind::EncoderFinetune, Some(128)),
            512
        );
        assert_eq!(
            router_max_chars(StudentKind::Linear, Some(8)),
            ROUTER_MAX_CHARS
        );
    }
}
