//! What every extraction student shares: tokens with exact character offsets, the BIO tags
//! spans become over those tokens, and the decoding back to spans under the tag grammar.
//!
//! Offsets are Unicode scalar values, as in [`distill_core::spans`]. Both tokenisations
//! (the hashed linear tagger's [`words`], the encoder's word pieces through
//! [`crate::encoder::tokenize::TextTokenizer::pieces`]) report them, so one encoder and one
//! decoder serve every student.

pub mod bio;
pub mod linear;
pub mod model;
pub mod words;

pub use bio::{decode, encode, viterbi, Encoded, TagSet};
pub use words::words;

/// A token's place in the text: characters `start..end`.
pub type TokenRange = (usize, usize);
