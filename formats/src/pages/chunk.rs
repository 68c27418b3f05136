//! One page chunk: its index ([`ChunkHeader`]), how it is sealed and
//! compressed ([`ChunkEncoder`]), and how a received one is checked
//! ([`parse_chunk`]). The layout is drawn in [`crate::pages`].

use serde::{Deserialize, Serialize};

use super::{PageOwner, PageRun, MAX_RUNS_PER_CHUNK};
use crate::error::{FormatError, Result};
use crate::frame::{checksum, Compression, MAX_FRAME_LEN};

/// The index of a chunk: whose pages, and which runs, in data order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    pub owner: PageOwner,
    pub runs: Vec<PageRun>,
}

impl ChunkHeader {
    /// Pages stored in the chunk's data.
    pub fn data_pages(&self) -> u64 {
        self.pages(super::RunKind::Data)
    }

    /// Pages the chunk says are zero.
    pub fn zero_pages(&self) -> u64 {
        self.pages(super::RunKind::Zero)
    }

    fn pages(&self, kind: super::RunKind) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| u64::from(r.nr_pages))
            .sum()
    }

    /// Checks the runs and that their data takes exactly `data_len` bytes.
    fn check(&self, data_len: usize) -> std::result::Result<(), &'static str> {
        if self.runs.is_empty() {
            return Err("a chunk without runs");
        }
        if self.runs.len() > MAX_RUNS_PER_CHUNK {
            return Err("more runs than a chunk may hold");
        }
        let mut covered: u64 = 0;
        for run in &self.runs {
            if let Some(why) = run.check() {
                return Err(why);
            }
            covered = covered
                .checked_add(run.data_len())
                .ok_or("data runs cover more than the chunk")?;
        }
        if covered != data_len as u64 {
            return Err("data runs do not cover the chunk's data exactly");
        }
        Ok(())
    }
}

/// A chunk ready to be written by [`super::PageWriter::write_encoded`]: the
/// frame payload with its checksum, computed where it was encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChunk {
    pub(crate) payload: Vec<u8>,
    pub(crate) raw_len: usize,
    pub(crate) compressed: bool,
    pub(crate) checksum: u32,
    pub(crate) data_pages: u64,
    pub(crate) zero_pages: u64,
}

impl EncodedChunk {
    /// The bytes that go in the frame.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The size of the chunk before compression.
    pub fn raw_len(&self) -> usize {
        self.raw_len
    }

    pub fn compressed(&self) -> bool {
        self.compressed
    }
}

/// Seals and compresses chunks, keeping a zstd context between them. One per
/// thread.
pub struct ChunkEncoder {
    compression: Compression,
    /// zstd, with the gate that decides per chunk whether it pays.
    packer: crate::blob::Packer,
}

impl ChunkEncoder {
    pub fn new(compression: Compression) -> Result<Self> {
        Ok(ChunkEncoder {
            compression,
            packer: crate::blob::Packer::new(compression, None)?,
        })
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// From now on `gate` decides chunk by chunk whether this encoder's
    /// compression is used.
    pub fn set_gate(&mut self, gate: std::sync::Arc<crate::blob::CompressGate>) {
        self.packer.set_gate(gate);
    }

    /// Encodes one chunk from its index and the pages of its `Data` runs.
    pub fn encode(&mut self, header: &ChunkHeader, pages: &[u8]) -> Result<EncodedChunk> {
        header
            .check(pages.len())
            .map_err(|_| FormatError::ChunkMismatch {
                data_len: pages.len() as u64,
                run_bytes: header
                    .runs
                    .iter()
                    .map(|r| r.data_len())
                    .fold(0, u64::saturating_add),
            })?;
        let mut raw = Vec::with_capacity(pages.len() + 16 * header.runs.len() + 64);
        raw.extend_from_slice(pages);
        let compressed = self.seal(header, &mut raw)?;
        let raw_len = raw.len();
        let payload = if compressed {
            self.packer.take_output()
        } else {
            raw
        };
        Ok(EncodedChunk {
            checksum: checksum(&payload),
            raw_len,
            compressed,
            payload,
            data_pages: header.data_pages(),
            zero_pages: header.zero_pages(),
        })
    }

    /// Appends the index to `raw` (which holds the page data), then
    /// compresses it into [`ChunkEncoder::compressed`] when that makes it
    /// smaller. Returns whether it did.
    pub(crate) fn seal(&mut self, header: &ChunkHeader, raw: &mut Vec<u8>) -> Result<bool> {
        let data_len = raw.len();
        let sealed = postcard::to_extend(header, std::mem::take(raw)).map_err(|source| {
            FormatError::Encode {
                kind: "page chunk index",
                source,
            }
        })?;
        *raw = sealed;
        let index_len = (raw.len() - data_len) as u32;
        raw.extend_from_slice(&index_len.to_le_bytes());
        if raw.len() > MAX_FRAME_LEN as usize {
            return Err(FormatError::TooLarge {
                what: "page chunk",
                offset: 0,
                len: raw.len() as u64,
                max: u64::from(MAX_FRAME_LEN),
            });
        }
        self.packer.compress(&raw[..])
    }

    /// The output of the last [`ChunkEncoder::seal`] that compressed.
    pub(crate) fn compressed(&self) -> &[u8] {
        self.packer.output()
    }
}

/// Encodes one chunk with a fresh encoder: a pure function of its inputs,
/// for callers that spread chunks over threads.
pub fn encode_chunk(
    header: &ChunkHeader,
    pages: &[u8],
    compression: Compression,
) -> Result<EncodedChunk> {
    ChunkEncoder::new(compression)?.encode(header, pages)
}

/// Splits a received raw chunk into its index and its page data, checking
/// that they agree.
pub(crate) fn parse_chunk(raw: &[u8]) -> std::result::Result<(ChunkHeader, &[u8]), &'static str> {
    let Some(index_end) = raw.len().checked_sub(4) else {
        return Err("shorter than its index length");
    };
    let mut len = [0u8; 4];
    len.copy_from_slice(&raw[index_end..]);
    let index_len = u32::from_le_bytes(len) as usize;
    let Some(data_end) = index_end.checked_sub(index_len) else {
        return Err("index length larger than the chunk");
    };
    let (header, rest): (ChunkHeader, _) = postcard::take_from_bytes(&raw[data_end..index_end])
        .map_err(|_| "index does not decode")?;
    if !rest.is_empty() {
        return Err("bytes left over after the index");
    }
    let data = &raw[..data_end];
    header.check(data.len())?;
    Ok((header, data))
}

