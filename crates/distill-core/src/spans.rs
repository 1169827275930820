//! Extraction answers: spans of the input text, the one notation every stage writes them in,
//! and the alignment of a teacher's quoted text to offsets.
//!
//! Offsets count Unicode scalar values (Rust `char`s, Python `str` indices), `end` exclusive,
//! so a span means the same characters in every language that reads the files. Spans of one
//! answer never overlap: a character belongs to at most one slot (what BIO tagging can learn).

use crate::label_set::LabelSet;
pub use crate::record::Span;
use serde::Deserialize;

/// A span as a gold file or a record writes it; `text`, when given, must be what the offsets
/// cover.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpanIn {
    slot: String,
    start: usize,
    end: usize,
    #[serde(default)]
    text: Option<String>,
}

/// Reads a span list (JSON `[{"slot", "start", "end", "text"?}, ...]`) against its input
/// `text`: every slot known, `0 <= start < end <= chars(text)`, `text` matching the offsets,
/// no two spans overlapping. Returns the spans sorted by `start`, `text` filled in. Errors
/// say which span is wrong and why.
pub fn parse_spans(answer: &str, text: &str, slots: &LabelSet) -> Result<Vec<Span>, String> {
    let items: Vec<SpanIn> = serde_json::from_str(answer)
        .map_err(|e| format!("not a JSON list of {{\"slot\", \"start\", \"end\"}} spans ({e})"))?;
    let chars: Vec<char> = text.chars().collect();
    let mut spans = Vec::with_capacity(items.len());
    for (i, s) in items.into_iter().enumerate() {
        let n = i + 1;
        if !slots.contains(&s.slot) {
            return Err(format!(
                "span {n}: slot `{}` is not one of the task's slots",
                s.slot
            ));
        }
        if s.start >= s.end || s.end > chars.len() {
            return Err(format!(
                "span {n} ({}): {}..{} is not a non-empty range inside the text ({} characters)",
                s.slot,
                s.start,
                s.end,
                chars.len()
            ));
        }
        let covered: String = chars[s.start..s.end].iter().collect();
        if let Some(t) = &s.text {
            if *t != covered {
                return Err(format!(
                    "span {n} ({}): its text `{t}` is not the text at {}..{} (`{covered}`); \
                     offsets count Unicode characters, not bytes",
                    s.slot, s.start, s.end
                ));
            }
        }
        spans.push(Span {
            slot: s.slot,
            start: s.start,
            end: s.end,
            text: covered,
        });
    }
    spans.sort_by_key(|s| (s.start, s.end));
    if let Some(w) = spans.windows(2).find(|w| w[1].start < w[0].end) {
        return Err(format!(
            "spans overlap: {} {}..{} and {} {}..{} (a character belongs to one slot at most)",
            w[0].slot, w[0].start, w[0].end, w[1].slot, w[1].start, w[1].end
        ));
    }
    Ok(spans)
}

/// The notation of a span list (the inverse of [`parse_spans`]): sorted by position, as JSON.
/// Equal answers are equal strings, so answers can be compared, counted and cached as text.
pub fn format_spans(spans: &[Span]) -> String {
    let mut spans = spans.to_vec();
    spans.sort_by_key(|s| (s.start, s.end));
    serde_json::to_string(&spans).unwrap_or_else(|_| "[]".into())
}

/// A teacher's answer for one slot: the text it quoted, to be found in the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    pub slot: String,
    pub text: String,
}

