//! Commands that write a directory (`train --out`, `eval --out`) never delete what the user
//! keeps there: they replace only a directory of their own kind (a model directory with
//! `distill.json`, an eval directory with `metrics.json`), an empty one or none, unless
//! `--force`; and a refusal comes before the work, leaving everything as it was.

mod common;

use common::{banking77, head_csv, repo};
use std::path::Path;
use std::process::{Command, Output};

fn distill(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_distill"))
        .current_dir(dir)
        .args(["--state-dir", "state", "-q"])
        .args(args)
        .output()
        .unwrap()
}

fn train(dir: &Path, out: &str, extra: &[&str]) -> Output {
    let task = repo().join("datasets/banking77/task.toml");
    let mut args = vec!["train", "--task", task.to_str().unwrap()];
    args.extend(["--data", "train.csv", "--student", "linear", "--out", out]);
    args.extend(extra);
    distill(dir, &args)
}

fn user_files(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "notes").unwrap();
    std::fs::write(dir.join("sub/b.csv"), "x,y\n1,2\n").unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn train_and_eval_refuse_to_replace_what_is_not_theirs() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    head_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 600);
    head_csv(&banking77().join("test.csv"), &dir.join("test.csv"), 200);

    // A folder of the user's: refused, exit 1, every file still there, nothing left behind.
    user_files(&dir.join("mine"));
    let o = train(dir, "mine", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--force") && stderr(&o).contains("mine"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("mine/a.txt")).unwrap(),
        "notes"
    );
    assert!(dir.join("mine/sub/b.csv").is_file());
    // A file: refused, not moved aside.
    std::fs::write(dir.join("file.bin"), "keep").unwrap();
    let o = train(dir, "file.bin", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(dir.join("file.bin")).unwrap(),
        "keep"
    );
    let stray: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".distill"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    // A model directory is replaced by the next training run; --force replaces the user's.
    let o = train(dir, "model", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(dir.join("model/stale.txt"), "old").unwrap();
    let o = train(dir, "model", &["--seed", "7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("model/distill.json").is_file() && !dir.join("model/stale.txt").exists());
    let o = train(dir, "mine", &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("mine/distill.json").is_file() && !dir.join("mine/a.txt").exists());

    // eval --out: the same rule.
    let task = repo().join("datasets/banking77/task.toml");
    let eval = |out: &str, extra: &[&str]| {
        let mut args = vec!["eval", "--task", task.to_str().unwrap(), "--model", "model"];
        args.extend(["--test", "test.csv", "--out", out]);
        args.extend(extra);
        distill(dir, &args)
    };
    user_files(&dir.join("report"));
    let o = eval("report", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("metrics.json"), "{}", stderr(&o));
    assert!(dir.join("report/sub/b.csv").is_file());
    let o = eval("evals", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(dir.join("evals/metrics.json").is_file());
    std::fs::write(dir.join("evals/old-chart.svg"), "x").unwrap();
    let o = eval("evals", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !dir.join("evals/old-chart.svg").exists(),
        "a report is one run's files, never mixed with another's"
    );
}

/// Outputs honour the umask like any file a program creates (they were 0600, unlike the rest
/// of the model directory).
#[cfg(unix)]
#[test]
fn written_files_honour_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    head_csv(&banking77().join("train.csv"), &dir.join("train.csv"), 300);
    let task = repo().join("datasets/banking77/task.toml");
    let status = Command::new("sh")
        .current_dir(dir)
        .arg("-c")
        .arg("umask 022; exec \"$0\" --state-dir state -q train --task \"$1\" --data train.csv --out m")
        .arg(env!("CARGO_BIN_EXE_distill"))
        .arg(&task)
        .status()
        .unwrap();
    assert!(status.success());
    for f in ["model.safetensors", "distill.json", "config.json"] {
        let mode = std::fs::metadata(dir.join("m").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644, "{f}: {mode:o}");
    }
    let mode = std::fs::metadata(dir.join("m"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755, "the directory: {mode:o}");
}
