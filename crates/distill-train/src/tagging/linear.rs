//! The seconds-to-train extraction student: a hashed linear model over each word token's
//! features and its neighbours' (the word, its 3- and 4-character prefix and suffix, its
//! shape, the words and shapes around it and their pairs, and the input's context alone and
//! joined with the word, its neighbours and the shapes around it), one softmax over
//! the BIO tags per token, trained by SGD on cross-entropy and decoded by [`viterbi`] under
//! the tag grammar.
//!
//! An input's confidence is its least sure token: the lowest probability the model gives to
//! the tag it chose, so one doubtful boundary makes the whole answer doubtful.

use super::{decode, encode, viterbi, words, TagSet, TokenRange};
use distill_core::spans::Span;
use distill_core::spec::Context;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

#[derive(Debug, Clone)]
pub struct LinearTaggerConfig {
    /// Hash buckets of the feature space (weights are `buckets × tags`).
    pub buckets: usize,
    pub epochs: usize,
    /// Initial SGD step; epoch `e` uses `lr / (1 + e)`.
    pub lr: f32,
    pub seed: u64,
}

impl Default for LinearTaggerConfig {
    fn default() -> Self {
        Self {
            buckets: 1 << 18,
            epochs: 15,
            lr: 0.3,
            seed: 17,
        }
    }
}

/// One training input: its text, its context and its spans.
pub struct TagExample<'a> {
    pub text: &'a str,
    pub context: &'a Context,
    pub spans: &'a [Span],
}

#[derive(Debug, Clone)]
pub struct LinearTagger {
    pub tags: TagSet,
    buckets: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// What training saw: spans the word tokens could not represent exactly are widened.
#[derive(Debug, Clone, Default)]
pub struct TaggerTrainStats {
    pub tokens: usize,
    pub spans: usize,
    pub widened: usize,
    pub lost: usize,
}

impl LinearTagger {
    pub fn train(
        examples: &[TagExample],
        slots: Vec<String>,
        cfg: &LinearTaggerConfig,
    ) -> (Self, TaggerTrainStats) {
        let tags = TagSet::new(slots);
        let n_tags = tags.len();
        let mut m = LinearTagger {
            weights: vec![0.0; cfg.buckets * n_tags],
            bias: vec![0.0; n_tags],
            buckets: cfg.buckets,
            tags,
        };
        let mut stats = TaggerTrainStats::default();
        let mut rows: Vec<(Vec<usize>, usize)> = Vec::new();
        for ex in examples {
            let tokens = words(ex.text);
            let enc = encode(ex.spans, &tokens, &m.tags);
            stats.spans += ex.spans.len();
            stats.widened += enc.misaligned;
            stats.lost += enc.lost;
            for (f, t) in m
                .features(ex.text, &tokens, ex.context)
                .into_iter()
                .zip(enc.tags)
            {
                rows.push((f, t));
            }
        }
        stats.tokens = rows.len();
        let mut order: Vec<usize> = (0..rows.len()).collect();
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut p = vec![0f32; n_tags];
        for epoch in 0..cfg.epochs {
            order.shuffle(&mut rng);
            let lr = cfg.lr / (1.0 + epoch as f32);
            for &i in &order {
                let (features, gold) = &rows[i];
                m.probabilities(features, &mut p);
                p[*gold] -= 1.0;
                for (b, g) in m.bias.iter_mut().zip(&p) {
                    *b -= lr * g;
                }
                for &f in features {
                    let w = &mut m.weights[f * n_tags..(f + 1) * n_tags];
                    for (w, g) in w.iter_mut().zip(&p) {
                        *w -= lr * g;
                    }
                }
            }
        }
        (m, stats)
    }

    /// The slots as a label set (to read gold spans against).
    pub fn tags_as_labels(&self) -> distill_core::LabelSet {
        distill_core::LabelSet::new(self.tags.slots.clone())
    }

    /// The learned weights (`buckets × tags`, row-major) and biases, for saving.
    pub fn parameters(&self) -> (&[f32], &[f32]) {
        (&self.weights, &self.bias)
    }

    /// A tagger from saved parameters; errors say what does not fit.
    pub fn from_parameters(
        slots: Vec<String>,
        buckets: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
    ) -> Result<Self, String> {
        let tags = TagSet::new(slots);
        if buckets == 0 || bias.len() != tags.len() || weights.len() != buckets * tags.len() {
            return Err(format!(
                "weights hold {} and biases {} numbers; {} slots over {buckets} buckets need {} and {}",
                weights.len(),
                bias.len(),
                tags.slots.len(),
                buckets * tags.len(),
                tags.len()
            ));
        }
        Ok(Self {
            tags,
            buckets,
            weights,
            bias,
        })
    }

    /// The spans of `text` and the answer's confidence (its least sure token; 1 with no
    /// tokens).
    pub fn predict(&self, text: &str, context: &Context) -> (Vec<Span>, f32) {
        let tokens = words(text);
        let mut p = vec![0f32; self.tags.len()];
        let scores: Vec<Vec<f32>> = self
            .features(text, &tokens, context)
            .iter()
            .map(|f| {
                self.probabilities(f, &mut p);
                p.iter().map(|x| x.max(1e-12).ln()).collect()
            })
            .collect();
        let path = viterbi(&scores, &self.tags);
        let confidence = path
            .iter()
            .zip(&scores)
            .map(|(&t, s)| s[t].exp())
            .fold(1.0f32, f32::min);
        (decode(&path, &tokens, text, &self.tags), confidence)
    }

