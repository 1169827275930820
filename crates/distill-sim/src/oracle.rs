//! The simulated model's "mind": which label it gives for a prompt, and how many tokens the
//! prompt and reply cost. Everything is precomputed at start-up (gold map, confusion table,
//! template prefix/suffix, token counts of the fixed parts) so a request costs one hash-map
//! lookup and the tokenisation of the input text alone.

use crate::config::SimConfig;
use crate::error::{Result, SimError};
use distill_core::input::{read_inputs, Columns};
use std::collections::{HashMap, HashSet};
use tiktoken_rs::CoreBPE;

/// What the sim decided to answer for one input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index into the task's label set.
    pub label: usize,
    /// Index of the gold label when the text is in the gold file.
    pub gold: Option<usize>,
    /// Whether the first reply for this text is deliberately malformed.
    pub invalid: bool,
    /// Stable per-text hash, for other deterministic choices (invalid-reply style, reasoning).
    pub hash: u64,
}

// Separate decision streams so, e.g., raising the invalid rate does not reshuffle which
// answers are wrong.
const STREAM_CORRECT: u64 = 0x9E37_79B9_7F4A_7C15;
const STREAM_CONFUSION: u64 = 0xC2B2_AE3D_27D4_EB4F;
const STREAM_INVALID: u64 = 0x1656_67B1_9E37_79F9;
const STREAM_UNKNOWN: u64 = 0x27D4_EB2F_1656_67C5;

/// Share of a label's errors that go to its most confusable neighbour; the rest go to the
/// second most confusable, so the noise looks like a real model's confusions.
const PRIMARY_CONFUSION_SHARE: f64 = 0.8;

/// splitmix64's finaliser: a cheap, well-mixed, stable 64-bit hash step.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a then mixed: stable across runs, platforms and Rust versions (unlike std's hasher).
pub fn text_hash(seed: u64, text: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325 ^ mix64(seed);
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    mix64(h)
}

/// A uniform number in [0, 1) from a hash.
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

pub struct Oracle {
    pub labels: Vec<String>,
    gold: HashMap<String, u16>,
    /// A multilabel task's gold label sets (then `gold` is empty).
    gold_sets: HashMap<String, Vec<u16>>,
    /// An extraction task's gold spans, by the whole user message (the same text asked with
    /// another context is another input).
    gold_spans: HashMap<String, crate::spans::GoldSpans>,
    /// The task's label set (its notation for answers, whether answers are sets).
    pub set: distill_core::LabelSet,
    /// Whether answers are spans (an extraction task).
    pub extract: bool,
    /// For each label: its two most confusable labels (by shared name words).
    confusion: Vec<[u16; 2]>,
    accuracy: f64,
    invalid_rate: f64,
    seed: u64,
    case_insensitive: bool,
    /// An open-set task's out-of-scope label: the answer for texts not in the gold file.
    out_of_scope: Option<usize>,
    /// The rendered user template before and after `{text}`.
    prefix: String,
    suffix: String,
    pub tokens: TokenCounter,
}

