//! One module per subcommand; each exposes `Args` (clap) and `run(args, &Global)`.

pub mod drift;
pub mod ensemble;
pub mod eval;
pub mod export;
pub mod gateway;
pub mod predict;
pub mod quantize;
pub mod quickstart;
pub mod serve;
pub mod sim_teacher;
pub mod spend;
pub mod teach;
pub mod train;

/// Extraction tasks go through teach, train, predict, eval and serve; the stages that do not
/// handle them yet say so plainly instead of failing on records they cannot read.
pub fn refuse_extract(spec: &distill_core::TaskSpec, what: &str) -> anyhow::Result<()> {
    if spec.is_extract() {
        anyhow::bail!(
            "{}: {what} does not handle extract tasks yet. Today an extract task is \
             labelled (distill teach, with distill sim-teacher offline: records keep \
             `output.spans` with character offsets), trained (distill train --student linear: \
             the linear tagger), run (distill predict), evaluated (distill eval) and served \
             (distill serve)",
            spec.path.display()
        );
    }
    Ok(())
}
