//! The linear tagger's tokens: runs of letters and digits, and every other visible
//! character on its own ("7:30pm" is `7`, `:`, `30pm`), so a slot boundary at punctuation is
//! a token boundary.

use super::TokenRange;

/// The word tokens of `text` as character ranges.
pub fn words(text: &str) -> Vec<TokenRange> {
    let mut out = Vec::new();
    let mut run: Option<usize> = None;
    for (i, c) in text.chars().enumerate() {
        if c.is_alphanumeric() {
            run.get_or_insert(i);
            continue;
        }
        if let Some(s) = run.take() {
            out.push((s, i));
        }
        if !c.is_whitespace() {
            out.push((i, i + 1));
        }
    }
    if let Some(s) = run {
        out.push((s, text.chars().count()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_at_punctuation_and_keep_character_offsets() {
        let text = "Zoë,  7:30pm 🍣予約";
        let got: Vec<String> = words(text)
            .iter()
            .map(|&(s, e)| text.chars().skip(s).take(e - s).collect())
            .collect();
        assert_eq!(got, ["Zoë", ",", "7", ":", "30pm", "🍣", "予約"]);
        assert!(words("   ").is_empty());
    }
}
