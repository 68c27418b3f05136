# A TCP server as a container's PID 1 for tests/inet.rs: one connection from
# a client outside the container, data queued both ways across a
# checkpoint + restore, options checked afterwards, then the conversation
# goes on. Files in /root: ready, sent (bytes queued toward the client), go,
# result (PASS or FAIL: <what>).
import fcntl, os, socket, struct, sys, time

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 7000
FAMILY = socket.AF_INET6 if len(sys.argv) > 2 and sys.argv[2] == "6" else socket.AF_INET
ADDR = "::" if FAMILY == socket.AF_INET6 else "0.0.0.0"
CLIENT_BYTES = 60000


def pattern(tag, n):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += b"%s%08d\n" % (tag, i)
        i += 1
    return bytes(out[:n])


def result(text):
    with open("/root/result.tmp", "w") as f:
        f.write(text)
    os.rename("/root/result.tmp", "/root/result")


def main():
    lsock = socket.socket(FAMILY, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((ADDR, PORT))
    lsock.listen(5)
    with open("/root/listening", "w") as f:
        f.write("1")
    conn, peer = lsock.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 11)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 3))
    # Wait until the client's bytes are all here (unread), then fill the
    # way back until the kernel takes no more.
    while True:
        n = struct.unpack("i", fcntl.ioctl(conn, 0x541B, b"\0\0\0\0"))[0]
        if n >= CLIENT_BYTES:
            break
        time.sleep(0.01)
    conn.setblocking(False)
    data = pattern(b"server", 16 << 20)
    sent = 0
    while sent < len(data):
        try:
            n = conn.send(data[sent:sent + 65536])
        except BlockingIOError:
            break
        sent += n
    with open("/root/sent", "w") as f:
        f.write(str(sent))
    with open("/root/ready", "w") as f:
        f.write("1")
    while not os.path.exists("/root/go"):
        time.sleep(0.02)
    problems = []

    def expect(what, got, want):
        if got != want:
            problems.append("%s: %r, expected %r" % (what, got, want))

    expect("O_NONBLOCK", bool(fcntl.fcntl(conn, fcntl.F_GETFL) & os.O_NONBLOCK), True)
    expect("TCP_NODELAY", conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
    expect("SO_KEEPALIVE", conn.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
    expect("TCP_KEEPIDLE", conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 77)
    expect("TCP_KEEPINTVL", conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 11)
    expect("TCP_KEEPCNT", conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 5)
    expect("SO_LINGER", struct.unpack("ii", conn.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)), (1, 3))
    expect("listener SO_REUSEADDR", lsock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), 1)
    expect("peer", conn.getpeername()[:2], peer[:2])
    conn.setblocking(True)
    conn.settimeout(30)
    got = b""
    try:
        while len(got) < CLIENT_BYTES:
            chunk = conn.recv(CLIENT_BYTES - len(got))
            if not chunk:
                problems.append("connection closed after %d bytes" % len(got))
                break
            got += chunk
        expect("bytes from the client", got == pattern(b"client", CLIENT_BYTES), True)
        # The conversation goes on: a question, an answer.
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(100)
            if not chunk:
                problems.append("no question after the restore")
                break
            line += chunk
        conn.sendall(b"answer to " + line)
    except OSError as e:
        problems.append("socket error %r" % e)
    result("PASS" if not problems else "FAIL: " + "; ".join(problems))
    time.sleep(3600)


main()
