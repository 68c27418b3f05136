//! [`PageSlice`]: a whole pages stream held in memory (a mapped image
//! file), checked in place so that its page data can be used where it lies,
//! without a copy.
//!
//! ```text
//!  open(bytes)                          walks every frame header: stream header, header
//!                                       checksums, sequence numbers, sizes, the trailer
//!                                       (frame count, byte count, stream digest) and the
//!                                       end of the input. No payload byte is read.
//!  verify(frames 0..k)  verify(k..n)    each share checks its frames' payload checksums
//!     (any thread)        (any thread)  and chunk indexes and hands out the chunks, their
//!                                       data borrowed from `bytes`
//! ```
//!
//! A store whose payloads were checked as it was written (a migration's,
//! by [`crate::StreamCheck`]) can skip the second half:
//! [`PageSlice::chunks_checked_before`] checks the chunk indexes only.
//!
//! The checks are exactly those of [`super::PageReader`], split so that the
//! expensive half (a checksum over every payload byte) can run on several
//! threads. A chunk is handed out only by [`PageSlice::verify`], so no page
//! of the slice is used before its checksum was checked. Only streams stored
//! without compression can be used in place: [`PageSlice::open`] refuses a
//! compressed frame.

use std::ops::Range;

use super::chunk::parse_chunk;
use super::reader::PageChunk;
use crate::error::{FormatError, FramePart, Result};
use crate::frame::{
    check_trailer, checksum, decode_frame_header, FrameInfo, FrameKind, StreamHeader, StreamKind,
    StreamStats, FRAME_HEADER_LEN, STREAM_HEADER_LEN,
};
use crate::version::FORMAT_VERSION;

/// A pages stream in memory whose frame headers and trailer were checked.
#[derive(Debug)]
pub struct PageSlice<'a> {
    bytes: &'a [u8],
    header: StreamHeader,
    frames: Vec<FrameInfo>,
    stats: StreamStats,
}

impl<'a> PageSlice<'a> {
    /// Checks the stream header, every frame header and the trailer of the
    /// pages stream `bytes` (see the module documentation).
    pub fn open(bytes: &'a [u8]) -> Result<Self> {
        let truncated = |offset: usize, expected| FormatError::Truncated {
            offset: offset as u64,
            expected,
        };
        let head: &[u8; STREAM_HEADER_LEN] = bytes
            .get(..STREAM_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| truncated(bytes.len(), "stream header"))?;
        let header = StreamHeader::decode(head, FORMAT_VERSION)?;
        if header.kind != StreamKind::Pages {
            return Err(FormatError::BadHeader {
                what: "a records stream where a pages stream was expected",
            });
        }
        let mut digest = crc32c::crc32c_append(0, head);
        let mut frames = Vec::new();
        let mut at = STREAM_HEADER_LEN;
        loop {
            let seq = u32::try_from(frames.len()).map_err(|_| FormatError::BadFrame {
                seq: u32::MAX,
                offset: at as u64,
                what: "more frames than a stream may number".into(),
            })?;
            let head: &[u8; FRAME_HEADER_LEN] = bytes
                .get(at..at + FRAME_HEADER_LEN)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| truncated(bytes.len(), "frame header or trailer"))?;
            let info = decode_frame_header(head, seq, at as u64, &header)?;
            let payload_at = at + FRAME_HEADER_LEN;
            let end = payload_at + info.stored_len as usize;
            let payload = bytes
                .get(payload_at..end)
                .ok_or_else(|| truncated(bytes.len(), "frame payload"))?;
            if info.kind == FrameKind::Trailer {
                if checksum(payload) != info.checksum {
                    return Err(FormatError::FrameChecksum {
                        seq,
                        offset: info.offset,
                        part: FramePart::Payload,
                        kind: info.label(),
                    });
                }
                let stats = check_trailer(payload, &info, seq, digest)?;
                if end != bytes.len() {
                    return Err(FormatError::TrailingData { offset: end as u64 });
                }
                return Ok(PageSlice {
                    bytes,
                    header,
                    frames,
                    stats,
                });
            }
            if info.compressed {
                return Err(FormatError::BadFrame {
                    seq,
                    offset: info.offset,
                    what: "a compressed chunk cannot be used in place".into(),
                });
            }
            digest = crc32c::crc32c_append(digest, head);
            frames.push(info);
            at = end;
        }
    }

    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// The trailer's figures.
    pub fn stream_stats(&self) -> StreamStats {
        self.stats
    }

    /// Chunk frames in the stream.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Page data bytes of the chunks in `frames` (payloads, indexes
    /// included), to split the work of [`Self::verify`] evenly.
    pub fn payload_bytes(&self, frames: Range<usize>) -> u64 {
        self.frames
            .get(frames)
            .unwrap_or_default()
            .iter()
            .map(|f| u64::from(f.stored_len))
            .sum()
    }

    /// Checks the payload checksum and chunk index of every frame in
    /// `frames` and returns their chunks in stream order, their data
    /// borrowed from the slice.
    pub fn verify(&self, frames: Range<usize>) -> Result<Vec<PageChunk<'a>>> {
        self.chunks(frames, true)
    }

    /// [`Self::verify`] without the payload checksums, for a store whose
    /// every payload was checked as it was written ([`crate::StreamCheck`]
    /// over the same bytes, by the process that wrote the file): the chunk
    /// indexes are still checked.
    pub fn chunks_checked_before(&self, frames: Range<usize>) -> Result<Vec<PageChunk<'a>>> {
        self.chunks(frames, false)
    }

    fn chunks(&self, frames: Range<usize>, payloads: bool) -> Result<Vec<PageChunk<'a>>> {
        let infos = self
            .frames
            .get(frames.clone())
            .ok_or_else(|| FormatError::BadFrame {
                seq: frames.start as u32,
                offset: 0,
                what: format!("frames {frames:?} of a stream of {}", self.frames.len()),
            })?;
        let mut chunks = Vec::with_capacity(infos.len());
        for info in infos {
            let at = info.offset as usize + FRAME_HEADER_LEN;
            // open() checked that every payload lies inside the slice.
            let payload = self
                .bytes
                .get(at..at + info.stored_len as usize)
                .unwrap_or_default();
            if payloads && checksum(payload) != info.checksum {
                return Err(FormatError::FrameChecksum {
                    seq: info.seq,
                    offset: info.offset,
                    part: FramePart::Payload,
                    kind: info.label(),
                });
            }
            let (header, data) = parse_chunk(payload).map_err(|what| FormatError::BadChunk {
                seq: info.seq,
                offset: info.offset,
                what,
            })?;
            chunks.push(PageChunk::new(*info, header, data));
        }
        Ok(chunks)
    }
}
