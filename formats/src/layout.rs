//! Where an image's streams live when the sink is a directory.
//!
//! ```text
//!   IMAGE_DIR/
//!     records.img    the records stream: manifest, processes, threads,
//!                    mappings, files, ... (stream kind 1)
//!     pages.img      the page store (stream kind 2)
//! ```
//!
//! Both streams carry the same image id in their headers (and the manifest
//! repeats it), so a pages file from another checkpoint is refused. Over a
//! network the same two streams travel as two streams of one connection.
//! This module only names paths; it opens nothing.

use std::path::{Path, PathBuf};

/// File name of the records stream in an image directory.
pub const RECORDS_FILE: &str = "records.img";
/// File name of the page store in an image directory.
pub const PAGES_FILE: &str = "pages.img";

/// File name, in an image directory, of the disk snapshot a checkpoint of a
/// container on a ploop-like disk took while frozen (the delta id as text):
/// restore puts the disk back to it, so the files match the memory.
pub const DISK_SNAPSHOT_FILE: &str = "disk-snapshot";

/// `dir/records.img`.
pub fn records_path(dir: &Path) -> PathBuf {
    dir.join(RECORDS_FILE)
}

/// `dir/pages.img`.
pub fn pages_path(dir: &Path) -> PathBuf {
    dir.join(PAGES_FILE)
}
