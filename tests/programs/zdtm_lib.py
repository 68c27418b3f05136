# Shared head of the procstate programs (prepended by tests/procstate.rs):
# check() collects failures; finish() waits for the go marker's result.
import ctypes, os, signal, struct, sys, threading, time

DIR = "/crtest"
os.makedirs(DIR, exist_ok=True)
os.chmod(DIR, 0o777)
libc = ctypes.CDLL(None, use_errno=True)
checks = []


def check(name, got, want):
    if got != want:
        checks.append(f"{name}: got {got!r}, want {want!r}")


def ready():
    open(f"{DIR}/ready", "w").write("1")


def wait_go():
    while not os.path.exists(f"{DIR}/go"):
        time.sleep(0.02)


def result():
    """Writes the verdict; PID 1 stays so that the container keeps running."""
    open(f"{DIR}/result", "w").write("PASS" if not checks else "FAIL: " + "; ".join(checks))
    while True:
        time.sleep(60)


def status_of(path, key):
    for line in open(path):
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return None
