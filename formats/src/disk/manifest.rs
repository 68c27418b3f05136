//! The chain manifest: which delta files make up a disk, bottom first.
//!
//! ```text
//!   chain.manifest (little endian):
//!    0  8  magic        b"CRCHAIN\0"
//!    8  2  major        } DISK_FORMAT_VERSION
//!   10  2  minor        }
//!   12  4  payload len
//!   16  4  crc32c       of bytes 0..16 and the payload
//!   20  .. payload      postcard(ChainManifest)
//! ```
//!
//! The payload is postcard (as the checkpoint records), not TOML: it is
//! checksummed as a whole and needs no new dependency; `cr disk list` shows
//! it. Replacing it is atomic: the [`super::ChainDir`] writes a temporary
//! file, syncs it and renames it over the old one. [`ChainManifest::decode`]
//! validates what it decodes: a non-empty chain whose every parent is the
//! delta listed below it, unique ids and file names, plain file names, and
//! only the top writable.

use serde::{Deserialize, Serialize};

use super::error::{DiskError, Result};
use super::header::check_cluster_size;
use super::{DeltaId, DISK_FORMAT_VERSION};
use crate::version::Version;

/// The manifest magic.
pub const MANIFEST_MAGIC: [u8; 8] = *b"CRCHAIN\0";
/// Bytes before the payload.
pub const MANIFEST_HEADER_LEN: usize = 20;
/// The manifest's file name in a chain directory.
pub const CHAIN_MANIFEST: &str = "chain.manifest";

/// A chain of deltas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainManifest {
    /// The cluster size of every delta.
    pub cluster_size: u32,
    /// Bottom first; the last one is the top.
    pub deltas: Vec<DeltaEntry>,
}

/// One delta of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaEntry {
    pub id: DeltaId,
    /// The delta below; `None` for the bottom one.
    pub parent: Option<DeltaId>,
    /// File name in the chain directory.
    pub file: String,
    /// A name given by the user (`cr disk snapshot --label`), may be empty.
    pub label: String,
    pub read_only: bool,
    pub created_unix_ns: u64,
}

impl ChainManifest {
    /// The top delta.
    pub fn top(&self) -> Option<&DeltaEntry> {
        self.deltas.last()
    }

    pub fn encode(&self) -> Result<Vec<u8>> {
        let payload =
            postcard::to_allocvec(self).map_err(|source| DiskError::ManifestEncode { source })?;
        let mut out = Vec::with_capacity(MANIFEST_HEADER_LEN + payload.len());
        out.extend_from_slice(&MANIFEST_MAGIC);
        out.extend_from_slice(&DISK_FORMAT_VERSION.major.to_le_bytes());
        out.extend_from_slice(&DISK_FORMAT_VERSION.minor.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c::crc32c_append(crc32c::crc32c(&out), &payload);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decodes and validates a manifest read from `file`.
    pub fn decode(file: &str, bytes: &[u8]) -> Result<Self> {
        let f = || file.to_string();
        let len = bytes.len() as u64;
        if bytes.len() < MANIFEST_HEADER_LEN {
            return Err(DiskError::ManifestTruncated {
                file: f(),
                len,
                need: MANIFEST_HEADER_LEN as u64,
            });
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[..8]);
        if magic != MANIFEST_MAGIC {
            return Err(DiskError::ManifestMagic {
                file: f(),
                found: magic,
            });
        }
        let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let version = Version::new(u16_at(8), u16_at(10));
        if !DISK_FORMAT_VERSION.can_read(version) {
            return Err(DiskError::UnsupportedVersion {
                file: f(),
                found: version,
                supported: DISK_FORMAT_VERSION,
            });
        }
        let need = MANIFEST_HEADER_LEN as u64 + u64::from(u32_at(12));
        if len < need {
            return Err(DiskError::ManifestTruncated {
                file: f(),
                len,
                need,
            });
        }
        if len > need {
            return Err(DiskError::ManifestTrailing {
                file: f(),
                offset: need,
                extra: len - need,
            });
        }
        let payload = &bytes[MANIFEST_HEADER_LEN..];
        let stored = u32_at(16);
        let computed = crc32c::crc32c_append(crc32c::crc32c(&bytes[..16]), payload);
        if stored != computed {
            return Err(DiskError::ManifestChecksum {
                file: f(),
                stored,
                computed,
            });
        }
        let (m, rest): (ChainManifest, _) =
            postcard::take_from_bytes(payload).map_err(|source| DiskError::ManifestDecode {
                file: f(),
                offset: MANIFEST_HEADER_LEN as u64,
                source,
            })?;
        if !rest.is_empty() {
            return Err(DiskError::ManifestTrailing {
                file: f(),
                offset: len - rest.len() as u64,
                extra: rest.len() as u64,
            });
        }
        m.validate(file)?;
        Ok(m)
    }

    /// Checks the chain's structure (not the delta files).
    pub fn validate(&self, file: &str) -> Result<()> {
        let f = || file.to_string();
        check_cluster_size(file, u64::from(self.cluster_size))?;
        if self.deltas.is_empty() {
            return Err(DiskError::EmptyChain { file: f() });
        }
        let top = self.deltas.len() - 1;
        for (i, d) in self.deltas.iter().enumerate() {
            if !is_plain_name(&d.file) {
                return Err(DiskError::BadDeltaFileName {
                    file: f(),
                    entry: i,
                    name: d.file.clone(),
                });
            }
            for (j, other) in self.deltas[..i].iter().enumerate() {
                let what = if other.id == d.id {
                    Some(format!("delta id {}", d.id))
                } else if other.file == d.file {
                    Some(format!("file {:?}", d.file))
                } else {
                    None
                };
                if let Some(what) = what {
                    return Err(DiskError::DuplicateDelta {
                        file: f(),
                        first: j,
                        entry: i,
                        what,
                    });
                }
            }
        }
        for (i, d) in self.deltas.iter().enumerate() {
            let expected = i.checked_sub(1).map(|j| self.deltas[j].id);
            if let Some(p) = d.parent {
                if self.deltas[i..].iter().any(|above| above.id == p) {
                    return Err(DiskError::ChainCycle {
                        file: f(),
                        entry: i,
                        id: d.id,
                        parent: p,
                    });
                }
            }
            if d.parent != expected {
                return Err(DiskError::ChainGap {
                    file: f(),
                    entry: i,
                    id: d.id,
                    parent: d.parent,
                    expected,
                });
            }
            if !d.read_only && i != top {
                return Err(DiskError::WritableBelowTop {
                    file: f(),
                    entry: i,
                });
            }
        }
        Ok(())
    }
}

/// A file name with no path in it.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name != CHAIN_MANIFEST
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 255
}
