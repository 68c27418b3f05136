//! The bodies of the fuzz targets, kept in a library so that a plain
//! `cargo check`/`cargo test` in this directory builds them on a stable
//! toolchain (cargo-fuzz itself needs nightly).
//!
//! Checksums stop random bytes at the first frame: a fuzzer almost never
//! forges a crc32c. So each target has two modes, picked by the first input
//! byte:
//!
//! ```text
//!   even: | mode | stream bytes ...                                   |  decoded as they are
//!   odd:  | mode | tag | flags | raw len (u32 LE) | payload ...       |  framed, then decoded
//! ```
//!
//! In the framed mode the payload becomes one frame (after a valid manifest,
//! for records) of an otherwise valid stream with every checksum and the
//! trailer right, so the decoders behind the checksums (zstd, postcard, the
//! chunk index) get the fuzzer's bytes. `flags & 1` marks the frame
//! zstd-compressed, with the given raw length.
//!
//! Besides not panicking, a stream that decodes must encode again to the
//! same records (or pages).
//!
//! The disk target (see [`disk`]) has three modes, by the first byte mod 3:
//! a delta file as it is, a chain manifest as it is, and a delta file whose
//! header slot 0 and BAT copies A get valid checksums first.

use cr_formats::disk;
use cr_formats::frame::checksum;
use cr_formats::*;

const IMAGE_ID: u64 = 0xf022;

/// The records target.
pub fn records(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => decode_records(&framed(StreamKind::Records, rest)),
        _ => decode_records(data),
    }
}

/// The pages target.
pub fn pages(data: &[u8]) {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 1 => decode_pages(&framed(StreamKind::Pages, rest)),
        _ => decode_pages(data),
    }
}

fn manifest() -> Manifest {
    Manifest {
        image_id: IMAGE_ID,
        cr_version: "fuzz".into(),
        container: "fuzz".into(),
        config_toml: String::new(),
        created_unix_ns: 0,
        arch: Arch::X86_64,
        page_size: PAGE_SIZE as u32,
        kernel_release: String::new(),
        pages_codec: Codec::Zstd,
    }
}

/// A valid stream of `kind` around one frame made of the fuzzer's bytes.
fn framed(kind: StreamKind, data: &[u8]) -> Vec<u8> {
    let (head, payload) = data.split_at(data.len().min(6));
    let mut h = [0u8; 6];
    h[..head.len()].copy_from_slice(head);
    let compressed = h[1] & 1 == 1;
    let raw_len = if compressed {
        u32::from_le_bytes([h[2], h[3], h[4], h[5]]) as usize % (MAX_FRAME_LEN as usize + 1)
    } else {
        payload.len()
    };
    let mut out = Vec::new();
    let header = StreamHeader::new(kind, Codec::Zstd, IMAGE_ID);
    let Ok(mut w) = FrameWriter::new(&mut out, header) else {
        return out;
    };
    let frame_kind = match kind {
        StreamKind::Records => {
            if let Ok(m) = postcard::to_allocvec(&Record::Manifest(manifest())) {
                let _ = w.write_frame(FrameKind::Record, 0, false, m.len(), &m, checksum(&m));
            }
            FrameKind::Record
        }
        StreamKind::Pages => FrameKind::PageChunk,
    };
    let tag = if frame_kind == FrameKind::Record {
        u16::from(h[0])
    } else {
        0
    };
    let _ = w.write_frame(
        frame_kind,
        tag,
        compressed,
        raw_len,
        payload,
        checksum(payload),
    );
    let _ = w.finish();
    out
}

fn decode_records(bytes: &[u8]) {
    // The streaming reader, record by record.
    if let Ok(reader) = RecordReader::new(bytes) {
        for entry in reader {
            if entry.is_err() {
                break;
            }
        }
    }
    // The whole-image reader; what it accepts must survive a round trip.
    let Ok(image) = read_records(bytes) else {
        return;
    };
    let mut out = Vec::new();
    let Ok(mut w) = RecordWriter::new(&mut out, &image.manifest) else {
        panic!("an accepted manifest does not encode");
    };
    for e in &image.entries[1..] {
        if let Err(err) = w.write(&e.record) {
            panic!("an accepted record does not encode: {err}");
        }
    }
    if let Err(err) = w.finish() {
        panic!("cannot finish: {err}");
    }
    let again = match read_records(&out[..]) {
        Ok(again) => again,
        Err(err) => panic!("a re-encoded image does not decode: {err}"),
    };
    let a: Vec<&Record> = image.entries.iter().map(|e| &e.record).collect();
    let b: Vec<&Record> = again.entries.iter().map(|e| &e.record).collect();
    assert_eq!(a, b, "records changed in a round trip");
}

/// What a stream says about some pages: (owner, address, one page's bytes or
/// None for zero, number of pages).
type Page = (PageOwner, u64, Option<Vec<u8>>, u64);

