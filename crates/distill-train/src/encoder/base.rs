//! The base encoder a `--base` names, found by one resolver for every command, in this order:
//!
//! 1. a local directory in Hugging Face layout;
//! 2. the Hugging Face cache, through `hf_hub::Cache` (the layout and environment variables of
//!    Python's `huggingface_hub`, so its downloads are reused);
//! 3. unless offline (`HF_HUB_OFFLINE=1` or `--offline`), a download through `hf-hub` into that
//!    same cache, of only what the model needs.
//!
//! `org/name@revision` pins a branch, tag or commit. Only safetensors weights are loaded:
//! repositories with nothing but pickled `.bin` weights are refused, saying why.

use super::hub::{CachedRepo, HubEnv, Remote, RemoteError, RepoRef};
use super::weights::{self, INDEX, SINGLE};
use std::path::{Path, PathBuf};

/// The base used when `--base` is not given (installed by `scripts/setup.sh`).
pub const DEFAULT_BASE: &str = "models/base/all-MiniLM-L6-v2";

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";

/// How the resolver may use the Hub.
#[derive(Debug, Clone, Copy, Default)]
pub struct HubOptions {
    /// Never download (`--offline`); `HF_HUB_OFFLINE=1` does the same.
    pub offline: bool,
    /// Show download progress bars (they also hide when stderr is not a terminal).
    pub progress: bool,
}

/// A resolved base model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseModel {
    /// Holds `config.json`, `tokenizer.json` and `model.safetensors` (or its index and shards).
    pub dir: PathBuf,
    /// What to record as the base: the directory as given, or `org/name@<commit>`.
    pub source: String,
}

/// Why a base model could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// A local directory that lacks model files.
    #[error("{}: not a Hugging Face model directory: missing {}", .dir.display(), .missing.join(", "))]
    IncompleteDir { dir: PathBuf, missing: Vec<String> },
    /// Neither a directory nor something that could be a Hub repo id.
    #[error("{}", no_such_dir(.spec))]
    NoSuchDir { spec: String },
    /// A Hub repo id found in none of the three places.
    #[error("{0}")]
    Unresolved(Box<Unresolved>),
}

/// The three places tried for a Hub repo id, and why each failed.
#[derive(Debug)]
pub struct Unresolved {
    pub spec: String,
    pub repo: RepoRef,
    /// `<cache>/models--org--name`.
    pub cache_repo: PathBuf,
    /// Why the cache did not have it.
    pub cache_miss: String,
    pub endpoint: String,
    pub download: DownloadError,
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Unresolved {
            spec,
            repo,
            cache_repo,
            cache_miss,
            endpoint,
            download,
        } = self;
        write!(
            f,
            "base model `{spec}` could not be loaded; tried, in order:\n  \
             1. local directory {spec}: does not exist\n  \
             2. Hugging Face cache {}: {cache_miss}\n  \
             3. download of {repo} from {endpoint}: {download}\n\
             next: {}",
            cache_repo.display(),
            download.next(repo)
        )
    }
}

/// Why the download (the third place) did not produce the model.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("skipped: offline ({0})")]
    Offline(String),
    #[error("the repository or revision was not found (HTTP {status})")]
    NotFound { status: u16, token: bool },
    #[error("access refused (HTTP {status})")]
    Refused { status: u16 },
    #[error("commit {commit} has no {file}")]
    MissingFile { file: String, commit: String },
    #[error(
        "commit {commit} has only PyTorch pickle weights ({}); distill loads safetensors only, \
         because unpickling a .bin file can run arbitrary code", .files.join(", "))]
    BinOnly { files: Vec<String>, commit: String },
    #[error("{0}")]
    BadIndex(String),
    #[error("the revision moved to commit {now} while downloading commit {commit}")]
    Moved { commit: String, now: String },
    #[error("HTTP {0}")]
    Status(u16),
    #[error("cannot reach the endpoint: {0}")]
    Unreachable(String),
    #[error("writing the cache: {0}")]
    Io(std::io::Error),
}

