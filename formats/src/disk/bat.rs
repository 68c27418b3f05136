//! The block allocation table: virtual cluster -> physical cluster, in blocks
//! of 510 entries, each block stored twice so that rewriting it is atomic.
//!
//! ```text
//!   BAT region (at the header's BAT offset, BAT blocks x 8 KiB):
//!   | block 0 copy A | block 0 copy B | block 1 copy A | block 1 copy B | ...
//!
//!   one copy (4096 bytes, little endian):
//!      0  8  entry 0:  physical cluster u32 (0 = not in this delta)
//!                      generation u32 (when it was last written)
//!      8  8  entry 1
//!            ...
//!   4072  8  entry 509
//!   4080  4  block index (which block this is)
//!   4084  8  seq          the valid copy with the higher seq wins
//!   4092  4  crc32c       of bytes 0..4092
//! ```
//!
//! A copy of all zeros was never written and means "no entries, seq 0".
//! Entry `v` of the table lives in block `v / 510`, slot `v % 510`. Physical
//! cluster `p` is the file range `p * cluster_size .. (p + 1) * cluster_size`;
//! it must lie past the header, outside the BAT region and inside the file.
//!
//! A block is rewritten into the copy that does not hold its current version,
//! with `seq + 1`; a torn write spoils only that copy, whose checksum then
//! fails, and the reader keeps the other: the old mapping. Growing the table
//! past its capacity writes a larger one at the end of the file, syncs, and
//! switches the header to it (see [`super::delta`]).

use super::error::{DiskError, Result};

/// Bytes in one copy of a BAT block.
pub const BAT_BLOCK_LEN: usize = 4096;
/// Bytes of a block's two copies.
pub const BAT_PAIR_LEN: u64 = 2 * BAT_BLOCK_LEN as u64;
/// Entries in one BAT block.
pub const ENTRIES_PER_BLOCK: usize = 510;
const TAIL: usize = ENTRIES_PER_BLOCK * 8;

/// One BAT entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BatEntry {
    /// Physical cluster in the file; 0: the virtual cluster is not here.
    pub cluster: u32,
    /// The write generation of the last write to this cluster.
    pub generation: u32,
}

impl BatEntry {
    pub fn is_allocated(&self) -> bool {
        self.cluster != 0
    }
}

/// BAT blocks needed for `entries` entries.
pub fn blocks_for(entries: u64) -> u64 {
    entries.div_ceil(ENTRIES_PER_BLOCK as u64).max(1)
}

