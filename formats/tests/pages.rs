//! The page store: round trips with and without compression, zero pages,
//! chunking, parallel encoding, damage, and throughput on 64 MiB (1 GiB with
//! `--ignored` under `--release`).

mod common;

use std::time::Instant;

use common::*;
use cr_formats::*;
use proptest::prelude::*;

fn expected_sample() -> Pages {
    let a = PageOwner::Mm { pid: 1 };
    let mut p: Pages = vec![
        (a, 0x40_0000, Some(page(0x40_0000, 1))),
        (a, 0x40_1000, None),
        (a, 0x40_2000, Some(page(0x40_2000, 1))),
    ];
    for i in 0..300u64 {
        p.push((a, 0x7f00_0000_0000 + i * PAGE_SIZE as u64, None));
    }
    p.push((
        PageOwner::Mm { pid: 2 },
        0x60_0000,
        Some(page(0x60_0000, 2)),
    ));
    p.push((PageOwner::Shmem { id: 42 }, 0, Some(page(0, 42))));
    p
}

#[test]
fn sample_round_trips_with_and_without_zstd() {
    for compression in [Compression::None, Compression::Zstd { level: 3 }] {
        let bytes = pages_image(compression);
        assert_eq!(
            read_pages(&bytes).unwrap(),
            expected_sample(),
            "{compression:?}"
        );
        let r = PageReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header().codec, compression.codec());
        assert_eq!(r.header().image_id, IMAGE_ID);
    }
    let raw = pages_image(Compression::None).len();
    let zstd = pages_image(Compression::Zstd { level: 3 }).len();
    assert!(zstd < raw, "zstd {zstd} >= raw {raw}");
}

#[test]
fn zero_pages_take_no_space() {
    let mut out = Vec::new();
    let mut w = PageWriter::new(&mut out, PageWriterOptions::new(1)).unwrap();
    w.write_pages(PageOwner::Mm { pid: 1 }, 0, &vec![0u8; 256 * PAGE_SIZE])
        .unwrap();
    let (stream, stats) = w.finish().unwrap();
    assert_eq!(
        (stats.data_pages, stats.zero_pages, stats.chunks),
        (0, 256, 1)
    );
    assert!(stream.bytes < 200, "{} bytes for zero pages", stream.bytes);

    // With zero detection off the same pages are stored.
    let mut out = Vec::new();
    let mut options = PageWriterOptions::new(1);
    options.skip_zero_pages = false;
    let mut w = PageWriter::new(&mut out, options).unwrap();
    w.write_pages(PageOwner::Mm { pid: 1 }, 0, &vec![0u8; 4 * PAGE_SIZE])
        .unwrap();
    let (_, stats) = w.finish().unwrap();
    assert_eq!((stats.data_pages, stats.zero_pages), (4, 0));
}

#[test]
fn runs_merge_and_chunks_split_at_the_chunk_size() {
    let mut out = Vec::new();
    let mut options = PageWriterOptions::new(1);
    options.chunk_size = 8 * PAGE_SIZE;
    let mut w = PageWriter::new(&mut out, options).unwrap();
    let owner = PageOwner::Mm { pid: 9 };
    // 20 contiguous pages handed over one at a time.
    for i in 0..20u64 {
        let vaddr = 0x10_0000 + i * PAGE_SIZE as u64;
        w.write_pages(owner, vaddr, &page(vaddr, 0)).unwrap();
    }
    w.finish().unwrap();
    let mut r = PageReader::new(&out[..]).unwrap();
    let mut runs = Vec::new();
    while let Some(chunk) = r.next_chunk().unwrap() {
        runs.push(chunk.header.runs.clone());
    }
    let lens: Vec<Vec<u32>> = runs
        .iter()
        .map(|c| c.iter().map(|r| r.nr_pages).collect())
        .collect();
    assert_eq!(lens, vec![vec![8], vec![8], vec![4]]);
    assert_eq!(r.stats().data_pages, 20);
    assert_eq!(r.stream_stats().unwrap().frames, 3);
}

