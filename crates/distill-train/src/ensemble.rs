//! The `ensemble` student: the mean of several trained students' calibrated probabilities.
//!
//! A hashed n-gram model and a sentence-embedding head err on different inputs (one reads
//! surface forms, the other meaning), so their average is more often right and, what the
//! cascade pays for, surer when it is right: on Banking77 the quickstart's two students score
//! 89% and 91% alone and 93% averaged, and the cascade escalates 4.8% instead of 12.8%. Each member
//! was already calibrated on its own dev split, so the mean needs no data and no fitting of its
//! own; `distill ensemble` builds one from trained model directories in a second.
//!
//! Layout: `distill.json` (kind `ensemble`, the members in `hyper.members`) and each member's
//! whole model directory under `members/<i>-<kind>/`, so the ensemble moves, serves and is
//! fingerprinted as one directory. Single-label tasks only: a multilabel member's decision
//! rule (per-label thresholds) is fitted to its own probabilities, not to a mean.

use crate::error::{Result, TrainError};
use crate::student::{load_student, write_model_dir, ModelMeta, Student, StudentKind};
use std::path::{Path, PathBuf};

/// Where the members live inside an ensemble's directory.
pub const MEMBERS_DIR: &str = "members";

/// Builds an ensemble of the students in `members` at `out` (a new directory, swapped in
/// whole; an existing model directory is replaced only with `force`).
pub fn build(members: &[PathBuf], out: &Path, force: bool) -> Result<ModelMeta> {
    // An --out inside a member would be copied into itself (the staging directory sits beside
    // --out), and an --out equal to a member would replace it.
    let out_abs = absolute(out);
    if let Some(dir) = members.iter().find(|d| out_abs.starts_with(absolute(d))) {
        return Err(TrainError::model(
            dir,
            format!(
                "--out {} is this member or inside it: write the ensemble elsewhere",
                out.display()
            ),
        ));
    }
    let meta = describe(members)?;
    write_model_dir(out, force, |dir| {
        for (src, name) in members.iter().zip(member_dirs(&meta)) {
            copy_tree(src, &dir.join(name))?;
        }
        meta.write(dir)
    })?;
    Ok(meta)
}

/// The `distill.json` an ensemble of `members` gets, after checking they can be averaged;
/// nothing is written (the learning curve averages members it holds in memory).
pub fn describe(members: &[PathBuf]) -> Result<ModelMeta> {
    if members.len() < 2 {
        return Err(TrainError::Other(format!(
            "an ensemble needs at least two students, got {}",
            members.len()
        )));
    }
    let metas = members
        .iter()
        .map(|m| ModelMeta::load(m))
        .collect::<Result<Vec<_>>>()?;
    let first = &metas[0];
    for (dir, m) in members.iter().zip(&metas) {
        let refuse = |why: String| Err(TrainError::model(dir, why));
        if m.label_source != first.label_source {
            return refuse(format!(
                "learnt from `{}` labels, {} from `{}`: members must share their label source \
                 (eval charges labelling by it)",
                m.label_source,
                members[0].display(),
                first.label_source
            ));
        }
        if m.kind == StudentKind::Ensemble {
            return refuse("is an ensemble already; list its members instead".into());
        }
        if m.multilabel.is_some() {
            return refuse(
                "is a multilabel student: an ensemble averages single-label distributions \
                 (each multilabel student's thresholds are fitted to its own probabilities)"
                    .into(),
            );
        }
        if m.task != first.task || m.labels != first.labels || m.out_of_scope != first.out_of_scope
        {
            return refuse(format!(
                "was trained for task `{}` with {} labels, but {} for task `{}` with {}: \
                 members must share the task and its labels, in order",
                m.task,
                m.labels.len(),
                members[0].display(),
                first.task,
                first.labels.len()
            ));
        }
    }
    let names: Vec<String> = metas
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{i}-{}", m.kind.as_str()))
        .collect();
    let train_wall_s: f64 = metas.iter().map(|m| m.train_wall_s).sum();
    let meta = ModelMeta {
        format_version: 1,
        task: first.task.clone(),
        labels: first.labels.clone(),
        out_of_scope: first.out_of_scope.clone(),
        kind: StudentKind::Ensemble,
        base_model: metas.iter().find_map(|m| m.base_model.clone()),
        data_hash: if metas.iter().all(|m| m.data_hash == first.data_hash) {
            first.data_hash.clone()
        } else {
            "mixed".into()
        },
        label_source: first.label_source.clone(),
        n_train: metas.iter().map(|m| m.n_train).max().unwrap_or(0),
        n_dev: metas.iter().map(|m| m.n_dev).max().unwrap_or(0),
        // The ensemble was never scored on a dev split of its own; its members' mean says
        // what they were (each member's own figure is under `hyper.members`).
        dev_accuracy: metas.iter().map(|m| m.dev_accuracy).sum::<f64>() / metas.len() as f64,
        dev_loss: None,
        // The mean of calibrated probabilities is the answer: logits are its logarithm.
        temperature: 1.0,
        max_len: metas.iter().filter_map(|m| m.max_len).max(),
        epochs_run: 0,
        train_wall_s,
        // Eval prices the summed training time at this device's rate: a GPU member's, when
        // there is one (an over-estimate for the CPU members, never an under-estimate).
        device: metas
            .iter()
            .find(|m| !m.device.starts_with("cpu"))
            .unwrap_or(first)
            .device
            .clone(),
        threads: metas.iter().map(|m| m.threads).max().unwrap_or(1),
        examples_per_s: 0.0,
        train_cost_usd: metas.iter().map(|m| m.train_cost_usd).sum(),
        seed: first.seed,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        distill_version: env!("CARGO_PKG_VERSION").to_string(),
        hyper: serde_json::json!({
            "combine": "mean of calibrated probabilities",
            "members": names.iter().zip(&metas).map(|(n, m)| serde_json::json!({
                "dir": format!("{MEMBERS_DIR}/{n}"),
                "kind": m.kind.as_str(),
                "dev_accuracy": m.dev_accuracy,
                "temperature": m.temperature,
            })).collect::<Vec<_>>(),
        }),
        quantization: None,
        multilabel: None,
    };
    Ok(meta)
}

