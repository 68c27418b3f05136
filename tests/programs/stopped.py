# A stopped child comes back stopped and goes on with SIGCONT.
child = os.fork()
if child == 0:
    os.kill(os.getpid(), signal.SIGSTOP)
    open(f"{DIR}/continued", "w").write("1")
    os._exit(7)
_, st = os.waitpid(child, os.WUNTRACED)
assert os.WIFSTOPPED(st)
time.sleep(0.1)
ready()
wait_go()


def state():
    return open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]


time.sleep(0.3)
check("state after restore", state(), "T")
check("still stopped", os.path.exists(f"{DIR}/continued"), False)
os.kill(child, signal.SIGCONT)
_, st = os.waitpid(child, 0)
check("exit status after SIGCONT", (os.WIFEXITED(st), os.WEXITSTATUS(st)), (True, 7))
check("ran on", os.path.exists(f"{DIR}/continued"), True)
result()
