import selectors


def main():
    sel = selectors.EpollSelector()
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    ev = os.eventfd(0, os.EFD_NONBLOCK)
    sel.register(r1, selectors.EVENT_READ, "wake pipe")
    sel.register(r2, selectors.EVENT_READ, "work pipe")
    sel.register(ev, selectors.EVENT_READ, "eventfd")
    sel.register(w2, selectors.EVENT_WRITE, "writer")
    check("writer ready", [(k.data, m) for k, m in sel.select(0)],
          [("writer", selectors.EVENT_WRITE)])
    sel.unregister(w2)
    open("/root/fds", "w").write(f"{w1}")
    open("/root/ready", "w").write("1")
    seen = []
    # Idle in epoll_wait (no timeout) across checkpoint and restore; the test
    # writes "ping" into the wake pipe through /proc/1/fd afterwards.
    while len(seen) < 3:
        for key, mask in sel.select():
            if key.data == "wake pipe":
                msg = os.read(r1, 100)
                seen.append(("wake pipe", msg))
                os.eventfd_write(ev, 3)
                os.write(w2, b"work")
            elif key.data == "work pipe":
                seen.append(("work pipe", os.read(r2, 100)))
            elif key.data == "eventfd":
                seen.append(("eventfd", os.eventfd_read(ev)))
    check("events", sorted(seen),
          sorted([("wake pipe", b"ping\n"), ("work pipe", b"work"), ("eventfd", 3)]))
    check("nothing left", sel.select(0), [])


run(main)
