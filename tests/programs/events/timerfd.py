CLOCK_REALTIME, CLOCK_MONOTONIC = 0, 1
TFD_TIMER_ABSTIME = 1
TFD_NONBLOCK = os.O_NONBLOCK


class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class Itimerspec(ctypes.Structure):
    _fields_ = [("interval", Timespec), ("value", Timespec)]


def ts(seconds):
    return Timespec(int(seconds), int(round((seconds - int(seconds)) * 1e9)))


def timerfd(clock, flags, value, interval, abstime=False):
    fd = sys_ok(libc.timerfd_create(clock, flags), "timerfd_create")
    spec = Itimerspec(ts(interval), ts(value))
    sys_ok(libc.timerfd_settime(fd, TFD_TIMER_ABSTIME if abstime else 0,
                                ctypes.byref(spec), None), "timerfd_settime")
    return fd


def gettime(fd):
    spec = Itimerspec()
    sys_ok(libc.timerfd_gettime(fd, ctypes.byref(spec)), "timerfd_gettime")
    return (spec.value.sec + spec.value.nsec / 1e9,
            spec.interval.sec + spec.interval.nsec / 1e9)


def ticks(fd):
    return struct.unpack("Q", os.read(fd, 8))[0]


def main():
    # Keeps the time it has left: checked against the wall time the
    # container spent checkpointed (the test waits 3 s before restoring).
    slow = timerfd(CLOCK_MONOTONIC, 0, 30.0, 0)
    # Fires 4 s after it was armed (not counting the checkpoint), then every 0.3 s.
    soon = timerfd(CLOCK_MONOTONIC, 0, 4.0, 0.3)
    # Expired before the checkpoint with its expiry unread; periodic every 10 s.
    fired = timerfd(CLOCK_MONOTONIC, TFD_NONBLOCK, 0.001, 10.0)
    # A one-shot that expired, unread.
    once = timerfd(CLOCK_MONOTONIC, TFD_NONBLOCK, 0.001, 0)
    # An absolute CLOCK_REALTIME deadline an hour from now.
    deadline = time.time() + 3600
    wall = timerfd(CLOCK_REALTIME, 0, deadline, 0, abstime=True)
    # A disarmed one.
    idle = sys_ok(libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK), "timerfd_create")
    time.sleep(0.05)
    lines = {fd: fdinfo_lines(fd, "clockid") + fdinfo_lines(fd, "settime flags")
             + fdinfo_lines(fd, "it_interval") for fd in (slow, soon, fired, once, wall, idle)}
    slow_left = gettime(slow)[0]
    open("/root/wall-at-ready", "w").write(str(time.time()))
    ready_then_wait()
    went = time.monotonic()

    for fd, want in lines.items():
        got = fdinfo_lines(fd, "clockid") + fdinfo_lines(fd, "settime flags") \
            + fdinfo_lines(fd, "it_interval")
        check(f"fd {fd} fdinfo", got, want)
    away = time.time() - float(open("/root/wall-at-ready").read())
    check_true("the container was away at least 3 s", away >= 3.0, f"(away {away:.2f} s)")
    left = gettime(slow)[0]
    # Running (not checkpointed) time between ready and now is well under 1.5 s.
    check_true("slow keeps the time it had left", slow_left - 1.5 < left <= slow_left,
               f"(had {slow_left:.3f} s, has {left:.3f} s after {away:.2f} s away)")
    check("fired: unread expiry", ticks(fired), 1)
    check("fired: interval", round(gettime(fired)[1], 3), 10.0)
    check_true("fired: next expiry within its interval", 8.0 < gettime(fired)[0] <= 10.0,
               f"({gettime(fired)[0]:.3f})")
    check("once: unread expiry", ticks(once), 1)
    try:
        os.read(once, 8)
        checks.append("once: expired twice")
    except BlockingIOError:
        pass
    check("once: disarmed", gettime(once), (0.0, 0.0))
    check("idle: disarmed", gettime(idle), (0.0, 0.0))
    wall_left = gettime(wall)[0]
    check_true("wall keeps its wall-clock deadline",
               abs(wall_left - (deadline - time.time())) < 0.5, f"({wall_left:.3f} s left)")
    check("fired nonblocking", nonblocking(fired), True)
    check("soon blocking", nonblocking(soon), False)
    # soon fires when its time left runs out, then every 0.3 s.
    left, interval = gettime(soon)
    check("soon: interval", round(interval, 3), 0.3)
    t0 = time.monotonic()
    n = ticks(soon)
    t1 = time.monotonic()
    check("soon: one expiry", n, 1)
    check_true("soon: fires when its time left is over", abs((t1 - t0) - left) < 0.1,
               f"(waited {t1 - t0:.3f} s, had {left:.3f} s left)")
    check_true("soon: 4 s after it was armed, not counting the checkpoint",
               left > 1.0, f"(had {left:.3f} s left {t0 - went:.3f} s after go)")
    n = ticks(soon)
    t2 = time.monotonic()
    check("soon: one more expiry", n, 1)
    check_true("soon: interval 0.3 s", abs((t2 - t1) - 0.3) < 0.1, f"(waited {t2 - t1:.3f} s)")


run(main)