impl Oracle {
    pub fn new(config: &SimConfig) -> Result<Self> {
        let task = &config.task;
        let labels = task.labels.names.clone();
        let index: HashMap<&str, u16> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_str(), i as u16))
            .collect();
        let (gold, gold_sets, gold_spans) = load_gold(config, &index)?;
        let confusion = confusion_table(&labels);
        let rendered = task
            .teacher
            .user_template
            .replace("{labels}", &task.labels.prompt_list())
            .replace("{slots}", &task.labels.prompt_list());
        let (prefix, suffix) = match rendered.split_once("{text}") {
            Some((p, s)) => (p.to_string(), s.to_string()),
            None => (String::new(), String::new()),
        };
        let tokens = TokenCounter::new(
            &config.price_as,
            &task.teacher.system_prompt,
            &prefix,
            &labels,
        )?;
        Ok(Oracle {
            out_of_scope: task.labels.out_of_scope_index(),
            labels,
            gold,
            gold_sets,
            gold_spans,
            extract: task.is_extract(),
            set: task.labels.clone(),
            confusion,
            accuracy: config.accuracy,
            invalid_rate: config.invalid_rate,
            seed: config.seed,
            case_insensitive: task.case_insensitive,
            prefix,
            suffix,
            tokens,
        })
    }

    pub fn gold_len(&self) -> usize {
        self.gold.len() + self.gold_sets.len() + self.gold_spans.len()
    }

    /// An extraction task's reply to a user message: its gold spans with the configured
    /// mistakes ([`crate::spans::answer`]); no spans for a message the gold does not know.
    pub fn spans_reply(&self, user_message: &str, invalid: bool) -> String {
        let hash = text_hash(self.seed, user_message);
        let quotes = match self.gold_spans.get(user_message) {
            Some(g) => crate::spans::answer(g, hash, self.accuracy, |slot| {
                let i = self.set.index_of(slot).expect("a gold slot");
                self.labels[self.confusables(i)[0]].clone()
            }),
            None => Vec::new(),
        };
        crate::spans::reply(&quotes, invalid, hash)
    }

    /// A multilabel task's answer for a text, deterministic per text: the gold set at the
    /// configured accuracy, otherwise one systematic mistake: a true label dropped (when
    /// there are several) or a plausible wrong one added (the most confusable label of a
    /// true one). A text without gold gets one label at random.
    pub fn decide_set(&self, text: &str) -> Vec<usize> {
        let hash = text_hash(self.seed, text);
        let key = if self.case_insensitive {
            text.trim().to_lowercase()
        } else {
            text.trim().to_string()
        };
        let Some(gold) = self
            .gold_sets
            .get(&key)
            .or_else(|| self.gold_sets.get(text))
        else {
            return vec![(mix64(hash ^ STREAM_UNKNOWN) % self.labels.len() as u64) as usize];
        };
        let mut set: Vec<usize> = gold.iter().map(|&i| i as usize).collect();
        if unit(mix64(hash ^ STREAM_CORRECT)) < self.accuracy {
            return set;
        }
        let pick = mix64(hash ^ STREAM_CONFUSION);
        if set.len() > 1 && pick.is_multiple_of(2) {
            set.remove((pick / 2) as usize % set.len());
        } else {
            let from = set.get((pick / 2) as usize % set.len().max(1)).copied();
            let wrong = from
                .map(|f| self.confusables(f))
                .into_iter()
                .flatten()
                .chain(0..self.labels.len())
                .find(|l| !set.contains(l));
            if let Some(w) = wrong {
                set.push(w);
                set.sort_unstable();
            }
        }
        set
    }

    /// The reply for a multilabel decision: `{"labels": [...]}`, or (deliberately invalid)
    /// prose or truncated JSON.
    pub fn set_reply(&self, set: &[usize], invalid: bool, hash: u64) -> String {
        let names: Vec<&str> = set.iter().map(|&i| self.labels[i].as_str()).collect();
        if !invalid {
            return serde_json::json!({ "labels": names }).to_string();
        }
        match mix64(hash ^ STREAM_INVALID ^ 1) % 2 {
            0 => format!("This message is about {}.", names.join(" and ")),
            _ => {
                let j = serde_json::json!({ "labels": names }).to_string();
                first_half(&j).to_string()
            }
        }
    }

    /// The input text inside a user message rendered from the task's template, or `None`
    /// when the message does not follow the template.
    pub fn extract_text<'a>(&self, user_message: &'a str) -> Option<&'a str> {
        let min = self.prefix.len() + self.suffix.len();
        if user_message.len() >= min
            && user_message.starts_with(&self.prefix)
            && user_message.ends_with(&self.suffix)
        {
            Some(&user_message[self.prefix.len()..user_message.len() - self.suffix.len()])
        } else {
            None
        }
    }

    /// Gold label of a text, if the gold file has it.
    pub fn gold_of(&self, text: &str) -> Option<usize> {
        let hit = if self.case_insensitive {
            self.gold.get(&text.to_lowercase())
        } else {
            self.gold.get(text)
        };
        hit.or_else(|| {
            let t = text.trim();
            if t.len() == text.len() {
                None
            } else if self.case_insensitive {
                self.gold.get(&t.to_lowercase())
            } else {
                self.gold.get(t)
            }
        })
        .map(|&i| i as usize)
    }

    /// The deterministic answer for a text: the same text always gets the same label.
    pub fn decide(&self, text: &str) -> Decision {
        let hash = text_hash(self.seed, text);
        let gold = self.gold_of(text);
        let label = match gold {
            Some(g) => {
                if unit(mix64(hash ^ STREAM_CORRECT)) < self.accuracy {
                    g
                } else {
                    let [first, second] = self.confusion[g];
                    if unit(mix64(hash ^ STREAM_CONFUSION)) < PRIMARY_CONFUSION_SHARE {
                        first as usize
                    } else {
                        second as usize
                    }
                }
            }
            // Open-set task: a text the gold file does not know is out of scope; the teacher
            // says so at its accuracy and otherwise forces an in-scope label.
            None => match self.out_of_scope {
                Some(o) if unit(mix64(hash ^ STREAM_CORRECT)) < self.accuracy => o,
                Some(o) => {
                    let k =
                        (mix64(hash ^ STREAM_UNKNOWN) % (self.labels.len() as u64 - 1)) as usize;
                    if k >= o {
                        k + 1
                    } else {
                        k
                    }
                }
                None => (mix64(hash ^ STREAM_UNKNOWN) % self.labels.len() as u64) as usize,
            },
        };
        let invalid = unit(mix64(hash ^ STREAM_INVALID)) < self.invalid_rate;
        Decision {
            label,
            gold,
            invalid,
            hash,
        }
    }

    /// The labels a given label is mistaken for, most likely first.
    pub fn confusables(&self, label: usize) -> [usize; 2] {
        let [a, b] = self.confusion[label];
        [a as usize, b as usize]
    }

    /// A reply that is deliberately not a valid label, in one of the ways real models fail:
    /// a label spelled differently, prose, or truncated JSON.
    pub fn invalid_reply(&self, d: &Decision) -> String {
        let label = &self.labels[d.label];
        match mix64(d.hash ^ STREAM_INVALID ^ 1) % 3 {
            0 => {
                let prettified: String = label
                    .split(['_', ' '])
                    .filter(|w| !w.is_empty())
                    .map(|w| {
                        let mut c = w.chars();
                        match c.next() {
                            Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                            None => String::new(),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" ");
                serde_json::json!({ "label": prettified }).to_string()
            }
            1 => format!("This message is most likely about {label}."),
            _ => format!("{{\"label\": \"{}", first_half(label)),
        }
    }
}

/// The first half of `s`, cut at a character boundary (a truncated reply, as a model cut off
/// mid-answer sends).
pub fn first_half(s: &str) -> &str {
    let cut = s
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| i >= s.len() / 2)
        .unwrap_or(s.len());
    &s[..cut]
}

