//! `cr exec` and `cr enter`.

use clap::Args;

use crate::cli::run::NameArg;
use crate::container::exec;
use crate::container::Container;
use crate::host::Host;

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Container name.
    pub name: String,
    /// Command and arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn exec(host: &Host, args: ExecArgs) -> anyhow::Result<i32> {
    let container = Container::open(host, &args.name)?;
    Ok(exec::exec(&container, &args.command)?)
}

pub fn enter(host: &Host, args: NameArg) -> anyhow::Result<i32> {
    let container = Container::open(host, &args.name)?;
    Ok(exec::enter(&container)?)
}
