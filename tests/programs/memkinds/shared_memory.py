# Shared anonymous memory and memfds between a parent and its child: the
# same pages seen by both after restore, a write by one seen by the other.
PAGE = 4096
shm = mmap.mmap(-1, 16 * PAGE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
for i in (0, 3, 9):
    shm[i * PAGE:i * PAGE + 8] = b"shm%05d" % i
shm[12 * PAGE:13 * PAGE] = b"\0" * PAGE  # a page present but all zero

# A memfd only mapped (its descriptor closed): one read-write and one
# read-only mapping.
mfd = os.memfd_create("crbuf", os.MFD_ALLOW_SEALING)
os.ftruncate(mfd, 8 * PAGE + 100)
mm = mmap.mmap(mfd, 8 * PAGE, flags=mmap.MAP_SHARED)
ro = mmap.mmap(mfd, 2 * PAGE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
mm[PAGE:PAGE + 5] = b"memfd"
os.close(mfd)

# Memfds mapped with no descriptor left anywhere (python's mmap keeps a
# duplicate, so these are mapped with libc directly): one read-write, one
# read-only and sealed against writing.
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
nofd = os.memfd_create("nofd", os.MFD_ALLOW_SEALING)
os.ftruncate(nofd, 4 * PAGE)
nofd_addr = libc.mmap(None, 4 * PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, nofd, 0)
ctypes.memmove(nofd_addr + PAGE, b"no fd", 5)
sealed = os.memfd_create("sealed", os.MFD_ALLOW_SEALING)
os.write(sealed, b"sealed contents")
SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
fcntl.fcntl(sealed, fcntl.F_ADD_SEALS, SEALS)
sealed_addr = libc.mmap(None, PAGE, mmap.PROT_READ, mmap.MAP_SHARED, sealed, 0)
os.close(nofd)
os.close(sealed)

# A memfd held only as a descriptor, with an offset and seals.
held = os.memfd_create("heldonly", os.MFD_ALLOW_SEALING)
os.write(held, b"held data 0123")
os.lseek(held, 5, os.SEEK_SET)
fcntl.fcntl(held, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)

child = os.fork()
if child == 0:
    wait_go()
    check("child: shm page 3", bytes(shm[3 * PAGE:3 * PAGE + 8]), b"shm00003")
    check("child: memfd page 1", bytes(mm[PAGE:PAGE + 5]), b"memfd")
    check("child: memfd read-only view", bytes(ro[PAGE:PAGE + 5]), b"memfd")
    check("child: fd-less memfd", ctypes.string_at(nofd_addr + PAGE, 5), b"no fd")
    ctypes.memmove(nofd_addr + 2 * PAGE, b"CHILD", 5)
    shm[5 * PAGE:5 * PAGE + 5] = b"CHILD"
    mm[2 * PAGE:2 * PAGE + 5] = b"CHILD"
    if not wait_for(lambda: bytes(shm[6 * PAGE:6 * PAGE + 6]) == b"PARENT"):
        checks.append("child: the parent's write to the shared memory never showed")
    if not wait_for(lambda: bytes(mm[3 * PAGE:3 * PAGE + 6]) == b"PARENT"):
        checks.append("child: the parent's write to the memfd never showed")
    result("/root/child_result")
    forever()

ready()
wait_go()
for i in (0, 3, 9):
    check(f"shm page {i}", bytes(shm[i * PAGE:i * PAGE + 8]), b"shm%05d" % i)
check("untouched shm page", bytes(shm[PAGE:2 * PAGE]), b"\0" * PAGE)
check("zero shm page", bytes(shm[12 * PAGE:13 * PAGE]), b"\0" * PAGE)
check("memfd page 1", bytes(mm[PAGE:PAGE + 5]), b"memfd")
check("shm in maps", len(maps_lines("/dev/zero (deleted)")), 1)
check("memfd mappings", sorted(l.split()[1] for l in maps_lines("/memfd:crbuf (deleted)")), ["r--s", "rw-s"])
check("held memfd link", os.readlink(f"/proc/self/fd/{held}"), "/memfd:heldonly (deleted)")
check("held memfd offset", os.lseek(held, 0, os.SEEK_CUR), 5)
check("held memfd contents", os.pread(held, 64, 0), b"held data 0123")
check("held memfd seals", fcntl.fcntl(held, fcntl.F_GET_SEALS), fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
try:
    os.ftruncate(held, 4)
    checks.append("the held memfd could shrink despite its seal")
except PermissionError:
    pass
check("fd-less memfd", ctypes.string_at(nofd_addr + PAGE, 5), b"no fd")
check("fd-less memfd in maps", len(maps_lines("/memfd:nofd (deleted)")), 1)
check("sealed memfd", ctypes.string_at(sealed_addr, 15), b"sealed contents")
sealed_maps = maps_lines("/memfd:sealed (deleted)")
check("sealed memfd mapping", [l.split()[1] for l in sealed_maps], ["r--s"])
if sealed_maps:
    again = os.open("/proc/self/map_files/" + sealed_maps[0].split()[0], os.O_RDONLY)
    check("sealed memfd seals", fcntl.fcntl(again, fcntl.F_GET_SEALS), SEALS)
    check("sealed memfd size", os.fstat(again).st_size, 15)
    os.close(again)
# Writes by the child are seen here, and ours there.
if not wait_for(lambda: ctypes.string_at(nofd_addr + 2 * PAGE, 5) == b"CHILD"):
    checks.append("the child's write to the fd-less memfd never showed")
if not wait_for(lambda: bytes(shm[5 * PAGE:5 * PAGE + 5]) == b"CHILD"):
    checks.append("the child's write to the shared memory never showed")
if not wait_for(lambda: bytes(mm[2 * PAGE:2 * PAGE + 5]) == b"CHILD"):
    checks.append("the child's write to the memfd never showed")
shm[6 * PAGE:6 * PAGE + 6] = b"PARENT"
mm[3 * PAGE:3 * PAGE + 6] = b"PARENT"
if not wait_for(lambda: os.path.exists("/root/child_result")):
    checks.append("the child wrote no result")
else:
    wait_for(lambda: open("/root/child_result").read() != "")
    check("child", open("/root/child_result").read(), "PASS")
result()
forever()
