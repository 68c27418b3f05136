//! The image store: root filesystems containers start from.
//!
//! INTERFACE SKETCH (to be implemented).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no image named {0:?} (see `cr image list`)")]
    NotFound(String),
}

#[derive(Debug, Clone)]
pub struct Image {
    pub name: String,
    pub rootfs: PathBuf,
}

pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        ImageStore {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    pub fn get(&self, name: &str) -> Result<Image, ImageError> {
        let rootfs = self.dir.join(name).join("rootfs");
        if rootfs.is_dir() {
            Ok(Image {
                name: name.to_string(),
                rootfs,
            })
        } else {
            Err(ImageError::NotFound(name.to_string()))
        }
    }
}

impl Image {
    pub fn default_command(&self) -> Result<Vec<String>, ImageError> {
        Ok(vec!["/bin/sh".into()])
    }
    pub fn resolve_command(&self, _cmd: &str) -> Result<PathBuf, ImageError> {
        Ok(PathBuf::new())
    }
}