impl DownloadError {
    /// What the user can do about it.
    fn next(&self, repo: &RepoRef) -> String {
        let id = &repo.id;
        match self {
            DownloadError::Offline(_) => format!(
                "run once online (without HF_HUB_OFFLINE or --offline) to download it into the \
                 cache, or fetch it with Python's `hf download {id} --revision {}`, or pass --base \
                 <local dir>",
                repo.revision
            ),
            DownloadError::NotFound { token: false, .. } => format!(
                "check the repo id `{id}` and revision `{}`; if the repository is private or \
                 gated, set HF_TOKEN to a token that can read it",
                repo.revision
            ),
            DownloadError::NotFound { token: true, .. } => format!(
                "check the repo id `{id}` and revision `{}`, and that your token (HF_TOKEN or the \
                 token file) can read it",
                repo.revision
            ),
            DownloadError::Refused { .. } => "the token (HF_TOKEN or the token file) was refused \
                 or cannot read this repository; for a gated model, accept its terms on the Hub \
                 first"
                .to_string(),
            DownloadError::MissingFile { .. } | DownloadError::BadIndex(_) => format!(
                "distill needs {CONFIG}, {TOKENIZER} and {SINGLE} (or its sharded index); pick a \
                 revision that has them (`{id}@<revision>`) or pass --base <local dir>"
            ),
            DownloadError::BinOnly { .. } => format!(
                "use a revision with {SINGLE} (the Hub's conversion bot opens a pull request with \
                 one: `{id}@refs/pr/<N>`), or convert the weights yourself and pass --base \
                 <local dir>"
            ),
            DownloadError::Moved { .. } => "run the command again".to_string(),
            DownloadError::Status(_) | DownloadError::Unreachable(_) => {
                "check the network and HF_ENDPOINT; to use only what is cached, set \
                 HF_HUB_OFFLINE=1"
                    .to_string()
            }
            DownloadError::Io(_) => {
                "check that the cache directory (HF_HUB_CACHE or HF_HOME) is writable".to_string()
            }
        }
    }

    fn from_remote(e: RemoteError, file: Option<(&str, &str)>, token: bool) -> Self {
        match (e, file) {
            (RemoteError::Status(404), Some((file, commit))) => DownloadError::MissingFile {
                file: file.to_string(),
                commit: commit.to_string(),
            },
            (RemoteError::Status(s @ (401 | 404)), _) if !token || s == 404 => {
                DownloadError::NotFound { status: s, token }
            }
            (RemoteError::Status(s @ (401 | 403)), _) => DownloadError::Refused { status: s },
            (RemoteError::Status(s), _) => DownloadError::Status(s),
            (RemoteError::Transport(m), _) => DownloadError::Unreachable(m),
            (RemoteError::Io(e), _) => DownloadError::Io(e),
        }
    }
}

fn no_such_dir(spec: &str) -> String {
    let want = format!("{CONFIG}/{TOKENIZER}/{SINGLE}");
    if spec == DEFAULT_BASE {
        format!(
            "base model `{spec}` not found: it is not a local directory with {want}. Run \
             `scripts/setup.sh`, which installs all-MiniLM-L6-v2 at {DEFAULT_BASE}, or pass \
             --base <dir or Hugging Face repo id>"
        )
    } else {
        format!(
            "base model `{spec}` not found: it is not a local directory with {want}, nor a \
             Hugging Face repo id (`org/name` or `org/name@revision`). Pass --base <dir or repo \
             id>, e.g. --base sentence-transformers/all-MiniLM-L6-v2, or run `scripts/setup.sh` \
             to install the default base at {DEFAULT_BASE}"
        )
    }
}

/// Resolves `spec` with the Hub settings of this process's environment.
pub fn resolve_base(spec: &str, opts: HubOptions) -> Result<BaseModel, BaseError> {
    resolve_with(spec, &HubEnv::from_env(), opts)
}

/// Resolves `spec` (a directory, or `org/name[@revision]`) with explicit Hub settings.
pub fn resolve_with(spec: &str, env: &HubEnv, opts: HubOptions) -> Result<BaseModel, BaseError> {
    let spec = spec.trim();
    let local = Path::new(spec);
    if local.is_dir() {
        let missing = missing_local(local);
        if missing.is_empty() {
            return Ok(BaseModel {
                dir: local.to_path_buf(),
                source: spec.to_string(),
            });
        }
        return Err(BaseError::IncompleteDir {
            dir: local.to_path_buf(),
            missing,
        });
    }
    let Some(repo) = RepoRef::parse(spec) else {
        return Err(BaseError::NoSuchDir {
            spec: spec.to_string(),
        });
    };
    let cached = CachedRepo::new(env, &repo);
    let cache_miss = match from_cache(&cached, &repo) {
        Ok(dir) => return Ok(hub_model(&repo, dir)),
        Err(why) => why,
    };
    let offline = if opts.offline {
        Some("--offline".to_string())
    } else {
        env.offline.clone()
    };
    let got = match offline {
        Some(why) => Err(DownloadError::Offline(why)),
        None => download(env, &repo, &cached, opts.progress),
    };
    got.map(|dir| hub_model(&repo, dir)).map_err(|download| {
        BaseError::Unresolved(Box::new(Unresolved {
            spec: spec.to_string(),
            repo,
            cache_repo: cached.dir,
            cache_miss,
            endpoint: env.endpoint.clone(),
            download,
        }))
    })
}

