//! Streaming the page store into the prepared husks, on both cores.
//!
//! ```text
//!  reader thread                   supervisor's thread            helper thread
//!  read a chunk into a buffer,
//!  verify it (frame checksum,
//!  zstd, index), hand the    ───►  split its data runs in two ──► write half A
//!  buffer over, no copy            halves; write half B           (process_vm_writev,
//!  (at most IN_FLIGHT ahead)       wait for half A  ◄──────────── /proc/PID/mem for
//!  ...                             buffer back to the reader      read-only maps)
//!  verify the trailer              ...
//! ```
//!
//! * Writing fresh memory is what costs: the kernel allocates (and zeroes)
//!   every page it is written to, so two writers on the two halves of each
//!   chunk, with the reader's copy and checksum overlapped on whichever core
//!   is free, is what makes a big address space come back fast.
//! * Every byte written is a byte the reader verified: the writers use the
//!   reader's own buffer, so nothing is read twice and nothing can change
//!   between the check and the write.
//! * Chunks are applied in stream order: both halves of a chunk are written
//!   before any page of the next one, so when a page appears twice in the
//!   store the later copy wins.
//! * Nothing resumes before the reader has verified the trailer; any error
//!   (a corrupt or truncated chunk, a page outside the image's mappings, a
//!   failed write) returns here and the caller abandons the whole tree.

use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc;
use std::sync::Arc;

use cr_formats::schema::Vma;
use cr_formats::{OwnedPageChunk, PageOwner, PageReader, PAGE_SIZE};
use nix::unistd::Pid;

use crate::error::{Error, Result};
use crate::restore::image::LoadedImage;
use crate::restore::overlay::{PageOverlay, ZEROS};
use crate::restore::process::{write_pages, Pages, PreparedHusk};
use crate::restore::shmem::SharedObjects;
use crate::restore::RestoreError;

/// Chunks with less page data than this are written by one thread.
const SPLIT_MIN: usize = 256 << 10;
/// Verified chunks the reader may hold ready beyond the one being written.
const IN_FLIGHT: usize = 2;

/// A run, or part of one, of a chunk, as the overlay hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Piece {
    vaddr: u64,
    nr_pages: u64,
    data: PieceData,
}

/// What a piece writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PieceData {
    /// Zero pages over fresh memory: nothing to write.
    Fresh,
    /// This byte range of the chunk's page data.
    Chunk(std::ops::Range<usize>),
    /// Zeros over pages an earlier chunk wrote (see [`PageOverlay`]).
    Zeros,
}

/// Half of a chunk for the helper thread.
struct Job<'a> {
    pid: Pid,
    vmas: &'a [Vma],
    chunk: Arc<OwnedPageChunk>,
    pieces: Vec<Piece>,
}

/// Writes the page store of `image.dir` into the prepared husks (see the
/// module documentation). Returns once every chunk was written and the
/// whole store, trailer included, was verified.
pub fn stream(
    image: &LoadedImage,
    husks: &HashMap<i32, PreparedHusk>,
    shared: &SharedObjects<'_>,
    fail: &dyn Fn(i32, RestoreError) -> Error,
) -> Result<()> {
    let path = cr_formats::layout::pages_path(&image.dir);
    let file = File::open(&path).map_err(|e| Error::io("opening checkpoint image", &path, e))?;
    let path = &path;
    let bad = move |e: cr_formats::FormatError| {
        Error::Invalid(format!("checkpoint image {}: {e}", path.display()))
    };
    let (chunk_tx, chunk_rx) = mpsc::sync_channel::<OwnedPageChunk>(IN_FLIGHT);
    let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
    let (job_tx, job_rx) = mpsc::channel::<Job<'_>>();
    let (done_tx, done_rx) = mpsc::channel::<std::result::Result<(), RestoreError>>();
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Result<()> {
            // Unbuffered: payloads are read straight into the chunk
            // buffers (a BufReader would copy every byte once more); the
            // frame headers cost one small read each.
            let mut reader = PageReader::new(file).map_err(bad)?;
            loop {
                let spare = pool_rx.try_recv().unwrap_or_default();
                match reader.next_chunk_owned(spare).map_err(bad)? {
                    Some(chunk) => {
                        if chunk_tx.send(chunk).is_err() {
                            // The writers stopped; their error is the one to report.
                            return Ok(());
                        }
                    }
                    None => break,
                }
            }
            if !reader.is_complete() {
                return Err(Error::Invalid(format!(
                    "checkpoint image {}: the page store is truncated",
                    path.display()
                )));
            }
            Ok(())
        });
        s.spawn(move || {
            for job in job_rx {
                let r = write_pieces(job.pid, job.vmas, &job.chunk, &job.pieces);
                if done_tx.send(r).is_err() {
                    break;
                }
            }
        });
        let targets = Targets {
            image,
            husks,
            shared,
            fail,
        };
        let written = write_chunks(&targets, chunk_rx, &pool_tx, job_tx, &done_rx);
        // The reader ends once the stream does, or once the writers
        // stopped and dropped their end of the channel.
        let verified = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Invalid("the page store reader panicked".into())));
        // A bad chunk ends the stream early: the reader's error explains
        // what the writers saw (if anything).
        verified.and(written)
    })
}

