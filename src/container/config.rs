//! A container's config: `ROOT/containers/NAME/config.toml`, readable and
//! editable like OpenVZ's `CTID.conf`.
//!
//! ```toml
//! name = "web1"
//! image = "debian"
//! hostname = "web1"
//! command = ["/sbin/init"]
//!
//! [limits]
//! memory = 1073741824   # bytes
//! cpus = 1.5            # CPU time per second of wall time
//! pids = 512
//!
//! [network]
//! bridge = "cr0"
//! address = "10.88.0.10/24"
//! mac = "02:c4:1e:77:0a:13"
//! veth = "crv1a2b3c4d"  # host side of the veth pair
//!
//! [disk]                # only with --disk: root on a ploop-like disk
//! size = 8589934592     # bytes, as created
//!
//! [userns]              # only with --userns
//! uid_base = 100000     # uid 0 inside is this uid on the host
//! gid_base = 100000
//! size = 65536          # ids 0..size inside are mapped
//! ```
//!
//! The config is what moves with a container: the MAC address stays the same
//! wherever it runs.

use std::fmt;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub hostname: String,
    /// The command run as PID 1; empty means the image's init.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetConfig>,
    /// The user namespace's id mapping; `None`: processes run as host root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<UsernsConfig>,
    /// `--disk`: the root is a ploop-like disk (`disk/` in the container's
    /// directory) instead of an overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskConfig>,
}

/// A container whose root filesystem is an ext4 on a ploop-like disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The disk's size in bytes (`cr disk grow` updates it); a migration's
    /// destination refuses a chain larger than this.
    pub size: u64,
}

/// A user namespace mapping: ids `0..size` inside are `base..base + size`
/// on the host, for uids and gids alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernsConfig {
    pub uid_base: u32,
    pub gid_base: u32,
    pub size: u32,
}

impl UsernsConfig {
    /// True when this mapping shares a host uid or gid with `other`.
    pub fn overlaps(&self, other: &UsernsConfig) -> bool {
        let hit = |a: u32, b: u32| {
            let (a, b) = (u64::from(a), u64::from(b));
            a < b + u64::from(other.size) && b < a + u64::from(self.size)
        };
        hit(self.uid_base, other.uid_base) || hit(self.gid_base, other.gid_base)
    }

    /// The line written to `uid_map` (`gid` false) or `gid_map` (`gid` true).
    pub fn map_line(&self, gid: bool) -> String {
        let base = if gid { self.gid_base } else { self.uid_base };
        format!("0 {base} {}\n", self.size)
    }
}

/// Resource limits, enforced through cgroups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// CPU bandwidth in CPUs (1.5 = one and a half CPUs' worth of time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Maximum number of tasks (processes and threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// The container's network interface: a veth pair whose host side joins
/// `bridge` and whose container side is `eth0` with `address` and `mac`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    pub bridge: String,
    pub address: Ipv4Cidr,
    pub mac: MacAddr,
    /// Name of the host side of the veth pair (at most 15 bytes).
    pub veth: String,
}

impl ContainerConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path).ctx("reading container config", path)?;
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })
    }

    /// Writes the config atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        write_atomic(path, text.as_bytes())
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).ctx("writing", &tmp)?;
    fs::rename(&tmp, path).ctx("renaming into place", path)
}

