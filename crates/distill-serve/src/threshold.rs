//! The cascade threshold: a number, or the one eval chose and wrote into its `metrics.json`.

use crate::error::{Result, ServeError};
use std::path::Path;

/// JSON paths tried, in order, in an eval `metrics.json`.
pub const THRESHOLD_PATHS: &[&[&str]] = &[
    &["cascade", "threshold"],
    &["cascade", "chosen", "threshold"],
    &["cascade", "recommended", "threshold"],
    &["threshold"],
];

/// `0.7`, or a path to an eval `metrics.json` holding `{"cascade": {"threshold": 0.7, ...}}`.
pub fn parse_threshold(value: &str) -> Result<f32> {
    if let Ok(t) = value.trim().parse::<f32>() {
        return check(t, "--threshold");
    }
    let path = Path::new(value);
    let text = std::fs::read_to_string(path).map_err(|e| {
        ServeError::config(
            "--threshold",
            format!("`{value}` is neither a number in [0, 1] nor a readable metrics.json ({e})"),
        )
    })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ServeError::config(value, format!("not JSON: {e}")))?;
    for p in THRESHOLD_PATHS {
        let mut v = &json;
        for k in *p {
            v = &v[*k];
        }
        if let Some(t) = v.as_f64() {
            return check(t as f32, &format!("{value}: {}", p.join(".")));
        }
    }
    Err(ServeError::config(
        value,
        "no cascade threshold found (looked for `cascade.threshold`); run `distill eval` with a teacher dataset, or pass a number",
    ))
}

fn check(t: f32, what: &str) -> Result<f32> {
    if (0.0..=1.0).contains(&t) {
        Ok(t)
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

    #[test]
    fn number_or_metrics_file() {
        assert_eq!(parse_threshold("0.7").unwrap(), 0.7);
        assert!(parse_threshold("1.5").is_err());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.json");
        std::fs::write(
            &p,
            r#"{"cascade": {"threshold": 0.42, "escalation_rate": 0.1}}"#,
        )
        .unwrap();
        assert_eq!(parse_threshold(p.to_str().unwrap()).unwrap(), 0.42);
        std::fs::write(&p, r#"{"accuracy": 0.9}"#).unwrap();
        let e = parse_threshold(p.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("cascade.threshold"), "{e}");
    }
}
