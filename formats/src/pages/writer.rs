//! [`PageWriter`]: batches runs of pages into chunks and writes them as they
//! fill.
//!
//! Page data is copied once, into the open chunk's buffer; the chunk's index
//! is appended to that buffer and the whole is compressed (or written as it
//! is) in one call. Buffers are reused from chunk to chunk: no allocation per
//! page or per chunk once the first chunk is out.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::chunk::{ChunkEncoder, ChunkHeader, EncodedChunk};
use super::{
    PageOwner, PageRun, RunKind, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_RUNS_PER_CHUNK, PAGE_SIZE,
};
use crate::error::{FormatError, Result};
use crate::frame::{
    checksum, Codec, Compression, FrameInfo, FrameKind, FrameWriter, StreamHeader, StreamKind,
    StreamStats,
};

/// How a [`PageWriter`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageWriterOptions {
    /// The image the stream belongs to (the manifest's `image_id`).
    pub image_id: u64,
    pub compression: Compression,
    /// Page data per chunk; rounded down to whole pages and capped at
    /// [`MAX_CHUNK_SIZE`].
    pub chunk_size: usize,
    /// Look at every page and store all-zero ones as `Zero` runs.
    pub skip_zero_pages: bool,
}

impl PageWriterOptions {
    /// Uncompressed, 4 MiB chunks, zero pages skipped.
    pub fn new(image_id: u64) -> Self {
        PageWriterOptions {
            image_id,
            compression: Compression::None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            skip_zero_pages: true,
        }
    }
}

/// What went into (or came out of) a pages stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PageStats {
    pub chunks: u64,
    pub data_pages: u64,
    pub zero_pages: u64,
    /// Chunk bytes before compression (data and indexes).
    pub raw_bytes: u64,
    /// Chunk bytes in the stream.
    pub stored_bytes: u64,
}

impl PageStats {
    pub(super) fn add(&mut self, info: &FrameInfo, data_pages: u64, zero_pages: u64) {
        self.chunks += 1;
        self.data_pages += data_pages;
        self.zero_pages += zero_pages;
        self.raw_bytes += u64::from(info.raw_len);
        self.stored_bytes += u64::from(info.stored_len);
    }
}

/// Writes a pages stream to `W`.
pub struct PageWriter<W: Write> {
    frames: FrameWriter<W>,
    encoder: ChunkEncoder,
    chunk_size: usize,
    skip_zero_pages: bool,
    /// The open chunk: whose pages, its runs, its page data.
    owner: Option<PageOwner>,
    runs: Vec<PageRun>,
    data: Vec<u8>,
    stats: PageStats,
}

impl<W: Write> PageWriter<W> {
    /// Writes the stream header.
    pub fn new(w: W, options: PageWriterOptions) -> Result<Self> {
        let pages = (options.chunk_size / PAGE_SIZE).clamp(1, MAX_CHUNK_SIZE / PAGE_SIZE);
        let header = StreamHeader::new(
            StreamKind::Pages,
            options.compression.codec(),
            options.image_id,
        );
        Ok(PageWriter {
            frames: FrameWriter::new(w, header)?,
            encoder: ChunkEncoder::new(options.compression)?,
            chunk_size: pages * PAGE_SIZE,
            skip_zero_pages: options.skip_zero_pages,
            owner: None,
            runs: Vec::new(),
            data: Vec::new(),
            stats: PageStats::default(),
        })
    }

    pub fn header(&self) -> &StreamHeader {
        self.frames.header()
    }

    /// Lets `gate` decide chunk by chunk whether the stream's compression
    /// is used (adaptive compression, [`crate::CompressGate`]).
    pub fn set_gate(&mut self, gate: std::sync::Arc<crate::blob::CompressGate>) {
        self.encoder.set_gate(gate);
    }

    /// Adds whole pages starting at page-aligned `vaddr`. All-zero pages
    /// become `Zero` runs unless the options say otherwise.
    pub fn write_pages(&mut self, owner: PageOwner, vaddr: u64, data: &[u8]) -> Result<()> {
        check_range(vaddr, data.len() as u64, data.len() % PAGE_SIZE == 0)?;
        if !self.skip_zero_pages {
            return self.push_data(owner, vaddr, data);
        }
        let mut pages = data
            .chunks_exact(PAGE_SIZE)
            .map(is_zero)
            .enumerate()
            .peekable();
        while let Some((first, zero)) = pages.next() {
            let mut end = first + 1;
            while let Some((i, _)) = pages.next_if(|&(_, z)| z == zero) {
                end = i + 1;
            }
            let addr = vaddr + (first * PAGE_SIZE) as u64;
            if zero {
                self.push_zero(owner, addr, (end - first) as u64)?;
            } else {
                self.push_data(owner, addr, &data[first * PAGE_SIZE..end * PAGE_SIZE])?;
            }
        }
        Ok(())
    }

