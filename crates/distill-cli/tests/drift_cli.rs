//! `distill drift` over a real shadow store written the way `distill serve` writes it.

use distill_serve::shadow::{ShadowRecorder, ShadowRow};
use std::process::Command;

fn drift(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .arg("drift")
        .args(args)
        .env("DISTILL_STATE_DIR", state)
        .output()
        .unwrap()
}

#[test]
fn drift_summarises_agreement_worst_label_first() {
    let state = tempfile::tempdir().unwrap();
    let rec = ShadowRecorder::open(&state.path().join("shadow.db")).unwrap();
    let now = distill_core::ledger::LedgerRow::now();
    // card_arrival: 3 of 4 agree; lost_or_stolen_card: 0 of 2; another model's rows are ignored.
    for (model, student, teacher) in [
        ("b77", "card_arrival", "card_arrival"),
        ("b77", "card_arrival", "card_arrival"),
        ("b77", "card_arrival", "card_arrival"),
        ("b77", "card_linking", "card_arrival"),
        ("b77", "card_arrival", "lost_or_stolen_card"),
        ("b77", "card_arrival", "lost_or_stolen_card"),
        ("other", "card_arrival", "lost_or_stolen_card"),
    ] {
        rec.record(ShadowRow {
            ts: now.clone(),
            model: model.into(),
            tag: "default".into(),
            input_hash: "0".repeat(64),
            student_label: student.into(),
            confidence: 0.9,
            teacher_label: teacher.into(),
            agree: student == teacher,
            cost_usd: 0.001,
        });
    }
    rec.flush();
    drop(rec);

    let out = drift(state.path(), &["--model", "b77", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"]["n"], 6);
    assert_eq!(v["total"]["agree"], 3);
    assert_eq!(v["by_label"].as_array().unwrap().len(), 2);
    let since = v["since"].as_str().unwrap().to_string();

    let out = drift(state.path(), &["--model", "b77"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    // Dates change daily; same-width placeholders keep the columns as printed.
    insta::assert_snapshot!(text
        .replace(&now[..10], "YYYY-MM-DD")
        .replace(&since, "YYYY-MM-DD"));
}

#[test]
fn drift_without_shadow_data_says_how_to_collect_it() {
    let state = tempfile::tempdir().unwrap();
    let out = drift(state.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shadow.db") && err.contains("--shadow-rate"),
        "{err}"
    );
}
