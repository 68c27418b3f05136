# flock, POSIX (lockf) and OFD locks still held after restore: another
# process's conflicting non-blocking attempt must fail.
def ofd(fd, kind, start, length):
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhxxxxqqixxxx", kind, os.SEEK_SET, start, length, 0))

fl = open("/root/lk_flock", "w+")
fcntl.flock(fl, fcntl.LOCK_EX)
sh = open("/root/lk_shared", "w+")
fcntl.flock(sh, fcntl.LOCK_SH)
px = open("/root/lk_posix", "w+")
px.write("x" * 100)
px.flush()
fcntl.lockf(px, fcntl.LOCK_EX, 5, 10)  # bytes 10..14
od = os.open("/root/lk_ofd", os.O_RDWR | os.O_CREAT)
ofd(od, fcntl.F_WRLCK, 0, 0)
ready()
wait_go()

def attempt(what, fn, want_ok):
    # In another process: locks of ours must stop it.
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        except OSError as e:
            os._exit(2 if e.errno in (errno.EAGAIN, errno.EACCES) else 3)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    check(what, code, 0 if want_ok else 2)

def new_fd(path):
    return os.open(path, os.O_RDWR)

attempt("flock LOCK_EX vs held LOCK_EX", lambda: fcntl.flock(new_fd("/root/lk_flock"), fcntl.LOCK_EX | fcntl.LOCK_NB), False)
attempt("flock LOCK_EX vs held LOCK_SH", lambda: fcntl.flock(new_fd("/root/lk_shared"), fcntl.LOCK_EX | fcntl.LOCK_NB), False)
attempt("flock LOCK_SH vs held LOCK_SH", lambda: fcntl.flock(new_fd("/root/lk_shared"), fcntl.LOCK_SH | fcntl.LOCK_NB), True)
attempt("lockf over the held range", lambda: fcntl.lockf(new_fd("/root/lk_posix"), fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 12), False)
attempt("lockf beside the held range", lambda: fcntl.lockf(new_fd("/root/lk_posix"), fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 0), True)
attempt("OFD lock vs held OFD lock", lambda: ofd(new_fd("/root/lk_ofd"), fcntl.F_WRLCK, 50, 1), False)
attempt("POSIX lock vs held OFD lock", lambda: fcntl.lockf(new_fd("/root/lk_ofd"), fcntl.LOCK_SH | fcntl.LOCK_NB), False)
# Ours to release: unlocking works and frees the file for others.
fcntl.flock(fl, fcntl.LOCK_UN)
attempt("flock after unlock", lambda: fcntl.flock(new_fd("/root/lk_flock"), fcntl.LOCK_EX | fcntl.LOCK_NB), True)
result()
forever()
