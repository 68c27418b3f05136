//! The image layer of a migrating container, by content digest: sent only
//! when the destination lacks it.
//!
//! ```text
//!  source                                     destination
//!  digest(image) (cached in images/NAME/digest)
//!  Offer {layer: digest} ───────────────────▶ image NAME here?
//!                                               same digest: fine
//!                                               other digest: Failed{Offer}
//!                                               absent: it will need it
//!  LayerQuery {digest} ─────────────────────▶
//!                      ◀───────────────────── LayerHave {have}
//!  not had: Layer stream = tar of rootfs/ ──▶ unpack into images/.tmp-NAME-PID/
//!    (before the checkpoint: the container      rootfs, digest it again,
//!     runs meanwhile)                           install as NAME only if equal
//! ```
//!
//! The digest is SHA-256 over a canonical walk of the image's `rootfs/`:
//! every entry in byte order of its path, each as
//! `path NUL type mode uid gid` then, by type, the file's length and
//! contents, a symlink's target, or a device's number (all integers little
//! endian, every variable field length-prefixed). Timestamps and extended
//! attributes are not part of it. An image never changes once made
//! (`ImageStore::create`), so the digest is computed once and kept in
//! `images/NAME/digest`.
//!
//! The destination's unpacking is the image store's tar import: entries that
//! would leave the directory are refused, ownership, modes and device nodes
//! are kept. An installed layer stays on the destination even if the
//! migration fails later: it is a verified image, and the next migration
//! does not send it again.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use cr_transport::protocol::LayerDigest;

use crate::error::{Error, IoContext, Result};
use crate::image::store::ImageStore;

/// The largest layer a destination takes from a peer.
pub const LAYER_CAP: u64 = 16 << 30;

/// Where an image's digest is cached.
fn digest_path(store: &ImageStore, image: &str) -> PathBuf {
    store.dir().join(image).join("digest")
}

/// The content digest of image `image` (computed once, then cached).
pub fn digest(store: &ImageStore, image: &str) -> Result<LayerDigest> {
    let cache = digest_path(store, image);
    if let Ok(text) = fs::read_to_string(&cache) {
        if let Some(d) = parse(text.trim()) {
            return Ok(d);
        }
    }
    let rootfs = store.get(image).map_err(Error::from)?.rootfs;
    let d = digest_tree(&rootfs)?;
    let tmp = cache.with_extension(format!("tmp-{}", std::process::id()));
    fs::write(&tmp, d.to_string())
        .and_then(|()| fs::rename(&tmp, &cache))
        .ctx("caching the digest of image", &cache)?;
    Ok(d)
}

fn parse(text: &str) -> Option<LayerDigest> {
    let hex = text.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(LayerDigest(out))
}

/// SHA-256 over the canonical walk of `root` (see the module doc).
pub fn digest_tree(root: &Path) -> Result<LayerDigest> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    walk(root, Path::new(""), &mut ctx, &mut buf)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(LayerDigest(out))
}

fn field(ctx: &mut ring::digest::Context, bytes: &[u8]) {
    ctx.update(&(bytes.len() as u64).to_le_bytes());
    ctx.update(bytes);
}

fn walk(root: &Path, rel: &Path, ctx: &mut ring::digest::Context, buf: &mut [u8]) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .ctx("reading", &dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .ctx("reading", &dir)?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path).ctx("reading", &path)?;
        let ft = meta.file_type();
        let kind: u8 = if ft.is_dir() {
            b'd'
        } else if ft.is_file() {
            b'f'
        } else if ft.is_symlink() {
            b'l'
        } else if ft.is_char_device() {
            b'c'
        } else if ft.is_block_device() {
            b'b'
        } else if ft.is_fifo() {
            b'p'
        } else {
            b's'
        };
        field(ctx, rel.as_os_str().as_bytes());
        ctx.update(&[kind]);
        ctx.update(&(meta.mode() & 0o7777).to_le_bytes());
        ctx.update(&meta.uid().to_le_bytes());
        ctx.update(&meta.gid().to_le_bytes());
        match kind {
            b'd' => walk(root, &rel, ctx, buf)?,
            b'f' => {
                ctx.update(&meta.len().to_le_bytes());
                let mut f = fs::File::open(&path).ctx("reading", &path)?;
                loop {
                    let n = f.read(buf).ctx("reading", &path)?;
                    if n == 0 {
                        break;
                    }
                    ctx.update(&buf[..n]);
                }
            }
            b'l' => {
                let target = fs::read_link(&path).ctx("reading the link", &path)?;
                field(ctx, target.as_os_str().as_bytes());
            }
            b'c' | b'b' => ctx.update(&meta.rdev().to_le_bytes()),
            _ => {}
        }
    }
    Ok(())
}

/// Writes image `image`'s root filesystem to `out` as a tar (paths
/// relative to `rootfs/`).
pub fn send(store: &ImageStore, image: &str, out: &mut impl Write) -> Result<()> {
    let rootfs = store.get(image).map_err(Error::from)?.rootfs;
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    tar.append_dir_all(".", &rootfs)
        .ctx("archiving image", &rootfs)?;
    tar.into_inner().ctx("archiving image", &rootfs)?;
    Ok(())
}

/// Reads a layer tar from `input` and installs it as image `image` if its
/// digest is `expected`; an image of that name must not exist yet.
pub fn receive(
    store: &ImageStore,
    image: &str,
    expected: LayerDigest,
    input: &mut impl Read,
    peer: &str,
) -> Result<()> {
    let what = PathBuf::from(format!("the layer stream from {peer}"));
    store
        .create(
            image,
            &format!("migrated from {peer}, {expected}"),
            |rootfs| {
                crate::image::store::unpack(&mut *input, &what, rootfs)?;
                let got = digest_tree(rootfs).map_err(|e| crate::image::ImageError::Build {
                    image: image.to_string(),
                    message: e.to_string(),
                })?;
                if got != expected {
                    return Err(crate::image::ImageError::Build {
                        image: image.to_string(),
                        message: format!(
                        "the layer {peer} sent has digest {got}, not the {expected} it announced"
                    ),
                    });
                }
                Ok(())
            },
        )
        .map_err(Error::from)?;
    let cache = digest_path(store, image);
    let _ = fs::write(&cache, expected.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_follows_content_mode_and_names_but_not_time() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), "a\n").unwrap();
        std::os::unix::fs::symlink("etc/hostname", root.join("link")).unwrap();
        let first = digest_tree(root).unwrap();
        assert_eq!(digest_tree(root).unwrap(), first);
        let f = fs::File::options()
            .write(true)
            .open(root.join("etc/hostname"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(digest_tree(root).unwrap(), first, "mtime is not content");
        fs::write(root.join("etc/hostname"), "b\n").unwrap();
        let changed = digest_tree(root).unwrap();
        assert_ne!(changed, first);
        fs::write(root.join("etc/hostname"), "a\n").unwrap();
        assert_eq!(digest_tree(root).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root.join("etc/hostname"), fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(digest_tree(root).unwrap(), first);
        let s = first.to_string();
        assert_eq!(parse(&s), Some(first));
        assert_eq!(parse("sha256:zz"), None);
    }
}
