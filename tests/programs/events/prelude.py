# Shared by the event object programs (tests/events.rs), zdtm-style: the
# program sets its state up, calls ready_then_wait() (writes /root/ready,
# waits for /root/go), checks everything and calls finish(), which writes
# PASS or FAIL: <what> to /root/result and keeps PID 1 alive.
import ctypes, errno, fcntl, os, select, signal, struct, sys, time

libc = ctypes.CDLL(None, use_errno=True)
checks = []


def check(name, got, want):
    if got != want:
        checks.append(f"{name}: got {got!r}, want {want!r}")


def check_true(name, ok, detail=""):
    if not ok:
        checks.append(f"{name} {detail}".strip())


def sys_ok(rc, what):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc


def fdinfo(fd):
    return open(f"/proc/self/fdinfo/{fd}").read()


def fdinfo_lines(fd, prefix):
    return [l for l in fdinfo(fd).splitlines() if l.startswith(prefix)]


def nonblocking(fd):
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)


def cloexec(fd):
    return bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)


def ready_then_wait():
    open("/root/ready", "w").write("1")
    while not os.path.exists("/root/go"):
        time.sleep(0.02)


def finish():
    result = "PASS" if not checks else "FAIL: " + "; ".join(checks)
    open("/root/result", "w").write(result)
    while True:
        time.sleep(1000)


def run(main):
    try:
        main()
    except BaseException as e:
        checks.append(f"exception: {e!r}")
    finish()
