//! `cr identity`, `cr peer add|list|rm`, `cr serve` and `cr migrate`.

use std::net::SocketAddr;
use std::str::FromStr;

use clap::Subcommand;
use cr_transport::{Fingerprint, Identity, Peer, TrustStore};

use crate::host::Host;
use crate::migrate::source::{migrate, MigrateOptions};

#[derive(Debug, clap::Args)]
pub struct IdentityArgs {
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Trust a host: migrations to and from it are accepted.
    Add {
        /// The name to call it by (`cr migrate NAME PEER`).
        name: String,
        /// Where its `cr serve` listens, HOST:PORT.
        address: String,
        /// The fingerprint its `cr identity` prints (sha256:...).
        #[arg(long)]
        fingerprint: String,
    },
    /// List the trusted hosts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting a host.
    Rm { name: String },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address and UDP port to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], crate::agent::DEFAULT_PORT)))]
    pub listen: SocketAddr,
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Container to move (it must be running).
    pub name: String,
    /// Trusted peer to move it to (see `cr peer list`).
    pub peer: String,
    /// Stop-and-copy without pre-copying memory first (all of it moves
    /// while the container is frozen).
    #[arg(long)]
    pub cold: bool,
    /// zstd on the data streams: `auto` compresses frame by frame while
    /// zstd outruns the link and the data shrinks, `always` on every
    /// frame, `never` not at all.
    #[arg(long, value_enum, default_value_t = CompressArg::Auto)]
    pub compress: CompressArg,
    /// Also keep the image sent as a checkpoint of the container on this
    /// host (`cr checkpoint list NAME`); it is written to disk beside the
    /// stream.
    #[arg(long)]
    pub keep_image: bool,
    /// Print the phases and figures as JSON at the end.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressArg {
    Auto,
    Always,
    Never,
}

pub fn identity(host: &Host, args: IdentityArgs) -> anyhow::Result<i32> {
    let id = Identity::load_or_create(host.root())?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "fingerprint": id.fingerprint().to_string() })
        );
    } else {
        println!("{}", id.fingerprint());
    }
    Ok(0)
}

pub fn peer(host: &Host, cmd: PeerCommand) -> anyhow::Result<i32> {
    match cmd {
        PeerCommand::Add {
            name,
            address,
            fingerprint,
        } => {
            let fingerprint = Fingerprint::from_str(&fingerprint)?;
            let peer = Peer::new(&name, &address, fingerprint)?;
            TrustStore::add_peer(host.root(), peer)?;
            println!("{name} ({address}) trusted as {fingerprint}");
        }
        PeerCommand::List { json } => {
            let trust = TrustStore::load(host.root())?;
            if json {
                let list: Vec<_> = trust
                    .peers()
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "address": p.address,
                            "fingerprint": p.fingerprint.to_string(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for p in trust.peers() {
                    println!("{}\t{}\t{}", p.name, p.address, p.fingerprint);
                }
            }
        }
        PeerCommand::Rm { name } => {
            TrustStore::remove_peer(host.root(), &name)?;
            println!("{name} is no longer trusted");
        }
    }
    Ok(0)
}

pub fn serve(host: &Host, args: ServeArgs) -> anyhow::Result<i32> {
    crate::agent::serve(host, args.listen)?;
    Ok(0)
}

pub fn run(host: &Host, args: MigrateArgs) -> anyhow::Result<i32> {
    let opts = MigrateOptions {
        pre_copy_rounds: if args.cold { 0 } else { 2 },
        keep_image: args.keep_image.then(|| {
            host.checkpoints_dir(&args.name)
                .join(crate::cli::checkpoint::timestamp_id())
        }),
        compress: match args.compress {
            CompressArg::Auto => crate::migrate::Compress::Auto,
            CompressArg::Always => crate::migrate::Compress::Always,
            CompressArg::Never => crate::migrate::Compress::Never,
        },
        ..MigrateOptions::default()
    };
    let report = migrate(host, &args.name, &args.peer, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} runs on {} now: frozen {:.0} ms, total {:.0} ms, {:.1} MiB at {:.0} MiB/s",
            report.container,
            report.peer,
            report.frozen_ms,
            report.total_ms,
            report.bytes as f64 / (1 << 20) as f64,
            report.transfer_bytes_per_s / (1 << 20) as f64
        );
    }
    Ok(0)
}