/// An IPv4 address with its prefix length, written `10.88.0.10/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub fn netmask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.netmask())
    }

    pub fn contains(&self, other: Ipv4Addr) -> bool {
        u32::from(other) & self.netmask() == u32::from(self.network())
    }

    /// The prefix's first host address (`10.88.0.1` for `10.88.0.10/24`):
    /// the gateway cr gives the bridge when it has none in this prefix.
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !self.netmask())
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Invalid(format!("invalid IP address {s:?}: {why}"));
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, e.g. 10.88.0.10/24"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| bad("the prefix length must be a number"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("the prefix length must be between 8 and 30"));
        }
        let cidr = Ipv4Cidr { addr, prefix };
        if addr.is_loopback() || addr.is_multicast() || addr.is_broadcast() || addr.is_unspecified()
        {
            return Err(bad("not a unicast host address"));
        }
        if addr == cidr.network() || addr == cidr.broadcast() {
            return Err(bad(
                "that is the network or broadcast address of its prefix",
            ));
        }
        if addr == cidr.first_host() {
            return Err(bad(
                "the prefix's first address is reserved for the bridge (the container's gateway)",
            ));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An Ethernet address, written `02:c4:1e:77:0a:13`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A random, locally administered, unicast address.
    pub fn random() -> Result<Self> {
        let mut bytes = [0u8; 6];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::Invalid(format!("no randomness for a MAC address: {e}")))?;
        bytes[0] = (bytes[0] & 0xfe) | 0x02;
        Ok(MacAddr(bytes))
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "invalid MAC address {s:?}: expected six hex bytes like 02:00:00:00:00:01"
            ))
        };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if bytes[0] & 1 == 1 || bytes == [0; 6] {
            return Err(Error::Invalid(format!(
                "invalid MAC address {s:?}: an interface needs a unicast address (the first byte must be even) other than 00:00:00:00:00:00"
            )));
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

macro_rules! serde_via_string {
    ($ty:ty, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(|e: Error| {
                    serde::de::Error::custom(format!(concat!($what, ": {}"), e))
                })
            }
        }
    };
}

serde_via_string!(Ipv4Cidr, "address");
serde_via_string!(MacAddr, "mac");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parse_and_math() {
        let c: Ipv4Cidr = "10.88.0.10/24".parse().unwrap();
        assert_eq!(c.network(), Ipv4Addr::new(10, 88, 0, 0));
        assert_eq!(c.first_host(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 88, 0, 255));
        assert!(c.contains(Ipv4Addr::new(10, 88, 0, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 88, 1, 1)));
        assert_eq!(c.to_string(), "10.88.0.10/24");
        for bad in [
            "10.88.0.10",
            "10.88.0.300/24",
            "10.88.0.10/33",
            "10.88.0.10/x",
            "10.88.0.0/24",
            "10.88.0.255/24",
            "10.88.0.1/24",
            "127.0.0.5/8",
            "224.0.0.5/24",
            "",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_round_trip() {
        let m = MacAddr::random().unwrap();
        assert_eq!(m.0[0] & 0x03, 0x02);
        assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
        assert!("02:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:00:0g".parse::<MacAddr>().is_err());
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err());
        assert!("00:00:00:00:00:00".parse::<MacAddr>().is_err());
    }

    #[test]
    fn config_toml_round_trip() {
        let cfg = ContainerConfig {
            name: "web1".into(),
            image: "base".into(),
            hostname: "web1".into(),
            command: vec!["/bin/sh".into()],
            limits: Limits {
                memory: Some(1 << 30),
                cpus: Some(1.5),
                pids: Some(64),
            },
            network: Some(NetConfig {
                bridge: "cr0".into(),
                address: "10.88.0.10/24".parse().unwrap(),
                mac: "02:00:00:00:00:01".parse().unwrap(),
                veth: "crv12345678".into(),
            }),
            userns: Some(UsernsConfig {
                uid_base: 165536,
                gid_base: 165536,
                size: 65536,
            }),
            disk: Some(DiskConfig { size: 8 << 30 }),
        };
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(toml::from_str::<ContainerConfig>(&text).unwrap(), cfg);
        assert!(text.contains("[userns]\nuid_base = 165536\n"), "{text}");
    }

    #[test]
    fn userns_overlap() {
        let a = UsernsConfig {
            uid_base: 100000,
            gid_base: 100000,
            size: 65536,
        };
        let b = UsernsConfig {
            uid_base: 165536,
            gid_base: 165536,
            size: 65536,
        };
        assert!(!a.overlaps(&b) && !b.overlaps(&a));
        assert!(a.overlaps(&a));
        let c = UsernsConfig {
            uid_base: 165535,
            ..b
        };
        assert!(a.overlaps(&c));
        assert_eq!(a.map_line(false), "0 100000 65536\n");
    }
}
