//! `--help` is the CLI's reference: these snapshots make every change to a flag, a default or a
//! description visible in review, so README and help text are updated together.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(args)
        .arg("--help")
        // No inherited DISTILL_* or API-key variables: clap prints `[env: NAME=value]`.
        .env_clear()
        .output()
        .expect("run distill");
    assert!(out.status.success(), "{args:?} --help failed: {out:?}");
    assert!(out.stderr.is_empty(), "{args:?} --help wrote to stderr");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

#[test]
fn top_level_help() {
    insta::assert_snapshot!("distill", help(&[]));
}

#[test]
fn every_subcommand_has_stable_help() {
    for cmd in [
        "teach",
        "spend",
        "export",
        "sim-teacher",
        "train",
        "predict",
        "quantize",
        "ensemble",
        "eval",
        "serve",
        "gateway",
        "drift",
        "quickstart",
    ] {
        let text = help(&[cmd]);
        assert!(
            text.contains(&format!("Usage: distill {cmd}")),
            "{cmd}: {text}"
        );
        insta::assert_snapshot!(format!("distill_{}", cmd.replace('-', "_")), text);
    }
    insta::assert_snapshot!("distill_gateway_init", help(&["gateway", "init"]));
}
