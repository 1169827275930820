//! Word pieces of the real MiniLM tokenizer keep exact character offsets for any UTF-8 input
//! (accents the normaliser strips, emoji it cannot spell, CJK it splits per character, runs
//! of spaces), and Restaurant-8k's gold spans survive the round trip spans → BIO tags over
//! word pieces (and over the linear tagger's words) → spans.

mod common;

use distill_core::spans::Span;
use distill_train::encoder::tokenize::TextTokenizer;
use distill_train::tagging::{decode, encode, words, TagSet, TokenRange};
use std::path::Path;

fn tokenizer() -> TextTokenizer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/base/all-MiniLM-L6-v2");
    TextTokenizer::from_file(&dir.join("tokenizer.json"), 128, 0)
        .expect("models/base/all-MiniLM-L6-v2 (scripts/setup.sh installs it)")
}

fn ranges(tok: &TextTokenizer, text: &str) -> Vec<TokenRange> {
    tok.pieces(text)
        .unwrap()
        .into_iter()
        .map(|(_, r)| r)
        .collect()
}

fn covered(text: &str, (s, e): TokenRange) -> String {
    text.chars().skip(s).take(e - s).collect()
}

#[test]
fn pieces_cover_every_visible_character_exactly_once() {
    let tok = tokenizer();
    for text in [
        "Table for Zoë   Brontë-Smith at 7:30pm",
        "ÉLODIE and Ångström, naïve café",
        "予約は明日の7時です",
        "party 🎉🍣 for 4 👨‍👩‍👧",
        "  leading and trailing   ",
        "tab\tand\nnewline",
    ] {
        let r = ranges(&tok, text);
        let n = text.chars().count();
        let mut last_end = 0;
        for &(s, e) in &r {
            assert!(s >= last_end && s < e && e <= n, "{text:?}: {r:?}");
            last_end = e;
        }
        let chars: Vec<char> = text.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            let inside = r.iter().any(|&(s, e)| s <= i && i < e);
            // Zero-width joiners and variation selectors carry nothing to cover.
            if !c.is_whitespace() && !matches!(*c, '\u{200d}' | '\u{fe0f}') {
                assert!(inside, "{text:?}: character {i} {c:?} in no piece: {r:?}");
            } else if c.is_whitespace() {
                assert!(!inside, "{text:?}: whitespace {i} inside a piece: {r:?}");
            }
        }
        // Each piece is one word's characters: never straddling a space.
        for &(s, e) in &r {
            assert!(
                !covered(text, (s, e)).contains(char::is_whitespace),
                "{text:?}"
            );
        }
    }
    let r = ranges(&tok, "Zoë Brontë");
    let got: Vec<String> = r.iter().map(|&x| covered("Zoë Brontë", x)).collect();
    assert_eq!(got.concat(), "ZoëBrontë", "{got:?}");
}

#[test]
fn restaurant8k_spans_round_trip_through_tags() {
    let tok = tokenizer();
    let tags = TagSet::new(
        ["date", "time", "people", "first_name", "last_name"]
            .map(String::from)
            .to_vec(),
    );
    let data: Vec<(String, Vec<Span>)> = common::restaurant8k("test")
        .into_iter()
        .map(|t| (t.text, t.spans))
        .collect();
    assert!(data.len() > 3600, "{}", data.len());
    for (name, tokenise) in [
        (
            "word pieces",
            &(|t: &str| ranges(&tok, t)) as &dyn Fn(&str) -> Vec<TokenRange>,
        ),
        ("words", &|t: &str| words(t)),
    ] {
        let (mut spans, mut misaligned, mut lost, mut exact) = (0, 0, 0, 0);
        for (text, gold) in &data {
            let tokens = tokenise(text);
            let e = encode(gold, &tokens, &tags);
            let back = decode(&e.tags, &tokens, text, &tags);
            spans += gold.len();
            misaligned += e.misaligned;
            lost += e.lost;
            if e.misaligned == 0 && e.lost == 0 {
                assert_eq!(&back, gold, "{name}: {text:?}");
            }
            exact += back.iter().filter(|b| gold.contains(b)).count();
        }
        eprintln!(
            "{name}: {spans} gold spans, {exact} back exactly, {misaligned} widened, {lost} lost"
        );
        assert_eq!(lost, 0, "{name}");
        assert!(
            misaligned * 100 < spans,
            "{name}: {misaligned} of {spans} misaligned"
        );
        assert_eq!(exact + misaligned, spans, "{name}");
    }
}
