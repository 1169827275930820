//! Span metrics on real Restaurant-8k test spans against systematically perturbed
//! predictions (missed spans, boundaries off by a character, swapped slots, invented spans),
//! recomputed by seqeval in `scripts/verify/spans_vs_seqeval.py`. A tampered figure must be
//! caught, so the check can fail.

mod common;

use common::repo;
use distill_core::spans::{parse_spans, Span};
use distill_core::LabelSet;
use distill_eval::span_metrics::span_quality;
use std::process::Command;

#[test]
fn span_metrics_match_seqeval_on_restaurant8k() {
    let Some(py) = common::python_with("seqeval") else {
        eprintln!(
            "skipping: no python3 with seqeval (set DISTILL_TEST_PYTHON; scripts/test.sh does)"
        );
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let converted = d.path().join("test.jsonl");
    let o = Command::new(&py)
        .arg(repo().join("scripts/convert_restaurant8k.py"))
        .arg(repo().join("../shared/datasets/restaurant8k/test.json"))
        .arg(&converted)
        .arg("test")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let slots: Vec<String> = ["date", "time", "people", "first_name", "last_name"]
        .map(String::from)
        .to_vec();
    let set = LabelSet::new(slots.clone());

    let (mut texts, mut reference, mut predicted) = (Vec::new(), Vec::new(), Vec::new());
    let mut k = 0usize;
    for (i, line) in std::fs::read_to_string(&converted)
        .unwrap()
        .lines()
        .enumerate()
        .step_by(2)
    {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap().to_string();
        let gold = parse_spans(&v["spans"].to_string(), &text, &set).unwrap();
        let mut pred: Vec<Span> = Vec::new();
        for s in &gold {
            k += 1;
            let mut p = s.clone();
            match k % 13 {
                0 | 7 => continue,                      // missed
                3 if p.end - p.start > 1 => p.end -= 1, // cut short
                5 => {
                    p.slot =
                        slots[(slots.iter().position(|x| *x == p.slot).unwrap() + 1) % 5].clone()
                }
                9 if p.start > 0 => p.start -= 1, // stretched
                _ => {}
            }
            pred.push(p);
        }
        if i % 17 == 0 && gold.is_empty() && text.chars().count() > 3 {
            pred.push(Span {
                slot: "first_name".into(),
                start: 0,
                end: 3,
                text: text.chars().take(3).collect(),
            });
        }
        texts.push(text);
        reference.push(gold);
        predicted.push(pred);
    }
    let scores = span_quality(&reference, &predicted, &slots, 11);
    eprintln!(
        "{} inputs, {} reference spans: exact F1 {:.4} [{:.4}, {:.4}], partial F1 {:.4}, exact inputs {:.4}",
        scores.n,
        scores.reference_spans,
        scores.exact.f1.value,
        scores.exact.f1.lo,
        scores.exact.f1.hi,
        scores.partial.f1.value,
        scores.exact_inputs.value
    );
    assert!(scores.n > 1500 && scores.reference_spans > 700);
    assert!(scores.exact.f1.value > 0.6 && scores.exact.f1.value < scores.partial.f1.value);

    let file = d.path().join("spans.json");
    let check = |scores: &serde_json::Value| {
        let doc = serde_json::json!({
            "texts": texts, "slots": slots, "reference": reference, "predicted": predicted,
            "scores": scores,
        });
        std::fs::write(&file, doc.to_string()).unwrap();
        Command::new(&py)
            .arg(repo().join("scripts/verify/spans_vs_seqeval.py"))
            .arg(&file)
            .output()
            .unwrap()
    };
    let json = serde_json::to_value(&scores).unwrap();
    let o = check(&json);
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert!(
        o.status.success() && out.contains("figures agree"),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut tampered = json.clone();
    tampered["per_slot"][3]["recall"] = (scores.per_slot[3].recall + 1e-6).into();
    assert!(
        !check(&tampered).status.success(),
        "a wrong figure is caught"
    );
}