/// Finds each quote in `text`: an exact match first, else one ignoring case and runs of
/// whitespace. A quote found more than once takes the occurrence on word boundaries nearest
/// the previous span (quotes usually come in reading order). A quote equal to one already
/// placed (same slot, same place) is dropped, and so is an empty quote. Errors name the quote that is not in the text,
/// or the two that claim the same characters.
pub fn align(text: &str, quotes: &[Quote]) -> Result<Vec<Span>, String> {
    let chars: Vec<char> = text.chars().collect();
    // Folded only when a quote is not found as written.
    let mut folded: Option<Folded> = None;
    let mut spans: Vec<Span> = Vec::with_capacity(quotes.len());
    let mut previous_end = 0usize;
    for q in quotes {
        let needle: Vec<char> = q.text.trim().chars().collect();
        // An empty quote is how models often say "not given".
        if needle.is_empty() {
            continue;
        }
        let mut found = occurrences(&chars, &needle);
        if found.is_empty() {
            found = folded
                .get_or_insert_with(|| Folded::new(&chars))
                .occurrences(&needle);
        }
        if found.is_empty() {
            return Err(format!(
                "`{}` ({}) is not in the message; copy the text exactly as it is written",
                q.text.trim(),
                q.slot
            ));
        }
        let free = |&(s, e): &(usize, usize)| spans.iter().all(|p| e <= p.start || p.end <= s);
        if found.iter().any(|&(s, e)| {
            spans
                .iter()
                .any(|p| p.start == s && p.end == e && p.slot == q.slot)
        }) && !found.iter().any(free)
        {
            continue;
        }
        let Some(&(start, end)) = found.iter().filter(|r| free(r)).min_by_key(|&&(s, e)| {
            let on_words = is_boundary(&chars, s) && is_boundary(&chars, e);
            (!on_words, s.abs_diff(previous_end))
        }) else {
            let taken = spans
                .iter()
                .find(|p| found.iter().any(|&(s, e)| s < p.end && p.start < e))
                .expect("an occurrence overlaps a placed span");
            return Err(format!(
                "`{}` ({}) covers the same characters as `{}` ({}); a character belongs to \
                 one slot at most",
                q.text.trim(),
                q.slot,
                taken.text,
                taken.slot
            ));
        };
        previous_end = end;
        spans.push(Span {
            slot: q.slot.clone(),
            start,
            end,
            text: chars[start..end].iter().collect(),
        });
    }
    spans.sort_by_key(|s| (s.start, s.end));
    Ok(spans)
}

/// Where `needle` occurs in `hay`, as character ranges.
fn occurrences(hay: &[char], needle: &[char]) -> Vec<(usize, usize)> {
    if needle.len() > hay.len() {
        return Vec::new();
    }
    (0..=hay.len() - needle.len())
        .filter(|&i| hay[i..i + needle.len()] == *needle)
        .map(|i| (i, i + needle.len()))
        .collect()
}

/// A word boundary: the start or end of the text, or a change between a word character
/// (alphanumeric) and anything else.
fn is_boundary(chars: &[char], at: usize) -> bool {
    at == 0 || at == chars.len() || chars[at - 1].is_alphanumeric() != chars[at].is_alphanumeric()
}

/// The text lower-cased with whitespace runs made one space, and where each folded
/// character came from, for the forgiving match.
struct Folded {
    chars: Vec<char>,
    origin: Vec<usize>,
}

impl Folded {
    fn new(chars: &[char]) -> Self {
        let (mut out, mut origin) = (Vec::with_capacity(chars.len()), Vec::new());
        for (i, &c) in chars.iter().enumerate() {
            if c.is_whitespace() {
                if out.last() != Some(&' ') {
                    out.push(' ');
                    origin.push(i);
                }
                continue;
            }
            // One folded character per original keeps the mapping exact (`İ` lower-cases
            // to two characters; its first stands for it). Typographic quotes and dashes
            // fold to ASCII: models often retype "won’t" as "won't".
            let c = match c {
                '\u{2018}' | '\u{2019}' | '\u{02bc}' => '\'',
                '\u{201c}' | '\u{201d}' => '"',
                '\u{2013}' | '\u{2014}' => '-',
                c => c,
            };
            out.push(c.to_lowercase().next().unwrap_or(c));
            origin.push(i);
        }
        Self { chars: out, origin }
    }

