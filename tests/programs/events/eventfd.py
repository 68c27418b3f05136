def main():
    # A semaphore-mode, non-blocking eventfd with a counter of 5.
    sem = os.eventfd(5, os.EFD_SEMAPHORE | os.EFD_NONBLOCK)
    # A blocking counter above 32 bits (eventfd(2) takes only 32).
    big = os.eventfd(0, os.EFD_CLOEXEC)
    os.eventfd_write(big, (1 << 40) + 7)
    # A dup shares the counter.
    sem_dup = os.dup(sem)
    # An empty one.
    empty = os.eventfd(0, os.EFD_NONBLOCK)
    before = {fd: fdinfo_lines(fd, "eventfd-semaphore") for fd in (sem, big, empty)}
    ready_then_wait()

    for fd in (sem, big, empty):
        check(f"fd {fd} semaphore line", fdinfo_lines(fd, "eventfd-semaphore"), before[fd])
    check("sem nonblocking", nonblocking(sem), True)
    check("big blocking", nonblocking(big), False)
    check("big cloexec", cloexec(big), True)
    check("sem not cloexec", cloexec(sem), False)
    # Semaphore mode: five reads of 1, then EAGAIN.
    got = [os.eventfd_read(sem) for _ in range(5)]
    check("semaphore reads", got, [1] * 5)
    try:
        os.eventfd_read(sem)
        checks.append("sem: a sixth read succeeded")
    except BlockingIOError:
        pass
    # The dup is the same eventfd.
    os.eventfd_write(sem_dup, 2)
    check("dup shares the counter", os.eventfd_read(sem), 1)
    check("big counter", os.eventfd_read(big), (1 << 40) + 7)
    try:
        os.eventfd_read(empty)
        checks.append("empty: a read succeeded")
    except BlockingIOError:
        pass


run(main)
