//! The Hugging Face Hub as Python's `huggingface_hub` sees it: the same cache directory,
//! endpoint, token and offline switch, read from the same environment variables in the same
//! order. Cache lookups and downloads are `hf-hub`'s (its blocking API, over rustls); this
//! module only fills in what `hf-hub` 0.5 does not read itself (`HF_HUB_CACHE`,
//! `XDG_CACHE_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE`) and maps its errors to what a user can act on.

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, CacheRepo, Repo, RepoType};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the Hub and its cache are, read from the environment the way `huggingface_hub` reads it.
#[derive(Clone)]
pub struct HubEnv {
    /// `$HF_HUB_CACHE`, else `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `$HF_ENDPOINT` without a trailing slash, else `https://huggingface.co`.
    pub endpoint: String,
    /// The setting that turned offline mode on (`HF_HUB_OFFLINE=1`), if one did.
    pub offline: Option<String>,
    /// `$HF_TOKEN`, else `$HUGGING_FACE_HUB_TOKEN`, else the file `$HF_TOKEN_PATH` or
    /// `$HF_HOME/token`. Private: it is sent to the endpoint and never printed.
    token: Option<String>,
}

impl std::fmt::Debug for HubEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubEnv")
            .field("cache_dir", &self.cache_dir)
            .field("endpoint", &self.endpoint)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl HubEnv {
    /// From this process's environment.
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var_os(k))
    }

    /// From any variable lookup (tests pass a map instead of touching the process environment).
    /// Empty variables count as unset.
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Self {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let home = get("HOME").map(PathBuf::from);
        let path = |v: OsString| expand_tilde(PathBuf::from(v), home.as_deref());
        let hf_home = get("HF_HOME").map(path).unwrap_or_else(|| {
            get("XDG_CACHE_HOME")
                .map(path)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("huggingface")
        });
        let cache_dir = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(path)
            .unwrap_or_else(|| hf_home.join("hub"));
        let endpoint = get("HF_ENDPOINT")
            .map(|v| v.to_string_lossy().trim_end_matches('/').to_string())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let offline = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"]
            .into_iter()
            .find_map(|k| {
                let v = get(k)?.to_string_lossy().to_string();
                is_true(&v).then(|| format!("{k}={v}"))
            });
        let clean = |t: String| {
            let t = t.replace(['\r', '\n'], "").trim().to_string();
            (!t.is_empty()).then_some(t)
        };
        let token = get("HF_TOKEN")
            .or_else(|| get("HUGGING_FACE_HUB_TOKEN"))
            .and_then(|t| clean(t.to_string_lossy().to_string()))
            .or_else(|| {
                let file = get("HF_TOKEN_PATH")
                    .map(path)
                    .unwrap_or_else(|| hf_home.join("token"));
                std::fs::read_to_string(file).ok().and_then(clean)
            });
        HubEnv {
            cache_dir,
            endpoint,
            offline,
            token,
        }
    }

    /// Whether a token will be sent (its value is never exposed).
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub(crate) fn cache(&self) -> Cache {
        Cache::new(self.cache_dir.clone())
    }

    /// `hf-hub`'s client for this endpoint, token and cache. Its own progress bar is off: ours
    /// is passed per download.
    pub(crate) fn api(&self) -> Result<Api, ApiError> {
        ApiBuilder::from_cache(self.cache())
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .with_retries(2)
            .with_user_agent("distill", env!("CARGO_PKG_VERSION"))
            .build()
    }
}

/// `huggingface_hub`'s truthy values: 1, ON, YES, TRUE (any case).
fn is_true(v: &str) -> bool {
    ["1", "ON", "YES", "TRUE"].contains(&v.to_ascii_uppercase().as_str())
}

fn expand_tilde(p: PathBuf, home: Option<&Path>) -> PathBuf {
    match (p.strip_prefix("~"), home) {
        (Ok(rest), Some(h)) => h.join(rest),
        _ => p,
    }
}

/// A model repository at a revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    pub id: String,
    pub revision: String,
}

