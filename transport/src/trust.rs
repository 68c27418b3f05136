//! The peers this host trusts, pinned by certificate fingerprint like SSH's
//! known_hosts: `ROOT/peers.toml`, edited by `cr peer add/rm`, read by
//! `cr peer list`, `cr migrate` (whom to reach, which certificate to expect)
//! and `cr serve` (which clients to admit, and under which name).
//!
//! ```toml
//! # peers this host trusts (cr peer add / cr peer rm)
//! [[peer]]
//! name = "host2"
//! address = "10.88.1.2:7447"
//! fingerprint = "sha256:3f1c...(64 hex digits)"
//! ```
//!
//! Names and fingerprints are unique in the file, so a lookup either way
//! gives one peer. The file is rewritten whole: written and synced to
//! `peers.toml.tmp-PID-RANDOM`, then renamed over `peers.toml`.
//! [`TrustStore::add_peer`] and [`TrustStore::remove_peer`] do the
//! read-modify-write under `flock(2)` on `ROOT/peers.lock`, so two
//! concurrent `cr peer add` never lose each other's entry.

use std::fs;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::{random_u64, Fingerprint};

/// The trust store's file name under the state root.
pub const PEERS_FILE: &str = "peers.toml";
/// The lock file serializing edits of [`PEERS_FILE`].
pub const PEERS_LOCK: &str = "peers.lock";
/// Longest peer name.
pub const MAX_PEER_NAME: usize = 64;

/// Why the trust store refused an operation or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid peer list: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("a peer named {name:?} already exists (address {address}); remove it first with `cr peer rm {name}`")]
    DuplicateName { name: String, address: String },
    #[error("fingerprint {fingerprint} is already trusted as peer {existing:?}")]
    DuplicateFingerprint {
        fingerprint: Fingerprint,
        existing: String,
    },
    #[error("no peer named {name:?} (known: {known})")]
    UnknownPeer { name: String, known: String },
    #[error("invalid peer name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid peer address {address:?}: {reason}")]
    InvalidAddress {
        address: String,
        reason: &'static str,
    },
}

/// One trusted peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The name the user gave it (`cr migrate web1 NAME`).
    pub name: String,
    /// Where its `cr serve` listens: `host:port` (an IP or a DNS name).
    pub address: String,
    /// The SHA-256 of the certificate it must present.
    pub fingerprint: Fingerprint,
}

impl Peer {
    /// A peer with its name and address checked.
    pub fn new(name: &str, address: &str, fingerprint: Fingerprint) -> Result<Peer, TrustError> {
        check_name(name)?;
        check_address(address)?;
        Ok(Peer {
            name: name.to_string(),
            address: address.to_string(),
            fingerprint,
        })
    }

    /// The host part and the port of [`Peer::address`].
    pub fn host_port(&self) -> Result<(&str, u16), TrustError> {
        split_address(&self.address)
    }
}

/// Checks a peer name: 1 to 64 characters of `[A-Za-z0-9._-]`, not
/// starting with `.` or `-`.
pub fn check_name(name: &str) -> Result<(), TrustError> {
    let bad = |reason| {
        Err(TrustError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_PEER_NAME {
        return bad("it is longer than 64 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it starts with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Checks an address of the form `host:port` or `[ipv6]:port`.
pub fn check_address(address: &str) -> Result<(), TrustError> {
    split_address(address).map(|_| ())
}

fn split_address(address: &str) -> Result<(&str, u16), TrustError> {
    let bad = |reason| TrustError::InvalidAddress {
        address: address.to_string(),
        reason,
    };
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("the port is not a number from 1 to 65535"));
    }
    let host = if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| bad("an IPv6 address needs its closing ']'"))?;
        inner
            .parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("not an IPv6 address between '[' and ']'"))?;
        inner
    } else {
        if host.contains(':') {
            return Err(bad("write an IPv6 address as [ADDRESS]:PORT"));
        }
        host
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    if host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
    {
        return Err(bad("the host is not an IP address or a DNS name"));
    }
    Ok((host, port))
}

#[derive(Serialize, Deserialize, Default)]
struct PeersFile {
    #[serde(default, rename = "peer")]
    peers: Vec<Peer>,
}

/// The peers of one state root, as read from its `peers.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustStore {
    path: PathBuf,
    peers: Vec<Peer>,
}

