//! `cr image ...`: the images containers start from.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::container::config::ContainerConfig;
use crate::host::Host;
use crate::image::build::{DebianOptions, MinimalOptions};
use crate::image::ImageStore;
use crate::size::HumanSize;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import a root filesystem from a directory or a .tar, .tar.gz or .tar.zst file.
    Import {
        /// Image name.
        name: String,
        /// Directory or tarball.
        path: PathBuf,
    },
    /// List images.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image (refused while a container uses it).
    Rm {
        /// Image name.
        name: String,
    },
    /// Build a minimal image: busybox plus chosen host programs with their libraries.
    BuildMinimal(BuildMinimalArgs),
    /// Build a Debian OS template with debootstrap.
    BuildDebian(BuildDebianArgs),
}

#[derive(Debug, Args)]
pub struct BuildMinimalArgs {
    /// Image name.
    pub name: String,
    /// A host program (name on PATH or absolute path) to copy with its shared libraries.
    #[arg(long = "with", value_name = "PROGRAM")]
    pub programs: Vec<String>,
    /// A host directory to copy as it is (e.g. /usr/lib/python3.11).
    #[arg(long = "tree", value_name = "DIR")]
    pub trees: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BuildDebianArgs {
    /// Image name.
    pub name: String,
    /// Debian release.
    #[arg(long, default_value = "bookworm")]
    pub suite: String,
    /// debootstrap variant, e.g. minbase.
    #[arg(long)]
    pub variant: Option<String>,
    /// Mirror URL (default: the host's Debian mirror from its apt sources).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Extra packages, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub include: Vec<String>,
}

pub fn run(host: &Host, cmd: ImageCommand) -> anyhow::Result<i32> {
    let store = ImageStore::new(host.images_dir());
    match cmd {
        ImageCommand::Import { name, path } => {
            let image = store.import(&name, &path)?;
            println!(
                "{} imported ({}, {} files)",
                image.name,
                HumanSize(image.meta.size),
                image.meta.files
            );
        }
        ImageCommand::List { json } => {
            let images = store.list()?;
            if json {
                let list: Vec<_> = images
                    .iter()
                    .map(|i| serde_json::json!({"name": i.name, "rootfs": i.rootfs, "source": i.meta.source, "created": i.meta.created, "size": i.meta.size, "files": i.meta.files}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<20} {:>10} {:>8}  SOURCE", "NAME", "SIZE", "FILES");
                for i in images {
                    println!(
                        "{:<20} {:>10} {:>8}  {}",
                        i.name,
                        HumanSize(i.meta.size).to_string(),
                        i.meta.files,
                        i.meta.source
                    );
                }
            }
        }
        ImageCommand::Rm { name } => {
            let _lock = host.lock()?;
            let users = users_of(host, &name)?;
            store.remove(&name, &users)?;
        }
        ImageCommand::BuildMinimal(args) => {
            let image = store.build_minimal(
                &args.name,
                MinimalOptions {
                    programs: args.programs,
                    trees: args.trees,
                },
            )?;
            println!(
                "{} built ({}, {} files)",
                image.name,
                HumanSize(image.meta.size),
                image.meta.files
            );
        }
        ImageCommand::BuildDebian(args) => {
            let image = store.build_debian(
                &args.name,
                DebianOptions {
                    suite: args.suite,
                    variant: args.variant,
                    mirror: args.mirror,
                    include: args.include,
                },
            )?;
            println!(
                "{} built ({}, {} files)",
                image.name,
                HumanSize(image.meta.size),
                image.meta.files
            );
        }
    }
    Ok(0)
}

/// Containers of this host whose config names `image`.
fn users_of(host: &Host, image: &str) -> anyhow::Result<Vec<String>> {
    let mut users = Vec::new();
    for name in host.container_names()? {
        let config = ContainerConfig::load(&host.container_dir(&name).join("config.toml"))?;
        if config.image == image {
            users.push(name);
        }
    }
    Ok(users)
}
