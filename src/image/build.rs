//! Image builders: create an image from what is on the host.
//!
//! * [`ImageStore::build_minimal`]: a busybox system plus chosen host
//!   programs with their shared libraries, and chosen host directories.
//! * [`ImageStore::build_debian`]: a Debian base system from `debootstrap`,
//!   using the host's own Debian mirror unless one is given.
//!
//! Both fill `ROOT/images/.tmp-NAME-PID/rootfs/` through
//! [`ImageStore::create`], so a failed build leaves nothing behind. Layout of
//! a minimal image (on a merged-/usr host such as Debian 12, `bin`, `sbin`,
//! `lib` and `lib64` are symlinks into `usr/` exactly as on the host):
//!
//! ```text
//! bin/busybox               Debian's busybox-static, plus one symlink per applet
//! etc/                      passwd group shadow hosts hostname nsswitch.conf os-release
//! dev/                      null zero full random urandom tty, fd/std* links, pts/ shm/
//! proc sys run tmp root home var/tmp var/log   empty
//! <program paths>           each --with program at its host path, plus its libraries
//!                           and the dynamic loader at their host paths
//! <tree paths>              each --tree directory at its host path
//! ```
//!
//! There is no `/sbin/init`, so a minimal image's default command is `/bin/sh`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use super::store::{copy_tree, run_tool, tail};
use super::{resolve_in_root, validate_name, Ctx, Image, ImageError, ImageStore, Result};

/// Where Debian's busybox-static installs the binary.
const BUSYBOX: &str = "/bin/busybox";

/// The PATH external tools run with (and the fallback for finding them).
const TOOL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What goes into a minimal image besides busybox.
#[derive(Debug, Clone, Default)]
pub struct MinimalOptions {
    /// Host programs: a name looked up on the host `PATH`, or an absolute path.
    /// Each is copied to the same path in the image with its shared libraries.
    pub programs: Vec<String>,
    /// Host directories copied as they are to the same path in the image
    /// (e.g. `/usr/lib/python3.11` for python3's standard library). Shared
    /// libraries needed by `.so` files inside them are copied too.
    pub trees: Vec<PathBuf>,
}

/// How to debootstrap a Debian image.
#[derive(Debug, Clone)]
pub struct DebianOptions {
    /// Debian release, `bookworm` by default.
    pub suite: String,
    /// debootstrap `--variant`, e.g. `minbase`.
    pub variant: Option<String>,
    /// Mirror URL; by default the host's own Debian mirror from its apt sources.
    pub mirror: Option<String>,
    /// Extra packages (debootstrap `--include`).
    pub include: Vec<String>,
}

impl Default for DebianOptions {
    fn default() -> Self {
        DebianOptions {
            suite: "bookworm".to_string(),
            variant: None,
            mirror: None,
            include: Vec::new(),
        }
    }
}

impl ImageStore {
    /// Builds a minimal busybox image with the given host programs and trees.
    pub fn build_minimal(&self, name: &str, opts: MinimalOptions) -> Result<Image> {
        validate_name(name)?;
        let build_err = |message: String| ImageError::Build {
            image: name.to_string(),
            message,
        };
        check_busybox()?;
        let mut programs = Vec::new();
        for program in &opts.programs {
            programs.push(find_host_program(program).map_err(build_err)?);
        }
        for tree in &opts.trees {
            if !tree.is_absolute() {
                return Err(build_err(format!(
                    "tree {} must be an absolute path",
                    tree.display()
                )));
            }
            let meta = fs::metadata(tree).ctx("cannot copy tree", tree)?;
            if !meta.is_dir() {
                return Err(build_err(format!(
                    "tree {} is not a directory",
                    tree.display()
                )));
            }
        }

        let mut source = "build-minimal: busybox".to_string();
        for program in &programs {
            source.push_str(&format!(", {}", program.display()));
        }
        for tree in &opts.trees {
            source.push_str(&format!(", tree {}", tree.display()));
        }

        self.create(name, &source, |rootfs| {
            make_layout(rootfs)?;
            install_busybox(rootfs)?;
            make_devices(rootfs)?;
            write_etc(rootfs, name)?;
            for program in &programs {
                copy_host_path(rootfs, program, 0)?;
                let (libs, missing) = ldd(program)?;
                if let Some(lib) = missing.first() {
                    return Err(build_err(format!(
                        "{} needs {lib}, which the host's dynamic loader cannot find",
                        program.display()
                    )));
                }
                for lib in libs {
                    copy_host_path(rootfs, &lib, 0)?;
                }
            }
            for tree in &opts.trees {
                copy_host_path(rootfs, tree, 0)?;
            }
            for tree in &opts.trees {
                complete_tree(rootfs, tree)?;
            }
            link_applets(rootfs)
        })
    }

