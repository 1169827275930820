//! Escalation through the teach crate's [`TeacherClient`]: the same prompts, response cache,
//! rate limits, retries and ledger rows as `distill teach`, so a served escalation costs and
//! records exactly what a teach call would.

use crate::escalate::{CallContext, EscalateError, Escalation, Escalator};
use distill_core::RecordStatus;
use distill_teach::TeacherClient;
use futures::future::BoxFuture;

pub struct TeachEscalator {
    client: TeacherClient,
}

impl TeachEscalator {
    pub fn new(client: TeacherClient) -> Self {
        Self { client }
    }
    pub fn client(&self) -> &TeacherClient {
        &self.client
    }
}

impl Escalator for TeachEscalator {
    fn label<'a>(
        &'a self,
        text: &'a str,
        ctx: &'a CallContext,
    ) -> BoxFuture<'a, Result<Escalation, EscalateError>> {
        Box::pin(async move {
            let teach_ctx = distill_teach::CallContext {
                source: ctx.source.clone(),
                tag: ctx.tag.clone(),
            };
            let out = self
                .client
                .label(text, &teach_ctx)
                .await
                .map_err(|e| EscalateError::Failed(e.to_string()))?;
            // The answer in the label set's notation: a label, or a joined label set.
            let answer = out
                .output
                .as_ref()
                .and_then(|o| o.answer(&self.client.spec().labels));
            match (out.status, answer) {
                (RecordStatus::Ok, Some(label)) => Ok(Escalation {
                    label,
                    usage: out.usage,
                    cost_usd: out.cost_usd,
                    cached: out.cached,
                }),
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