/// Encodes one copy of block `index`.
pub fn encode_block(index: u32, seq: u64, entries: &[BatEntry]) -> Vec<u8> {
    let mut b = vec![0u8; BAT_BLOCK_LEN];
    for (i, e) in entries.iter().take(ENTRIES_PER_BLOCK).enumerate() {
        b[i * 8..i * 8 + 4].copy_from_slice(&e.cluster.to_le_bytes());
        let generation = if e.is_allocated() { e.generation } else { 0 };
        b[i * 8 + 4..i * 8 + 8].copy_from_slice(&generation.to_le_bytes());
    }
    b[TAIL..TAIL + 4].copy_from_slice(&index.to_le_bytes());
    b[TAIL + 4..TAIL + 12].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&b[..BAT_BLOCK_LEN - 4]);
    b[BAT_BLOCK_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// What one copy of a block holds.
#[derive(Debug)]
enum Copy {
    Valid { seq: u64, entries: Vec<BatEntry> },
    BadChecksum,
    BadIndex(u32),
}

fn decode_copy(b: &[u8], index: u32) -> Copy {
    if b.iter().all(|&x| x == 0) {
        return Copy::Valid {
            seq: 0,
            entries: vec![BatEntry::default(); ENTRIES_PER_BLOCK],
        };
    }
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if u32_at(BAT_BLOCK_LEN - 4) != crc32c::crc32c(&b[..BAT_BLOCK_LEN - 4]) {
        return Copy::BadChecksum;
    }
    if u32_at(TAIL) != index {
        return Copy::BadIndex(u32_at(TAIL));
    }
    let seq = u64::from(u32_at(TAIL + 4)) | (u64::from(u32_at(TAIL + 8)) << 32);
    let entries = (0..ENTRIES_PER_BLOCK)
        .map(|i| {
            let cluster = u32_at(i * 8);
            let generation = if cluster == 0 { 0 } else { u32_at(i * 8 + 4) };
            BatEntry {
                cluster,
                generation,
            }
        })
        .collect();
    Copy::Valid { seq, entries }
}

/// The current version of a block: its entries, which copy holds it (0 or
/// 1) and its seq.
#[derive(Debug)]
pub struct DecodedBlock {
    pub entries: Vec<BatEntry>,
    pub slot: u8,
    pub seq: u64,
    /// The other copy is damaged: a torn write (or damage to the spare).
    pub other_damaged: bool,
}

/// Decodes the two copies (`pair`, 8 KiB) of block `index` found at `offset`.
pub fn decode_block(file: &str, index: u32, offset: u64, pair: &[u8]) -> Result<DecodedBlock> {
    let a = decode_copy(&pair[..BAT_BLOCK_LEN], index);
    let b = decode_copy(&pair[BAT_BLOCK_LEN..2 * BAT_BLOCK_LEN], index);
    match (a, b) {
        (
            Copy::Valid {
                seq: sa,
                entries: ea,
            },
            Copy::Valid {
                seq: sb,
                entries: eb,
            },
        ) => {
            if sb > sa {
                Ok(DecodedBlock {
                    entries: eb,
                    slot: 1,
                    seq: sb,
                    other_damaged: false,
                })
            } else {
                Ok(DecodedBlock {
                    entries: ea,
                    slot: 0,
                    seq: sa,
                    other_damaged: false,
                })
            }
        }
        (Copy::Valid { seq, entries }, _) => Ok(DecodedBlock {
            entries,
            slot: 0,
            seq,
            other_damaged: true,
        }),
        (_, Copy::Valid { seq, entries }) => Ok(DecodedBlock {
            entries,
            slot: 1,
            seq,
            other_damaged: true,
        }),
        (Copy::BadIndex(found), _) | (_, Copy::BadIndex(found)) => Err(DiskError::BatBlockIndex {
            file: file.to_string(),
            block: index,
            offset,
            found,
        }),
        _ => Err(DiskError::BatChecksum {
            file: file.to_string(),
            block: index,
            offset,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trip_and_copy_choice() {
        let mut entries = vec![BatEntry::default(); ENTRIES_PER_BLOCK];
        entries[3] = BatEntry {
            cluster: 9,
            generation: 2,
        };
        let new = encode_block(7, 5, &entries);
        let old = encode_block(7, 4, &[]);
        let mut pair = [old.clone(), new.clone()].concat();
        let d = decode_block("f", 7, 0, &pair).unwrap();
        assert_eq!((d.slot, d.seq, d.entries[3]), (1, 5, entries[3]));
        // A torn newer copy: the older one stands.
        pair[BAT_BLOCK_LEN + 100] ^= 1;
        let d = decode_block("f", 7, 0, &pair).unwrap();
        assert_eq!((d.slot, d.seq, d.entries[3]), (0, 4, BatEntry::default()));
        pair[5] ^= 1;
        assert!(matches!(
            decode_block("f", 7, 0, &pair),
            Err(DiskError::BatChecksum { block: 7, .. })
        ));
        let pair = [new, vec![0xff; BAT_BLOCK_LEN]].concat();
        assert!(matches!(
            decode_block("f", 8, 0, &pair),
            Err(DiskError::BatBlockIndex {
                block: 8,
                found: 7,
                ..
            })
        ));
    }
}
