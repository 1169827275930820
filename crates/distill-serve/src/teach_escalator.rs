//! Escalation through the teach crate's [`TeacherClient`]: the same prompts, response cache,
//! rate limits, retries and ledger rows as `distill teach`, so a served escalation costs and
//! records exactly what a teach call would.

use crate::escalate::{CallContext, EscalateError, Escalation, Escalator};
use distill_core::{LabelSet, RecordStatus};
use distill_teach::TeacherClient;
use futures::future::BoxFuture;

pub struct TeachEscalator {
    client: TeacherClient,
    /// The notation answers are returned in: the served model's labels (or slots), so a
    /// teacher's answer and the student's are the same string for the same answer (cache,
    /// shadow).
    notation: LabelSet,
}

impl TeachEscalator {
    /// Answers in the task's own notation.
    pub fn new(client: TeacherClient) -> Self {
        let notation = client.spec().labels.clone();
        Self { client, notation }
    }
    /// Answers in `notation` (the served model's label set); an answer outside it is
    /// refused as an invalid label, as one outside the task's labels is.
    pub fn answering_in(mut self, notation: LabelSet) -> Self {
        self.notation = notation;
        self
    }
    pub fn client(&self) -> &TeacherClient {
        &self.client
    }
}

impl Escalator for TeachEscalator {
    fn label<'a>(
        &'a self,
        input: distill_core::spec::PromptInput<'a>,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Escalation, EscalateError>> {
        Box::pin(async move {
            let teach_ctx = distill_teach::CallContext {
                source: ctx.source.clone(),
                tag: ctx.tag.clone(),
                guard: None,
            };
            let out = self
                .client
                .label(input, &teach_ctx)
                .await
                .map_err(|e| EscalateError::Failed(e.to_string()))?;
            let answer = out.output.as_ref().and_then(|o| o.answer(&self.notation));
            match (out.status, answer) {
                (RecordStatus::Ok, Some(label)) => Ok(Escalation {
                    label,
                    usage: out.usage,
                    cost_usd: out.cost_usd,
                    cached: out.cached,
                }),
                // Valid for the task but outside the served model's labels.
                (RecordStatus::Ok, None) => Err(EscalateError::InvalidLabel(
                    out.output
                        .as_ref()
                        .and_then(|o| o.answer_text())
                        .unwrap_or_default()
                        .chars()
                        .take(80)
                        .collect(),
                )),
                (RecordStatus::Invalid, _) => Err(EscalateError::InvalidLabel(
                    out.raw.unwrap_or_default().chars().take(80).collect(),
                )),
                (_, _) => Err(EscalateError::Failed(
                    out.error.unwrap_or_else(|| "no label".into()),
                )),
            }
        })
    }

    fn teacher_model(&self) -> String {
        self.client.model().to_string()
    }

    fn input_tokens(&self, text: &str) -> Option<usize> {
        Some(self.client.text_tokens(text) as usize)
    }

    fn truncate_input(&self, text: &str, max_tokens: usize) -> String {
        self.client.truncate_text(text, max_tokens)
    }
}
