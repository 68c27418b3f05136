# Non-root credentials: ids, groups, capabilities, securebits, per thread.
PR_CAPBSET_DROP, PR_SET_KEEPCAPS, PR_GET_SECUREBITS, PR_SET_SECUREBITS = 24, 8, 27, 28
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
SYS_setresuid, SYS_setresgid = 117, 119


def bits(*caps):
    v = 0
    for c in caps:
        v |= 1 << c
    return v


def capset(eff, prm, inh):
    hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)(eff & 0xFFFFFFFF, prm & 0xFFFFFFFF, inh & 0xFFFFFFFF,
                                  eff >> 32, prm >> 32, inh >> 32)
    assert libc.capset(hdr, data) == 0, ctypes.get_errno()


def snapshot():
    out = {}
    for tid in sorted(os.listdir("/proc/self/task")):
        st = open(f"/proc/self/task/{tid}/status").read().splitlines()
        out[tid] = [l for l in st if l.split(":")[0] in
                    ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")]
    return out


secure = {}
step1, step2, go_worker, checked = (threading.Event() for _ in range(4))


def worker():
    libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0)
    step1.set()
    go_worker.wait()
    capset(bits(6, 7), bits(6, 7), 0)
    assert libc.syscall(SYS_setresgid, 1000, 2000, 1000) == 0
    assert libc.syscall(SYS_setresuid, 1000, 2000, 1000) == 0
    secure["worker"] = libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)
    step2.set()
    wait_go()
    secure["worker after"] = libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)
    checked.wait()


t = threading.Thread(target=worker)
t.start()
step1.wait()
assert libc.prctl(PR_CAPBSET_DROP, 21, 0, 0, 0) == 0  # CAP_SYS_ADMIN
assert libc.prctl(PR_SET_SECUREBITS, 1 << 4, 0, 0, 0) == 0  # SECBIT_KEEP_CAPS
os.setgroups([1000, 3000, 3001])
os.setresgid(1000, 1000, 1000)
os.setresuid(1000, 1000, 1000)
capset(bits(5, 6, 7, 10), bits(5, 6, 7, 10), bits(10))
assert libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, 10, 0, 0) == 0
go_worker.set()
step2.wait()
before = snapshot()
main_secure = libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)
ready()
wait_go()
after = snapshot()
while "worker after" not in secure:
    time.sleep(0.01)
checked.set()
t.join()
check("credentials of every thread", after, before)
check("securebits", libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0), main_secure)
check("securebits value", main_secure, 1 << 4)
check("worker securebits", secure.get("worker after"), secure.get("worker"))
main = before[str(os.getpid())]
check("uid", main[0].split()[1:], ["1000"] * 4)
check("groups", main[2].split()[1:], ["1000", "3000", "3001"])
check("effective caps", os.getresuid(), (1000, 1000, 1000))
check("capeff", int(main[5].split()[1], 16), bits(5, 6, 7, 10))
check("capamb", int(main[7].split()[1], 16), bits(10))
check("no CAP_SYS_ADMIN in bounding", int(main[6].split()[1], 16) & bits(21), 0)
w = [v for k, v in before.items() if k != str(os.getpid())][0]
check("worker uid", w[0].split()[1:], ["1000", "2000", "1000", "2000"])
check("worker gid", w[1].split()[1:], ["1000", "2000", "1000", "2000"])
result()
