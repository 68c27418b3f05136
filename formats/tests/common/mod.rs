//! Shared by the integration tests: a small but complete image (every record
//! kind, every nested variant, pages with data and zero runs) and helpers
//! that tamper with stream bytes the way a bad disk or a hostile peer would.

#![allow(dead_code)]

use cr_formats::frame::checksum;
use cr_formats::*;

pub const IMAGE_ID: u64 = 0x5eed_cafe_f00d_0001;

pub fn manifest() -> Manifest {
    Manifest {
        image_id: IMAGE_ID,
        cr_version: "0.1.0".into(),
        container: "web1".into(),
        config_toml: "name = \"web1\"\nmemory = \"512M\"\n".into(),
        created_unix_ns: 1_760_000_000_123_456_789,
        arch: Arch::X86_64,
        page_size: PAGE_SIZE as u32,
        kernel_release: "6.18.0".into(),
        pages_codec: Codec::Zstd,
    }
}

fn creds(uid: u32) -> Credentials {
    Credentials {
        uid: IdSet {
            real: uid,
            effective: uid,
            saved: uid,
            fs: uid,
        },
        gid: IdSet {
            real: 100,
            effective: 100,
            saved: 100,
            fs: 100,
        },
        groups: vec![100, 27, 4],
        caps: CapSets {
            inheritable: 0,
            permitted: 0x1ff_ffff_ffff,
            effective: 0x1ff_ffff_ffff,
            bounding: 0x1ff_ffff_ffff,
            ambient: 0,
        },
        securebits: 0,
        no_new_privs: uid != 0,
    }
}

fn process(pid: i32, state: TaskState) -> Process {
    Process {
        pid,
        ppid: pid - 1,
        pgid: 1,
        sid: 1,
        state,
        comm: "python3".into(),
        exe: "/usr/bin/python3.11".into(),
        cwd: ByteString(vec![b'/', b's', 0xff, b'v']),
        root: "/".into(),
        creds: creds(0),
        umask: 0o022,
        personality: 0,
        dumpable: 1,
        pdeath_sig: 0,
        child_subreaper: pid == 1,
        rlimits: vec![
            Rlimit {
                resource: 7,
                cur: 1024,
                max: 4096,
            },
            Rlimit {
                resource: 3,
                cur: 8 << 20,
                max: u64::MAX,
            },
        ],
        mm: (!matches!(state, TaskState::Zombie { .. })).then(|| MmState {
            start_code: 0x40_0000,
            end_code: 0x40_8000,
            start_data: 0x60_0000,
            end_data: 0x60_1000,
            start_brk: 0x60_2000,
            brk: 0x62_3000,
            start_stack: 0x7ffd_0000_0000,
            arg_start: 0x7ffd_0000_1000,
            arg_end: 0x7ffd_0000_1040,
            env_start: 0x7ffd_0000_1040,
            env_end: 0x7ffd_0000_1ff0,
            auxv: Blob((0u8..=255).cycle().take(368).collect()),
            exe_file: "/usr/bin/python3.11".into(),
        }),
        sigactions: vec![SigAction {
            signo: 15,
            handler: 0x40_1234,
            flags: 0x0400_0004,
            restorer: 0x40_5678,
            mask: 1 << 14,
        }],
        shared_pending: vec![Blob(vec![10; 128])],
        itimers: ITimers {
            real: Timer {
                interval_ns: 1_000_000,
                value_ns: 250_000,
            },
            ..ITimers::default()
        },
        posix_timers: vec![PosixTimer {
            id: 0,
            clock: 1,
            notify: 0,
            signo: 14,
            value: 0xdead,
            notify_tid: 0,
            timer: Timer {
                interval_ns: 0,
                value_ns: 5_000_000_000,
            },
            overrun: 0,
        }],
    }
}