/// Where the pages of the store go.
struct Targets<'a, 'h> {
    image: &'a LoadedImage,
    husks: &'h HashMap<i32, PreparedHusk>,
    shared: &'h SharedObjects<'h>,
    fail: &'h dyn Fn(i32, RestoreError) -> Error,
}

/// The supervisor's side: takes the verified chunks in stream order and
/// writes each, half of it through the helper.
fn write_chunks<'a>(
    targets: &Targets<'a, '_>,
    chunks: mpsc::Receiver<OwnedPageChunk>,
    pool: &mpsc::Sender<Vec<u8>>,
    jobs: mpsc::Sender<Job<'a>>,
    done: &mpsc::Receiver<std::result::Result<(), RestoreError>>,
) -> Result<()> {
    let Targets {
        image,
        husks,
        shared,
        fail,
    } = targets;
    let image: &'a LoadedImage = image;
    // Pre-copied pages and the later runs that supersede them.
    let mut overlay = PageOverlay::default();
    for chunk in chunks {
        let owner = chunk.header.owner;
        let pid = match owner {
            PageOwner::Mm { pid } => pid,
            // Pre-copied from a process that exited before the freeze.
            PageOwner::PreCopy { pid } if !husks.contains_key(&pid) => {
                let _ = pool.send(chunk.into_buffer());
                continue;
            }
            PageOwner::PreCopy { pid } => pid,
            PageOwner::Shmem { id } => {
                // A shared object's pages go through the supervisor's own
                // descriptor of it, in stream order like the rest.
                shared.write_chunk(id, chunk.runs())?;
                let _ = pool.send(chunk.into_buffer());
                continue;
            }
        };
        let (Some(husk), Some(p)) = (husks.get(&pid), image.processes.get(&pid)) else {
            return Err(Error::Invalid(format!(
                "checkpoint image {}: pages of unknown process {pid}",
                image.dir.display()
            )));
        };
        let pieces = {
            let pages = overlay.runs(pid, owner, chunk.runs(), &p.vmas);
            pieces_of(&chunk, &pages)
        };
        let (theirs, mine) = split(pieces, chunk.data().len());
        let chunk = Arc::new(chunk);
        let helped = !theirs.is_empty();
        if helped {
            let job = Job {
                pid: husk.pid,
                vmas: &p.vmas,
                chunk: Arc::clone(&chunk),
                pieces: theirs,
            };
            if jobs.send(job).is_err() {
                return Err(Error::Invalid("the page writer thread is gone".into()));
            }
        }
        let mine = write_pieces(husk.pid, &p.vmas, &chunk, &mine);
        let theirs = if helped {
            done.recv().unwrap_or_else(|_| {
                Err(RestoreError::Invalid {
                    pid: husk.pid,
                    what: "the page writer thread is gone".into(),
                })
            })
        } else {
            Ok(())
        };
        mine.and(theirs).map_err(|e| fail(pid, e))?;
        if let Ok(chunk) = Arc::try_unwrap(chunk) {
            let _ = pool.send(chunk.into_buffer());
        }
    }
    Ok(())
}

/// Whether any two pieces cover a common page.
fn overlapping(pieces: &[Piece]) -> bool {
    let mut spans: Vec<(u64, u64)> = pieces
        .iter()
        .map(|p| (p.vaddr, p.vaddr + p.nr_pages * PAGE_SIZE as u64))
        .collect();
    spans.sort_unstable();
    spans.windows(2).any(|w| w[1].0 < w[0].1)
}

