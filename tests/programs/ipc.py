# The IPC namespace's objects (after zdtm_lib.py): SysV shared memory
# segments, a semaphore set, message queues and POSIX message queues, one
# of them held open. Checked byte for byte after checkpoint and restore:
# ids, keys, modes, sizes, contents, values, messages in order.
import ctypes
from ctypes import c_int, c_long, c_void_p, c_size_t, c_uint, byref

IPC_CREAT, IPC_EXCL, IPC_NOWAIT, IPC_RMID, IPC_STAT = 0o1000, 0o2000, 0o4000, 0, 2
GETALL, SETALL = 13, 17
libc.shmat.restype = c_void_p
libc.shmat.argtypes = [c_int, c_void_p, c_int]
libc.shmdt.argtypes = [c_void_p]
libc.shmget.argtypes = [c_int, c_size_t, c_int]
libc.msgrcv.restype = c_long
libc.msgrcv.argtypes = [c_int, c_void_p, c_size_t, c_long, c_int]
libc.msgsnd.argtypes = [c_int, c_void_p, c_size_t, c_int]
libc.mq_receive.restype = c_long


def ok(rc, what):
    if rc == -1 or rc is None:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


class MqAttr(ctypes.Structure):
    _fields_ = [("flags", c_long), ("maxmsg", c_long), ("msgsize", c_long),
                ("curmsgs", c_long), ("pad", c_long * 4)]


class ShmidDs(ctypes.Structure):
    # struct shmid_ds on x86-64 (ipc_perm: key uid gid cuid cgid mode seq ...)
    _fields_ = [("key", c_int), ("uid", c_uint), ("gid", c_uint), ("cuid", c_uint),
                ("cgid", c_uint), ("mode", ctypes.c_ushort), ("pad1", ctypes.c_ushort),
                ("seq", ctypes.c_ushort), ("pad2", ctypes.c_ushort),
                ("unused", ctypes.c_ulong * 2), ("segsz", c_size_t),
                ("times", c_long * 3), ("cpid", c_int), ("lpid", c_int),
                ("nattch", ctypes.c_ulong), ("unused2", ctypes.c_ulong * 2)]


def shm_stat(i):
    ds = ShmidDs()
    ok(libc.shmctl(i, IPC_STAT, byref(ds)), f"shmctl {i}")
    return ds


def shm_read(i, n):
    addr = ok(libc.shmat(i, None, 0o10000), "shmat ro")
    data = ctypes.string_at(addr, n)
    libc.shmdt(c_void_p(addr))
    return data


# Burn an id of each kind so that the ids are not the first ones.
for _ in range(3):
    libc.shmctl(ok(libc.shmget(0, 4096, 0o600), "shmget"), IPC_RMID, None)
    libc.msgctl(ok(libc.msgget(0, 0o600), "msgget"), IPC_RMID, None)
    libc.semctl(ok(libc.semget(0, 1, 0o600), "semget"), 0, IPC_RMID)

# SysV shared memory: a keyed segment with a pattern and a hole, and a
# private one with bytes in its last page.
SHM_KEY = 0x1234
shm1 = ok(libc.shmget(SHM_KEY, 3 * 4096 + 100, IPC_CREAT | IPC_EXCL | 0o640), "shmget key")
addr = ok(libc.shmat(shm1, None, 0), "shmat")
pattern1 = bytes((i * 7) % 251 for i in range(4096)) + b"\0" * 4096 + b"third page"
ctypes.memmove(addr, pattern1, len(pattern1))
libc.shmdt(c_void_p(addr))
shm2 = ok(libc.shmget(0, 5 * 4096, IPC_CREAT | 0o600), "shmget private")
addr = ok(libc.shmat(shm2, None, 0), "shmat")
ctypes.memmove(addr + 5 * 4096 - 6, b"theend", 6)
libc.shmdt(c_void_p(addr))

# A semaphore set with values.
SEM_KEY = 0x2345
sem = ok(libc.semget(SEM_KEY, 4, IPC_CREAT | IPC_EXCL | 0o660), "semget key")
vals = (ctypes.c_ushort * 4)(3, 0, 7, 32000)
ok(libc.semctl(sem, 0, SETALL, vals), "SETALL")

# A message queue with three messages of different types, and an empty one.
MSG_KEY = 0x3456
msq = ok(libc.msgget(MSG_KEY, IPC_CREAT | IPC_EXCL | 0o620), "msgget key")
sent = [(5, b"five"), (1, b"one\0with a nul"), (9, bytes(range(256)) * 4)]
for mtype, data in sent:
    buf = struct.pack("q", mtype) + data
    ok(libc.msgsnd(msq, buf, len(data), IPC_NOWAIT), "msgsnd")
msq_empty = ok(libc.msgget(0, 0o600), "msgget private")