fn thread(pid: i32, tid: i32, syscall: SyscallRestart) -> Thread {
    Thread {
        pid,
        tid,
        comm: "worker".into(),
        regs: Blob((0..216).map(|i| i as u8).collect()),
        fs_base: 0x7f00_0000_0740,
        gs_base: 0,
        xsave: Blob(vec![0x5a; 2696]),
        sigmask: 1 << 16,
        pending: vec![Blob(vec![1; 128])],
        sigaltstack: SigAltStack {
            sp: 0x7f00_1000_0000,
            flags: 0,
            size: 8192,
        },
        clear_child_tid: 0x7f00_0000_0a10,
        robust_list: RobustList {
            head: 0x7f00_0000_0a20,
            len: 24,
        },
        rseq: (tid % 2 == 0).then_some(Rseq {
            addr: 0x7f00_0000_0e00,
            len: 32,
            sig: 0x5305_3053,
        }),
        sched: Sched {
            policy: 0,
            priority: 0,
            nice: -5,
        },
        creds: (tid != pid).then(|| creds(1000)),
        syscall,
    }
}

fn vma(pid: i32, start: u64, pages: u64, kind: VmaKind, in_page_store: bool) -> Vma {
    Vma {
        pid,
        start,
        end: start + pages * PAGE_SIZE as u64,
        prot: 3,
        flags: 0x02,
        madvise: 0,
        pgoff: 0,
        kind,
        in_page_store,
    }
}

/// Every record kind and every nested enum variant at least once (the
/// manifest excepted: it goes to `RecordWriter::new`).
fn inet_options() -> cr_formats::schema::SocketOptions {
    cr_formats::schema::SocketOptions {
        reuseaddr: true,
        reuseport: false,
        keepalive: true,
        keepidle: 60,
        keepintvl: 10,
        keepcnt: 5,
        nodelay: true,
        sndbuf: 87_040,
        rcvbuf: 131_072,
        linger: Some(3),
        v6only: false,
        broadcast: false,
    }
}