#[test]
fn writer_refuses_partial_or_unaligned_pages() {
    let mut w = PageWriter::new(Vec::new(), PageWriterOptions::new(1)).unwrap();
    let o = PageOwner::Mm { pid: 1 };
    for (vaddr, len) in [(0x1001, PAGE_SIZE), (0x1000, PAGE_SIZE - 1)] {
        let err = w.write_pages(o, vaddr, &vec![1; len]).unwrap_err();
        assert!(matches!(err, FormatError::Unaligned { .. }), "{err}");
    }
    let err = w
        .write_pages(o, u64::MAX - 0xfff, &[1; 2 * PAGE_SIZE])
        .unwrap_err();
    assert!(matches!(err, FormatError::Unaligned { .. }), "{err}");
    let err = w.write_zero_pages(o, 0, u64::MAX / 2).unwrap_err();
    assert!(matches!(err, FormatError::Unaligned { .. }), "{err}");
}

#[test]
fn chunks_encoded_on_threads_write_in_order() {
    let owner = PageOwner::Mm { pid: 5 };
    let chunks: Vec<(ChunkHeader, Vec<u8>)> = (0..8u64)
        .map(|c| {
            let vaddr = 0x100_0000 + c * 16 * PAGE_SIZE as u64;
            let data: Vec<u8> = (0..16)
                .flat_map(|i| page(vaddr + i * PAGE_SIZE as u64, c))
                .collect();
            let header = ChunkHeader {
                owner,
                runs: vec![
                    PageRun {
                        vaddr,
                        nr_pages: 16,
                        kind: RunKind::Data,
                    },
                    PageRun {
                        vaddr: vaddr + 16 * PAGE_SIZE as u64,
                        nr_pages: 3,
                        kind: RunKind::Zero,
                    },
                ],
            };
            (header, data)
        })
        .collect();
    let compression = Compression::Zstd { level: 1 };
    let encoded: Vec<EncodedChunk> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|(h, d)| s.spawn(move || encode_chunk(h, d, compression).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut out = Vec::new();
    let mut options = PageWriterOptions::new(7);
    options.compression = compression;
    let mut w = PageWriter::new(&mut out, options).unwrap();
    for (i, e) in encoded.iter().enumerate() {
        assert!(e.compressed());
        let info = w.write_encoded(e).unwrap();
        assert_eq!(info.seq as usize, i);
    }
    let (_, stats) = w.finish().unwrap();
    assert_eq!((stats.data_pages, stats.zero_pages), (128, 24));

    let mut r = PageReader::new(&out[..]).unwrap();
    let mut i = 0;
    while let Some(chunk) = r.next_chunk().unwrap() {
        assert_eq!(chunk.header, chunks[i].0);
        assert_eq!(chunk.data(), &chunks[i].1[..]);
        i += 1;
    }
    assert_eq!(i, chunks.len());
}

#[test]
fn a_compressed_chunk_needs_a_compressed_stream() {
    let header = ChunkHeader {
        owner: PageOwner::Mm { pid: 1 },
        runs: vec![PageRun {
            vaddr: 0,
            nr_pages: 1,
            kind: RunKind::Data,
        }],
    };
    let e = encode_chunk(&header, &[0u8; PAGE_SIZE], Compression::Zstd { level: 1 }).unwrap();
    assert!(e.compressed());
    let mut w = PageWriter::new(Vec::new(), PageWriterOptions::new(1)).unwrap();
    assert!(matches!(
        w.write_encoded(&e),
        Err(FormatError::Compress { .. })
    ));
}

#[test]
fn every_truncation_of_pages_is_truncated() {
    for compression in [Compression::None, Compression::Zstd { level: 1 }] {
        let bytes = pages_image(compression);
        for len in 0..bytes.len() {
            match read_pages(&bytes[..len]) {
                Err(FormatError::Truncated { offset, .. }) => assert_eq!(offset, len as u64),
                Err(e) => panic!("cut at {len}: {e}"),
                Ok(_) => panic!("cut at {len}: accepted"),
            }
        }
    }
}

#[test]
fn flipped_page_byte_names_the_chunk() {
    let bytes = pages_image(Compression::None);
    let mut bad = bytes.clone();
    // Frame 0's payload starts right after the stream and frame headers.
    bad[STREAM_HEADER_LEN + FRAME_HEADER_LEN + 100] ^= 0x80;
    let err = read_pages(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::FrameChecksum {
                seq: 0,
                offset: 32,
                part: FramePart::Payload,
                kind: Some("page chunk")
            }
        ),
        "{err}"
    );
}

