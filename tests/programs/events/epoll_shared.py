# An epoll shared by two processes whose item's file is only open in the
# other process: the parent added the pipe's read end, forked, and closed
# it; the child keeps the pipe (and so the item) alive.
EPOLL_CTL_ADD = 1


class EpollEvent(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


def wait(ep):
    events = (EpollEvent * 4)()
    n = sys_ok(libc.epoll_wait(ep, events, 4, 0), "epoll_wait")
    return {(events[i].events, events[i].data) for i in range(n)}


def main():
    r, w = os.pipe()
    ep = sys_ok(libc.epoll_create1(0), "epoll_create1")
    ev = EpollEvent(select.EPOLLIN, 0xC0FFEE)
    sys_ok(libc.epoll_ctl(ep, EPOLL_CTL_ADD, r, ctypes.byref(ev)), "epoll_ctl")
    child = os.fork()
    if child == 0:
        os.close(w)
        while True:
            time.sleep(1000)
    os.close(r)
    check("nothing ready before", wait(ep), set())
    ready_then_wait()

    check("tfd line", [l.split()[1] for l in fdinfo_lines(ep, "tfd:")], [str(r)])
    os.write(w, b"z")
    check("the item on the child's pipe", wait(ep), {(select.EPOLLIN, 0xC0FFEE)})
    child_fds = sorted(int(f) for f in os.listdir(f"/proc/{child}/fd"))
    check("the child still holds the pipe", r in child_fds, True)


run(main)
