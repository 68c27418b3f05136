# One process holding many kinds of kernel state, checked byte for byte
# after a real checkpoint and restore (in the spirit of CRIU's zdtm).
# It sets everything up, writes /root/ready, waits for /root/go, then
# checks everything and writes PASS or FAIL: <what> to /root/result.
import ctypes, mmap, os, resource, signal, sys, time

checks = []

def check(name, got, want):
    if got != want:
        checks.append(f"{name}: got {got!r}, want {want!r}")

# Memory: an anonymous mapping with holes and a guard page.
anon = mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(0, 64, 3):
    anon[i * 4096:i * 4096 + 8] = (b"page%04d" % i)
# A private file mapping with one page written (copy-on-write).
with open("/root/backing", "wb") as f:
    f.write(b"F" * 8192)
fd = os.open("/root/backing", os.O_RDWR)
fmap = mmap.mmap(fd, 8192, flags=mmap.MAP_PRIVATE)
fmap[4096:4100] = b"COW!"
os.close(fd)
# A shared read-only file mapping (like glibc's gconv cache).
with open("/root/shared_ro", "wb") as f:
    f.write(b"S" * 4096)
sfd = os.open("/root/shared_ro", os.O_RDONLY)
sro = mmap.mmap(sfd, 4096, access=mmap.ACCESS_READ)
# A large heap object with a known pattern.
heap = bytearray(os.urandom(3 << 20))
heap_sum = sum(heap[::4093])

# Signals: a handler, a blocked signal.
hits = []
signal.signal(signal.SIGUSR1, lambda s, f: hits.append(s))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
signal.setitimer(signal.ITIMER_REAL, 1000.0)
signal.signal(signal.SIGALRM, lambda s, f: None)

# Files: an offset, an append-only file, a pipe with data in it.
os.makedirs("/srv/state", exist_ok=True)
os.chdir("/srv/state")
with open("data", "wb") as f:
    f.write(b"0123456789")
rd = os.open("data", os.O_RDONLY)
os.lseek(rd, 5, os.SEEK_SET)
ap = os.open("log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
os.write(ap, b"before\n")
pr, pw = os.pipe()
os.write(pw, b"in the pipe")
os.set_inheritable(rd, True)

# Process attributes.
libc = ctypes.CDLL(None)
libc.prctl(1, signal.SIGUSR1)  # PR_SET_PDEATHSIG
libc.prctl(4, 0)  # PR_SET_DUMPABLE
os.umask(0o027)
resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300))

open("/root/ready", "w").write("1")
while not os.path.exists("/root/go"):
    time.sleep(0.02)

for i in range(0, 64, 3):
    check(f"anon page {i}", bytes(anon[i * 4096:i * 4096 + 8]), b"page%04d" % i)
check("untouched anon page", bytes(anon[4096:4104]), b"\0" * 8)
check("private file page", bytes(fmap[4096:4100]), b"COW!")
check("private file clean page", bytes(fmap[0:4]), b"FFFF")
check("heap", sum(heap[::4093]), heap_sum)
check("shared read-only file mapping", bytes(sro[0:4]), b"SSSS")
check("blocked mask", signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, set()), True)
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(0.05)
check("handler ran", hits, [signal.SIGUSR1])
remaining = signal.getitimer(signal.ITIMER_REAL)[0]
check("itimer running", 900 < remaining < 1000, True)
check("cwd", os.getcwd(), "/srv/state")
check("offset", os.read(rd, 5), b"56789")
os.write(ap, b"after\n")
check("append", open("log", "rb").read(), b"before\nafter\n")
check("pipe data", os.read(pr, 100), b"in the pipe")
check("umask", os.umask(0o022), 0o027)
check("rlimit", resource.getrlimit(resource.RLIMIT_NOFILE), (300, 300))
pdeath = ctypes.c_int(0)
libc.prctl(2, ctypes.byref(pdeath))  # PR_GET_PDEATHSIG
check("parent-death signal", pdeath.value, signal.SIGUSR1)
check("dumpable", libc.prctl(3), 0)  # PR_GET_DUMPABLE
open("/root/result", "w").write("PASS\n" if not checks else "FAIL: " + "; ".join(checks) + "\n")
time.sleep(1000)
