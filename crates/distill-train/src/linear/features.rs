//! Hashed n-gram features for the linear student.
//!
//! Hashing (instead of a learned vocabulary) keeps featurisation a pure function of the text
//! and the config, so training, `predict` and `serve` can never disagree about feature ids, and
//! a model directory needs no vocabulary file. The hash is FNV-1a 64, written out here so the
//! ids stay the same across Rust and crate versions (a model trained today must load next year).

use serde::{Deserialize, Serialize};

/// Which n-grams to extract and how many hash buckets they fall into (stored in `config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureConfig {
    /// log2 of the number of hash buckets.
    pub hash_bits: u32,
    /// Word n-gram orders, inclusive (words are runs of letters/digits/underscore, lower-cased).
    pub word_ngram_min: usize,
    pub word_ngram_max: usize,
    /// Character n-gram orders, inclusive, taken inside each whitespace-separated word padded
    /// with one space on each side (scikit-learn's `char_wb`).
    pub char_ngram_min: usize,
    pub char_ngram_max: usize,
    /// Term frequency as 1 + ln(tf) instead of tf.
    pub sublinear_tf: bool,
    pub lowercase: bool,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        Self {
            hash_bits: 20,
            word_ngram_min: 1,
            word_ngram_max: 2,
            char_ngram_min: 2,
            char_ngram_max: 5,
            sublinear_tf: true,
            lowercase: true,
        }
    }
}

/// The two feature families are normalised separately (like a scikit-learn `FeatureUnion` of two
/// TF-IDF vectorisers), so long words cannot drown the word n-grams in character n-grams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Word,
    Char,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET ^ seed;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// Mixes the low bits: FNV-1a alone leaves short n-grams clustered in the low buckets.
fn finish(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Seeds keep the families (and word orders) in separate hash spaces: the word `ab` and the
/// character bigram `ab` are different features.
const SEED_WORD: u64 = 0x5157_4f52_4400_0000;
const SEED_CHAR: u64 = 0x4348_4152_0000_0000;

impl FeatureConfig {
    pub fn n_buckets(&self) -> usize {
        1usize << self.hash_bits
    }

    /// Raw (bucket, count) pairs of one text, sorted by bucket, with the family of each.
    pub fn hashed_counts(&self, text: &str) -> Vec<(u32, f32, Family)> {
        let text = if self.lowercase {
            text.to_lowercase()
        } else {
            text.to_string()
        };
        let mask = (self.n_buckets() - 1) as u64;
        let mut ids: Vec<(u32, Family)> = Vec::with_capacity(text.len() * 4);

        let words: Vec<&str> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        let mut buf = Vec::with_capacity(64);
        for n in self.word_ngram_min.max(1)..=self.word_ngram_max {
            if words.len() < n {
                break;
            }
            for win in words.windows(n) {
                buf.clear();
                for (i, w) in win.iter().enumerate() {
                    if i > 0 {
                        buf.push(b' ');
                    }
                    buf.extend_from_slice(w.as_bytes());
                }
                let h = finish(fnv1a(SEED_WORD ^ n as u64, &buf));
                ids.push(((h & mask) as u32, Family::Word));
            }
        }

        if self.char_ngram_max >= self.char_ngram_min.max(1) {
            let mut chars: Vec<char> = Vec::with_capacity(32);
            let mut enc = [0u8; 4];
            for word in text.split_whitespace() {
                chars.clear();
                chars.push(' ');
                chars.extend(word.chars());
                chars.push(' ');
                for n in self.char_ngram_min.max(1)..=self.char_ngram_max {
                    if chars.len() < n {
                        break;
                    }
                    for win in chars.windows(n) {
                        buf.clear();
                        for c in win {
                            buf.extend_from_slice(c.encode_utf8(&mut enc).as_bytes());
                        }
                        let h = finish(fnv1a(SEED_CHAR ^ n as u64, &buf));
                        ids.push(((h & mask) as u32, Family::Char));
                    }
                    // A padded word shorter than n+1 yields one n-gram that is the whole word;
                    // longer orders would repeat it.
                    if chars.len() == n {
                        break;
                    }
                }
            }
        }

        ids.sort_unstable_by_key(|&(b, f)| (b, f as u8));
        let mut out: Vec<(u32, f32, Family)> = Vec::with_capacity(ids.len());
        for (b, f) in ids {
            match out.last_mut() {
                Some(last) if last.0 == b && last.2 == f => last.1 += 1.0,
                _ => out.push((b, 1.0, f)),
            }
        }
        out
    }
}

/// A sparse feature row: indices into the model's compact feature table and their values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseRow {
    pub idx: Vec<u32>,
    pub val: Vec<f32>,
}