fn decode_pages(bytes: &[u8]) {
    let Ok(mut reader) = PageReader::new(bytes) else {
        return;
    };
    let mut runs: Vec<(PageOwner, u64, RunKind, Vec<u8>, u32)> = Vec::new();
    loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => {
                for run in chunk.runs() {
                    if runs.len() < 4096 {
                        runs.push((
                            run.owner,
                            run.vaddr,
                            run.kind,
                            run.data.to_vec(),
                            run.nr_pages,
                        ));
                    }
                }
            }
            Ok(None) => break,
            Err(_) => return,
        }
    }
    assert!(reader.is_complete());
    if runs.len() >= 4096 {
        return;
    }
    // Write what was read and read it again.
    let mut out = Vec::new();
    let mut options = PageWriterOptions::new(IMAGE_ID);
    options.skip_zero_pages = false;
    options.chunk_size = 16 * PAGE_SIZE;
    let Ok(mut w) = PageWriter::new(&mut out, options) else {
        panic!("cannot start a page writer");
    };
    let mut expected: Vec<Page> = Vec::new();
    for (owner, vaddr, kind, data, nr) in &runs {
        let r = match kind {
            RunKind::Data => w.write_pages(*owner, *vaddr, data),
            RunKind::Zero => w.write_zero_pages(*owner, *vaddr, u64::from(*nr)),
        };
        if let Err(err) = r {
            panic!("an accepted run does not encode: {err}");
        }
        push_merged(&mut expected, flatten(*owner, *vaddr, *kind, data, *nr));
    }
    if let Err(err) = w.finish() {
        panic!("cannot finish: {err}");
    }
    let Ok(mut again) = PageReader::new(&out[..]) else {
        panic!("a re-encoded stream does not open");
    };
    let mut got: Vec<Page> = Vec::new();
    loop {
        match again.next_chunk() {
            Ok(Some(chunk)) => {
                for run in chunk.runs() {
                    push_merged(
                        &mut got,
                        flatten(run.owner, run.vaddr, run.kind, run.data, run.nr_pages),
                    );
                }
            }
            Ok(None) => break,
            Err(err) => panic!("a re-encoded stream does not decode: {err}"),
        }
    }
    assert!(got == expected, "pages changed in a round trip");
}

/// Expands data runs into pages and keeps zero runs as counts (they may be
/// huge), merging contiguous zero runs, since the writer merges them too.
fn flatten(owner: PageOwner, vaddr: u64, kind: RunKind, data: &[u8], nr: u32) -> Vec<Page> {
    match kind {
        RunKind::Zero => vec![(owner, vaddr, None, u64::from(nr))],
        RunKind::Data => data
            .chunks(PAGE_SIZE)
            .enumerate()
            .map(|(i, p)| (owner, vaddr + (i * PAGE_SIZE) as u64, Some(p.to_vec()), 1))
            .collect(),
    }
}

fn push_merged(list: &mut Vec<Page>, pages: Vec<Page>) {
    for p in pages {
        if let Some(last) = list.last_mut() {
            let end = last.1.wrapping_add(last.3.wrapping_mul(PAGE_SIZE as u64));
            if p.2.is_none() && last.2.is_none() && last.0 == p.0 && end == p.1 {
                last.3 += p.3;
                continue;
            }
        }
        list.push(p);
    }
}

/// The disk target.
pub fn disk(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => decode_delta(rest.to_vec()),
        1 => decode_manifest(rest),
        _ => decode_delta(with_checksums(rest)),
    }
}

fn decode_manifest(bytes: &[u8]) {
    let Ok(m) = disk::ChainManifest::decode("fuzz", bytes) else {
        return;
    };
    let again = match m.encode() {
        Ok(b) => b,
        Err(e) => panic!("an accepted manifest does not encode: {e}"),
    };
    match disk::ChainManifest::decode("fuzz", &again) {
        Ok(m2) => assert_eq!(m, m2, "manifest changed in a round trip"),
        Err(e) => panic!("a re-encoded manifest does not decode: {e}"),
    }
}

