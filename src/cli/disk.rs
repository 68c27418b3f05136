//! `cr disk snapshot|list|merge|grow|check|export|mark|dirty`: a container's
//! ploop-like disk (see `docs/disks.md`), and `cr __disk-serve`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::container::Container;
use crate::error::Error;
use crate::host::Host;
use crate::size::{parse_size, HumanSize};
use crate::storage::control::{CheckView, Reply, Request};
use crate::storage::disk::{check_path, ContainerDisk};

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Take a snapshot: a new empty top delta, the container frozen for the
    /// moment of the switch (after syncing its filesystem).
    Snapshot(SnapshotArgs),
    /// List the deltas of a container's disk, bottom first.
    List(ListArgs),
    /// Fold every delta into the bottom one (online while the container runs).
    Merge(MergeArgs),
    /// Grow the disk (and its filesystem) to SIZE.
    Grow(GrowArgs),
    /// Verify a disk: a container's, a chain directory or one delta file.
    /// Reports every problem, never repairs; exit status 1 if any.
    Check(CheckArgs),
    /// Write the disk, or one snapshot of it, as a flat (sparse) image file.
    Export(ExportArgs),
    /// Close the current write generation; prints the mark for `cr disk dirty`.
    Mark(NameArg),
    /// List the clusters written since a mark.
    Dirty(DirtyArgs),
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// Container name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Container name.
    pub name: String,
    /// Fold only the deltas above this one (a delta id from `cr disk
    /// list`) into it: undoes the snapshots taken since it was the top.
    #[arg(long, value_name = "ID")]
    pub into: Option<String>,
}

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    pub name: String,
    /// A label stored with the new top delta.
    #[arg(long, default_value = "")]
    pub label: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GrowArgs {
    pub name: String,
    /// The new size, e.g. 16G (larger than now).
    #[arg(value_parser = parse_size)]
    pub size: u64,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A container name, a chain directory, or a delta file.
    pub target: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub name: String,
    /// The file to write (must not exist).
    pub output: PathBuf,
    /// The snapshot's id (the delta id `cr disk snapshot` printed); default:
    /// the disk as it is now.
    #[arg(long)]
    pub snapshot: Option<String>,
}

#[derive(Debug, Args)]
pub struct DirtyArgs {
    pub name: String,
    /// The mark `cr disk mark` printed (0: every allocated cluster).
    #[arg(long, default_value_t = 0)]
    pub since: u32,
}

pub fn run(host: &Host, cmd: DiskCommand) -> anyhow::Result<i32> {
    match cmd {
        DiskCommand::Snapshot(a) => {
            let taken = disk(host, &a.name)?.snapshot(&a.label)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&taken)?);
            } else {
                println!(
                    "snapshot {} (frozen {:.1} ms, switch {:.1} ms); new top {}",
                    taken.snapshot,
                    taken.frozen.as_secs_f64() * 1e3,
                    taken.switch.as_secs_f64() * 1e3,
                    taken.top
                );
            }
            Ok(0)
        }
        DiskCommand::List(a) => {
            let Reply::List { deltas } = request(host, &a.name, &Request::List)? else {
                return Err(Error::Invalid("the disk server sent no list".into()).into());
            };
            if a.json {
                println!("{}", serde_json::to_string_pretty(&deltas)?);
                return Ok(0);
            }
            println!(
                "{:<36} {:<9} {:>8} {:>10} LABEL",
                "DELTA", "KIND", "SIZE", "CLUSTERS"
            );
            for d in &deltas {
                println!(
                    "{:<36} {:<9} {:>8} {:>10} {}",
                    d.id,
                    if d.read_only { "snapshot" } else { "top" },
                    HumanSize(d.virtual_size).to_string(),
                    d.allocated_clusters,
                    d.label
                );
            }
            Ok(0)
        }
        DiskCommand::Merge(a) => {
            let req = match &a.into {
                Some(delta) => Request::MergeInto {
                    delta: delta.clone(),
                },
                None => Request::Merge,
            };
            let reply = request(host, &a.name, &req)?;
            if let Reply::Merged {
                removed,
                clusters_copied,
            } = reply
            {
                println!("merged {removed} deltas ({clusters_copied} clusters copied)");
            }
            Ok(0)
        }
        DiskCommand::Grow(a) => {
            let grown = disk(host, &a.name)?.grow(a.size)?;
            match (&grown.device, grown.filesystem_online) {
                (Some((dev, size)), true) => println!(
                    "{} grown to {} ({} is {}, filesystem grown online)",
                    a.name,
                    HumanSize(grown.size),
                    dev.display(),
                    HumanSize(*size)
                ),
                (Some((dev, _)), false) => println!(
                    "{} grown to {} ({} resized); the filesystem could not be grown online \
                     (resizing ext4 needs CAP_SYS_RESOURCE) and grows at the next start",
                    a.name,
                    HumanSize(grown.size),
                    dev.display()
                ),
                (None, _) => println!(
                    "{} grown to {}; the filesystem grows at the next start",
                    a.name,
                    HumanSize(grown.size)
                ),
            }
            Ok(0)
        }
        DiskCommand::Check(a) => {
            let view = check_target(host, &a.target)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                print_check(&a.target, &view);
            }
            Ok(if view.consistent { 0 } else { 1 })
        }
        DiskCommand::Export(a) => {
            let output = std::path::absolute(&a.output)?;
            let req = Request::Export {
                path: output.clone(),
                snapshot: a.snapshot.clone(),
            };
            if let Reply::Exported { bytes, clusters } = request(host, &a.name, &req)? {
                println!(
                    "{}: {} ({clusters} clusters with data)",
                    output.display(),
                    HumanSize(bytes)
                );
            }
            Ok(0)
        }
        DiskCommand::Mark(a) => {
            println!("{}", disk(host, &a.name)?.mark()?);
            Ok(0)
        }
        DiskCommand::Dirty(a) => {
            for v in disk(host, &a.name)?.dirty_since(a.since)? {
                println!("{v}");
            }
            Ok(0)
        }
    }
}

fn disk(host: &Host, name: &str) -> anyhow::Result<ContainerDisk> {
    Ok(ContainerDisk::open(&Container::open(host, name)?)?)
}

fn request(host: &Host, name: &str, req: &Request) -> anyhow::Result<Reply> {
    Ok(disk(host, name)?.request(req, &mut Vec::new())?)
}

/// A path (it contains a '/' or exists) or else a container name.
fn check_target(host: &Host, target: &str) -> anyhow::Result<CheckView> {
    let path = Path::new(target);
    if target.contains('/') || path.exists() {
        return Ok(check_path(path)?);
    }
    match request(host, target, &Request::Check)? {
        Reply::Check(view) => Ok(view),
        other => {
            Err(Error::Invalid(format!("the disk server answered a check with {other:?}")).into())
        }
    }
}

fn print_check(target: &str, view: &CheckView) {
    for d in &view.deltas {
        println!(
            "delta {} ({}): size {}, generation {}, {} clusters mapped, {} unreferenced, {} damaged BAT copies",
            d.id,
            d.file,
            HumanSize(d.virtual_size),
            d.generation,
            d.allocated_clusters,
            d.unreferenced_clusters,
            d.damaged_bat_copies
        );
    }
    for f in &view.findings {
        println!("PROBLEM: {f}");
    }
    if view.consistent {
        println!("{target}: consistent");
    } else {
        println!("{target}: {} problems found", view.findings.len());
    }
}
