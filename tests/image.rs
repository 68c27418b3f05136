//! Image store tests: imports, builders and command resolution on the real
//! host. They need root (ownership, device nodes, chroot) and, for the
//! builders, Debian's busybox-static, python3 and redis-server packages; a
//! missing prerequisite fails the test with the command that installs it.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cr::image::{find_debian_mirror, DebianOptions, ImageError, ImageStore, MinimalOptions};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (ownership, device nodes, chroot): run them with sudo"
    );
}

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: apt-get install -y {package}"
    );
}

fn store(dir: &tempfile::TempDir) -> ImageStore {
    ImageStore::new(dir.path().join("images"))
}

/// Entries of the store directory, including hidden temporary ones.
fn store_entries(store: &ImageStore) -> Vec<String> {
    match fs::read_dir(store.dir()) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
        Err(_) => Vec::new(),
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated and outlive the call; value
    // points to value.len() readable bytes.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "setxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: both strings are NUL-terminated; buf has buf.len() writable bytes.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 {
        return None;
    }
    buf.truncate(rc as usize);
    Some(buf)
}

/// A source tree with a symlink, a hard link, a FIFO, a device node, a
/// setuid file owned by 1000:1000, an xattr and an old mtime.
fn make_source(dir: &Path) {
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("run")).unwrap();
    fs::create_dir_all(dir.join("dev")).unwrap();
    fs::write(dir.join("etc/hello"), "hello\n").unwrap();
    fs::hard_link(dir.join("etc/hello"), dir.join("etc/hard")).unwrap();
    symlink("etc/hello", dir.join("link")).unwrap();
    symlink("/etc/hello", dir.join("abslink")).unwrap();
    nix::unistd::mkfifo(
        &dir.join("run/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &dir.join("dev/null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    let suid = dir.join("bin/suid");
    fs::write(&suid, "#!/bin/sh\necho suid\n").unwrap();
    std::os::unix::fs::chown(&suid, Some(1000), Some(1000)).unwrap();
    fs::set_permissions(&suid, fs::Permissions::from_mode(0o4755)).unwrap();
    set_xattr(&dir.join("etc/hello"), "user.cr-test", b"yes");
    let old = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &dir.join("etc/hello"),
        &old,
        &old,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// Checks that `rootfs` holds everything `make_source` made.
fn check_copy(rootfs: &Path, xattrs: bool) {
    let hello = fs::symlink_metadata(rootfs.join("etc/hello")).unwrap();
    let hard = fs::symlink_metadata(rootfs.join("etc/hard")).unwrap();
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hello")).unwrap(),
        "hello\n"
    );
    assert_eq!(hello.ino(), hard.ino(), "hard link not preserved");
    assert_eq!(hello.nlink(), 2);
    assert_eq!(hello.mtime(), 1_000_000_000, "mtime not preserved");
    assert_eq!(
        fs::read_link(rootfs.join("link")).unwrap(),
        Path::new("etc/hello")
    );
    assert_eq!(
        fs::read_link(rootfs.join("abslink")).unwrap(),
        Path::new("/etc/hello")
    );
    let fifo = fs::symlink_metadata(rootfs.join("run/fifo")).unwrap();
    assert!(fifo.file_type().is_fifo(), "fifo not preserved");
    assert_eq!(fifo.mode() & 0o7777, 0o640);
    let null = fs::symlink_metadata(rootfs.join("dev/null")).unwrap();
    assert!(
        null.file_type().is_char_device(),
        "device node not preserved"
    );
    assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    let suid = fs::symlink_metadata(rootfs.join("bin/suid")).unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o4755, "setuid mode not preserved");
    assert_eq!(
        (suid.uid(), suid.gid()),
        (1000, 1000),
        "owner not preserved"
    );
    if xattrs {
        assert_eq!(
            get_xattr(&rootfs.join("etc/hello"), "user.cr-test").as_deref(),
            Some(&b"yes"[..]),
            "xattr not preserved"
        );
    }
}

#[test]
fn import_directory_preserves_everything() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src);
    let store = store(&tmp);
    let image = store.import("dir1", &src).unwrap();
    assert_eq!(image.name, "dir1");
    assert_eq!(image.rootfs, store.dir().join("dir1/rootfs"));
    check_copy(&image.rootfs, true);
    assert!(
        image.meta.source.contains("directory"),
        "{}",
        image.meta.source
    );
    assert!(
        image.meta.size >= 6 && image.meta.files >= 9,
        "{:?}",
        image.meta
    );
    assert_eq!(store_entries(&store), vec!["dir1".to_string()]);
    // Neither /sbin/init nor /bin/sh: accepted, but no default command.
    let err = image.default_command().unwrap_err();
    assert!(matches!(err, ImageError::NoInit(_)), "{err}");
}

