//! Crash-safe file writing and content hashing.
//!
//! Every file distill produces is written to a temporary file in the destination directory
//! and renamed into place, so a crash, a full disk or a bad record never leaves a half-written
//! output behind.

use crate::error::{CoreError, Result};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file that appears at `path` only when [`AtomicFile::commit`] succeeds.
/// Dropping it without committing deletes the temporary file.
pub struct AtomicFile {
    path: PathBuf,
    writer: BufWriter<tempfile::NamedTempFile>,
}

impl AtomicFile {
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).map_err(|e| CoreError::io(&dir, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".distill-")
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| CoreError::io(&dir, e))?;
        Ok(Self {
            path,
            writer: BufWriter::with_capacity(1 << 16, tmp),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, fsyncs and renames into place.
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        let tmp = self
            .writer
            .into_inner()
            .map_err(|e| CoreError::io(&path, e.into_error()))?;
        tmp.as_file()
            .sync_all()
            .map_err(|e| CoreError::io(&path, e))?;
        tmp.persist(&path)
            .map_err(|e| CoreError::io(&path, e.error))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path.as_ref())?;
    f.write_all(bytes)
        .map_err(|e| CoreError::io(path.as_ref(), e))?;
    f.commit()
}

/// Hex SHA-256 of some bytes: the one hash used for cache keys and data fingerprints.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex SHA-256 of a whole file, streamed.
pub fn sha256_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut f = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| CoreError::io(path, e))?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert!(!p.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        write_atomic(&p, b"done").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"done");
    }
}