#[test]
fn a_chunk_whose_index_lies_is_bad_chunk() {
    // A stream written by hand whose chunk declares two pages but holds one.
    let mut out = Vec::new();
    let mut w = PageWriter::new(&mut out, PageWriterOptions::new(1)).unwrap();
    w.write_pages(PageOwner::Mm { pid: 1 }, 0, &page(0, 0))
        .unwrap();
    w.finish().unwrap();
    let payload_at = STREAM_HEADER_LEN + FRAME_HEADER_LEN;
    let stored =
        u32::from_le_bytes(out[payload_at - 16..payload_at - 12].try_into().unwrap()) as usize;
    let payload = &mut out[payload_at..payload_at + stored];
    let index_len = u32::from_le_bytes(payload[stored - 4..].try_into().unwrap()) as usize;
    let index = &mut payload[stored - 4 - index_len..stored - 4];
    let mut header: ChunkHeader = postcard::from_bytes(index).unwrap();
    header.runs[0].nr_pages = 2;
    let new_index = postcard::to_allocvec(&header).unwrap();
    assert_eq!(new_index.len(), index_len);
    index.copy_from_slice(&new_index);
    let crc = frame::checksum(payload);
    out[payload_at - 8..payload_at - 4].copy_from_slice(&crc.to_le_bytes());
    reseal_frame_header(&mut out, STREAM_HEADER_LEN);
    let err = read_pages(&out).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::BadChunk {
                seq: 0,
                what: "data runs do not cover the chunk's data exactly",
                ..
            }
        ),
        "{err}"
    );
}

/// Writes `total` bytes of pages (a quarter of them zero) and reads them
/// back, checking each page; returns (write, read) throughput in MiB/s.
fn round_trip(total: usize, compression: Compression) -> (f64, f64) {
    const BATCH: usize = 256; // pages per write_pages call, like a pagemap run
    let owner = PageOwner::Mm { pid: 1 };
    let mut batch = vec![0u8; BATCH * PAGE_SIZE];
    let fill = |batch: &mut [u8], first: u64| {
        for (i, p) in batch.chunks_exact_mut(PAGE_SIZE).enumerate() {
            let n = first + i as u64;
            if n % 4 == 3 {
                p.fill(0);
            } else {
                p.fill((n % 251) as u8 + 1);
                p[..8].copy_from_slice(&n.to_le_bytes());
            }
        }
    };
    // Touch the output buffer first: on a VM, faulting in fresh memory costs
    // more than everything the writer does.
    let mut out = vec![1u8; total + total / 64];
    out.clear();
    let mut options = PageWriterOptions::new(1);
    options.compression = compression;
    let start = Instant::now();
    let mut w = PageWriter::new(&mut out, options).unwrap();
    let pages = total / PAGE_SIZE;
    for first in (0..pages).step_by(BATCH) {
        fill(&mut batch, first as u64);
        w.write_pages(owner, (first * PAGE_SIZE) as u64, &batch)
            .unwrap();
    }
    let (_, stats) = w.finish().unwrap();
    let write = start.elapsed();
    assert_eq!(stats.data_pages + stats.zero_pages, pages as u64);
    assert_eq!(stats.zero_pages, pages as u64 / 4);

    let start = Instant::now();
    let mut r = PageReader::new(&out[..]).unwrap();
    let mut seen = 0u64;
    let mut expect = vec![0u8; PAGE_SIZE];
    while let Some(chunk) = r.next_chunk().unwrap() {
        for run in chunk.runs() {
            let first = run.vaddr / PAGE_SIZE as u64;
            match run.kind {
                RunKind::Zero => {
                    assert!((0..u64::from(run.nr_pages)).all(|i| (first + i) % 4 == 3));
                }
                RunKind::Data => {
                    for (i, p) in run.data.chunks_exact(PAGE_SIZE).enumerate() {
                        fill(&mut expect, first + i as u64);
                        assert!(p == &expect[..], "page {}", first + i as u64);
                    }
                }
            }
            seen += u64::from(run.nr_pages);
        }
    }
    let read = start.elapsed();
    assert!(r.is_complete());
    assert_eq!(seen, pages as u64);
    let mib = total as f64 / (1 << 20) as f64;
    (mib / write.as_secs_f64(), mib / read.as_secs_f64())
}

