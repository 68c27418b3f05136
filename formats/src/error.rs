//! The one error type of the image format: [`FormatError`].
//!
//! Each way a stream can be wrong has its own variant, and each message is one
//! line that names what was wrong and where: the byte offset in the stream, the
//! frame's sequence number, and the record kind when the frame header that
//! carries it was intact. Decoders return these for any input; they never
//! panic.

use std::io;

use crate::version::Version;

/// Everything that can go wrong while writing or reading an image stream.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The first 8 bytes are not [`crate::MAGIC`]: not a cr image stream.
    #[error("not a cr image stream: magic at offset 0 is {found:02x?}")]
    BadMagic { found: [u8; 8] },

    /// The stream was written by a format version this build cannot read.
    #[error(
        "image format {found} is not supported: this cr reads {}.0 to {supported}",
        supported.major
    )]
    UnsupportedVersion { found: Version, supported: Version },

    /// The stream header's crc32c does not match its bytes.
    #[error("stream header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },

    /// The stream header is intact but holds a value this version never writes.
    #[error("stream header: {what}")]
    BadHeader { what: &'static str },

    /// A frame header or payload does not match its crc32c.
    #[error(
        "frame {seq} at offset {offset}{}: {part} checksum mismatch",
        kind.map(|k| format!(" ({k})")).unwrap_or_default()
    )]
    FrameChecksum {
        seq: u32,
        offset: u64,
        part: FramePart,
        /// The record kind (or "page chunk", "trailer") when the frame header
        /// was intact, so the damage can be pinned on a record.
        kind: Option<&'static str>,
    },

    /// The stream ended before the trailer: an image cut short is refused.
    #[error("stream truncated at offset {offset}: {expected} missing")]
    Truncated { offset: u64, expected: &'static str },

    /// Frames arrive out of order, or one was dropped or repeated.
    #[error("frame at offset {offset}: sequence number {found}, expected {expected}")]
    Sequence {
        expected: u32,
        found: u32,
        offset: u64,
    },

    /// A frame header is intact but holds a value this version never writes.
    #[error("frame {seq} at offset {offset}: {what}")]
    BadFrame { seq: u32, offset: u64, what: String },

    /// A record frame's payload is not a valid postcard-encoded record.
    #[error("frame {seq} at offset {offset} ({kind}): cannot decode record: {source}")]
    Decode {
        seq: u32,
        offset: u64,
        kind: &'static str,
        source: postcard::Error,
    },

    /// A record could not be encoded (never happens for the schema types,
    /// whose fields all encode).
    #[error("cannot encode {kind} record: {source}")]
    Encode {
        kind: &'static str,
        source: postcard::Error,
    },

    /// A declared or requested size is over the format's cap; nothing of that
    /// size was allocated.
    #[error("{what} at offset {offset} is {len} bytes, over the cap of {max}")]
    TooLarge {
        what: &'static str,
        offset: u64,
        len: u64,
        max: u64,
    },

    /// The trailer disagrees with the frames that preceded it.
    #[error("trailer at offset {offset}: {what} is {stored}, the stream has {computed}")]
    TrailerMismatch {
        offset: u64,
        what: &'static str,
        stored: u64,
        computed: u64,
    },

    /// Bytes follow the trailer.
    #[error("data after the trailer at offset {offset}")]
    TrailingData { offset: u64 },

    /// A zstd-compressed payload does not decompress to its declared size.
    #[error("frame {seq} at offset {offset}: cannot decompress: {reason}")]
    Decompress {
        seq: u32,
        offset: u64,
        reason: String,
    },

    /// A zstd context could not be created or failed while compressing.
    #[error("zstd compression failed: {reason}")]
    Compress { reason: String },

    /// A page chunk's index disagrees with its data.
    #[error("page chunk in frame {seq} at offset {offset}: {what}")]
    BadChunk {
        seq: u32,
        offset: u64,
        what: &'static str,
    },

    /// The records stream does not start with exactly one manifest.
    #[error("frame {seq} at offset {offset}: {what}")]
    Manifest {
        seq: u32,
        offset: u64,
        what: &'static str,
    },

    /// Two streams (or a stream and its manifest) belong to different images.
    #[error("image id mismatch: expected {expected:#018x}, found {found:#018x}")]
    ImageMismatch { expected: u64, found: u64 },

    /// Pages handed to the writer are not whole, aligned pages.
    #[error("pages at {vaddr:#x} ({len} bytes) are not whole pages at a page-aligned address")]
    Unaligned { vaddr: u64, len: u64 },

    /// The reader was called again after it reported an error.
    #[error("the stream already failed at offset {offset}; its reader cannot go on")]
    Failed { offset: u64 },

    /// A chunk handed to the page writer disagrees with its own index.
    #[error("chunk data is {data_len} bytes but its data runs cover {run_bytes}")]
    ChunkMismatch { data_len: u64, run_bytes: u64 },

    /// The underlying reader or writer failed.
    #[error("i/o error at offset {offset}: {source}")]
    Io { offset: u64, source: io::Error },
}

/// Which part of a frame a checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    Header,
    Payload,
}

impl std::fmt::Display for FramePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FramePart::Header => "header",
            FramePart::Payload => "payload",
        })
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;