    /// Records `nr_pages` zero pages at page-aligned `vaddr`; stores nothing
    /// but the run.
    pub fn write_zero_pages(&mut self, owner: PageOwner, vaddr: u64, nr_pages: u64) -> Result<()> {
        let len = nr_pages
            .checked_mul(PAGE_SIZE as u64)
            .ok_or(FormatError::Unaligned {
                vaddr,
                len: u64::MAX,
            })?;
        check_range(vaddr, len, true)?;
        self.push_zero(owner, vaddr, nr_pages)
    }

    /// Writes a chunk encoded elsewhere (by [`super::encode_chunk`] on
    /// another thread), after the open chunk.
    pub fn write_encoded(&mut self, chunk: &EncodedChunk) -> Result<FrameInfo> {
        self.flush_chunk()?;
        if chunk.compressed && self.frames.header().codec != Codec::Zstd {
            return Err(FormatError::Compress {
                reason: "a compressed chunk for a stream without compression".into(),
            });
        }
        let info = self.frames.write_frame(
            FrameKind::PageChunk,
            0,
            chunk.compressed,
            chunk.raw_len,
            &chunk.payload,
            chunk.checksum,
        )?;
        self.stats.add(&info, chunk.data_pages, chunk.zero_pages);
        Ok(info)
    }

    /// Ends the open chunk now and writes it.
    pub fn flush_chunk(&mut self) -> Result<()> {
        let Some(owner) = self.owner else {
            return Ok(());
        };
        if self.runs.is_empty() {
            return Ok(());
        }
        let header = ChunkHeader {
            owner,
            runs: std::mem::take(&mut self.runs),
        };
        let compressed = self.encoder.seal(&header, &mut self.data)?;
        let payload: &[u8] = if compressed {
            self.encoder.compressed()
        } else {
            &self.data
        };
        let info = self.frames.write_frame(
            FrameKind::PageChunk,
            0,
            compressed,
            self.data.len(),
            payload,
            checksum(payload),
        )?;
        self.stats
            .add(&info, header.data_pages(), header.zero_pages());
        self.data.clear();
        self.runs = header.runs;
        self.runs.clear();
        Ok(())
    }

    /// What has been written so far.
    pub fn stats(&self) -> PageStats {
        self.stats
    }

    /// Writes the open chunk and the trailer, and flushes.
    pub fn finish(mut self) -> Result<(StreamStats, PageStats)> {
        self.flush_chunk()?;
        let stats = self.stats;
        Ok((self.frames.finish()?, stats))
    }

    fn push_data(&mut self, owner: PageOwner, mut vaddr: u64, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            self.open(owner)?;
            if self.data.capacity() < self.chunk_size {
                // Room for the data and a typical index, so sealing does not
                // reallocate.
                self.data
                    .reserve_exact(self.chunk_size + INDEX_ROOM - self.data.len());
            }
            let take = (self.chunk_size - self.data.len()).min(bytes.len());
            self.add_run(vaddr, (take / PAGE_SIZE) as u64, RunKind::Data);
            self.data.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            vaddr += take as u64;
            if self.data.len() >= self.chunk_size || self.runs.len() >= MAX_RUNS_PER_CHUNK {
                self.flush_chunk()?;
            }
        }
        Ok(())
    }

    fn push_zero(&mut self, owner: PageOwner, mut vaddr: u64, mut nr_pages: u64) -> Result<()> {
        while nr_pages > 0 {
            self.open(owner)?;
            let n = nr_pages.min(u64::from(u32::MAX));
            self.add_run(vaddr, n, RunKind::Zero);
            if self.runs.len() >= MAX_RUNS_PER_CHUNK {
                self.flush_chunk()?;
            }
            vaddr += n * PAGE_SIZE as u64;
            nr_pages -= n;
        }
        Ok(())
    }

    /// Makes the open chunk one of `owner`'s, ending another owner's.
    fn open(&mut self, owner: PageOwner) -> Result<()> {
        if self.owner != Some(owner) {
            self.flush_chunk()?;
            self.owner = Some(owner);
        }
        Ok(())
    }

    /// Appends a run to the open chunk, extending the last one when it
    /// continues it. `nr_pages` is at most `u32::MAX`.
    fn add_run(&mut self, vaddr: u64, nr_pages: u64, kind: RunKind) {
        if let Some(last) = self.runs.last_mut() {
            let end = last.vaddr + u64::from(last.nr_pages) * PAGE_SIZE as u64;
            let total = u64::from(last.nr_pages) + nr_pages;
            if last.kind == kind && end == vaddr && total <= u64::from(u32::MAX) {
                last.nr_pages = total as u32;
                return;
            }
        }
        self.runs.push(PageRun {
            vaddr,
            nr_pages: nr_pages as u32,
            kind,
        });
    }
}

