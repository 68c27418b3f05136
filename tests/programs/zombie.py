# Zombie children, one exited with a code, one killed by a signal, reaped
# only after the restore.
a = os.fork()
if a == 0:
    os._exit(42)
b = os.fork()
if b == 0:
    while True:
        signal.pause()
os.kill(b, signal.SIGTERM)
for z in (a, b):
    os.waitid(os.P_PID, z, os.WEXITED | os.WNOWAIT)


def state(pid):
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


check("zombies before", (state(a), state(b)), ("Z", "Z"))
ready()
wait_go()
check("zombies after restore", (state(a), state(b)), ("Z", "Z"))
pid, st = os.waitpid(a, 0)
check("exit code", (pid, os.WIFEXITED(st), os.WEXITSTATUS(st)), (a, True, 42))
pid, st = os.waitpid(b, 0)
check("killed by", (pid, os.WIFSIGNALED(st), os.WTERMSIG(st)), (b, True, signal.SIGTERM))
try:
    os.waitpid(-1, os.WNOHANG)
    check("no other child", "one more", "none")
except ChildProcessError:
    pass
result()
