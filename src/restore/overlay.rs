//! The page store's "a later run wins" rule on the restore side
//! (docs/image-format.md): chunks are applied in stream order, so pages a
//! pre-copy stored before the freeze and stored again later (or found zero
//! later) end up with their last contents.
//!
//! ```text
//!  chunk (owner, runs) ──► PageOverlay::runs ──► process::write_pages
//!    PreCopy: each run clipped to the process's private anonymous Vmas
//!             (heap, stacks, anonymous memory); the rest is dropped: that
//!             mapping was unmapped or moved before the freeze
//!    Data run:  written, remembered in `written`
//!    Zero run:  the pages of it an earlier run wrote are written with
//!               zeros (fresh anonymous memory is zero already, so a zero
//!               run alone writes nothing there)
//! ```

use std::collections::HashMap;

use cr_formats::schema::{Vma, VmaKind};
use cr_formats::{PageOwner, PageRanges, PageRunRef, RunKind};

use crate::restore::process::Pages;

const PAGE: u64 = 4096;
/// Zero bytes written over superseded pages, a piece at a time.
pub static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Pages written so far, per process.
#[derive(Debug, Default)]
pub struct PageOverlay {
    written: HashMap<i32, PageRanges>,
}

/// Whether restore takes pre-copied pages for this mapping (the dump side
/// is `dump::precopy::tracked`).
pub(crate) fn takes_pre_copy(v: &Vma) -> bool {
    v.in_page_store && matches!(v.kind, VmaKind::Anonymous | VmaKind::Heap | VmaKind::Stack)
}

impl PageOverlay {
    /// The runs of one chunk of process `pid` (whose `Vma` records are
    /// `vmas`) to hand to `process::write_pages`, in order.
    pub fn runs<'a>(
        &mut self,
        pid: i32,
        owner: PageOwner,
        runs: impl Iterator<Item = PageRunRef<'a>>,
        vmas: &[Vma],
    ) -> Vec<Pages<'a>> {
        let written = self.written.entry(pid).or_default();
        let mut out = Vec::new();
        for run in runs {
            let start = run.vaddr;
            let end = start + u64::from(run.nr_pages) * PAGE;
            let parts: Vec<(u64, u64)> = match owner {
                PageOwner::PreCopy { .. } => vmas
                    .iter()
                    .filter(|v| takes_pre_copy(v))
                    .map(|v| (v.start.max(start), v.end.min(end)))
                    .filter(|(s, e)| s < e)
                    .collect(),
                _ => vec![(start, end)],
            };
            for (s, e) in parts {
                match run.kind {
                    RunKind::Data => {
                        let from = (s - start) as usize;
                        let to = (e - start) as usize;
                        let Some(data) = run.data.get(from..to) else {
                            continue;
                        };
                        written.insert(s, e);
                        out.push(Pages {
                            vaddr: s,
                            nr_pages: (e - s) / PAGE,
                            data: Some(data),
                        });
                    }
                    RunKind::Zero => {
                        for (zs, ze) in written.overlaps(s, e) {
                            let mut at = zs;
                            while at < ze {
                                let len = (ze - at).min(ZEROS.len() as u64);
                                out.push(Pages {
                                    vaddr: at,
                                    nr_pages: len / PAGE,
                                    data: Some(&ZEROS[..len as usize]),
                                });
                                at += len;
                            }
                        }
                        written.remove(s, e);
                        out.push(Pages {
                            vaddr: s,
                            nr_pages: (e - s) / PAGE,
                            data: None,
                        });
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, kind: VmaKind) -> Vma {
        Vma {
            pid: 1,
            start,
            end,
            prot: 3,
            flags: 0,
            madvise: 0,
            pgoff: 0,
            kind,
            in_page_store: true,
        }
    }

    fn run(vaddr: u64, nr_pages: u32, data: &[u8], owner: PageOwner) -> PageRunRef<'_> {
        PageRunRef {
            owner,
            vaddr,
            nr_pages,
            kind: if data.is_empty() {
                RunKind::Zero
            } else {
                RunKind::Data
            },
            data,
        }
    }

    #[test]
    fn pre_copy_is_clipped_and_superseded() {
        let pre = PageOwner::PreCopy { pid: 1 };
        let mm = PageOwner::Mm { pid: 1 };
        let vmas = [
            vma(0x10000, 0x12000, VmaKind::Anonymous),
            vma(
                0x12000,
                0x13000,
                VmaKind::File {
                    path: "/x".into(),
                    dev: 0,
                    ino: 0,
                },
            ),
        ];
        let data = vec![7u8; 4 * 4096];
        let mut o = PageOverlay::default();
        // Four pages from 0x0f000: one before the VMA, two inside, one over
        // the file mapping: only the two inside are written.
        let got = o.runs(1, pre, [run(0xf000, 4, &data, pre)].into_iter(), &vmas);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].vaddr, got[0].nr_pages), (0x10000, 2));
        // A later zero run over the second page writes zeros there.
        let got = o.runs(1, mm, [run(0x11000, 1, &[], mm)].into_iter(), &vmas);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].vaddr, got[0].nr_pages, got[0].data.map(|d| d.len())),
            (0x11000, 1, Some(4096))
        );
        assert!(got[0].data.unwrap().iter().all(|b| *b == 0));
        assert_eq!(got[1].data, None);
        // A zero run over pages nothing wrote only says so.
        let got = o.runs(1, mm, [run(0x11000, 1, &[], mm)].into_iter(), &vmas);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, None);
    }
}
