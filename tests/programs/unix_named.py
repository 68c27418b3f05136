# Named unix sockets, checked after a real checkpoint and restore:
# listeners bound by path and by abstract name (clients connect after the
# restore), a connected pair made by connect/accept on a named listener
# (names and data both ways), two connections waiting in a listener's
# backlog (accepted after the restore, in order), datagram sockets bound by path with messages
# queued from unbound senders and a one-way connected sender, a socket
# whose file was removed after bind. Writes /root/ready, waits for
# /root/go, writes PASS or FAIL: <what> to /root/result.
import os, socket, threading, time

checks = []

def check(name, got, want):
    if got != want:
        checks.append(f"{name}: got {got!r}, want {want!r}")

def serve(listener, count):
    for _ in range(count):
        conn, _ = listener.accept()
        conn.sendall(b"pong:" + conn.recv(100))
        conn.close()

srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind("/root/srv.sock")
os.chmod("/root/srv.sock", 0o600)
srv.listen(7)
abs_srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
abs_srv.bind("\0cr-test-abstract")
abs_srv.listen(3)

pair_l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
pair_l.bind("/root/pair.sock")
pair_l.listen(1)
cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
cli.connect("/root/pair.sock")
acc, _ = pair_l.accept()
cli.sendall(b"client to server")
acc.sendall(b"server to client")
abs_cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
abs_cli.bind("\0cr-test-client")
abs_l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
abs_l.bind("\0cr-test-pair")
abs_l.listen(1)
abs_cli.connect("\0cr-test-pair")
abs_acc, _ = abs_l.accept()
abs_cli.sendall(b"abstract both named")

dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dg.bind("/root/dg.sock")
sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sender.sendto(b"first datagram", "/root/dg.sock")
sender.sendto(b"second" * 500, "/root/dg.sock")
oneway = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
oneway.connect("/root/dg.sock")
oneway.send(b"third, connected")

backlog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
backlog.bind("\0cr-test-backlog")
backlog.listen(5)
waiting = []
for i in (1, 2):
    w = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    w.bind(f"\0cr-test-waiting-{i}")
    w.connect("\0cr-test-backlog")
    waiting.append(w)

gone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
gone.bind("/root/gone.sock")
gone.listen(1)
os.unlink("/root/gone.sock")

open("/root/ready", "w").write("1")
while not os.path.exists("/root/go"):
    time.sleep(0.02)

check("srv name", srv.getsockname(), "/root/srv.sock")
check("srv file mode", oct(os.stat("/root/srv.sock").st_mode & 0o777), "0o600")
check("abstract name", abs_srv.getsockname(), b"\0cr-test-abstract")
t = threading.Thread(target=serve, args=(abs_srv, 1))
t.start()
c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
c.connect("\0cr-test-abstract")
c.send(b"seq")
check("abstract listener answers", c.recv(100), b"pong:seq")
t.join()
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect("/root/srv.sock")
c.sendall(b"in-program")
conn, _ = srv.accept()
conn.sendall(b"pong:" + conn.recv(100))
check("path listener answers", c.recv(100), b"pong:in-program")
conn.close()

check("accepted name", acc.getsockname(), "/root/pair.sock")
check("client peer name", cli.getpeername(), "/root/pair.sock")
check("server got", acc.recv(100), b"client to server")
check("client got", cli.recv(100), b"server to client")
cli.sendall(b"more")
check("pair still connected", acc.recv(100), b"more")
check("abstract client name", abs_cli.getsockname(), b"\0cr-test-client")
check("abstract accepted peer", abs_acc.getpeername(), b"\0cr-test-client")
check("abstract pair data", abs_acc.recv(100), b"abstract both named")

check("dgram 1", dg.recv(65536), b"first datagram")
check("dgram 2", dg.recv(65536), b"second" * 500)
check("dgram 3", dg.recv(65536), b"third, connected")
oneway.send(b"after restore")
check("one-way link", dg.recv(100), b"after restore")
check("dgram name", dg.getsockname(), "/root/dg.sock")

for i, w in enumerate(waiting, 1):
    conn, peer = backlog.accept()
    check(f"backlog order {i}", peer, f"\0cr-test-waiting-{i}".encode())
    w.sendall(b"waited %d" % i)
    check(f"backlog data {i}", conn.recv(100), b"waited %d" % i)
    conn.sendall(b"accepted")
    check(f"backlog reply {i}", w.recv(100), b"accepted")

check("unlinked file stays gone", os.path.exists("/root/gone.sock"), False)
check("unlinked name", gone.getsockname(), "/root/gone.sock")

open("/root/result", "w").write("PASS\n" if not checks else "FAIL: " + "; ".join(checks) + "\n")
srv_thread = threading.Thread(target=serve, args=(srv, 1000), daemon=True)
srv_thread.start()
time.sleep(1000)
