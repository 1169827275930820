//! Text to token ids for BERT-family models, via the model's own `tokenizer.json`, so ids match
//! what `transformers` produces. Truncation happens here; padding happens per batch (in
//! [`super::bert::Batch`]) so a batch of short texts stays short.

use crate::error::{Result, TrainError};
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

pub struct TextTokenizer {
    tok: Tokenizer,
    /// The same tokenizer without truncation, for word pieces with offsets: made on first use,
    /// so loading a classifier does not copy its vocabulary.
    whole: std::sync::OnceLock<Tokenizer>,
    pub max_len: usize,
    pub pad_id: u32,
}

impl TextTokenizer {
    pub fn from_file(path: &Path, max_len: usize, pad_id: u32) -> Result<Self> {
        let tok = Tokenizer::from_file(path)
            .map_err(|e| TrainError::model(path, format!("cannot load tokenizer.json: {e}")))?;
        Self::new(tok, max_len, pad_id).map_err(|e| match e {
            TrainError::Other(m) => TrainError::model(path, m),
            e => e,
        })
    }

    pub fn new(mut tok: Tokenizer, max_len: usize, pad_id: u32) -> Result<Self> {
        if max_len < 2 {
            return Err(TrainError::Other(format!(
                "max length {max_len} is too short (at least 2 tokens: [CLS] and [SEP])"
            )));
        }
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| TrainError::Other(format!("tokenizer truncation: {e}")))?;
        let pad_id = tok.get_vocab(true).get("[PAD]").copied().unwrap_or(pad_id);
        Ok(TextTokenizer {
            tok,
            whole: std::sync::OnceLock::new(),
            max_len,
            pad_id,
        })
    }

    /// Every word piece of `text` (no special tokens, no truncation) with the characters it
    /// came from: the tokenizer's byte offsets into the original text, counted in Unicode
    /// characters. Pieces the normaliser made from nothing visible are dropped.
    pub fn pieces(&self, text: &str) -> Result<Vec<(u32, crate::tagging::TokenRange)>> {
        let whole = self.whole.get_or_init(|| {
            let mut t = self.tok.clone();
            // Only truncation is set on `tok` (padding is off); taking it off cannot fail.
            let _ = t.with_truncation(None);
            t
        });
        let enc = whole
            .encode(text, false)
            .map_err(|e| TrainError::Other(format!("tokenizer: {e}")))?;
        // char_at[b] = characters before byte b (at char boundaries).
        let mut char_at = vec![0usize; text.len() + 1];
        let mut n = 0;
        for (b, c) in text.char_indices() {
            for x in &mut char_at[b..b + c.len_utf8()] {
                *x = n;
            }
            n += 1;
        }
        char_at[text.len()] = n;
        let to_char = |b: usize, end: bool| {
            let b = b.min(text.len());
            // A byte inside a character belongs to it (its start, or past it for an end).
            if end && !text.is_char_boundary(b) {
                char_at[b] + 1
            } else {
                char_at[b]
            }
        };
        Ok(enc
            .get_ids()
            .iter()
            .zip(enc.get_offsets())
            .map(|(&id, &(s, e))| (id, (to_char(s, false), to_char(e, true))))
            .filter(|(_, (s, e))| e > s)
            .collect())
    }

    /// Ids with `[CLS]`/`[SEP]`, at most `max_len` long.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encs = self
            .tok
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| TrainError::Other(format!("tokenizer: {e}")))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    pub fn token_len(&self, text: &str) -> usize {
        self.tok
            .encode(text, true)
            .map(|e| e.get_ids().len())
            .unwrap_or(0)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tok
    }
}
