# Netlink sockets (tests/netlink.rs; after the shared head zdtm_lib.py):
# a NETLINK_ROUTE socket autobound with RTMGRP_LINK and two more groups
# (one above 32) and a notification left queued; a NETLINK_KOBJECT_UEVENT
# datagram socket bound to port 4242 and group 1; a NETLINK_GENERIC socket
# bound to port 4343 with flags and a buffer size; an unbound non-blocking
# NETLINK_ROUTE socket; one connected to the RTMGRP_LINK group. After the
# restore each must have its family, protocol, type, port id, groups,
# destination, flags and buffers; the queued notification is gone (the
# documented rule), new notifications arrive, a generic netlink request and
# a route dump are answered.
import fcntl, socket

SOL_NETLINK = 270
ADD_MEMBERSHIP, LIST_MEMBERSHIPS = 1, 9
FLAGS = {"pktinfo": 3, "broadcast_error": 4, "no_enobufs": 5, "listen_all_nsid": 8,
         "cap_ack": 10, "ext_ack": 11, "get_strict_chk": 12}
NETLINK_ROUTE, NETLINK_KOBJECT_UEVENT, NETLINK_GENERIC = 0, 15, 16
RTMGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_BRVLAN = 1, 5, 33
RTM_NEWLINK, RTM_GETLINK, NLMSG_DONE, NLMSG_ERROR = 16, 18, 3, 2
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
SIOCSIFMTU = 0x8922


def nl(proto, kind=socket.SOCK_RAW):
    return socket.socket(socket.AF_NETLINK, kind, proto)


def state(s):
    st = {
        "name": s.getsockname(),
        "peer": s.getpeername(),
        "type": s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE),
        "protocol": s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL),
        "domain": s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN),
        "groups": s.getsockopt(SOL_NETLINK, LIST_MEMBERSHIPS, 64).rstrip(b"\0"),
        "rcvbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        "sndbuf": s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "fl": fcntl.fcntl(s.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK,
    }
    for name, opt in FLAGS.items():
        st[name] = s.getsockopt(SOL_NETLINK, opt)
    return st


def set_lo_mtu(mtu):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFMTU, struct.pack("16si", b"lo", mtu))


def messages(data):
    while len(data) >= 16:
        length, kind, flags, seq, pid = struct.unpack("=IHHII", data[:16])
        yield kind, data[16:length]
        data = data[(length + 3) & ~3:]


route = nl(NETLINK_ROUTE)
route.bind((0, RTMGRP_LINK))
route.setsockopt(SOL_NETLINK, ADD_MEMBERSHIP, RTNLGRP_IPV4_IFADDR)
route.setsockopt(SOL_NETLINK, ADD_MEMBERSHIP, RTNLGRP_BRVLAN)
uevent = nl(NETLINK_KOBJECT_UEVENT, socket.SOCK_DGRAM)
uevent.bind((4242, 1))
genl = nl(NETLINK_GENERIC)
genl.bind((4343, 0))
for name in ["ext_ack", "cap_ack", "no_enobufs"]:
    genl.setsockopt(SOL_NETLINK, FLAGS[name], 1)
genl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
idle = nl(NETLINK_ROUTE)
idle.setblocking(False)
dest = nl(NETLINK_ROUTE)
dest.connect((0, RTMGRP_LINK))
socks = {"route": route, "uevent": uevent, "genl": genl, "idle": idle, "dest": dest}

# A notification left in route's queue at checkpoint.
set_lo_mtu(60000)
time.sleep(0.1)
before = {k: state(s) for k, s in socks.items()}
check("route is autobound to PID 1's port id", before["route"]["name"], (os.getpid(), 0x11))
check("route's groups", before["route"]["groups"],
      struct.pack("=II", 1 | 1 << 4, 1 << 0).rstrip(b"\0"))
ready()
wait_go()

after = {k: state(s) for k, s in socks.items()}
for k in socks:
    for field, value in before[k].items():
        check(f"{k} {field}", after[k][field], value)
# The queued notification was dropped with the socket's queue.
try:
    route.recv(65536, socket.MSG_DONTWAIT)
    checks.append("route: the notification queued at checkpoint is still there")
except BlockingIOError:
    pass
# New notifications arrive.
set_lo_mtu(61000)
route.settimeout(5)
kinds = [k for k, _ in messages(route.recv(65536))]
check("route gets RTM_NEWLINK after the restore", RTM_NEWLINK in kinds, True)
# A generic netlink request: CTRL_CMD_GETFAMILY "nlctrl" (family 0x10).
name = b"nlctrl\0"
attr = struct.pack("=HH", 4 + len(name), 2) + name + b"\0" * ((4 - len(name) % 4) % 4)
body = struct.pack("=BBH", 3, 1, 0) + attr
genl.send(struct.pack("=IHHII", 16 + len(body), 0x10, NLM_F_REQUEST, 7, 0) + body)
genl.settimeout(5)
answer = list(messages(genl.recv(65536)))
check("genl answers CTRL_CMD_GETFAMILY", [k for k, _ in answer], [0x10])
# A route dump on the unbound socket.
idle.setblocking(True)
idle.settimeout(5)
idle.send(struct.pack("=IHHII", 32, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 9, 0) + b"\0" * 16)
names, done = [], False
while not done:
    for kind, payload in messages(idle.recv(65536)):
        if kind == NLMSG_DONE:
            done = True
        elif kind == RTM_NEWLINK and b"lo\0" in payload:
            names.append("lo")
check("the dump names lo", "lo" in names, True)
result()
