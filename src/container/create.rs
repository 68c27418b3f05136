//! `cr create`: validate everything a start needs and write the container's
//! directory and config (and with `--disk`, the disk initialised from the
//! image). Nothing runs yet; nothing is left behind on error.

use std::fs;

use crate::container::config::{ContainerConfig, DiskConfig, Ipv4Cidr, Limits, MacAddr, NetConfig};
use crate::container::network;
use crate::container::rootfs::check_overlay_path;
use crate::container::userns;
use crate::container::Container;
use crate::error::{Error, IoContext, Result};
use crate::host::{validate_name, Host};
use crate::image::ImageStore;
use crate::storage;

/// The bridge containers join unless told otherwise.
pub const DEFAULT_BRIDGE: &str = "cr0";

#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub name: String,
    pub image: String,
    pub hostname: Option<String>,
    pub command: Vec<String>,
    pub address: Option<Ipv4Cidr>,
    pub mac: Option<MacAddr>,
    pub bridge: Option<String>,
    pub limits: Limits,
    /// Run the container in a user namespace of its own.
    pub userns: bool,
    /// `--disk SIZE`: the root is ext4 on a ploop-like disk of this many
    /// bytes, initialised from the image (default: an overlay).
    pub disk: Option<u64>,
}

pub fn create(host: &Host, opts: &CreateOptions) -> Result<Container> {
    validate_name("container", &opts.name)?;
    let hostname = opts.hostname.clone().unwrap_or_else(|| opts.name.clone());
    validate_hostname(&hostname)?;
    validate_limits(&opts.limits)?;
    let image = ImageStore::new(host.images_dir()).get(&opts.image)?;
    match opts.command.first() {
        Some(cmd) => {
            image.resolve_command(cmd)?;
        }
        None => {
            image.default_command()?;
        }
    }
    if opts.disk.is_some() && opts.userns {
        return Err(Error::Invalid(
            "--disk and --userns cannot be combined yet: the disk's files belong to host root"
                .into(),
        ));
    }
    let dir = host.container_dir(&opts.name);
    check_overlay_path(&dir)?;

    let _lock = host.lock()?;
    if dir.exists() {
        return Err(Error::ContainerExists(opts.name.clone()));
    }
    let network = match opts.address {
        Some(address) => {
            check_address_free(host, address)?;
            let bridge = opts
                .bridge
                .clone()
                .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
            validate_ifname(&bridge)?;
            Some(NetConfig {
                bridge,
                address,
                mac: match opts.mac {
                    Some(mac) => mac,
                    None => MacAddr::random()?,
                },
                veth: network::veth_name(&host.root().to_string_lossy(), &opts.name),
            })
        }
        None => None,
    };
    let userns = if opts.userns {
        Some(userns::allocate(host, &opts.name)?)
    } else {
        None
    };
    let config = ContainerConfig {
        name: opts.name.clone(),
        image: opts.image.clone(),
        hostname,
        command: opts.command.clone(),
        limits: opts.limits.clone(),
        network,
        userns,
        disk: opts.disk.map(|size| DiskConfig { size }),
    };
    fs::create_dir(&dir).ctx("creating container directory", &dir)?;
    let written = config
        .save(&dir.join("config.toml"))
        .and_then(|()| match opts.disk {
            Some(size) => storage::disk::create(&dir, size, &image.rootfs),
            None => Ok(()),
        });
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    Container::open(host, &opts.name)
}

/// Refuses an address another container of this host already has.
pub fn check_address_free(host: &Host, address: Ipv4Cidr) -> Result<()> {
    for name in host.container_names()? {
        let Ok(other) = ContainerConfig::load(&host.container_dir(&name).join("config.toml"))
        else {
            continue;
        };
        if let Some(net) = other.network {
            if net.address.addr == address.addr {
                return Err(Error::Invalid(format!(
                    "IP address {} is already used by container {name:?}",
                    address.addr
                )));
            }
        }
    }
    Ok(())
}

fn validate_hostname(hostname: &str) -> Result<()> {
    let ok = !hostname.is_empty()
        && hostname.len() <= 64
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid hostname {hostname:?}: use dot-separated labels of letters, digits and '-' (64 characters at most)"
        )))
    }
}

fn validate_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid bridge name {name:?}: use 1-15 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn validate_limits(limits: &Limits) -> Result<()> {
    if let Some(memory) = limits.memory {
        if memory < 4 << 20 {
            return Err(Error::Invalid(format!(
                "memory limit of {memory} bytes is too small: a container needs at least 4M"
            )));
        }
    }
    if let Some(cpus) = limits.cpus {
        if !(0.01..=4096.0).contains(&cpus) {
            return Err(Error::Invalid(format!(
                "invalid CPU limit {cpus}: give a number of CPUs between 0.01 and 4096, e.g. 1.5"
            )));
        }
    }
    if limits.pids == Some(0) {
        return Err(Error::Invalid("the pids limit must be at least 1".into()));
    }
    Ok(())
}
