//! Every student kind on a multilabel task: one sigmoid per label, per-label calibration in
//! `distill.json`, label sets from `predict`, a model directory that loads back to the same
//! answers. The task is separable by construction (a label is given exactly when one of its
//! words is in the text), so a student that learns sets at all learns this one; the tiny random
//! BERT bases are the shared fixtures (no downloads).

mod encoder_bert_support;

use distill_core::LabelSet;
use distill_train::student::SplitSets;
use distill_train::{encoder, load_student, TrainData, TrainOptions};
use encoder_bert_support::*;

const LABEL_WORDS: [&[&str]; 3] = [
    &["good", "great", "love"],
    &["bad", "awful", "hate"],
    &["food"],
];
const FILLER: &[&str] = &["the", "movie", "was", "is", "very", "really", "service"];

fn labels() -> LabelSet {
    let mut l = LabelSet::new(vec!["pos".into(), "neg".into(), "food".into()]);
    l.set_separator = Some("|".into());
    l
}

/// `n` texts: example `k` carries the labels of the bits of `k % 8` (the empty set included).
fn rows(n: usize, offset: usize) -> (Vec<(String, usize)>, Vec<Vec<usize>>) {
    let mut texts = Vec::new();
    let mut sets = Vec::new();
    for i in 0..n {
        let k = i + offset;
        let set: Vec<usize> = (0..3).filter(|b| (k % 8) >> b & 1 == 1).collect();
        let mut words = vec![FILLER[k % FILLER.len()], FILLER[(k / 7) % FILLER.len()]];
        for &j in &set {
            words.insert(
                (k / 3) % words.len(),
                LABEL_WORDS[j][(k / 8) % LABEL_WORDS[j].len()],
            );
        }
        texts.push((words.join(" "), set.first().copied().unwrap_or(0)));
        sets.push(set);
    }
    (texts, sets)
}

fn data() -> TrainData {
    let (train, train_sets) = rows(96, 0);
    let (dev, dev_sets) = rows(32, 1000);
    TrainData {
        task: "tags".into(),
        labels: labels(),
        train,
        dev,
        sets: Some(SplitSets {
            train: train_sets,
            dev: dev_sets,
        }),
        data_hash: "test".into(),
        label_source: "gold".into(),
    }
}

fn opts(out: &std::path::Path, base: Option<&std::path::Path>) -> TrainOptions {
    let mut o = TrainOptions::new(out);
    o.seed = 7;
    o.device = candle_core::Device::Cpu;
    o.threads = 1;
    o.progress = false;
    o.offline = true;
    if let Some(b) = base {
        o.base = Some(b.to_string_lossy().into_owned());
        o.epochs = Some(30);
        o.batch_size = Some(8);
        o.lr = Some(3e-3);
        o.max_len = Some(16);
        o.patience = Some(30);
        o.cache_dir = Some(out.with_extension("cache"));
    }
    o
}

/// Trains, then checks what every multilabel student must have; returns the dev exact-set
/// accuracy of the reloaded student's answers.
fn check(kind: &str, out: &std::path::Path, train: impl Fn() -> distill_train::ModelMeta) -> f64 {
    let d = data();
    let meta = train();
    let head = meta
        .multilabel
        .as_ref()
        .unwrap_or_else(|| panic!("{kind}: no multilabel head"));
    assert_eq!(head.thresholds.len(), 3, "{kind}");
    assert_eq!(head.separator, "|");
    let loss = meta
        .dev_loss
        .unwrap_or_else(|| panic!("{kind}: no dev loss"));
    assert!(loss > 0.0 && loss.is_finite(), "{kind}: dev loss {loss}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("distill.json")).unwrap()).unwrap();
    assert!(
        saved["multilabel"]["thresholds"].is_array(),
        "{kind}: {saved}"
    );

    let s = load_student(out, &candle_core::Device::Cpu).unwrap();
    let texts: Vec<&str> = d.dev.iter().map(|(t, _)| t.as_str()).collect();
    let preds = s.predict(&texts, 3).unwrap();
    let again = load_student(out, &candle_core::Device::Cpu)
        .unwrap()
        .predict(&texts, 3)
        .unwrap();
    assert_eq!(preds, again, "{kind}: a reloaded student answers the same");
    let names = ["pos", "neg", "food"];
    let mut right = 0;
    for (p, want) in preds.iter().zip(&d.sets.as_ref().unwrap().dev) {
        let got = p
            .labels
            .as_ref()
            .unwrap_or_else(|| panic!("{kind}: no labels: {p:?}"));
        assert_eq!(
            p.label,
            if got.is_empty() {
                "[]".to_string()
            } else {
                got.join("|")
            }
        );
        assert!((0.0..=1.0).contains(&p.confidence), "{p:?}");
        let want: Vec<String> = want.iter().map(|&j| names[j].to_string()).collect();
        right += usize::from(*got == want);
    }
    right as f64 / preds.len() as f64
}

#[test]
fn linear_learns_label_sets() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("linear");
    let acc = check("linear", &out, || {
        distill_train::train::train_on(
            &data(),
            distill_train::StudentKind::Linear,
            &opts(&out, None),
        )
        .unwrap()
    });
    assert!(acc >= 0.9, "linear exact-set accuracy {acc}");
}

#[test]
fn encoder_head_learns_label_sets() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    write_sentence_encoder_base(&base, &tiny_config(), 9);
    let out = t.path().join("head");
    let acc = check("encoder-head", &out, || {
        encoder::train_head(&data(), &opts(&out, Some(&base))).unwrap()
    });
    assert!(
        acc >= 0.5,
        "encoder-head exact-set accuracy {acc} (chance: 1/8)"
    );
}

#[test]
fn a_student_without_a_dev_split_still_answers_label_sets() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    write_sentence_encoder_base(&base, &tiny_config(), 9);
    let out = t.path().join("head");
    let mut d = data();
    d.dev.clear();
    d.sets.as_mut().unwrap().dev.clear();
    let meta = encoder::train_head(&d, &opts(&out, Some(&base))).unwrap();
    let head = meta.multilabel.expect("still a multilabel student");
    assert_eq!(head.thresholds, vec![0.5; 3]);
}

#[test]
fn encoder_finetune_learns_label_sets_and_says_so_in_config_json() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    write_sentence_encoder_base(&base, &tiny_config(), 9);
    let out = t.path().join("finetune");
    let acc = check("encoder-finetune", &out, || {
        encoder::train_finetune(&data(), &opts(&out, Some(&base))).unwrap()
    });
    assert!(
        acc >= 0.5,
        "encoder-finetune exact-set accuracy {acc} (chance: 1/8)"
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["problem_type"], "multi_label_classification");
    assert_eq!(cfg["id2label"]["2"], "food");
}