    /// Builds a Debian image with debootstrap.
    pub fn build_debian(&self, name: &str, opts: DebianOptions) -> Result<Image> {
        validate_name(name)?;
        let build_err = |message: String| ImageError::Build {
            image: name.to_string(),
            message,
        };
        if self.exists(name) {
            return Err(ImageError::Exists(name.to_string()));
        }
        let debootstrap = find_tool("debootstrap").ok_or_else(|| ImageError::Missing {
            what: "debootstrap".to_string(),
            package: "debootstrap".to_string(),
        })?;
        let word = |w: &str| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
        };
        if !word(&opts.suite) {
            return Err(build_err(format!("invalid suite {:?}", opts.suite)));
        }
        if let Some(variant) = &opts.variant {
            if !word(variant) {
                return Err(build_err(format!(
                    "invalid debootstrap variant {variant:?}"
                )));
            }
        }
        if let Some(bad) = opts.include.iter().find(|p| !word(p)) {
            return Err(build_err(format!("invalid package name {bad:?}")));
        }
        let mirror = match &opts.mirror {
            Some(m) if m.trim().is_empty() => return Err(build_err("empty mirror URL".into())),
            Some(m) => m.trim().to_string(),
            None => find_debian_mirror(Path::new("/etc/apt"))?,
        };

        let mut source = format!("debootstrap {}", opts.suite);
        if let Some(variant) = &opts.variant {
            source.push_str(&format!(" ({variant})"));
        }
        if !opts.include.is_empty() {
            source.push_str(&format!(" +{}", opts.include.join(",")));
        }
        source.push_str(&format!(" from {mirror}"));

        self.create(name, &source, |rootfs| {
            let mut cmd = Command::new(&debootstrap);
            cmd.env("PATH", TOOL_PATH).env("LC_ALL", "C");
            if let Some(variant) = &opts.variant {
                cmd.arg(format!("--variant={variant}"));
            }
            if !opts.include.is_empty() {
                cmd.arg(format!("--include={}", opts.include.join(",")));
            }
            cmd.arg(&opts.suite).arg(rootfs).arg(&mirror);
            if let Err(err) = run_tool("debootstrap", &mut cmd) {
                // debootstrap's own log says more than its stderr; it goes
                // away with the temporary directory, so quote it now.
                let log = rootfs.join("debootstrap/debootstrap.log");
                return Err(match (err, fs::read(&log)) {
                    (
                        ImageError::Tool {
                            tool,
                            status,
                            stderr,
                        },
                        Ok(text),
                    ) => ImageError::Tool {
                        tool,
                        status,
                        stderr: format!("{stderr}; {}: {}", log.display(), tail(&text, 10)),
                    },
                    (err, _) => err,
                });
            }
            remove_apt_caches(rootfs)
        })
    }
}

/// Finds `tool` on the caller's PATH or the standard system directories.
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(std::env::split_paths(TOOL_PATH))
        .map(|dir| dir.join(tool))
        .find(|p| is_executable_file(p))
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Checks that /bin/busybox exists and is statically linked.
fn check_busybox() -> Result<()> {
    let path = Path::new(BUSYBOX);
    if fs::metadata(path).is_err() {
        return Err(ImageError::Missing {
            what: "busybox-static".to_string(),
            package: "busybox-static".to_string(),
        });
    }
    match elf_has_interpreter(path)? {
        Some(false) => Ok(()),
        Some(true) => Err(ImageError::Missing {
            what: format!("{BUSYBOX} is dynamically linked (the busybox package is installed, not busybox-static), so busybox-static"),
            package: "busybox-static".to_string(),
        }),
        None => Err(ImageError::Missing {
            what: format!("{BUSYBOX} is not an ELF binary, so busybox-static"),
            package: "busybox-static".to_string(),
        }),
    }
}

