//! The records stream against real and tampered bytes: every record kind
//! round-trips, and each way of damaging a stream gets its own error.

mod common;

use std::io::{self, Read};

use common::*;
use cr_formats::*;

#[test]
fn every_record_kind_round_trips() {
    let bytes = records_image();
    let image = read_records(&bytes[..]).unwrap();
    assert_eq!(image.manifest, manifest());
    assert_eq!(image.header.image_id, IMAGE_ID);
    assert_eq!(image.header.version, FORMAT_VERSION);
    let mut expected = vec![Record::Manifest(manifest())];
    expected.extend(records());
    let got: Vec<Record> = image.entries.iter().map(|e| e.record.clone()).collect();
    assert_eq!(got, expected);
    for (kind, n) in image.counts() {
        assert!(n > 0, "the sample image has no {kind} record");
    }
    assert_eq!(image.stats.bytes, bytes.len() as u64);
    assert_eq!(image.stats.frames as usize, expected.len());
}

#[test]
fn frames_tell_where_each_record_is() {
    let bytes = records_image();
    let mut offset = STREAM_HEADER_LEN as u64;
    for (seq, e) in read_records(&bytes[..]).unwrap().entries.iter().enumerate() {
        let f = e.frame;
        assert_eq!(f.seq as usize, seq);
        assert_eq!(f.offset, offset);
        assert_eq!(f.kind, FrameKind::Record);
        assert_eq!(RecordKind::from_tag(f.tag), Some(e.record.kind()));
        assert_eq!(f.label(), Some(e.record.kind().name()));
        let payload =
            &bytes[(f.offset as usize + FRAME_HEADER_LEN)..(f.offset + f.frame_len()) as usize];
        assert_eq!(frame::checksum(payload), f.checksum);
        // The tag is postcard's variant index, which is the payload's first
        // byte for the first 128 kinds.
        assert_eq!(u16::from(payload[0]), f.tag);
        offset += f.frame_len();
    }
}

#[test]
fn reader_streams_records_and_is_complete_only_after_the_trailer() {
    let bytes = records_image();
    let mut reader = RecordReader::new(&bytes[..]).unwrap();
    assert_eq!(reader.manifest(), &manifest());
    let mut n = 0;
    while let Some(entry) = reader.next() {
        entry.unwrap();
        n += 1;
        if n < records().len() + 1 {
            assert!(!reader.is_complete());
        }
    }
    assert!(reader.is_complete());
    assert_eq!(n, records().len() + 1);
    assert!(reader.next().is_none());
}

#[test]
fn records_show_as_json() {
    let bytes = records_image();
    let image = read_records(&bytes[..]).unwrap();
    let json = serde_json::to_string(&image).unwrap();
    assert!(json.contains("\"container\":\"web1\""));
    assert!(json.contains("\"exe\":\"/usr/bin/python3.11\""));
    assert!(json.contains("\"cwd\":[47,115,255,118]"));
    let back: RecordImage = serde_json::from_str(&json).unwrap();
    assert_eq!(back, image);
}

#[test]
fn wrong_magic_is_bad_magic() {
    let mut bytes = records_image();
    bytes[0] = b'X';
    let err = read_records(&bytes[..]).unwrap_err();
    assert!(
        matches!(err, FormatError::BadMagic { found } if &found == b"XR-IMAGE"),
        "{err}"
    );
    let err = PageReader::new(&b"not an image at all, longer than a header"[..])
        .err()
        .unwrap();
    assert!(matches!(err, FormatError::BadMagic { .. }), "{err}");
}

#[test]
fn flipped_header_byte_is_header_checksum() {
    let mut bytes = records_image();
    bytes[20] ^= 0x01; // inside the image id
    let err = read_records(&bytes[..]).unwrap_err();
    assert!(matches!(err, FormatError::HeaderChecksum { .. }), "{err}");
}

#[test]
fn flipped_payload_byte_names_the_frame_and_record_kind() {
    let bytes = records_image();
    for f in frames(&bytes) {
        let mut bad = bytes.clone();
        let at = f.offset as usize + FRAME_HEADER_LEN + f.stored_len as usize / 2;
        bad[at] ^= 0x40;
        let err = read_records(&bad[..]).unwrap_err();
        let kind = RecordKind::from_tag(f.tag).unwrap().name();
        match &err {
            FormatError::FrameChecksum {
                seq,
                offset,
                part: FramePart::Payload,
                kind: Some(k),
            } => {
                assert_eq!((*seq, *offset, *k), (f.seq, f.offset, kind));
            }
            other => panic!("frame {}: {other}", f.seq),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "frame {} at offset {} ({kind}): payload checksum mismatch",
                f.seq, f.offset
            )
        );
    }
}