impl RepoRef {
    /// `org/name` or `name`, optionally `@revision`; `None` when it cannot be a Hub repo id
    /// (the same rules as `huggingface_hub.utils.validate_repo_id`).
    pub fn parse(spec: &str) -> Option<RepoRef> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev),
            Some(_) => return None,
            None => (spec, "main"),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let part_ok = |p: &&str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !p.starts_with(['-', '.'])
                && !p.ends_with(['-', '.'])
        };
        let ok = (1..=2).contains(&parts.len())
            && parts.iter().all(part_ok)
            && !id.contains("--")
            && !id.contains("..")
            && !id.ends_with(".git")
            && id.len() <= 96;
        ok.then(|| RepoRef {
            id: id.to_string(),
            revision: revision.to_string(),
        })
    }

    /// A full 40-hex commit id (cached under `snapshots/<commit>` with no ref file).
    pub fn is_commit(&self) -> bool {
        self.revision.len() == 40 && self.revision.bytes().all(|b| b.is_ascii_hexdigit())
    }

    pub(crate) fn repo(&self) -> Repo {
        Repo::with_revision(self.id.clone(), RepoType::Model, self.revision.clone())
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.revision)
    }
}

/// One repository's view of the cache.
pub(crate) struct CachedRepo {
    inner: CacheRepo,
    repo: RepoRef,
    /// `<cache>/models--org--name`, for messages.
    pub dir: PathBuf,
}

impl CachedRepo {
    pub fn new(env: &HubEnv, repo: &RepoRef) -> Self {
        let r = repo.repo();
        CachedRepo {
            dir: env.cache_dir.join(r.folder_name()),
            inner: env.cache().repo(r),
            repo: repo.clone(),
        }
    }

    /// `snapshots/<commit>/<file>` of the revision, if cached. A branch or tag goes through
    /// `refs/<revision>` (hf-hub); a commit is looked up directly, since `huggingface_hub`
    /// writes no ref file for a commit.
    pub fn get(&self, file: &str) -> Option<PathBuf> {
        if self.repo.is_commit() {
            let p = self.inner.pointer_path(&self.repo.revision).join(file);
            p.exists().then_some(p)
        } else {
            self.inner.get(file)
        }
    }

    /// `snapshots/<commit>`.
    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.inner.pointer_path(commit)
    }

    /// Points `refs/<revision>` at `commit`.
    pub fn set_ref(&self, commit: &str) -> std::io::Result<()> {
        self.inner.create_ref(commit)
    }
}

/// A download bar for one file; hidden unless asked for (indicatif also hides it when stderr
/// is not a terminal).
pub(crate) struct Bar(indicatif::ProgressBar);

impl Bar {
    pub fn new(show: bool) -> Self {
        Bar(if show {
            indicatif::ProgressBar::new(0)
        } else {
            indicatif::ProgressBar::hidden()
        })
    }
}

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        self.0.set_message(format!("downloading {filename}"));
    }
    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }
    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

/// `hf-hub` calls for one repository at one revision.
pub(crate) struct Remote {
    api: ApiRepo,
}

/// What went wrong talking to the Hub, in terms a user can act on.
#[derive(Debug)]
pub(crate) enum RemoteError {
    /// An HTTP status from the endpoint.
    Status(u16),
    /// Could not reach the endpoint, or the transfer failed.
    Transport(String),
    /// Writing to the cache.
    Io(std::io::Error),
}

impl Remote {
    pub fn new(env: &HubEnv, repo: &RepoRef) -> Result<Self, RemoteError> {
        let api = env.api().map_err(RemoteError::from)?;
        Ok(Remote {
            api: api.repo(repo.repo()),
        })
    }

    /// The revision's commit and file list (`GET /api/models/<id>/revision/<revision>`).
    pub fn info(&self) -> Result<(String, Vec<String>), RemoteError> {
        let info = self.api.info().map_err(RemoteError::from)?;
        Ok((
            info.sha,
            info.siblings.into_iter().map(|s| s.rfilename).collect(),
        ))
    }

    /// Downloads `file` into the cache (`blobs/` plus a `snapshots/<commit>/` link, and
    /// `refs/<revision>`), returning the snapshot path.
    pub fn download(&self, file: &str, progress: bool) -> Result<PathBuf, RemoteError> {
        self.api
            .download_with_progress(file, Bar::new(progress))
            .map_err(RemoteError::from)
    }
}

