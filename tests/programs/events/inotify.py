IN_MODIFY, IN_ATTRIB, IN_CREATE, IN_DELETE = 0x2, 0x4, 0x100, 0x200
IN_IGNORED, IN_ONESHOT = 0x8000, 0x80000000


def add(fd, path, mask):
    return sys_ok(libc.inotify_add_watch(fd, path.encode(), mask), f"inotify_add_watch {path}")


def events(fd):
    out = []
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return out
    while data:
        wd, mask, cookie, n = struct.unpack_from("iIII", data)
        name = data[16:16 + n].rstrip(b"\0").decode()
        out.append((wd, mask, name))
        data = data[16 + n:]
    return out


def watches(fd):
    # (wd, mask, ignored mask) of each watch as fdinfo shows it (the inode
    # and device numbers of the restored container's files may differ).
    out = []
    for line in fdinfo_lines(fd, "inotify wd:"):
        f = dict(w.split(":", 1) for w in line.split()[1:])
        out.append((f["wd"], f["mask"], f["ignored_mask"]))
    return sorted(out)


def main():
    os.makedirs("/root/watched", exist_ok=True)
    os.makedirs("/root/other", exist_ok=True)
    with open("/root/watched/file", "w") as f:
        f.write("x")
    fd = sys_ok(libc.inotify_init1(os.O_NONBLOCK), "inotify_init1")
    d = add(fd, "/root/watched", IN_CREATE | IN_DELETE)
    gap = add(fd, "/etc", IN_ATTRIB)
    f = add(fd, "/root/watched/file", IN_MODIFY | IN_ONESHOT)
    libc.inotify_rm_watch(fd, gap)  # leaves wd 2 unused
    blocking = sys_ok(libc.inotify_init1(0), "inotify_init1")
    b = add(blocking, "/root/other", IN_CREATE)
    check("watch descriptors", (d, gap, f, b), (1, 2, 3, 1))
    events(fd)  # the IN_IGNORED of the removed watch
    # Queued at checkpoint: dropped by the restore (documented rule).
    open("/root/watched/before", "w").close()
    before = (watches(fd), watches(blocking))
    ready_then_wait()

    check("watches", (watches(fd), watches(blocking)), before)
    check("nonblocking", nonblocking(fd), True)
    check("blocking", nonblocking(blocking), False)
    check("queued events were dropped", events(fd), [])
    open("/root/watched/after", "w").close()
    check("create after restore", events(fd), [(1, IN_CREATE, "after")])
    os.unlink("/root/watched/after")
    check("delete after restore", events(fd), [(1, IN_DELETE, "after")])
    with open("/root/watched/file", "a") as w:
        w.write("y")
    # IN_ONESHOT: one event, then the watch is gone.
    check("modify after restore", events(fd), [(3, IN_MODIFY, ""), (3, IN_IGNORED, "")])
    check("next watch descriptor", add(fd, "/root", IN_CREATE), 4)
    open("/root/other/new", "w").close()
    ev = os.read(blocking, 4096)
    wd, mask, cookie, n = struct.unpack_from("iIII", ev)
    check("blocking instance", (wd, mask, ev[16:16 + n].rstrip(b"\0")), (1, IN_CREATE, b"new"))


run(main)