# POSIX message queues: one held open (non-blocking, read-write) with
# messages of several priorities, one not held by anyone.
attr = MqAttr(0, 8, 128, 0)
mq = ok(libc.mq_open(b"/crq", os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NONBLOCK, 0o640, byref(attr)), "mq_open")
mq_sent = [(b"low", 1), (b"high", 9), (b"mid", 5), (b"low again", 1)]
for data, prio in mq_sent:
    ok(libc.mq_send(mq, data, len(data), prio), "mq_send")
attr2 = MqAttr(0, 4, 64, 0)
mq2 = ok(libc.mq_open(b"/other", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, byref(attr2)), "mq_open 2")
ok(libc.mq_send(mq2, b"kept", 4, 3), "mq_send 2")
os.close(mq2)

ready()
wait_go()

# Ids and keys.
check("shm id of key", libc.shmget(SHM_KEY, 0, 0), shm1)
check("sem id of key", libc.semget(SEM_KEY, 0, 0), sem)
check("msg id of key", libc.msgget(MSG_KEY, 0), msq)
try:
    d1 = shm_stat(shm1)
    check("shm1 size", d1.segsz, 3 * 4096 + 100)
    check("shm1 mode", d1.mode & 0o777, 0o640)
    check("shm1 key", d1.key, SHM_KEY)
    check("shm1 contents", shm_read(shm1, 3 * 4096 + 100), pattern1 + b"\0" * (3 * 4096 + 100 - len(pattern1)))
    d2 = shm_stat(shm2)
    check("shm2 size", d2.segsz, 5 * 4096)
    check("shm2 key", d2.key, 0)
    check("shm2 mode", d2.mode & 0o777, 0o600)
    check("shm2 contents", shm_read(shm2, 5 * 4096), b"\0" * (5 * 4096 - 6) + b"theend")
    # A write after restore is seen through another attachment.
    a = ok(libc.shmat(shm2, None, 0), "shmat rw")
    ctypes.memmove(a, b"after", 5)
    check("shm2 write after restore", shm_read(shm2, 5), b"after")
    libc.shmdt(c_void_p(a))
except OSError as e:
    checks.append(f"shm: {e}")

got = (ctypes.c_ushort * 4)()
if libc.semctl(sem, 0, GETALL, got) == -1:
    checks.append(f"GETALL: errno {ctypes.get_errno()}")
check("sem values", list(got), [3, 0, 7, 32000])

buf = ctypes.create_string_buffer(8 + 2048)
for i, (mtype, data) in enumerate(sent):
    n = libc.msgrcv(msq, buf, 2048, 0, IPC_NOWAIT)
    if n < 0:
        checks.append(f"msgrcv {i}: errno {ctypes.get_errno()}")
        break
    check(f"message {i}", (struct.unpack("q", buf.raw[:8])[0], buf.raw[8:8 + n]), (mtype, data))
check("msg queue empty after 3", libc.msgrcv(msq, buf, 2048, 0, IPC_NOWAIT), -1)
check("empty msg queue", libc.msgrcv(msq_empty, buf, 2048, 0, IPC_NOWAIT), -1)

a = MqAttr()
if libc.mq_getattr(mq, byref(a)) == -1:
    checks.append(f"mq_getattr on the held fd: errno {ctypes.get_errno()}")
check("mq attr", (a.flags & os.O_NONBLOCK, a.maxmsg, a.msgsize, a.curmsgs), (os.O_NONBLOCK, 8, 128, 4))
prio = c_uint()
mbuf = ctypes.create_string_buffer(128)
for want_data, want_prio in [(b"high", 9), (b"mid", 5), (b"low", 1), (b"low again", 1)]:
    n = libc.mq_receive(mq, mbuf, 128, byref(prio))
    if n < 0:
        checks.append(f"mq_receive: errno {ctypes.get_errno()}")
        break
    check("mq message", (mbuf.raw[:n], prio.value), (want_data, want_prio))
st = os.stat("/dev/mqueue/crq")
check("mq mode", st.st_mode & 0o777, 0o640)
st = os.stat("/dev/mqueue/other")
check("mq2 mode", st.st_mode & 0o777, 0o600)
mq2 = libc.mq_open(b"/other", os.O_RDONLY | os.O_NONBLOCK)
if mq2 < 0:
    checks.append(f"mq_open other: errno {ctypes.get_errno()}")
else:
    libc.mq_getattr(mq2, byref(a))
    check("mq2 attr", (a.maxmsg, a.msgsize, a.curmsgs), (4, 64, 1))
    n = libc.mq_receive(mq2, mbuf, 64, byref(prio))
    check("mq2 message", (mbuf.raw[:max(n, 0)], prio.value), (b"kept", 3))
result()
