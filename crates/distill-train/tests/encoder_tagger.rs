//! The fine-tuned extraction student on the real MiniLM and a real Restaurant-8k slice: every
//! weight of the token-classification model gets a gradient and every pretrained tensor is
//! matched by name; it learns spans with the question as context; its directory is
//! `BertForTokenClassification` in the Hugging Face layout and loads back to the same answers;
//! a text longer than its window is read in windows, so no span past a cut is lost.

mod common;

use candle_core::{Device, Tensor};
use distill_core::spec::{Context, TaskSpec};
use distill_train::encoder::bert::{Batch, BertClassifier, BertConfig, Dropout, Head, LoadOptions};
use distill_train::encoder::embed::Backend;
use distill_train::encoder::finetune::token_loss;
use distill_train::tagging::{encoder, model};
use distill_train::TrainOptions;
use std::path::{Path, PathBuf};

/// A saved encoder tagger on the packed CPU forward (what `model::load` gives on the CPU).
fn packed_tagger(dir: &Path, meta: &model::TaggerMeta) -> encoder::EncoderTagger {
    encoder::load_backend(dir, meta, &Device::Cpu, Backend::Fast).unwrap()
}

fn minilm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/base/all-MiniLM-L6-v2")
}

#[test]
fn the_token_head_trains_every_weight_and_matches_every_pretrained_tensor() {
    let dir = minilm();
    let (cfg, _) = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let (m, report) = BertClassifier::from_tensors_with_head(
        Head::Token,
        tensors,
        &dir,
        &cfg,
        11,
        &Device::Cpu,
        LoadOptions {
            trainable: true,
            init_missing_head: true,
            seed: 1,
        },
    )
    .unwrap();
    // Only the sequence pooler (no use to a token head) is left over, only the classifier is new.
    assert!(
        report.unused.iter().all(|n| n.contains("pooler")),
        "{:?}",
        report.unused
    );
    let mut fresh = report.initialised.clone();
    fresh.sort();
    assert_eq!(fresh, ["classifier.bias", "classifier.weight"]);
    assert!(m.vars().iter().all(|(n, _)| !n.contains("pooler")));

    let seqs: Vec<Vec<u32>> = vec![vec![101, 2005, 1018, 102, 2051, 102], vec![101, 7592, 102]];
    let types: Vec<Vec<u32>> = vec![vec![0, 0, 0, 0, 1, 1], vec![0, 0, 0]];
    let s: Vec<&[u32]> = seqs.iter().map(|x| x.as_slice()).collect();
    let t: Vec<&[u32]> = types.iter().map(|x| x.as_slice()).collect();
    let batch = Batch::from_segments(&s, &t, 0, &Device::Cpu).unwrap();
    let mut drop = Dropout::new(3, &Device::Cpu).unwrap();
    let logits = m.forward(&batch, Some(&mut drop)).unwrap();
    assert_eq!(logits.dims(), &[2, 6, 11]);
    let tags = Tensor::new(&[0u32, 5, 6, 0, 0, 0, 0, 1, 0, 0, 0, 0], &Device::Cpu).unwrap();
    let weight = Tensor::new(
        &[0f32, 1., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0.],
        &Device::Cpu,
    )
    .unwrap();
    let grads = token_loss(&logits, &tags, &weight)
        .unwrap()
        .backward()
        .unwrap();
    let dead: Vec<&String> = m
        .vars()
        .iter()
        .filter(|(_, v)| {
            grads
                .get(v)
                .map(|g| {
                    g.abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                })
                .is_none_or(|x| !(x > 0.0 && x.is_finite()))
        })
        .map(|(n, _)| n)
        .collect();
    assert!(dead.is_empty(), "weights without gradient: {dead:?}");
}

