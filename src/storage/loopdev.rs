//! Loop devices: a file attached as a block device with `LOOP_CONFIGURE`
//! (one ioctl: backing fd, block size, direct I/O, autoclear), resized with
//! `LOOP_SET_CAPACITY`, found again through sysfs.
//!
//! ```text
//!   /dev/loop-control --LOOP_CTL_GET_FREE--> N
//!   /dev/loopN --LOOP_CONFIGURE{fd, block_size, flags}--> attached
//!        flags: DIRECT_IO (no second page cache above the backing file)
//!               AUTOCLEAR (detached by the kernel on the last close, so a
//!               mount that dies with its namespace frees the device)
//!   /sys/block/loopN/loop/backing_file: which file a device serves
//! ```

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::error::{Error, IoContext, Result, SysContext};

const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_CAPACITY: libc::c_ulong = 0x4C07;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// How to attach a file.
#[derive(Debug, Clone, Copy)]
pub struct LoopOptions {
    pub direct_io: bool,
    pub read_only: bool,
    /// Detach when the last opener closes the device.
    pub autoclear: bool,
    /// Logical block size (512..4096, a power of two).
    pub block_size: u32,
}

/// An attached loop device, held open. With autoclear the device goes away
/// once this and every other opener (a mount) are closed.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    pub file: File,
}

/// Attaches `backing` to a free loop device.
pub fn attach(backing: &Path, opts: LoopOptions) -> Result<LoopDevice> {
    let backing_file = OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .open(backing)
        .ctx("opening the loop device's backing file", backing)?;
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .ctx("opening", "/dev/loop-control")?;
    let mut flags = 0;
    if opts.direct_io {
        flags |= LO_FLAGS_DIRECT_IO;
    }
    if opts.read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    if opts.autoclear {
        flags |= LO_FLAGS_AUTOCLEAR;
    }
    // Another process may take the same free device between GET_FREE and
    // CONFIGURE: that one gives EBUSY, try the next.
    for _ in 0..64 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        let n = Errno::result(n).sys(|| "finding a free loop device".into())?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("opening", &path, e)),
        };
        let mut name = [0u8; 64];
        let text = backing.as_os_str().as_encoded_bytes();
        let len = text.len().min(63);
        name[..len].copy_from_slice(&text[..len]);
        let config = LoopConfig {
            fd: backing_file.as_raw_fd() as u32,
            block_size: opts.block_size,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: name,
                lo_crypt_name: [0; 64],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which
        // `config` is (repr(C), the kernel's layout), alive for the call.
        let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &config) };
        match Errno::result(rc) {
            Ok(_) => return Ok(LoopDevice { path, file: dev }),
            Err(Errno::EBUSY) => continue,
            Err(e) => {
                return Err(Error::sys(
                    format!(
                        "attaching {} to {} (LOOP_CONFIGURE)",
                        backing.display(),
                        path.display()
                    ),
                    e,
                ))
            }
        }
    }
    Err(Error::Invalid(format!(
        "no free loop device for {} after 64 tries",
        backing.display()
    )))
}

/// Detaches `device` now (the kernel refuses while it is mounted).
pub fn detach(device: &Path) -> Result<()> {
    let dev = File::open(device).ctx("opening", device)?;
    // SAFETY: LOOP_CLR_FD takes no argument.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD, 0) };
    Errno::result(rc)
        .map(drop)
        .sys(|| format!("detaching {}", device.display()))
}

/// Makes `device` take the new size of its backing file.
pub fn set_capacity(device: &Path) -> Result<()> {
    let dev = File::open(device).ctx("opening", device)?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_CAPACITY, 0) };
    Errno::result(rc)
        .map(drop)
        .sys(|| format!("resizing {} (LOOP_SET_CAPACITY)", device.display()))
}

/// The loop devices whose backing file is `backing`.
pub fn devices_backed_by(backing: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(file) = fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(file.trim_end_matches('\n')) == backing {
            out.push(PathBuf::from("/dev").join(name));
        }
    }
    out.sort();
    out
}

/// The size in bytes the kernel sees for block device `device`.
pub fn device_size(device: &Path) -> Result<u64> {
    let name = device
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Invalid(format!("{} is not a device path", device.display())))?;
    let path = Path::new("/sys/block").join(name).join("size");
    let text = fs::read_to_string(&path).ctx("reading", &path)?;
    let sectors: u64 = text
        .trim()
        .parse()
        .map_err(|_| Error::Invalid(format!("{} holds {text:?}", path.display())))?;
    Ok(sectors * 512)
}