/// Maps hash buckets seen in training to compact rows, with their IDF weights. Buckets never
/// seen in training carry no learned weight, so they are dropped at prediction time.
#[derive(Debug, Clone)]
pub struct Vocab {
    /// `row_of[bucket]` = compact row, or `u32::MAX` when the bucket was not seen in training.
    row_of: Vec<u32>,
    /// Sorted buckets, one per compact row.
    pub buckets: Vec<u32>,
    /// IDF per compact row.
    pub idf: Vec<f32>,
    /// Family per compact row (0 word, 1 char).
    pub family: Vec<u8>,
}

impl Vocab {
    /// Learns buckets and smooth IDF, ln((1 + n) / (1 + df)) + 1, from training texts' counts.
    pub fn fit(cfg: &FeatureConfig, counts: &[Vec<(u32, f32, Family)>]) -> Self {
        let mut df: Vec<u32> = vec![0; cfg.n_buckets()];
        let mut fam: Vec<u8> = vec![0; cfg.n_buckets()];
        for row in counts {
            for &(b, _, f) in row {
                df[b as usize] += 1;
                if f == Family::Char {
                    fam[b as usize] = 1;
                }
            }
        }
        let n = counts.len() as f32;
        let mut row_of = vec![u32::MAX; cfg.n_buckets()];
        let mut buckets = Vec::new();
        let mut idf = Vec::new();
        let mut family = Vec::new();
        for (b, &d) in df.iter().enumerate() {
            if d > 0 {
                row_of[b] = buckets.len() as u32;
                buckets.push(b as u32);
                idf.push(((1.0 + n) / (1.0 + d as f32)).ln() + 1.0);
                family.push(fam[b]);
            }
        }
        Self {
            row_of,
            buckets,
            idf,
            family,
        }
    }

    /// Rebuilds the lookup table from saved buckets.
    pub fn from_parts(
        cfg: &FeatureConfig,
        buckets: Vec<u32>,
        idf: Vec<f32>,
        family: Vec<u8>,
    ) -> Option<Self> {
        let mut row_of = vec![u32::MAX; cfg.n_buckets()];
        if idf.len() != buckets.len() || family.len() != buckets.len() {
            return None;
        }
        for (r, &b) in buckets.iter().enumerate() {
            *row_of.get_mut(b as usize)? = r as u32;
        }
        Some(Self {
            row_of,
            buckets,
            idf,
            family,
        })
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// TF-IDF row: (sublinear) tf × idf, each family L2-normalised on its own.
    pub fn transform(&self, cfg: &FeatureConfig, counts: &[(u32, f32, Family)]) -> SparseRow {
        let mut row = SparseRow {
            idx: Vec::with_capacity(counts.len()),
            val: Vec::with_capacity(counts.len()),
        };
        let mut fams: Vec<Family> = Vec::with_capacity(counts.len());
        for &(b, c, f) in counts {
            let r = self.row_of[b as usize];
            if r == u32::MAX {
                continue;
            }
            let tf = if cfg.sublinear_tf { 1.0 + c.ln() } else { c };
            row.idx.push(r);
            row.val.push(tf * self.idf[r as usize]);
            fams.push(f);
        }
        for fam in [Family::Word, Family::Char] {
            let norm: f32 = row
                .val
                .iter()
                .zip(&fams)
                .filter(|(_, f)| **f == fam)
                .map(|(v, _)| v * v)
                .sum::<f32>()
                .sqrt();
            if norm > 0.0 {
                for (v, f) in row.val.iter_mut().zip(&fams) {
                    if *f == fam {
                        *v /= norm;
                    }
                }
            }
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_is_stable_and_separates_families() {
        let cfg = FeatureConfig::default();
        let a = cfg.hashed_counts("Where is my card?");
        let b = cfg.hashed_counts("where IS my card?");
        assert_eq!(a, b, "lower-casing makes case irrelevant");
        // 4 words + 3 bigrams; char n-grams of " where ", " is ", " my ", " card? ".
        let words = a.iter().filter(|x| x.2 == Family::Word).count();
        assert_eq!(words, 7);
        assert!(a.iter().filter(|x| x.2 == Family::Char).count() > 20);
        // Pinned so a change of hash (which would break saved models) fails loudly.
        assert_eq!(finish(fnv1a(SEED_WORD ^ 1, b"card")) & 0xfffff, 0x949d2);
    }

    #[test]
    fn tfidf_rows_are_normalised_per_family() {
        let cfg = FeatureConfig::default();
        let texts = ["my card is lost", "top up my account", "card card card"];
        let counts: Vec<_> = texts.iter().map(|t| cfg.hashed_counts(t)).collect();
        let vocab = Vocab::fit(&cfg, &counts);
        let row = vocab.transform(&cfg, &counts[0]);
        let total: f32 = row.val.iter().map(|v| v * v).sum();
        assert!(
            (total - 2.0).abs() < 1e-4,
            "two unit-norm families: {total}"
        );
        let unseen = vocab.transform(&cfg, &cfg.hashed_counts("zzzz qqqq"));
        assert!(unseen.idx.is_empty());
    }
}
