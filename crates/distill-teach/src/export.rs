//! `distill export --format openai`: a teacher dataset as OpenAI fine-tuning chat JSONL
//! (`{"messages": [system, user, assistant]}` per usable record), the other route to a
//! cheaper model: fine-tune a small hosted model instead of training a local one.

use crate::error::{Result, TeachError};
use distill_core::fsutil::AtomicFile;
use distill_core::spec::ResponseFormat;
use distill_core::{TaskSpec, TeacherRecord};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

/// Counts of an export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub written: u64,
    /// Records that were `invalid` or `failed` (not training data).
    pub skipped: u64,
}

/// Writes one chat example per `ok` record, prompted exactly as the teacher was.
pub fn export_openai(spec: &TaskSpec, data: &Path, out: &Path) -> Result<ExportSummary> {
    let file = std::fs::File::open(data).map_err(|e| TeachError::io(data, e))?;
    let mut w = AtomicFile::create(out)?;
    let mut summary = ExportSummary::default();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let lineno = n as u64 + 1;
        let line = line.map_err(|e| TeachError::io(data, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let r: TeacherRecord = serde_json::from_str(&line).map_err(|e| {
            TeachError::Core(distill_core::CoreError::data(
                data,
                lineno,
                "record",
                format!("not a teacher record: {e}"),
            ))
        })?;
        let Some(label) = r.label() else {
            summary.skipped += 1;
            continue;
        };
        if !spec.labels.contains(label) {
            return Err(TeachError::Core(distill_core::CoreError::data(
                data,
                lineno,
                "output.label",
                format!("`{label}` is not in the task's label set"),
            )));
        }
        let answer = match spec.output.format {
            ResponseFormat::Text => label.to_string(),
            _ => json!({ "label": label }).to_string(),
        };
        let example = json!({"messages": [
            {"role": "system", "content": spec.teacher.system_prompt},
            {"role": "user", "content": spec.render_user_with(&r.text, &r.context)},
            {"role": "assistant", "content": answer},
        ]});
        serde_json::to_writer(&mut w, &example).map_err(|e| TeachError::io(out, e.into()))?;
        w.write_all(b"\n").map_err(|e| TeachError::io(out, e))?;
        summary.written += 1;
    }
    if summary.written == 0 {
        return Err(TeachError::file(
            data,
            "no usable (status ok) records to export",
        ));
    }
    w.commit()?;
    Ok(summary)
}
