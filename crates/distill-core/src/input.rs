//! Streaming readers for task inputs (CSV or JSONL), one [`InputItem`] at a time, so a
//! million-row file never sits in memory. Errors name file, line and field.

use crate::conversation::{parse_turns, transcript, Turn};
use crate::error::{CoreError, Result};
use crate::spec::{Context, InputFormat, InputSpec};
use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One input row.
#[derive(Debug, Clone, PartialEq)]
pub struct InputItem {
    pub id: String,
    pub text: String,
    pub gold: Option<String>,
    /// 1-based line in the file where the row starts (for messages).
    pub line: u64,
    /// The conversation, when the text column holds one ([`Columns::conversation`]); `text`
    /// is then its [`transcript`](crate::conversation::transcript).
    pub turns: Option<Vec<Turn>>,
    /// The context columns' values ([`Columns::context`]); a missing or null JSONL field is
    /// an empty value.
    pub context: Context,
}

/// Which columns to read. Built from a spec's `[input]` or from CLI flags.
#[derive(Debug, Clone)]
pub struct Columns {
    pub text: String,
    pub gold: Option<String>,
    pub id: Option<String>,
    /// The text column holds a conversation (`[input] messages_column`): a JSON array of
    /// `{"role", "content"}` messages, or a string holding one.
    pub conversation: bool,
    /// Context columns (`[input] context_columns`), read beside the text.
    pub context: Vec<String>,
}

impl From<&InputSpec> for Columns {
    fn from(s: &InputSpec) -> Self {
        Columns {
            text: s
                .messages_column
                .clone()
                .unwrap_or_else(|| s.text_column.clone()),
            gold: s.gold_column.clone(),
            id: s.id_column.clone(),
            conversation: s.messages_column.is_some(),
            context: s.context_columns.clone(),
        }
    }
}

/// Opens `path` and yields its rows. The format comes from `format` or the extension.
/// Empty text, invalid UTF-8, missing columns, bad quoting and duplicate ids are errors.
pub fn read_inputs(
    path: &Path,
    format: Option<InputFormat>,
    cols: &Columns,
) -> Result<InputReader> {
    let format = format
        .or_else(|| InputFormat::from_path(path))
        .ok_or_else(|| {
            CoreError::file(
                path,
                "cannot tell the format from the extension; use .csv or .jsonl",
            )
        })?;
    let file = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    let inner: Box<dyn Iterator<Item = Result<InputItem>> + Send> = match format {
        InputFormat::Csv => Box::new(CsvRows::new(path, file, cols)?),
        InputFormat::Jsonl => Box::new(JsonlRows::new(path, file, cols)),
    };
    Ok(InputReader {
        inner,
        path: path.to_path_buf(),
        seen: HashSet::new(),
        failed: false,
    })
}

/// Iterator over a file's rows; stops after the first error.
pub struct InputReader {
    inner: Box<dyn Iterator<Item = Result<InputItem>> + Send>,
    path: PathBuf,
    seen: HashSet<u64>,
    failed: bool,
}

impl Iterator for InputReader {
    type Item = Result<InputItem>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = self.inner.next()?;
        let item = item.and_then(|it| {
            let mut h = DefaultHasher::new();
            it.id.hash(&mut h);
            if !self.seen.insert(h.finish()) {
                return Err(CoreError::data(
                    &self.path,
                    it.line,
                    "id",
                    format!("duplicate id `{}`", it.id),
                ));
            }
            if it.text.trim().is_empty() {
                return Err(CoreError::data(&self.path, it.line, "text", "empty text"));
            }
            Ok(it)
        });
        if item.is_err() {
            self.failed = true;
        }
        Some(item)
    }
}

struct CsvRows {
    path: PathBuf,
    rdr: csv::Reader<Box<dyn Read + Send>>,
    text_i: usize,
    gold_i: Option<usize>,
    id_i: Option<usize>,
    context_i: Vec<(String, usize)>,
    text_name: String,
    conversation: bool,
    row: u64,
    rec: csv::ByteRecord,
}