/// Each member's directory inside the ensemble's, in order (`hyper.members[].dir`).
fn member_dirs(meta: &ModelMeta) -> Vec<String> {
    meta.hyper["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["dir"].as_str().map(str::to_string))
        .collect()
}

/// `p` with symlinks resolved; a path not there yet resolves through its parent.
fn absolute(p: &Path) -> PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(parent), p.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    }
}

/// Copies a member's directory; symlinked directories are refused (they may loop or lead out).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(|e| TrainError::io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| TrainError::io(src, e))? {
        let entry = entry.map_err(|e| TrainError::io(src, e))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type().map_err(|e| TrainError::io(&from, e))?;
        if kind.is_dir() {
            copy_tree(&from, &to)?;
        } else if kind.is_symlink() && from.is_dir() {
            return Err(TrainError::model(
                src,
                format!(
                    "{} is a symlinked directory; copy it in first",
                    from.display()
                ),
            ));
        } else {
            std::fs::copy(&from, &to).map_err(|e| TrainError::io(&from, e))?;
        }
    }
    Ok(())
}

/// A loaded ensemble.
pub struct EnsembleStudent {
    meta: ModelMeta,
    members: Vec<Box<dyn Student>>,
}

impl EnsembleStudent {
    pub fn load(dir: &Path, meta: ModelMeta, device: &candle_core::Device) -> Result<Self> {
        let bad = |m: String| TrainError::model(dir, m);
        let listed = meta
            .hyper
            .get("members")
            .and_then(|m| m.as_array())
            .ok_or_else(|| bad("distill.json: an ensemble needs `hyper.members`".into()))?;
        let mut members = Vec::with_capacity(listed.len());
        for m in listed {
            let rel = m.get("dir").and_then(|d| d.as_str()).unwrap_or_default();
            let inside = Path::new(rel);
            if !inside.starts_with(MEMBERS_DIR)
                || inside
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(bad(format!(
                    "distill.json: member `{rel}` is not a directory under {MEMBERS_DIR}/"
                )));
            }
            let member = dir.join(inside);
            if !absolute(&member).starts_with(absolute(dir)) {
                return Err(bad(format!(
                    "member `{rel}` leads out of the ensemble's directory"
                )));
            }
            let student = load_student(&member, device)?;
            let sm = student.meta();
            if sm.labels != meta.labels
                || sm.out_of_scope != meta.out_of_scope
                || sm.multilabel.is_some()
                || sm.kind == StudentKind::Ensemble
            {
                return Err(bad(format!(
                    "member `{rel}` does not answer with the ensemble's labels"
                )));
            }
            members.push(student);
        }
        if members.len() < 2 {
            return Err(bad(
                "distill.json: an ensemble needs at least two members".into()
            ));
        }
        Ok(Self { meta, members })
    }

    /// An ensemble of members already loaded (the learning curve passes encoder-heads that
    /// share one embedding memo); `meta` is the one [`build`] wrote for them.
    pub fn from_members(meta: ModelMeta, members: Vec<Box<dyn Student>>) -> Self {
        Self { meta, members }
    }
}

impl Student for EnsembleStudent {
    fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// ln of the members' mean calibrated probability (softmax at T = 1 gives the mean back).
    fn logits(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Ok(self
            .predict_proba(texts)?
            .into_iter()
            .map(|row| row.into_iter().map(|p| p.max(1e-30).ln()).collect())
            .collect())
    }

    /// The members' mean calibrated probability.
    fn predict_proba(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut sum: Vec<Vec<f32>> = vec![vec![0.0; self.meta.labels.len()]; texts.len()];
        for m in &self.members {
            for (acc, p) in sum.iter_mut().zip(m.predict_proba(texts)?) {
                acc.iter_mut().zip(p).for_each(|(a, x)| *a += x);
            }
        }
        let k = self.members.len() as f32;
        Ok(sum
            .into_iter()
            .map(|row| row.into_iter().map(|s| s / k).collect())
            .collect())
    }

    fn token_len(&self, text: &str) -> usize {
        self.members
            .iter()
            .map(|m| m.token_len(text))
            .max()
            .unwrap_or(0)
    }
}
