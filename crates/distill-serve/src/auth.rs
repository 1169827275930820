//! Bearer-key authentication. Keys are kept only as SHA-256 digests and compared in constant
//! time, so neither memory dumps nor response timing reveal them.

use crate::error::{Result, ServeError};
use sha2::{Digest, Sha256};
use std::path::Path;

pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Compares every byte regardless of where the first difference is.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

impl ApiKeys {
    /// One key per line; blank lines and `#` comments are ignored.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| ServeError::io(path, e))?;
        let keys = Self::from_lines(&text);
        if keys.digests.is_empty() {
            return Err(ServeError::config(
                path.display().to_string(),
                "no API keys in the file (one per line)",
            ));
        }
        Ok(keys)
    }

    pub fn from_lines(text: &str) -> Self {
        Self {
            digests: text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(digest)
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Checks an `Authorization` header value (`Bearer <key>`).
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(key) = authorization.and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        }) else {
            return false;
        };
        let d = digest(key.trim());
        // Check all keys so the time taken does not say which one matched.
        self.digests.iter().fold(false, |ok, k| ct_eq(k, &d) | ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_listed_keys_only() {
        let k = ApiKeys::from_lines("# team keys\nsk-one\n\n  sk-two  \n");
        assert_eq!(k.len(), 2);
        assert!(k.allows(Some("Bearer sk-two")));
        assert!(!k.allows(Some("Bearer sk-three")));
        assert!(!k.allows(Some("sk-one")));
        assert!(!k.allows(None));
    }
}
