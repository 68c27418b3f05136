//! The one error type of the disk format: [`DiskError`].
//!
//! Each way a delta file, a chain manifest or a chain can be wrong has its own
//! variant, and each message is one line naming the file and the offset or
//! BAT entry. The same values serve as the findings of [`crate::disk::check`]:
//! opening stops at the first problem, checking lists them all.

use std::io;

use super::DeltaId;
use crate::version::Version;

/// Everything that can go wrong with a disk image.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The storage under a file failed.
    #[error("{file}: {op} at offset {offset}: {source}")]
    Io {
        file: String,
        op: &'static str,
        offset: u64,
        source: io::Error,
    },

    /// The file ends before a structure it must hold.
    #[error("{file}: truncated: {len} bytes, the {what} needs {need}")]
    Truncated {
        file: String,
        len: u64,
        need: u64,
        what: &'static str,
    },

    /// Neither header slot starts with the delta magic.
    #[error("{file}: not a cr disk delta: magic at offset {offset} is {found:02x?}")]
    BadMagic {
        file: String,
        offset: u64,
        found: [u8; 8],
    },

    /// The file was written by a format version this build cannot read.
    #[error(
        "{file}: disk format {found} is not supported: this cr reads {}.0 to {supported}",
        supported.major
    )]
    UnsupportedVersion {
        file: String,
        found: Version,
        supported: Version,
    },

    /// No header slot has a matching crc32c.
    #[error("{file}: header at offset {offset}: checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum {
        file: String,
        offset: u64,
        stored: u32,
        computed: u32,
    },

    /// The cluster size is not a power of two within the bounds.
    #[error("{file}: cluster size {size} is not a power of two from {min} to {max}")]
    BadClusterSize {
        file: String,
        size: u64,
        min: u32,
        max: u32,
    },

    /// The virtual size is zero, not a multiple of 512 or over the cap.
    #[error("{file}: virtual size {size} is not a non-zero multiple of 512 up to {max}")]
    BadVirtualSize { file: String, size: u64, max: u64 },

    /// Flag bits this version does not know (or reserved bytes not zero).
    #[error("{file}: header at offset {offset}: unknown flags or reserved bits {bits:#x}")]
    UnknownFlags {
        file: String,
        offset: u64,
        bits: u64,
    },

    /// The BAT region is misaligned, overlaps the header or runs past the end.
    #[error("{file}: BAT region {offset}..{end} is not 4096-aligned after the header and inside the file ({file_len} bytes)")]
    BatRegion {
        file: String,
        offset: u64,
        end: u64,
        file_len: u64,
    },

    /// The BAT has fewer entries than the virtual size has clusters.
    #[error(
        "{file}: BAT of {blocks} blocks holds {capacity} entries, the virtual size needs {needed}"
    )]
    BatTooSmall {
        file: String,
        blocks: u32,
        capacity: u64,
        needed: u64,
    },

    /// Neither copy of a BAT block has a matching crc32c.
    #[error("{file}: BAT block {block} at offset {offset}: checksum mismatch in both copies")]
    BatChecksum {
        file: String,
        block: u32,
        offset: u64,
    },

    /// A BAT block with a good checksum carries another block's index.
    #[error("{file}: BAT block {block} at offset {offset} says it is block {found}")]
    BatBlockIndex {
        file: String,
        block: u32,
        offset: u64,
        found: u32,
    },

    /// A BAT entry points at a cluster past the end of the file.
    #[error("{file}: BAT entry {entry} points at cluster {cluster}, past the end ({file_clusters} whole clusters)")]
    BatEntryPastEnd {
        file: String,
        entry: u64,
        cluster: u32,
        file_clusters: u64,
    },

    /// A BAT entry points into the header or the BAT itself.
    #[error(
        "{file}: BAT entry {entry} points at cluster {cluster}, which holds the header or the BAT"
    )]
    BatEntryInMetadata {
        file: String,
        entry: u64,
        cluster: u32,
    },

    /// Two BAT entries point at the same data cluster.
    #[error("{file}: BAT entries {first} and {entry} both point at cluster {cluster}")]
    BatEntryShared {
        file: String,
        first: u64,
        entry: u64,
        cluster: u32,
    },

    /// A BAT entry past the virtual size is allocated.
    #[error("{file}: BAT entry {entry} is allocated but the virtual size has {virtual_clusters} clusters")]
    BatEntryBeyondSize {
        file: String,
        entry: u64,
        virtual_clusters: u64,
    },

    /// A BAT entry was written in a generation the header has not reached.
    #[error("{file}: BAT entry {entry} has generation {generation}, newer than the header's {header_generation}")]
    BatEntryGeneration {
        file: String,
        entry: u64,
        generation: u32,
        header_generation: u32,
    },

    /// The chain manifest is shorter than its header or its declared length.
    #[error("{file}: manifest truncated: {len} bytes, needs {need}")]
    ManifestTruncated { file: String, len: u64, need: u64 },

    /// The chain manifest does not start with its magic.
    #[error("{file}: not a cr chain manifest: magic at offset 0 is {found:02x?}")]
    ManifestMagic { file: String, found: [u8; 8] },

    /// The manifest's crc32c does not match.
    #[error(
        "{file}: manifest checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
    )]
    ManifestChecksum {
        file: String,
        stored: u32,
        computed: u32,
    },

    /// Bytes follow the manifest's declared payload.
    #[error("{file}: {extra} bytes after the manifest at offset {offset}")]
    ManifestTrailing {
        file: String,
        offset: u64,
        extra: u64,
    },

    /// The manifest payload is not valid postcard.
    #[error("{file}: cannot decode manifest at offset {offset}: {source}")]
    ManifestDecode {
        file: String,
        offset: u64,
        source: postcard::Error,
    },

    /// A manifest could not be encoded.
    #[error("cannot encode chain manifest: {source}")]
    ManifestEncode { source: postcard::Error },

    /// The manifest names no delta.
    #[error("{file}: the chain has no delta")]
    EmptyChain { file: String },

    /// A delta's parent is itself or a delta above it.
    #[error(
        "{file}: manifest entry {entry} ({id}): parent {parent} is itself or above it: a cycle"
    )]
    ChainCycle {
        file: String,
        entry: usize,
        id: DeltaId,
        parent: DeltaId,
    },

    /// A delta's parent is not the delta listed below it.
    #[error(
        "{file}: manifest entry {entry} ({id}): parent is {}, expected {}",
        opt(parent),
        opt(expected)
    )]
    ChainGap {
        file: String,
        entry: usize,
        id: DeltaId,
        parent: Option<DeltaId>,
        expected: Option<DeltaId>,
    },

    /// Two manifest entries share an id or a file name.
    #[error("{file}: manifest entries {first} and {entry} both name {what}")]
    DuplicateDelta {
        file: String,
        first: usize,
        entry: usize,
        what: String,
    },

    /// Only the top delta may be writable.
    #[error("{file}: manifest entry {entry} is writable but is not the top of the chain")]
    WritableBelowTop { file: String, entry: usize },

    /// A delta file name that is not a plain name in the chain directory.
    #[error("{file}: manifest entry {entry}: delta file name {name:?} is not a plain file name")]
    BadDeltaFileName {
        file: String,
        entry: usize,
        name: String,
    },

    /// A delta file's header carries another id than its manifest entry.
    #[error("{file}: delta id is {found}, the manifest says {expected}")]
    DeltaIdMismatch {
        file: String,
        expected: DeltaId,
        found: DeltaId,
    },

    /// Deltas of one chain must share the cluster size.
    #[error("{file}: cluster size {found}, the chain uses {expected}")]
    ClusterSizeMismatch {
        file: String,
        expected: u32,
        found: u32,
    },

    /// A delta is smaller than the one below it: the chain would shrink.
    #[error(
        "{file}: virtual size {size} is smaller than {below_size} of the delta below ({below})"
    )]
    ChainShrinks {
        file: String,
        size: u64,
        below: String,
        below_size: u64,
    },

    /// A read or write outside the virtual disk.
    #[error("{len} bytes at offset {offset} are outside the virtual disk of {size} bytes")]
    OutOfRange { offset: u64, len: u64, size: u64 },

    /// A change to a chain or delta that is read-only.
    #[error("{what}: the chain is read-only")]
    ReadOnly { what: &'static str },

    /// Shrinking a disk is refused.
    #[error("cannot shrink the disk from {current} to {requested} bytes")]
    Shrink { current: u64, requested: u64 },

    /// A delta ran out of physical cluster numbers (u32).
    #[error("{file}: no free cluster number left")]
    DeltaFull { file: String },

    /// The write generation counter (u32) is exhausted.
    #[error("{file}: no write generation left")]
    GenerationOverflow { file: String },

    /// A merge names a delta that has none below it, or none at all.
    #[error(
        "cannot merge delta {index}: the chain has {len} deltas and the bottom one has none below"
    )]
    BadMergeIndex { index: usize, len: usize },

    /// A snapshot, grow or second merge while a merge runs.
    #[error("{what} refused: a merge of delta {upper} is in progress")]
    MergeInProgress { what: &'static str, upper: usize },

    /// A merge step or finish with no merge begun.
    #[error("no merge in progress")]
    NoMerge,

    /// A snapshot asked for that is not in the chain.
    #[error("no delta {id} in the chain")]
    NoSuchDelta { id: DeltaId },
}

fn opt(id: &Option<DeltaId>) -> String {
    id.map_or_else(|| "none".to_string(), |i| i.to_string())
}

/// Shorthand for the disk module.
pub type Result<T, E = DiskError> = std::result::Result<T, E>;

/// An [`io::Error`] with the file, operation and offset.
pub(crate) fn io_err<'a>(
    file: &'a str,
    op: &'static str,
    offset: u64,
) -> impl FnOnce(io::Error) -> DiskError + 'a {
    move |source| DiskError::Io {
        file: file.to_string(),
        op,
        offset,
        source,
    }
}
