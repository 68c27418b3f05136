//! A corpus of damaged images: a real small image (records, pages raw and
//! compressed) mutated deterministically, thousands of ways. Every decoder
//! must return an error for every mutation (never panic, never hand back
//! records or pages that differ from what was written), and the decoders
//! behind the checksums must survive payloads whose checksums were forged.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::*;
use cr_formats::frame::checksum;
use cr_formats::*;

/// What an image decodes to, whatever its kind.
#[derive(Debug, PartialEq)]
enum Decoded {
    Records(Vec<Record>),
    Pages(Pages),
}

fn decode(bytes: &[u8]) -> Result<Decoded> {
    if bytes.get(12) == Some(&(StreamKind::Pages as u8)) {
        read_pages(bytes).map(Decoded::Pages)
    } else {
        read_all(bytes).map(Decoded::Records)
    }
}

/// Decodes a mutated image; panics (failing the test) with a description
/// if the decoder panicked or accepted it.
fn assert_refused(name: &str, what: &str, bytes: &[u8]) {
    let outcome = catch_unwind(AssertUnwindSafe(|| decode(bytes)));
    match outcome {
        Err(_) => panic!("{name}: {what}: the decoder panicked"),
        Ok(Ok(_)) => panic!("{name}: {what}: accepted"),
        Ok(Err(e)) => {
            // Every message is one line naming where.
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{name}: {what}: {msg}");
        }
    }
}

fn images() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("records", records_image()),
        ("pages", pages_image(Compression::None)),
        ("pages-zstd", pages_image(Compression::Zstd { level: 3 })),
    ]
}

/// Byte ranges of the frames of an intact image, trailer included.
fn frame_ranges(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut at = STREAM_HEADER_LEN;
    let mut out = Vec::new();
    while at + FRAME_HEADER_LEN <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push((at, at + FRAME_HEADER_LEN + len));
        at += FRAME_HEADER_LEN + len;
    }
    assert_eq!(at, bytes.len());
    out
}

#[test]
fn the_corpus_decodes_intact() {
    for (name, bytes) in images() {
        assert!(decode(&bytes).is_ok(), "{name}");
        assert!(frame_ranges(&bytes).len() >= 3, "{name}");
    }
}

#[test]
fn every_flipped_bit_pattern_at_every_byte_is_refused() {
    for (name, bytes) in images() {
        for at in 0..bytes.len() {
            for pattern in [0x01u8, 0x80, 0xff] {
                let mut bad = bytes.clone();
                bad[at] ^= pattern;
                assert_refused(name, &format!("byte {at} ^ {pattern:#x}"), &bad);
            }
        }
    }
}

#[test]
fn random_mutations_are_refused() {
    let mut rng = Rng(0x00c0_ffee_0bad_f00d);
    for (name, bytes) in images() {
        let frames = frame_ranges(&bytes);
        for i in 0..1500 {
            let mut bad = bytes.clone();
            let what = match rng.below(7) {
                0 => {
                    // A few random bytes set to random values.
                    for _ in 0..1 + rng.below(8) {
                        let at = rng.below(bad.len());
                        bad[at] = rng.next() as u8;
                    }
                    "random bytes".to_string()
                }
                1 => {
                    let at = rng.below(bad.len() + 1);
                    let n = 1 + rng.below(16);
                    let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    bad.splice(at..at, junk);
                    format!("{n} bytes inserted at {at}")
                }
                2 => {
                    let at = rng.below(bad.len());
                    let n = 1 + rng.below(16).min(bad.len() - at - 1);
                    bad.drain(at..at + n);
                    format!("{n} bytes deleted at {at}")
                }
                3 => {
                    let len = rng.below(bad.len());
                    bad.truncate(len);
                    let n = rng.below(24);
                    bad.extend((0..n).map(|_| rng.next() as u8));
                    format!("cut at {len}, {n} junk bytes")
                }
                4 => {
                    let (s, e) = frames[rng.below(frames.len())];
                    let copy = bytes[s..e].to_vec();
                    let at = frames[rng.below(frames.len())].0;
                    bad.splice(at..at, copy);
                    format!("frame {s}..{e} duplicated at {at}")
                }
                5 => {
                    let a = rng.below(frames.len() - 1);
                    let b = a + 1 + rng.below(frames.len() - a - 1);
                    let (fa, fb) = (frames[a], frames[b]);
                    let mut v = bytes[..fa.0].to_vec();
                    v.extend_from_slice(&bytes[fb.0..fb.1]);
                    v.extend_from_slice(&bytes[fa.1..fb.0]);
                    v.extend_from_slice(&bytes[fa.0..fa.1]);
                    v.extend_from_slice(&bytes[fb.1..]);
                    bad = v;
                    format!("frames {a} and {b} swapped")
                }
                _ => {
                    let (s, e) = frames[rng.below(frames.len())];
                    bad.drain(s..e);
                    format!("frame at {s} dropped")
                }
            };
            if bad != bytes {
                assert_refused(name, &format!("mutation {i}: {what}"), &bad);
            }
        }
    }
}