#[cfg(test)]
mod tests {
    use super::super::{RunKind, PAGE_SIZE};
    use super::*;

    fn header(runs: &[(u64, u32, RunKind)]) -> ChunkHeader {
        ChunkHeader {
            owner: PageOwner::Mm { pid: 1 },
            runs: runs
                .iter()
                .map(|&(vaddr, nr_pages, kind)| PageRun {
                    vaddr,
                    nr_pages,
                    kind,
                })
                .collect(),
        }
    }

    #[test]
    fn sealed_chunk_parses_back() {
        let h = header(&[(0x1000, 2, RunKind::Data), (0x3000, 5, RunKind::Zero)]);
        let pages = vec![7u8; 2 * PAGE_SIZE];
        for compression in [Compression::None, Compression::Zstd { level: 1 }] {
            let c = encode_chunk(&h, &pages, compression).unwrap();
            assert_eq!(c.compressed, compression != Compression::None);
            let raw = if c.compressed {
                zstd::bulk::decompress(&c.payload, c.raw_len).unwrap()
            } else {
                c.payload.clone()
            };
            let (back, data) = parse_chunk(&raw).unwrap();
            assert_eq!(back, h);
            assert_eq!(data, &pages[..]);
            assert_eq!((c.data_pages, c.zero_pages), (2, 5));
        }
    }

    #[test]
    fn incompressible_chunk_is_stored_raw() {
        let h = header(&[(0, 1, RunKind::Data)]);
        let mut x = 0x9e3779b97f4a7c15u64;
        let pages: Vec<u8> = (0..PAGE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let c = encode_chunk(&h, &pages, Compression::Zstd { level: 3 }).unwrap();
        assert!(!c.compressed);
        assert_eq!(c.payload.len(), c.raw_len);
    }

    #[test]
    fn encoder_refuses_an_index_that_disagrees_with_the_data() {
        let h = header(&[(0, 2, RunKind::Data)]);
        let err = encode_chunk(&h, &[0u8; PAGE_SIZE], Compression::None).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::ChunkMismatch {
                    data_len: 4096,
                    run_bytes: 8192
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn parse_refuses_malformed_chunks() {
        let bad: &[(&[u8], &str)] = &[
            (&[], "shorter than its index length"),
            (&[1, 0, 0, 0], "index length larger than the chunk"),
            (&[0, 0, 0, 0], "index does not decode"),
        ];
        for (raw, why) in bad {
            assert_eq!(parse_chunk(raw).unwrap_err(), *why);
        }
        for (runs, why) in [
            (vec![], "a chunk without runs"),
            (vec![(0x1000, 0, RunKind::Zero)], "a run of no pages"),
            (
                vec![(0x1001, 1, RunKind::Zero)],
                "a run at an address that is not page-aligned",
            ),
            (
                vec![(u64::MAX - 0xfff, 2, RunKind::Zero)],
                "a run past the end of the address space",
            ),
            (
                vec![(0, 1, RunKind::Data)],
                "data runs do not cover the chunk's data exactly",
            ),
        ] {
            let h = header(&runs);
            let mut raw = postcard::to_allocvec(&h).unwrap();
            raw.extend_from_slice(&(raw.len() as u32).to_le_bytes());
            assert_eq!(parse_chunk(&raw).unwrap_err(), why);
        }
    }
}
