//! A checkpoint image read back for restore: every record verified (frame
//! checksums and the trailer) and grouped by process, and the page store
//! read into memory, before anything of the container is built. A damaged
//! or truncated image is refused here, never half-restored.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use cr_formats::schema::{
    Fd, File as FileRecord, FileId, Manifest, PipeData, PipeId, Process, Record, Thread, Vma,
};
use cr_formats::{PageReader, RunKind};

use crate::container::config::ContainerConfig;
use crate::error::{Error, IoContext, Result};
use crate::restore::process::Pages;

/// One process of the image with everything that names it.
#[derive(Debug, Clone)]
pub struct ProcessImage {
    pub process: Process,
    pub threads: Vec<Thread>,
    pub vmas: Vec<Vma>,
    pub fds: Vec<Fd>,
}

/// A run of pages owned by the image in memory.
#[derive(Debug, Clone)]
pub struct OwnedPages {
    pub vaddr: u64,
    pub nr_pages: u64,
    /// `None` for a run of zero pages.
    pub data: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct LoadedImage {
    pub manifest: Manifest,
    pub config: ContainerConfig,
    /// By PID inside the container, ascending.
    pub processes: BTreeMap<i32, ProcessImage>,
    pub files: HashMap<FileId, FileRecord>,
    pub pipes: HashMap<PipeId, PipeData>,
    pub pages: HashMap<i32, Vec<OwnedPages>>,
    /// The image directory (the page store is streamed from it).
    pub dir: std::path::PathBuf,
}

impl LoadedImage {
    /// Reads and verifies the records and the page store.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut image = Self::load_records(dir)?;
        image.pages = load_pages(dir)?;
        Ok(image)
    }

    /// Reads and verifies the records only (no pages): enough to check what
    /// a restore will build.
    pub fn load_records(dir: &Path) -> Result<Self> {
        let records_path = cr_formats::layout::records_path(dir);
        let file = File::open(&records_path).ctx("opening checkpoint image", &records_path)?;
        let image = cr_formats::read_records(BufReader::new(file)).map_err(|e| {
            Error::Invalid(format!("checkpoint image {}: {e}", records_path.display()))
        })?;
        let config: ContainerConfig =
            toml::from_str(&image.manifest.config_toml).map_err(|e| Error::Config {
                path: records_path.clone(),
                message: format!("the container config in the image: {}", e.message()),
            })?;
        let mut processes: BTreeMap<i32, ProcessImage> = BTreeMap::new();
        let mut files = HashMap::new();
        let mut pipes = HashMap::new();
        let missing = |what: &str, pid: i32| {
            Error::Invalid(format!(
                "checkpoint image {}: {what} of process {pid} comes before its process record",
                dir.display()
            ))
        };
        for entry in image.entries {
            match entry.record {
                Record::Manifest(_) | Record::FileLock(_) => {}
                Record::Process(p) => {
                    processes.insert(
                        p.pid,
                        ProcessImage {
                            process: p,
                            threads: Vec::new(),
                            vmas: Vec::new(),
                            fds: Vec::new(),
                        },
                    );
                }
                Record::Thread(t) => processes
                    .get_mut(&t.pid)
                    .ok_or_else(|| missing("a thread", t.pid))?
                    .threads
                    .push(t),
                Record::Vma(v) => processes
                    .get_mut(&v.pid)
                    .ok_or_else(|| missing("a mapping", v.pid))?
                    .vmas
                    .push(v),
                Record::Fd(f) => processes
                    .get_mut(&f.pid)
                    .ok_or_else(|| missing("a descriptor", f.pid))?
                    .fds
                    .push(f),
                Record::File(f) => {
                    files.insert(f.id, f);
                }
                Record::PipeData(p) => {
                    pipes.insert(p.pipe, p);
                }
            }
        }
        if !processes.contains_key(&1) {
            return Err(Error::Invalid(format!(
                "checkpoint image {} has no PID 1",
                dir.display()
            )));
        }
        Ok(LoadedImage {
            manifest: image.manifest,
            config,
            processes,
            files,
            pipes,
            pages: HashMap::new(),
            dir: dir.to_path_buf(),
        })
    }

    /// The page runs of one process, as the rebuild takes them.
    pub fn pages_of(&self, pid: i32) -> Vec<Pages<'_>> {
        self.pages
            .get(&pid)
            .map(|runs| {
                runs.iter()
                    .map(|r| Pages {
                        vaddr: r.vaddr,
                        nr_pages: r.nr_pages,
                        data: r.data.as_deref(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// PIDs of the children of `pid`, ascending.
    pub fn children_of(&self, pid: i32) -> Vec<i32> {
        self.processes
            .values()
            .filter(|p| p.process.ppid == pid && p.process.pid != pid)
            .map(|p| p.process.pid)
            .collect()
    }
}

fn load_pages(dir: &Path) -> Result<HashMap<i32, Vec<OwnedPages>>> {
    let path = cr_formats::layout::pages_path(dir);
    let file = File::open(&path).ctx("opening checkpoint image", &path)?;
    let bad = |e: cr_formats::FormatError| {
        Error::Invalid(format!("checkpoint image {}: {e}", path.display()))
    };
    let mut reader = PageReader::new(BufReader::with_capacity(4 << 20, file)).map_err(bad)?;
    let mut pages: HashMap<i32, Vec<OwnedPages>> = HashMap::new();
    while let Some(chunk) = reader.next_chunk().map_err(bad)? {
        for run in chunk.runs() {
            let cr_formats::PageOwner::Mm { pid } = run.owner else {
                continue;
            };
            pages.entry(pid).or_default().push(OwnedPages {
                vaddr: run.vaddr,
                nr_pages: u64::from(run.nr_pages),
                data: match run.kind {
                    RunKind::Data => Some(run.data.to_vec()),
                    RunKind::Zero => None,
                },
            });
        }
    }
    if !reader.is_complete() {
        return Err(Error::Invalid(format!(
            "checkpoint image {}: the page store is truncated",
            path.display()
        )));
    }
    Ok(pages)
}
