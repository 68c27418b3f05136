# Mount namespace and UTS state (tests/mounts.rs; after the shared head
# zdtm_lib.py): files in /tmp and /dev/shm, a tmpfs with size= and files,
# a bind mount, a read-only remount, a second proc instance, the hostname
# and domain name, all checked after a real checkpoint and restore.
import errno, socket

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
MS_SHARED = 1 << 20


def mount(src, target, fstype, flags, data):
    rc = libc.mount(src and src.encode(), target.encode(), fstype and fstype.encode(),
                    ctypes.c_ulong(flags), data and data.encode())
    if rc != 0:
        raise OSError(ctypes.get_errno(), f"mount {target}")


def put(path, data, mode, uid, gid):
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)
    os.chown(path, uid, gid)


def stat_of(path):
    st = os.stat(path)
    return (st.st_mode & 0o7777, st.st_uid, st.st_gid, open(path, "rb").read())


def mountinfo():
    table = {}
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        dash = f.index("-")
        table[f[4]] = (f[3], f[5], f[dash + 1], f[dash + 3], f[6:dash])
    return table


FILES = {
    "/tmp/note": (b"in /tmp\n" * 100, 0o640, 1234, 2345),
    "/dev/shm/segment": (bytes(range(256)) * 64, 0o600, 42, 43),
    "/mnt/scratch/data": (b"scratch" * 30000, 0o604, 7, 8),
    "/mnt/scratch/deep/er/file": (b"deep", 0o644, 0, 0),
    "/srv/a/file": (b"bind source", 0o644, 0, 0),
    "/mnt/ro/kept": (b"read-only", 0o444, 5, 5),
    "/mnt/sbro/kept": (b"superblock read-only", 0o640, 9, 9),
}

os.makedirs("/tmp/dir/sub", exist_ok=True)
os.chmod("/tmp/dir", 0o711)
for d in ["/mnt/scratch", "/srv/a", "/srv/b", "/mnt/ro", "/mnt/proc2", "/mnt/sbro",
          "/mnt/deep", "/mnt/mq", "/mnt/pts"]:
    os.makedirs(d, exist_ok=True)
mount("tmpfs", "/mnt/scratch", "tmpfs", MS_NOSUID, "size=2m,mode=750")
os.makedirs("/mnt/scratch/deep/er")
mount("tmpfs", "/mnt/ro", "tmpfs", 0, "size=1m")
mount("tmpfs", "/mnt/sbro", "tmpfs", 0, "size=512k,nr_inodes=100")
for path, (data, mode, uid, gid) in FILES.items():
    put(path, data, mode, uid, gid)
mount("/srv/a", "/srv/b", None, MS_BIND, None)
mount(None, "/mnt/ro", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NODEV, None)
mount("proc", "/mnt/proc2", "proc", MS_NOSUID | MS_NODEV, None)
mount(None, "/mnt/scratch", None, MS_SHARED, None)
mount("/mnt/scratch/deep", "/mnt/deep", None, MS_BIND, None)
open("/srv/file-bind", "w").close()
mount("/srv/a/file", "/srv/file-bind", None, MS_BIND, None)
mount(None, "/mnt/sbro", None, MS_REMOUNT | MS_RDONLY, "size=512k,nr_inodes=100")
mount("mqueue", "/mnt/mq", "mqueue", MS_NOSUID, None)
mount("devpts", "/mnt/pts", "devpts", 0, "newinstance,mode=600,ptmxmode=000")
socket.sethostname("moved-host")
if libc.setdomainname(b"example.test", 12) != 0:
    raise OSError(ctypes.get_errno(), "setdomainname")

want_files = {p: stat_of(p) for p in FILES}
want_dir = os.stat("/tmp/dir").st_mode & 0o7777
before = mountinfo()
ready()
wait_go()

for path, want in want_files.items():
    try:
        check(path, stat_of(path), want)
    except OSError as e:
        check(path, str(e), "present")
check("/tmp/dir mode", os.stat("/tmp/dir").st_mode & 0o7777, want_dir)
check("/tmp/dir/sub", os.path.isdir("/tmp/dir/sub"), True)
after = mountinfo()
MOUNTS = ["/mnt/scratch", "/srv/b", "/mnt/ro", "/mnt/proc2", "/tmp", "/dev/shm", "/mnt/sbro",
          "/mnt/deep", "/srv/file-bind", "/mnt/mq", "/mnt/pts"]
for mp in MOUNTS:
    if mp not in after:
        check(f"mount {mp}", "missing", "present")
        continue
    b, a = before[mp], after[mp]
    check(f"{mp} root", a[0], b[0])
    check(f"{mp} options", a[1], b[1])
    check(f"{mp} fstype", a[2], b[2])
    if a[2] != "overlay":  # the root overlay's own options are the start path's
        check(f"{mp} super options", a[3], b[3])
order = [mp for mp in after if mp in before]
check("mount order", order, [mp for mp in before if mp in after])
check("/srv/b root", after.get("/srv/b", ("",))[0], "/srv/a")
check("/mnt/scratch size", "size=2048k" in after.get("/mnt/scratch", ("", "", "", ""))[3], True)
try:
    open("/mnt/ro/new", "w")
    check("/mnt/ro write", "allowed", "EROFS")
except OSError as e:
    check("/mnt/ro write", e.errno, errno.EROFS)
open("/srv/b/through", "w").write("x")
check("bind shares files", os.path.exists("/srv/a/through"), True)
check("/mnt/scratch shared", any(f.startswith("shared:") for f in after.get("/mnt/scratch", ("",) * 5)[4]), True)
check("/mnt/deep root", after.get("/mnt/deep", ("",))[0], "/deep")
check("/srv/file-bind", open("/srv/file-bind", "rb").read(), b"bind source")
check("/mnt/sbro super ro", after.get("/mnt/sbro", ("",) * 4)[3].startswith("ro,"), True)
check("/mnt/scratch/deep/er/file via bind", open("/mnt/deep/er/file", "rb").read(), b"deep")
check("/mnt/proc2 is a proc", os.path.exists("/mnt/proc2/self/status"), True)
check("hostname", socket.gethostname(), "moved-host")
check("domainname", open("/proc/sys/kernel/domainname").read().strip(), "example.test")
result()