#[test]
fn round_trip_64_mib() {
    for compression in [Compression::None, Compression::Zstd { level: 1 }] {
        let (w, r) = round_trip(64 << 20, compression);
        eprintln!("64 MiB {compression:?}: write {w:.0} MiB/s, read+verify {r:.0} MiB/s");
    }
}

/// `cargo test --release -p cr-formats --test pages -- --ignored`
#[test]
#[ignore = "1 GiB: run with --release --ignored"]
fn round_trip_1_gib() {
    for compression in [Compression::None, Compression::Zstd { level: 1 }] {
        let (w, r) = round_trip(1 << 30, compression);
        eprintln!("1 GiB {compression:?}: write {w:.0} MiB/s, read+verify {r:.0} MiB/s");
    }
}

#[derive(Debug, Clone)]
enum Segment {
    /// Pages of data; the flags say which are all zero.
    Data(Vec<bool>, u8),
    Zero(u16),
    /// A hole: pages the image says nothing about.
    Gap(u8),
}

fn segment() -> impl Strategy<Value = Segment> {
    prop_oneof![
        (prop::collection::vec(any::<bool>(), 1..24), any::<u8>())
            .prop_map(|(z, s)| Segment::Data(z, s)),
        (1u16..2000).prop_map(Segment::Zero),
        (1u8..5).prop_map(Segment::Gap),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_runs_round_trip(
        plan in prop::collection::vec((0i32..3, segment()), 1..40),
        zstd in any::<bool>(),
        skip_zero in any::<bool>(),
        chunk_pages in 1usize..12,
    ) {
        let mut options = PageWriterOptions::new(3);
        options.compression = if zstd { Compression::Zstd { level: 1 } } else { Compression::None };
        options.chunk_size = chunk_pages * PAGE_SIZE;
        options.skip_zero_pages = skip_zero;
        let mut out = Vec::new();
        let mut w = PageWriter::new(&mut out, options).unwrap();
        let mut next = [0x1000_0000u64; 3];
        // Expected contents, None = zero page.
        let mut expected: Pages = Vec::new();
        for (pid, seg) in &plan {
            let owner = PageOwner::Mm { pid: *pid };
            let at = &mut next[*pid as usize];
            match seg {
                Segment::Data(zero, seed) => {
                    let mut data = Vec::new();
                    for (i, z) in zero.iter().enumerate() {
                        let vaddr = *at + (i * PAGE_SIZE) as u64;
                        let p = if *z { vec![0; PAGE_SIZE] } else { page(vaddr, u64::from(*seed)) };
                        expected.push((owner, vaddr, (!*z).then(|| p.clone())));
                        data.extend(p);
                    }
                    w.write_pages(owner, *at, &data).unwrap();
                    *at += data.len() as u64;
                }
                Segment::Zero(n) => {
                    w.write_zero_pages(owner, *at, u64::from(*n)).unwrap();
                    for i in 0..u64::from(*n) {
                        expected.push((owner, *at + i * PAGE_SIZE as u64, None));
                    }
                    *at += u64::from(*n) * PAGE_SIZE as u64;
                }
                Segment::Gap(n) => *at += u64::from(*n) * PAGE_SIZE as u64,
            }
        }
        let (_, stats) = w.finish().unwrap();
        // A stored page of zeros reads back as a zero page when zero pages
        // are kept: compare on content.
        let got: Pages = read_pages(&out).unwrap().into_iter().map(|(o, v, d)| {
            (o, v, d.filter(|p| p.iter().any(|&b| b != 0)))
        }).collect();
        prop_assert_eq!(got.len(), expected.len());
        prop_assert_eq!(got, expected);
        prop_assert_eq!(stats.data_pages + stats.zero_pages, read_pages(&out).unwrap().len() as u64);
    }
}

#[test]
fn a_zstd_frame_that_lies_about_its_size_is_decompress() {
    let header = ChunkHeader {
        owner: PageOwner::Mm { pid: 1 },
        runs: vec![PageRun {
            vaddr: 0,
            nr_pages: 4,
            kind: RunKind::Data,
        }],
    };
    let e = encode_chunk(
        &header,
        &vec![7u8; 4 * PAGE_SIZE],
        Compression::Zstd { level: 1 },
    )
    .unwrap();
    assert!(e.compressed());
    for (raw_len, payload, why) in [
        (e.raw_len() + PAGE_SIZE, e.payload().to_vec(), "holds"),
        (
            e.raw_len(),
            b"definitely not zstd".to_vec(),
            "not a zstd frame",
        ),
    ] {
        let mut out = Vec::new();
        let mut w = FrameWriter::new(
            &mut out,
            StreamHeader::new(StreamKind::Pages, Codec::Zstd, 1),
        )
        .unwrap();
        w.write_frame(
            FrameKind::PageChunk,
            0,
            true,
            raw_len,
            &payload,
            frame::checksum(&payload),
        )
        .unwrap();
        w.finish().unwrap();
        let err = read_pages(&out).unwrap_err();
        assert!(
            matches!(&err, FormatError::Decompress { seq: 0, reason, .. } if reason.contains(why)),
            "{err}"
        );
    }
}

/// Every page of `bytes` read with `next_chunk_owned`, recycling each
/// buffer into the next call.
fn read_pages_owned(bytes: &[u8]) -> Result<Pages> {
    let mut r = PageReader::new(bytes)?;
    let mut out = Vec::new();
    let mut spare = Vec::new();
    while let Some(chunk) = r.next_chunk_owned(std::mem::take(&mut spare))? {
        for run in chunk.runs() {
            for i in 0..run.nr_pages as usize {
                let vaddr = run.vaddr + (i * PAGE_SIZE) as u64;
                let data = match run.kind {
                    RunKind::Data => Some(run.data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].to_vec()),
                    RunKind::Zero => None,
                };
                out.push((run.owner, vaddr, data));
            }
        }
        spare = chunk.into_buffer();
    }
    assert!(r.is_complete());
    Ok(out)
}

