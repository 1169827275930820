//! The sim's extraction answers: a message's gold spans, with the mistakes real extractors
//! make at the configured rate (a span missed, a boundary cut or stretched by a word, a slot
//! swapped for its most confusable one), quoted as text the way a model replies.

use crate::oracle::{mix64, unit};
use distill_core::spans::Span;

const STREAM_CORRECT: u64 = 0x3C6E_F372_FE94_F82B;
const STREAM_MISTAKE: u64 = 0xA54F_F53A_5F1D_36F1;
const STREAM_INVALID: u64 = 0x510E_527F_ADE6_82D1;

/// One message's gold: its text (offsets are into it) and its spans.
#[derive(Debug, Clone)]
pub struct GoldSpans {
    pub text: String,
    pub spans: Vec<Span>,
}

/// What the sim quotes for a message: `(slot, text)` pairs in reading order, the gold at
/// `accuracy` and otherwise one mistake, chosen deterministically from `hash`.
pub fn answer(
    gold: &GoldSpans,
    hash: u64,
    accuracy: f64,
    confusable: impl Fn(&str) -> String,
) -> Vec<(String, String)> {
    let chars: Vec<char> = gold.text.chars().collect();
    let mut spans: Vec<(String, usize, usize)> = gold
        .spans
        .iter()
        .map(|s| (s.slot.clone(), s.start, s.end))
        .collect();
    if !spans.is_empty() && unit(mix64(hash ^ STREAM_CORRECT)) >= accuracy {
        let pick = mix64(hash ^ STREAM_MISTAKE);
        let i = (pick >> 8) as usize % spans.len();
        let (start, end) = (spans[i].1, spans[i].2);
        let next_start = spans.get(i + 1).map_or(chars.len(), |s| s.1);
        let previous_end = if i == 0 { 0 } else { spans[i - 1].2 };
        match pick % 4 {
            0 => {
                spans.remove(i);
            }
            1 => match cut_last_word(&chars, start, end) {
                Some(e) => spans[i].2 = e,
                None => spans[i].2 = stretch(&chars, end, next_start).unwrap_or(end),
            },
            2 => match stretch(&chars, end, next_start) {
                Some(e) => spans[i].2 = e,
                None => spans[i].1 = stretch_back(&chars, start, previous_end).unwrap_or(start),
            },
            _ => spans[i].0 = confusable(&spans[i].0),
        }
    }
    spans
        .into_iter()
        .map(|(slot, s, e)| (slot, chars[s..e].iter().collect()))
        .collect()
}

/// The reply for some quotes: `{"spans": [{"slot", "text"}...]}`, or (deliberately invalid)
/// a paraphrase that is not in the message or truncated JSON.
pub fn reply(quotes: &[(String, String)], invalid: bool, hash: u64) -> String {
    let json = |quotes: &[(String, String)]| {
        let spans: Vec<_> = quotes
            .iter()
            .map(|(slot, text)| serde_json::json!({ "slot": slot, "text": text }))
            .collect();
        serde_json::json!({ "spans": spans }).to_string()
    };
    if !invalid {
        return json(quotes);
    }
    match (mix64(hash ^ STREAM_INVALID) % 2, quotes.first()) {
        (0, Some((slot, text))) => json(&[(slot.clone(), format!("{text} (approximately)"))]),
        _ => {
            let j = json(quotes);
            crate::oracle::first_half(&j).to_string()
        }
    }
}

/// The end of `start..end` without its last word, when it has two or more.
fn cut_last_word(chars: &[char], start: usize, end: usize) -> Option<usize> {
    let inner = chars[start..end].iter().rposition(|c| c.is_whitespace())?;
    let cut = chars[start..start + inner]
        .iter()
        .rposition(|c| !c.is_whitespace())?;
    Some(start + cut + 1)
}

/// `end` moved past the next word, if that word ends before `limit`.
fn stretch(chars: &[char], end: usize, limit: usize) -> Option<usize> {
    let mut e = end;
    while e < limit && chars[e].is_whitespace() {
        e += 1;
    }
    let word_start = e;
    while e < limit && !chars[e].is_whitespace() {
        e += 1;
    }
    (e > word_start && (e == chars.len() || chars[e].is_whitespace() || e == limit)).then_some(e)
}

/// `start` moved back over the previous word, if that word starts after `limit`.
fn stretch_back(chars: &[char], start: usize, limit: usize) -> Option<usize> {
    let mut s = start;
    while s > limit && chars[s - 1].is_whitespace() {
        s -= 1;
    }
    let word_end = s;
    while s > limit && !chars[s - 1].is_whitespace() {
        s -= 1;
    }
    (s < word_end).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gold() -> GoldSpans {
        let text = "book a table for 4 people at 7 pm tomorrow";
        let span = |slot: &str, start: usize, end: usize| Span {
            slot: slot.into(),
            start,
            end,
            text: text.chars().skip(start).take(end - start).collect(),
        };
        GoldSpans {
            text: text.into(),
            spans: vec![span("people", 17, 25), span("time", 29, 33)],
        }
    }

    #[test]
    fn mistakes_are_the_realistic_kinds_and_stay_in_the_text() {
        let g = gold();
        let swap = |s: &str| if s == "time" { "date" } else { "time" }.to_string();
        assert_eq!(
            answer(&g, 7, 1.0, swap),
            [
                ("people".into(), "4 people".into()),
                ("time".into(), "7 pm".into())
            ]
        );
        let mut kinds = std::collections::BTreeSet::new();
        for h in 0..400u64 {
            let a = answer(&g, h, 0.0, swap);
            for (_, t) in &a {
                assert!(g.text.contains(t.as_str()), "{t}");
            }
            let texts: Vec<&str> = a.iter().map(|(_, t)| t.as_str()).collect();
            kinds.insert(match (a.len(), texts.as_slice()) {
                (1, _) => "missed",
                (_, ["4", _] | [_, "7"]) => "cut",
                (_, ["4 people at", _] | [_, "7 pm tomorrow"] | ["for 4 people", _]) => "stretched",
                _ if a
                    .iter()
                    .any(|(s, _)| s == "date" || s == "time" && a[0].0 == "time") =>
                {
                    "swapped"
                }
                _ => panic!("{a:?}"),
            });
        }
        assert_eq!(kinds.len(), 4, "{kinds:?}");
        // A truncated reply is cut between characters, whatever the text.
        let names = [
            ("first_name".to_string(), "Zoë".to_string()),
            ("last_name".into(), "Müller".into()),
        ];
        for h in 0..16 {
            let _ = reply(&names, true, h);
        }
        let r = reply(&answer(&g, 7, 1.0, swap), false, 0);
        assert_eq!(
            r,
            r#"{"spans":[{"slot":"people","text":"4 people"},{"slot":"time","text":"7 pm"}]}"#
        );
    }
}
