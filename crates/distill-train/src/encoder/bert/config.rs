//! The part of a Hugging Face BERT `config.json` the model reads, and the `config.json` an
//! exported classifier is written with.

use crate::error::{Result, TrainError};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// The fields of a Hugging Face BERT `config.json` the model needs.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub hidden_dropout_prob: f32,
    pub attention_probs_dropout_prob: f32,
    pub classifier_dropout: Option<f32>,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub initializer_range: f32,
    pub pad_token_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact erf form, as in the original BERT.
    GeluErf,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    fn name(&self) -> &'static str {
        match self {
            Activation::GeluErf => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Relu => "relu",
        }
    }
}

impl BertConfig {
    /// Reads `config.json`; `raw` is kept by callers so an exported config carries every field
    /// of the base model, not just the ones we understand.
    pub fn from_file(path: &Path) -> Result<(Self, Value)> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let raw: Value = serde_json::from_str(&text)
            .map_err(|e| TrainError::model(path, format!("config.json is not valid JSON: {e}")))?;
        let cfg = Self::from_value(&raw).map_err(|m| TrainError::model(path, m))?;
        Ok((cfg, raw))
    }

    pub fn from_value(v: &Value) -> std::result::Result<Self, String> {
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("bert");
        if model_type != "bert" {
            return Err(format!(
                "model_type `{model_type}` is not supported (BERT-family checkpoints with \
                 model_type \"bert\", e.g. BERT and MiniLM, are)"
            ));
        }
        if let Some(p) = v.get("position_embedding_type").and_then(Value::as_str) {
            if p != "absolute" {
                return Err(format!(
                    "position_embedding_type `{p}` is not supported (only `absolute`)"
                ));
            }
        }
        let usize_field = |k: &str| -> std::result::Result<usize, String> {
            v.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| format!("config.json: field `{k}` is missing or not an integer"))
        };
        let f_or = |k: &str, d: f64| v.get(k).and_then(Value::as_f64).unwrap_or(d);
        let act = match v
            .get("hidden_act")
            .and_then(Value::as_str)
            .unwrap_or("gelu")
        {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(format!(
                    "config.json: hidden_act `{other}` is not supported"
                ))
            }
        };
        let cfg = BertConfig {
            vocab_size: usize_field("vocab_size")?,
            hidden_size: usize_field("hidden_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads: usize_field("num_attention_heads")?,
            intermediate_size: usize_field("intermediate_size")?,
            hidden_act: act,
            hidden_dropout_prob: f_or("hidden_dropout_prob", 0.1) as f32,
            attention_probs_dropout_prob: f_or("attention_probs_dropout_prob", 0.1) as f32,
            classifier_dropout: v
                .get("classifier_dropout")
                .and_then(Value::as_f64)
                .map(|x| x as f32),
            max_position_embeddings: v
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(512) as usize,
            type_vocab_size: v
                .get("type_vocab_size")
                .and_then(Value::as_u64)
                .unwrap_or(2) as usize,
            layer_norm_eps: f_or("layer_norm_eps", 1e-12),
            initializer_range: f_or("initializer_range", 0.02) as f32,
            pad_token_id: v.get("pad_token_id").and_then(Value::as_u64).unwrap_or(0) as u32,
        };
        if cfg.hidden_size == 0 || cfg.num_attention_heads == 0 {
            return Err("config.json: hidden_size and num_attention_heads must be positive".into());
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            ));
        }
        Ok(cfg)
    }

    /// A fresh `config.json` for a model built from scratch (tests, tiny models).
    pub fn to_value(&self) -> Value {
        serde_json::json!({
            "model_type": "bert",
            "architectures": ["BertModel"],
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act.name(),
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "initializer_range": self.initializer_range,
            "pad_token_id": self.pad_token_id,
            "position_embedding_type": "absolute",
        })
    }

    pub(super) fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The `config.json` of an exported classifier: the base config plus what
/// `transformers.AutoModelForSequenceClassification` needs to rebuild the head.
pub fn classifier_config_json(base: &Value, labels: &[String]) -> Value {
    let mut v = match base {
        Value::Object(_) => base.clone(),
        _ => Value::Object(Default::default()),
    };
    let id2label: BTreeMap<String, String> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone()))
        .collect();
    let label2id: BTreeMap<String, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i))
        .collect();
    if let Value::Object(m) = &mut v {
        m.insert(
            "architectures".into(),
            serde_json::json!(["BertForSequenceClassification"]),
        );
        m.insert("model_type".into(), "bert".into());
        m.insert("id2label".into(), serde_json::json!(id2label));
        m.insert("label2id".into(), serde_json::json!(label2id));
        m.insert("num_labels".into(), labels.len().into());
        m.insert("problem_type".into(), "single_label_classification".into());
        m.remove("_name_or_path");
    }
    v
}