impl TrustStore {
    /// Reads `root/peers.toml`; a missing file is an empty store.
    pub fn load(root: &Path) -> Result<TrustStore, TrustError> {
        let path = root.join(PEERS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(TrustError::Io {
                    what: "reading",
                    path,
                    source,
                })
            }
        };
        let file: PeersFile = toml::from_str(&text).map_err(|e| TrustError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut store = TrustStore {
            path: path.clone(),
            peers: Vec::new(),
        };
        for peer in file.peers {
            let checked = Peer::new(&peer.name, &peer.address, peer.fingerprint)
                .and_then(|p| store.insert(p));
            checked.map_err(|e| TrustError::Parse {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
        Ok(store)
    }

    /// A store in memory only, for a given set of peers (tests, tools).
    pub fn from_peers(peers: Vec<Peer>) -> Result<TrustStore, TrustError> {
        let mut store = TrustStore::default();
        for peer in peers {
            store.insert(peer)?;
        }
        Ok(store)
    }

    /// Locks the root, reloads, adds `peer` and saves: `cr peer add`.
    pub fn add_peer(root: &Path, peer: Peer) -> Result<TrustStore, TrustError> {
        TrustStore::edit(root, |store| store.insert(peer))
    }

    /// Locks the root, reloads, removes the peer named `name` and saves:
    /// `cr peer rm`. Returns the removed peer.
    pub fn remove_peer(root: &Path, name: &str) -> Result<Peer, TrustError> {
        let mut removed = None;
        TrustStore::edit(root, |store| {
            removed = Some(store.remove(name)?);
            Ok(())
        })?;
        removed.ok_or_else(|| TrustError::UnknownPeer {
            name: name.to_string(),
            known: String::new(),
        })
    }

    fn edit(
        root: &Path,
        change: impl FnOnce(&mut TrustStore) -> Result<(), TrustError>,
    ) -> Result<TrustStore, TrustError> {
        fs::create_dir_all(root).map_err(|source| TrustError::Io {
            what: "creating the state root",
            path: root.to_path_buf(),
            source,
        })?;
        let _lock = FileLock::exclusive(&root.join(PEERS_LOCK))?;
        let mut store = TrustStore::load(root)?;
        change(&mut store)?;
        store.save()?;
        Ok(store)
    }

    /// Adds a peer in memory, refusing a name or fingerprint already present.
    pub fn insert(&mut self, peer: Peer) -> Result<(), TrustError> {
        if let Some(existing) = self.by_name(&peer.name) {
            return Err(TrustError::DuplicateName {
                name: peer.name,
                address: existing.address.clone(),
            });
        }
        if let Some(existing) = self.by_fingerprint(&peer.fingerprint) {
            return Err(TrustError::DuplicateFingerprint {
                fingerprint: peer.fingerprint,
                existing: existing.name.clone(),
            });
        }
        self.peers.push(peer);
        Ok(())
    }

    /// Removes a peer in memory; an unknown name is an error listing the
    /// known ones.
    pub fn remove(&mut self, name: &str) -> Result<Peer, TrustError> {
        match self.peers.iter().position(|p| p.name == name) {
            Some(i) => Ok(self.peers.remove(i)),
            None => Err(TrustError::UnknownPeer {
                name: name.to_string(),
                known: self.known_names(),
            }),
        }
    }

    /// Writes the store to its file atomically (temp file, fsync, rename).
    pub fn save(&self) -> Result<(), TrustError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            "{PEERS_FILE}.tmp-{}-{:016x}",
            std::process::id(),
            random_u64()
        ));
        let body = toml::to_string(&PeersFile {
            peers: self.peers.clone(),
        })
        .map_err(|e| TrustError::Parse {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let text = format!("# peers this host trusts (cr peer add / cr peer rm)\n{body}");
        let result = write_synced(&tmp, text.as_bytes()).and_then(|_| {
            fs::rename(&tmp, &self.path).map_err(|source| TrustError::Io {
                what: "renaming into place",
                path: self.path.clone(),
                source,
            })
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| TrustError::Io {
                what: "syncing",
                path: dir.to_path_buf(),
                source,
            })
    }

    /// All peers, in the order they were added.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The peer with this name.
    pub fn by_name(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The peer with this name, or an error listing the known names.
    pub fn get(&self, name: &str) -> Result<&Peer, TrustError> {
        self.by_name(name).ok_or_else(|| TrustError::UnknownPeer {
            name: name.to_string(),
            known: self.known_names(),
        })
    }

    /// The peer pinned to this fingerprint.
    pub fn by_fingerprint(&self, fingerprint: &Fingerprint) -> Option<&Peer> {
        self.peers.iter().find(|p| &p.fingerprint == fingerprint)
    }

    /// The file this store was read from (empty for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn known_names(&self) -> String {
        if self.peers.is_empty() {
            "none".to_string()
        } else {
            let names: Vec<&str> = self.peers.iter().map(|p| p.name.as_str()).collect();
            names.join(", ")
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), TrustError> {
    let io_err = |source| TrustError::Io {
        what: "writing",
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// An exclusive `flock(2)` held until dropped.
struct FileLock(fs::File);

impl FileLock {
    fn exclusive(path: &Path) -> Result<FileLock, TrustError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| TrustError::Io {
                what: "opening the lock",
                path: path.to_path_buf(),
                source,
            })?;
        loop {
            // SAFETY: flock on a valid, open descriptor owned by `file`; no
            // memory is passed to the kernel.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(TrustError::Io {
                    what: "locking",
                    path: path.to_path_buf(),
                    source: err,
                });
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor we own; closing it would unlock too.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}
