//! Shared test parts: a deterministic student, a banking77 task on the shared data, a server.
#![allow(dead_code)]

use distill_core::TaskSpec;
use distill_serve::{
    Classifier, CostEstimator, Escalator, ModelEntry, RunningServer, Server, ServerOptions,
};
use distill_train::{ModelMeta, Student};
use std::path::PathBuf;
use std::sync::Arc;

pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/banking77")
}

/// A banking77 task whose teacher is the sim-teacher (gold answers from the shared train.csv).
pub fn banking_task(dir: &std::path::Path) -> TaskSpec {
    let d = data_dir();
    let text = format!(
        "name = \"banking77\"\nkind = \"classify\"\n[input]\npath = {:?}\ngold_column = \"category\"\n[labels]\nfile = {:?}\n[teacher]\nprovider = \"openai\"\nmodel = \"gpt-4o\"\nbase_url = \"http://127.0.0.1:9/v1\"\n",
        d.join("train.csv").display().to_string(),
        d.join("categories.json").display().to_string(),
    );
    let p = dir.join("task.toml");
    std::fs::write(&p, text).unwrap();
    TaskSpec::load(&p).unwrap()
}

/// The first `n` texts of the shared train.csv.
pub fn sample_texts(n: usize) -> Vec<String> {
    let mut r = csv::Reader::from_path(data_dir().join("train.csv")).unwrap();
    r.records()
        .take(n)
        .map(|rec| rec.unwrap()[0].to_string())
        .collect()
}

/// A student whose answers are fixed functions of the text: label = hash mod labels; it is
/// confident exactly when `is_sure(text)` holds. Lets tests know which inputs escalate.
pub struct FixedStudent {
    meta: ModelMeta,
}

pub fn is_sure(text: &str) -> bool {
    text.split_whitespace().count().is_multiple_of(2)
}

impl FixedStudent {
    pub fn new(labels: Vec<String>, max_len: Option<usize>) -> Self {
        let meta: ModelMeta = serde_json::from_value(serde_json::json!({
            "format_version": 1, "task": "banking77", "labels": labels, "kind": "linear",
            "data_hash": "x", "label_source": "gold", "n_train": 1, "n_dev": 1,
            "dev_accuracy": 1.0, "temperature": 1.0, "max_len": max_len, "epochs_run": 1,
            "train_wall_s": 0.0, "device": "cpu", "threads": 1, "examples_per_s": 0.0,
            "train_cost_usd": 0.0, "seed": 0, "created": "2026-11-26T00:00:00Z",
            "distill_version": "test"
        }))
        .unwrap();
        Self { meta }
    }
}

impl Student for FixedStudent {
    fn meta(&self) -> &ModelMeta {
        &self.meta
    }
    fn logits(&self, texts: &[&str]) -> distill_train::Result<Vec<Vec<f32>>> {
        let n = self.meta.labels.len();
        Ok(texts
            .iter()
            .map(|t| {
                let h = t
                    .bytes()
                    .fold(7usize, |a, b| a.wrapping_mul(31).wrapping_add(b as usize));
                let mut row = vec![0.0f32; n];
                row[h % n] = if is_sure(t) { 20.0 } else { 1.0 };
                row
            })
            .collect())
    }
}

pub fn entry(
    name: &str,
    student: Arc<dyn Student>,
    escalator: Option<Arc<dyn Escalator>>,
) -> ModelEntry {
    ModelEntry {
        name: name.into(),
        student: Arc::new(Classifier::new(student)),
        escalator,
        estimator: CostEstimator::none(),
        case_insensitive: false,
        threshold: None,
    }
}

pub async fn start(models: Vec<ModelEntry>, opts: ServerOptions) -> RunningServer {
    Server::new(models, opts)
        .unwrap()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub async fn classify(
    http: &reqwest::Client,
    url: &str,
    model: &str,
    inputs: &[String],
    tag: Option<&str>,
) -> serde_json::Value {
    let mut req = http
        .post(format!("{url}/v1/classify"))
        .json(&serde_json::json!({"model": model, "inputs": inputs}));
    if let Some(t) = tag {
        req = req.header("x-distill-tag", t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The server's Prometheus text.
pub async fn metrics_text(http: &reqwest::Client, server: &RunningServer) -> String {
    http.get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// One series' value (`name{labels}` exactly as printed), 0 when absent.
pub fn series(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The sim-teacher on a free 127.0.0.1 port, answering `spec`'s task.
pub async fn start_sim(spec: TaskSpec) -> distill_sim::SimServer {
    distill_sim::SimServer::start(
        distill_sim::SimConfig::new(spec),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}
