//! Shared helpers: real Banking77 slices written to a temp dir, and a task spec over them.
#![allow(dead_code)]

use distill_core::input::{read_inputs, Columns, InputItem};
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn banking77_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/banking77")
}

fn read(name: &str) -> Vec<InputItem> {
    let cols = Columns {
        context: Default::default(),
        text: "text".into(),
        gold: Some("category".into()),
        id: None,
        conversation: false,
    };
    read_inputs(&banking77_dir().join(name), None, &cols)
        .expect("banking77 data (../shared/datasets/banking77)")
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Up to `per_class` examples of each of the first `classes` labels (in categories.json order).
pub fn slice(name: &str, classes: usize, per_class: usize) -> Vec<(String, String)> {
    let labels = labels();
    let keep: Vec<&String> = labels.iter().take(classes).collect();
    let mut counts = std::collections::HashMap::new();
    let mut out = Vec::new();
    for it in read(name) {
        let g = it.gold.unwrap();
        if !keep.contains(&&g) {
            continue;
        }
        let n = counts.entry(g.clone()).or_insert(0usize);
        if *n < per_class {
            *n += 1;
            out.push((it.text, g));
        }
    }
    out
}

pub fn labels() -> Vec<String> {
    let text = std::fs::read_to_string(banking77_dir().join("categories.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Writes `{"text", "category"}` JSONL.
pub fn write_jsonl(path: &Path, rows: &[(String, String)]) {
    let mut f = std::fs::File::create(path).unwrap();
    for (t, l) in rows {
        writeln!(f, "{}", serde_json::json!({"text": t, "category": l})).unwrap();
    }
}

/// A Banking77 task spec in `dir` whose label file is the shared categories.json.
pub fn task(dir: &Path) -> PathBuf {
    let p = dir.join("task.toml");
    let cats = banking77_dir().join("categories.json");
    let body = format!(
        r#"name = "banking77-slice"
kind = "classify"
[input]
text_column = "text"
gold_column = "category"
[labels]
file = {cats:?}
[teacher]
provider = "openai"
model = "gpt-4o"
"#,
        cats = cats.to_string_lossy()
    );
    std::fs::write(&p, body).unwrap();
    p
}

/// One Restaurant-8k turn: text, the slots the assistant had asked for, gold spans.
pub struct Turn {
    pub text: String,
    pub context: distill_core::spec::Context,
    pub spans: Vec<distill_core::spans::Span>,
}

pub const RESTAURANT8K_SLOTS: [&str; 5] = ["date", "time", "people", "first_name", "last_name"];

/// A Restaurant-8k split from `../shared/datasets`, read as distill reads gold: the few turns
/// whose annotation overlaps (which the reader refuses) are left out.
pub fn restaurant8k(split: &str) -> Vec<Turn> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../../../shared/datasets/restaurant8k/{split}.json"
    ));
    let turns: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
    let slots = distill_core::LabelSet::new(RESTAURANT8K_SLOTS.map(String::from).to_vec());
    turns
        .iter()
        .filter_map(|t| {
            let text = t["userInput"]["text"].as_str()?.to_string();
            let spans: Vec<serde_json::Value> = t["labels"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .map(|l| {
                            serde_json::json!({"slot": l["slot"],
                                "start": l["valueSpan"]["startIndex"].as_u64().unwrap_or(0),
                                "end": l["valueSpan"]["endIndex"]})
                        })
                        .collect()
                })
                .unwrap_or_default();
            let spans = distill_core::spans::parse_spans(
                &serde_json::Value::from(spans).to_string(),
                &text,
                &slots,
            )
            .ok()?;
            let asked: Vec<&str> = t["context"]["requestedSlots"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            let mut context = distill_core::spec::Context::new();
            context.insert("requested_slots".into(), asked.join(", "));
            Some(Turn {
                text,
                context,
                spans,
            })
        })
        .collect()
}
