# Pending signals, process-wide and thread-directed, with their siginfo.
SIGRT = signal.SIGRTMIN + 2


class sigval(ctypes.Union):
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, sigval]
libc.pthread_sigqueue.argtypes = [ctypes.c_ulong, ctypes.c_int, sigval]


def sigset(*sigs):
    buf = (ctypes.c_ubyte * 128)()
    for s in sigs:
        buf[(s - 1) // 8] |= 1 << ((s - 1) % 8)
    return buf


def take(sig):
    """sigtimedwait: (signo, code, pid, uid, value) or None."""
    info = (ctypes.c_ubyte * 128)()
    ts = (ctypes.c_long * 2)(2, 0)
    if libc.sigtimedwait(sigset(sig), info, ts) < 0:
        return None
    b = bytes(info)
    signo, _, code = struct.unpack_from("iii", b, 0)
    pid, uid = struct.unpack_from("iI", b, 16)
    (value,) = struct.unpack_from("Q", b, 24)
    return (signo, code, pid, uid, value & 0xFFFFFFFF)


signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2, SIGRT})
worker_ready = threading.Event()
seen = {}


def worker():
    worker_ready.set()
    wait_go()
    tid = threading.get_native_id()
    seen["pnd"] = int(status_of(f"/proc/self/task/{tid}/status", "SigPnd"), 16)
    seen["got"] = take(signal.SIGUSR2)


t = threading.Thread(target=worker)
t.start()
worker_ready.wait()
libc.pthread_sigqueue(t.ident, signal.SIGUSR2, sigval(sival_int=77))
libc.sigqueue(os.getpid(), SIGRT, sigval(sival_int=11))
libc.sigqueue(os.getpid(), SIGRT, sigval(sival_int=12))
libc.sigqueue(os.getpid(), signal.SIGUSR1, sigval(sival_int=5))
shd = int(status_of("/proc/self/status", "ShdPnd"), 16)
check("before: shared pending", shd, (1 << (SIGRT - 1)) | (1 << (signal.SIGUSR1 - 1)))
ready()
wait_go()
t.join()
SI_QUEUE = -1
check("thread-directed pending", seen["pnd"], 1 << (signal.SIGUSR2 - 1))
check("thread signal", seen["got"], (signal.SIGUSR2, SI_QUEUE, 1, 0, 77))
shd = int(status_of("/proc/self/status", "ShdPnd"), 16)
check("shared pending", shd, (1 << (SIGRT - 1)) | (1 << (signal.SIGUSR1 - 1)))
check("first rt signal", take(SIGRT), (SIGRT, SI_QUEUE, 1, 0, 11))
check("second rt signal", take(SIGRT), (SIGRT, SI_QUEUE, 1, 0, 12))
shd = int(status_of("/proc/self/status", "ShdPnd"), 16)
check("rt signals all taken", shd & (1 << (SIGRT - 1)), 0)
hits = []
signal.signal(signal.SIGUSR1, lambda s, f: hits.append(s))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
time.sleep(0.05)
check("delivered on unblock", hits, [signal.SIGUSR1])
result()
