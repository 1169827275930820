//! One `distill teach` per output at a time: two runs on the same output (a second terminal,
//! an overlapping cron job) would both pay for every input. The lock is an advisory
//! exclusive lock on `<out>.lock`, which holds the owner's PID so the refusal can name it.
//! The kernel drops the lock when its process dies, so a `kill -9` never leaves a stale lock.

use crate::error::{Result, TeachError};
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Held for the whole job; released (and the lock file removed) when dropped.
#[derive(Debug)]
pub struct JobLock {
    path: PathBuf,
    file: File,
}

/// `<out>.lock`.
pub fn lock_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

impl JobLock {
    /// Takes the lock for `out`, or explains who holds it.
    pub fn acquire(out: &Path) -> Result<JobLock> {
        let path = lock_path(out);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| TeachError::io(dir, e))?;
        }
        // A holder that finishes unlinks the file it locked; a file opened just before that
        // is no longer the lock, so try again with the current one.
        for _ in 0..100 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| TeachError::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let mut pid = String::new();
                    let _ = file.read_to_string(&mut pid);
                    let who = match pid.trim() {
                        "" => "another process".to_string(),
                        p => format!("another distill (PID {p})"),
                    };
                    return Err(TeachError::file(
                        out,
                        format!(
                            "{who} is already labelling into this output (lock {}); running \
                             both would pay twice for every input. Wait for it to finish or \
                             stop it, then run this command again",
                            path.display()
                        ),
                    ));
                }
                Err(TryLockError::Error(e)) => return Err(TeachError::io(&path, e)),
            }
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0)
                .and_then(|_| file.seek(SeekFrom::Start(0)))
                .and_then(|_| writeln!(file, "{}", std::process::id()))
                .and_then(|_| file.flush())
                .map_err(|e| TeachError::io(&path, e))?;
            return Ok(JobLock { path, file });
        }
        Err(TeachError::file(&path, "could not take the job lock"))
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

impl Drop for JobLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock, so nobody locks a file that is going away.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid_and_the_lock_is_released_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("teacher.jsonl");
        let first = JobLock::acquire(&out).unwrap();
        let e = JobLock::acquire(&out).unwrap_err().to_string();
        assert!(e.contains(&format!("PID {}", std::process::id())), "{e}");
        drop(first);
        assert!(!lock_path(&out).exists());
        let again = JobLock::acquire(&out).unwrap();
        drop(again);
    }
}