fn hub_model(repo: &RepoRef, dir: PathBuf) -> BaseModel {
    let commit = dir
        .file_name()
        .map(|c| c.to_string_lossy().to_string())
        .unwrap_or_default();
    BaseModel {
        source: format!("{}@{commit}", repo.id),
        dir,
    }
}

fn missing_local(dir: &Path) -> Vec<String> {
    let mut missing: Vec<String> = [CONFIG, TOKENIZER]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .map(String::from)
        .collect();
    if !dir.join(SINGLE).is_file() {
        match weights::shards(dir) {
            Some(Ok(shards)) => {
                missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file()))
            }
            Some(Err(e)) => missing.push(format!("{INDEX} ({e})")),
            None => missing.push(SINGLE.to_string()),
        }
    }
    missing
}

/// The cached snapshot of the revision with every file the model needs, or why there is none.
fn from_cache(cached: &CachedRepo, repo: &RepoRef) -> Result<PathBuf, String> {
    let Some(config) = cached.get(CONFIG) else {
        return Err(if cached.dir.exists() {
            format!("revision {} is not cached", repo.revision)
        } else {
            "not cached".to_string()
        });
    };
    let snapshot = config.parent().map(Path::to_path_buf).unwrap_or_default();
    let commit = snapshot
        .file_name()
        .map(|c| c.to_string_lossy().to_string())
        .unwrap_or_default();
    let lacks = |what: &str| format!("cached commit {commit} lacks {what}");
    if cached.get(TOKENIZER).is_none() {
        return Err(lacks(TOKENIZER));
    }
    if cached.get(SINGLE).is_some() {
        return Ok(snapshot);
    }
    if cached.get(INDEX).is_some() {
        return match weights::shards(&snapshot) {
            Some(Ok(shards)) => match shards.iter().find(|s| cached.get(s).is_none()) {
                Some(s) => Err(lacks(s)),
                None => Ok(snapshot),
            },
            Some(Err(e)) => Err(format!("cached commit {commit}: {e}")),
            None => Err(lacks(INDEX)),
        };
    }
    Err(lacks(SINGLE))
}

