//! Crash-safe file writing and content hashing.
//!
//! Every file distill produces is written to a temporary file in the destination directory
//! and renamed into place, so a crash, a full disk or a bad record never leaves a half-written
//! output behind. Directories (model directories, eval reports) are filled beside their
//! destination and swapped in whole, and only ever replace a directory of the same kind: a
//! mistyped `--out` must never delete a user's files.

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
        let mut builder = tempfile::Builder::new();
        builder.prefix(".distill-").suffix(".tmp");
        // 0666 before the umask, like any file a program creates: a temporary file's 0600
        // would otherwise survive the rename and hide outputs from the user's group.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let tmp = builder
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

/// `path` without `.` and `dir/..` components, as users write paths (`task/../data/x.csv`
/// becomes `data/x.csv`), when that names the same file; otherwise (a symlinked `dir`, where
/// `..` leads elsewhere) `path` unchanged.
pub fn tidy_path(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    let tidy: PathBuf = if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    };
    let same = match (std::fs::canonicalize(path), std::fs::canonicalize(&tidy)) {
        (Ok(a), Ok(b)) => a == b,
        // Neither exists yet (an output path): lexical is all there is.
        (Err(_), Err(_)) => true,
        _ => false,
    };
    if same {
        tidy
    } else {
        path.to_path_buf()
    }
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

/// A kind of directory distill writes, recognised by a marker file inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirKind {
    /// The file every directory of this kind holds (`distill.json`, `metrics.json`).
    pub marker: &'static str,
    /// What to call it in messages.
    pub what: &'static str,
}

/// A trained student (`distill train`).
pub const MODEL_DIR: DirKind = DirKind {
    marker: "distill.json",
    what: "distill model directory",
};
/// An eval report (`distill eval`).
pub const EVAL_DIR: DirKind = DirKind {
    marker: "metrics.json",
    what: "distill eval directory",
};

/// Checks, before any work, that `out` may be written as a `kind` directory: it does not
/// exist, is an empty directory, or is a directory of that kind. Anything else (a file, a
/// directory of other files) is refused unless `force`, naming `--force`.
pub fn check_output_dir(out: &Path, kind: DirKind, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CoreError::io(out, e)),
    };
    let refuse = |why: &str| {
        Err(CoreError::file(
            out,
            format!(
                "{why}, not a {} (no {}); refusing to replace it. Choose another output \
                 directory, or pass --force to replace it",
                kind.what, kind.marker
            ),
        ))
    };
    let is_dir = meta.is_dir() || (meta.file_type().is_symlink() && out.is_dir());
    if !is_dir {
        return refuse("this path is a file");
    }
    if out.join(kind.marker).is_file() {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(out).map_err(|e| CoreError::io(out, e))?;
    if entries.next().is_none() {
        return Ok(());
    }
    refuse("this directory holds other files")
}

/// Writes the directory `out` as a whole: `fill` writes into a fresh directory beside it,
/// which then takes `out`'s place in one step (an atomic exchange on Linux). What `out` held
/// before is removed only once the new directory is in place, so a failure or a crash at any
/// moment leaves either the old or the new directory, never a mix and never neither (off
/// Linux a crash between two renames leaves the old one as `.distill-old-<name>`).
/// `out` must pass [`check_output_dir`] (checked again here, in case it changed meanwhile).
pub fn replace_dir<E: From<CoreError>>(
    out: &Path,
    kind: DirKind,
    force: bool,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    check_output_dir(out, kind, force)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| CoreError::io(&parent, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".distill-new-")
        .tempdir_in(&parent)
        .map_err(|e| CoreError::io(&parent, e))?;
    fill(tmp.path())?;
    default_modes(tmp.path()).map_err(|e| CoreError::io(tmp.path(), e))?;
    check_output_dir(out, kind, force)?;
    let staged = tmp.keep();
    let exists = std::fs::symlink_metadata(out).is_ok();
    if !exists {
        return std::fs::rename(&staged, out).map_err(|e| CoreError::io(out, e).into());
    }
    if exchange(&staged, out).is_ok() {
        // `staged` now holds the previous content.
        remove_any(&staged);
        return Ok(());
    }
    let old = parent.join(format!(
        ".distill-old-{}",
        out.file_name().and_then(|s| s.to_str()).unwrap_or("out")
    ));
    remove_any(&old);
    std::fs::rename(out, &old).map_err(|e| CoreError::io(out, e))?;
    if let Err(e) = std::fs::rename(&staged, out) {
        let _ = std::fs::rename(&old, out);
        return Err(CoreError::io(out, e).into());
    }
    remove_any(&old);
    Ok(())
}