    fn occurrences(&self, needle: &[char]) -> Vec<(usize, usize)> {
        let needle = Folded::new(needle).chars;
        occurrences(&self.chars, &needle)
            .into_iter()
            .map(|(s, e)| (self.origin[s], self.origin[e - 1] + 1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots() -> LabelSet {
        LabelSet::new(vec!["time".into(), "people".into(), "first_name".into()])
    }
    fn q(slot: &str, text: &str) -> Quote {
        Quote {
            slot: slot.into(),
            text: text.into(),
        }
    }
    fn placed(spans: &[Span]) -> Vec<(&str, usize, usize, &str)> {
        spans
            .iter()
            .map(|s| (s.slot.as_str(), s.start, s.end, s.text.as_str()))
            .collect()
    }

    #[test]
    fn gold_spans_are_checked_and_sorted() {
        let text = "Zoë and I at 7 ☕";
        let got = parse_spans(
            r#"[{"slot": "time", "start": 13, "end": 14, "text": "7"},
                {"slot": "first_name", "start": 0, "end": 3}]"#,
            text,
            &slots(),
        )
        .unwrap();
        assert_eq!(
            placed(&got),
            [("first_name", 0, 3, "Zoë"), ("time", 13, 14, "7")]
        );
        assert_eq!(
            parse_spans(&format_spans(&got), text, &slots()).unwrap(),
            got
        );
        for (bad, says) in [
            (r#"[{"slot": "date", "start": 0, "end": 3}]"#, "`date`"),
            (r#"[{"slot": "time", "start": 3, "end": 3}]"#, "3..3"),
            (
                r#"[{"slot": "time", "start": 15, "end": 17}]"#,
                "16 characters",
            ),
            (
                r#"[{"slot": "time", "start": 0, "end": 4, "text": "Zoë"}]"#,
                "not bytes",
            ),
            (
                r#"[{"slot": "time", "start": 0, "end": 3}, {"slot": "people", "start": 2, "end": 9}]"#,
                "overlap",
            ),
            (r#"{"slot": "time"}"#, "JSON list"),
        ] {
            let e = parse_spans(bad, text, &slots()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn quotes_align_exactly_then_forgivingly() {
        let text = "Table for  Four, at 7pm. Name: ÉLODIE";
        let got = align(
            text,
            &[
                q("people", "four"),
                q("time", "7pm"),
                q("first_name", "élodie"),
            ],
        )
        .unwrap();
        assert_eq!(
            placed(&got),
            [
                ("people", 11, 15, "Four"),
                ("time", 20, 23, "7pm"),
                ("first_name", 31, 37, "ÉLODIE")
            ]
        );
        // Runs of whitespace in the text match one space in the quote.
        let got = align(text, &[q("people", "for four")]).unwrap();
        assert_eq!(placed(&got), [("people", 6, 15, "for  Four")]);
        // A retyped apostrophe or dash still finds the original characters.
        let got = align(
            "I won’t be there 7–8pm",
            &[q("time", "7-8pm"), q("people", "won't")],
        )
        .unwrap();
        assert_eq!(
            placed(&got),
            [("people", 2, 7, "won’t"), ("time", 17, 22, "7–8pm")]
        );
        let e = align(text, &[q("time", "8pm")]).unwrap_err();
        assert!(
            e.contains("`8pm`") && e.contains("not in the message"),
            "{e}"
        );
    }

    #[test]
    fn repeats_take_the_whole_word_nearest_the_previous_span() {
        // "2" inside "12:30" is not the party size; the whole word is.
        let text = "at 12:30 for 2, or 2 later";
        let got = align(text, &[q("time", "12:30"), q("people", "2")]).unwrap();
        assert_eq!(placed(&got)[1], ("people", 13, 14, "2"));
        // Two quotes of the same text take two occurrences; the same quote twice is one span.
        let got = align(text, &[q("people", "2"), q("time", "2")]).unwrap();
        assert_eq!(
            placed(&got).iter().map(|s| (s.1, s.2)).collect::<Vec<_>>(),
            [(13, 14), (19, 20)]
        );
        assert_eq!(
            align(text, &[q("people", "for 2"), q("people", "for 2")])
                .unwrap()
                .len(),
            1
        );
        let e = align("for 2", &[q("people", "for 2"), q("time", "2")]).unwrap_err();
        assert!(e.contains("same characters"), "{e}");
    }

    #[test]
    fn offsets_are_characters_for_any_utf8() {
        let text = "予約 は 明日 の 7時 🍣  for Zoë";
        let got = align(text, &[q("time", "7時"), q("first_name", "Zoë")]).unwrap();
        let chars: Vec<char> = text.chars().collect();
        for s in &got {
            assert_eq!(chars[s.start..s.end].iter().collect::<String>(), s.text);
        }
        assert_eq!(placed(&got)[0], ("time", 10, 12, "7時"));
    }
}
