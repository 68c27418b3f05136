//! `cr image ...` (wired to the image store once it lands).

use clap::Subcommand;

use crate::host::Host;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// List images.
    List,
}

pub fn run(_host: &Host, _cmd: ImageCommand) -> anyhow::Result<i32> {
    Ok(0)
}
