//! Replay mode for route tasks: the sim answers as each tier's model with the outcome a
//! route dataset recorded (the recorded answer, or where only correctness was recorded a
//! stand-in saying so), and as the judge with the recorded verdict. A whole route loop —
//! `teach` asking every tier and the judge, `train`, `eval` — rehearses offline on real
//! models' behaviour (RouteLLM's MMLU, GSM8K and MT-Bench outcomes).

use crate::error::{Result, SimError};
use distill_core::conversation::dialogue_transcript;
use distill_core::route::{parse_judge_prompt, read_route_records, Rubric};
use distill_core::TaskSpec;
use std::collections::HashMap;
use std::path::Path;

/// One tier's recorded outcome on one prompt.
#[derive(Debug, Clone)]
struct Recorded {
    model: String,
    passed: bool,
    answer: Option<String>,
}

pub struct Replay {
    /// By the prompt's text (a conversation's transcript): what the judge is shown.
    by_prompt: HashMap<String, Vec<Recorded>>,
    /// By what a tier is asked: the text, or a conversation's user and assistant turns.
    by_request: HashMap<String, Vec<Recorded>>,
    judge_model: Option<String>,
    rubric: Rubric,
    pass_mark: f64,
}

/// What a tier "answers" when only its correctness was recorded.
pub fn stand_in(passed: bool) -> String {
    format!(
        "(replayed answer, recorded as {})",
        if passed { "correct" } else { "incorrect" }
    )
}

impl Replay {
    /// Loads a route dataset (from `distill teach --import-outcomes`) for `task`.
    pub fn load(path: &Path, task: &TaskSpec) -> Result<Self> {
        let route = task.route.as_ref().ok_or_else(|| SimError::Config {
            setting: "replay",
            message: format!("{} is not a route task", task.path.display()),
        })?;
        let records = read_route_records(path).map_err(|e| SimError::Config {
            setting: "replay",
            message: e.to_string(),
        })?;
        let (mut by_prompt, mut by_request) = (HashMap::new(), HashMap::new());
        for r in records {
            let tiers: Vec<Recorded> = r
                .tiers
                .into_iter()
                .filter_map(|t| {
                    Some(Recorded {
                        model: t.model,
                        passed: t.passed?,
                        answer: t.answer,
                    })
                })
                .collect();
            // A conversation is asked as turns (the sim sees its user and assistant turns)
            // and judged by its transcript.
            let asked = match &r.turns {
                Some(turns) => dialogue_transcript(turns),
                None => r.text.clone(),
            };
            by_request.insert(asked, tiers.clone());
            by_prompt.insert(r.text, tiers);
        }
        Ok(Replay {
            by_prompt,
            by_request,
            judge_model: route.judge.as_ref().map(|j| j.model.clone()),
            rubric: route.judge.as_ref().map(|j| j.rubric).unwrap_or_default(),
            pass_mark: route.judge.as_ref().map_or(7.0, |j| j.pass_mark),
        })
    }

    pub fn len(&self) -> usize {
        self.by_prompt.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prompt.is_empty()
    }

    /// The reply of `model` to a request for `text` (a conversation's dialogue transcript).
    pub fn answer(&self, model: &str, text: &str) -> String {
        if self.judge_model.as_deref() == Some(model) {
            let passed = parse_judge_prompt(text).and_then(|(request, answer)| {
                let tiers = self.by_prompt.get(request)?;
                tiers
                    .iter()
                    .find(|t| t.answer.as_deref() == Some(answer) || stand_in(t.passed) == answer)
                    .map(|t| t.passed)
            });
            let passed = passed.unwrap_or(false);
            return match self.rubric {
                Rubric::PassFail => if passed { "PASS" } else { "FAIL" }.into(),
                Rubric::Score => {
                    let s = if passed {
                        self.pass_mark.max(9.0)
                    } else {
                        (self.pass_mark - 4.0).max(1.0)
                    };
                    format!("{s}")
                }
            };
        }
        match self
            .by_request
            .get(text)
            .and_then(|tiers| tiers.iter().find(|t| t.model == model))
        {
            Some(t) => t.answer.clone().unwrap_or_else(|| stand_in(t.passed)),
            None => "(no recorded answer for this prompt and model)".into(),
        }
    }
}
