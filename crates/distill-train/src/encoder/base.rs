//! Finding the pretrained base encoder: a local directory in Hugging Face layout, or a hub repo
//! id found in the local Hugging Face cache. Never the network: training must work offline and
//! must not fetch weights behind the user's back.

use crate::error::{Result, TrainError};
use std::path::{Path, PathBuf};

/// The base used when `--base` is not given (installed by `scripts/setup.sh`).
pub const DEFAULT_BASE: &str = "models/base/all-MiniLM-L6-v2";

const REQUIRED: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

fn missing_files(dir: &Path) -> Vec<&'static str> {
    REQUIRED
        .iter()
        .copied()
        .filter(|f| !dir.join(f).is_file())
        .collect()
}

/// Resolves `spec` to a directory holding `config.json`, `model.safetensors` and `tokenizer.json`.
pub fn resolve_base(spec: &str) -> Result<PathBuf> {
    let spec = spec.trim();
    let local = PathBuf::from(spec);
    if local.is_dir() {
        let missing = missing_files(&local);
        if missing.is_empty() {
            return Ok(local);
        }
        return Err(TrainError::model(
            &local,
            format!(
                "not a Hugging Face model directory: missing {}",
                missing.join(", ")
            ),
        ));
    }
    let looks_like_repo_id = spec.split('/').count() == 2
        && !spec.starts_with('.')
        && !spec.starts_with('/')
        && !spec.contains('\\');
    if looks_like_repo_id {
        for hub in hub_cache_dirs() {
            if let Some(dir) = find_in_hub_cache(&hub, spec) {
                return Ok(dir);
            }
        }
    }
    Err(TrainError::model(
        &local,
        format!(
            "base model `{spec}` not found: it is neither a local directory with {} nor a hub \
             repo id in the local Hugging Face cache (distill never downloads). Run \
             `scripts/setup.sh`, which installs all-MiniLM-L6-v2 at {DEFAULT_BASE}, or pass \
             --base <dir>",
            REQUIRED.join("/")
        ),
    ))
}

/// `$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`, in the order Python's
/// `huggingface_hub` consults them.
fn hub_cache_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        dirs.push(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        dirs.push(PathBuf::from(p).join("hub"));
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        dirs.push(PathBuf::from(p).join("huggingface").join("hub"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    dirs
}

/// `models--org--name/snapshots/<rev>`: the revision `refs/main` names, else any complete one.
pub fn find_in_hub_cache(hub: &Path, repo_id: &str) -> Option<PathBuf> {
    let repo = hub.join(format!("models--{}", repo_id.replace('/', "--")));
    let snapshots = repo.join("snapshots");
    if let Ok(rev) = std::fs::read_to_string(repo.join("refs").join("main")) {
        let dir = snapshots.join(rev.trim());
        if missing_files(&dir).is_empty() {
            return Some(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&snapshots)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| missing_files(p).is_empty())
        .collect();
    candidates.sort();
    candidates.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for f in REQUIRED {
            std::fs::write(dir.join(f), b"{}").unwrap();
        }
    }

    #[test]
    fn local_dir_and_hub_cache_resolve_and_missing_says_how_to_install() {
        let t = tempfile::tempdir().unwrap();
        let local = t.path().join("m");
        fill(&local);
        assert_eq!(resolve_base(local.to_str().unwrap()).unwrap(), local);

        let hub = t.path().join("hub");
        let snap = hub.join("models--org--name/snapshots/abc");
        fill(&snap);
        std::fs::create_dir_all(hub.join("models--org--name/refs")).unwrap();
        std::fs::write(hub.join("models--org--name/refs/main"), "abc\n").unwrap();
        assert_eq!(find_in_hub_cache(&hub, "org/name").unwrap(), snap);
        assert!(find_in_hub_cache(&hub, "org/other").is_none());

        let err = resolve_base("no-such-org/no-such-model")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scripts/setup.sh"), "{err}");

        let partial = t.path().join("partial");
        std::fs::create_dir_all(&partial).unwrap();
        let err = resolve_base(partial.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }
}
