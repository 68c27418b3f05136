# Sockets inside one container for tests/inet.rs, checked after a
# checkpoint + restore by the program itself: a TCP connection between two
# processes over IPv4 and one over IPv6 loopback (::1), each with bytes
# queued both ways; a listener with options and an accept backlog size; a
# bound UDP socket and a connected one. Files in /root: ready, go, result
# (PASS or FAIL: <what>), written by the parent once the child reported.
import fcntl, os, socket, struct, sys, time

N = 40000


def pattern(tag, n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += b"%s%08d\n" % (tag, i)
        i += 1
    return bytes(out[:n])


def inq(s):
    return struct.unpack("i", fcntl.ioctl(s, 0x541B, b"\0\0\0\0"))[0]


def wait_queued(s, n):
    while inq(s) < n:
        time.sleep(0.01)


def recv_exact(s, n):
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            raise OSError("closed after %d of %d bytes" % (len(got), n))
        got += chunk
    return got


def wait_go():
    while not os.path.exists("/root/go"):
        time.sleep(0.02)


problems = []


def expect(what, got, want):
    if got != want:
        problems.append("%s: %r, expected %r" % (what, got, want))


def converse(conn, me, peer, label):
    """Reads the peer's queued bytes, then one more exchange each way."""
    try:
        conn.settimeout(30)
        expect(label + " queued bytes", recv_exact(conn, N) == pattern(peer, N), True)
        conn.sendall(b"after-" + me)
        expect(label + " after restore", recv_exact(conn, 6 + len(peer)), b"after-" + peer)
    except OSError as e:
        problems.append("%s: %r" % (label, e))


# Listeners the child accepts from (v4 and v6), the one kept for checks.
l4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
l4.bind(("127.0.0.1", 7101))
l4.listen(1)
l6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
l6.bind(("::1", 7102))
l6.listen(1)

child = os.fork()
if child == 0:
    c4, _ = l4.accept()
    c6, _ = l6.accept()
    l4.close()
    l6.close()
    for c in (c4, c6):
        c.sendall(pattern(b"child", N))
    wait_queued(c4, N)
    wait_queued(c6, N)
    with open("/root/child_ready", "w") as f:
        f.write("1")
    wait_go()
    converse(c4, b"child", b"parent", "child v4")
    converse(c6, b"child", b"parent", "child v6")
    with open("/root/child_result", "w") as f:
        f.write("PASS" if not problems else "FAIL: " + "; ".join(problems))
    time.sleep(3600)
    sys.exit(0)

p4 = socket.create_connection(("127.0.0.1", 7101))
p6 = socket.create_connection(("::1", 7102))
for c in (p4, p6):
    c.sendall(pattern(b"parent", N))
l4.close()
l6.close()
wait_queued(p4, N)
wait_queued(p6, N)

# A listener with options; nothing waits in its queue.
lsn = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
lsn.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
lsn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 50000)
lsn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 70000)
lsn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
lsn.bind(("::", 7103))
lsn.listen(7)
lsn.setblocking(False)
want_rcvbuf = lsn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
want_sndbuf = lsn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)

# UDP: a bound socket and one connected to it.
ub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ub.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
ub.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ub.bind(("0.0.0.0", 7104))
uc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
uc.connect(("127.0.0.1", 7104))
uc_name = uc.getsockname()
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u6.bind(("::1", 7105))

while not os.path.exists("/root/child_ready"):
    time.sleep(0.02)
with open("/root/ready", "w") as f:
    f.write("1")
wait_go()

converse(p4, b"parent", b"child", "parent v4")
converse(p6, b"parent", b"child", "parent v6")

expect("listener address", lsn.getsockname()[:2], ("::", 7103))
expect("listener SO_REUSEADDR", lsn.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 1)
expect("listener SO_REUSEPORT", lsn.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT), 1)
expect("listener IPV6_V6ONLY", lsn.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY), 0)
expect("listener SO_KEEPALIVE", lsn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
expect("listener SO_RCVBUF", lsn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), want_rcvbuf)
expect("listener SO_SNDBUF", lsn.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF), want_sndbuf)
expect("listener O_NONBLOCK", bool(fcntl.fcntl(lsn, fcntl.F_GETFL) & os.O_NONBLOCK), True)
info = lsn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
expect("listener state", info[0], 10)
expect("listener backlog", struct.unpack("I", info[28:32])[0], 7)
try:
    # Dual-stack: an IPv4 client reaches the IPv6 listener.
    c = socket.create_connection(("127.0.0.1", 7103), timeout=10)
    lsn.setblocking(True)
    lsn.settimeout(10)
    a, _ = lsn.accept()
    c.sendall(b"new")
    expect("new connection", recv_exact(a, 3), b"new")
except OSError as e:
    problems.append("new connection to the listener: %r" % e)

expect("udp bound address", ub.getsockname(), ("0.0.0.0", 7104))
expect("udp SO_BROADCAST", ub.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST), 1)
expect("udp SO_REUSEADDR", ub.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 1)
expect("udp connected peer", uc.getpeername(), ("127.0.0.1", 7104))
expect("udp connected address", uc.getsockname(), uc_name)
expect("udp6 address", u6.getsockname()[:2], ("::1", 7105))
try:
    ub.settimeout(10)
    uc.send(b"datagram")
    data, src = ub.recvfrom(100)
    expect("udp datagram", (data, src), (b"datagram", uc_name))
    ub.sendto(b"reply", src)
    uc.settimeout(10)
    expect("udp reply", uc.recv(100), b"reply")
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.sendto(b"six", ("::1", 7105))
    u6.settimeout(10)
    expect("udp6 datagram", u6.recv(100), b"six")
except OSError as e:
    problems.append("udp: %r" % e)

deadline = time.time() + 30
while not os.path.exists("/root/child_result") and time.time() < deadline:
    time.sleep(0.05)
try:
    child_result = open("/root/child_result").read()
except OSError:
    child_result = "FAIL: no result"
if child_result != "PASS":
    problems.append("child: " + child_result)
with open("/root/result.tmp", "w") as f:
    f.write("PASS" if not problems else "FAIL: " + "; ".join(problems))
os.rename("/root/result.tmp", "/root/result")
time.sleep(3600)