/// The gold file as text → label index. Unknown labels and missing columns are errors that
/// name file, line and field.
type GoldMaps = (
    HashMap<String, u16>,
    HashMap<String, Vec<u16>>,
    HashMap<String, crate::spans::GoldSpans>,
);

fn load_gold(config: &SimConfig, index: &HashMap<&str, u16>) -> Result<GoldMaps> {
    let mut gold = (HashMap::new(), HashMap::new(), HashMap::new());
    if config.replay.is_some() {
        // Replay answers from recorded outcomes, not from gold labels.
        return Ok(gold);
    }
    for path in config.gold_paths()? {
        load_gold_file(config, index, &path, &mut gold)?;
    }
    Ok(gold)
}

fn load_gold_file(
    config: &SimConfig,
    index: &HashMap<&str, u16>,
    path: &std::path::Path,
    (gold, gold_sets, gold_spans): &mut GoldMaps,
) -> Result<()> {
    let path = path.to_path_buf();
    let task = &config.task;
    let gold_column = task
        .input
        .gold_column
        .clone()
        .ok_or_else(|| SimError::Config {
            setting: "gold",
            message: format!(
                "the task {} names no input.gold_column, so the sim-teacher cannot tell which \
             column of {} holds the correct labels",
                task.path.display(),
                path.display()
            ),
        })?;
    let cols = Columns {
        gold: Some(gold_column.clone()),
        id: None,
        ..Columns::from(&task.input)
    };
    let mut rows = 0usize;
    for item in read_inputs(&path, task.input.format, &cols)? {
        let item = item?;
        rows += 1;
        let Some(label) = item.gold else {
            return Err(SimError::Gold {
                path: path.clone(),
                line: item.line,
                field: gold_column,
                message: "empty gold label".into(),
            });
        };
        let key = if task.case_insensitive {
            item.text.trim().to_lowercase()
        } else {
            item.text.trim().to_string()
        };
        let bad_gold = |message| SimError::Gold {
            path: path.clone(),
            line: item.line,
            field: gold_column.clone(),
            message,
        };
        if task.is_extract() {
            let spans = distill_core::spans::parse_spans(&label, &item.text, &task.labels)
                .map_err(bad_gold)?;
            gold_spans
                .entry(task.render_user_with(&item.text, &item.context))
                .or_insert(crate::spans::GoldSpans {
                    text: item.text,
                    spans,
                });
            continue;
        }
        if task.labels.is_multilabel() {
            let set = task.labels.parse_set(&label).map_err(bad_gold)?;
            gold_sets
                .entry(key)
                .or_insert_with(|| set.iter().map(|&i| i as u16).collect());
            continue;
        }
        let Some(&i) = index.get(label.as_str()) else {
            return Err(SimError::Gold {
                path: path.clone(),
                line: item.line,
                field: gold_column,
                message: format!("label `{label}` is not in the task's label set"),
            });
        };
        let key = if task.case_insensitive {
            item.text.to_lowercase()
        } else {
            item.text
        };
        // A text listed twice keeps its first label, as a deterministic model would.
        gold.entry(key).or_insert(i);
    }
    if rows == 0 {
        return Err(SimError::Gold {
            path,
            line: 1,
            field: gold_column,
            message: "the gold file has no rows".into(),
        });
    }
    Ok(())
}

