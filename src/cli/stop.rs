//! `cr stop` and `cr destroy`.

use std::time::Duration;

use clap::Args;

use crate::container::destroy::destroy as destroy_container;
use crate::container::stop::stop as stop_container;
use crate::container::Container;
use crate::host::Host;

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Container name.
    pub name: String,
    /// Seconds PID 1 has to exit after SIGTERM before everything is killed.
    #[arg(long, short, default_value_t = 10)]
    pub time: u64,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Container name.
    pub name: String,
    /// Seconds a running PID 1 has to exit after SIGTERM (default: kill at once).
    #[arg(long, short, default_value_t = 0)]
    pub time: u64,
}

pub fn stop(host: &Host, args: StopArgs) -> anyhow::Result<i32> {
    stop_container(
        &Container::open(host, &args.name)?,
        Duration::from_secs(args.time),
    )?;
    Ok(0)
}

pub fn destroy(host: &Host, args: DestroyArgs) -> anyhow::Result<i32> {
    destroy_container(
        &Container::open(host, &args.name)?,
        Duration::from_secs(args.time),
    )?;
    Ok(0)
}
