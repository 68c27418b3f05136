# SO_PEERCRED of restored unix sockets (tests/unix.rs; after the shared head
# zdtm_lib.py). K (euid 1000, egid 2000) makes a socketpair; S (1002/2002)
# listens on an abstract name; C (1001/2001) connects to it and S accepts.
# Each process notes SO_PEERCRED of its sockets, and after the go checks
# that they name the same pid, uid and gid, and that a client connecting
# after the restore sees S's credentials. Results in /crtest/result-NAME.
import socket

NAME = "\0cr-peercred"


def cred(s):
    return struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))


def as_ids(uid, gid):
    os.setresgid(gid, gid, 0)
    os.setresuid(uid, uid, 0)


def process(name, uid, gid, body):
    pid = os.fork()
    if pid == 0:
        as_ids(uid, gid)
        socks, want = body()
        got = {k: cred(s) for k, s in socks.items()}
        for k in socks:
            check(f"{name} {k} before", got[k], want[k])
        open(f"{DIR}/ready-{name}", "w").write("1")
        wait_go()
        for k, s in socks.items():
            check(f"{name} {k}", cred(s), got[k])
        if name == "S":
            # A new client after the restore sees the listener's maker.
            n = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            n.connect(NAME)
            check("new client's peer", cred(n), (os.getpid(), uid, gid))
        open(f"{DIR}/result-{name}", "w").write(
            "PASS" if not checks else "FAIL: " + "; ".join(checks))
        while True:
            time.sleep(60)
    return pid


def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    me = (os.getpid(), 1000, 2000)
    return {"pair a": a, "pair b": b}, {"pair a": me, "pair b": me}


k = process("K", 1000, 2000, pair)


def server():
    l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    l.bind(NAME)
    l.listen(4)
    open(f"{DIR}/listening", "w").write("1")
    while not os.path.exists(f"{DIR}/connected"):
        time.sleep(0.01)
    s, _ = l.accept()
    c_pid = int(open(f"{DIR}/connected").read())
    me = (os.getpid(), 1002, 2002)
    return {"listener": l, "accepted": s}, {"listener": me, "accepted": (c_pid, 1001, 2001)}


s_pid = process("S", 1002, 2002, server)


def client():
    while not os.path.exists(f"{DIR}/listening"):
        time.sleep(0.01)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(NAME)
    open(f"{DIR}/connected.tmp", "w").write(str(os.getpid()))
    os.rename(f"{DIR}/connected.tmp", f"{DIR}/connected")
    return {"client": c}, {"client": (s_pid, 1002, 2002)}


process("C", 1001, 2001, client)
for name in "KSC":
    while not os.path.exists(f"{DIR}/ready-{name}"):
        time.sleep(0.01)
ready()
wait_go()
result()