pub fn records() -> Vec<Record> {
    let mut r = vec![
        Record::Process(process(1, TaskState::Alive)),
        Record::Process(process(2, TaskState::Stopped { signo: 19 })),
        Record::Process(process(3, TaskState::Zombie { exit_code: 3 })),
        Record::Thread(thread(1, 1, SyscallRestart::None)),
        Record::Thread(thread(1, 4, SyscallRestart::Restart { nr: 7 })),
        Record::Thread(thread(2, 2, SyscallRestart::RestartBlock { nr: 35 })),
    ];
    let kinds = [
        VmaKind::Anonymous,
        VmaKind::Heap,
        VmaKind::Stack,
        VmaKind::File {
            path: "/usr/lib/libc.so.6".into(),
            dev: 0x803,
            ino: 1_234_567,
        },
        VmaKind::Shmem { id: 42 },
        VmaKind::Memfd {
            name: "memfd:jit".into(),
            id: 43,
        },
        VmaKind::SysvShm { shmid: 65_538 },
        VmaKind::Vdso,
        VmaKind::Vvar,
        VmaKind::Vsyscall,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let start = 0x1000_0000 + (i as u64) * 0x10_0000;
        r.push(Record::Vma(vma(1, start, 4, kind, i % 2 == 0)));
    }
    let files = [
        FileKind::Regular {
            path: "/var/log/app.log".into(),
            pos: 4096,
            size: 10_000,
        },
        FileKind::Directory {
            path: "/srv".into(),
            pos: 3,
        },
        FileKind::CharDevice {
            path: "/dev/null".into(),
            rdev: 0x103,
            pos: 0,
        },
        FileKind::Pipe {
            pipe: 9001,
            end: PipeEnd::Read,
        },
        FileKind::Pipe {
            pipe: 9001,
            end: PipeEnd::Write,
        },
        FileKind::Fifo {
            path: "/run/ctl.fifo".into(),
            pipe: 9002,
            end: PipeEnd::Read,
        },
        FileKind::Unix(UnixSocket {
            ino: 901,
            kind: UnixType::Stream,
            state: UnixState::Connected,
            name: Some(UnixName::Path {
                path: "/run/app.sock".into(),
                unlinked: false,
                mode: 0o755,
                uid: 0,
                gid: 0,
            }),
            peer: Some(902),
            peer_closed: false,
            backlog: 0,
            pending: Vec::new(),
            shutdown: 2,
            queue: vec![Blob(b"queued bytes".to_vec())],
            peer_cred: Some(UnixCred {
                pid: 7,
                uid: 0,
                gid: 0,
            }),
            pass_cred: true,
            sndbuf: 212_992,
            rcvbuf: 212_992,
        }),
        FileKind::Unix(UnixSocket {
            ino: 903,
            kind: UnixType::Seqpacket,
            state: UnixState::Listen,
            name: Some(UnixName::Abstract(Blob(b"svc".to_vec()))),
            peer: None,
            peer_closed: false,
            backlog: 128,
            pending: vec![904],
            shutdown: 0,
            queue: Vec::new(),
            peer_cred: None,
            pass_cred: false,
            sndbuf: 4096,
            rcvbuf: 4096,
        }),
        FileKind::Unix(UnixSocket {
            ino: 905,
            kind: UnixType::Dgram,
            state: UnixState::Unconnected,
            name: None,
            peer: Some(906),
            peer_closed: true,
            backlog: 0,
            pending: Vec::new(),
            shutdown: 3,
            queue: vec![Blob(b"one".to_vec()), Blob(Vec::new())],
            peer_cred: None,
            pass_cred: false,
            sndbuf: 1,
            rcvbuf: 2,
        }),
        FileKind::Inet(cr_formats::schema::InetSocket {
            family: cr_formats::schema::InetFamily::V4,
            proto: cr_formats::schema::InetProto::Tcp,
            local: Some("10.0.0.2:80".parse().unwrap()),
            peer: Some("10.0.0.1:40000".parse().unwrap()),
            state: cr_formats::schema::InetState::Established(cr_formats::schema::TcpConnection {
                snd_seq: 0xdead_beef,
                rcv_seq: 7,
                send_queue: cr_formats::schema::Blob(b"to send".to_vec()),
                unsent: 2,
                recv_queue: cr_formats::schema::Blob(b"received".to_vec()),
                mss: 1448,
                wscale: Some((7, 9)),
                sack: true,
                timestamp: Some(123_456),
                window: cr_formats::schema::TcpWindow {
                    snd_wl1: 6,
                    snd_wnd: 65_535,
                    max_window: 65_535,
                    rcv_wnd: 64_000,
                    rcv_wup: 7,
                },
            }),
            options: inet_options(),
        }),
        FileKind::Inet(cr_formats::schema::InetSocket {
            family: cr_formats::schema::InetFamily::V6,
            proto: cr_formats::schema::InetProto::Udp,
            local: Some("[::1]:53".parse().unwrap()),
            peer: None,
            state: cr_formats::schema::InetState::Idle,
            options: inet_options(),
        }),
        FileKind::Memfd { id: 78, pos: 5 },
        FileKind::Deleted { id: 79, pos: 8 },
        FileKind::Mqueue {
            name: ByteString::from("queue"),
        },
        FileKind::Netlink(cr_formats::schema::NetlinkSocket {
            protocol: 0,
            dgram: false,
            port: 1,
            groups: vec![0x11, 0x2],
            peer: Some((0, 1)),
            options: cr_formats::schema::NetlinkOptions {
                ext_ack: true,
                ..Default::default()
            },
            sndbuf: 425984,
            rcvbuf: 425984,
        }),
    ];
    for (id, kind) in files.into_iter().enumerate() {
        r.push(Record::File(File {
            id: id as u64 + 10,
            flags: 0o2,
            owner: (id == 0).then_some(FileOwner {
                kind: 1,
                pid: 1,
                signo: 29,
            }),
            kind,
        }));
    }
    for (fd, file) in [
        (0, 12),
        (1, 13),
        (2, 12),
        (3, 10),
        (4, 11),
        (5, 14),
        (6, 15),
    ] {
        r.push(Record::Fd(Fd {
            pid: 1,
            fd,
            cloexec: fd > 2,
            file,
        }));
    }
    r.push(Record::Fd(Fd {
        pid: 2,
        fd: 0,
        cloexec: false,
        file: 12,
    }));
    r.push(Record::PipeData(PipeData {
        pipe: 9001,
        capacity: 65536,
        data: Blob(b"hello through a pipe\n".repeat(40)),
    }));
    for (kind, mode) in [
        (LockKind::Posix, LockMode::Write),
        (LockKind::Flock, LockMode::Read),
        (LockKind::Ofd, LockMode::Write),
    ] {
        r.push(Record::FileLock(FileLock {
            pid: 1,
            file: 10,
            kind,
            mode,
            start: 0,
            len: 0,
        }));
    }
    r.push(Record::Shmem(ShmemObject {
        id: 77,
        size: 16 * 4096 + 100,
        kind: ShmemKind::Anonymous,
    }));
    r.push(Record::Shmem(ShmemObject {
        id: 78,
        size: 4096,
        kind: ShmemKind::Memfd {
            name: ByteString::from("buf"),
            seals: 0x7,
        },
    }));
    r.push(Record::DeletedFile(DeletedFile {
        id: 79,
        dev: 0x801,
        ino: 79,
        path: ByteString::from("/tmp/gone"),
        mode: 0o640,
        data: Blob(b"deleted but open\n".repeat(3)),
    }));
    let perm = |id: i32, key: i32| cr_formats::schema::IpcPerm {
        key,
        id,
        uid: 0,
        gid: 5,
        cuid: 0,
        cgid: 0,
        mode: 0o640,
    };
    r.push(Record::SysvShm(cr_formats::schema::SysvShm {
        perm: perm(32769, 0x1234),
        size: 3 * 4096 + 100,
        data: Blob(b"segment".repeat(100)),
    }));
    r.push(Record::SysvSem(cr_formats::schema::SysvSem {
        perm: perm(3, 0),
        values: vec![3, 0, 7],
    }));
    r.push(Record::SysvMsgQueue(cr_formats::schema::SysvMsgQueue {
        perm: perm(65536, 0x3456),
        qbytes: 16384,
        messages: vec![
            cr_formats::schema::SysvMessage {
                mtype: 5,
                data: Blob(b"five".to_vec()),
            },
            cr_formats::schema::SysvMessage {
                mtype: 1,
                data: Blob(Vec::new()),
            },
        ],
    }));
    r.push(Record::PosixMqueue(cr_formats::schema::PosixMqueue {
        name: ByteString::from("queue"),
        mode: 0o600,
        uid: 0,
        gid: 0,
        maxmsg: 8,
        msgsize: 128,
        messages: vec![cr_formats::schema::MqMessage {
            priority: 9,
            data: Blob(b"high".to_vec()),
        }],
    }));
    r.push(Record::Mount(Mount {
        index: 8,
        mount_point: ByteString::from("/tmp"),
        kind: MountKind::Standard { archive: 0 },
        flags: 0x200006,
        data: ByteString::from(""),
        sb_readonly: false,
        propagation: Propagation::Private,
    }));
    r.push(Record::Mount(Mount {
        index: 26,
        mount_point: ByteString::from("/srv/b"),
        kind: MountKind::Bind {
            source: ByteString::from("/srv/a"),
        },
        flags: 0x200001,
        data: ByteString::from("size=2048k"),
        sb_readonly: true,
        propagation: Propagation::Shared,
    }));
    r.push(Record::Uts(Uts {
        hostname: ByteString::from("web1"),
        domainname: ByteString::from("(none)"),
    }));
    r.push(Record::NetNamespace(NetNamespace {
        links: vec![
            NetLink {
                index: 1,
                name: "lo".into(),
                kind: NetLinkKind::Loopback,
                mtu: 65536,
                up: true,
                mac: Some(Blob(vec![0; 6])),
            },
            NetLink {
                index: 3,
                name: "v1".into(),
                kind: NetLinkKind::VethPair { peer: "v2".into() },
                mtu: 1400,
                up: false,
                mac: Some(Blob(vec![2, 0, 0, 0, 0, 1])),
            },
        ],
        addresses: vec![Blob(vec![2, 24, 0x80, 0, 3, 0, 0, 0])],
        routes: vec![Blob(vec![2, 24, 0, 0, 100, 4, 0, 1, 0, 0, 0, 0])],
        rules: vec![],
        neighbours: vec![],
        sysctls: vec![NetSysctl {
            path: "ipv4/ip_forward".into(),
            value: "1".into(),
        }],
        iptables: ByteString::from(
            "*filter\n-A INPUT -p tcp -m tcp --dport 9999 -j DROP\nCOMMIT\n",
        ),
        ip6tables: ByteString::default(),
    }));
    r.push(Record::TimeNamespace(TimeNamespace {
        id: 0,
        monotonic: TimeOffset {
            secs: 86_400,
            nanos: 5,
        },
        boottime: TimeOffset {
            secs: -3600,
            nanos: 999_999_999,
        },
        creator: Some(7),
        members: vec![8, 9],
    }));
    r.push(Record::Nftables(Nftables {
        tables: vec!["inet mine".into()],
        ruleset: ByteString(
            b"table inet mine {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n"
                .to_vec(),
        ),
    }));
    r
}

