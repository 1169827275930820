//! Typed errors for the teach stage. Provider messages pass through [`redact`] first so an
//! API key can never reach a log line, a record or a terminal.

use distill_core::CoreError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TeachError {
    #[error(transparent)]
    Core(#[from] CoreError),
    /// Checked before any call, so a job never half-runs for want of a key.
    #[error("no API key: set the environment variable `{var}` (named by the task's teacher.api_key_env or the provider default)")]
    MissingKey { var: String },
    /// 400/401/403/404, `insufficient_quota`, billing errors: retrying cannot help.
    #[error("{provider} refused the request (HTTP {status}, {kind}): {message}")]
    Fatal {
        provider: String,
        status: u16,
        kind: String,
        message: String,
    },
    #[error("cannot reach the teacher at {url}: {message}")]
    Unreachable { url: String, message: String },
    /// A request that must not run twice (creating a batch) failed in a way that does not
    /// say whether the provider carried it out (a 5xx from a proxy, a timeout).
    #[error("{what} at {url} may or may not have happened: {message}")]
    Uncertain {
        what: String,
        url: String,
        message: String,
    },
    #[error("response cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = TeachError> = std::result::Result<T, E>;

impl TeachError {
    pub(crate) fn io(path: impl Into<PathBuf>, e: std::io::Error) -> Self {
        TeachError::Core(CoreError::io(path, e))
    }
    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        TeachError::File {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Removes the key itself and anything shaped like a provider key (`sk-…`, `sk-ant-…`)
/// from text that came back from a provider (401 bodies often echo part of the key).
pub fn redact(text: &str, key: &str) -> String {
    let mut s = if key.len() >= 8 {
        text.replace(key, "***")
    } else {
        text.to_string()
    };
    let mut out = String::with_capacity(s.len());
    while let Some(pos) = s.find("sk-") {
        out.push_str(&s[..pos]);
        out.push_str("sk-***");
        let rest = &s[pos + 3..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*'))
            .unwrap_or(rest.len());
        s = rest[end..].to_string();
    }
    out.push_str(&s);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_keys() {
        let r = super::redact(
            "Incorrect API key provided: sk-abc123***wxyz. Key topsecretkey1 bad",
            "topsecretkey1",
        );
        assert_eq!(r, "Incorrect API key provided: sk-***. Key *** bad");
    }
}