impl CsvRows {
    fn new(path: &Path, file: std::fs::File, cols: &Columns) -> Result<Self> {
        let reader: Box<dyn Read + Send> = Box::new(BufReader::with_capacity(1 << 16, file));
        let mut rdr = csv::ReaderBuilder::new()
            .flexible(false)
            .from_reader(reader);
        let headers = rdr
            .headers()
            .map_err(|e| csv_error(path, &e, "header"))?
            .clone();
        let find = |name: &str| headers.iter().position(|h| h.trim() == name);
        let have = headers.iter().collect::<Vec<_>>().join(", ");
        let text_i = find(&cols.text).ok_or_else(|| {
            CoreError::data(
                path,
                1,
                &cols.text,
                format!("missing text column (the header has: {have})"),
            )
        })?;
        let opt = |c: &Option<String>| -> Result<Option<usize>> {
            match c {
                None => Ok(None),
                Some(name) => find(name).map(Some).ok_or_else(|| {
                    CoreError::data(
                        path,
                        1,
                        name,
                        format!("missing column (the header has: {have})"),
                    )
                }),
            }
        };
        let context_i = cols
            .context
            .iter()
            .map(|c| Ok((c.clone(), opt(&Some(c.clone()))?.expect("named"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            path: path.to_path_buf(),
            context_i,
            gold_i: opt(&cols.gold)?,
            id_i: opt(&cols.id)?,
            text_i,
            text_name: cols.text.clone(),
            conversation: cols.conversation,
            rdr,
            row: 0,
            rec: csv::ByteRecord::new(),
        })
    }
}

fn csv_error(path: &Path, e: &csv::Error, field: &str) -> CoreError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    let msg = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("row has {len} fields, the header has {expected_len} (check the quoting)"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        _ => e.to_string(),
    };
    CoreError::data(path, line, field, msg)
}

impl Iterator for CsvRows {
    type Item = Result<InputItem>;
    fn next(&mut self) -> Option<Self::Item> {
        match self.rdr.read_byte_record(&mut self.rec) {
            Ok(false) => None,
            Err(e) => Some(Err(csv_error(&self.path, &e, "row"))),
            Ok(true) => {
                self.row += 1;
                let line = self
                    .rec
                    .position()
                    .map(|p| p.line())
                    .unwrap_or(self.row + 1);
                let field = |i: usize, name: &str| -> Result<String> {
                    let b = self.rec.get(i).unwrap_or_default();
                    std::str::from_utf8(b)
                        .map(str::to_string)
                        .map_err(|_| CoreError::data(&self.path, line, name, "not valid UTF-8"))
                };
                let item = (|| {
                    let text = field(self.text_i, &self.text_name)?;
                    let (text, turns) = if self.conversation {
                        let turns = parse_turns(&serde_json::Value::String(text))
                            .map_err(|e| CoreError::data(&self.path, line, &self.text_name, e))?;
                        (transcript(&turns), Some(turns))
                    } else {
                        (text, None)
                    };
                    let gold = match self.gold_i {
                        Some(i) => Some(field(i, "gold")?).filter(|g| !g.is_empty()),
                        None => None,
                    };
                    let id = match self.id_i {
                        Some(i) => field(i, "id")?,
                        None => self.row.to_string(),
                    };
                    let context = self
                        .context_i
                        .iter()
                        .map(|(name, i)| Ok((name.clone(), field(*i, name)?)))
                        .collect::<Result<_>>()?;
                    Ok(InputItem {
                        id,
                        text,
                        gold,
                        line,
                        turns,
                        context,
                    })
                })();
                Some(item)
            }
        }
    }
}

struct JsonlRows {
    path: PathBuf,
    lines: std::io::Split<BufReader<std::fs::File>>,
    cols: Columns,
    line: u64,
    row: u64,
}

impl JsonlRows {
    fn new(path: &Path, file: std::fs::File, cols: &Columns) -> Self {
        Self {
            path: path.to_path_buf(),
            lines: BufReader::with_capacity(1 << 16, file).split(b'\n'),
            cols: cols.clone(),
            line: 0,
            row: 0,
        }
    }
}

/// Reads a string field that may be a string or a number (ids often are numbers).
fn json_str(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        // A multilabel gold list, kept as JSON text (`LabelSet::parse_set` reads it).
        serde_json::Value::Array(_) => Some(v.to_string()),
        _ => None,
    }
}