/// Whether an ELF file asks for a program interpreter (PT_INTERP), i.e. is
/// dynamically linked; `None` if it is not an ELF file.
pub fn elf_has_interpreter(path: &Path) -> Result<Option<bool>> {
    const PT_INTERP: u32 = 3;
    let mut file = File::open(path).ctx("opening", path)?;
    let mut header = [0u8; 64];
    let n = read_up_to(&mut file, &mut header).ctx("reading", path)?;
    if n < 52 || header[..4] != [0x7f, b'E', b'L', b'F'] {
        return Ok(None);
    }
    let is64 = match header[4] {
        1 => false,
        2 => true,
        _ => return Ok(None),
    };
    let little = match header[5] {
        1 => true,
        2 => false,
        _ => return Ok(None),
    };
    let num = |bytes: &[u8]| -> u64 {
        let mut v = 0u64;
        if little {
            for b in bytes.iter().rev() {
                v = (v << 8) | u64::from(*b);
            }
        } else {
            for b in bytes {
                v = (v << 8) | u64::from(*b);
            }
        }
        v
    };
    let (phoff, phentsize, phnum) = if is64 {
        if n < 64 {
            return Ok(None);
        }
        (
            num(&header[0x20..0x28]),
            num(&header[0x36..0x38]),
            num(&header[0x38..0x3a]),
        )
    } else {
        (
            num(&header[0x1c..0x20]),
            num(&header[0x2a..0x2c]),
            num(&header[0x2c..0x2e]),
        )
    };
    if phentsize < 4 || phnum == 0 {
        return Ok(Some(false));
    }
    let mut table = Vec::new();
    let len = phentsize.saturating_mul(phnum).min(1 << 20);
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(phoff)).ctx("reading", path)?;
    file.take(len)
        .read_to_end(&mut table)
        .ctx("reading", path)?;
    let step = usize::try_from(phentsize).unwrap_or(usize::MAX);
    Ok(Some(
        table
            .chunks(step)
            .filter(|c| c.len() >= 4)
            .any(|c| num(&c[..4]) == u64::from(PT_INTERP)),
    ))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Finds a host program (name on PATH or absolute path) and checks it is a
/// binary, not a script such as a pyenv shim. Errors are plain messages.
fn find_host_program(program: &str) -> std::result::Result<PathBuf, String> {
    let path = if program.contains('/') {
        let path = PathBuf::from(program);
        if !path.is_absolute() {
            return Err(format!(
                "program {program:?} must be a name on PATH or an absolute path"
            ));
        }
        if !is_executable_file(&path) {
            return Err(format!(
                "program {program} does not exist or is not executable"
            ));
        }
        path
    } else {
        let search = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(TOOL_PATH));
        std::env::split_paths(&search)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(program))
            .find(|p| is_executable_file(p))
            .ok_or_else(|| format!("program {program:?} not found on the host PATH"))?
    };
    let mut magic = [0u8; 4];
    let n = File::open(&path)
        .and_then(|mut f| read_up_to(&mut f, &mut magic))
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    if n >= 2 && magic[..2] == *b"#!" {
        return Err(format!(
            "{} is a script (perhaps a version-manager shim such as pyenv's), not a binary; pass the absolute path of the real program instead",
            path.display()
        ));
    }
    if n < 4 || magic != [0x7f, b'E', b'L', b'F'] {
        return Err(format!("{} is not an ELF executable", path.display()));
    }
    Ok(path)
}

/// Runs `ldd` on a host file: the resolved libraries (including the dynamic
/// loader) and the names it could not find.
fn ldd(path: &Path) -> Result<(Vec<PathBuf>, Vec<String>)> {
    let output = Command::new("ldd")
        .arg("--")
        .arg(path)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| ImageError::io("running ldd on", path, e))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok((Vec::new(), Vec::new()));
        }
        return Err(ImageError::Tool {
            tool: format!("ldd {}", path.display()),
            status: output.status.to_string(),
            stderr: tail(&output.stderr, 5),
        });
    }
    Ok(parse_ldd(&stdout))
}

