//! On-disk cache of sentence embeddings, so retraining an `encoder-head` (another head type,
//! another L2 strength, relabelled data) never runs the frozen encoder on a sentence twice.
//!
//! One append-only file per encoder fingerprint (weights + tokenizer + max length + pooling):
//! `<cache_dir>/<fingerprint>.emb`. Layout: a 16-byte header (`DSTLEMB1`, dim as u32 LE, 4 zero
//! bytes), then fixed-size records of 32 bytes SHA-256(text) followed by `dim` f32 LE. The whole
//! file is read into a hash index on open (10k MiniLM embeddings are ~16 MB). A record cut short
//! by a crash is ignored and overwritten by the next append; each append is one `write` call, so
//! concurrent writers of the same file interleave whole records on local file systems.

use crate::error::{Result, TrainError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"DSTLEMB1";
const HEADER_LEN: u64 = 16;

/// Where the cache lives when `--cache-dir` is not given (relative to the working directory).
pub const DEFAULT_CACHE_DIR: &str = ".distill/embeddings";

pub type TextKey = [u8; 32];

pub fn text_key(text: &str) -> TextKey {
    Sha256::digest(text.as_bytes()).into()
}

pub struct EmbeddingCache {
    /// None: held in memory only ([`EmbeddingCache::in_memory`]).
    path: Option<PathBuf>,
    dim: usize,
    index: HashMap<TextKey, usize>,
    rows: Vec<f32>,
}

impl EmbeddingCache {
    /// Opens (or creates) the cache file for one encoder fingerprint.
    pub fn open(dir: &Path, fingerprint: &str, dim: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let path = dir.join(format!("{fingerprint}.emb"));
        let mut cache = Self {
            path: Some(path),
            dim,
            index: HashMap::new(),
            rows: Vec::new(),
        };
        cache.read_existing()?;
        Ok(cache)
    }

    /// A cache that is never written to disk: embeddings shared within one process.
    pub fn in_memory(dim: usize) -> Self {
        Self {
            path: None,
            dim,
            index: HashMap::new(),
            rows: Vec::new(),
        }
    }

    fn record_len(&self) -> u64 {
        32 + 4 * self.dim as u64
    }

    fn read_existing(&mut self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)
                    .map_err(|e| TrainError::io(path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(TrainError::io(path, e)),
        }
        if bytes.len() < HEADER_LEN as usize {
            return Ok(()); // a header cut short: rewritten on the next append
        }
        if &bytes[..8] != MAGIC {
            return Err(TrainError::Other(format!(
                "{}: not a distill embedding cache (bad magic); delete it to rebuild",
                path.display()
            )));
        }
        let dim = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        if dim != self.dim {
            return Err(TrainError::Other(format!(
                "{}: cache holds {dim}-dimensional embeddings, the encoder gives {}; delete it to rebuild",
                path.display(),
                self.dim
            )));
        }
        let rec = self.record_len() as usize;
        for r in bytes[HEADER_LEN as usize..].chunks_exact(rec) {
            let mut key = [0u8; 32];
            key.copy_from_slice(&r[..32]);
            let slot = self.rows.len() / self.dim;
            self.rows.extend(
                r[32..]
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
            self.index.insert(key, slot);
        }
        Ok(())
    }

    /// The file, for a cache on disk.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn len(&self) -> usize {
        self.index.len()
    }
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn get(&self, key: &TextKey) -> Option<&[f32]> {
        self.index
            .get(key)
            .map(|&slot| &self.rows[slot * self.dim..(slot + 1) * self.dim])
    }

    /// Adds embeddings (row i of `rows` belongs to `keys[i]`) in memory and, for a cache on
    /// disk, to its file.
    pub fn insert_many(&mut self, keys: &[TextKey], rows: &[f32]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        assert_eq!(rows.len(), keys.len() * self.dim, "one row per key");
        if self.path.is_some() {
            let mut buf = Vec::with_capacity(keys.len() * self.record_len() as usize);
            for (key, row) in keys.iter().zip(rows.chunks_exact(self.dim)) {
                buf.extend_from_slice(key);
                for v in row {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
            }
            self.append(&buf)?;
        }
        for (key, row) in keys.iter().zip(rows.chunks_exact(self.dim)) {
            if !self.index.contains_key(key) {
                let slot = self.rows.len() / self.dim;
                self.rows.extend_from_slice(row);
                self.index.insert(*key, slot);
            }
        }
        Ok(())
    }

    fn append(&self, records: &[u8]) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let io = |e| TrainError::io(path, e);
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        if len < HEADER_LEN {
            f.set_len(0).map_err(io)?;
            let mut header = Vec::with_capacity(HEADER_LEN as usize);
            header.extend_from_slice(MAGIC);
            header.extend_from_slice(&(self.dim as u32).to_le_bytes());
            header.extend_from_slice(&[0u8; 4]);
            f.write_all(&header).map_err(io)?;
        } else {
            // Drop a record a crash cut short, so appended records stay aligned.
            let aligned = HEADER_LEN + (len - HEADER_LEN) / self.record_len() * self.record_len();
            if aligned != len {
                f.set_len(aligned).map_err(io)?;
            }
        }
        f.seek(SeekFrom::End(0)).map_err(io)?;
        f.write_all(records).map_err(io)?;
        f.flush().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_and_torn_tail_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut c = EmbeddingCache::open(d.path(), "fp", 3).unwrap();
        let keys = [text_key("a"), text_key("b")];
        c.insert_many(&keys, &[1., 2., 3., 4., 5., 6.]).unwrap();
        // Simulate a crash mid-append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(c.path().unwrap())
            .unwrap();
        f.write_all(&[7u8; 10]).unwrap();
        drop(f);
        let mut c = EmbeddingCache::open(d.path(), "fp", 3).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&text_key("b")).unwrap(), &[4., 5., 6.]);
        assert!(c.get(&text_key("c")).is_none());
        c.insert_many(&[text_key("c")], &[7., 8., 9.]).unwrap();
        let c = EmbeddingCache::open(d.path(), "fp", 3).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&text_key("c")).unwrap(), &[7., 8., 9.]);
        assert!(EmbeddingCache::open(d.path(), "fp", 4).is_err());
    }
}
