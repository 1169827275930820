//! `encoder-finetune` end to end on a tiny random BERT: learns a separable task, writes a model
//! directory that loads back with identical logits, is deterministic with a seed, and refuses
//! bad data.
//!
//! A randomly initialised BERT (weights ~ N(0, 0.02)) starts on a plateau: its gradients are
//! tiny (global norm ~0.005) and it needs on the order of a hundred AdamW steps at 1e-3 to leave
//! chance level, in PyTorch exactly as here (`BertForSequenceClassification` with the same
//! weights, batches and recipe gave the same gradients to 2e-8 and the same loss curve to five
//! decimals). With dropout and only 48 steps at 1e-3 both stay at chance, so the test gives the
//! tiny model enough steps and a learning rate it can take.

mod encoder_bert_support;

use distill_core::LabelSet;
use distill_train::encoder;
use distill_train::{load_student, TrainData, TrainOptions};
use encoder_bert_support::*;

fn data() -> TrainData {
    TrainData {
        task: "sentiment".into(),
        labels: LabelSet::new(vec!["pos".into(), "neg".into()]),
        train: sentiment_rows(64, 0),
        dev: sentiment_rows(16, 1000),
        sets: None,
        data_hash: "test".into(),
        label_source: "gold".into(),
    }
}

fn opts(out: &std::path::Path, base: &std::path::Path, seed: u64) -> TrainOptions {
    let mut o = TrainOptions::new(out);
    o.seed = seed;
    o.device = candle_core::Device::Cpu;
    o.threads = 1;
    o.epochs = Some(20);
    o.batch_size = Some(8);
    o.lr = Some(3e-3);
    o.max_len = Some(16);
    o.patience = Some(20);
    o.base = Some(base.to_string_lossy().into_owned());
    o.progress = false;
    o
}

#[test]
fn finetune_learns_roundtrips_and_is_deterministic() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    write_sentence_encoder_base(&base, &tiny_config(), 9);
    let d = data();
    let out_a = t.path().join("a");
    let meta = encoder::train_finetune(&d, &opts(&out_a, &base, 42)).unwrap();
    assert!(
        meta.dev_accuracy >= 0.9,
        "dev accuracy {}",
        meta.dev_accuracy
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "distill.json",
    ] {
        assert!(out_a.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_a.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "BertForSequenceClassification");
    assert_eq!(cfg["id2label"]["1"], "neg");

    let texts: Vec<&str> = d.dev.iter().map(|(t, _)| t.as_str()).collect();
    let s1 = load_student(&out_a, &candle_core::Device::Cpu).unwrap();
    let s2 = load_student(&out_a, &candle_core::Device::Cpu).unwrap();
    let l1 = s1.logits(&texts).unwrap();
    assert_eq!(l1, s2.logits(&texts).unwrap());
    let right = l1
        .iter()
        .zip(&d.dev)
        .filter(|(row, (_, y))| (row[1] > row[0]) == (*y == 1))
        .count();
    assert_eq!(right as f64 / texts.len() as f64, meta.dev_accuracy);

    // Held-out sentences the model never saw, neither in training nor for early stopping.
    let test = sentiment_rows(40, 5000);
    let test_texts: Vec<&str> = test.iter().map(|(t, _)| t.as_str()).collect();
    let lt = s1.logits(&test_texts).unwrap();
    let right = lt
        .iter()
        .zip(&test)
        .filter(|(row, (_, y))| (row[1] > row[0]) == (*y == 1))
        .count();
    let test_acc = right as f64 / test.len() as f64;
    assert!(test_acc >= 0.9, "test accuracy {test_acc}");

    let out_b = t.path().join("b");
    encoder::train_finetune(&d, &opts(&out_b, &base, 42)).unwrap();
    let sb = load_student(&out_b, &candle_core::Device::Cpu).unwrap();
    assert_eq!(l1, sb.logits(&texts).unwrap(), "same seed, different model");
}

#[test]
fn bad_data_and_missing_base_are_clear_errors_and_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    write_sentence_encoder_base(&base, &tiny_config(), 9);
    let out = t.path().join("m");
    let mut one = data();
    for r in one.train.iter_mut() {
        r.1 = 0;
    }
    let err = encoder::train_finetune(&one, &opts(&out, &base, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("same label"), "{err}");
    let err = encoder::train_finetune(&data(), &opts(&out, &t.path().join("nope"), 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("scripts/setup.sh"), "{err}");
    let mut huge = opts(&out, &base, 1);
    huge.lr = Some(1e38);
    let err = encoder::train_finetune(&data(), &huge)
        .unwrap_err()
        .to_string();
    assert!(err.contains("diverged") && err.contains("step"), "{err}");
    assert!(!out.exists());
}