#[test]
fn flipped_frame_header_byte_names_the_frame() {
    let bytes = records_image();
    let f = frames(&bytes)[3];
    for i in 0..FRAME_HEADER_LEN {
        let mut bad = bytes.clone();
        bad[f.offset as usize + i] ^= 0x10;
        let err = read_records(&bad[..]).unwrap_err();
        assert!(
            matches!(err, FormatError::FrameChecksum { seq: 3, offset, part: FramePart::Header, kind: None } if offset == f.offset),
            "byte {i}: {err}"
        );
    }
}

#[test]
fn newer_minor_or_major_is_unsupported_version() {
    for (major, minor) in [
        (FORMAT_VERSION.major, FORMAT_VERSION.minor + 1),
        (FORMAT_VERSION.major + 1, 0),
    ] {
        let mut bytes = records_image();
        bytes[8..10].copy_from_slice(&major.to_le_bytes());
        bytes[10..12].copy_from_slice(&minor.to_le_bytes());
        // Sealed or not: a version we cannot read is reported as such.
        for seal in [true, false] {
            let mut b = bytes.clone();
            if seal {
                reseal_stream_header(&mut b);
            }
            let err = read_records(&b[..]).unwrap_err();
            assert!(
                matches!(err, FormatError::UnsupportedVersion { found, supported }
                    if found == Version::new(major, minor) && supported == FORMAT_VERSION),
                "{err}"
            );
        }
    }
}

#[test]
fn older_minor_is_read() {
    // This build is at minor 0; a reader of minor 3 reads what minor 0 wrote.
    let bytes = records_image();
    let mut head = [0u8; STREAM_HEADER_LEN];
    head.copy_from_slice(&bytes[..STREAM_HEADER_LEN]);
    let newer_reader = Version::new(FORMAT_VERSION.major, FORMAT_VERSION.minor + 3);
    let h = StreamHeader::decode(&head, newer_reader).unwrap();
    assert_eq!(h.version, FORMAT_VERSION);
    assert_eq!(h.kind, StreamKind::Records);
    // And the current reader reads a header that says 1.0 from a 1.2 reader's
    // point of view, checked through the public rule.
    assert!(newer_reader.can_read(FORMAT_VERSION));
    assert!(!FORMAT_VERSION.can_read(newer_reader));
}

#[test]
fn every_truncation_is_truncated() {
    let bytes = records_image();
    for len in 0..bytes.len() {
        match read_records(&bytes[..len]) {
            Err(FormatError::Truncated { offset, .. }) => assert_eq!(offset, len as u64),
            Err(e) => panic!("cut at {len}: {e}"),
            Ok(_) => panic!("cut at {len}: accepted"),
        }
    }
}

/// Fails with an I/O error after `ok` bytes.
struct FailingReader<'a> {
    bytes: &'a [u8],
    ok: usize,
}

impl Read for FailingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.ok).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn failing_reader_is_io_with_offset() {
    let bytes = records_image();
    for ok in [
        0,
        7,
        STREAM_HEADER_LEN + 3,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let err = read_records(FailingReader { bytes: &bytes, ok }).unwrap_err();
        assert!(
            matches!(&err, FormatError::Io { offset, source } if *offset == ok as u64 && source.to_string() == "disk on fire"),
            "after {ok}: {err}"
        );
    }
}

#[test]
fn interrupted_reads_are_retried() {
    struct Stutter<'a>(&'a [u8], bool);
    impl Read for Stutter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.0.len()).min(5);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let bytes = records_image();
    assert_eq!(
        read_records(Stutter(&bytes, false)).unwrap().entries.len(),
        records().len() + 1
    );
}

#[test]
fn failing_writer_is_io() {
    struct Full(usize);
    impl io::Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let err = RecordWriter::new(Full(10), &manifest()).err().unwrap();
    assert!(matches!(err, FormatError::Io { offset: 0, .. }), "{err}");
    let mut w = RecordWriter::new(Full(200), &manifest()).unwrap();
    let err = records()
        .iter()
        .try_for_each(|r| w.write(r).map(drop))
        .unwrap_err();
    assert!(matches!(err, FormatError::Io { .. }), "{err}");
}

