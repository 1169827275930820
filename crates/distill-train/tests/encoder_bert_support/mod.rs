//! Tiny BERT fixtures shared by the encoder tests: a word-level tokenizer and a 2-layer,
//! 32-wide model, so each test runs in well under a second on CI's two cores.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use distill_train::encoder::bert::{BertClassifier, BertConfig, LoadOptions};
use std::collections::HashMap;
use std::path::Path;

pub const WORDS: &[&str] = &[
    "good", "great", "nice", "love", "happy", "bad", "awful", "poor", "hate", "sad", "the",
    "movie", "food", "was", "is", "very", "really", "service",
];

pub fn tokenizer_json() -> String {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut vocab = serde_json::Map::new();
    for (i, w) in specials.iter().chain(WORDS.iter()).enumerate() {
        vocab.insert(w.to_string(), i.into());
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
    .to_string()
}

pub fn tiny_config() -> BertConfig {
    BertConfig::from_value(&serde_json::json!({
        "model_type": "bert",
        "vocab_size": 5 + WORDS.len(),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 32,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "initializer_range": 0.02,
        "pad_token_id": 0
    }))
    .unwrap()
}

pub fn random_model(
    cfg: &BertConfig,
    n_labels: usize,
    trainable: bool,
    seed: u64,
) -> BertClassifier {
    BertClassifier::random(
        cfg,
        n_labels,
        &Device::Cpu,
        LoadOptions {
            trainable,
            init_missing_head: true,
            seed,
        },
    )
    .unwrap()
}

/// A base directory laid out like sentence-transformers' all-MiniLM-L6-v2: no `bert.` prefix,
/// no pooler, no classifier.
pub fn write_sentence_encoder_base(dir: &Path, cfg: &BertConfig, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let m = random_model(cfg, 2, false, seed);
    let tensors: HashMap<String, Tensor> = m
        .named_tensors()
        .iter()
        .filter(|(n, _)| n.starts_with("bert.") && !n.starts_with("bert.pooler"))
        .map(|(n, t)| (n.trim_start_matches("bert.").to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_value().to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json()).unwrap();
}

/// A separable two-class dataset from the fixture vocabulary.
pub fn sentiment_rows(n: usize, offset: usize) -> Vec<(String, usize)> {
    let pos = ["good", "great", "nice", "love", "happy"];
    let neg = ["bad", "awful", "poor", "hate", "sad"];
    let fill = [
        "the movie was",
        "the food is very",
        "service really",
        "the",
        "really really",
    ];
    (0..n)
        .map(|i| {
            let k = i + offset;
            let y = k % 2;
            let w = if y == 0 { pos[k % 5] } else { neg[(k / 2) % 5] };
            (format!("{} {w}", fill[(k / 3) % 5]), y)
        })
        .collect()
}