/// Creates SRC as a plain tarball with GNU tar (hard links, FIFOs, devices,
/// owners and xattrs included).
fn gnu_tar(src: &Path, out: &Path) {
    let status = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(src)
        .arg(".")
        .status()
        .expect("running tar (apt-get install -y tar)");
    assert!(status.success(), "tar failed");
}

#[test]
fn import_tarballs() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_source(&src);
    let plain = tmp.path().join("rootfs.tar");
    gnu_tar(&src, &plain);
    let data = fs::read(&plain).unwrap();

    // Compressed copies, deliberately also under misleading names: the
    // format comes from the magic bytes.
    let gz = tmp.path().join("rootfs.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&data).unwrap();
    fs::write(&gz, enc.finish().unwrap()).unwrap();
    let tgz_misnamed = tmp.path().join("rootfs.bin");
    fs::copy(&gz, &tgz_misnamed).unwrap();
    let zst = tmp.path().join("rootfs.tar.zst");
    fs::write(&zst, zstd::encode_all(&data[..], 3).unwrap()).unwrap();

    let store = store(&tmp);
    for (name, path) in [
        ("plain", &plain),
        ("gzip", &gz),
        ("gzip-misnamed", &tgz_misnamed),
        ("zstd", &zst),
    ] {
        let image = store
            .import(name, path)
            .unwrap_or_else(|e| panic!("importing {}: {e}", path.display()));
        check_copy(&image.rootfs, true);
    }
    let names: Vec<String> = store.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, vec!["gzip", "gzip-misnamed", "plain", "zstd"]);
    assert_eq!(
        store_entries(&store),
        names,
        "temporary directories left behind"
    );
}

#[test]
fn tarball_with_dotdot_is_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let evil = tmp.path().join("evil.tar");
    let mut builder = tar::Builder::new(Vec::new());
    let mut good = tar::Header::new_gnu();
    good.set_path("ok.txt").unwrap();
    good.set_size(3);
    good.set_mode(0o644);
    good.set_uid(0);
    good.set_gid(0);
    good.set_mtime(1_000_000_000);
    good.set_cksum();
    builder.append(&good, &b"ok\n"[..]).unwrap();
    // Header::set_path refuses "..", so write the name by hand.
    let mut bad = tar::Header::new_gnu();
    bad.as_gnu_mut().unwrap().name[..7].copy_from_slice(b"../evil");
    bad.set_size(5);
    bad.set_mode(0o644);
    bad.set_uid(0);
    bad.set_gid(0);
    bad.set_mtime(1_000_000_000);
    bad.set_entry_type(tar::EntryType::Regular);
    bad.set_cksum();
    builder.append(&bad, &b"evil\n"[..]).unwrap();
    fs::write(&evil, builder.into_inner().unwrap()).unwrap();

    let store = store(&tmp);
    let err = store.import("evil", &evil).unwrap_err();
    assert!(matches!(err, ImageError::UnsafeEntry { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("../evil") && msg.contains("evil.tar"), "{msg}");
    assert!(
        store_entries(&store).is_empty(),
        "left behind: {:?}",
        store_entries(&store)
    );
    assert!(!store.dir().join("evil").exists());
    assert!(!tmp.path().join("evil").exists());
    assert!(matches!(store.get("evil"), Err(ImageError::NotFound(_))));
}

#[test]
fn bad_names_and_sources_are_refused() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    let store = store(&tmp);

    store.import("one", &src).unwrap();
    let err = store.import("one", &src).unwrap_err();
    assert!(matches!(err, ImageError::Exists(_)), "{err}");
    assert!(err.to_string().contains("\"one\""), "{err}");

    for bad in ["", "../x", "a/b", "a b", "-x", ".tmp-one-1"] {
        let err = store.import(bad, &src).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
        assert!(err.to_string().contains("invalid image name"), "{err}");
    }

    let missing = tmp.path().join("no/such/rootfs.tar.gz");
    let err = store.import("two", &missing).unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let text = tmp.path().join("notes.txt");
    fs::write(&text, "not a tarball").unwrap();
    let err = store.import("two", &text).unwrap_err();
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");

    // The store inside the source would be copied into itself.
    let err = store.import("two", tmp.path()).unwrap_err();
    assert!(matches!(err, ImageError::Unsupported { .. }), "{err}");

    assert_eq!(store_entries(&store), vec!["one".to_string()]);
}

