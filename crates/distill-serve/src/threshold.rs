//! The cascade threshold: a number, or the one eval chose *for this model* and wrote into its
//! `metrics.json`. A threshold is a property of the model it was tuned on: serving one model
//! with another's threshold silently changes what escalates. So a metrics file's threshold is
//! taken from the `cascades` entry whose `model_sha256` is the served directory's
//! [`distill_train::model_fingerprint`]; a file without one for the model is refused.

use crate::error::{Result, ServeError};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// What `--threshold` named.
#[derive(Debug, Clone)]
pub enum ThresholdSource {
    /// One threshold for every model.
    Fixed(f32),
    /// An eval's metrics.json: each model gets its own cascade's threshold.
    Metrics { path: PathBuf, json: Value },
}

impl ThresholdSource {
    /// `0.7`, or a path to an eval `metrics.json`.
    pub fn parse(value: &str) -> Result<Self> {
        if let Ok(t) = value.trim().parse::<f32>() {
            return Ok(Self::Fixed(check(t, "--threshold")?));
        }
        let path = PathBuf::from(value);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ServeError::config(
                "--threshold",
                format!(
                    "`{value}` is neither a number in [0, 1] nor a readable metrics.json ({e})"
                ),
            )
        })?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| ServeError::config(value, format!("not JSON: {e}")))?;
        if !json.get("cascades").is_some_and(Value::is_array) {
            return Err(ServeError::config(
                value,
                "no `cascades` list: not a distill eval metrics.json, or made without teacher \
                 labels (run `distill eval` with --teacher-labels), or pass a number",
            ));
        }
        Ok(Self::Metrics { path, json })
    }

    /// The threshold for the model in `dir`, served as `name`.
    pub fn for_model(&self, name: &str, dir: &Path) -> Result<f32> {
        let (path, json) = match self {
            Self::Fixed(t) => return Ok(*t),
            Self::Metrics { path, json } => (path, json),
        };
        let what = path.display().to_string();
        let cascades = json["cascades"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let fingerprint = distill_train::model_fingerprint(dir)
            .map_err(|e| ServeError::config(format!("--model {name}"), e.to_string()))?;
        let threshold_of = |c: &Value| -> Result<f32> {
            let t = c["threshold"].as_f64().ok_or_else(|| {
                ServeError::config(what.clone(), "a cascade without a numeric `threshold`")
            })?;
            check(t as f32, &format!("{what}: cascade `{}`", c["model"]))
        };
        if let Some(c) = cascades
            .iter()
            .find(|c| c["model_sha256"].as_str() == Some(fingerprint.as_str()))
        {
            return threshold_of(c);
        }
        // Files from before fingerprints: the same directory is the best evidence there is.
        let same_dir = |p: &str| {
            let (a, b) = (std::fs::canonicalize(p), std::fs::canonicalize(dir));
            matches!((a, b), (Ok(a), Ok(b)) if a == b)
        };
        if let Some(c) = cascades.iter().find(|c| {
            c.get("model_sha256").is_none() && c["model_path"].as_str().is_some_and(same_dir)
        }) {
            return threshold_of(c);
        }
        let known: Vec<String> = cascades
            .iter()
            .map(|c| {
                format!(
                    "{} ({})",
                    c["model"].as_str().unwrap_or("?"),
                    c["model_path"].as_str().unwrap_or("no path")
                )
            })
            .collect();
        Err(ServeError::config(
            what,
            format!(
                "has no cascade for model `{name}` ({}, fingerprint {}): its cascades are for {}. \
                 A threshold belongs to the model it was tuned on; run `distill eval --model {}` \
                 and pass that metrics.json, or pass a number",
                dir.display(),
                &fingerprint[..12],
                if known.is_empty() {
                    "no model".to_string()
                } else {
                    known.join(", ")
                },
                dir.display()
            ),
        ))
    }
}

fn check(t: f32, what: &str) -> Result<f32> {
    if (0.0..=1.0).contains(&t) {
        Ok(t)
    } else if t > 1.0 && what != "--threshold" {
        Err(ServeError::config(
            what,
            format!(
                "threshold {t}: eval found no threshold that meets its floor, so this cascade \
                 escalates every input (the teacher alone would be cheaper); lower the floor \
                 (distill eval --floor), or pass a number to --threshold"
            ),
        ))
    } else {
        Err(ServeError::config(
            what,
            format!("threshold must be in [0, 1], got {t}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(dir: &Path, content: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("distill.json"), content).unwrap();
        std::fs::write(dir.join("model.safetensors"), content.repeat(3)).unwrap();
    }

    #[test]
    fn each_model_gets_its_own_cascade_and_a_stranger_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (lin, head, other) = (
            d.path().join("lin"),
            d.path().join("head"),
            d.path().join("o"),
        );
        model(&lin, "linear");
        model(&head, "head");
        model(&other, "other");
        // A copy of the linear model elsewhere is the same model.
        let copy = d.path().join("copy");
        model(&copy, "linear");
        let fp = |p: &Path| distill_train::model_fingerprint(p).unwrap();
        let metrics = serde_json::json!({
            "cascade": {"model": "head", "threshold": 0.31},
            "cascades": [
                {"model": "head", "model_path": head, "model_sha256": fp(&head), "threshold": 0.31},
                {"model": "lin", "model_path": lin, "model_sha256": fp(&lin), "threshold": 0.4525},
            ]
        });
        let p = d.path().join("metrics.json");
        std::fs::write(&p, metrics.to_string()).unwrap();
        let src = ThresholdSource::parse(p.to_str().unwrap()).unwrap();
        assert_eq!(src.for_model("lin", &lin).unwrap(), 0.4525);
        assert_eq!(src.for_model("copy", &copy).unwrap(), 0.4525);
        assert_eq!(src.for_model("head", &head).unwrap(), 0.31);
        let e = src.for_model("o", &other).unwrap_err().to_string();
        assert!(
            e.contains("no cascade for model `o`") && e.contains("head"),
            "{e}"
        );
        // Retrained in place: a different model, refused, not given the old threshold.
        model(&lin, "linear, retrained");
        assert!(src.for_model("lin", &lin).is_err());
        // Numbers apply to every model.
        let fixed = ThresholdSource::parse("0.7").unwrap();
        assert_eq!(fixed.for_model("o", &other).unwrap(), 0.7);
        assert!(ThresholdSource::parse("1.5").is_err());
        std::fs::write(&p, r#"{"accuracy": 0.9}"#).unwrap();
        let e = ThresholdSource::parse(p.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cascades"), "{e}");
    }

    #[test]
    fn files_without_fingerprints_match_by_directory() {
        let d = tempfile::tempdir().unwrap();
        let lin = d.path().join("lin");
        model(&lin, "linear");
        let p = d.path().join("metrics.json");
        let metrics = serde_json::json!({"cascades": [
            {"model": "lin", "model_path": lin, "threshold": 0.45}]});
        std::fs::write(&p, metrics.to_string()).unwrap();
        let src = ThresholdSource::parse(p.to_str().unwrap()).unwrap();
        assert_eq!(src.for_model("lin", &lin).unwrap(), 0.45);
        let other = d.path().join("other");
        model(&other, "linear");
        assert!(src.for_model("other", &other).is_err());
    }
}
