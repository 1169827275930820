//! The base-model resolver against a local Hub (`hub_support`): a sharded checkpoint is
//! downloaded shard by shard and loads to the same encoder as the single file; a private
//! repository needs the token, which never appears in an error; only the files the model needs
//! are fetched. Settings go through `HubEnv::from_vars`, never this process's environment.

mod encoder_bert_support;
mod hub_support;

use distill_train::encoder::base::{resolve_with, BaseError, DownloadError, HubOptions};
use distill_train::encoder::embed::FrozenEncoder;
use distill_train::encoder::hub::HubEnv;
use hub_support::{sha256_hex, tiny_bert, HubRepo, HubServer};
use std::ffi::OsString;
use std::path::Path;

fn env(endpoint: &str, cache: &Path, token: Option<&str>) -> HubEnv {
    let (endpoint, cache) = (OsString::from(endpoint), cache.as_os_str().to_owned());
    let token = token.map(OsString::from);
    HubEnv::from_vars(move |k| match k {
        "HF_ENDPOINT" => Some(endpoint.clone()),
        "HF_HUB_CACHE" => Some(cache.clone()),
        "HF_TOKEN" => token.clone(),
        _ => None,
    })
}

const ONLINE: HubOptions = HubOptions {
    offline: false,
    progress: false,
};

/// `model.safetensors` split in two shards with their index, as `transformers` writes them.
fn sharded(files: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut weights = Vec::new();
    for (name, bytes) in files {
        if name == "model.safetensors" {
            weights = bytes;
        } else {
            out.push((name, bytes));
        }
    }
    let st = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let half = tensors.len() / 2;
    let mut map = serde_json::Map::new();
    for (i, part) in [&tensors[..half], &tensors[half..]].into_iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        for (t, _) in part {
            map.insert(t.clone(), name.clone().into());
        }
        let views: Vec<_> = part.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        out.push((name, safetensors::serialize(views, None).unwrap()));
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    out.push((
        "model.safetensors.index.json".into(),
        index.to_string().into_bytes(),
    ));
    out
}

fn embed(dir: &Path) -> Vec<f32> {
    let e = FrozenEncoder::load(dir, Some(16), 1, &candle_core::Device::Cpu).unwrap();
    e.embed(&["the movie was good", "service really bad"], 2)
        .unwrap()
}

#[test]
fn sharded_checkpoint_downloads_every_shard_and_loads_as_the_single_file() {
    let single = HubRepo::new("org/single").commit(tiny_bert(3));
    let split = HubRepo::new("org/sharded").commit(sharded(tiny_bert(3)));
    let sha = split.sha(0).to_string();
    let hub = HubServer::start(vec![single, split]);
    let t = tempfile::tempdir().unwrap();
    let env = env(hub.endpoint(), &t.path().join("hub"), None);

    let one = resolve_with("org/single", &env, ONLINE).unwrap();
    let many = resolve_with("org/sharded", &env, ONLINE).unwrap();
    assert_eq!(many.source, format!("org/sharded@{sha}"));
    for f in [
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert!(many.dir.join(f).is_file(), "{f} not in the snapshot");
    }
    assert!(!many.dir.join("model.safetensors").exists());
    assert_eq!(embed(&one.dir), embed(&many.dir));
}

#[test]
fn private_repository_needs_the_token_and_errors_never_show_it() {
    let secret = "hf_SecretTokenValue123";
    let repo = HubRepo::new("org/private")
        .commit(tiny_bert(4))
        .private(secret);
    let hub = HubServer::start(vec![repo]);
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("hub");

    let err = resolve_with("org/private", &env(hub.endpoint(), &cache, None), ONLINE).unwrap_err();
    let BaseError::Unresolved(u) = &err else {
        panic!("{err}")
    };
    let download = &u.download;
    assert!(
        matches!(
            download,
            DownloadError::NotFound {
                status: 401,
                token: false
            }
        ),
        "{download:?}"
    );
    assert!(err.to_string().contains("set HF_TOKEN"), "{err}");

    let wrong = "hf_WrongTokenValue456";
    let err = resolve_with(
        "org/private",
        &env(hub.endpoint(), &cache, Some(wrong)),
        ONLINE,
    )
    .unwrap_err();
    let msg = format!("{err} {err:?}");
    assert!(msg.contains("token"), "{msg}");
    assert!(
        !msg.contains(wrong),
        "the token leaked into the error: {msg}"
    );

    let got = resolve_with(
        "org/private",
        &env(hub.endpoint(), &cache, Some(secret)),
        ONLINE,
    )
    .unwrap();
    assert!(got.dir.join("model.safetensors").is_file());
}

#[test]
fn only_what_the_model_needs_is_fetched_into_the_python_layout() {
    let mut files = tiny_bert(5);
    files.push(("pytorch_model.bin".into(), b"pickle".to_vec()));
    files.push(("README.md".into(), b"# tiny".to_vec()));
    files.push(("onnx/model.onnx".into(), b"onnx".to_vec()));
    let weights = files[2].1.clone();
    let repo = HubRepo::new("org/tiny").commit(files);
    let sha = repo.sha(0).to_string();
    let hub = HubServer::start(vec![repo]);
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("hub");
    let got = resolve_with("org/tiny", &env(hub.endpoint(), &cache, None), ONLINE).unwrap();

    let repo_dir = cache.join("models--org--tiny");
    assert_eq!(got.dir, repo_dir.join("snapshots").join(&sha));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        sha
    );
    // The snapshot links to a blob named by the SHA-256 (X-Linked-Etag), as Python's cache.
    let blob = std::fs::canonicalize(got.dir.join("model.safetensors")).unwrap();
    assert_eq!(
        blob,
        std::fs::canonicalize(repo_dir.join("blobs").join(sha256_hex(&weights))).unwrap()
    );
    let fetched: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.contains("/resolve/") || r.contains("/lfs/"))
        .collect();
    for unwanted in ["pytorch_model.bin", "README.md", "onnx"] {
        assert!(
            !fetched.iter().any(|r| r.contains(unwanted)),
            "{unwanted} fetched: {fetched:?}"
        );
    }
}
