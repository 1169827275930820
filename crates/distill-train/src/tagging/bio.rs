//! BIO tags over tokens (Ramshaw and Marcus, 1995, in the IOB2 form seqeval's strict mode
//! reads): a span's first token is `B-slot`, its other tokens `I-slot`, every other token `O`.
//! Decoding keeps the grammar (`I-x` only after `B-x` or `I-x`) by Viterbi over the tag
//! log-probabilities, so a student never emits a span that starts in the middle.

use super::TokenRange;
use distill_core::spans::Span;

/// The tags of a slot set: `O` is 0, slot `k` is `B` at `1 + 2k` and `I` at `2 + 2k`.
#[derive(Debug, Clone, PartialEq)]
pub struct TagSet {
    pub slots: Vec<String>,
}

impl TagSet {
    pub fn new(slots: Vec<String>) -> Self {
        Self { slots }
    }
    pub fn len(&self) -> usize {
        1 + 2 * self.slots.len()
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn begin(&self, slot: usize) -> usize {
        1 + 2 * slot
    }
    pub fn inside(&self, slot: usize) -> usize {
        2 + 2 * slot
    }
    /// The slot of a `B` or `I` tag.
    pub fn slot_of(&self, tag: usize) -> Option<usize> {
        (tag > 0).then(|| (tag - 1) / 2)
    }
    pub fn is_inside(&self, tag: usize) -> bool {
        tag > 0 && tag.is_multiple_of(2)
    }
    /// `O`, `B-date`, `I-date`...
    pub fn name(&self, tag: usize) -> String {
        match self.slot_of(tag) {
            None => "O".into(),
            Some(k) if self.is_inside(tag) => format!("I-{}", self.slots[k]),
            Some(k) => format!("B-{}", self.slots[k]),
        }
    }
    /// Whether `to` may follow `from` (`None`: the first token).
    pub fn allowed(&self, from: Option<usize>, to: usize) -> bool {
        if !self.is_inside(to) {
            return true;
        }
        from.is_some_and(|f| f != 0 && self.slot_of(f) == self.slot_of(to))
    }
}

/// A span list as tags, and how many spans the tokens could not represent exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub tags: Vec<usize>,
    /// Spans whose start or end falls inside a token: tagged on the tokens they touch, so
    /// decoding gives them back widened to token boundaries.
    pub misaligned: usize,
    /// Spans that touch no token at all (inside whitespace, or past the tokens kept).
    pub lost: usize,
}

/// The tags of `spans` over `tokens` (character ranges, in order). A token belongs to a span
/// when they share a character.
pub fn encode(spans: &[Span], tokens: &[TokenRange], tags: &TagSet) -> Encoded {
    let mut out = vec![0usize; tokens.len()];
    let (mut misaligned, mut lost) = (0, 0);
    for span in spans {
        let Some(k) = tags.slots.iter().position(|s| *s == span.slot) else {
            lost += 1;
            continue;
        };
        let touched: Vec<usize> = (0..tokens.len())
            .filter(|&i| tokens[i].0 < span.end && span.start < tokens[i].1)
            .collect();
        let (Some(&first), Some(&last)) = (touched.first(), touched.last()) else {
            lost += 1;
            continue;
        };
        if tokens[first].0 != span.start || tokens[last].1 != span.end {
            misaligned += 1;
        }
        out[first] = tags.begin(k);
        for &i in &touched[1..] {
            out[i] = tags.inside(k);
        }
    }
    Encoded {
        tags: out,
        misaligned,
        lost,
    }
}

/// The spans of a tag sequence over `tokens` in `text`: a `B-x` opens one, `I-x` of the same
/// slot extends it (from token start to token end, whatever lies between); an `I-x` that
/// continues nothing opens one too, as conlleval reads it.
pub fn decode(tag_seq: &[usize], tokens: &[TokenRange], text: &str, tags: &TagSet) -> Vec<Span> {
    let chars: Vec<char> = text.chars().collect();
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    let mut open = false;
    for (&t, &(s, e)) in tag_seq.iter().zip(tokens) {
        let Some(k) = tags.slot_of(t) else {
            open = false;
            continue;
        };
        match spans.last_mut() {
            Some(last) if open && tags.is_inside(t) && last.0 == k => last.2 = e,
            _ => spans.push((k, s, e)),
        }
        open = true;
    }
    spans
        .into_iter()
        .map(|(k, s, e)| Span {
            slot: tags.slots[k].clone(),
            start: s,
            end: e,
            text: chars[s..e].iter().collect(),
        })
        .collect()
}

