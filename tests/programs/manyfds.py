# More open files than half the hard RLIMIT_NOFILE: 12,000 eventfds (each
# its own file, its counter derived from its fd number), some duplicated to
# other numbers, an epoll whose items sit at high numbers, and a child that
# shares every 97th of them. The restorer cannot hold its table of files
# above all of these numbers: it overlaps them (restore/tree.rs,
# table_start and place_fds).
import fcntl, resource, select

N = 12000
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
assert hard >= N + 1000 and hard < 2 * N + 1000, f"RLIMIT_NOFILE hard limit {hard} does not suit this test"
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def count(fd):
    for line in open(f"/proc/self/fdinfo/{fd}"):
        if line.startswith("eventfd-count:"):
            return int(line.split(":")[1], 16)
    return None


fds = []
for i in range(N):
    fd = os.eventfd(0, 0 if i % 2 else os.EFD_CLOEXEC)
    os.eventfd_write(fd, fd * 3 + 1)
    fds.append(fd)
# Duplicates at numbers above and below the others.
dups = {fds[-1] + 500: fds[5], fds[-1] + 501: fds[-1]}
for at, of in dups.items():
    os.dup2(of, at, inheritable=False)
ep = select.epoll()
watched = fds[-20:]
for fd in watched:
    ep.register(fd, select.EPOLLIN)

shared = fds[::97]
child = os.fork()
if child == 0:
    keep = set(shared)
    for fd in fds:
        if fd not in keep:
            os.close(fd)
    for at in dups:
        os.close(at)
    ep.close()
    before = sorted(int(f) for f in os.listdir("/proc/self/fd"))
    wait_go()
    after = sorted(int(f) for f in os.listdir("/proc/self/fd"))
    bad = []
    if [f for f in after if f in keep] != sorted(keep):
        bad.append("child's descriptors")
    if [f for f in after if f not in keep and f > 2] != [f for f in before if f not in keep and f > 2]:
        bad.append(f"child's other descriptors {[f for f in after if f not in keep and f > 2]}")
    for fd in shared:
        if count(fd) != fd * 3 + 1:
            bad.append(f"child's eventfd at {fd}: {count(fd)}")
            break
    open(f"{DIR}/child", "w").write("PASS" if not bad else "FAIL: " + ", ".join(bad))
    while True:
        time.sleep(60)

fds_before = sorted(int(f) for f in os.listdir("/proc/self/fd"))
ready()
wait_go()
fds_after = sorted(int(f) for f in os.listdir("/proc/self/fd"))
mine = set(fds) | set(dups) | {ep.fileno()}
check("descriptors", [f for f in fds_after if f in mine], sorted(mine))
wrong = [fd for fd in fds if count(fd) != fd * 3 + 1]
check("eventfd counters", wrong[:5], [])
for at, of in dups.items():
    check(f"fd {at} is a duplicate of fd {of}", count(at), of * 3 + 1)
    check(f"fd {at} close-on-exec", fcntl.fcntl(at, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fcntl.FD_CLOEXEC)
check("inheritable eventfd", fcntl.fcntl(fds[7], fcntl.F_GETFD) & fcntl.FD_CLOEXEC, 0)
check("epoll items", sorted(fd for fd, _ in ep.poll(0, 100)), sorted(watched))
while not os.path.exists(f"{DIR}/child"):
    time.sleep(0.02)
check("child", open(f"{DIR}/child").read(), "PASS")
result()
