//! What the server needs of a model, whatever its task kind: answers for inputs (text and
//! context) in the model's notation, and a card saying what the answers look like. A
//! classifier (one label or a label set) and an extraction tagger each implement
//! [`ServedStudent`] here; the cascade, cache, shadow traffic and metrics only ever see
//! answer strings in [`ModelCard::notation`], so they work for every kind alike.

use distill_core::spans::{format_spans, parse_spans, Span};
use distill_core::spec::Context;
use distill_core::LabelSet;
use distill_train::tagging::model::TaggerMeta;
use distill_train::tagging::SpanTagger;
use distill_train::{Prediction, Student, StudentKind};
use std::sync::Arc;

/// One input to answer: its text and the task's context columns (every column present,
/// empty when the request gave none).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub text: String,
    pub context: Context,
}

impl Input {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            context: Context::new(),
        }
    }
    pub fn prompt(&self) -> distill_core::spec::PromptInput<'_> {
        distill_core::spec::PromptInput {
            text: &self.text,
            context: &self.context,
        }
    }
}

/// The shape of a model's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerShape {
    /// One label.
    Label,
    /// A set of labels, joined by the notation's separator.
    LabelSet,
    /// Spans of the input ([`format_spans`]): offsets into the exact text asked about, so
    /// the text is never normalised or cut.
    Spans,
}

/// What a served model is, for the server and `/v1/models`.
#[derive(Debug, Clone)]
pub struct ModelCard {
    pub task: String,
    /// The student kind (`linear`, `encoder-finetune`, `linear-tagger`, ...).
    pub kind: String,
    pub shape: AnswerShape,
    /// The labels (or slots) answers are written in.
    pub notation: LabelSet,
    /// Context fields the model reads beside the text (requests may give them).
    pub context_columns: Vec<String>,
    /// The dev-split quality the model was chosen by: (metric name, value).
    pub dev_quality: Option<(&'static str, f64)>,
    /// Longest input in the model's tokens (`None`: the server's --max-input-tokens).
    pub max_len: Option<usize>,
    /// RFC 3339.
    pub created: String,
    /// Inference threads when none are asked for.
    pub workers: usize,
}

impl ModelCard {
    /// True when `answer` is an answer this model could give for `text` (a cache entry
    /// written by a retrained model with other labels is not).
    pub fn reads(&self, answer: &str, text: &str) -> bool {
        match self.shape {
            AnswerShape::Spans => parse_spans(answer, text, &self.notation).is_ok(),
            _ => self.notation.parse_set(answer).is_ok(),
        }
    }
    /// A label-set answer as its list of labels.
    pub fn labels_of(&self, answer: &str) -> Result<Vec<String>, String> {
        let set = self.notation.parse_set(answer)?;
        Ok(set
            .iter()
            .map(|&i| self.notation.names[i].clone())
            .collect())
    }
    /// A span answer as its spans of `text`.
    pub fn spans_of(&self, answer: &str, text: &str) -> Result<Vec<Span>, String> {
        parse_spans(answer, text, &self.notation)
    }
}

/// A trained model the server can answer with. Implementations are shared across the
/// inference threads.
pub trait ServedStudent: Send + Sync {
    fn card(&self) -> &ModelCard;
    /// `text`'s length in the model's tokens.
    fn token_len(&self, text: &str) -> usize;
    /// One prediction per input, in order; `label` in the card's notation.
    fn predict(&self, inputs: &[Input]) -> Result<Vec<Prediction>, String>;
}

/// A classification student (one label or a label set); it reads no context.
pub struct Classifier {
    student: Arc<dyn Student>,
    card: ModelCard,
}

impl Classifier {
    pub fn new(student: Arc<dyn Student>) -> Self {
        let meta = student.meta();
        let card = ModelCard {
            task: meta.task.clone(),
            kind: meta.kind.as_str().into(),
            shape: if meta.multilabel.is_some() {
                AnswerShape::LabelSet
            } else {
                AnswerShape::Label
            },
            notation: meta.label_set(),
            context_columns: Vec::new(),
            dev_quality: Some(("dev_accuracy", meta.dev_accuracy)),
            max_len: meta.max_len,
            created: meta.created.clone(),
            workers: crate::batcher::auto_workers(meta.kind),
        };
        Self { student, card }
    }
    pub fn student(&self) -> &Arc<dyn Student> {
        &self.student
    }
}

impl ServedStudent for Classifier {
    fn card(&self) -> &ModelCard {
        &self.card
    }
    fn token_len(&self, text: &str) -> usize {
        self.student.token_len(text)
    }
    fn predict(&self, inputs: &[Input]) -> Result<Vec<Prediction>, String> {
        let texts: Vec<&str> = inputs.iter().map(|i| i.text.as_str()).collect();
        self.student.predict(&texts, 5).map_err(|e| e.to_string())
    }
}

/// An extraction tagger (linear or fine-tuned encoder): spans of the exact text, with the
/// task's context. Its confidence is the least sure token's; `top` is empty.
pub struct Tagger {
    tagger: Box<dyn SpanTagger>,
    card: ModelCard,
}

impl Tagger {
    pub fn new(tagger: Box<dyn SpanTagger>, meta: &TaggerMeta) -> Self {
        let encoder = meta.student == distill_train::tagging::encoder::STUDENT;
        let card = ModelCard {
            task: meta.task.clone(),
            kind: meta.student.clone(),
            shape: AnswerShape::Spans,
            notation: LabelSet::new(meta.slots.clone()),
            context_columns: meta.context_columns.clone(),
            dev_quality: meta.dev_span_f1.map(|f| ("dev_span_f1", f)),
            // Any length: the linear tagger reads words, the encoder overlapping windows; the
            // server's --max-input-tokens bounds the work.
            max_len: None,
            created: meta.created.clone(),
            // A linear model computes an input on one thread; an encoder's forward pass
            // already uses every core.
            workers: crate::batcher::auto_workers(if encoder {
                StudentKind::EncoderFinetune
            } else {
                StudentKind::Linear
            }),
        };
        Self { tagger, card }
    }
    /// Loads a tagger model directory (`distill train` on an extract task).
    pub fn load(
        dir: &std::path::Path,
        device: &distill_train::Device,
    ) -> distill_train::Result<Self> {
        let (tagger, meta) = distill_train::tagging::model::load(dir, device)?;
        Ok(Self::new(tagger, &meta))
    }
}

impl ServedStudent for Tagger {
    fn card(&self) -> &ModelCard {
        &self.card
    }
    fn token_len(&self, text: &str) -> usize {
        self.tagger.token_len(text)
    }
    fn predict(&self, inputs: &[Input]) -> Result<Vec<Prediction>, String> {
        let asked: Vec<(&str, &Context)> = inputs
            .iter()
            .map(|i| (i.text.as_str(), &i.context))
            .collect();
        Ok(self
            .tagger
            .predict_batch(&asked)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(spans, confidence)| Prediction {
                label: format_spans(&spans),
                confidence,
                top: Vec::new(),
                labels: None,
            })
            .collect())
    }
}
