//! cr-formats: everything cr keeps as bytes at rest or sends on the wire, and
//! nothing that makes a system call. Every decoder here survives arbitrary
//! bytes: it returns a [`FormatError`] naming what and where, never panics,
//! and never allocates more than [`MAX_FRAME_LEN`] for a hostile length.
//!
//! A checkpoint image is two streams, written front to back to any
//! [`std::io::Write`] (a file, a QUIC stream) and read front to back from any
//! [`std::io::Read`]: neither side seeks or holds the whole image.
//!
//! ```text
//!   records.img  | header | Manifest | Process | Thread | Vma ... | File | Fd ... | trailer |
//!   pages.img    | header | chunk (owner, runs, page data; zstd) | chunk ... | trailer |
//!
//!   every frame: | kind flags tag seq stored-len raw-len payload-crc header-crc | payload |
//! ```
//!
//! * [`frame`]: stream header, frames, trailer; checksums, sequence numbers,
//!   the size cap. Shared by both streams.
//! * [`version`]: the format version and the compatibility rule.
//! * [`schema`]: the typed records ([`Record`]), serde + postcard.
//! * [`records`]: [`RecordWriter`], [`RecordReader`], [`read_records`].
//! * [`pages`]: [`PageWriter`], [`PageReader`], [`encode_chunk`].
//! * [`layout`]: file names in an image directory.
//!
//! * [`disk`]: ploop-like disk images: delta files, chains, snapshots,
//!   merge, dirty-cluster tracking (`docs/disk-format.md`).
//!
//! `docs/image-format.md` is the specification of the checkpoint image.

pub mod blob;
pub mod disk;
pub mod error;
pub mod frame;
pub mod layout;
pub mod pages;
pub mod records;
pub mod schema;
pub mod version;

pub use blob::{BlobReader, BlobWriter, CompressGate, GateFigures, BLOB_FRAME};
pub use disk::{
    check_chain, check_delta, Chain, ChainDir, ChainManifest, CheckReport, DeltaEntry, DeltaId,
    DiskError, FsDir, Mark, MemDir, MergeOutcome, MergeProgress, Storage, DEFAULT_CLUSTER_SIZE,
    DISK_FORMAT_VERSION,
};
pub use error::{FormatError, FramePart, Result};
pub use frame::{
    Codec, Compression, FrameInfo, FrameKind, FrameWriter, StreamCheck, StreamHeader, StreamKind,
    StreamStats, FRAME_HEADER_LEN, MAGIC, MAX_FRAME_LEN, STREAM_HEADER_LEN, TRAILER_LEN,
};
pub use pages::{
    decompress_stream, encode_chunk, ChunkEncoder, ChunkHeader, EncodedChunk, OwnedPageChunk,
    PageChunk, PageOwner, PageRanges, PageReader, PageRun, PageRunRef, PageSlice, PageStats,
    PageWriter, PageWriterOptions, RunKind, PAGE_SIZE,
};
pub use records::{read_records, RecordEntry, RecordImage, RecordReader, RecordWriter};
pub use schema::*;
pub use version::{Version, FORMAT_VERSION};