impl Iterator for JsonlRows {
    type Item = Result<InputItem>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let bytes = match self.lines.next()? {
                Ok(b) => b,
                Err(e) => return Some(Err(CoreError::io(&self.path, e))),
            };
            self.line += 1;
            let line = self.line;
            let Ok(s) = std::str::from_utf8(&bytes) else {
                return Some(Err(CoreError::data(
                    &self.path,
                    line,
                    "line",
                    "not valid UTF-8",
                )));
            };
            if s.trim().is_empty() {
                continue;
            }
            self.row += 1;
            let v: serde_json::Value = match serde_json::from_str(s) {
                Ok(v) => v,
                Err(e) => {
                    return Some(Err(CoreError::data(
                        &self.path,
                        line,
                        "line",
                        format!("not valid JSON: {e}"),
                    )))
                }
            };
            let get = |name: &str| v.get(name);
            let (text, turns) = match get(&self.cols.text) {
                Some(v) if self.cols.conversation => match parse_turns(v) {
                    Ok(turns) => (transcript(&turns), Some(turns)),
                    Err(e) => {
                        return Some(Err(CoreError::data(&self.path, line, &self.cols.text, e)))
                    }
                },
                Some(serde_json::Value::String(t)) => (t.clone(), None),
                Some(_) => {
                    return Some(Err(CoreError::data(
                        &self.path,
                        line,
                        &self.cols.text,
                        "must be a string",
                    )))
                }
                None => {
                    return Some(Err(CoreError::data(
                        &self.path,
                        line,
                        &self.cols.text,
                        if self.cols.conversation {
                            "missing messages field"
                        } else {
                            "missing text field"
                        },
                    )))
                }
            };
            let gold = self
                .cols
                .gold
                .as_ref()
                .and_then(|g| get(g))
                .and_then(json_str)
                .filter(|g| !g.is_empty());
            let id = match &self.cols.id {
                Some(name) => match get(name).and_then(json_str) {
                    Some(id) => id,
                    None => {
                        return Some(Err(CoreError::data(
                            &self.path,
                            line,
                            name,
                            "missing id field",
                        )))
                    }
                },
                None => self.row.to_string(),
            };
            let mut context = Context::new();
            for name in &self.cols.context {
                match context_text(get(name)) {
                    Some(v) => context.insert(name.clone(), v),
                    None => {
                        return Some(Err(CoreError::data(
                            &self.path,
                            line,
                            name,
                            "a context field must be a string, a number or a list of them",
                        )))
                    }
                };
            }
            return Some(Ok(InputItem {
                id,
                text,
                gold,
                line,
                turns,
                context,
            }));
        }
    }
}

/// A context field (of a data file or a served request) as prompt text: a string or number as is, a list's items joined by ", ",
/// missing or null as empty; `None` for anything else.
pub fn context_text(v: Option<&serde_json::Value>) -> Option<String> {
    use serde_json::Value;
    match v {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::Array(_) | Value::Object(_) | Value::Null => None,
                other => json_str(other).or_else(|| Some(other.to_string())),
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(", ")),
        Some(Value::Object(_)) => None,
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(other) => json_str(other),
    }
}

