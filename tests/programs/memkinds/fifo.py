# A FIFO with data in it between two processes: the reader gets what was
# buffered at checkpoint, then what the writer sends after restore.
os.mkfifo("/root/fifo")
child = os.fork()
if child == 0:
    r = os.open("/root/fifo", os.O_RDONLY)
    open("/root/child_ready", "w").write("1")
    wait_go()
    check("child: buffered data", os.read(r, 64), b"fifo data 1")
    check("child: data sent after restore", os.read(r, 64), b"after")
    check("child: read end", os.readlink(f"/proc/self/fd/{r}"), "/root/fifo")
    result("/root/child_result")
    forever()
w = os.open("/root/fifo", os.O_WRONLY)
os.write(w, b"fifo data 1")
wait_for(lambda: os.path.exists("/root/child_ready"))
ready()
wait_go()
check("write end", os.readlink(f"/proc/self/fd/{w}"), "/root/fifo")
check("write end flags", fcntl.fcntl(w, fcntl.F_GETFL) & (os.O_ACCMODE | os.O_NONBLOCK), os.O_WRONLY)
time.sleep(0.3)  # the child reads the buffered bytes on their own first
os.write(w, b"after")
if not wait_for(lambda: os.path.exists("/root/child_result") and open("/root/child_result").read() != ""):
    checks.append("the child wrote no result")
else:
    check("child", open("/root/child_result").read(), "PASS")
result()
forever()
