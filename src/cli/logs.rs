//! `cr logs`: what a container's PID 1 wrote to its console.

use std::io::{ErrorKind, Write};

use clap::Args;

use crate::container::Container;
use crate::error::Error;
use crate::host::Host;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Container name.
    pub name: String,
}

pub fn logs(host: &Host, args: LogsArgs) -> anyhow::Result<i32> {
    let container = Container::open(host, &args.name)?;
    let path = container.console_log();
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io("reading console log", &path, e).into()),
    };
    std::io::stdout().write_all(&bytes)?;
    Ok(0)
}
