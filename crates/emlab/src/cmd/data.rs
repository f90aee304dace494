//! `emlab data ...` (wired to emlab-data when it lands).

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    cmd: DataCmd,
}

#[derive(clap::Subcommand, Debug)]
enum DataCmd {}

pub fn run(a: DataArgs) -> Result<()> {
    match a.cmd {}
}