/// Gold turns as teacher records (what `distill train` reads).
fn records(turns: &[common::Turn], path: &Path) {
    let lines: Vec<String> = turns
        .iter()
        .map(|t| {
            serde_json::json!({"id": "x", "text": t.text, "status": "ok", "context": t.context,
                "output": {"spans": t.spans}, "provider": "gold", "model": "gold"})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn the_encoder_tagger_learns_saves_as_hugging_face_and_reads_long_texts_in_windows() {
    let t = tempfile::tempdir().unwrap();
    let train: Vec<common::Turn> = common::restaurant8k("train")
        .into_iter()
        .step_by(16)
        .collect();
    let test: Vec<common::Turn> = common::restaurant8k("test")
        .into_iter()
        .step_by(40)
        .collect();
    let data = t.path().join("records.jsonl");
    records(&train, &data);
    let spec = TaskSpec::load(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/restaurant8k/task.toml"),
    )
    .unwrap();
    let out = t.path().join("tagger");
    let mut o = TrainOptions::new(&out);
    o.device = Device::Cpu;
    o.epochs = Some(3);
    o.max_len = Some(24);
    o.base = Some(minilm().to_string_lossy().into_owned());
    o.progress = false;
    let r = encoder::train(&spec, &data, &o, 0.1).unwrap();
    let dev_f1 = r.meta.dev_span_f1.unwrap();
    assert!(dev_f1 > 0.6, "dev span F1 {dev_f1}");

    // The Hugging Face layout: the architecture, the tags, the tensors by name.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForTokenClassification");
    assert_eq!(config["id2label"]["1"], "B-date");
    assert_eq!(config["num_labels"], 11);
    let tensors =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(tensors["classifier.weight"].dims(), &[11, 384]);
    assert!(tensors.contains_key("bert.encoder.layer.5.output.dense.weight"));
    assert!(!tensors.keys().any(|k| k.contains("pooler")));
    assert!(out.join("tokenizer.json").is_file() && out.join("vocab.txt").is_file());

    // Loaded back (by the one loader every stage uses), it answers as trained and as well.
    let (loaded, meta) = model::load(&out, &Device::Cpu).unwrap();
    assert_eq!(meta.student, encoder::STUDENT);
    let asked: Vec<(&str, &Context)> = test.iter().map(|x| (x.text.as_str(), &x.context)).collect();
    let answers = loaded.predict_batch(&asked).unwrap();
    let gold: Vec<Vec<distill_core::spans::Span>> = test.iter().map(|x| x.spans.clone()).collect();
    let predicted: Vec<Vec<distill_core::spans::Span>> =
        answers.iter().map(|a| a.0.clone()).collect();
    let f1 = model::span_f1(&gold, &predicted);
    assert!(f1 > 0.6, "test span F1 {f1}");
    for ((text, _), (spans, confidence)) in asked.iter().zip(&answers) {
        assert!((0.0..=1.0).contains(confidence));
        for s in spans {
            let covered: String = text.chars().skip(s.start).take(s.end - s.start).collect();
            assert_eq!(covered, s.text);
        }
    }
    // On the CPU a loaded tagger runs the packed encoder forward; candle's forward (what it
    // trained on, and what runs on a GPU) gives the same logits and the same answers.
    let candle = encoder::load_backend(&out, &meta, &Device::Cpu, Backend::Candle).unwrap();
    let packed = packed_tagger(&out, &meta);
    let mut max_diff = 0f32;
    for x in test.iter().take(40) {
        let (ids_p, types_p, logits_p) = packed.window_logits(&x.text, &x.context).unwrap();
        let (ids_c, types_c, logits_c) = candle.window_logits(&x.text, &x.context).unwrap();
        assert_eq!((ids_p, types_p), (ids_c, types_c));
        assert_eq!(logits_p.len(), logits_c.len());
        for (p, c) in logits_p.iter().flatten().zip(logits_c.iter().flatten()) {
            max_diff = max_diff.max((p - c).abs());
        }
    }
    assert!(
        max_diff < 1e-4,
        "packed vs candle logits differ by {max_diff}"
    );
    let by_candle = candle.predict_batch(&asked).unwrap();
    let by_packed = packed.predict_batch(&asked).unwrap();
    for (c, p) in by_candle.iter().zip(&by_packed) {
        assert_eq!(c.0, p.0);
        assert!((c.1 - p.1).abs() < 1e-4);
    }

    // One by one, or with other inputs: the same answers (padding changes nothing).
    let alone = loaded.predict_batch(&asked[..1]).unwrap();
    assert_eq!(alone[0].0, answers[0].0);
    assert!((alone[0].1 - answers[0].1).abs() < 1e-4);

    // A turn the tagger answers right, after filler three times its window: its spans are
    // found where they are, moved, so nothing past the first window's cut is lost (the
    // filler may change a slot, as any context would; the places must not change).
    let (turn, alone) = test
        .iter()
        .zip(&answers)
        .find(|(x, a)| {
            x.text.len() > 25 && !x.spans.is_empty() && model::same_spans(&x.spans, &a.0)
        })
        .expect("some test turn answered exactly");
    let filler = "ok sure ".repeat(40);
    let long = format!("{filler}{}", turn.text);
    assert!(loaded.token_len(&long) > 2 * 24);
    let (spans, _) = loaded
        .predict_batch(&[(&long, &turn.context)])
        .unwrap()
        .remove(0);
    let shift = filler.chars().count();
    let moved: Vec<distill_core::spans::Span> = alone
        .0
        .iter()
        .map(|s| distill_core::spans::Span {
            start: s.start + shift,
            end: s.end + shift,
            ..s.clone()
        })
        .collect();
    let late: Vec<distill_core::spans::Span> =
        spans.into_iter().filter(|s| s.start >= shift).collect();
    let places = |v: &[distill_core::spans::Span]| -> Vec<(usize, usize)> {
        v.iter().map(|s| (s.start, s.end)).collect()
    };
    assert_eq!(
        places(&late),
        places(&moved),
        "{:?} alone: {:?}; after filler: {late:?}",
        turn.text,
        alone.0
    );
}
