//! The command line: one file per verb.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "cr", version, about = "Checkpoint/restore and live migration of system containers")]
pub struct Cli {
    /// State root of this host.
    #[arg(long, global = true, env = "CR_ROOT", default_value = crate::host::DEFAULT_ROOT)]
    pub root: std::path::PathBuf,
}

pub fn dispatch(_cli: Cli) -> anyhow::Result<i32> {
    Ok(0)
}

pub fn describe(err: &anyhow::Error) -> String {
    format!("{err:#}")
}
