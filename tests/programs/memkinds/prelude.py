# Shared helpers of the memkinds programs (tests/memkinds.rs): each program
# sets its state up, writes /root/ready, waits for /root/go (written after a
# real checkpoint and restore), checks, and writes PASS or FAIL: <what> to
# /root/result. PID 1 never exits (that would end the container).
import errno, fcntl, mmap, os, struct, sys, time

checks = []

def check(name, got, want):
    if got != want:
        checks.append(f"{name}: got {got!r}, want {want!r}")

def wait_for(pred, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False

def ready():
    open("/root/ready", "w").write("1")

def wait_go():
    while not os.path.exists("/root/go"):
        time.sleep(0.02)

def result(path="/root/result"):
    open(path, "w").write("PASS" if not checks else "FAIL: " + "; ".join(checks))

def forever():
    while True:
        time.sleep(1)

def maps_lines(needle):
    return [l for l in open("/proc/self/maps").read().splitlines() if needle in l]
