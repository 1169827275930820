//! One module per subcommand; each exposes `Args` (clap) and `run(args, &Global)`.

pub mod drift;
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