/// Parses `ldd` output into resolved library paths and missing names.
pub fn parse_ldd(text: &str) -> (Vec<PathBuf>, Vec<String>) {
    let mut libs = Vec::new();
    let mut missing = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                missing.push(name.trim().to_string());
            } else if let Some(path) = rest.split_whitespace().next() {
                if path.starts_with('/') {
                    libs.push(PathBuf::from(path));
                }
            }
        } else if let Some(first) = line.split_whitespace().next() {
            // The dynamic loader: "/lib64/ld-linux-x86-64.so.2 (0x...)".
            if first.starts_with('/') {
                libs.push(PathBuf::from(first));
            }
        }
    }
    (libs, missing)
}

/// Creates a directory (and parents) below `rootfs` with `mode`.
fn mkdir(rootfs: &Path, rel: &str, mode: u32) -> Result<()> {
    let path = rootfs.join(rel);
    fs::create_dir_all(&path).ctx("creating", &path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).ctx("chmod", &path)
}

/// The top-level directories: `bin`, `sbin`, `lib`, `lib64` mirror the host
/// (symlinks into `usr/` on a merged-/usr host), plus the standard empty ones.
fn make_layout(rootfs: &Path) -> Result<()> {
    for dir in ["usr/bin", "usr/sbin", "usr/lib"] {
        mkdir(rootfs, dir, 0o755)?;
    }
    for top in ["bin", "sbin", "lib", "lib64"] {
        let host = Path::new("/").join(top);
        match fs::symlink_metadata(&host) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&host).ctx("reading symlink", &host)?;
                // Relative, so that following it from the host stays inside.
                let target: PathBuf = target
                    .components()
                    .filter(|c| matches!(c, Component::Normal(_)))
                    .collect();
                if target.as_os_str().is_empty() || !target.starts_with("usr") {
                    if top == "bin" || top == "sbin" {
                        mkdir(rootfs, top, 0o755)?;
                    }
                    continue;
                }
                let target_str = target.to_string_lossy().into_owned();
                mkdir(rootfs, &target_str, 0o755)?;
                let link = rootfs.join(top);
                symlink(&target, &link).ctx("creating symlink", &link)?;
            }
            _ if top == "bin" || top == "sbin" => mkdir(rootfs, top, 0o755)?,
            _ => {}
        }
    }
    for (dir, mode) in [
        ("etc", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("dev/pts", 0o755),
        ("dev/shm", 0o1777),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("run", 0o755),
        ("home", 0o755),
        ("var/tmp", 0o1777),
        ("var/log", 0o755),
        ("usr/local/bin", 0o755),
        ("usr/local/sbin", 0o755),
    ] {
        mkdir(rootfs, dir, mode)?;
    }
    Ok(())
}

/// Copies the host's static busybox to /bin/busybox.
fn install_busybox(rootfs: &Path) -> Result<()> {
    let host = fs::canonicalize(BUSYBOX).ctx("resolving", BUSYBOX)?;
    let dest = resolve_in_root(rootfs, Path::new(BUSYBOX)).ctx("resolving in image", BUSYBOX)?;
    fs::copy(&host, &dest).ctx("copying busybox to", &dest)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)).ctx("chmod", &dest)
}

/// One symlink per busybox applet (`busybox --list-full`), where nothing
/// (such as a copied program) is already in place.
fn link_applets(rootfs: &Path) -> Result<()> {
    let output = run_tool(
        "busybox --list-full",
        Command::new(BUSYBOX).arg("--list-full"),
    )?;
    let text = String::from_utf8_lossy(&output.stdout);
    for line in text.lines() {
        let rel = Path::new(line.trim());
        if rel.as_os_str().is_empty()
            || rel == Path::new("bin/busybox")
            // No init: a minimal image runs /bin/sh unless told otherwise.
            || rel == Path::new("sbin/init")
            || rel == Path::new("linuxrc")
            || !rel.components().all(|c| matches!(c, Component::Normal(_)))
        {
            continue;
        }
        let (Some(parent), Some(file_name)) = (rel.parent(), rel.file_name()) else {
            continue;
        };
        let dir = resolve_in_root(rootfs, parent).ctx("resolving in image", parent)?;
        fs::create_dir_all(&dir).ctx("creating", &dir)?;
        let link = dir.join(file_name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(BUSYBOX, &link).ctx("creating symlink", &link)?;
        }
    }
    Ok(())
}