#[test]
fn owned_chunks_read_the_same_pages_and_the_same_damage() {
    for compression in [Compression::None, Compression::Zstd { level: 3 }] {
        let bytes = pages_image(compression);
        assert_eq!(
            read_pages_owned(&bytes).unwrap(),
            expected_sample(),
            "{compression:?}"
        );
    }
    let mut bad = pages_image(Compression::None);
    bad[STREAM_HEADER_LEN + FRAME_HEADER_LEN + 100] ^= 0x80;
    let err = read_pages_owned(&bad).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::FrameChecksum {
                seq: 0,
                part: FramePart::Payload,
                ..
            }
        ),
        "{err}"
    );
    let good = pages_image(Compression::Zstd { level: 3 });
    for len in [good.len() / 2, good.len() - 1] {
        let err = read_pages_owned(&good[..len]).unwrap_err();
        assert!(
            matches!(err, FormatError::Truncated { .. }),
            "cut at {len}: {err}"
        );
    }
}

/// Every page of `bytes` read in place with [`PageSlice`], verified in
/// `parts` shares as the restore's threads do.
fn read_pages_in_place(bytes: &[u8], parts: usize) -> Result<Pages> {
    let slice = PageSlice::open(bytes)?;
    let n = slice.len();
    let mut out = Vec::new();
    for k in 0..parts {
        for chunk in slice.verify(n * k / parts..n * (k + 1) / parts)? {
            for run in chunk.runs() {
                for i in 0..run.nr_pages as usize {
                    let vaddr = run.vaddr + (i * PAGE_SIZE) as u64;
                    let data = match run.kind {
                        RunKind::Data => {
                            Some(run.data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].to_vec())
                        }
                        RunKind::Zero => None,
                    };
                    out.push((run.owner, vaddr, data));
                }
            }
        }
    }
    Ok(out)
}

#[test]
fn a_stream_checked_in_place_reads_the_same_pages() {
    let bytes = pages_image(Compression::None);
    for parts in [1, 2, 3] {
        assert_eq!(
            read_pages_in_place(&bytes, parts).unwrap(),
            expected_sample()
        );
    }
    let slice = PageSlice::open(&bytes).unwrap();
    let mut reader = PageReader::new(&bytes[..]).unwrap();
    while reader.next_chunk().unwrap().is_some() {}
    assert_eq!(Some(slice.stream_stats()), reader.stream_stats());
    assert!(slice.verify(0..slice.len() + 1).is_err());
}

