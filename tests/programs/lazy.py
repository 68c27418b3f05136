# Lazy pages (src/restore/lazy.rs): the program acts the moment it is
# resumed, while its memory is still being filled after the restore: a child
# forked at once checks the memory it inherited, a mapping is moved by
# mremap and another dropped with MADV_DONTNEED. A gap of more than a second
# in CLOCK_MONOTONIC is how it knows it was checkpointed and restored.
# Writes PASS or FAIL: <what> to /root/result.
import hashlib, mmap, os, time

MIB = 1 << 20
checks = []

def check(name, got, want):
    if got != want:
        checks.append(f"{name}: got {got!r}, want {want!r}")

def region(size):
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m[:] = os.urandom(size)
    return m, hashlib.sha256(m).hexdigest()

big, big_sum = region(256 * MIB)      # read by the child and the parent
moved, moved_sum = region(24 * MIB)   # mremap (resize) right after the resume
dropped, _ = region(24 * MIB)         # MADV_DONTNEED right after the resume
zeros_sum = hashlib.sha256(bytes(24 * MIB)).hexdigest()

open("/root/ready", "w").write("1")
last = time.monotonic()
while True:
    time.sleep(0.005)
    now = time.monotonic()
    if now - last > 1.0:
        break
    last = now

# Resumed: act before the fill can be over.
child = os.fork()
if child == 0:
    ok = hashlib.sha256(big).hexdigest() == big_sum
    os._exit(0 if ok else 3)
dropped.madvise(mmap.MADV_DONTNEED)
check("dropped mapping after MADV_DONTNEED", hashlib.sha256(dropped).hexdigest(), zeros_sum)
moved.resize(64 * MIB)
check("moved mapping", hashlib.sha256(moved[:24 * MIB]).hexdigest(), moved_sum)
check("moved mapping's new tail", moved[24 * MIB:].count(0), 40 * MIB)
check("big mapping in the parent", hashlib.sha256(big).hexdigest(), big_sum)
_, status = os.waitpid(child, 0)
check("child's exit status (3: its copy differed)", os.waitstatus_to_exitcode(status), 0)
open("/root/result", "w").write("PASS" if not checks else "FAIL: " + "; ".join(checks))
while True:
    time.sleep(1)