impl From<ApiError> for RemoteError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::RequestError(e) => match *e {
                ureq::Error::StatusCode(code) => RemoteError::Status(code),
                other => RemoteError::Transport(other.to_string()),
            },
            ApiError::IoError(e) => RemoteError::Io(e),
            ApiError::TooManyRetries(e) => RemoteError::from(*e),
            other => RemoteError::Transport(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> HubEnv {
        let m: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        HubEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn cache_dir_follows_huggingface_hub_precedence() {
        let all = [
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/xdg"),
            ("HF_HOME", "/hf"),
            ("HUGGINGFACE_HUB_CACHE", "/legacy"),
            ("HF_HUB_CACHE", "/hub"),
        ];
        let expect = ["/hub", "/legacy", "/hf/hub", "/xdg/huggingface/hub"];
        for (i, want) in expect.iter().enumerate() {
            let vars = &all[..all.len() - i];
            assert_eq!(env(vars).cache_dir, PathBuf::from(want), "{vars:?}");
        }
        assert_eq!(
            env(&[("HOME", "/home/u")]).cache_dir,
            PathBuf::from("/home/u/.cache/huggingface/hub")
        );
        assert_eq!(
            env(&[
                ("HOME", "/home/u"),
                ("HF_HOME", "~/hf"),
                ("HF_HUB_CACHE", "")
            ])
            .cache_dir,
            PathBuf::from("/home/u/hf/hub"),
            "~ expands and an empty variable counts as unset"
        );
    }

    #[test]
    fn endpoint_offline_and_token() {
        let e = env(&[("HOME", "/nonexistent")]);
        assert_eq!(e.endpoint, "https://huggingface.co");
        assert_eq!(e.offline, None);
        assert!(!e.has_token());

        let e = env(&[
            ("HF_ENDPOINT", "http://127.0.0.1:9/"),
            ("HF_HUB_OFFLINE", "yes"),
            ("HF_TOKEN", " hf_abc\n"),
        ]);
        assert_eq!(e.endpoint, "http://127.0.0.1:9");
        assert_eq!(e.offline.as_deref(), Some("HF_HUB_OFFLINE=yes"));
        assert_eq!(e.token.as_deref(), Some("hf_abc"));
        assert!(
            !format!("{e:?}").contains("hf_abc"),
            "Debug shows the token"
        );
        assert_eq!(env(&[("HF_HUB_OFFLINE", "0")]).offline, None);
        assert_eq!(
            env(&[("TRANSFORMERS_OFFLINE", "1")]).offline.as_deref(),
            Some("TRANSFORMERS_OFFLINE=1")
        );

        // The token file: $HF_TOKEN_PATH, else $HF_HOME/token; $HF_TOKEN wins over both.
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("token"), "hf_file\n").unwrap();
        let home = t.path().to_str().unwrap();
        assert_eq!(env(&[("HF_HOME", home)]).token.as_deref(), Some("hf_file"));
        let other = t.path().join("other");
        std::fs::write(&other, "hf_other").unwrap();
        let e = env(&[
            ("HF_HOME", home),
            ("HF_TOKEN_PATH", other.to_str().unwrap()),
        ]);
        assert_eq!(e.token.as_deref(), Some("hf_other"));
        let e = env(&[("HF_HOME", home), ("HF_TOKEN", "hf_env")]);
        assert_eq!(e.token.as_deref(), Some("hf_env"));
    }

    #[test]
    fn repo_ids_and_revisions() {
        let r = RepoRef::parse("BAAI/bge-small-en-v1.5").unwrap();
        assert_eq!(
            (r.id.as_str(), r.revision.as_str()),
            ("BAAI/bge-small-en-v1.5", "main")
        );
        let r = RepoRef::parse("org/m@refs/pr/1").unwrap();
        assert_eq!((r.id.as_str(), r.revision.as_str()), ("org/m", "refs/pr/1"));
        assert!(RepoRef::parse("gpt2").is_some());
        let sha = "a".repeat(40);
        assert!(RepoRef::parse(&format!("o/m@{sha}")).unwrap().is_commit());
        assert!(!RepoRef::parse("o/m@v1").unwrap().is_commit());
        for bad in [
            "models/base/all-MiniLM-L6-v2",
            "./m",
            "/abs/m",
            "o/m@",
            "o--x/m",
            "o/m.git",
            "o/../m",
            "a b/c",
            "",
            "o/",
        ] {
            assert!(RepoRef::parse(bad).is_none(), "{bad}");
        }
    }
}
