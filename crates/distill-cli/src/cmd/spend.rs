use crate::Global;

#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args, _g: &Global) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