/// Gives every file under `dir` the mode a newly created file gets (0666 less the umask):
/// libraries that write through temporary files leave 0600, which would hide part of a model
/// directory from the user's group.
#[cfg(unix)]
fn default_modes(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join(".distill-mode-probe");
    let mode = {
        let f = std::fs::File::create(&probe)?;
        f.metadata()?.permissions().mode() & 0o777
    };
    std::fs::remove_file(&probe)?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn default_modes(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

/// Swaps two existing paths in one step (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both arguments are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
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

    fn fill_marker(dir: &Path) -> Result<()> {
        std::fs::write(dir.join("distill.json"), b"{}").map_err(|e| CoreError::io(dir, e))?;
        std::fs::write(dir.join("new"), b"2").map_err(|e| CoreError::io(dir, e))
    }

    #[test]
    fn replace_dir_refuses_what_is_not_its_kind_and_swaps_what_is() {
        let d = tempfile::tempdir().unwrap();
        // A user's directory: refused before and after filling, untouched.
        let user = d.path().join("user");
        std::fs::create_dir_all(user.join("sub")).unwrap();
        std::fs::write(user.join("a.txt"), b"mine").unwrap();
        std::fs::write(user.join("sub/b.csv"), b"x,y").unwrap();
        let e = check_output_dir(&user, MODEL_DIR, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--force") && e.contains("distill.json"), "{e}");
        let e = replace_dir(&user, MODEL_DIR, false, fill_marker)
            .unwrap_err()
            .to_string();
        assert!(e.contains("refusing"), "{e}");
        assert_eq!(std::fs::read(user.join("sub/b.csv")).unwrap(), b"x,y");
        // A file: refused, not moved aside.
        let file = d.path().join("file");
        std::fs::write(&file, b"keep").unwrap();
        assert!(replace_dir(&file, MODEL_DIR, false, fill_marker).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");
        // Nothing left behind by the refusals.
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // --force replaces both.
        replace_dir(&user, MODEL_DIR, true, fill_marker).unwrap();
        assert!(!user.join("a.txt").exists() && user.join("new").exists());
        replace_dir(&file, MODEL_DIR, true, fill_marker).unwrap();
        assert!(file.join("distill.json").exists());
        // A model directory is replaced as a whole; an empty one or none is fine.
        let model = d.path().join("model");
        replace_dir(&model, MODEL_DIR, false, fill_marker).unwrap();
        std::fs::write(model.join("stale"), b"old").unwrap();
        replace_dir(&model, MODEL_DIR, false, fill_marker).unwrap();
        assert!(!model.join("stale").exists() && model.join("new").exists());
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        check_output_dir(&empty, MODEL_DIR, false).unwrap();
        // A failed fill keeps the previous model.
        let r: Result<()> = replace_dir(&model, MODEL_DIR, false, |_| {
            Err(CoreError::Other("boom".into()))
        });
        assert!(r.is_err() && model.join("new").exists());
        let leftovers: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".distill"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn tidy_paths_drop_dot_dot_where_it_names_the_same_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("task")).unwrap();
        std::fs::create_dir_all(d.path().join("data")).unwrap();
        std::fs::write(d.path().join("data/test.csv"), "x").unwrap();
        let messy = d.path().join("task/../data/./test.csv");
        assert_eq!(tidy_path(&messy), d.path().join("data/test.csv"));
        assert_eq!(tidy_path(Path::new("a/../b")), PathBuf::from("b"));
        assert_eq!(tidy_path(Path::new("../b")), PathBuf::from("../b"));
        #[cfg(unix)]
        {
            // Through a symlinked directory `..` is the link target's parent: left alone.
            let elsewhere = d.path().join("elsewhere/deep");
            std::fs::create_dir_all(&elsewhere).unwrap();
            std::fs::create_dir_all(d.path().join("elsewhere/data")).unwrap();
            std::fs::write(d.path().join("elsewhere/data/test.csv"), "y").unwrap();
            std::os::unix::fs::symlink(&elsewhere, d.path().join("link")).unwrap();
            let via = d.path().join("link/../data/test.csv");
            assert_eq!(tidy_path(&via), via);
        }
    }

    #[cfg(unix)]
    #[test]
    fn atomic_files_honour_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("out.jsonl");
        write_atomic(&p, b"x").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        // Whatever the umask, group/other bits it leaves on must be on (0600 before the fix).
        let umask = current_umask();
        assert_eq!(mode, 0o666 & !umask, "mode {mode:o}, umask {umask:o}");
    }

    #[cfg(unix)]
    fn current_umask() -> u32 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            .unwrap_or(0o022)
    }
}