fn name_words(label: &str) -> HashSet<String> {
    label
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn bigrams(label: &str) -> HashSet<(char, char)> {
    let chars: Vec<char> = label.to_lowercase().chars().collect();
    chars.windows(2).map(|w| (w[0], w[1])).collect()
}

fn jaccard<T: Eq + std::hash::Hash>(a: &HashSet<T>, b: &HashSet<T>) -> f64 {
    let union = a.union(b).count();
    if union == 0 {
        0.0
    } else {
        a.intersection(b).count() as f64 / union as f64
    }
}

/// For each label, the two others with the most similar names (shared words first, shared
/// letter pairs to break ties): a model that errs usually picks a neighbouring intent.
fn confusion_table(labels: &[String]) -> Vec<[u16; 2]> {
    let words: Vec<_> = labels.iter().map(|l| name_words(l)).collect();
    let pairs: Vec<_> = labels.iter().map(|l| bigrams(l)).collect();
    (0..labels.len())
        .map(|i| {
            let mut others: Vec<(f64, f64, usize)> = (0..labels.len())
                .filter(|&j| j != i)
                .map(|j| {
                    (
                        jaccard(&words[i], &words[j]),
                        jaccard(&pairs[i], &pairs[j]),
                        j,
                    )
                })
                .collect();
            others.sort_by(|a, b| {
                b.0.total_cmp(&a.0)
                    .then(b.1.total_cmp(&a.1))
                    .then(a.2.cmp(&b.2))
            });
            let first = others.first().map(|o| o.2).unwrap_or(i);
            let second = others.get(1).map(|o| o.2).unwrap_or(first);
            [first as u16, second as u16]
        })
        .collect()
}

/// Counts tokens as the imitated model's tokenizer would, with the task's fixed prompt parts
/// counted once at start-up.
pub struct TokenCounter {
    bpe: CoreBPE,
    system_prompt: String,
    system_tokens: usize,
    /// The start of the rendered user template up to its last line break before `{text}`:
    /// a line break ends a pre-token, so this part tokenises the same on its own.
    static_prefix: String,
    static_prefix_tokens: usize,
    /// Tokens of `{"label":"<label>"}` for each label.
    reply_tokens: Vec<usize>,
}

/// Chat framing as OpenAI bills it: each message costs 3 tokens plus its role, and the reply
/// is primed with 3 more.
pub const TOKENS_PER_MESSAGE: usize = 3;
pub const TOKENS_REPLY_PRIMING: usize = 3;

impl TokenCounter {
    fn new(model: &str, system_prompt: &str, prefix: &str, labels: &[String]) -> Result<Self> {
        let bpe = bpe_for(model)?;
        let static_prefix = stable_prefix(prefix).to_string();
        let count = |s: &str| bpe.encode_ordinary(s).len();
        let system_tokens = count(system_prompt);
        let static_prefix_tokens = count(&static_prefix);
        let reply_tokens = labels.iter().map(|l| count(&label_json(l))).collect();
        Ok(TokenCounter {
            system_prompt: system_prompt.to_string(),
            system_tokens,
            static_prefix,
            static_prefix_tokens,
            reply_tokens,
            bpe,
        })
    }

    pub fn count(&self, text: &str) -> usize {
        if text == self.system_prompt {
            return self.system_tokens;
        }
        match text.strip_prefix(self.static_prefix.as_str()) {
            Some(rest) if !self.static_prefix.is_empty() => {
                self.static_prefix_tokens + self.bpe.encode_ordinary(rest).len()
            }
            _ => self.bpe.encode_ordinary(text).len(),
        }
    }

    /// Tokens of the fixed start every task prompt shares (system prompt + static part of the
    /// user template, with framing): what a provider's prompt cache can serve.
    pub fn shared_prefix_tokens(&self) -> usize {
        2 * TOKENS_PER_MESSAGE + 2 + self.system_tokens + self.static_prefix_tokens
    }

    pub fn starts_with_shared_prefix(&self, system: Option<&str>, user: &str) -> bool {
        system == Some(self.system_prompt.as_str()) && user.starts_with(&self.static_prefix)
    }

    pub fn reply_tokens(&self, label: usize) -> usize {
        self.reply_tokens[label]
    }
}

/// The JSON reply for a label, exactly as the sim sends it.
pub fn label_json(label: &str) -> String {
    serde_json::json!({ "label": label }).to_string()
}

/// o200k_base for the GPT-4o generation and later, cl100k_base for everything else (an
/// approximation for non-OpenAI models, which publish no tokenizer).
fn bpe_for(model: &str) -> Result<CoreBPE> {
    let bare = model.rsplit('/').next().unwrap_or(model);
    let o200k = [
        "gpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
        "chatgpt-4o",
    ]
    .iter()
    .any(|p| bare.starts_with(p));
    let bpe = if o200k {
        tiktoken_rs::o200k_base()
    } else {
        tiktoken_rs::cl100k_base()
    };
    bpe.map_err(|e| SimError::Tokenizer {
        model: model.to_string(),
        message: e.to_string(),
    })
}

/// The part of `prefix` up to and including its last line break that is followed by a
/// character that cannot merge backwards into the line-break pre-token.
fn stable_prefix(prefix: &str) -> &str {
    let bytes = prefix.as_bytes();
    for (i, b) in bytes.iter().enumerate().rev() {
        if *b == b'\n' {
            let next = prefix[i + 1..].chars().next();
            return match next {
                Some(c) if !c.is_whitespace() && c != '/' => &prefix[..=i],
                _ => "",
            };
        }
    }
    ""
}

/// Whether a model is a reasoning model (billed hidden reasoning tokens).
pub fn is_reasoning_model(model: &str) -> bool {
    let bare = model.rsplit('/').next().unwrap_or(model);
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|p| bare.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_prefix_stops_at_a_safe_line_break() {
        assert_eq!(
            stable_prefix("Labels:\n- a\n\nMessage: "),
            "Labels:\n- a\n\n"
        );
        assert_eq!(stable_prefix("Message: "), "");
        assert_eq!(stable_prefix("a\n /x"), "");
    }

    #[test]
    fn confusions_prefer_shared_words() {
        let labels: Vec<String> = [
            "card_arrival",
            "card_linking",
            "top_up_failed",
            "top_up_reverted",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let t = confusion_table(&labels);
        assert_eq!(t[2][0], 3);
        assert_eq!(t[3][0], 2);
        assert!(t[0][0] == 1);
    }

    #[test]
    fn an_open_set_task_calls_unknown_texts_out_of_scope_at_its_accuracy() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("in.csv"),
            "text,category\nmy card is late,card_arrival\nrefund please,refund\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("task.toml"),
            r#"
name = "t"
kind = "classify"
[input]
path = "in.csv"
gold_column = "category"
[labels]
values = ["card_arrival", "refund"]
out_of_scope = "none"
[teacher]
provider = "openai"
model = "gpt-4o"
"#,
        )
        .unwrap();
        let task = distill_core::TaskSpec::load(d.path().join("task.toml")).unwrap();
        let o = Oracle::new(&SimConfig::new(task)).unwrap();
        let n = 2000;
        let oos = (0..n)
            .filter(|i| o.labels[o.decide(&format!("play song {i}")).label] == "none")
            .count();
        let rate = oos as f64 / n as f64;
        assert!((rate - 0.94).abs() < 0.02, "out-of-scope answered {rate}");
        assert_eq!(
            o.labels[o.decide("my card is late").gold.unwrap()],
            "card_arrival"
        );
    }
}
