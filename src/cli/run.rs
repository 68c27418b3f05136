//! `cr run`, `cr create`, `cr start`.

use clap::Args;

use crate::container::config::{Ipv4Cidr, Limits, MacAddr};
use crate::container::create::{create as create_container, CreateOptions};
use crate::container::destroy::destroy;
use crate::container::start::start as start_container;
use crate::container::Container;
use crate::host::Host;
use crate::size::parse_size;

#[derive(Debug, Args)]
pub struct NameArg {
    /// Container name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Container name (letters, digits, '-', '_', '.').
    pub name: String,
    /// Image to start from (see `cr image list`).
    #[arg(long)]
    pub image: String,
    /// Hostname inside the container (default: its name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// IPv4 address with prefix, e.g. 10.88.0.10/24.
    #[arg(long)]
    pub ip: Option<Ipv4Cidr>,
    /// MAC address of eth0 (default: random, kept for the container's life).
    #[arg(long)]
    pub mac: Option<MacAddr>,
    /// Host bridge the container's veth joins (created on demand).
    #[arg(long)]
    pub bridge: Option<String>,
    /// Memory limit, e.g. 512M or 1G.
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// CPU limit in CPUs, e.g. 1.5.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes and threads.
    #[arg(long)]
    pub pids: Option<u64>,
    /// Run in a user namespace: root inside is an unprivileged uid range
    /// (65536 ids) on the host.
    #[arg(long)]
    pub userns: bool,
    /// Root filesystem on a ploop-like disk of this size (e.g. 8G): ext4,
    /// initialised from the image, snapshots with `cr disk`. Default: an
    /// overlay on the image.
    #[arg(long, value_parser = parse_size)]
    pub disk: Option<u64>,
    /// Command to run as PID 1 (default: the image's /sbin/init, else /bin/sh).
    #[arg(last = true)]
    pub command: Vec<String>,
}

impl RunArgs {
    fn options(&self) -> CreateOptions {
        CreateOptions {
            name: self.name.clone(),
            image: self.image.clone(),
            hostname: self.hostname.clone(),
            command: self.command.clone(),
            address: self.ip,
            mac: self.mac,
            bridge: self.bridge.clone(),
            limits: Limits {
                memory: self.memory,
                cpus: self.cpus,
                pids: self.pids,
            },
            userns: self.userns,
            disk: self.disk,
        }
    }
}

pub fn create(host: &Host, args: RunArgs) -> anyhow::Result<i32> {
    let container = create_container(host, &args.options())?;
    println!("{}", container.name);
    Ok(0)
}

pub fn run(host: &Host, args: RunArgs) -> anyhow::Result<i32> {
    let container = create_container(host, &args.options())?;
    match start_container(&container) {
        Ok(pid) => {
            println!("{} started (PID 1 is host PID {pid})", container.name);
            Ok(0)
        }
        Err(err) => {
            // Nothing half-created is left behind.
            let _ = destroy(&container, std::time::Duration::ZERO);
            Err(err.into())
        }
    }
}

pub fn start(host: &Host, args: NameArg) -> anyhow::Result<i32> {
    let container = Container::open(host, &args.name)?;
    let pid = start_container(&container)?;
    println!("{} started (PID 1 is host PID {pid})", container.name);
    Ok(0)
}
