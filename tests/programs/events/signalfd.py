SFD_NONBLOCK = os.O_NONBLOCK
SFD_CLOEXEC = os.O_CLOEXEC


def signalfd(signals, flags):
    mask = ctypes.c_uint64(sum(1 << (s - 1) for s in signals))
    return sys_ok(libc.signalfd(-1, ctypes.byref(mask), flags), "signalfd")


def read_signo(fd):
    info = os.read(fd, 128)
    signo, errno_, code, pid = struct.unpack_from("IiiI", info)
    return signo, pid


def main():
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM})
    one = signalfd([signal.SIGUSR1], SFD_NONBLOCK | SFD_CLOEXEC)
    two = signalfd([signal.SIGUSR2, signal.SIGTERM], 0)
    before = {fd: fdinfo_lines(fd, "sigmask") for fd in (one, two)}
    check("mask of one", before[one], ["sigmask:\t0000000000000200"])
    ready_then_wait()

    for fd in (one, two):
        check(f"fd {fd} sigmask", fdinfo_lines(fd, "sigmask"), before[fd])
    check("one nonblocking", nonblocking(one), True)
    check("one cloexec", cloexec(one), True)
    check("two blocking", nonblocking(two), False)
    check("two not cloexec", cloexec(two), False)
    try:
        os.read(one, 128)
        checks.append("one: a signal was pending before any was sent")
    except BlockingIOError:
        pass
    # Signals sent after the restore arrive through the signalfds.
    os.kill(os.getpid(), signal.SIGUSR1)
    check("one receives SIGUSR1", read_signo(one), (signal.SIGUSR1, os.getpid()))
    os.kill(os.getpid(), signal.SIGTERM)
    check("two receives SIGTERM", read_signo(two), (signal.SIGTERM, os.getpid()))
    # From outside: the test sends SIGUSR2 to PID 1 and waits for /root/sent.
    open("/root/want-usr2", "w").write("1")
    while not os.path.exists("/root/sent"):
        time.sleep(0.02)
    check("two receives SIGUSR2 from outside", read_signo(two)[0], signal.SIGUSR2)


run(main)