/// Gives header slot 0 and every BAT copy A that the header points at a
/// valid crc32c.
fn with_checksums(bytes: &[u8]) -> Vec<u8> {
    use disk::bat::{BAT_BLOCK_LEN, BAT_PAIR_LEN};
    let mut b = bytes.to_vec();
    if b.len() < disk::HEADER_AREA as usize {
        return b;
    }
    let crc = checksum(&b[..72]);
    b[72..76].copy_from_slice(&crc.to_le_bytes());
    let u64_at = |b: &[u8], i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(x)
    };
    let bat = u64_at(&b, 40);
    let blocks = u32::from_le_bytes([b[48], b[49], b[50], b[51]]).min(64);
    for i in 0..u64::from(blocks) {
        let Some(at) = bat.checked_add(i * BAT_PAIR_LEN) else {
            break;
        };
        let at = at as usize;
        let Some(copy) = b.get_mut(at..at.saturating_add(BAT_BLOCK_LEN)) else {
            break;
        };
        if copy.len() < BAT_BLOCK_LEN {
            break;
        }
        copy[BAT_BLOCK_LEN - 8..BAT_BLOCK_LEN - 4].fill(0);
        copy[4080..4084].copy_from_slice(&(i as u32).to_le_bytes());
        let crc = checksum(&copy[..BAT_BLOCK_LEN - 4]);
        copy[BAT_BLOCK_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    b
}

/// An accepted delta reads every cluster it maps, checks clean, and stays
/// valid after a write and a flush.
fn decode_delta(bytes: Vec<u8>) {
    use disk::{Delta, MemStore};
    let store = MemStore::from_bytes(bytes);
    let Ok(mut d) = Delta::open(store.clone(), "fuzz") else {
        let _ = disk::check_delta(store, "fuzz");
        return;
    };
    let cs = d.cluster_size() as usize;
    if cs > 1 << 20 {
        return;
    }
    let mut buf = vec![0u8; cs];
    let mapped: Vec<u64> = d.entries().map(|(v, _)| v).take(64).collect();
    for &v in &mapped {
        if let Err(e) = d.read(v, 0, &mut buf) {
            panic!("an accepted delta cannot read cluster {v}: {e}");
        }
    }
    let report = disk::check_delta(store.clone(), "fuzz");
    assert!(
        report.is_consistent(),
        "open accepted what check refuses: {:?}",
        report.findings
    );
    // Write one cluster (fresh or in place), flush, reopen.
    let v = mapped.first().copied().unwrap_or(0);
    buf.fill(0xa5);
    let g = d.generation();
    if d.write_cluster(v, &buf, g).and_then(|_| d.flush()).is_err() {
        return;
    }
    let d = match Delta::open(store, "fuzz") {
        Ok(d) => d,
        Err(e) => panic!("a written delta does not reopen: {e}"),
    };
    let mut back = vec![0u8; cs];
    if let Err(e) = d.read(v, 0, &mut back) {
        panic!("a written cluster does not read back: {e}");
    }
    assert!(back == buf, "a written cluster reads back different bytes");
}

#[cfg(test)]
mod tests {
    //! Runs both targets over the seeds and a few thousand generated inputs,
    //! on a stable toolchain.

    use super::*;

    fn seeds() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for dir in ["seeds/records", "seeds/pages"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            for e in std::fs::read_dir(path).unwrap() {
                out.push(std::fs::read(e.unwrap().path()).unwrap());
            }
        }
        out
    }

    #[test]
    fn disk_seeds_and_their_mutations_do_not_panic() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/disk");
        let mut x = 0x9abc_def1_2345_6789u64;
        let mut n = 0;
        for e in std::fs::read_dir(path).unwrap() {
            let seed = std::fs::read(e.unwrap().path()).unwrap();
            disk(&seed);
            n += 1;
            for _ in 0..300 {
                let mut m = seed.clone();
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = 1 + (x as usize) % (m.len() - 1);
                m[at] = (x >> 32) as u8;
                disk(&m);
                // Every mode over the same bytes.
                m[0] = m[0].wrapping_add(1);
                disk(&m);
            }
        }
        assert!(n >= 3);
    }

    /// Writes seeds/disk (run with --ignored after a format change).
    #[test]
    #[ignore = "writes seeds/disk: run by hand with --ignored after a disk format change"]
    fn write_disk_seeds() {
        use cr_formats::disk::ChainDir;
        let dir = disk::MemDir::new();
        let mut c = disk::Chain::create(dir.clone(), 16 * 4096, 4096, "seed").unwrap();
        c.write_at(0, &[1; 5000]).unwrap();
        c.write_at(7 * 4096, &[2; 4096]).unwrap();
        c.snapshot("two").unwrap();
        c.write_at(3 * 4096, &[3; 10]).unwrap();
        c.flush().unwrap();
        let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/disk");
        std::fs::create_dir_all(&out).unwrap();
        let m = dir.read_manifest().unwrap();
        std::fs::write(out.join("manifest"), [&[1u8][..], &m].concat()).unwrap();
        for (i, name) in dir.file_names().iter().enumerate() {
            let bytes = dir.file_bytes(name).unwrap();
            std::fs::write(out.join(format!("delta{i}")), [&[0u8][..], &bytes].concat()).unwrap();
            std::fs::write(
                out.join(format!("delta{i}-fixed")),
                [&[2u8][..], &bytes].concat(),
            )
            .unwrap();
        }
    }

    #[test]
    fn seeds_and_their_mutations_do_not_panic() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in seeds() {
            records(&seed);
            pages(&seed);
            for _ in 0..500 {
                let mut m = seed.clone();
                let at = next() as usize % m.len();
                m[at] = next() as u8;
                records(&m);
                pages(&m);
                // The framed mode, with bytes from the seed as the payload.
                let start = next() as usize % m.len();
                let end = (start + next() as usize % 600).min(m.len());
                let mut framed_input = vec![1u8];
                framed_input.extend_from_slice(&m[start..end]);
                records(&framed_input);
                pages(&framed_input);
            }
        }
    }
}