/// Counts data rows without parsing them fully (for progress bars and dry runs).
pub fn count_rows(path: &Path, format: Option<InputFormat>) -> Result<u64> {
    let format = format.or_else(|| InputFormat::from_path(path));
    let file = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
    match format {
        Some(InputFormat::Csv) => {
            let mut rdr = csv::Reader::from_reader(BufReader::new(file));
            let mut rec = csv::ByteRecord::new();
            let mut n = 0;
            while rdr
                .read_byte_record(&mut rec)
                .map_err(|e| csv_error(path, &e, "row"))?
            {
                n += 1;
            }
            Ok(n)
        }
        _ => {
            let mut n = 0;
            for l in BufReader::new(file).split(b'\n') {
                let l = l.map_err(|e| CoreError::io(path, e))?;
                if !l.iter().all(u8::is_ascii_whitespace) {
                    n += 1;
                }
            }
            Ok(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Columns {
        Columns {
            context: Default::default(),
            text: "text".into(),
            gold: Some("category".into()),
            id: None,
            conversation: false,
        }
    }

    fn write(dir: &tempfile::TempDir, name: &str, body: &[u8]) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn reads_csv_with_quotes_and_multiline() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            &d,
            "a.csv",
            b"text,category\n\"hello, world\",greet\n\"two\nlines\",other\n",
        );
        let items: Vec<_> = read_inputs(&p, None, &cols())
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].text, "hello, world");
        assert_eq!(items[1].id, "2");
        assert_eq!(items[1].gold.as_deref(), Some("other"));
    }

    #[test]
    fn bad_inputs_name_file_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let p = write(&d, "m.csv", b"txt,category\nx,y\n");
        let e = read_inputs(&p, None, &cols()).err().unwrap().to_string();
        assert!(e.contains("m.csv:1: field `text`"), "{e}");

        let p = write(&d, "q.csv", b"text,category\n\"open,a\nb,c\n");
        let e = read_inputs(&p, None, &cols())
            .unwrap()
            .find_map(|r| r.err())
            .unwrap()
            .to_string();
        assert!(e.contains("q.csv:"), "{e}");

        let p = write(&d, "e.csv", b"text,category\nok,a\n  ,b\n");
        let e = read_inputs(&p, None, &cols())
            .unwrap()
            .find_map(|r| r.err())
            .unwrap()
            .to_string();
        assert!(e.contains("e.csv:3: field `text`: empty text"), "{e}");

        let p = write(&d, "u.csv", b"text,category\nok\xff,a\n");
        let e = read_inputs(&p, None, &cols())
            .unwrap()
            .find_map(|r| r.err())
            .unwrap()
            .to_string();
        assert!(e.contains("u.csv:2") && e.contains("UTF-8"), "{e}");

        let c = Columns {
            id: Some("id".into()),
            ..cols()
        };
        let p = write(
            &d,
            "d.jsonl",
            b"{\"id\":1,\"text\":\"a\"}\n{\"id\":1,\"text\":\"b\"}\n",
        );
        let e = read_inputs(&p, None, &c)
            .unwrap()
            .find_map(|r| r.err())
            .unwrap()
            .to_string();
        assert!(e.contains("d.jsonl:2: field `id`: duplicate id `1`"), "{e}");
    }

    #[test]
    fn reads_conversations_from_a_messages_column() {
        let d = tempfile::tempdir().unwrap();
        let c = Columns {
            context: Default::default(),
            text: "messages".into(),
            gold: None,
            id: None,
            conversation: true,
        };
        let conv = r#"[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"},{"role":"user","content":"2+2?"}]"#;
        let p = write(
            &d,
            "c.jsonl",
            format!("{{\"messages\":{conv}}}\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"solo\"}}]}}\n")
                .as_bytes(),
        );
        let items: Vec<_> = read_inputs(&p, None, &c)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(items[0].text, "User: Hi\n\nAssistant: Hello\n\nUser: 2+2?");
        assert_eq!(items[0].turns.as_ref().unwrap().len(), 3);
        assert_eq!(items[1].text, "solo");
        // A CSV cell holds it as a JSON string.
        let mut w = csv::Writer::from_path(d.path().join("c.csv")).unwrap();
        w.write_record(["messages"]).unwrap();
        w.write_record([conv]).unwrap();
        w.flush().unwrap();
        let from_csv: Vec<_> = read_inputs(&d.path().join("c.csv"), None, &c)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(from_csv[0].text, items[0].text);
        assert_eq!(from_csv[0].turns, items[0].turns);

        let p = write(
            &d,
            "bad.jsonl",
            b"{\"messages\":[{\"role\":\"user\",\"content\":\"ok\"}]}\n{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}\n",
        );
        let e = read_inputs(&p, None, &c)
            .unwrap()
            .find_map(|r| r.err())
            .unwrap()
            .to_string();
        assert!(
            e.contains("bad.jsonl:2: field `messages`: message 1: role `bot`"),
            "{e}"
        );
        let p = write(&d, "none.jsonl", b"{\"text\":\"x\"}\n");
        let e = read_inputs(&p, None, &c)
            .unwrap()
            .find_map(|r| r.err())
            .unwrap()
            .to_string();
        assert!(
            e.contains("none.jsonl:1: field `messages`: missing messages field"),
            "{e}"
        );
    }
}