/// The usual device nodes and /dev symlinks.
fn make_devices(rootfs: &Path) -> Result<()> {
    let dev = rootfs.join("dev");
    for (name, major, minor, mode) in [
        ("null", 1, 3, 0o666),
        ("zero", 1, 5, 0o666),
        ("full", 1, 7, 0o666),
        ("random", 1, 8, 0o666),
        ("urandom", 1, 9, 0o666),
        ("tty", 5, 0, 0o666),
    ] {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )
        .map_err(|e| ImageError::io("creating device node", &path, e.into()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).ctx("chmod", &path)?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = dev.join(name);
        symlink(target, &path).ctx("creating symlink", &path)?;
    }
    Ok(())
}

/// The few files under /etc that programs expect.
fn write_etc(rootfs: &Path, name: &str) -> Result<()> {
    let files: [(&str, String, u32); 8] = [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .into(),
            0o644,
        ),
        ("group", "root:x:0:\nnogroup:x:65534:\n".into(), 0o644),
        ("shadow", "root:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n".into(), 0o600),
        (
            "hosts",
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into(),
            0o644,
        ),
        ("hostname", format!("{name}\n"), 0o644),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"
                .into(),
            0o644,
        ),
        (
            "os-release",
            "NAME=\"cr-minimal\"\nID=cr-minimal\nPRETTY_NAME=\"cr minimal (busybox)\"\n".into(),
            0o644,
        ),
        ("profile", "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n".into(), 0o644),
    ];
    for (file, content, mode) in files {
        let path = rootfs.join("etc").join(file);
        fs::write(&path, content).ctx("writing", &path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).ctx("chmod", &path)?;
    }
    Ok(())
}

/// Copies host path `host` (a file, a directory tree, or a symlink) to the
/// same path in `rootfs`. Symlinks met on the way, in the middle or at the
/// end, are recreated as they are and then followed, so that both the link
/// and its target exist in the image. Existing files are left alone.
fn copy_host_path(rootfs: &Path, host: &Path, depth: usize) -> Result<()> {
    if depth > 40 {
        return Err(ImageError::io(
            "copying",
            host,
            io::Error::from_raw_os_error(libc::ELOOP),
        ));
    }
    if !host.is_absolute() {
        return Err(ImageError::io(
            "copying relative path",
            host,
            io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    let parts: Vec<Component> = host.components().collect();
    let mut cur = PathBuf::from("/");
    for (i, part) in parts.iter().enumerate() {
        let name = match part {
            Component::Normal(name) => name,
            Component::ParentDir => {
                cur.pop();
                continue;
            }
            _ => continue,
        };
        let last = i + 1 == parts.len();
        let next = cur.join(name);
        let meta = fs::symlink_metadata(&next).ctx("inspecting", &next)?;
        let rel = next.strip_prefix("/").unwrap_or(&next);
        let dest = rootfs.join(rel);
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&next).ctx("reading symlink", &next)?;
            if fs::symlink_metadata(&dest).is_err() {
                symlink(&target, &dest).ctx("creating symlink", &dest)?;
            }
            let mut resolved = if target.is_absolute() {
                target
            } else {
                cur.join(target)
            };
            for rest in &parts[i + 1..] {
                resolved.push(rest.as_os_str());
            }
            return copy_host_path(rootfs, &resolved, depth + 1);
        }
        if meta.is_dir() {
            ensure_dir(&dest, &meta)?;
            if last {
                return copy_tree(&next, &dest);
            }
            cur = next;
            continue;
        }
        if !last {
            return Err(ImageError::io(
                "copying",
                host,
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        if fs::symlink_metadata(&dest).is_err() {
            run_tool(
                "cp",
                Command::new("cp")
                    .arg("-a")
                    .arg("--reflink=auto")
                    .arg("--")
                    .arg(&next)
                    .arg(&dest),
            )?;
        }
        return Ok(());
    }
    Ok(())
}

/// Makes `dest` a real directory with the host directory's mode and owner.
fn ensure_dir(dest: &Path, host: &fs::Metadata) -> Result<()> {
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ImageError::io(
            "copying a host directory over a non-directory",
            dest,
            io::Error::from_raw_os_error(libc::EEXIST),
        )),
        Err(_) => {
            fs::create_dir(dest).ctx("creating", dest)?;
            std::os::unix::fs::lchown(dest, Some(host.uid()), Some(host.gid()))
                .ctx("chown", dest)?;
            fs::set_permissions(dest, fs::Permissions::from_mode(host.mode() & 0o7777))
                .ctx("chmod", dest)
        }
    }
}

/// After copying host tree `tree`: copies the shared libraries that `.so`
/// files in it need, and the targets of symlinks pointing out of it (e.g.
/// python's `sitecustomize.py` -> `/etc/python3.11/...`).
fn complete_tree(rootfs: &Path, tree: &Path) -> Result<()> {
    let host_root = fs::canonicalize(tree).ctx("resolving", tree)?;
    let mut libs = BTreeSet::new();
    let mut link_targets = BTreeSet::new();
    let mut stack = vec![host_root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).ctx("listing", &dir)? {
            let entry = entry.ctx("listing", &dir)?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).ctx("inspecting", &path)?;
            if meta.is_dir() {
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                let Ok(target) = fs::canonicalize(&path) else {
                    continue; // dangling on the host too
                };
                if !target.starts_with(&host_root) && target.is_file() {
                    let inside = path.strip_prefix("/").unwrap_or(&path);
                    let present = resolve_in_root(rootfs, inside)
                        .map(|p| p.exists())
                        .unwrap_or(false);
                    if !present {
                        link_targets.insert(target);
                    }
                }
            } else if meta.is_file()
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(".so"))
                && elf_has_interpreter(&path).ok().flatten().is_some()
            {
                // A library missing on the host too only breaks that module.
                let (found, _missing) = ldd(&path)?;
                libs.extend(found);
            }
        }
    }
    for lib in libs.iter().chain(link_targets.iter()) {
        let inside = lib.strip_prefix("/").unwrap_or(lib);
        let present = resolve_in_root(rootfs, inside)
            .map(|p| fs::symlink_metadata(p).is_ok())
            .unwrap_or(false);
        if !present {
            copy_host_path(rootfs, lib, 0)?;
        }
    }
    Ok(())
}