/// The most probable tag sequence that keeps the grammar, from per-token tag
/// log-probabilities (`scores[token][tag]`).
pub fn viterbi(scores: &[Vec<f32>], tags: &TagSet) -> Vec<usize> {
    let n_tags = tags.len();
    if scores.is_empty() {
        return Vec::new();
    }
    let mut best: Vec<f32> = (0..n_tags)
        .map(|t| {
            if tags.allowed(None, t) {
                scores[0][t]
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    let mut back: Vec<Vec<usize>> = Vec::with_capacity(scores.len());
    for row in &scores[1..] {
        let mut next = vec![f32::NEG_INFINITY; n_tags];
        let mut from = vec![0usize; n_tags];
        for to in 0..n_tags {
            for (f, &b) in best.iter().enumerate() {
                if b > f32::NEG_INFINITY && tags.allowed(Some(f), to) && b + row[to] > next[to] {
                    next[to] = b + row[to];
                    from[to] = f;
                }
            }
        }
        back.push(from);
        best = next;
    }
    let mut t = (0..n_tags)
        .max_by(|&a, &b| best[a].total_cmp(&best[b]))
        .unwrap_or(0);
    let mut path = vec![t];
    for from in back.iter().rev() {
        t = from[t];
        path.push(t);
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tagging::words;

    fn tags() -> TagSet {
        TagSet::new(vec!["time".into(), "people".into()])
    }
    fn span(text: &str, slot: &str, start: usize, end: usize) -> Span {
        Span {
            slot: slot.into(),
            start,
            end,
            text: text.chars().skip(start).take(end - start).collect(),
        }
    }

    #[test]
    fn spans_round_trip_through_tags() {
        let text = "a table for  4 people at 7 pm";
        let tokens = words(text);
        let spans = vec![span(text, "people", 13, 21), span(text, "time", 25, 29)];
        let e = encode(&spans, &tokens, &tags());
        assert_eq!((e.misaligned, e.lost), (0, 0));
        let names: Vec<String> = e.tags.iter().map(|&t| tags().name(t)).collect();
        assert_eq!(
            names,
            ["O", "O", "O", "B-people", "I-people", "O", "B-time", "I-time"]
        );
        assert_eq!(decode(&e.tags, &tokens, text, &tags()), spans);
        // Two spans of one slot side by side stay two spans.
        let two = vec![span(text, "time", 25, 26), span(text, "time", 27, 29)];
        let e = encode(&two, &tokens, &tags());
        assert_eq!(decode(&e.tags, &tokens, text, &tags()), two);
        // A boundary inside a token widens to it, and is counted.
        let e = encode(&[span(text, "people", 2, 4)], &tokens, &tags());
        assert_eq!(e.misaligned, 1);
        assert_eq!(decode(&e.tags, &tokens, text, &tags())[0].text, "table");
        assert_eq!(
            encode(&[span(text, "time", 11, 12)], &tokens, &tags()).lost,
            1
        );
    }

    #[test]
    fn viterbi_keeps_the_grammar() {
        let t = tags();
        let (o, b_time, i_time, i_people) = (0, t.begin(0), t.inside(0), t.inside(1));
        let row = |best: usize| {
            let mut r = vec![-5.0f32; t.len()];
            r[best] = -0.1;
            r
        };
        // Greedy would start with I-time and switch slots inside a span.
        let mut scores = vec![row(i_time), row(i_time), row(o)];
        scores[0][b_time] = -0.5;
        assert_eq!(viterbi(&scores, &t), [b_time, i_time, o]);
        let mut s = vec![row(b_time), row(i_people)];
        s[1][i_time] = -1.0;
        assert_eq!(viterbi(&s, &t), [b_time, i_time]);
        assert!(viterbi(&[], &t).is_empty());
        for (from, to, ok) in [
            (None, i_time, false),
            (Some(o), i_time, false),
            (Some(b_time), i_time, true),
            (Some(t.begin(1)), i_time, false),
        ] {
            assert_eq!(t.allowed(from, to), ok, "{from:?} -> {to}");
        }
    }
}
