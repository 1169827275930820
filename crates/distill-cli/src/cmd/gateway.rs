//! `distill gateway`: one OpenAI-compatible endpoint for all of an app's LLM traffic, routed,
//! cached, capped and metered by `gateway.toml`. It is `distill serve` with routes: the same
//! server, flags and mechanisms, and students (`--model`) can be served beside the routes.

use crate::cmd::serve;
use crate::Global;
use anyhow::Context;
use distill_serve::gateway::config::{starter_config, GatewayConfig};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
#[group(skip)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<Action>,
    /// The gateway's tiers and routes (`distill gateway init` prints a starter).
    #[arg(long, value_name = "gateway.toml", default_value = "gateway.toml")]
    pub config: PathBuf,
    #[command(flatten)]
    pub server: serve::Args,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Print a commented starter gateway.toml whose tiers point at a local sim-teacher.
    Init {
        /// The sim-teacher (or any OpenAI-compatible upstream) the starter's tiers use.
        #[arg(long, default_value = "http://127.0.0.1:8089/v1")]
        upstream: String,
    },
}

pub fn run(args: Args, g: &Global) -> anyhow::Result<()> {
    if let Some(Action::Init { upstream }) = args.action {
        print!("{}", starter_config(&upstream));
        return Ok(());
    }
    let config = GatewayConfig::load(&args.config).with_context(|| {
        format!(
            "--config {} (distill gateway init > gateway.toml writes a starter)",
            args.config.display()
        )
    })?;
    serve::run_server(
        args.server,
        Some(serve::GatewaySetup {
            config_path: args.config,
            config,
        }),
        g,
    )
}