#[test]
fn reordered_frames_are_sequence() {
    let bytes = records_image();
    let f = frames(&bytes);
    let (a, b) = (f[1], f[2]);
    let mut bad = bytes[..a.offset as usize].to_vec();
    bad.extend_from_slice(&bytes[b.offset as usize..(b.offset + b.frame_len()) as usize]);
    bad.extend_from_slice(&bytes[a.offset as usize..(a.offset + a.frame_len()) as usize]);
    bad.extend_from_slice(&bytes[(b.offset + b.frame_len()) as usize..]);
    assert_eq!(bad.len(), bytes.len());
    let err = read_records(&bad[..]).unwrap_err();
    assert!(
        matches!(err, FormatError::Sequence { expected: 1, found: 2, offset } if offset == a.offset),
        "{err}"
    );
    // A dropped frame too.
    let mut dropped = bytes[..a.offset as usize].to_vec();
    dropped.extend_from_slice(&bytes[b.offset as usize..]);
    let err = read_records(&dropped[..]).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::Sequence {
                expected: 1,
                found: 2,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn huge_declared_length_is_too_large_without_allocating() {
    let bytes = records_image();
    let f = frames(&bytes)[1];
    let at = f.offset as usize;
    for (field, what) in [(8, "frame payload"), (12, "frame raw payload")] {
        let mut bad = bytes.clone();
        bad[at + 8..at + 16].copy_from_slice(&[0xff; 8]);
        bad[at + 1] = 1; // compressed, so the two lengths may differ
        bad[at + field..at + field + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        if field == 12 {
            bad[at + 8..at + 12].copy_from_slice(&16u32.to_le_bytes());
        } else {
            bad[at + 12..at + 16].copy_from_slice(&16u32.to_le_bytes());
        }
        reseal_frame_header(&mut bad, at);
        // Put it in a zstd stream so the compressed flag is allowed.
        bad[13] = Codec::Zstd as u8;
        reseal_stream_header(&mut bad);
        let err = read_records(&bad[..]).unwrap_err();
        assert!(
            matches!(err, FormatError::TooLarge { what: w, len, max, .. }
                if w == what && len == u64::from(u32::MAX) && max == u64::from(MAX_FRAME_LEN)),
            "{err}"
        );
    }
}

#[test]
fn writer_refuses_a_record_over_the_cap() {
    let mut w = RecordWriter::new(io::sink(), &manifest()).unwrap();
    let huge = Record::PipeData(PipeData {
        pipe: 1,
        capacity: 0,
        data: Blob(vec![0; MAX_FRAME_LEN as usize + 1]),
    });
    let err = w.write(&huge).unwrap_err();
    assert!(matches!(err, FormatError::TooLarge { .. }), "{err}");
}

#[test]
fn data_after_the_trailer_is_refused() {
    let mut bytes = records_image();
    let end = bytes.len() as u64;
    bytes.push(0);
    let err = read_records(&bytes[..]).unwrap_err();
    assert!(
        matches!(err, FormatError::TrailingData { offset } if offset == end),
        "{err}"
    );
}

#[test]
fn a_pages_stream_is_not_a_records_stream() {
    let pages = pages_image(Compression::None);
    let err = read_records(&pages[..]).unwrap_err();
    assert!(matches!(err, FormatError::BadHeader { .. }), "{err}");
    let records = records_image();
    let err = PageReader::new(&records[..]).err().unwrap();
    assert!(matches!(err, FormatError::BadHeader { .. }), "{err}");
}

#[test]
fn a_second_manifest_is_refused() {
    let mut w = RecordWriter::new(Vec::new(), &manifest()).unwrap();
    let err = w.write(&Record::Manifest(manifest())).unwrap_err();
    assert!(matches!(err, FormatError::Manifest { .. }), "{err}");
}

#[test]
fn manifest_must_match_the_stream_image_id() {
    let mut bytes = records_image();
    bytes[16] ^= 1;
    reseal_stream_header(&mut bytes);
    let err = read_records(&bytes[..]).unwrap_err();
    assert!(
        matches!(err, FormatError::ImageMismatch { expected, found } if expected == IMAGE_ID && found == IMAGE_ID ^ 1),
        "{err}"
    );
}

#[test]
fn a_tag_that_lies_about_the_record_is_refused() {
    let bytes = records_image();
    let f = frames(&bytes)[1]; // a Process
    let mut bad = bytes.clone();
    bad[f.offset as usize + 2] = RecordKind::Thread.tag() as u8;
    reseal_frame_header(&mut bad, f.offset as usize);
    let err = read_records(&bad[..]).unwrap_err();
    assert!(matches!(err, FormatError::BadFrame { seq: 1, .. }), "{err}");

    bad[f.offset as usize + 2] = 200;
    reseal_frame_header(&mut bad, f.offset as usize);
    let err = read_records(&bad[..]).unwrap_err();
    assert!(
        matches!(&err, FormatError::BadFrame { what, .. } if what == "unknown record kind 200"),
        "{err}"
    );
}

#[test]
fn a_reader_that_failed_stays_failed() {
    let bytes = records_image();
    let f = frames(&bytes)[2];
    let mut bad = bytes.clone();
    bad[f.offset as usize + FRAME_HEADER_LEN] ^= 1;
    let mut reader = RecordReader::new(&bad[..]).unwrap();
    assert!(reader.next().unwrap().is_ok());
    assert!(reader.next().unwrap().is_ok());
    assert!(reader.next().unwrap().is_err());
    assert!(reader.next().is_none());
    assert!(!reader.is_complete());
}

#[test]
fn error_messages_name_what_and_where() {
    let bytes = records_image();
    let err = read_records(&bytes[..40]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "stream truncated at offset 40: frame header or trailer missing"
    );
    let mut bad = bytes.clone();
    let last = bytes.len() - 1;
    bad[last] ^= 1;
    let err = read_records(&bad[..]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("(trailer): payload checksum mismatch"),
        "{msg}"
    );
}
