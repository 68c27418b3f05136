# Time namespaces (tests/mounts.rs; after the shared head zdtm_lib.py).
# PID 1 unshares a time namespace T; the test writes its offsets
# (monotonic +1 day, boottime +2 days) from the host, as the container has
# no CAP_SYS_TIME; PID 1 forks C in it. M, also in T, unshares T2 (other offsets), forks G in
# T2 and exits, so G is an orphan whose namespace nobody left alive made.
# Over pipes (restored with the processes) PID 1 asks C and G for their
# clocks, offsets and namespaces, before the checkpoint and after the
# restore, and checks: the offsets text byte for byte, each namespace the
# same as its siblings' and parent's, each clock equal to the host's plus
# the offset (read between two readings of PID 1's), the clocks inside
# never going back, children forked after the restore born in the right
# namespace.
import json

CLONE_NEWTIME = 0x80
T_OFFSETS = [("monotonic", 86400, 123), ("boottime", 172800, 456)]
T2_OFFSETS = [("monotonic", 1000, 0), ("boottime", 3000, 999999999)]
MONO, BOOT = time.CLOCK_MONOTONIC, time.CLOCK_BOOTTIME


def ns(kind, pid="self"):
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def new_time_ns(tag):
    """unshare(CLONE_NEWTIME), then waits for the test to write the offsets
    (it finds this process by the pid in DIR/tag)."""
    if libc.unshare(CLONE_NEWTIME) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWTIME)")
    open(f"{DIR}/{tag}.tmp", "w").write(str(os.getpid()))
    os.rename(f"{DIR}/{tag}.tmp", f"{DIR}/{tag}")
    while not os.path.exists(f"{DIR}/{tag}.done"):
        time.sleep(0.02)
    return open("/proc/self/timens_offsets").read()


def serve(req, resp):
    """A process in a time namespace: answers each request with its state."""
    while True:
        what = os.read(req, 16)
        if not what:
            os._exit(0)
        state = {
            "pid": os.getpid(),
            "offsets": open("/proc/self/timens_offsets").read(),
            "time": ns("time"),
            "for_children": ns("time_for_children"),
            "mono": time.clock_gettime_ns(MONO),
            "boot": time.clock_gettime_ns(BOOT),
        }
        if what == b"fork":
            r, w = os.pipe()
            kid = os.fork()
            if kid == 0:
                os.write(w, ns("time").encode())
                os._exit(0)
            os.close(w)
            state["child_time"] = os.read(r, 100).decode()
            os.close(r)
            os.waitpid(kid, 0)
        os.write(resp, (json.dumps(state) + "\n").encode())


def spawn(body):
    """A child running body(req, resp); PID 1 keeps the other ends."""
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(req_w)
        os.close(resp_r)
        body(req_r, resp_w)
        os._exit(0)
    os.close(req_r)
    os.close(resp_w)
    return pid, req_w, os.fdopen(resp_r, "r")


def ask(child, what=b"state"):
    _, req, resp = child
    before = (time.clock_gettime_ns(MONO), time.clock_gettime_ns(BOOT))
    os.write(req, what)
    state = json.loads(resp.readline())
    after = (time.clock_gettime_ns(MONO), time.clock_gettime_ns(BOOT))
    return before, state, after


def offset_ns(offsets, clock):
    for name, secs, nanos in offsets:
        if name == clock:
            return secs * 1_000_000_000 + nanos
    raise KeyError(clock)


def check_clocks(who, offsets, before, state, after):
    for i, clock in enumerate(["monotonic", "boottime"]):
        host = state["mono" if i == 0 else "boot"] - offset_ns(offsets, clock)
        if not before[i] <= host <= after[i]:
            checks.append(f"{who} {clock}: {host} (inside minus offset) not within "
                          f"[{before[i]}, {after[i]}] of PID 1")


HOST = ns("time")
t_text = new_time_ns("T")
T = ns("time_for_children")
c = spawn(serve)


def middle(req, resp):
    """M: in T, makes T2 for its child G and exits; G keeps serving."""
    new_time_ns("T2")
    g = os.fork()
    if g == 0:
        serve(req, resp)
    os._exit(0)


g = spawn(middle)
os.waitpid(g[0], 0)  # M is gone: G is PID 1's child now
_, first_c, _ = ask(c)
_, first_g, _ = ask(g)
g_pid = first_g["pid"]
g = (g_pid, g[1], g[2])
t2_text = first_g["offsets"]
def parsed(text):
    return [(f[0], int(f[1]), int(f[2])) for f in (l.split() for l in text.splitlines())]


check("T offsets as written", parsed(t_text), T_OFFSETS)
check("T2 offsets as written", parsed(t2_text), T2_OFFSETS)
# What the checks after the go expect (the test's variant changes it).
EXPECT_T = T_OFFSETS
ready()
wait_go()

# After the restore (or straight away in the variant without one).
check("PID 1 time ns is the container's", ns("time"), HOST)
T_now = ns("time_for_children")
check("PID 1 children's time ns is its own", T_now != ns("time"), True)
for who, child, offsets, text, first in [("C", c, EXPECT_T, t_text, first_c),
                                         ("G", g, T2_OFFSETS, t2_text, first_g)]:
    before, state, after = ask(child, b"fork")
    check(f"{who} offsets", state["offsets"], text)
    check(f"{who} offsets as expected", parsed(state["offsets"]), offsets)
    check(f"{who} time ns is its children's", state["for_children"], state["time"])
    check(f"{who} child's time ns", state["child_time"], state["time"])
    check(f"{who} not in the container's time ns", state["time"] != ns("time"), True)
    check(f"{who} monotonic went on", state["mono"] >= first["mono"], True)
    check(f"{who} boottime went on", state["boot"] >= first["boot"], True)
    check_clocks(who, offsets, before, state, after)
    if who == "C":
        check("C in PID 1's children's time ns", state["time"], T_now)
        c_time = state["time"]
    else:
        check("G in a time ns of its own", state["time"] != c_time, True)
        check("G in a namespace other than PID 1's children's", state["time"] != T_now, True)
# A child PID 1 forks now is born in T.
r, w = os.pipe()
kid = os.fork()
if kid == 0:
    os.write(w, (ns("time") + " " + open("/proc/self/timens_offsets").read()).encode())
    os._exit(0)
os.close(w)
got = os.read(r, 300).decode()
os.waitpid(kid, 0)
check("a child forked after the restore", got, T_now + " " + t_text)
result()
