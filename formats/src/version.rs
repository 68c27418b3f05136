//! The format version and the compatibility rule.
//!
//! ```text
//!   image major == ours  &&  image minor <= ours   ->  readable
//!   anything else                                  ->  UnsupportedVersion
//! ```
//!
//! * **Minor** is bumped for additive changes: a new [`crate::Record`] variant,
//!   a new variant of a nested enum (`FileKind`, `VmaKind`, `RunKind`...), a
//!   new frame flag. Enum variants are only ever *appended*, never reordered
//!   or removed, because postcard encodes a variant by its index. A reader
//!   therefore decodes every image of its own major and an older or equal
//!   minor; an image of a newer minor may hold variants it does not know, so
//!   it is refused up front with a clear error rather than half-read.
//! * **Major** is bumped for anything else: a field added to, removed from or
//!   reordered in a struct (postcard encodes structs positionally, without
//!   field names), a changed frame layout, a changed checksum.
//!
//! New data for an existing object therefore arrives as a new record kind
//! that refers to it (for example a future `ThreadExtra { tid, .. }`), not as
//! a new field, so that only the minor moves.

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};

/// A format version: `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub major: u16,
    pub minor: u16,
}

/// The version this build writes, and the newest it reads.
/// 1.1: the `Shmem` and `DeletedFile` records, the new `FileKind`s (memfd,
/// deleted, unix, event objects, inet), `PageOwner::Shmem` and `PreCopy`, and
/// the "later run wins" rule of the page store.
/// 1.2: the IPC namespace's records and `FileKind::Mqueue`, the `Mount` and
/// `Uts` records, the `NetNamespace` record.
/// 1.3: the `TimeNamespace` record, `FileKind::Netlink` and
/// `InetState::HalfClosed`.
/// 1.4: the `Nftables` record.
/// 1.5: blob streams (stream kind 3, frame kind 3).
pub const FORMAT_VERSION: Version = Version { major: 1, minor: 5 };

impl Version {
    pub const fn new(major: u16, minor: u16) -> Self {
        Version { major, minor }
    }

    /// Whether a reader of version `self` can read an image of version
    /// `image`: same major, and a minor not newer than ours.
    pub const fn can_read(self, image: Version) -> bool {
        image.major == self.major && image.minor <= self.minor
    }

    /// [`Version::can_read`] as a `Result` carrying the error to report.
    pub fn check_readable(self, image: Version) -> Result<()> {
        if self.can_read(image) {
            Ok(())
        } else {
            Err(FormatError::UnsupportedVersion {
                found: image,
                supported: self,
            })
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_older_or_equal_minor_is_readable() {
        let ours = Version::new(1, 4);
        assert!(ours.can_read(Version::new(1, 0)));
        assert!(ours.can_read(Version::new(1, 1)));
        assert!(ours.can_read(Version::new(1, 2)));
        assert!(ours.can_read(Version::new(1, 3)));
        assert!(ours.can_read(Version::new(1, 4)));
    }

    #[test]
    fn newer_minor_or_other_major_is_refused() {
        let ours = Version::new(1, 4);
        for image in [Version::new(1, 5), Version::new(2, 0), Version::new(0, 9)] {
            let err = ours.check_readable(image).unwrap_err();
            assert!(
                matches!(err, FormatError::UnsupportedVersion { found, supported } if found == image && supported == ours),
                "{err}"
            );
        }
        let msg = ours
            .check_readable(Version::new(1, 5))
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "image format 1.5 is not supported: this cr reads 1.0 to 1.4"
        );
    }
}
