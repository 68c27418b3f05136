//! The page store: the contents of the dumped address spaces, as a stream of
//! large, checksummed, optionally zstd-compressed chunks.
//!
//! ```text
//!  | stream header (kind 2, codec) | chunk frame 0 | chunk frame 1 | ... | trailer |
//!
//!  chunk frame:  | frame header (kind 2, flags) | payload: the chunk, zstd-compressed when flagged |
//!
//!  chunk (raw payload)
//!  +------------------------------------+----------------------------+-----------+
//!  | page data                          | index: postcard(ChunkHeader)| index len |
//!  | the Data runs' pages, in run order | owner, runs [(vaddr,       | u32 LE    |
//!  | nr_pages * 4096 bytes each         |   nr_pages, Data|Zero)]    |           |
//!  +------------------------------------+----------------------------+-----------+
//! ```
//!
//! * Each chunk is self-describing: it names the address space it belongs
//!   to ([`PageOwner`]) and the runs of pages it covers, so a restore applies
//!   chunks as they arrive, over a file or a network stream, without seeking
//!   and without an index elsewhere.
//! * `Zero` runs take no bytes: restore knows those pages are zero, as
//!   opposed to pages the image says nothing about.
//! * The index follows the data so the writer fills a chunk in place and
//!   seals it by appending the index: no copy of the page data.
//! * A chunk holds up to [`DEFAULT_CHUNK_SIZE`] bytes of data by default and
//!   never more than [`MAX_CHUNK_SIZE`]. Encoding a chunk is a pure function
//!   ([`encode_chunk`], [`ChunkEncoder`]) so several threads can compress
//!   chunks that one [`PageWriter`] then writes in order.
//! * **A later run wins.** The same page may appear in several chunks
//!   (pre-copy: copied while the process ran, then again after it was
//!   written): restore applies chunks in stream order, so the last run that
//!   covers a page decides its contents, and a `Zero` run makes a page zero
//!   even where an earlier run wrote data. [`PageRanges`] is the bookkeeping
//!   both sides use for it.
//! * A restore may write pages as chunks arrive but must not resume anything
//!   until [`PageReader::next_chunk`] has returned `Ok(None)`, which happens
//!   only after the trailer was verified.

mod chunk;
mod ranges;
mod reader;
mod slice;
mod writer;

use serde::{Deserialize, Serialize};

pub use chunk::{encode_chunk, ChunkEncoder, ChunkHeader, EncodedChunk};
pub use ranges::PageRanges;
pub use reader::{OwnedPageChunk, PageChunk, PageReader, PageRunRef, PageRuns};
pub use slice::PageSlice;
pub use writer::{decompress_stream, PageStats, PageWriter, PageWriterOptions};

/// Bytes per page (x86-64).
pub const PAGE_SIZE: usize = 4096;
/// Page data per chunk by default.
pub const DEFAULT_CHUNK_SIZE: usize = 4 << 20;
/// Page data per chunk at most.
pub const MAX_CHUNK_SIZE: usize = 32 << 20;
/// Runs per chunk at most, so a chunk's index stays small.
pub const MAX_RUNS_PER_CHUNK: usize = 16384;

/// Whose pages a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PageOwner {
    /// The private memory of a process's address space; run addresses are
    /// virtual addresses.
    Mm { pid: i32 },
    /// A shared memory object ([`crate::VmaKind::Shmem`] or `Memfd` id);
    /// run addresses are byte offsets in the object.
    Shmem { id: u64 },
    /// Pages of a process's private memory copied *before* the freeze, while
    /// it ran (pre-copy); run addresses are virtual addresses. Restore
    /// applies them only where the image's `Vma` records say anonymous pages
    /// belong (the rest is dropped: the mapping went away before the freeze),
    /// and any later run for the same page supersedes them.
    PreCopy { pid: i32 },
}

impl PageOwner {
    /// The process whose address space the pages belong to (`Mm` and
    /// `PreCopy`), `None` for a shared memory object.
    pub fn pid(&self) -> Option<i32> {
        match self {
            PageOwner::Mm { pid } | PageOwner::PreCopy { pid } => Some(*pid),
            PageOwner::Shmem { .. } => None,
        }
    }
}

/// A run of consecutive pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Page-aligned address of the first page.
    pub vaddr: u64,
    pub nr_pages: u32,
    pub kind: RunKind,
}

/// What a run's pages hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunKind {
    /// The pages are in the chunk's data.
    Data,
    /// The pages are all zero; nothing is stored.
    Zero,
}

impl PageRun {
    /// Bytes of the chunk's data this run takes.
    fn data_len(&self) -> u64 {
        match self.kind {
            RunKind::Data => u64::from(self.nr_pages) * PAGE_SIZE as u64,
            RunKind::Zero => 0,
        }
    }

    /// Why this run is not valid, if it is not.
    fn check(&self) -> Option<&'static str> {
        if self.nr_pages == 0 {
            return Some("a run of no pages");
        }
        if self.vaddr % PAGE_SIZE as u64 != 0 {
            return Some("a run at an address that is not page-aligned");
        }
        let len = u64::from(self.nr_pages) * PAGE_SIZE as u64;
        if self.vaddr.checked_add(len).is_none() {
            return Some("a run past the end of the address space");
        }
        None
    }
}