/// Deletes downloaded packages from a debootstrapped rootfs.
fn remove_apt_caches(rootfs: &Path) -> Result<()> {
    for dir in ["/var/cache/apt/archives", "/var/cache/apt/archives/partial"] {
        let Ok(host_dir) = resolve_in_root(rootfs, Path::new(dir)) else {
            continue;
        };
        let Ok(entries) = fs::read_dir(&host_dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry.ctx("listing", &host_dir)?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "deb")
                && entry.file_type().is_ok_and(|t| t.is_file())
            {
                fs::remove_file(&path).ctx("removing", &path)?;
            }
        }
    }
    Ok(())
}

/// Debian release code names and aliases, as they appear as apt suites.
const DEBIAN_SUITES: &[&str] = &[
    "jessie",
    "stretch",
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "stable",
    "testing",
    "unstable",
    "oldstable",
    "oldoldstable",
];

/// Whether an apt source line/stanza is the Debian archive itself (not a
/// security archive or a third-party repository that reuses a code name).
fn is_debian_archive(uri: &str, suites: &[&str], components: &[&str]) -> bool {
    if uri.contains("-security") || uri.starts_with("cdrom:") {
        return false;
    }
    let debian_suite = suites.iter().any(|suite| {
        let (base, pocket) = suite.split_once('-').unwrap_or((suite, ""));
        DEBIAN_SUITES.contains(&base)
            && matches!(pocket, "" | "updates" | "backports" | "proposed-updates")
    });
    debian_suite && components.contains(&"main")
}

/// Debian mirror URIs in one-line apt sources (`sources.list` format), in order.
pub fn debian_mirrors_one_line(text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let rest = rest.trim_start();
        // Options: "[arch=amd64 signed-by=...]".
        let rest = if let Some(options) = rest.strip_prefix('[') {
            match options.split_once(']') {
                Some((_, after)) => after,
                None => continue,
            }
        } else {
            rest
        };
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        let components: Vec<&str> = words.collect();
        if is_debian_archive(uri, &[suite], &components) {
            uris.push(uri.to_string());
        }
    }
    uris
}