#[test]
fn in_place_every_truncation_is_truncated() {
    let bytes = pages_image(Compression::None);
    for len in 0..bytes.len() {
        match PageSlice::open(&bytes[..len]) {
            Err(FormatError::Truncated { .. }) => {}
            Err(e) => panic!("cut at {len}: {e}"),
            Ok(_) => panic!("cut at {len}: accepted"),
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        PageSlice::open(&longer),
        Err(FormatError::TrailingData { .. })
    ));
}

#[test]
fn in_place_every_flipped_byte_is_refused_like_the_stream_reader_does() {
    let bytes = pages_image(Compression::None);
    for at in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let streamed = read_pages(&bad);
        let in_place = read_pages_in_place(&bad, 2);
        match (&streamed, &in_place) {
            (Err(a), Err(b)) => assert_eq!(
                std::mem::discriminant(a),
                std::mem::discriminant(b),
                "byte {at}: {a} / {b}"
            ),
            _ => panic!("byte {at}: stream {streamed:?}, in place {in_place:?}"),
        }
    }
}

#[test]
fn a_compressed_chunk_cannot_be_used_in_place() {
    let bytes = pages_image(Compression::Zstd { level: 3 });
    match PageSlice::open(&bytes) {
        Err(FormatError::BadFrame { what, .. }) => assert!(what.contains("compressed"), "{what}"),
        other => panic!("{other:?}"),
    }
}

/// A pages stream of 20 chunks of 8 pages.
fn chunked_stream() -> (Vec<u8>, StreamStats) {
    let mut out = Vec::new();
    let mut options = PageWriterOptions::new(1);
    options.chunk_size = 8 * PAGE_SIZE;
    let mut w = PageWriter::new(&mut out, options).unwrap();
    for i in 0..160u64 {
        let vaddr = 0x10_0000 + i * PAGE_SIZE as u64;
        w.write_pages(PageOwner::Mm { pid: 3 }, vaddr, &page(vaddr, 3))
            .unwrap();
    }
    let (stream, _) = w.finish().unwrap();
    (out, stream)
}

fn check_in_pieces(bytes: &[u8], piece: usize) -> Result<StreamStats> {
    let mut check = StreamCheck::new(StreamKind::Pages);
    for part in bytes.chunks(piece) {
        check.feed(part)?;
    }
    check.finish()
}

#[test]
fn a_stream_checked_as_it_goes_by_is_accepted_in_pieces_of_any_size() {
    let (bytes, stream) = chunked_stream();
    for piece in [1, 7, 24, 4096, 65536, bytes.len()] {
        let stats = check_in_pieces(&bytes, piece).unwrap();
        assert_eq!(stats, stream, "pieces of {piece}");
    }
}

#[test]
fn a_stream_checked_as_it_goes_by_refuses_what_a_reader_refuses() {
    let (bytes, _) = chunked_stream();
    // A payload byte: its frame's checksum.
    let mut bad = bytes.clone();
    bad[STREAM_HEADER_LEN + FRAME_HEADER_LEN + 100] ^= 1;
    assert!(matches!(
        check_in_pieces(&bad, 4096),
        Err(FormatError::FrameChecksum {
            part: FramePart::Payload,
            ..
        })
    ));
    assert!(PageReader::new(&bad[..])
        .and_then(|mut r| {
            while r.next_chunk()?.is_some() {}
            Ok(())
        })
        .is_err());
    // A frame header byte.
    let mut bad = bytes.clone();
    bad[STREAM_HEADER_LEN + 9] ^= 1;
    assert!(matches!(
        check_in_pieces(&bad, 4096),
        Err(FormatError::FrameChecksum {
            part: FramePart::Header,
            ..
        })
    ));
    // Cut short, or followed by more.
    assert!(matches!(
        check_in_pieces(&bytes[..bytes.len() - 1], 4096),
        Err(FormatError::Truncated { .. })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        check_in_pieces(&longer, 4096),
        Err(FormatError::TrailingData { .. })
    ));
    // A stream of another kind.
    let mut records = StreamCheck::new(StreamKind::Records);
    assert!(records.feed(&bytes[..STREAM_HEADER_LEN]).is_err());
}
