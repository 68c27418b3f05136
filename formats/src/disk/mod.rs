//! Ploop-like disk images: a virtual disk stored as a chain of delta files.
//!
//! ```text
//!   CHAIN_DIR/chain.manifest     bottom .. top: ids, parents, files, labels
//!   CHAIN_DIR/<id>.delta         | header x2 | BAT (blocks x2) | data clusters |
//!
//!   read:   topmost delta holding the cluster, else zeros
//!   write:  into the top (copy on write for partial clusters)
//!   flush:  sync data -> write BAT blocks -> sync    (the durability rule)
//! ```
//!
//! * [`storage`]: the [`Storage`] trait (positional file I/O) for files,
//!   memory, and a store that crashes on demand.
//! * [`header`], [`bat`]: the bytes of a delta file.
//! * [`delta`]: one delta: reading, the write path, flush, grow.
//! * [`manifest`]: the chain manifest.
//! * [`dir`]: [`ChainDir`], where the files live ([`FsDir`], [`MemDir`]).
//! * [`chain`]: [`Chain`]: read, write, snapshot, grow, mark and dirty
//!   clusters; [`merge`]: online merge; [`check`]: verification.
//!
//! `docs/disk-format.md` is the specification. Nothing here makes a system
//! call other than through [`Storage`] and [`ChainDir`].

pub mod bat;
pub mod chain;
pub mod check;
pub mod delta;
pub mod dir;
pub mod error;
pub mod header;
pub mod manifest;
pub mod merge;
pub mod storage;

use serde::{Deserialize, Serialize};

use crate::version::Version;

pub use bat::{BatEntry, ENTRIES_PER_BLOCK};
pub use chain::{delta_file_name, Chain, Mark, FIRST_GENERATION};
pub use check::{check_chain, check_delta, CheckReport, DeltaReport};
pub use delta::Delta;
pub use dir::{ChainDir, FsDir, MemDir};
pub use error::DiskError;
pub use header::{
    DeltaHeader, DEFAULT_CLUSTER_SIZE, DELTA_MAGIC, HEADER_AREA, MAX_CLUSTER_SIZE, MIN_CLUSTER_SIZE,
};
pub use manifest::{ChainManifest, DeltaEntry, CHAIN_MANIFEST};
pub use merge::{MergeOutcome, MergeProgress};
pub use storage::{CrashControl, CrashMode, CrashStore, MemStore, Storage};

/// The disk format version this build writes, and the newest it reads: same
/// major, minor not newer (see [`crate::version`]). Minor: additions an older
/// reader may safely refuse (a new flag); major: anything else.
pub const DISK_FORMAT_VERSION: Version = Version { major: 1, minor: 0 };

/// A delta's id: 16 random bytes, shown as a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeltaId(pub [u8; 16]);

impl std::fmt::Display for DeltaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
