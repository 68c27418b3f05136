//! The delta header: two copies ("slots") in the first 4 KiB of the file, so
//! that rewriting it (grow, a new mark, a relocated BAT) is atomic.
//!
//! ```text
//!   file offset 0        512                                     4096
//!               | slot 0 | slot 1 |   zero                         | BAT region ...
//!
//!   slot (76 bytes, little endian):
//!    0  8  magic          b"CRDELTA\0"
//!    8  2  major          } DISK_FORMAT_VERSION, same-major/older-minor rule
//!   10  2  minor          }
//!   12  4  flags          none defined in 1.0: must be 0
//!   16  8  seq            update count; the valid slot with the higher seq wins
//!   24  4  cluster size   power of two, 4 KiB ..= 64 MiB (default 1 MiB)
//!   28  4  reserved       0
//!   32  8  virtual size   bytes, a non-zero multiple of 512
//!   40  8  BAT offset     bytes, 4096-aligned, after the header area
//!   48  4  BAT blocks     number of BAT blocks (each two 4 KiB copies)
//!   52  4  generation     the write generation of this delta (dirty tracking)
//!   56 16  delta id       matches the chain manifest's entry
//!   72  4  crc32c         of bytes 0..72
//! ```
//!
//! An update writes the slot that does not hold the current header, with
//! `seq + 1`, and syncs. A write torn by a crash leaves that slot with a bad
//! checksum, so the reader falls back to the other, older, slot: the header is
//! either the old or the new one. A slot of all zeros was never written.

use super::bat::{BAT_PAIR_LEN, ENTRIES_PER_BLOCK};
use super::error::{io_err, DiskError, Result};
use super::storage::Storage;
use super::{DeltaId, DISK_FORMAT_VERSION};
use crate::version::Version;

/// The delta magic.
pub const DELTA_MAGIC: [u8; 8] = *b"CRDELTA\0";
/// Bytes before the BAT region: the two header slots and padding.
pub const HEADER_AREA: u64 = 4096;
/// Where the two header slots start.
pub const HEADER_SLOTS: [u64; 2] = [0, 512];
/// Encoded length of one header slot.
pub const HEADER_SLOT_LEN: usize = 76;
/// The smallest cluster size.
pub const MIN_CLUSTER_SIZE: u32 = 4096;
/// The largest cluster size.
pub const MAX_CLUSTER_SIZE: u32 = 64 << 20;
/// The cluster size `cr` uses unless told otherwise.
pub const DEFAULT_CLUSTER_SIZE: u32 = 1 << 20;
/// The most virtual clusters a delta can map (256 TiB at 1 MiB clusters).
pub const MAX_VIRTUAL_CLUSTERS: u64 = 1 << 28;
/// The most BAT blocks a header may declare.
pub const MAX_BAT_BLOCKS: u32 = MAX_VIRTUAL_CLUSTERS.div_ceil(ENTRIES_PER_BLOCK as u64) as u32 * 2;

/// A decoded header slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaHeader {
    pub version: Version,
    pub flags: u32,
    pub seq: u64,
    pub cluster_size: u32,
    pub virtual_size: u64,
    pub bat_offset: u64,
    pub bat_blocks: u32,
    pub generation: u32,
    pub id: DeltaId,
}

impl DeltaHeader {
    /// Virtual clusters the virtual size covers.
    pub fn virtual_clusters(&self) -> u64 {
        self.virtual_size.div_ceil(u64::from(self.cluster_size))
    }

    /// Entries the BAT has room for.
    pub fn bat_capacity(&self) -> u64 {
        u64::from(self.bat_blocks) * ENTRIES_PER_BLOCK as u64
    }

    /// The end of the BAT region (saturating: only for validated headers).
    pub fn bat_end(&self) -> u64 {
        self.bat_offset
            .saturating_add(u64::from(self.bat_blocks) * BAT_PAIR_LEN)
    }