#[test]
fn list_get_and_remove() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/motd"), "hi\n").unwrap();
    let store = store(&tmp);
    assert!(
        store.list().unwrap().is_empty(),
        "a store that does not exist yet is empty"
    );

    for name in ["web", "base", "db.prod-2"] {
        store.import(name, &src).unwrap();
    }
    let images = store.list().unwrap();
    let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["base", "db.prod-2", "web"]);
    let base = store.get("base").unwrap();
    assert_eq!(base.meta.name, "base");
    assert_eq!(base.meta.size, 3);
    assert_eq!(base.meta.files, 2);
    assert!(base.meta.created > 1_600_000_000);
    let toml = fs::read_to_string(store.dir().join("base/image.toml")).unwrap();
    assert!(
        toml.contains("name = \"base\"") && toml.contains("source = "),
        "{toml}"
    );
    let json = serde_json::to_value(&base).unwrap();
    assert_eq!(json["name"], "base");
    assert_eq!(json["size"], 3);

    let users = vec!["c1".to_string(), "c2".to_string()];
    let err = store.remove("base", &users).unwrap_err();
    assert!(matches!(err, ImageError::InUse { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "image \"base\" is used by containers c1, c2; destroy them first"
    );
    assert!(store.get("base").is_ok());

    store.remove("base", &[]).unwrap();
    assert!(matches!(store.get("base"), Err(ImageError::NotFound(_))));
    let err = store.remove("base", &[]).unwrap_err();
    assert!(matches!(err, ImageError::NotFound(_)), "{err}");
    assert_eq!(
        store_entries(&store),
        vec!["db.prod-2".to_string(), "web".to_string()]
    );
}

fn chroot(rootfs: &Path, args: &[&str]) -> std::process::Output {
    require("/usr/sbin/chroot", "coreutils");
    Command::new("/usr/sbin/chroot")
        .arg(rootfs)
        .args(args)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .output()
        .unwrap()
}

#[test]
fn build_minimal_with_python() {
    require_root();
    require("/bin/busybox", "busybox-static");
    require("/usr/bin/python3", "python3");
    require("/usr/lib/python3.11", "python3.11");
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let image = store
        .build_minimal(
            "py",
            MinimalOptions {
                programs: vec!["/usr/bin/python3".to_string()],
                trees: vec![PathBuf::from("/usr/lib/python3.11")],
            },
        )
        .unwrap();
    let rootfs = &image.rootfs;

    let out = chroot(
        rootfs,
        &[
            "/usr/bin/python3",
            "-c",
            "import json, asyncio, ssl, sqlite3; print(1)",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n",
        "python3 in the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "python3 stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = chroot(
        rootfs,
        &[
            "/bin/sh",
            "-c",
            "echo hi; wget --help >/dev/null 2>&1; id -u",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n0\n");

    // Minimal: no init, so the shell is the default command.
    assert!(!rootfs.join("sbin/init").exists());
    assert_eq!(
        image.default_command().unwrap(),
        vec!["/bin/sh".to_string()]
    );
    let sh = image.resolve_command("sh").unwrap();
    assert!(sh.ends_with("bin/sh"), "{}", sh.display());
    assert_eq!(
        image.resolve_command("/bin/busybox").unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        image.resolve_command("python3").unwrap(),
        Path::new("/usr/bin/python3")
    );
    let err = image.resolve_command("nosuchcmd").unwrap_err();
    assert!(matches!(err, ImageError::CommandNotFound { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "command \"nosuchcmd\" not found in image \"py\""
    );
    // Host paths from inside the image stay inside it.
    assert!(image.host_path("/bin/sh").unwrap().starts_with(rootfs));

    let os_release = fs::read_to_string(rootfs.join("etc/os-release")).unwrap();
    assert!(os_release.contains("cr-minimal"), "{os_release}");
    for file in ["passwd", "group", "hosts", "hostname", "nsswitch.conf"] {
        assert!(rootfs.join("etc").join(file).is_file(), "etc/{file}");
    }
    assert_eq!(
        fs::metadata(rootfs.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let listed = store.get("py").unwrap();
    assert!(
        listed.meta.source.contains("python3"),
        "{}",
        listed.meta.source
    );
    assert_eq!(store_entries(&store), vec!["py".to_string()]);
}

#[test]
fn build_minimal_with_redis() {
    require_root();
    require("/bin/busybox", "busybox-static");
    require("/usr/bin/redis-server", "redis-server");
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let image = store
        .build_minimal(
            "redis",
            MinimalOptions {
                programs: vec!["redis-server".to_string()],
                trees: vec![],
            },
        )
        .unwrap();
    let out = chroot(&image.rootfs, &["redis-server", "--version"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("Redis server"),
        "redis-server --version in the image: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(image.resolve_command("redis-server").is_ok());
}

#[test]
fn build_minimal_refuses_scripts_and_unknown_programs() {
    require_root();
    require("/bin/busybox", "busybox-static");
    let tmp = tempfile::tempdir().unwrap();
    let shim = tmp.path().join("python3");
    fs::write(
        &shim,
        "#!/usr/bin/env bash\nexec pyenv exec python3 \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    let store = store(&tmp);

    let opts = |program: &str| MinimalOptions {
        programs: vec![program.to_string()],
        trees: vec![],
    };
    let err = store
        .build_minimal("x", opts(shim.to_str().unwrap()))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("is a script") && msg.contains(&shim.display().to_string()),
        "{msg}"
    );
    let err = store
        .build_minimal("x", opts("no-such-program-here"))
        .unwrap_err();
    assert!(err.to_string().contains("no-such-program-here"), "{err}");
    let err = store
        .build_minimal(
            "x",
            MinimalOptions {
                programs: vec![],
                trees: vec![tmp.path().join("missing-tree")],
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("missing-tree"), "{err}");
    assert!(store_entries(&store).is_empty());
}

#[test]
fn debian_mirror_from_apt_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let apt = tmp.path();
    let err = find_debian_mirror(apt).unwrap_err();
    assert!(matches!(err, ImageError::NoMirror { .. }), "{err}");
    assert!(err.to_string().contains("sources.list"), "{err}");

    // deb822 only, with a security stanza and a third-party repository that
    // sorts first.
    fs::create_dir(apt.join("sources.list.d")).unwrap();
    fs::write(
        apt.join("sources.list.d/a-thirdparty.sources"),
        "Types: deb\nURIs: https://repo.example/node\nSuites: nodistro\nComponents: main\n",
    )
    .unwrap();
    fs::write(
        apt.join("sources.list.d/debian.sources"),
        "Types: deb\n\
         URIs: http://mirror-a.example/debian-security\n\
         Suites: bookworm-security\n\
         Components: main\n\
         \n\
         Types: deb deb-src\n\
         # a comment\n\
         URIs: http://mirror-a.example/debian\n\
         Suites: bookworm bookworm-updates\n\
         Components: main contrib\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .unwrap();
    fs::write(
        apt.join("sources.list.d/old.list.disabled"),
        "deb http://nope.example/debian bookworm main\n",
    )
    .unwrap();
    assert_eq!(
        find_debian_mirror(apt).unwrap(),
        "http://mirror-a.example/debian"
    );

    // The classic sources.list comes first; security lines are skipped.
    fs::write(
        apt.join("sources.list"),
        "# deb http://commented.example/debian bookworm main\n\
         deb http://mirror-b.example/debian-security bookworm-security main\n\
         deb [arch=amd64] http://mirror-b.example/debian bookworm main\n",
    )
    .unwrap();
    assert_eq!(
        find_debian_mirror(apt).unwrap(),
        "http://mirror-b.example/debian"
    );
}

#[test]
#[ignore = "downloads a Debian base system (about 2 minutes); run with --ignored"]
fn build_debian_minbase() {
    require_root();
    require("/usr/sbin/debootstrap", "debootstrap");
    let tmp = tempfile::tempdir().unwrap();
    let store = store(&tmp);
    let started = std::time::Instant::now();
    let image = store
        .build_debian(
            "deb",
            DebianOptions {
                variant: Some("minbase".to_string()),
                ..DebianOptions::default()
            },
        )
        .unwrap();
    eprintln!(
        "build_debian minbase took {:?}, {} bytes",
        started.elapsed(),
        image.meta.size
    );
    let rootfs = &image.rootfs;
    assert!(rootfs.join("etc/debian_version").is_file());
    let debs: Vec<_> = fs::read_dir(rootfs.join("var/cache/apt/archives"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "deb"))
        .collect();
    assert!(
        debs.is_empty(),
        "apt cache not cleaned: {} .deb files",
        debs.len()
    );
    let out = chroot(
        rootfs,
        &[
            "/bin/sh",
            "-c",
            "echo hi && apt-get --version >/dev/null && echo ok",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\nok\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(image.resolve_command("apt-get").is_ok());
    assert!(!image.default_command().unwrap().is_empty());
    assert!(
        image.meta.source.contains("debootstrap bookworm (minbase)"),
        "{}",
        image.meta.source
    );
    assert_eq!(store_entries(&store), vec!["deb".to_string()]);
    // No mounts left below the image.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&rootfs.display().to_string()),
        "mounts left in the image"
    );
}
