FAN_CLASS_NOTIF, FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_OPEN = 0, 1, 0x10, 0x20


def main():
    fd = sys_ok(libc.fanotify_init(FAN_CLASS_NOTIF, os.O_RDONLY), "fanotify_init")
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int,
                                   ctypes.c_char_p]
    sys_ok(libc.fanotify_mark(fd, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN, -100, b"/"),
           "fanotify_mark")
    open("/root/fanotify-fd", "w").write(str(fd))
    ready_then_wait()
    check("fanotify still works", len(os.read(fd, 4096)) > 0, True)


run(main)
