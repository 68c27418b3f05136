EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLLET, EPOLLONESHOT = select.EPOLLET, select.EPOLLONESHOT
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3


class EpollEvent(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("events", ctypes.c_uint32), ("data", ctypes.c_uint64)]


def ctl(ep, op, fd, events, data):
    ev = EpollEvent(events, data)
    sys_ok(libc.epoll_ctl(ep, op, fd, ctypes.byref(ev)), f"epoll_ctl {op} fd {fd}")


def wait(ep, timeout_ms=0):
    events = (EpollEvent * 16)()
    n = sys_ok(libc.epoll_wait(ep, events, 16, timeout_ms), "epoll_wait")
    return {(events[i].events, events[i].data) for i in range(n)}


def interest(ep):
    # (fd, events, data) of every tfd: line; inode numbers change on restore.
    out = []
    for line in fdinfo_lines(ep, "tfd:"):
        w = line.split()
        out.append((int(w[1]), w[3], w[5]))
    return sorted(out)


def signalfd(signals):
    mask = ctypes.c_uint64(sum(1 << (s - 1) for s in signals))
    return sys_ok(libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK), "signalfd")


D_PIPE, D_EVENT, D_ONESHOT, D_MOVED = 0x1111222233334444, 0xE7, 0x03, 0x04
D_TIMER, D_SIGNAL, D_NESTED = 0x05, 0xFFFFFFFFFFFFFFF6, 0x07


def main():
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    ev = os.eventfd(0, os.EFD_NONBLOCK)
    tfd = sys_ok(libc.timerfd_create(1, os.O_NONBLOCK), "timerfd_create")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    sfd = signalfd([signal.SIGUSR1])
    ep = sys_ok(libc.epoll_create1(0), "epoll_create1")
    ep2 = sys_ok(libc.epoll_create1(os.O_CLOEXEC), "epoll_create1")
    os.write(w1, b"x")
    ctl(ep, EPOLL_CTL_ADD, r1, EPOLLIN, D_PIPE)                # level, ready
    ctl(ep, EPOLL_CTL_ADD, ev, EPOLLIN | EPOLLET, D_EVENT)     # edge, not ready
    ctl(ep, EPOLL_CTL_ADD, w1, EPOLLOUT | EPOLLONESHOT, D_ONESHOT)
    # An item whose fd number now names another file: added as a dup of r2,
    # the dup closed (r2 keeps the file and the item alive), the number reused.
    moved = os.dup(r2)
    ctl(ep, EPOLL_CTL_ADD, moved, EPOLLIN, D_MOVED)
    os.close(moved)
    reused = os.eventfd(0)
    check("the fd number is reused", reused, moved)
    ctl(ep, EPOLL_CTL_ADD, tfd, EPOLLIN, D_TIMER)
    ctl(ep, EPOLL_CTL_ADD, sfd, EPOLLIN, D_SIGNAL)
    ctl(ep2, EPOLL_CTL_ADD, ep, EPOLLIN, D_NESTED)             # epoll in epoll
    # The one-shot fires now and is disarmed from then on.
    check("before: ready", wait(ep), {(EPOLLOUT, D_ONESHOT), (EPOLLIN, D_PIPE)})
    before = (interest(ep), interest(ep2))
    check("before: one-shot disarmed", wait(ep), {(EPOLLIN, D_PIPE)})
    ready_then_wait()

    check("interest lists", (interest(ep), interest(ep2)), before)
    check("nested epoll reports", wait(ep2), {(EPOLLIN, D_NESTED)})
    check("only the pipe is ready", wait(ep), {(EPOLLIN, D_PIPE)})
    os.write(w2, b"y")
    check("the moved item follows its file", wait(ep), {(EPOLLIN, D_PIPE), (EPOLLIN, D_MOVED)})
    os.read(r2, 1)
    os.eventfd_write(ev, 1)
    check("eventfd edge", wait(ep), {(EPOLLIN, D_PIPE), (EPOLLIN, D_EVENT)})
    check("eventfd edge reported once", wait(ep), {(EPOLLIN, D_PIPE)})
    spec = struct.pack("qqqq", 0, 0, 0, 1000000)  # it_interval 0, it_value 1 ms
    sys_ok(libc.timerfd_settime(tfd, 0, spec, None), "timerfd_settime")
    time.sleep(0.02)
    check("timerfd item", wait(ep), {(EPOLLIN, D_PIPE), (EPOLLIN, D_TIMER)})
    os.read(tfd, 8)
    os.kill(os.getpid(), signal.SIGUSR1)
    check("signalfd item", wait(ep), {(EPOLLIN, D_PIPE), (EPOLLIN, D_SIGNAL)})
    os.read(sfd, 128)
    ctl(ep, EPOLL_CTL_MOD, w1, EPOLLOUT | EPOLLONESHOT, D_ONESHOT)
    check("re-armed one-shot", wait(ep), {(EPOLLOUT, D_ONESHOT), (EPOLLIN, D_PIPE)})
    os.read(r1, 1)
    check("nothing ready", wait(ep), set())
    check("nested epoll idle", wait(ep2), set())
    ctl(ep, EPOLL_CTL_DEL, r1, 0, 0)
    check("item deleted", len(interest(ep)), len(before[0]) - 1)


run(main)
