# POSIX timers: ids, signal, clock, interval and time left.
SYS_timer_create, SYS_timer_settime, SYS_timer_gettime, SYS_timer_delete = 222, 223, 224, 226


class sigevent(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64), ("signo", ctypes.c_int),
                ("notify", ctypes.c_int), ("tid", ctypes.c_int), ("pad", ctypes.c_int * 11)]


def create(clock, notify, signo, value, tid=0):
    ev = sigevent(value, signo, notify, tid)
    tid_out = ctypes.c_int(0)
    r = libc.syscall(SYS_timer_create, clock, ctypes.byref(ev), ctypes.byref(tid_out))
    assert r == 0, ctypes.get_errno()
    return tid_out.value


def settime(tid, interval, value):
    its = (ctypes.c_long * 4)(interval, 0, value, 0)
    assert libc.syscall(SYS_timer_settime, tid, 0, its, None) == 0


def gettime(tid):
    its = (ctypes.c_long * 4)()
    assert libc.syscall(SYS_timer_gettime, tid, its) == 0
    return (its[0] * 10**9 + its[1], its[2] * 10**9 + its[3])


SIGRT = signal.SIGRTMIN + 3
signal.pthread_sigmask(signal.SIG_BLOCK, {SIGRT})
first = [create(1, 0, SIGRT, 0) for _ in range(2)]
a = create(1, 0, SIGRT, 0x1234)  # CLOCK_MONOTONIC, SIGEV_SIGNAL
b = create(7, 1, 0, 0)  # CLOCK_BOOTTIME, SIGEV_NONE
c = create(0, 4, SIGRT, 0x99, tid=threading.get_native_id())  # REALTIME, SIGEV_THREAD_ID
for t in first:
    libc.syscall(SYS_timer_delete, t)
settime(a, 500, 1000)
settime(b, 0, 2000)
before = open("/proc/self/timers").read()
ready()
wait_go()
check("/proc/self/timers", open("/proc/self/timers").read(), before)
check("ids", [a, b, c], [2, 3, 4])
ia, va = gettime(a)
check("interval", ia, 500 * 10**9)
check("time left", 900 * 10**9 < va <= 1000 * 10**9, True)
ib, vb = gettime(b)
check("no interval", ib, 0)
check("time left (boottime)", 1900 * 10**9 < vb <= 2000 * 10**9, True)
check("disarmed", gettime(c), (0, 0))
d = create(1, 1, 0, 0)
check("next id", d not in (a, b, c), True)
result()
