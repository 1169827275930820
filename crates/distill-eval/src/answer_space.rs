//! What an answer is, for every task kind eval scores: an index into the answers seen.
//!
//! A classification answer is one label, so its index is the label's. A multilabel answer is
//! a set of labels; eval interns each distinct set (in the task's canonical notation) the
//! first time it is seen, so exact-set agreement, the cascade and every table keyed by an
//! answer work on indices exactly as they do for one label. Only scoring needs to know that
//! an index stands for a set ([`AnswerSpace::quality`]).

use crate::metrics::{self, Quality};
use distill_core::LabelSet;
use std::collections::HashMap;
use std::sync::Mutex;

pub struct AnswerSpace {
    labels: LabelSet,
    interned: Mutex<Interned>,
}

#[derive(Default)]
struct Interned {
    names: Vec<String>,
    sets: Vec<Vec<usize>>,
    by_name: HashMap<String, usize>,
}

impl AnswerSpace {
    pub fn new(labels: &LabelSet) -> Self {
        AnswerSpace {
            labels: labels.clone(),
            interned: Mutex::new(Interned::default()),
        }
    }

    pub fn labels(&self) -> &LabelSet {
        &self.labels
    }

    pub fn is_sets(&self) -> bool {
        self.labels.is_multilabel()
    }

    /// The index of an answer string (a label, or a label set in any notation
    /// [`LabelSet::parse_set`] reads); `None` when it is not a valid answer of the task.
    pub fn index_of(&self, answer: &str) -> Option<usize> {
        if !self.is_sets() {
            return self.labels.index_of(answer.trim());
        }
        let set = self.labels.parse_set(answer).ok()?;
        Some(self.index_of_set(&set))
    }

    /// Like [`Self::index_of`], with the reason an answer is not valid.
    pub fn parse(&self, answer: &str) -> Result<usize, String> {
        if !self.is_sets() {
            return self
                .labels
                .index_of(answer.trim())
                .ok_or_else(|| format!("label `{answer}` is not in the task's label set"));
        }
        let set = self.labels.parse_set(answer)?;
        Ok(self.index_of_set(&set))
    }

    /// The index of a set of label indices (a multilabel student's decision).
    pub fn index_of_set(&self, set: &[usize]) -> usize {
        let name = self.labels.format_set(set);
        let mut book = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = book.by_name.get(&name) {
            return i;
        }
        let i = book.names.len();
        let mut set = set.to_vec();
        set.sort_unstable();
        set.dedup();
        book.sets.push(set);
        book.names.push(name.clone());
        book.by_name.insert(name, i);
        i
    }

    /// The answer string of an index.
    pub fn name(&self, i: usize) -> String {
        if !self.is_sets() {
            return self.labels.names[i].clone();
        }
        let book = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        book.names[i].clone()
    }

    /// Every answer's string, by index.
    pub fn names(&self) -> Vec<String> {
        if !self.is_sets() {
            return self.labels.names.clone();
        }
        let book = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        book.names.clone()
    }

    /// The teacher's reply that gives this answer, as the task's output schema has it
    /// (`{"label": ...}` or `{"labels": [...]}`): what its tokens are counted on.
    pub fn reply_json(&self, i: usize) -> String {
        if !self.is_sets() {
            return format!("{{\"label\": \"{}\"}}", self.labels.names[i]);
        }
        let names: Vec<&str> = self
            .set(i)
            .iter()
            .map(|&j| self.labels.names[j].as_str())
            .collect();
        serde_json::json!({ "labels": names }).to_string()
    }

    /// The label set an index stands for (one label for classification).
    pub fn set(&self, i: usize) -> Vec<usize> {
        if !self.is_sets() {
            return vec![i];
        }
        let book = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        book.sets[i].clone()
    }

    /// Every quality figure of `predicted` against `reference` (answer indices): per label
    /// for classification; for label sets, exact-set accuracy with per-label and
    /// micro/macro F1 and the Hamming loss (see [`crate::set_metrics`]).
    pub fn quality(
        &self,
        reference_name: &str,
        reference: &[usize],
        predicted: &[usize],
        confidence: Option<&[f64]>,
        seed: u64,
    ) -> Quality {
        if !self.is_sets() {
            return metrics::quality(
                reference_name,
                &self.labels.names,
                reference,
                predicted,
                confidence,
                seed,
            );
        }
        let book = self.interned.lock().unwrap_or_else(|e| e.into_inner());
        let r: Vec<&[usize]> = reference.iter().map(|&i| book.sets[i].as_slice()).collect();
        let p: Vec<&[usize]> = predicted.iter().map(|&i| book.sets[i].as_slice()).collect();
        crate::set_metrics::quality(reference_name, &self.labels, &r, &p, confidence, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn multilabel() -> LabelSet {
        let mut l = LabelSet::new(vec!["a".into(), "b".into(), "c".into()]);
        l.set_separator = Some("|".into());
        l
    }

    #[test]
    fn every_notation_of_one_set_is_one_answer() {
        let space = AnswerSpace::new(&multilabel());
        let i = space.index_of("b|a").unwrap();
        assert_eq!(space.index_of("a|b"), Some(i));
        assert_eq!(space.index_of(r#"["b","a","a"]"#), Some(i));
        assert_eq!(space.index_of_set(&[1, 0]), i);
        assert_eq!(space.name(i), "a|b");
        let empty = space.index_of("[]").unwrap();
        assert_ne!(empty, i);
        assert_eq!(space.set(empty), Vec::<usize>::new());
        assert_eq!(space.index_of("a|z"), None);
        assert!(space.parse("a|z").unwrap_err().contains("`z`"));
    }

    #[test]
    fn one_label_answers_keep_the_label_index() {
        let space = AnswerSpace::new(&LabelSet::new(vec!["x".into(), "y".into()]));
        assert_eq!(space.index_of("y"), Some(1));
        // Read as train reads a gold cell: surrounding blanks are not part of the label.
        assert_eq!(space.index_of(" y "), Some(1));
        assert_eq!(space.index_of("x|y"), None);
        assert_eq!(space.names(), vec!["x", "y"]);
    }
}