/// The overlay's runs of a chunk as pieces: where each one's bytes are.
fn pieces_of(chunk: &OwnedPageChunk, pages: &[Pages<'_>]) -> Vec<Piece> {
    let base = chunk.data().as_ptr() as usize;
    let end = base + chunk.data().len();
    pages
        .iter()
        .map(|p| {
            let data = match p.data {
                None => PieceData::Fresh,
                Some(d) if (base..=end).contains(&(d.as_ptr() as usize)) && !d.is_empty() => {
                    let at = d.as_ptr() as usize - base;
                    PieceData::Chunk(at..at + d.len())
                }
                Some(_) => PieceData::Zeros,
            };
            Piece {
                vaddr: p.vaddr,
                nr_pages: p.nr_pages,
                data,
            }
        })
        .collect()
}

/// Splits a chunk's pieces in two halves of about the same data (`total`
/// bytes): the first for the helper, the second (with every zero piece)
/// for the caller. The halves are written at once, so a chunk whose pieces
/// overlap (a pre-copy round may store a page again in the chunk that holds
/// its earlier copy, and the later one must win) goes whole to the caller,
/// in order, as does a small chunk.
fn split(pieces: Vec<Piece>, total: usize) -> (Vec<Piece>, Vec<Piece>) {
    if total < SPLIT_MIN || overlapping(&pieces) {
        return (Vec::new(), pieces);
    }
    let cut = total / 2 / PAGE_SIZE * PAGE_SIZE;
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for piece in pieces {
        match piece.data.clone() {
            PieceData::Chunk(r) if r.end <= cut => first.push(piece),
            PieceData::Chunk(r) if r.start < cut => {
                let head = ((cut - r.start) / PAGE_SIZE) as u64;
                first.push(Piece {
                    vaddr: piece.vaddr,
                    nr_pages: head,
                    data: PieceData::Chunk(r.start..cut),
                });
                second.push(Piece {
                    vaddr: piece.vaddr + head * PAGE_SIZE as u64,
                    nr_pages: piece.nr_pages - head,
                    data: PieceData::Chunk(cut..r.end),
                });
            }
            _ => second.push(piece),
        }
    }
    (first, second)
}

fn write_pieces(
    pid: Pid,
    vmas: &[Vma],
    chunk: &OwnedPageChunk,
    pieces: &[Piece],
) -> std::result::Result<(), RestoreError> {
    let data = chunk.data();
    let pages: Vec<Pages<'_>> = pieces
        .iter()
        .map(|p| Pages {
            vaddr: p.vaddr,
            nr_pages: p.nr_pages,
            data: match &p.data {
                PieceData::Fresh => None,
                PieceData::Chunk(r) => Some(data.get(r.clone()).unwrap_or_default()),
                PieceData::Zeros => ZEROS.get(..(p.nr_pages * PAGE_SIZE as u64) as usize),
            },
        })
        .collect();
    write_pages(pid, vmas, &pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(vaddr: u64, nr_pages: u64, at: usize) -> Piece {
        let len = nr_pages as usize * PAGE_SIZE;
        Piece {
            vaddr,
            nr_pages,
            data: PieceData::Chunk(at..at + len),
        }
    }

    #[test]
    fn disjoint_pieces_are_split_in_two_halves() {
        let pages = 128;
        let a = piece(0x10_0000, pages, 0);
        let b = piece(0x20_0000, pages, pages as usize * PAGE_SIZE);
        let total = 2 * pages as usize * PAGE_SIZE;
        let (first, second) = split(vec![a.clone(), b.clone()], total);
        assert_eq!(first, vec![a]);
        assert_eq!(second, vec![b]);
    }

    #[test]
    fn a_chunk_holding_a_page_twice_is_written_in_order_by_one_writer() {
        // A later pre-copy round stored the same pages again in this chunk:
        // written at once by two writers, the earlier copy could win.
        let pages = 128;
        let earlier = piece(0x10_0000, pages, 0);
        let later = piece(0x10_0000, pages, pages as usize * PAGE_SIZE);
        let total = 2 * pages as usize * PAGE_SIZE;
        let (first, second) = split(vec![earlier.clone(), later.clone()], total);
        assert!(first.is_empty());
        assert_eq!(second, vec![earlier, later]);
    }
}
