//! [`PageReader`]: verifies each chunk of a pages stream and hands out its
//! runs as slices of one reused buffer.

use std::io::Read;

use super::chunk::{parse_chunk, ChunkHeader};
use super::writer::PageStats;
use super::{PageOwner, PageRun, RunKind};
use crate::error::{FormatError, Result};
use crate::frame::{FrameInfo, FrameReader, StreamHeader, StreamKind, StreamStats};

/// Reads a pages stream.
pub struct PageReader<R: Read> {
    frames: FrameReader<R>,
    stats: PageStats,
}

/// One verified chunk, borrowed from the reader until the next call.
#[derive(Debug)]
pub struct PageChunk<'a> {
    pub frame: FrameInfo,
    pub header: ChunkHeader,
    data: &'a [u8],
}

/// One run of a chunk: `data` holds its pages, or is empty for a `Zero` run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRunRef<'a> {
    pub owner: PageOwner,
    pub vaddr: u64,
    pub nr_pages: u32,
    pub kind: RunKind,
    pub data: &'a [u8],
}

impl<R: Read> PageReader<R> {
    /// Reads the stream header.
    pub fn new(r: R) -> Result<Self> {
        Ok(PageReader {
            frames: FrameReader::new(r, StreamKind::Pages)?,
            stats: PageStats::default(),
        })
    }

    pub fn header(&self) -> &StreamHeader {
        self.frames.header()
    }

    /// The next verified chunk; `Ok(None)` only once the trailer has been
    /// verified and the input has ended. After an error every call fails.
    pub fn next_chunk(&mut self) -> Result<Option<PageChunk<'_>>> {
        let Some((frame, header, data_len)) = self.next_header()? else {
            return Ok(None);
        };
        let data = self.frames.payload().get(..data_len).unwrap_or_default();
        Ok(Some(PageChunk {
            frame,
            header,
            data,
        }))
    }

    /// The next verified chunk as an owned value, for a consumer on another
    /// thread: its buffer is the reader's own, handed over without a copy,
    /// and `spare` (an empty buffer, or one [`OwnedPageChunk::into_buffer`]
    /// gave back) takes its place. `Ok(None)` and errors as for
    /// [`Self::next_chunk`].
    pub fn next_chunk_owned(&mut self, spare: Vec<u8>) -> Result<Option<OwnedPageChunk>> {
        let Some((frame, header, data_len)) = self.next_header()? else {
            return Ok(None);
        };
        let buf = self.frames.take_payload(spare);
        if buf.len() < data_len {
            // parse_chunk checked the data fits the payload.
            self.frames.poison();
            return Err(FormatError::BadChunk {
                seq: frame.seq,
                offset: frame.offset,
                what: "data runs do not cover the chunk's data exactly",
            });
        }
        Ok(Some(OwnedPageChunk {
            frame,
            header,
            buf,
            data_len,
        }))
    }

    /// Reads and verifies the next frame and parses its chunk index;
    /// returns the index and the length of the chunk's page data.
    fn next_header(&mut self) -> Result<Option<(FrameInfo, ChunkHeader, usize)>> {
        let Some(frame) = self.frames.next_frame()? else {
            return Ok(None);
        };
        let header = match parse_chunk(self.frames.payload()) {
            Ok((header, _)) => header,
            Err(what) => {
                self.frames.poison();
                return Err(FormatError::BadChunk {
                    seq: frame.seq,
                    offset: frame.offset,
                    what,
                });
            }
        };
        self.stats
            .add(&frame, header.data_pages(), header.zero_pages());
        let data_len = header.runs.iter().map(PageRun::data_len).sum::<u64>() as usize;
        Ok(Some((frame, header, data_len)))
    }

    /// True once the trailer has been verified: every page was read.
    pub fn is_complete(&self) -> bool {
        self.frames.complete().is_some()
    }

    /// The trailer's figures, once the stream is complete.
    pub fn stream_stats(&self) -> Option<StreamStats> {
        self.frames.complete()
    }

    /// What has been read so far.
    pub fn stats(&self) -> PageStats {
        self.stats
    }
}

impl<'a> PageChunk<'a> {
    pub(crate) fn new(frame: FrameInfo, header: ChunkHeader, data: &'a [u8]) -> Self {
        PageChunk {
            frame,
            header,
            data,
        }
    }

    /// The page data of the chunk's `Data` runs, in run order.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The runs, each with its slice of the data.
    pub fn runs(&self) -> PageRuns<'_> {
        PageRuns {
            owner: self.header.owner,
            runs: self.header.runs.iter(),
            data: self.data,
        }
    }
}

/// One verified chunk that owns its bytes (see
/// [`PageReader::next_chunk_owned`]).
#[derive(Debug)]
pub struct OwnedPageChunk {
    pub frame: FrameInfo,
    pub header: ChunkHeader,
    /// The raw chunk: page data first, then the index.
    buf: Vec<u8>,
    data_len: usize,
}

impl OwnedPageChunk {
    /// The page data of the chunk's `Data` runs, in run order.
    pub fn data(&self) -> &[u8] {
        self.buf.get(..self.data_len).unwrap_or_default()
    }

    /// The runs, each with its slice of the data.
    pub fn runs(&self) -> PageRuns<'_> {
        PageRuns {
            owner: self.header.owner,
            runs: self.header.runs.iter(),
            data: self.data(),
        }
    }

    /// The buffer, to be handed back to [`PageReader::next_chunk_owned`].
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

/// Iterator over a chunk's runs.
pub struct PageRuns<'a> {
    owner: PageOwner,
    runs: std::slice::Iter<'a, PageRun>,
    data: &'a [u8],
}

impl<'a> Iterator for PageRuns<'a> {
    type Item = PageRunRef<'a>;

    fn next(&mut self) -> Option<PageRunRef<'a>> {
        let run = self.runs.next()?;
        // parse_chunk checked that the runs cover the data exactly.
        let (data, rest) = self
            .data
            .split_at_checked(run.data_len() as usize)
            .unwrap_or((&[], &[]));
        self.data = rest;
        Some(PageRunRef {
            owner: self.owner,
            vaddr: run.vaddr,
            nr_pages: run.nr_pages,
            kind: run.kind,
            data,
        })
    }
}
