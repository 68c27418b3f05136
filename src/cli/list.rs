//! `cr list` and `cr status`.

use clap::Args;
use serde::Serialize;

use crate::container::config::{Limits, UsernsConfig};
use crate::container::state::Status;
use crate::container::Container;
use crate::host::Host;
use crate::size::HumanSize;
use crate::storage::serve::{health, ServerHealth};
use crate::storage::DiskPaths;

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Container name.
    pub name: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `cr list --json` and `cr status --json` print for one container.
#[derive(Debug, Serialize)]
pub struct ContainerView {
    pub name: String,
    pub state: Status,
    /// Host PID of the container's PID 1 while it runs.
    pub pid: Option<i32>,
    pub image: String,
    pub hostname: String,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub bridge: Option<String>,
    pub limits: Limits,
    /// The user namespace's id mapping, when the container has one.
    pub userns: Option<UsernsConfig>,
    pub command: Vec<String>,
    /// Exit status of PID 1 after it exited by itself.
    pub exit_code: Option<i32>,
    /// Signal that ended PID 1.
    pub exit_signal: Option<i32>,
    /// With `--disk`: the disk and whether its server runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskView>,
}

#[derive(Debug, Serialize)]
pub struct DiskView {
    /// The size the disk was created with, in bytes.
    pub size: u64,
    pub server: ServerHealth,
}

pub fn view(container: &Container) -> anyhow::Result<ContainerView> {
    let (state, pid) = container.status()?;
    let exit = if state == Status::Stopped {
        container.runtime_state()?.and_then(|s| s.exit)
    } else {
        None
    };
    let net = container.config.network.as_ref();
    Ok(ContainerView {
        name: container.name.clone(),
        state,
        pid: pid.map(|p| p.as_raw()),
        image: container.config.image.clone(),
        hostname: container.config.hostname.clone(),
        ip: net.map(|n| n.address.to_string()),
        mac: net.map(|n| n.mac.to_string()),
        bridge: net.map(|n| n.bridge.clone()),
        limits: container.config.limits.clone(),
        userns: container.config.userns,
        command: container.config.command.clone(),
        exit_code: exit.as_ref().and_then(|e| e.code),
        exit_signal: exit.as_ref().and_then(|e| e.signal),
        disk: container.config.disk.map(|d| DiskView {
            size: d.size,
            server: health(&DiskPaths::new(&container.dir)),
        }),
    })
}

pub fn list(host: &Host, args: ListArgs) -> anyhow::Result<i32> {
    let mut views = Vec::new();
    for name in host.container_names()? {
        views.push(view(&Container::open(host, &name)?)?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(0);
    }
    println!(
        "{:<20} {:<8} {:>8} {:<18} {:<12} LIMITS",
        "NAME", "STATE", "PID", "IP", "IMAGE"
    );
    for v in &views {
        println!(
            "{:<20} {:<8} {:>8} {:<18} {:<12} {}",
            v.name,
            v.state.to_string(),
            v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            v.ip.as_deref().unwrap_or("-"),
            v.image,
            limits_text(&v.limits)
        );
    }
    Ok(0)
}

pub fn status(host: &Host, args: StatusArgs) -> anyhow::Result<i32> {
    let v = view(&Container::open(host, &args.name)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("name:     {}", v.name);
    println!("state:    {}", v.state);
    if let Some(pid) = v.pid {
        println!("pid:      {pid}");
    }
    if let (Some(code), Status::Stopped) = (v.exit_code, v.state) {
        println!("exit:     {code}");
    }
    if let (Some(sig), Status::Stopped) = (v.exit_signal, v.state) {
        println!("exit:     killed by signal {sig}");
    }
    println!("image:    {}", v.image);
    println!("hostname: {}", v.hostname);
    if let Some(ip) = &v.ip {
        println!(
            "ip:       {ip} (mac {}, bridge {})",
            v.mac.as_deref().unwrap_or("-"),
            v.bridge.as_deref().unwrap_or("-")
        );
    }
    println!("limits:   {}", limits_text(&v.limits));
    if let Some(u) = &v.userns {
        let last = u.size.saturating_sub(1);
        println!(
            "userns:   uid/gid 0-{last} inside are uid {}-{}, gid {}-{} on the host",
            u.uid_base,
            u64::from(u.uid_base) + u64::from(last),
            u.gid_base,
            u64::from(u.gid_base) + u64::from(last)
        );
    }
    if !v.command.is_empty() {
        println!("command:  {}", v.command.join(" "));
    }
    if let Some(d) = &v.disk {
        println!(
            "disk:     {} (created size), server {}",
            HumanSize(d.size),
            d.server
        );
    }
    Ok(0)
}

fn limits_text(limits: &Limits) -> String {
    let mut parts = Vec::new();
    if let Some(m) = limits.memory {
        parts.push(format!("memory={}", HumanSize(m)));
    }
    if let Some(c) = limits.cpus {
        parts.push(format!("cpus={c}"));
    }
    if let Some(p) = limits.pids {
        parts.push(format!("pids={p}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}