/// Bytes kept free after a chunk's data for its index.
const INDEX_ROOM: usize = 64 << 10;

/// Refuses pages that are not whole, page-aligned, and inside the address
/// space.
fn check_range(vaddr: u64, len: u64, whole_pages: bool) -> Result<()> {
    let aligned = vaddr % PAGE_SIZE as u64 == 0 && whole_pages;
    if !aligned || vaddr.checked_add(len).is_none() {
        return Err(FormatError::Unaligned { vaddr, len });
    }
    Ok(())
}

/// Whether a page is all zero; looks at 64 bytes at a time so the compiler
/// can use vector instructions and still stop at the first non-zero block.
fn is_zero(page: &[u8]) -> bool {
    page.chunks(64)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Copies the pages stream `r` to `w` with every chunk stored raw (a
/// stream of codec `None`), verifying each frame, the trailer and the end
/// of the input on the way; returns the figures of what was written.
///
/// A migration sends chunks compressed when that pays, but the lazy
/// restore maps the page store and serves pages where they lie, which only
/// a raw stream allows: the destination undoes the compression as the
/// stream arrives. Chunk indexes are not parsed here (the restore checks
/// them); a raw frame's payload checksum is carried over, a decompressed
/// one's computed.
pub fn decompress_stream<R: std::io::Read, W: Write>(r: R, w: W) -> Result<StreamStats> {
    let mut frames = crate::frame::FrameReader::new(r, StreamKind::Pages)?;
    let header = StreamHeader::new(
        StreamKind::Pages,
        crate::frame::Codec::None,
        frames.header().image_id,
    );
    let mut out = FrameWriter::new(w, header)?;
    while let Some(info) = frames.next_frame()? {
        let payload = frames.payload();
        let sum = if info.compressed {
            crate::frame::checksum(payload)
        } else {
            info.checksum
        };
        out.write_frame(
            crate::frame::FrameKind::PageChunk,
            0,
            false,
            payload.len(),
            payload,
            sum,
        )?;
    }
    out.finish()
}

#[cfg(test)]
mod decompress_tests {
    use super::*;
    use crate::pages::{PageSlice, PAGE_SIZE};

    #[test]
    fn a_compressed_stream_comes_out_raw_and_usable_in_place() {
        let mut opts = PageWriterOptions::new(7);
        opts.compression = Compression::Zstd { level: 1 };
        opts.chunk_size = 16 * PAGE_SIZE;
        let mut bytes = Vec::new();
        let mut w = PageWriter::new(&mut bytes, opts).unwrap();
        let data: Vec<u8> = (0..64 * PAGE_SIZE).map(|i| (i / 512) as u8 | 1).collect();
        w.write_pages(PageOwner::Mm { pid: 1 }, 0x10000, &data)
            .unwrap();
        w.finish().unwrap();
        assert!(
            PageSlice::open(&bytes).is_err(),
            "compressed chunks are not usable in place"
        );

        let mut raw = Vec::new();
        let stats = decompress_stream(bytes.as_slice(), &mut raw).unwrap();
        assert_eq!(stats.bytes, raw.len() as u64);
        let slice = PageSlice::open(&raw).unwrap();
        let chunks = slice.verify(0..slice.len()).unwrap();
        let mut back = Vec::new();
        for c in &chunks {
            for run in c.runs() {
                back.extend_from_slice(run.data);
            }
        }
        assert_eq!(back, data);

        let mut bad = bytes.clone();
        let at = bad.len() / 2;
        bad[at] ^= 1;
        assert!(decompress_stream(bad.as_slice(), &mut Vec::new()).is_err());
        assert!(decompress_stream(&bytes[..bytes.len() - 3], &mut Vec::new()).is_err());
    }
}