/// Debian mirror URIs in deb822 apt sources (`*.sources` files), in order.
pub fn debian_mirrors_deb822(text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    let mut stanza: Vec<(String, String)> = Vec::new();
    let flush = |stanza: &mut Vec<(String, String)>, uris: &mut Vec<String>| {
        let field = |name: &str| -> Vec<&str> {
            stanza
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .flat_map(|(_, v)| v.split_whitespace())
                .collect()
        };
        let enabled = field("Enabled")
            .first()
            .is_none_or(|v| !v.eq_ignore_ascii_case("no"));
        if enabled && field("Types").contains(&"deb") {
            let suites = field("Suites");
            let components = field("Components");
            for uri in field("URIs") {
                if is_debian_archive(uri, &suites, &components) {
                    uris.push(uri.to_string());
                }
            }
        }
        stanza.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut stanza, &mut uris);
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            // Continuation of the previous field (e.g. an inline key).
            if let Some((_, value)) = stanza.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            stanza.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    flush(&mut stanza, &mut uris);
    uris
}

/// The host's Debian mirror: the first Debian archive URI in
/// `APT/sources.list`, then `APT/sources.list.d/*.list` and `*.sources` in
/// name order (as apt reads them). `apt_dir` is normally `/etc/apt`.
pub fn find_debian_mirror(apt_dir: &Path) -> Result<String> {
    let list = apt_dir.join("sources.list");
    if let Ok(text) = fs::read_to_string(&list) {
        if let Some(uri) = debian_mirrors_one_line(&text).into_iter().next() {
            return Ok(uri);
        }
    }
    let dir = apt_dir.join("sources.list.d");
    let mut files: Vec<PathBuf> = match fs::read_dir(&dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    files.sort();
    for file in files {
        let parse: fn(&str) -> Vec<String> = match file.extension().and_then(|e| e.to_str()) {
            Some("list") => debian_mirrors_one_line,
            Some("sources") => debian_mirrors_deb822,
            _ => continue,
        };
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        if let Some(uri) = parse(&text).into_iter().next() {
            return Ok(uri);
        }
    }
    Err(ImageError::NoMirror {
        searched: format!("{} and {}/*.sources", list.display(), dir.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f)\n\
                    \tlibgone.so.1 => not found\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let (libs, missing) = parse_ldd(text);
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert_eq!(missing, vec!["libgone.so.1".to_string()]);
        assert_eq!(parse_ldd("\tstatically linked\n"), (vec![], vec![]));
    }

    #[test]
    fn elf_interpreter() {
        assert_eq!(
            elf_has_interpreter(Path::new("/bin/ls")).unwrap(),
            Some(true)
        );
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("x");
        fs::write(&text, "#!/bin/sh\n").unwrap();
        assert_eq!(elf_has_interpreter(&text).unwrap(), None);
    }

    #[test]
    fn one_line_sources() {
        let text = "# comment\n\
            deb-src http://mirror.example/debian bookworm main\n\
            deb [arch=amd64 signed-by=/k.gpg] http://download.example/linux/debian bookworm stable\n\
            deb http://mirror.example/debian-security bookworm-security main\n\
            deb http://apt.example/pub/repos/apt bookworm-pgdg main\n\
            deb [ arch=amd64 ] http://mirror.example/debian/ bookworm main contrib # trailing\n\
            deb http://other.example/debian bookworm-updates main\n";
        assert_eq!(
            debian_mirrors_one_line(text),
            vec![
                "http://mirror.example/debian/".to_string(),
                "http://other.example/debian".to_string()
            ]
        );
    }

    #[test]
    fn deb822_sources() {
        let text = "Types: deb\n\
            # http://snapshot.example/archive/debian/20250520T000000Z\n\
            URIs: http://mirror.example/debian\n\
            Suites: bookworm bookworm-updates\n\
            Components: main\n\
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
            \n\
            Types: deb\n\
            URIs: http://mirror.example/debian-security\n\
            Suites: bookworm-security\n\
            Components: main\n";
        assert_eq!(
            debian_mirrors_deb822(text),
            vec!["http://mirror.example/debian".to_string()]
        );
        let disabled = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n";
        assert!(debian_mirrors_deb822(disabled).is_empty());
        let third_party =
            "Types: deb\nURIs: https://deb.example/node_20.x\nSuites: nodistro\nComponents: main\n";
        assert!(debian_mirrors_deb822(third_party).is_empty());
    }
}
