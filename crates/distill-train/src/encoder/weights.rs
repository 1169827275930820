//! A base model's weights: `model.safetensors`, or the shards that
//! `model.safetensors.index.json` names (a sharded `transformers` checkpoint), merged into one
//! safetensors buffer so every loader reads either the same way.

use crate::error::{Result, TrainError};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The single-file weights.
pub const SINGLE: &str = "model.safetensors";
/// The index of a sharded checkpoint (`{"weight_map": {tensor: shard file}}`).
pub const INDEX: &str = "model.safetensors.index.json";

/// The shard files the index in `dir` names, sorted and deduplicated; `None` when `dir` has
/// no index. A shard name must be a plain file name in the same directory.
pub fn shards(dir: &Path) -> Option<Result<Vec<String>, String>> {
    let text = std::fs::read_to_string(dir.join(INDEX)).ok()?;
    Some(parse_index(&text))
}

fn parse_index(text: &str) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let index: Index = serde_json::from_str(text).map_err(|e| format!("{INDEX}: {e}"))?;
    let files: BTreeSet<String> = index.weight_map.into_values().collect();
    if files.is_empty() {
        return Err(format!("{INDEX}: weight_map is empty"));
    }
    match files
        .iter()
        .find(|f| f.contains(['/', '\\']) || f.as_str() == ".." || f.is_empty())
    {
        Some(bad) => Err(format!(
            "{INDEX}: shard `{bad}` is not a file name in the model directory"
        )),
        None => Ok(files.into_iter().collect()),
    }
}

/// The weight files of the model in `dir`: `model.safetensors`, else the index's shards.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(SINGLE);
    if single.is_file() || !dir.join(INDEX).is_file() {
        return Ok(vec![single]);
    }
    match shards(dir) {
        Some(Ok(names)) => Ok(names.iter().map(|n| dir.join(n)).collect()),
        Some(Err(e)) => Err(TrainError::model(dir, e)),
        None => Err(TrainError::model(dir, format!("cannot read {INDEX}"))),
    }
}

/// Every tensor of the model in `dir`, as the bytes of one safetensors file.
pub fn read(dir: &Path) -> Result<Vec<u8>> {
    let paths = files(dir)?;
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    };
    let mut bytes: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| {
            std::fs::read(p)
                .map_err(|e| TrainError::model(dir, format!("cannot read {}: {e}", name(p))))
        })
        .collect::<Result<_>>()?;
    if bytes.len() == 1 {
        return Ok(bytes.remove(0));
    }
    let mut views = Vec::new();
    let mut seen = BTreeSet::new();
    for (path, b) in paths.iter().zip(&bytes) {
        let st = safetensors::SafeTensors::deserialize(b)
            .map_err(|e| TrainError::model(dir, format!("shard {}: {e}", name(path))))?;
        for (tensor, view) in st.tensors() {
            if !seen.insert(tensor.clone()) {
                return Err(TrainError::model(
                    dir,
                    format!("tensor `{tensor}` is in more than one shard"),
                ));
            }
            views.push((tensor, view));
        }
    }
    safetensors::serialize(views, None)
        .map_err(|e| TrainError::model(dir, format!("merging the shards: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_plain_files_only() {
        let ok = r#"{"metadata": {"total_size": 8}, "weight_map": {"a": "s-2.safetensors",
            "b": "s-1.safetensors", "c": "s-1.safetensors"}}"#;
        assert_eq!(
            parse_index(ok).unwrap(),
            vec!["s-1.safetensors", "s-2.safetensors"]
        );
        for bad in [
            r#"{"weight_map": {"a": "../x.safetensors"}}"#,
            r#"{"weight_map": {}}"#,
            r#"{"weights": {}}"#,
        ] {
            assert!(parse_index(bad).is_err(), "{bad}");
        }
    }
}