    /// Softmax of the summed feature weights, into `out`.
    fn probabilities(&self, features: &[usize], out: &mut [f32]) {
        let n = self.tags.len();
        out.copy_from_slice(&self.bias);
        for &f in features {
            for (o, w) in out.iter_mut().zip(&self.weights[f * n..(f + 1) * n]) {
                *o += w;
            }
        }
        let max = out.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for o in out.iter_mut() {
            *o = (*o - max).exp();
            sum += *o;
        }
        out.iter_mut().for_each(|o| *o /= sum);
    }

    /// Each token's hashed feature buckets.
    fn features(&self, text: &str, tokens: &[TokenRange], context: &Context) -> Vec<Vec<usize>> {
        let chars: Vec<char> = text.chars().collect();
        let word: Vec<String> = tokens
            .iter()
            .map(|&(s, e)| chars[s..e].iter().collect::<String>().to_lowercase())
            .collect();
        let shape: Vec<String> = tokens.iter().map(|&(s, e)| shape(&chars[s..e])).collect();
        let ctx: Vec<String> = context
            .iter()
            .flat_map(|(k, v)| {
                v.split(", ")
                    .filter(|x| !x.is_empty())
                    .map(move |x| format!("{k}={x}"))
            })
            .collect();
        let at = |v: &[String], i: isize| -> String {
            if i < 0 {
                "<s>".into()
            } else {
                v.get(i as usize).cloned().unwrap_or_else(|| "</s>".into())
            }
        };
        (0..tokens.len())
            .map(|i| {
                let w = &word[i];
                let c: Vec<char> = w.chars().collect();
                let j = i as isize;
                let mut f = vec![
                    "b".to_string(),
                    format!("w:{w}"),
                    format!("p:{}", c.iter().take(3).collect::<String>()),
                    format!(
                        "s:{}",
                        c[c.len().saturating_sub(3)..].iter().collect::<String>()
                    ),
                    format!("sh:{}", shape[i]),
                    format!("w-1:{}", at(&word, j - 1)),
                    format!("w+1:{}", at(&word, j + 1)),
                    format!("w-2:{}", at(&word, j - 2)),
                    format!("w+2:{}", at(&word, j + 2)),
                    format!("sh-1:{}", at(&shape, j - 1)),
                    format!("sh+1:{}", at(&shape, j + 1)),
                    format!("w-1w:{}|{w}", at(&word, j - 1)),
                    format!("ww+1:{w}|{}", at(&word, j + 1)),
                    format!("p4:{}", c.iter().take(4).collect::<String>()),
                    format!(
                        "s4:{}",
                        c[c.len().saturating_sub(4)..].iter().collect::<String>()
                    ),
                    format!(
                        "sh3:{}|{}|{}",
                        at(&shape, j - 1),
                        shape[i],
                        at(&shape, j + 1)
                    ),
                    format!("w-2w-1:{}|{}", at(&word, j - 2), at(&word, j - 1)),
                    format!("w+1w+2:{}|{}", at(&word, j + 1), at(&word, j + 2)),
                    format!("wsh+1:{w}|{}", at(&shape, j + 1)),
                    format!("sh-1w:{}|{w}", at(&shape, j - 1)),
                ];
                for c in &ctx {
                    f.push(format!("c:{c}"));
                    f.push(format!("c+sh:{c}|{}", shape[i]));
                    f.push(format!("c+w:{c}|{w}"));
                    f.push(format!("c+w-1:{c}|{}", at(&word, j - 1)));
                    f.push(format!("c+w+1:{c}|{}", at(&word, j + 1)));
                    f.push(format!(
                        "c+sh3:{c}|{}|{}|{}",
                        at(&shape, j - 1),
                        shape[i],
                        at(&shape, j + 1)
                    ));
                }
                f.iter().map(|s| bucket(s, self.buckets)).collect()
            })
            .collect()
    }
}

/// `Xxxx` → `Xx`, `7:30` → `d:d`: letter case and digits, runs collapsed.
fn shape(chars: &[char]) -> String {
    let mut out = String::new();
    for &c in chars {
        let k = if c.is_uppercase() {
            'X'
        } else if c.is_lowercase() {
            'x'
        } else if c.is_numeric() {
            'd'
        } else {
            c
        };
        if !out.ends_with(k) {
            out.push(k);
        }
    }
    out
}

/// FNV-1a: a hash that never changes between builds, so a saved model keeps its buckets.
fn bucket(feature: &str, buckets: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in feature.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % buckets as u64) as usize
}

impl super::SpanTagger for LinearTagger {
    fn predict_batch(&self, inputs: &[(&str, &Context)]) -> crate::Result<Vec<(Vec<Span>, f32)>> {
        Ok(inputs.iter().map(|(t, c)| self.predict(t, c)).collect())
    }
    fn token_len(&self, text: &str) -> usize {
        words(text).len()
    }
}
