# Scheduling policies and nice values, per thread.
wready, done = threading.Event(), threading.Event()
info = {}


def worker():
    info["tid"] = threading.get_native_id()
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    os.setpriority(os.PRIO_PROCESS, info["tid"], 12)
    wready.set()
    wait_go()


t = threading.Thread(target=worker)
t.start()
wready.wait()
os.setpriority(os.PRIO_PROCESS, 0, 5)
os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
ready()
wait_go()
check("main policy", os.sched_getscheduler(0), os.SCHED_BATCH)
check("main nice", os.getpriority(os.PRIO_PROCESS, 0), 5)
check("worker policy", os.sched_getscheduler(info["tid"]), os.SCHED_IDLE)
check("worker nice", os.getpriority(os.PRIO_PROCESS, info["tid"]), 12)
t.join()
result()
