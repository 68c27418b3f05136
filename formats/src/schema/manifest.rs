//! The manifest: the first record of every records stream, saying what the
//! image is of and how it was made.

use serde::{Deserialize, Serialize};

use crate::frame::Codec;

/// What the image is of. Always frame 0 of the records stream, and only
/// there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The same id as in the header of every stream of this image.
    pub image_id: u64,
    /// The version of cr that wrote the image (`CARGO_PKG_VERSION`).
    pub cr_version: String,
    /// The container's name.
    pub container: String,
    /// The container's configuration, as the TOML cr keeps it.
    pub config_toml: String,
    /// When the checkpoint was taken, in nanoseconds since the Unix epoch.
    pub created_unix_ns: u64,
    /// The machine the registers and xsave areas belong to.
    pub arch: Arch,
    /// Bytes per page of the dumped address spaces.
    pub page_size: u32,
    /// `uname -r` of the dumping host.
    pub kernel_release: String,
    /// The codec of the pages stream.
    pub pages_codec: Codec,
}

/// The instruction set of a dumped container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Arch {
    X86_64,
}
