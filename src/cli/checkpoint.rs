//! `cr checkpoint NAME`, `cr checkpoint list NAME`, `cr checkpoint rm NAME ID`.
//!
//! Images live under `ROOT/checkpoints/NAME/ID/` (ID is the UTC time of the
//! checkpoint); `cr destroy` keeps them.

use std::fs;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::container::Container;
use crate::dump::checkpoint::{checkpoint as run_checkpoint, dir_size, CheckpointOptions};
use crate::error::{Error, IoContext};
use crate::host::{validate_name, Host};
use crate::size::HumanSize;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    pub command: Option<CheckpointCommand>,
    /// Container to checkpoint.
    #[arg(required = true)]
    pub name: Option<String>,
    /// Image directory (default: ROOT/checkpoints/NAME/<time>).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Thaw the container afterwards instead of stopping it.
    #[arg(long)]
    pub leave_running: bool,
    /// Compression of the page store.
    #[arg(long, value_enum, default_value_t = Compress::None)]
    pub compress: Compress,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Copy all memory while frozen instead of pre-copying it while the
    /// container runs.
    #[arg(long)]
    pub no_pre_copy: bool,
    /// Pre-copy rounds at most before the freeze (the first copies all
    /// memory, the others what was written meanwhile, while that shrinks).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub pre_copy_rounds: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Compress {
    None,
    Zstd,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// List the checkpoints of a container, oldest first.
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove one checkpoint.
    Rm { name: String, id: String },
}

pub fn run(host: &Host, args: CheckpointArgs) -> anyhow::Result<i32> {
    match args.command {
        Some(CheckpointCommand::List { name, json }) => {
            validate_name("container", &name)?;
            let ids = host.checkpoint_ids(&name);
            if json {
                let list: Vec<_> = ids
                    .iter()
                    .map(|id| {
                        let path = host.checkpoints_dir(&name).join(id);
                        serde_json::json!({"id": id, "path": path, "bytes": dir_size(&path)})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for id in ids {
                    let path = host.checkpoints_dir(&name).join(&id);
                    println!(
                        "{id}  {:>8}  {}",
                        HumanSize(dir_size(&path)).to_string(),
                        path.display()
                    );
                }
            }
            Ok(0)
        }
        Some(CheckpointCommand::Rm { name, id }) => {
            validate_name("container", &name)?;
            if id.contains('/') || id.starts_with('.') {
                return Err(Error::Invalid(format!("invalid checkpoint id {id:?}")).into());
            }
            let path = host.checkpoints_dir(&name).join(&id);
            if !path.join(cr_formats::layout::RECORDS_FILE).is_file() {
                return Err(Error::Invalid(format!(
                    "container {name:?} has no checkpoint {id:?} (see `cr checkpoint list {name}`)"
                ))
                .into());
            }
            fs::remove_dir_all(&path).ctx("removing checkpoint", &path)?;
            Ok(0)
        }
        None => {
            let name = args.name.unwrap_or_default();
            let container = Container::open(host, &name)?;
            let image_dir = match args.image {
                Some(dir) => dir,
                None => host.checkpoints_dir(&name).join(timestamp_id()),
            };
            let opts = CheckpointOptions {
                image_dir,
                leave_running: args.leave_running,
                keep_frozen: false,
                compression: match args.compress {
                    Compress::None => cr_formats::Compression::None,
                    Compress::Zstd => cr_formats::Compression::Zstd { level: 1 },
                },
                pre_copy_rounds: if args.no_pre_copy {
                    0
                } else {
                    args.pre_copy_rounds
                },
                page_sink: None,
            };
            let summary = run_checkpoint(&container, &opts)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                let pre_copy = match &summary.pre_copy {
                    Some(p) => format!(
                        "pre-copy {:.1} ms in {} rounds, {} pages written ({} zero) while running{}; ",
                        p.ms,
                        p.rounds,
                        p.pages_written,
                        p.zero_pages,
                        if p.fallbacks.is_empty() {
                            String::new()
                        } else {
                            format!(" (copied frozen: {})", p.fallbacks.join("; "))
                        }
                    ),
                    None => String::new(),
                };
                println!(
                    "{} checkpointed to {}: {}frozen {:.1} ms, {} pages written ({} zero) while frozen, {} processes, {} threads, {}; container {}",
                    name,
                    summary.image.display(),
                    pre_copy,
                    summary.frozen_ms,
                    summary.frozen_pages_written,
                    summary.frozen_zero_pages,
                    summary.processes,
                    summary.threads,
                    HumanSize(summary.bytes),
                    if summary.left_running { "left running" } else { "stopped" }
                );
            }
            Ok(0)
        }
    }
}

pub fn timestamp_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let mut tm: libc::tm = zeroed_tm();
    // SAFETY: gmtime_r writes into the tm we own and reads the time_t we pass.
    unsafe { libc::gmtime_r(&secs, &mut tm) };
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        now.subsec_millis()
    )
}

fn zeroed_tm() -> libc::tm {
    // SAFETY: libc::tm is plain data for which all-zero bytes are valid.
    unsafe { std::mem::zeroed() }
}