/// The records stream of the sample image.
pub fn records_image() -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = RecordWriter::new(&mut out, &manifest()).unwrap();
    for r in records() {
        w.write(&r).unwrap();
    }
    w.finish().unwrap();
    out
}

/// A page whose bytes depend on its address and a seed.
pub fn page(vaddr: u64, seed: u64) -> Vec<u8> {
    let mut x = vaddr ^ seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15;
    let mut p = Vec::with_capacity(PAGE_SIZE);
    while p.len() < PAGE_SIZE {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Half of each page is a repeating pattern, so zstd has work to do.
        let v = if p.len() % 1024 < 512 {
            x
        } else {
            0x0101_0101_0101_0101u64.wrapping_mul(vaddr >> 12)
        };
        p.extend_from_slice(&v.to_le_bytes());
    }
    p
}

/// What a pages stream holds, flattened: (owner, page address, None for a
/// zero page or its bytes), in stream order.
pub type Pages = Vec<(PageOwner, u64, Option<Vec<u8>>)>;

/// The sample page store: two address spaces and a shared object, data and
/// zero runs, several small chunks.
pub fn pages_image(compression: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    let mut options = PageWriterOptions::new(IMAGE_ID);
    options.compression = compression;
    options.chunk_size = 2 * PAGE_SIZE;
    let mut w = PageWriter::new(&mut out, options).unwrap();
    let a = PageOwner::Mm { pid: 1 };
    let mut data = page(0x40_0000, 1);
    data.extend(vec![0u8; PAGE_SIZE]);
    data.extend(page(0x40_2000, 1));
    w.write_pages(a, 0x40_0000, &data).unwrap();
    w.write_zero_pages(a, 0x7f00_0000_0000, 300).unwrap();
    w.write_pages(PageOwner::Mm { pid: 2 }, 0x60_0000, &page(0x60_0000, 2))
        .unwrap();
    w.write_pages(PageOwner::Shmem { id: 42 }, 0, &page(0, 42))
        .unwrap();
    w.finish().unwrap();
    out
}

