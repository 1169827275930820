//! The linear tagger on Restaurant-8k gold (the full training set, the whole test set):
//! it learns the slots, the question the assistant had asked makes it better, and its
//! confidence ranks its answers (the sure half is right more often than the unsure half).

mod common;

use common::{restaurant8k, Turn, RESTAURANT8K_SLOTS};
use distill_core::spans::Span;
use distill_core::spec::Context;
use distill_train::tagging::linear::{LinearTagger, LinearTaggerConfig, TagExample};
use distill_train::tagging::model::{same_spans, span_f1 as f1};

fn train(data: &[Turn], with_context: bool) -> LinearTagger {
    let none = Context::new();
    let examples: Vec<TagExample> = data
        .iter()
        .map(|t| TagExample {
            text: &t.text,
            context: if with_context { &t.context } else { &none },
            spans: &t.spans,
        })
        .collect();
    let slots = RESTAURANT8K_SLOTS.map(String::from).to_vec();
    let (m, stats) = LinearTagger::train(&examples, slots, &LinearTaggerConfig::default());
    assert_eq!(stats.lost, 0);
    assert!(stats.widened * 100 < stats.spans, "{stats:?}");
    m
}

#[test]
fn learns_restaurant8k_slots_and_uses_the_question_asked() {
    let (train_set, test) = (restaurant8k("train"), restaurant8k("test"));
    let gold: Vec<Vec<Span>> = test.iter().map(|t| t.spans.clone()).collect();
    let started = std::time::Instant::now();
    let with = train(&train_set, true);
    let secs = started.elapsed().as_secs_f64();
    let answers: Vec<(Vec<Span>, f32)> = test
        .iter()
        .map(|t| with.predict(&t.text, &t.context))
        .collect();
    let pred: Vec<Vec<Span>> = answers.iter().map(|a| a.0.clone()).collect();
    let f1_with = f1(&gold, &pred);
    let without = train(&train_set, false);
    let none = Context::new();
    let pred_without: Vec<Vec<Span>> = test
        .iter()
        .map(|t| without.predict(&t.text, &none).0)
        .collect();
    let f1_without = f1(&gold, &pred_without);
    // The sure half of the answers against the unsure half.
    let mut by_conf: Vec<usize> = (0..test.len()).collect();
    by_conf.sort_by(|&a, &b| answers[b].1.total_cmp(&answers[a].1));
    let half = test.len() / 2;
    let right = |idx: &[usize]| {
        idx.iter()
            .filter(|&&i| same_spans(&gold[i], &pred[i]))
            .count() as f64
            / idx.len() as f64
    };
    let (sure, unsure) = (right(&by_conf[..half]), right(&by_conf[half..]));
    eprintln!(
        "linear tagger, {} train / {} test turns, trained in {secs:.1} s: span F1 {f1_with:.4} with the question asked, \
         {f1_without:.4} without; exactly right: sure half {sure:.3}, unsure half {unsure:.3}",
        train_set.len(),
        test.len()
    );
    assert!(f1_with > 0.8, "{f1_with}");
    assert!(f1_with > f1_without + 0.005, "{f1_with} vs {f1_without}");
    assert!(sure > unsure + 0.1, "{sure} vs {unsure}");
}

#[test]
fn a_saved_tagger_answers_as_it_did() {
    let data = restaurant8k("test");
    let (train_part, held) = data.split_at(3000);
    let m = train(train_part, true);
    let d = tempfile::tempdir().unwrap();
    let meta = distill_train::tagging::model::TaggerMeta {
        kind: distill_train::tagging::model::KIND.into(),
        student: "linear-tagger".into(),
        task: "restaurant8k".into(),
        slots: RESTAURANT8K_SLOTS.map(String::from).to_vec(),
        context_columns: vec!["requested_slots".into()],
        buckets: LinearTaggerConfig::default().buckets,
        created: "2026-12-05T00:00:00Z".into(),
        train_inputs: train_part.len(),
        dev_inputs: 0,
        dev_span_f1: None,
        widened_spans: 0,
        base_model: None,
        max_len: None,
        epochs_run: None,
        device: None,
        train_wall_s: None,
        threads: None,
    };
    let dir = d.path().join("tagger");
    distill_train::tagging::model::save(&dir, false, &m, &meta).unwrap();
    assert!(distill_train::tagging::model::is_tagger_dir(&dir));
    let (back, _) = distill_train::tagging::model::load(&dir, &candle_core::Device::Cpu).unwrap();
    let asked: Vec<(&str, &distill_core::spec::Context)> =
        held.iter().map(|t| (t.text.as_str(), &t.context)).collect();
    for (t, answer) in held.iter().zip(back.predict_batch(&asked).unwrap()) {
        assert_eq!(m.predict(&t.text, &t.context), answer, "{}", t.text);
    }
    // A classifier loader refuses it by name, not with a parse error.
    let e = distill_train::load_student(&dir, &candle_core::Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("extraction tagger"), "{e}");
}
