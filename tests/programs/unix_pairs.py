# Unix socket pairs shared by a parent and its child, checked byte for byte
# after a real checkpoint and restore: stream data queued both ways,
# datagram and seqpacket message boundaries, shutdown, a closed peer.
# Writes /root/ready, waits for /root/go, writes PASS or FAIL: <what> to
# /root/result.
import fcntl, os, socket, struct, time

checks = []

def check(name, got, want):
    if got != want:
        checks.append(f"{name}: got {got!r}, want {want!r}")

def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return out

big = bytes((i * 7) % 251 for i in range(150000))
s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
s1.sendall(b"parent->child:" + big)
d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
for m in (b"one", b"", b"three" * 1000, b"x"):
    if m:
        d1.send(m)
q1, q2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
for m in (b"alpha", b"beta" * 3000, b"gamma"):
    q2.send(m)
e1, e2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
e1.send(b"last words")
e1.shutdown(socket.SHUT_WR)
f1, f2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
f1.send(b"orphan data")
f1.close()
u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # unbound, unconnected
u_name = u.getsockname()
parent_cred = s2.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))

child = os.fork()
if child == 0:
    # The child keeps both ends (inherited: the same open files).
    s2.sendall(b"child->parent:" + big[::-1])
    open("/root/child-ready", "w").write("1")
    while not os.path.exists("/root/go"):
        time.sleep(0.02)
    c = []
    got = recv_exact(s2, 14 + len(big))
    if got != b"parent->child:" + big:
        c.append(f"child stream: {len(got)} bytes, head {got[:20]!r}")
    for want in (b"one", b"three" * 1000, b"x"):
        m = d2.recv(65536)
        if m != want:
            c.append(f"child dgram: got {m[:20]!r} ({len(m)}), want {want[:20]!r} ({len(want)})")
    # Shared open file: O_NONBLOCK set here shows in the parent.
    fl = fcntl.fcntl(s2.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(s2.fileno(), fcntl.F_SETFL, fl | os.O_NONBLOCK)
    open("/root/child-result", "w").write("PASS" if not c else "FAIL: " + "; ".join(c))
    time.sleep(1000)
    os._exit(0)

while not os.path.exists("/root/child-ready"):
    time.sleep(0.02)
open("/root/ready", "w").write("1")
while not os.path.exists("/root/go"):
    time.sleep(0.02)
while not os.path.exists("/root/child-result"):
    time.sleep(0.02)
time.sleep(0.1)
child_result = open("/root/child-result").read()
check("child", child_result, "PASS")
got = recv_exact(s1, 14 + len(big))
check("parent stream", got == b"child->parent:" + big[::-1], True)
check("shared O_NONBLOCK", bool(fcntl.fcntl(s2.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK), True)
check("seqpacket", [q1.recv(65536) for _ in range(3)], [b"alpha", b"beta" * 3000, b"gamma"])
q1.setblocking(False)
try:
    extra = q1.recv(10)
except BlockingIOError:
    extra = None
check("seqpacket drained", extra, None)
check("shutdown data", e2.recv(100), b"last words")
check("shutdown eof", e2.recv(100), b"")
e2.send(b"reply")
check("shutdown other way", e1.recv(100), b"reply")
check("closed peer data", f2.recv(100), b"orphan data")
check("closed peer eof", f2.recv(100), b"")
check("unbound socket name", u.getsockname(), u_name)
check("unbound type", u.type, socket.SOCK_DGRAM)
s1.sendall(b"after restore")
check("stream still connected", recv_exact(s2, 13), b"after restore")
cred = s2.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
check("peer cred readable", len(cred), 12)
open("/root/result", "w").write("PASS\n" if not checks else "FAIL: " + "; ".join(checks) + "\n")
time.sleep(1000)
