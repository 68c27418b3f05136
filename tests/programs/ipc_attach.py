# SysV segments attached by a parent and its child (after zdtm_lib.py):
# one read-write in both, one read-only in the child, one removed
# (IPC_RMID) while both still have it attached. After checkpoint and
# restore: the same addresses and protections, the same contents, and a
# write by the child after restore is seen by the parent.
import ctypes
from ctypes import c_int, c_void_p, c_size_t, c_ulong, c_ushort, c_long, byref

libc.shmat.restype = c_void_p
libc.shmat.argtypes = [c_int, c_void_p, c_int]
libc.shmget.argtypes = [c_int, c_size_t, c_int]
IPC_CREAT, IPC_RMID, IPC_STAT, SHM_RDONLY, SHM_DEST = 0o1000, 0, 2, 0o10000, 0o1000


class ShmidDs(ctypes.Structure):
    _fields_ = [("key", c_int), ("uid", ctypes.c_uint), ("gid", ctypes.c_uint),
                ("cuid", ctypes.c_uint), ("cgid", ctypes.c_uint), ("mode", c_ushort),
                ("pad1", c_ushort), ("seq", c_ushort), ("pad2", c_ushort),
                ("unused", c_ulong * 2), ("segsz", c_size_t), ("times", c_long * 3),
                ("cpid", c_int), ("lpid", c_int), ("nattch", c_ulong), ("unused2", c_ulong * 2)]


def maps_line(addr):
    for line in open("/proc/self/maps"):
        if int(line.split("-")[0], 16) == addr:
            f = line.split()
            return f[0], f[1]
    return None


shared = libc.shmget(0x5151, 3 * 4096, IPC_CREAT | 0o600)
ro = libc.shmget(0x5252, 4096, IPC_CREAT | 0o644)
gone = libc.shmget(0x5353, 2 * 4096, IPC_CREAT | 0o600)
a_shared = libc.shmat(shared, None, 0)
a_ro_w = libc.shmat(ro, None, 0)
ctypes.memmove(a_ro_w, b"read only for the child", 23)
libc.shmdt(c_void_p(a_ro_w))
a_gone = libc.shmat(gone, None, 0)
ctypes.memmove(a_shared, b"parent wrote this", 17)
ctypes.memmove(a_shared + 2 * 4096, b"last page", 9)
ctypes.memmove(a_gone + 4096, b"removed but attached", 20)

child = os.fork()
if child == 0:
    a_ro = libc.shmat(ro, None, SHM_RDONLY)
    ro_map = maps_line(a_ro)
    libc.shmctl(gone, IPC_RMID, None)
    open(f"{DIR}/child_ready", "w").write("1")
    wait_go()
    errs = []
    if maps_line(a_ro) != ro_map:
        errs.append(f"child ro mapping {maps_line(a_ro)} != {ro_map}")
    if ctypes.string_at(a_ro, 23) != b"read only for the child":
        errs.append("child ro contents")
    if ctypes.string_at(a_gone + 4096, 20) != b"removed but attached":
        errs.append("child removed segment contents")
    ctypes.memmove(a_shared + 4096, b"child after restore", 19)
    open(f"{DIR}/child_done", "w").write("; ".join(errs) or "ok")
    while True:
        time.sleep(60)

while not os.path.exists(f"{DIR}/child_ready"):
    time.sleep(0.02)
maps_before = (maps_line(a_shared), maps_line(a_gone))
ready()
wait_go()
while not os.path.exists(f"{DIR}/child_done"):
    time.sleep(0.02)
check("child", open(f"{DIR}/child_done").read(), "ok")
check("parent maps", (maps_line(a_shared), maps_line(a_gone)), maps_before)
check("shared contents", ctypes.string_at(a_shared, 17), b"parent wrote this")
check("shared last page", ctypes.string_at(a_shared + 2 * 4096, 9), b"last page")
check("write by the child after restore", ctypes.string_at(a_shared + 4096, 19), b"child after restore")
check("shm id of key", libc.shmget(0x5151, 0, 0), shared)
ds = ShmidDs()
if libc.shmctl(shared, IPC_STAT, byref(ds)) != 0:
    checks.append("IPC_STAT shared")
check("shared nattch", ds.nattch, 2)
ds = ShmidDs()
if libc.shmctl(gone, IPC_STAT, byref(ds)) != 0:
    checks.append("IPC_STAT removed")
check("removed segment", (ds.key, bool(ds.mode & SHM_DEST), ds.nattch, ds.segsz), (0, True, 2, 2 * 4096))
check("removed key is free", libc.shmget(0x5353, 0, 0), -1)
result()
