//! What every extraction student shares: tokens with exact character offsets, the BIO tags
//! spans become over those tokens, and the decoding back to spans under the tag grammar.
//!
//! Offsets are Unicode scalar values, as in [`distill_core::spans`]. Both tokenisations
//! (the hashed linear tagger's [`words`], the encoder's word pieces through
//! [`crate::encoder::tokenize::TextTokenizer::pieces`]) report them, so one encoder and one
//! decoder serve every student.

pub mod bio;
pub mod encoder;
pub mod linear;
pub mod model;
pub mod words;

pub use bio::{decode, encode, viterbi, Encoded, TagSet};
pub use words::words;

/// A token's place in the text: characters `start..end`.
pub type TokenRange = (usize, usize);

/// What every extraction student answers: each input's spans (offsets into its text) and a
/// confidence in the whole answer (its least sure token's probability).
pub trait SpanTagger: Send + Sync {
    fn predict_batch(
        &self,
        inputs: &[(&str, &distill_core::spec::Context)],
    ) -> crate::Result<Vec<(Vec<distill_core::spans::Span>, f32)>>;
    /// `text`'s length in the student's tokens.
    fn token_len(&self, text: &str) -> usize;
}
