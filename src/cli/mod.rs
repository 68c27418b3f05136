//! The command line: one file per verb (or family of verbs). `main.rs` only
//! parses and calls [`dispatch`].

mod checkpoint;
mod disk;
mod exec;
mod freeze;
mod image;
mod inspect;
mod list;
mod logs;
mod migrate;
mod run;
mod stop;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::error::Error;
use crate::host::{Host, DEFAULT_ROOT};

#[derive(Debug, Parser)]
#[command(
    name = "cr",
    version,
    about = "Run OpenVZ-style system containers, checkpoint them and move them between hosts"
)]
pub struct Cli {
    /// State root of this host: images, containers, checkpoints.
    #[arg(long, global = true, env = "CR_ROOT", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage images (root filesystems containers start from).
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Create and start a container in the background.
    Run(run::RunArgs),
    /// Create a container without starting it.
    Create(run::RunArgs),
    /// Start a created or stopped container.
    Start(run::NameArg),
    /// Run a command inside a running container.
    Exec(exec::ExecArgs),
    /// Open an interactive shell inside a running container.
    Enter(run::NameArg),
    /// List containers.
    List(list::ListArgs),
    /// Show one container.
    Status(list::StatusArgs),
    /// Stop every task of a container at once (cgroup freezer).
    Freeze(run::NameArg),
    /// Resume a frozen container.
    Thaw(run::NameArg),
    /// Stop a container: SIGTERM to its PID 1, SIGKILL after the grace time.
    Stop(stop::StopArgs),
    /// Stop a container if needed and remove it with everything cr created for it.
    Destroy(stop::DestroyArgs),
    /// Show what a container's PID 1 wrote to its console.
    Logs(logs::LogsArgs),
    /// Checkpoint a running container to an image (or list/remove its images).
    Checkpoint(checkpoint::CheckpointArgs),
    /// Show every record of a checkpoint image.
    Inspect(inspect::InspectArgs),
    /// A container's ploop-like disk: snapshots, merge, grow, check, export.
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Internal: the server of a container's disk, started by `cr start`.
    #[command(name = "__disk-serve", hide = true)]
    DiskServe(run::NameArg),
    /// Internal: the per-container supervisor started by `cr start`.
    #[command(name = "__supervise", hide = true)]
    Supervise(SuperviseArgs),
    /// Rebuild a container from a checkpoint image and resume it.
    Restore(RestoreArgs),
    /// Print this host's identity (the fingerprint peers pin).
    Identity(migrate::IdentityArgs),
    /// Manage the hosts this one trusts for migrations.
    #[command(subcommand)]
    Peer(migrate::PeerCommand),
    /// Accept migrations from trusted peers (the agent; runs in the foreground).
    Serve(migrate::ServeArgs),
    /// Move a running container to a trusted peer.
    Migrate(migrate::MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    pub name: String,
    /// Rebuild the process tree of this checkpoint image.
    #[arg(long)]
    pub restore: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = PagesArg::Lazy)]
    pub pages: PagesArg,
    #[arg(long)]
    pub frozen: bool,
    /// The image is a migration's staging (RestoreOptions::staged).
    #[arg(long)]
    pub staged: bool,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Container to restore (it may have been destroyed since).
    pub name: String,
    /// Image directory (default: the container's newest checkpoint).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// When private memory is filled: `lazy` resumes the container first
    /// and fills it right after through userfaultfd (uncompressed images;
    /// others are always eager), `eager` fills every page before the resume.
    #[arg(long, value_enum, default_value_t = PagesArg::Lazy)]
    pub pages: PagesArg,
    /// Leave every process frozen once rebuilt (`cr thaw NAME` resumes it).
    #[arg(long)]
    pub frozen: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PagesArg {
    Lazy,
    Eager,
}

impl From<PagesArg> for crate::restore::PagesMode {
    fn from(p: PagesArg) -> Self {
        match p {
            PagesArg::Lazy => crate::restore::PagesMode::Lazy,
            PagesArg::Eager => crate::restore::PagesMode::Eager,
        }
    }
}

/// Runs one command; returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot.into());
    }
    let host = Host::open(&cli.root)?;
    match cli.command {
        Command::Image(cmd) => image::run(&host, cmd),
        Command::Run(args) => run::run(&host, args),
        Command::Create(args) => run::create(&host, args),
        Command::Start(args) => run::start(&host, args),
        Command::Exec(args) => exec::exec(&host, args),
        Command::Enter(args) => exec::enter(&host, args),
        Command::List(args) => list::list(&host, args),
        Command::Status(args) => list::status(&host, args),
        Command::Freeze(args) => freeze::freeze(&host, args),
        Command::Thaw(args) => freeze::thaw(&host, args),
        Command::Stop(args) => stop::stop(&host, args),
        Command::Destroy(args) => stop::destroy(&host, args),
        Command::Logs(args) => logs::logs(&host, args),
        Command::Checkpoint(args) => checkpoint::run(&host, args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::Supervise(args) => {
            let how = crate::restore::RestoreOptions {
                pages: args.pages.into(),
                frozen: args.frozen,
                staged: args.staged,
            };
            let restore = args.restore.as_deref().map(|dir| (dir, how));
            Ok(crate::container::supervisor::run(
                &host, &args.name, restore,
            )?)
        }
        Command::Identity(args) => migrate::identity(&host, args),
        Command::Peer(cmd) => migrate::peer(&host, cmd),
        Command::Serve(args) => migrate::serve(&host, args),
        Command::Migrate(args) => migrate::run(&host, args),
        Command::Disk(cmd) => disk::run(&host, cmd),
        Command::DiskServe(args) => Ok(crate::storage::serve::run(&host, &args.name)?),
        Command::Restore(args) => {
            let how = crate::restore::RestoreOptions {
                pages: args.pages.into(),
                frozen: args.frozen,
                staged: false,
            };
            let (pid, image) =
                crate::restore::container::restore(&host, &args.name, args.image.as_deref(), how)?;
            println!(
                "{} restored from {} (PID 1 is host PID {pid}){}",
                args.name,
                image.display(),
                if how.frozen {
                    "; frozen: `cr thaw` lets it run"
                } else {
                    ""
                }
            );
            Ok(0)
        }
    }
}

/// One sentence for the user: the error and its causes.
pub fn describe(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
