//! `--batch`: the providers' Batch APIs (placeholder until implemented).

use crate::client::TeacherClient;
use crate::error::{Result, TeachError};
use crate::journal::JournalHeader;
use crate::runner::{TeachOptions, TeachSummary};
use distill_core::TaskSpec;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_batch(
    _spec: &TaskSpec,
    _opts: &TeachOptions,
    _client: Arc<TeacherClient>,
    _input: &Path,
    _out: &Path,
    _jpath: &Path,
    _header: JournalHeader,
    _total: u64,
    _started: Instant,
) -> Result<TeachSummary> {
    Err(TeachError::Invalid("--batch is not implemented yet".into()))
}