/// Reads a whole pages stream.
pub fn read_pages(bytes: &[u8]) -> Result<Pages> {
    let mut r = PageReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(chunk) = r.next_chunk()? {
        for run in chunk.runs() {
            for i in 0..run.nr_pages as usize {
                let vaddr = run.vaddr + (i * PAGE_SIZE) as u64;
                let data = match run.kind {
                    RunKind::Data => Some(run.data[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].to_vec()),
                    RunKind::Zero => None,
                };
                out.push((run.owner, vaddr, data));
            }
        }
    }
    assert!(r.is_complete());
    Ok(out)
}

/// Reads a whole records stream into its records.
pub fn read_all(bytes: &[u8]) -> Result<Vec<Record>> {
    Ok(read_records(bytes)?
        .entries
        .into_iter()
        .map(|e| e.record)
        .collect())
}

/// The frames of an intact records stream.
pub fn frames(bytes: &[u8]) -> Vec<FrameInfo> {
    read_records(bytes)
        .unwrap()
        .entries
        .iter()
        .map(|e| e.frame)
        .collect()
}

/// Recomputes the stream header's checksum after a test edited it.
pub fn reseal_stream_header(bytes: &mut [u8]) {
    let crc = checksum(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the checksum of the frame header at `offset`.
pub fn reseal_frame_header(bytes: &mut [u8], offset: usize) {
    let crc = checksum(&bytes[offset..offset + 20]);
    bytes[offset + 20..offset + 24].copy_from_slice(&crc.to_le_bytes());
}

/// A deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
