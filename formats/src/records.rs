//! The records stream: the manifest, then one [`Record`] per frame.
//!
//! ```text
//!  | stream header (kind 1) | frame 0: Manifest | frame 1: Process | ... | trailer |
//!
//!  record frame:  | frame header, tag = RecordKind | postcard(Record) |
//! ```
//!
//! The frame's tag repeats the record's variant index so that `cr inspect`
//! and the errors can name a record whose payload is damaged; a payload
//! whose variant disagrees with its tag, or that has bytes left over after
//! the record, is a `Decode` error.
//!
//! [`RecordWriter`] writes each record as soon as it is handed one;
//! [`RecordReader`] yields each record with where it was found. Only
//! [`read_records`] (or a [`RecordReader`] run until it returns `None` with
//! [`RecordReader::is_complete`]) proves the image whole: a restore must not
//! act on records before that.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};
use crate::frame::{
    checksum, Codec, FrameInfo, FrameKind, FrameReader, FrameWriter, StreamHeader, StreamKind,
    StreamStats,
};
use crate::schema::{Manifest, Record, RecordKind};

/// A record and the frame it came in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordEntry {
    pub frame: FrameInfo,
    pub record: Record,
}

/// Writes a records stream to `W` as records arrive. Hand it a buffered
/// writer: it issues one `write_all` per record.
pub struct RecordWriter<W: Write> {
    frames: FrameWriter<W>,
    buf: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    /// Writes the stream header and the manifest (frame 0).
    pub fn new(w: W, manifest: &Manifest) -> Result<Self> {
        let header = StreamHeader::new(StreamKind::Records, Codec::None, manifest.image_id);
        let mut writer = RecordWriter {
            frames: FrameWriter::new(w, header)?,
            buf: Vec::with_capacity(4096),
        };
        writer.put(&Record::Manifest(manifest.clone()))?;
        Ok(writer)
    }

    /// Writes one record; a second manifest is refused.
    pub fn write(&mut self, record: &Record) -> Result<FrameInfo> {
        if let Record::Manifest(_) = record {
            let (seq, offset) = self.frames.position();
            return Err(FormatError::Manifest {
                seq,
                offset,
                what: "the manifest is written once, by RecordWriter::new",
            });
        }
        self.put(record)
    }

    fn put(&mut self, record: &Record) -> Result<FrameInfo> {
        let kind = record.kind();
        self.buf.clear();
        let buf = std::mem::take(&mut self.buf);
        self.buf = postcard::to_extend(record, buf).map_err(|source| FormatError::Encode {
            kind: kind.name(),
            source,
        })?;
        let crc = checksum(&self.buf);
        self.frames.write_frame(
            FrameKind::Record,
            kind.tag(),
            false,
            self.buf.len(),
            &self.buf,
            crc,
        )
    }

    /// Writes the trailer and flushes; the stream is complete.
    pub fn finish(self) -> Result<StreamStats> {
        self.frames.finish()
    }

    pub fn header(&self) -> &StreamHeader {
        self.frames.header()
    }
}

/// Reads a records stream, verifying every frame; an iterator of records.
///
/// The iterator yields `Ok` entries, then either ends after the trailer was
/// verified (and [`RecordReader::is_complete`] turns true) or yields one
/// `Err` and ends.
pub struct RecordReader<R: Read> {
    frames: FrameReader<R>,
    manifest: Manifest,
    first: Option<RecordEntry>,
    done: bool,
}

impl<R: Read> RecordReader<R> {
    /// Reads the stream header and the manifest.
    pub fn new(r: R) -> Result<Self> {
        let mut frames = FrameReader::new(r, StreamKind::Records)?;
        let first = match next_entry(&mut frames)? {
            Some(e) => e,
            None => {
                return Err(FormatError::Manifest {
                    seq: 0,
                    offset: crate::frame::STREAM_HEADER_LEN as u64,
                    what: "the stream has no manifest",
                })
            }
        };
        let Record::Manifest(manifest) = &first.record else {
            return Err(FormatError::Manifest {
                seq: first.frame.seq,
                offset: first.frame.offset,
                what: "the first record is not the manifest",
            });
        };
        frames.header().expect_image(manifest.image_id)?;
        Ok(RecordReader {
            manifest: manifest.clone(),
            frames,
            first: Some(first),
            done: false,
        })
    }

    pub fn header(&self) -> &StreamHeader {
        self.frames.header()
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// True once the trailer has been verified: every record was read.
    pub fn is_complete(&self) -> bool {
        self.frames.complete().is_some()
    }

    /// The trailer's figures, once the stream is complete.
    pub fn stats(&self) -> Option<StreamStats> {
        self.frames.complete()
    }

    fn advance(&mut self) -> Result<Option<RecordEntry>> {
        let Some(entry) = next_entry(&mut self.frames)? else {
            return Ok(None);
        };
        if let Record::Manifest(_) = entry.record {
            return Err(FormatError::Manifest {
                seq: entry.frame.seq,
                offset: entry.frame.offset,
                what: "a second manifest",
            });
        }
        Ok(Some(entry))
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<RecordEntry>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(e)) => Some(Ok(e)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Reads and decodes the next record frame.
fn next_entry<R: Read>(frames: &mut FrameReader<R>) -> Result<Option<RecordEntry>> {
    let Some(info) = frames.next_frame()? else {
        return Ok(None);
    };
    let entry = decode_entry(info, frames.payload());
    if entry.is_err() {
        frames.poison();
    }
    entry.map(Some)
}

/// Decodes a verified record frame's payload.
fn decode_entry(info: FrameInfo, payload: &[u8]) -> Result<RecordEntry> {
    let kind = RecordKind::from_tag(info.tag).ok_or_else(|| FormatError::BadFrame {
        seq: info.seq,
        offset: info.offset,
        what: format!("unknown record kind {}", info.tag),
    })?;
    let decode_err = |source| FormatError::Decode {
        seq: info.seq,
        offset: info.offset,
        kind: kind.name(),
        source,
    };
    let (record, rest): (Record, _) = postcard::take_from_bytes(payload).map_err(decode_err)?;
    if !rest.is_empty() {
        return Err(decode_err(postcard::Error::DeserializeBadEncoding));
    }
    if record.kind() != kind {
        return Err(FormatError::BadFrame {
            seq: info.seq,
            offset: info.offset,
            what: format!(
                "tag says {kind} but the payload holds {}",
                record.kind().name()
            ),
        });
    }
    Ok(RecordEntry {
        frame: info,
        record,
    })
}

/// Everything in a records stream, verified to the trailer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordImage {
    pub header: StreamHeader,
    pub manifest: Manifest,
    /// Every record, the manifest first.
    pub entries: Vec<RecordEntry>,
    pub stats: StreamStats,
}

impl RecordImage {
    /// How many records of each kind, in tag order, kinds absent included.
    pub fn counts(&self) -> Vec<(RecordKind, usize)> {
        RecordKind::ALL
            .iter()
            .map(|&k| {
                let n = self.entries.iter().filter(|e| e.record.kind() == k).count();
                (k, n)
            })
            .collect()
    }
}

/// Reads a whole records stream; returns only if it is complete and intact.
pub fn read_records<R: Read>(r: R) -> Result<RecordImage> {
    let mut reader = RecordReader::new(r)?;
    let mut entries = Vec::new();
    for entry in reader.by_ref() {
        entries.push(entry?);
    }
    let stats = reader.stats().ok_or(FormatError::Truncated {
        offset: 0,
        expected: "trailer",
    })?;
    Ok(RecordImage {
        header: *reader.header(),
        manifest: reader.manifest.clone(),
        entries,
        stats,
    })
}
