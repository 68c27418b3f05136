# Half-closed TCP connections (tests/inet.rs), the container's PID 1:
# - A, from a client outside: the client sent "request" and shut its side;
#   the server read it and the EOF (CLOSE_WAIT) and sent "part1";
# - B, from a client outside: the server sent "hello" and shut its side
#   (FIN_WAIT2); the client sends "upload-1";
# - a pair inside the container on 127.0.0.1: c2 sent "local-request" and
#   shut its side (FIN_WAIT2), a2 read it and the EOF (CLOSE_WAIT) and sent
#   "local-part1", which c2 has not read.
# After the restore: the EOFs already read are read again, the open
# directions carry more data, the closes complete without a reset.
# Files in /root: listening, ready, go, result.
import os, socket, struct, time

STATES = {1: "ESTABLISHED", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 7: "CLOSE", 8: "CLOSE_WAIT"}
problems = []


def expect(what, got, want):
    if got != want:
        problems.append("%s: %r, expected %r" % (what, got, want))


def state(s):
    return STATES.get(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)[0], "?")


def wait_state(s, want, secs=10):
    deadline = time.time() + secs
    while state(s) != want and time.time() < deadline:
        time.sleep(0.01)
    return state(s)


def read_all(s):
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return got
        got += chunk


def mark(name):
    open("/root/%s.tmp" % name, "w").write("1")
    os.rename("/root/%s.tmp" % name, "/root/" + name)


lsock = socket.socket()
lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lsock.bind(("0.0.0.0", 7000))
lsock.listen(5)
l2 = socket.socket()
l2.bind(("127.0.0.1", 7001))
l2.listen(1)
c2 = socket.create_connection(("127.0.0.1", 7001))
a2, _ = l2.accept()
c2.sendall(b"local-request")
c2.shutdown(socket.SHUT_WR)
expect("a2 before", read_all(a2), b"local-request")
a2.sendall(b"local-part1")
mark("listening")

conn_a, _ = lsock.accept()
conn_a.settimeout(30)
expect("A before", read_all(conn_a), b"request")
conn_a.sendall(b"part1")
conn_b, _ = lsock.accept()
conn_b.settimeout(30)
conn_b.sendall(b"hello")
conn_b.shutdown(socket.SHUT_WR)
for who, s, want in [("A", conn_a, "CLOSE_WAIT"), ("B", conn_b, "FIN_WAIT2"),
                     ("a2", a2, "CLOSE_WAIT"), ("c2", c2, "FIN_WAIT2")]:
    expect(who + " state before", wait_state(s, want), want)
mark("ready")
while not os.path.exists("/root/go"):
    time.sleep(0.02)

try:
    # The EOFs already delivered stay delivered.
    expect("A EOF again", conn_a.recv(100), b"")
    expect("a2 EOF again", a2.recv(100), b"")
    expect("A state", state(conn_a), "CLOSE_WAIT")
    expect("a2 state", state(a2), "CLOSE_WAIT")
    # This side's FIN was queued again: acknowledged again, FIN_WAIT2.
    expect("B state", wait_state(conn_b, "FIN_WAIT2"), "FIN_WAIT2")
    expect("c2 state", wait_state(c2, "FIN_WAIT2"), "FIN_WAIT2")
    # The open directions go on, the closes complete.
    a2.sendall(b"local-part2")
    a2.close()
    c2.settimeout(30)
    expect("c2 reads", read_all(c2), b"local-part1local-part2")
    conn_a.sendall(b"part2")
    conn_a.close()
    expect("B reads from the client", read_all(conn_b), b"upload-1upload-2")
    try:
        conn_b.send(b"x")
        problems.append("B: a send after shutdown(SHUT_WR) worked")
    except BrokenPipeError:
        pass
except OSError as e:
    problems.append("socket error %r" % e)
open("/root/result.tmp", "w").write("PASS" if not problems else "FAIL: " + "; ".join(problems))
os.rename("/root/result.tmp", "/root/result")
time.sleep(3600)