/// Downloads what the model needs into the cache; returns `snapshots/<commit>`.
fn download(
    env: &HubEnv,
    repo: &RepoRef,
    cached: &CachedRepo,
    progress: bool,
) -> Result<PathBuf, DownloadError> {
    let token = env.has_token();
    let remote = Remote::new(env, repo).map_err(|e| DownloadError::from_remote(e, None, token))?;
    let (commit, files) = remote
        .info()
        .map_err(|e| DownloadError::from_remote(e, None, token))?;
    let has = |f: &str| files.iter().any(|x| x == f);
    let missing = |f: &str| DownloadError::MissingFile {
        file: f.to_string(),
        commit: commit.clone(),
    };
    if !has(SINGLE) && !has(INDEX) {
        let pickles: Vec<String> = files
            .iter()
            .filter(|f| f.ends_with(".bin") || f.ends_with(".pt") || f.ends_with(".pth"))
            .cloned()
            .collect();
        return Err(if pickles.is_empty() {
            missing(SINGLE)
        } else {
            DownloadError::BinOnly {
                files: pickles,
                commit,
            }
        });
    }
    if let Some(f) = [CONFIG, TOKENIZER].into_iter().find(|f| !has(f)) {
        return Err(missing(f));
    }
    let snapshot = cached.snapshot(&commit);
    let fetch = |file: &str| -> Result<(), DownloadError> {
        let want = snapshot.join(file);
        if want.exists() {
            return Ok(());
        }
        let got = remote
            .download(file, progress)
            .map_err(|e| DownloadError::from_remote(e, Some((file, &commit)), token))?;
        if got != want {
            let now = got
                .parent()
                .and_then(Path::file_name)
                .map(|c| c.to_string_lossy().to_string())
                .unwrap_or_default();
            return Err(DownloadError::Moved {
                commit: commit.clone(),
                now,
            });
        }
        Ok(())
    };
    fetch(CONFIG)?;
    fetch(TOKENIZER)?;
    if has(SINGLE) {
        fetch(SINGLE)?;
    } else {
        fetch(INDEX)?;
        let shards = match weights::shards(&snapshot) {
            Some(Ok(s)) => s,
            Some(Err(e)) => return Err(DownloadError::BadIndex(format!("commit {commit}: {e}"))),
            None => return Err(missing(INDEX)),
        };
        if let Some(s) = shards.iter().find(|s| !has(s)) {
            return Err(missing(s));
        }
        for s in &shards {
            fetch(s)?;
        }
    }
    // A branch or tag now names this commit in the cache (hf-hub writes the ref on a download;
    // this covers a snapshot that was complete already).
    if !repo.is_commit() {
        cached.set_ref(&commit).map_err(DownloadError::Io)?;
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn fill(dir: &Path, files: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for f in files {
            std::fs::write(dir.join(f), b"{}").unwrap();
        }
    }

    fn env_at(cache: &Path, offline: bool) -> HubEnv {
        let cache = cache.as_os_str().to_owned();
        HubEnv::from_vars(move |k| match k {
            "HF_HUB_CACHE" => Some(cache.clone()),
            "HF_HUB_OFFLINE" if offline => Some(OsString::from("1")),
            // Nothing listens on the discard port: a download attempt fails fast.
            "HF_ENDPOINT" => Some(OsString::from("http://127.0.0.1:9")),
            _ => None,
        })
    }

    const ALL: [&str; 3] = [CONFIG, TOKENIZER, SINGLE];

    #[test]
    fn local_directory_first_and_what_it_lacks() {
        let t = tempfile::tempdir().unwrap();
        let env = env_at(&t.path().join("hub"), true);
        let local = t.path().join("m");
        fill(&local, &ALL);
        let got = resolve_with(local.to_str().unwrap(), &env, HubOptions::default()).unwrap();
        assert_eq!(got.dir, local);
        assert_eq!(got.source, local.to_str().unwrap());

        let partial = t.path().join("partial");
        fill(&partial, &[CONFIG]);
        let err = resolve_with(partial.to_str().unwrap(), &env, HubOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing tokenizer.json, model.safetensors"),
            "{err}"
        );
    }

    #[test]
    fn default_base_missing_says_run_setup() {
        let t = tempfile::tempdir().unwrap();
        let env = env_at(t.path(), true);
        let err = resolve_with(DEFAULT_BASE, &env, HubOptions::default()).unwrap_err();
        assert!(matches!(err, BaseError::NoSuchDir { .. }));
        assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
        let err = resolve_with("./no/such/dir", &env, HubOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("nor a Hugging Face repo id"),
            "{err}"
        );
    }

    #[test]
    fn hub_cache_by_ref_and_by_commit_and_what_a_miss_names() {
        let t = tempfile::tempdir().unwrap();
        let hub = t.path().join("hub");
        let repo = hub.join("models--org--name");
        let sha = "0123456789abcdef0123456789abcdef01234567";
        fill(&repo.join("snapshots").join(sha), &ALL);
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), sha).unwrap();
        let env = env_at(&hub, true);
        let opts = HubOptions::default();

        let got = resolve_with("org/name", &env, opts).unwrap();
        assert_eq!(got.dir, repo.join("snapshots").join(sha));
        assert_eq!(got.source, format!("org/name@{sha}"));
        // A commit needs no ref file (Python's huggingface_hub writes none for commits).
        assert_eq!(
            resolve_with(&format!("org/name@{sha}"), &env, opts)
                .unwrap()
                .dir,
            got.dir
        );

        let err = resolve_with("org/name@v2", &env, opts).unwrap_err();
        let msg = err.to_string();
        for want in [
            "1. local directory org/name@v2: does not exist",
            &format!("2. Hugging Face cache {}: revision v2 is not cached", repo.display()),
            "3. download of org/name@v2 from http://127.0.0.1:9: skipped: offline (HF_HUB_OFFLINE=1)",
            "next: run once online",
        ] {
            assert!(msg.contains(want), "{want:?} not in:\n{msg}");
        }
        let msg = resolve_with("org/other", &env, opts)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("models--org--other: not cached"), "{msg}");

        // --offline alone (HF_HUB_OFFLINE unset) also stops the download.
        let online = env_at(&hub, false);
        let off = HubOptions {
            offline: true,
            progress: false,
        };
        let msg = resolve_with("org/other", &online, off)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("skipped: offline (--offline)"), "{msg}");

        // A cached snapshot without its weights is a miss that says so.
        std::fs::remove_file(repo.join("snapshots").join(sha).join(SINGLE)).unwrap();
        let msg = resolve_with("org/name", &env, opts)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&format!("cached commit {sha} lacks model.safetensors")),
            "{msg}"
        );
    }

    #[test]
    fn unreachable_endpoint_names_all_three_places() {
        let t = tempfile::tempdir().unwrap();
        let env = env_at(t.path(), false);
        let err = resolve_with("org/name", &env, HubOptions::default()).unwrap_err();
        let BaseError::Unresolved(u) = &err else {
            panic!("{err}")
        };
        let download = &u.download;
        assert!(
            matches!(download, DownloadError::Unreachable(_)),
            "{download:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("3. download of org/name@main from http://127.0.0.1:9: cannot reach"),
            "{msg}"
        );
        assert!(msg.contains("HF_HUB_OFFLINE=1"), "{msg}");
    }
}
