//! `distill predict --gold-column` when the gold labels are not the model's: a warning with
//! the count and examples, and accuracy over the known ones only (it printed 0.0000 silently).

mod common;

use common::{banking77, head_csv, repo};
use std::process::Command;

#[test]
fn unknown_gold_labels_are_counted_and_not_scored() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    head_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 400);
    let task = repo().join("datasets/banking77/task.toml");
    let distill = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_distill"))
            .current_dir(dir)
            .args(["--state-dir", "state", "-q"])
            .args(args)
            .output()
            .unwrap()
    };
    let o = distill(&[
        "train",
        "--task",
        task.to_str().unwrap(),
        "--data",
        "train.csv",
        "--out",
        "m",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(
        dir.join("mixed.csv"),
        "text,category\nmy card has not arrived,card_arrival\nwhere is my card,card_arrival\n\
         play some jazz,PlayMusic\nbook a table for two,BookRestaurant\n",
    )
    .unwrap();
    let o = distill(&[
        "predict",
        "--model",
        "m",
        "--input",
        "mixed.csv",
        "--out",
        "p.jsonl",
        "--gold-column",
        "category",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("2 of 4 rows have a gold label the model does not know")
            && err.contains("`PlayMusic`"),
        "{err}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("on the 2 rows with a known gold label"),
        "{out}"
    );
    // Wrong column entirely: said plainly, no 0.0000.
    let o = distill(&[
        "predict",
        "--model",
        "m",
        "--input",
        "mixed.csv",
        "--out",
        "p.jsonl",
        "--gold-column",
        "text",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("none of the gold labels is the model's") && !out.contains("0.0000"),
        "{out}"
    );
}