#[test]
fn a_pages_stream_from_another_image_is_told_apart() {
    let bytes = pages_image(Compression::None);
    let r = PageReader::new(&bytes[..]).unwrap();
    r.header().expect_image(IMAGE_ID).unwrap();
    let err = r.header().expect_image(IMAGE_ID + 1).unwrap_err();
    assert!(matches!(err, FormatError::ImageMismatch { .. }), "{err}");
}

/// Re-frames `bytes` (an intact image) with frame `target`'s payload
/// replaced, every checksum and the trailer recomputed: only the decoder
/// behind the checksums can object.
fn forge(bytes: &[u8], target: usize, payload: &[u8], compressed: bool, raw_len: usize) -> Vec<u8> {
    let mut head = [0u8; STREAM_HEADER_LEN];
    head.copy_from_slice(&bytes[..STREAM_HEADER_LEN]);
    let mut header = StreamHeader::decode(&head, FORMAT_VERSION).unwrap();
    if compressed {
        header.codec = Codec::Zstd;
    }
    let mut out = Vec::new();
    let mut w = FrameWriter::new(&mut out, header).unwrap();
    let ranges = frame_ranges(bytes);
    for (i, &(s, e)) in ranges[..ranges.len() - 1].iter().enumerate() {
        let kind = if bytes[s] == 1 {
            FrameKind::Record
        } else {
            FrameKind::PageChunk
        };
        let tag = u16::from_le_bytes([bytes[s + 2], bytes[s + 3]]);
        if i == target {
            w.write_frame(kind, tag, compressed, raw_len, payload, checksum(payload))
                .unwrap();
        } else {
            let p = &bytes[s + FRAME_HEADER_LEN..e];
            let flagged = bytes[s + 1] & 1 != 0;
            let raw = u32::from_le_bytes(bytes[s + 12..s + 16].try_into().unwrap()) as usize;
            w.write_frame(kind, tag, flagged, raw, p, checksum(p))
                .unwrap();
        }
    }
    w.finish().unwrap();
    out
}

#[test]
fn decoders_behind_the_checksums_survive_forged_payloads() {
    let mut rng = Rng(0x0f0f_1234_5678_9abc);
    for (name, bytes) in images() {
        let ranges = frame_ranges(&bytes);
        for i in 0..600 {
            let target = rng.below(ranges.len() - 1);
            let (s, e) = ranges[target];
            let mut payload = bytes[s + FRAME_HEADER_LEN..e].to_vec();
            let what = match rng.below(4) {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        if !payload.is_empty() {
                            let at = rng.below(payload.len());
                            payload[at] = rng.next() as u8;
                        }
                    }
                    "bytes changed"
                }
                1 => {
                    payload.truncate(rng.below(payload.len() + 1));
                    "cut"
                }
                2 => {
                    payload = (0..rng.below(300)).map(|_| rng.next() as u8).collect();
                    "random"
                }
                _ => {
                    let at = rng.below(payload.len() + 1);
                    payload.insert(at, rng.next() as u8);
                    "byte inserted"
                }
            };
            let compressed = rng.below(4) == 0;
            let raw_len = if compressed {
                rng.below(1 << 16)
            } else {
                payload.len()
            };
            let forged = forge(&bytes, target, &payload, compressed, raw_len);
            let outcome = catch_unwind(AssertUnwindSafe(|| decode(&forged)));
            assert!(
                outcome.is_ok(),
                "{name}: forged payload {i} ({what}) of frame {target}: the decoder panicked"
            );
        }
    }
}

/// Writes seeds for the fuzz targets to `formats/fuzz/seeds/`: each image
/// whole (mode byte 0: raw stream) and each of its frames' payloads (mode
/// byte 1: framed; see `formats/fuzz/src/lib.rs`).
#[test]
#[ignore = "writes seed files: run by hand when the format changes"]
fn write_fuzz_seeds() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    for (name, bytes) in images() {
        let dir = root.join(if name == "records" {
            "records"
        } else {
            "pages"
        });
        std::fs::create_dir_all(&dir).unwrap();
        let mut raw = vec![0u8];
        raw.extend_from_slice(&bytes);
        std::fs::write(dir.join(format!("{name}.img")), &raw).unwrap();
        let ranges = frame_ranges(&bytes);
        for (i, &(s, e)) in ranges[..ranges.len() - 1].iter().enumerate() {
            // mode, tag, flags, raw len, payload
            let mut framed = vec![1u8, bytes[s + 2], bytes[s + 1]];
            framed.extend_from_slice(&bytes[s + 12..s + 16]);
            framed.extend_from_slice(&bytes[s + FRAME_HEADER_LEN..e]);
            std::fs::write(dir.join(format!("{name}-frame{i}")), &framed).unwrap();
        }
    }
}