    pub fn encode(&self) -> [u8; HEADER_SLOT_LEN] {
        let mut b = [0u8; HEADER_SLOT_LEN];
        b[0..8].copy_from_slice(&DELTA_MAGIC);
        b[8..10].copy_from_slice(&self.version.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.version.minor.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.cluster_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.virtual_size.to_le_bytes());
        b[40..48].copy_from_slice(&self.bat_offset.to_le_bytes());
        b[48..52].copy_from_slice(&self.bat_blocks.to_le_bytes());
        b[52..56].copy_from_slice(&self.generation.to_le_bytes());
        b[56..72].copy_from_slice(&self.id.0);
        let crc = crc32c::crc32c(&b[..72]);
        b[72..76].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes one slot found at `offset` and checks its fields against the
    /// file's length.
    pub fn decode(
        file: &str,
        offset: u64,
        b: &[u8; HEADER_SLOT_LEN],
        file_len: u64,
    ) -> Result<Self> {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        let file_s = || file.to_string();
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&b[0..8]);
        if magic != DELTA_MAGIC {
            return Err(DiskError::BadMagic {
                file: file_s(),
                offset,
                found: magic,
            });
        }
        let version = Version::new(u16_at(8), u16_at(10));
        if !DISK_FORMAT_VERSION.can_read(version) {
            return Err(DiskError::UnsupportedVersion {
                file: file_s(),
                found: version,
                supported: DISK_FORMAT_VERSION,
            });
        }
        let stored = u32_at(72);
        let computed = crc32c::crc32c(&b[..72]);
        if stored != computed {
            return Err(DiskError::HeaderChecksum {
                file: file_s(),
                offset,
                stored,
                computed,
            });
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[56..72]);
        let h = DeltaHeader {
            version,
            flags: u32_at(12),
            seq: u64_at(16),
            cluster_size: u32_at(24),
            virtual_size: u64_at(32),
            bat_offset: u64_at(40),
            bat_blocks: u32_at(48),
            generation: u32_at(52),
            id: DeltaId(id),
        };
        let reserved = u32_at(28);
        if h.flags != 0 || reserved != 0 {
            return Err(DiskError::UnknownFlags {
                file: file_s(),
                offset,
                bits: u64::from(h.flags) | (u64::from(reserved) << 32),
            });
        }
        check_cluster_size(file, u64::from(h.cluster_size))?;
        check_virtual_size(file, h.virtual_size, h.cluster_size)?;
        let end = u64::from(h.bat_blocks)
            .checked_mul(BAT_PAIR_LEN)
            .and_then(|l| l.checked_add(h.bat_offset));
        match end {
            Some(end)
                if h.bat_offset >= HEADER_AREA
                    && h.bat_offset % 4096 == 0
                    && end <= file_len
                    && h.bat_blocks <= MAX_BAT_BLOCKS => {}
            _ => {
                return Err(DiskError::BatRegion {
                    file: file_s(),
                    offset: h.bat_offset,
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
        if h.bat_capacity() < h.virtual_clusters() {
            return Err(DiskError::BatTooSmall {
                file: file_s(),
                blocks: h.bat_blocks,
                capacity: h.bat_capacity(),
                needed: h.virtual_clusters(),
            });
        }
        Ok(h)
    }
}

/// A cluster size is a power of two within the bounds.
pub fn check_cluster_size(file: &str, size: u64) -> Result<u32> {
    if size.is_power_of_two() && (MIN_CLUSTER_SIZE as u64..=MAX_CLUSTER_SIZE as u64).contains(&size)
    {
        Ok(size as u32)
    } else {
        Err(DiskError::BadClusterSize {
            file: file.to_string(),
            size,
            min: MIN_CLUSTER_SIZE,
            max: MAX_CLUSTER_SIZE,
        })
    }
}

/// The largest virtual size for a cluster size.
pub fn max_virtual_size(cluster_size: u32) -> u64 {
    u64::from(cluster_size) * MAX_VIRTUAL_CLUSTERS
}

/// A virtual size is a non-zero multiple of 512 up to the cap.
pub fn check_virtual_size(file: &str, size: u64, cluster_size: u32) -> Result<()> {
    let max = max_virtual_size(cluster_size);
    if size == 0 || size % 512 != 0 || size > max {
        return Err(DiskError::BadVirtualSize {
            file: file.to_string(),
            size,
            max,
        });
    }
    Ok(())
}

/// Reads both slots and returns the current header and its slot.
pub fn read_header<S: Storage>(store: &S, file: &str) -> Result<(DeltaHeader, usize)> {
    let len = store.len().map_err(io_err(file, "stat", 0))?;
    if len < HEADER_AREA {
        return Err(DiskError::Truncated {
            file: file.to_string(),
            len,
            need: HEADER_AREA,
            what: "header",
        });
    }
    let read_slot = |slot: usize| -> Result<(bool, Result<DeltaHeader>)> {
        let off = HEADER_SLOTS[slot];
        let mut b = [0u8; HEADER_SLOT_LEN];
        store
            .read_at(&mut b, off)
            .map_err(io_err(file, "read header", off))?;
        Ok((
            b.iter().all(|&x| x == 0),
            DeltaHeader::decode(file, off, &b, len),
        ))
    };
    let (zero0, r0) = read_slot(0)?;
    let (zero1, r1) = read_slot(1)?;
    match (r0, r1) {
        (Ok(a), Ok(b)) if b.seq > a.seq => Ok((b, 1)),
        (Ok(a), _) => Ok((a, 0)),
        (Err(_), Ok(b)) => Ok((b, 1)),
        // Report slot 0's problem, unless slot 0 was never written.
        (Err(e0), Err(e1)) => Err(if zero0 && !zero1 { e1 } else { e0 }),
    }
}

/// Writes `h` into `slot` and syncs.
pub fn write_header_slot<S: Storage>(
    store: &S,
    file: &str,
    h: &DeltaHeader,
    slot: usize,
) -> Result<()> {
    let off = HEADER_SLOTS[slot];
    store
        .write_at(&h.encode(), off)
        .map_err(io_err(file, "write header", off))?;
    store.sync().map_err(io_err(file, "sync header", off))
}
