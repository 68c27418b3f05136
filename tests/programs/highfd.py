# Descriptors numbered 1000 and 4000, above the soft RLIMIT_NOFILE.
import fcntl, resource

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
assert hard > 4000, f"RLIMIT_NOFILE hard limit {hard} is too low for this test"
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
with open(f"{DIR}/data", "wb") as f:
    f.write(b"0123456789")
fd = os.open(f"{DIR}/data", os.O_RDONLY)
os.dup2(fd, 1000)
os.close(fd)
os.lseek(1000, 3, os.SEEK_SET)
r, w = os.pipe()
os.dup2(w, 4000, inheritable=False)
os.close(w)
os.write(4000, b"high")
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
fds_before = sorted(int(f) for f in os.listdir("/proc/self/fd"))
ready()
wait_go()
fds_after = sorted(int(f) for f in os.listdir("/proc/self/fd"))
# listdir's own descriptor differs from run to run: compare the fixed ones.
check("fds", [f for f in fds_after if f in (1000, 4000, r)], [r, 1000, 4000])
check("no restorer fds", [f for f in fds_after if 900 <= f and f not in (1000, 4000)], [])
check("offset of fd 1000", os.read(1000, 4), b"3456")
os.write(4000, b"!")
check("pipe at fd 4000", os.read(r, 5), b"high!")
check("fd 1000 inheritable", fcntl.fcntl(1000, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, 0)
check("fd 4000 close-on-exec", fcntl.fcntl(4000, fcntl.F_GETFD) & fcntl.FD_CLOEXEC, fcntl.FD_CLOEXEC)
check("nofile limit", resource.getrlimit(resource.RLIMIT_NOFILE), (1024, hard))
result()
