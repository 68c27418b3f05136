//! Integration tests of `cr::inject` (ptrace, registers, syscall injection,
//! remote memory) against the real kernel. They run as root, spawn real
//! target processes (`sleep`, `/usr/bin/python3`) and kill them in Drop
//! guards, so nothing is left behind even when a test fails.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use cr::inject::*;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const PY: &str = "/usr/bin/python3";
const WAIT: Option<Duration> = Some(Duration::from_secs(5));
const PAGE: u64 = 4096;

/// A python loop that prints a tick every 50 ms, keeps a known string in
/// memory and prints `got N` when it handles SIGUSR1.
const TICKER: &str = r#"
import ctypes, signal, sys, time
signal.signal(signal.SIGUSR1, lambda s, f: print('got', s, flush=True))
buf = ctypes.create_string_buffer(b'cr-inject-magic-0123456789', 64)
print('ready', ctypes.addressof(buf), flush=True)
n = 0
while True:
    n += 1
    print('tick', n, flush=True)
    time.sleep(0.05)
"#;

static SEQ: AtomicU32 = AtomicU32::new(0);

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "missing prerequisite: root (these tests use ptrace and cgroups)"
    );
}

/// A target process, killed and reaped on drop.
struct Target {
    child: Child,
    lines: Option<Receiver<String>>,
    /// v1 freezer.state to thaw before killing.
    freezer_state: Option<PathBuf>,
}

impl Target {
    fn sleep(secs: &str) -> Target {
        require_root();
        let child = Command::new("sleep")
            .arg(secs)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning sleep");
        Target {
            child,
            lines: None,
            freezer_state: None,
        }
    }

    fn python(script: &str) -> Target {
        require_root();
        assert!(
            std::path::Path::new(PY).exists(),
            "missing prerequisite: {PY}"
        );
        let mut child = Command::new(PY)
            .arg("-u")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning python3");
        let out = child.stdout.take().expect("python stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Target {
            child,
            lines: Some(rx),
            freezer_state: None,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// The next stdout line.
    fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.as_ref()?.recv_timeout(timeout).ok()
    }

    /// Waits for a line starting with `prefix`, skipping others.
    fn line_starting(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let l = self.line(left)?;
            if l.starts_with(prefix) {
                return Some(l);
            }
        }
    }

    /// Drops buffered lines; returns them.
    fn drain(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(rx) = &self.lines {
            while let Ok(l) = rx.try_recv() {
                v.push(l);
            }
        }
        v
    }

    /// Python's `ready <addr>` line.
    fn ready(&self) -> u64 {
        let l = self
            .line_starting("ready", Duration::from_secs(10))
            .expect("python target never said ready");
        l.split_whitespace()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0)
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(st)) => return Some(st),
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(state) = &self.freezer_state {
            let _ = fs::write(state, "THAWED");
        }
        let _ = self.child.kill();
        let _ = self.wait_exit(Duration::from_secs(5));
    }
}

/// A v1 freezer cgroup, thawed, emptied and removed on drop.
struct Freezer {
    path: PathBuf,
}

impl Freezer {
    fn new() -> Freezer {
        let root = PathBuf::from("/sys/fs/cgroup/freezer");
        assert!(
            root.join("cgroup.procs").exists(),
            "missing prerequisite: cgroup v1 freezer at {}",
            root.display()
        );
        let path = root.join(format!(
            "cr-inject-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).expect("creating freezer cgroup");
        Freezer { path }
    }

    fn state_file(&self) -> PathBuf {
        self.path.join("freezer.state")
    }

    fn add(&self, pid: Pid) {
        fs::write(self.path.join("cgroup.procs"), pid.to_string()).expect("joining freezer cgroup");
    }

    fn set(&self, state: &str) {
        fs::write(self.state_file(), state).expect("writing freezer.state");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = fs::read_to_string(self.state_file()).unwrap_or_default();
            if now.trim() == state {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "freezer stuck in {now:?}, wanted {state}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = fs::write(self.state_file(), "THAWED");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            for p in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("could not remove {}", self.path.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn status_field(pid: Pid, field: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn status_mask(pid: Pid, field: &str) -> u64 {
    u64::from_str_radix(&status_field(pid, field), 16).expect("hex mask in /proc/PID/status")
}

/// Waits until the task sleeps in syscall `nr` (per /proc/PID/syscall).
fn wait_in_syscall(pid: Pid, nr: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if s.split_whitespace().next() == Some(&nr.to_string()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never blocked in syscall {nr}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_state(pid: Pid, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = status_field(pid, "State");
        if st.starts_with(prefix) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} state {st:?}, wanted {prefix}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn stopped(pid: Pid) -> Tracee {
    let mut t = Tracee::seize_and_interrupt(pid).expect("seize+interrupt");
    let stop = t.wait_stop(WAIT).expect("wait_stop");
    assert_eq!(stop, Stop::Interrupt);
    t
}

fn map_entry(pid: Pid, addr: u64) -> Option<MapsEntry> {
    read_maps(pid)
        .expect("reading maps")
        .into_iter()
        .find(|m| m.start <= addr && addr < m.end)
}

fn tgkill(tgid: Pid, tid: Pid, sig: i32) {
    // SAFETY: tgkill takes three integers and touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, tgid.as_raw(), tid.as_raw(), sig) };
    assert_eq!(r, 0, "tgkill: {}", Errno::last());
}

fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

#[test]
fn seize_interrupt_wait_detach() {
    let target = Target::sleep("30");
    let pid = target.pid();
    wait_in_syscall(pid, libc::SYS_clock_nanosleep);
    let mut t = Tracee::seize_and_interrupt(pid).expect("seize");
    assert_eq!(t.tid(), pid);
    assert_eq!(t.tgid(), pid);
    assert_eq!(t.wait_stop(WAIT).expect("wait_stop"), Stop::Interrupt);
    assert_eq!(t.stop(), Some(Stop::Interrupt));
    assert!(
        status_field(pid, "State").starts_with('t'),
        "not in tracing stop"
    );
    assert_eq!(
        status_field(pid, "TracerPid"),
        nix::unistd::gettid().to_string()
    );
    // cont + interrupt + wait again.
    t.cont(0).expect("cont");
    assert_eq!(t.stop(), None);
    t.interrupt().expect("interrupt");
    assert_eq!(
        t.wait_stop(WAIT).expect("second wait_stop"),
        Stop::Interrupt
    );
    t.detach().expect("detach");
    wait_state(pid, "S");
    assert_eq!(status_field(pid, "TracerPid"), "0");
}

#[test]
fn drop_detaches_running_tracee() {
    let target = Target::sleep("30");
    let pid = target.pid();
    {
        let mut t = stopped(pid);
        t.cont(0).expect("cont");
    }
    assert_eq!(status_field(pid, "TracerPid"), "0");
    wait_state(pid, "S");
}

#[test]
fn regs_round_trip() {
    let target = Target::sleep("30");
    let pid = target.pid();
    wait_in_syscall(pid, libc::SYS_clock_nanosleep);
    let t = stopped(pid);
    let orig = t.get_regs().expect("get_regs");
    assert_ne!(orig.rip, 0);
    assert_ne!(orig.fs_base, 0, "glibc sets fs_base (TLS)");
    let mut changed = orig;
    changed.r12 ^= 0x5a5a_5a5a;
    changed.r15 = 0x1234_5678_9abc_def0;
    t.set_regs(&changed).expect("set_regs");
    assert_eq!(
        regs_to_array(&t.get_regs().expect("get_regs")),
        regs_to_array(&changed)
    );
    t.set_regs(&orig).expect("restoring regs");
    assert_eq!(
        regs_to_array(&t.get_regs().expect("get_regs")),
        regs_to_array(&orig)
    );
    assert_eq!(
        regs_to_array(&regs_from_array(&regs_to_array(&orig))),
        regs_to_array(&orig)
    );

    // The whole thread state as plain data, through serde and back.
    let all = t.collect_regs().expect("collect_regs");
    assert_eq!(all.rip(), orig.rip);
    assert_eq!(all.fs_base(), orig.fs_base);
    let json = serde_json::to_string(&all).expect("serialize");
    let back: ThreadRegs = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, all);
    t.restore_regs(&back).expect("restore_regs");
    assert_eq!(t.collect_regs().expect("collect again"), all);
    let fp = t.get_fpregs().expect("get_fpregs");
    assert_eq!(fp.len(), FPREGS_SIZE);
    t.set_fpregs(&fp).expect("set_fpregs");
    t.detach().expect("detach");
}

#[test]
fn xstate_size_and_round_trip() {
    let target = Target::sleep("30");
    let pid = target.pid();
    let t = stopped(pid);
    let xs = t.get_xstate().expect("get_xstate");
    // CPUID leaf 0xD, sub-leaf 0: EBX = XSAVE size for the features enabled
    // in XCR0, which is what the kernel exposes in the regset.
    let cpuid = std::arch::x86_64::__cpuid_count(0xd, 0);
    println!(
        "xstate: kernel gave {} bytes; CPUID(0xd,0) ebx={} ecx={}",
        xs.len(),
        cpuid.ebx,
        cpuid.ecx
    );
    assert!(xs.len() >= 512 + 64, "XSAVE area too small: {}", xs.len());
    assert!(
        xs.len() < 64 * 1024,
        "XSAVE area as large as the probe buffer"
    );
    assert_eq!(xs.len(), t.xstate_size().expect("xstate_size"));
    assert_eq!(xs.len(), cpuid.ebx as usize);
    // Set then get gives the same bytes.
    t.set_xstate(&xs).expect("set_xstate");
    assert_eq!(t.get_xstate().expect("get again"), xs);
    // A change to XMM0 (legacy area offset 160) shows up, then goes back.
    // XSTATE_BV (header, offset 512) bit 1 says the SSE part is live: an
    // untouched thread may have it clear (init state), which would make the
    // kernel ignore the XMM bytes.
    let mut changed = xs.clone();
    for b in &mut changed[160..176] {
        *b ^= 0xff;
    }
    changed[512] |= 0x2;
    t.set_xstate(&changed).expect("set changed xstate");
    let now = t.get_xstate().expect("get changed");
    assert_eq!(now[160..176], changed[160..176]);
    t.set_xstate(&xs).expect("restore xstate");
    assert_eq!(t.get_xstate().expect("get restored"), xs);
    t.detach().expect("detach");
}

#[test]
fn sigmask_get_set_and_pending_signals() {
    let target = Target::sleep("30");
    let pid = target.pid();
    let t = stopped(pid);
    let mask = t.get_sigmask().expect("get_sigmask");
    assert_eq!(mask, status_mask(pid, "SigBlk"));
    let usr = sigbit(libc::SIGUSR1) | sigbit(libc::SIGUSR2);
    t.set_sigmask(mask | usr).expect("set_sigmask");
    assert_eq!(t.get_sigmask().expect("get again"), mask | usr);
    assert_eq!(
        status_mask(pid, "SigBlk") & usr,
        usr,
        "SigBlk lacks SIGUSR1/2"
    );

    // Blocked signals stay queued: process-wide and per-thread queues.
    kill(pid, Signal::SIGUSR1).expect("kill SIGUSR1");
    tgkill(pid, pid, libc::SIGUSR2);
    let shared = t.peek_pending_signals(true).expect("peek shared");
    let private = t.peek_pending_signals(false).expect("peek per-thread");
    assert_eq!(
        shared.iter().map(|p| p.signo).collect::<Vec<_>>(),
        vec![libc::SIGUSR1]
    );
    assert_eq!(
        private.iter().map(|p| p.signo).collect::<Vec<_>>(),
        vec![libc::SIGUSR2]
    );
    assert!(shared
        .iter()
        .chain(&private)
        .all(|p| p.siginfo.len() == SIGINFO_SIZE));
    // si_code (offset 8): SI_USER for kill, SI_TKILL for tgkill.
    let code = |p: &PendingSignal| i32::from_ne_bytes(p.siginfo[8..12].try_into().unwrap());
    assert_eq!(code(&shared[0]), libc::SI_USER);
    assert_eq!(code(&private[0]), libc::SI_TKILL);
    // The target is killed by the guard; the queued signals die with it.
}

#[test]
fn rseq_config_of_glibc_process() {
    let target = Target::sleep("30");
    let pid = target.pid();
    wait_in_syscall(pid, libc::SYS_clock_nanosleep);
    let t = stopped(pid);
    let rseq = t.get_rseq_config().expect("rseq config");
    println!("rseq: {rseq:?}");
    assert_ne!(rseq.rseq_abi_pointer, 0);
    assert_eq!(rseq.rseq_abi_size, 32);
    assert_eq!(rseq.signature, 0x5305_3053);
    // The area lies in the thread's TLS: readable from outside.
    let mut area = [0u8; 32];
    read_memory_exact(pid, rseq.rseq_abi_pointer, &mut area).expect("reading rseq area");
}

#[test]
fn inject_getpid_patch_mode_then_target_continues() {
    let target = Target::python(TICKER);
    let pid = target.pid();
    target.ready();
    target
        .line_starting("tick", Duration::from_secs(5))
        .expect("first tick");
    let mut t = stopped(pid);
    let before = t.get_regs().expect("regs");
    let text_before = peek_word(pid, before.rip & !7).expect("peek text");
    {
        let mut rs = RemoteSyscall::new(&mut t);
        assert_eq!(rs.gadget(), Gadget::Patch);
        assert_eq!(rs.remote_getpid().expect("getpid"), pid.as_raw() as i64);
        assert_eq!(
            rs.inject(libc::SYS_gettid, [0; 6]).expect("gettid"),
            pid.as_raw() as i64
        );
        // An error comes back as Remote with the errno.
        match rs.remote_close(987_654) {
            Err(InjectError::Remote { errno, syscall, .. }) => {
                assert_eq!(errno, Errno::EBADF);
                assert_eq!(syscall, "close");
            }
            other => panic!("close of a bad fd gave {other:?}"),
        }
    }
    assert_eq!(
        regs_to_array(&t.get_regs().expect("regs")),
        regs_to_array(&before)
    );
    assert_eq!(peek_word(pid, before.rip & !7).expect("peek"), text_before);
    t.detach().expect("detach");
    target.drain();
    target
        .line_starting("tick", Duration::from_secs(3))
        .expect("python loop stopped ticking after detach");
}

#[test]
fn remote_mmap_write_read_mremap_mprotect() {
    let target = Target::sleep("30");
    let pid = target.pid();
    let mut t = stopped(pid);
    let mut rs = RemoteSyscall::new(&mut t);
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let anon = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let addr = rs.remote_mmap(0, 2 * PAGE, rw, anon, -1, 0).expect("mmap");
    assert_eq!(addr % PAGE, 0);
    let m = map_entry(pid, addr).expect("new mapping in maps");
    assert!(m.perms.starts_with("rw"));
    let data: Vec<u8> = (0..2 * PAGE as usize)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    write_memory(pid, addr, &data).expect("write_memory");
    let mut back = vec![0u8; data.len()];
    read_memory_exact(pid, addr, &mut back).expect("read_memory");
    assert_eq!(back, data);

    // mremap to 4 pages, moving if needed: contents follow.
    let new = rs
        .remote_mremap(addr, 2 * PAGE, 4 * PAGE, libc::MREMAP_MAYMOVE, 0)
        .expect("mremap");
    let mut back = vec![0u8; data.len()];
    read_memory_exact(pid, new, &mut back).expect("read after mremap");
    assert_eq!(back, data);
    let m = map_entry(pid, new).expect("remapped");
    assert!(m.end - m.start >= 4 * PAGE);

    // mprotect read-only: process_vm_writev can no longer write it.
    rs.remote_mprotect(new, 4 * PAGE, libc::PROT_READ)
        .expect("mprotect ro");
    assert!(map_entry(pid, new)
        .expect("mapping")
        .perms
        .starts_with("r--"));
    let w = process_vm_write(pid, new, b"xyz");
    assert!(
        matches!(
            w,
            Err(InjectError::Memory {
                errno: Errno::EFAULT,
                ..
            }) | Ok(0)
        ),
        "process_vm_writev wrote a read-only page: {w:?}"
    );
    rs.remote_mprotect(new, 4 * PAGE, rw).expect("mprotect rw");
    assert_eq!(process_vm_write(pid, new, b"xyz").expect("write"), 3);
    rs.remote_munmap(new, 4 * PAGE).expect("munmap");
    assert!(map_entry(pid, new).is_none());
    drop(rs);
    t.detach().expect("detach");
}

#[test]
fn write_memory_falls_back_to_proc_mem_for_readonly_pages() {
    let target = Target::python(TICKER);
    let pid = target.pid();
    let magic_addr = target.ready();
    let t = stopped(pid);
    // The known string python keeps in memory.
    let mut magic = [0u8; 26];
    read_memory_exact(pid, magic_addr, &mut magic).expect("reading python's buffer");
    assert_eq!(&magic, b"cr-inject-magic-0123456789");
    // A read-only private mapping of the python binary.
    let ro = read_maps(pid)
        .expect("maps")
        .into_iter()
        .find(|m| m.perms == "r--p" && m.path.contains("python3"))
        .expect("a r--p mapping of python3");
    let addr = ro.start + 64;
    let mut orig = [0u8; 16];
    read_memory_exact(pid, addr, &mut orig).expect("read ro page");
    let patch: Vec<u8> = orig.iter().map(|b| !b).collect();
    let direct = process_vm_write(pid, addr, &patch);
    assert!(
        !matches!(direct, Ok(n) if n == patch.len()),
        "process_vm_writev wrote a read-only page: {direct:?}"
    );
    write_memory(pid, addr, &patch).expect("write_memory with /proc/PID/mem fallback");
    let mut now = [0u8; 16];
    read_memory_exact(pid, addr, &mut now).expect("read back");
    assert_eq!(&now[..], &patch[..]);
    let mut via_proc = [0u8; 16];
    assert_eq!(
        read_proc_mem(pid, addr, &mut via_proc).expect("read /proc/PID/mem"),
        16
    );
    assert_eq!(&via_proc[..], &patch[..]);
    write_memory(pid, addr, &orig).expect("restoring");
    read_memory_exact(pid, addr, &mut now).expect("read back");
    assert_eq!(now, orig);
    // A partial read stops at the end of a mapping.
    let mut buf = vec![0u8; 2 * PAGE as usize];
    let end = read_maps(pid)
        .expect("maps")
        .into_iter()
        .find(|m| m.perms.starts_with('r') && m.path.is_empty() && m.end - m.start >= PAGE)
        .map(|m| m.end)
        .expect("an anonymous readable mapping");
    if map_entry(pid, end).is_none() {
        assert_eq!(
            read_memory(pid, end - PAGE, &mut buf).expect("partial read"),
            PAGE as usize
        );
    }
    t.detach().expect("detach");
}

#[test]
fn known_gadget_munmaps_its_own_page() {
    let target = Target::python(TICKER);
    let pid = target.pid();
    target.ready();
    let mut t = stopped(pid);
    let before = t.get_regs().expect("regs");
    let page = {
        let mut rs = RemoteSyscall::new(&mut t);
        let page = rs
            .remote_mmap(
                0,
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
            .expect("mmap injection page");
        write_memory(pid, page, &SYSCALL_INSN).expect("writing the gadget");
        rs.remote_mprotect(page, PAGE, libc::PROT_READ | libc::PROT_EXEC)
            .expect("mprotect r-x");
        page
    };
    assert!(map_entry(pid, page).expect("page").perms.starts_with("r-x"));
    {
        let mut rs = RemoteSyscall::with_gadget(&mut t, page);
        assert_eq!(rs.gadget(), Gadget::Known(page));
        assert_eq!(
            rs.remote_getpid().expect("getpid via gadget"),
            pid.as_raw() as i64
        );
        assert!(matches!(
            rs.remote_close(-1),
            Err(InjectError::Remote {
                errno: Errno::EBADF,
                ..
            })
        ));
        // The last call unmaps the page that holds the gadget.
        rs.remote_munmap(page, PAGE).expect("munmap through itself");
    }
    assert!(
        map_entry(pid, page).is_none(),
        "injection page still mapped"
    );
    assert_eq!(
        regs_to_array(&t.get_regs().expect("regs")),
        regs_to_array(&before)
    );
    // Still usable: patch-mode injection, continue, stop again, detach.
    assert_eq!(
        RemoteSyscall::new(&mut t)
            .remote_getpid()
            .expect("getpid after"),
        pid.as_raw() as i64
    );
    t.cont(0).expect("cont");
    target.drain();
    target
        .line_starting("tick", Duration::from_secs(3))
        .expect("ticks after cont");
    t.interrupt().expect("interrupt");
    assert_eq!(t.wait_stop(WAIT).expect("stop again"), Stop::Interrupt);
    t.detach().expect("detach");
    target.drain();
    target
        .line_starting("tick", Duration::from_secs(3))
        .expect("ticks after detach");
}

#[test]
fn find_gadget_in_target_text() {
    let target = Target::sleep("30");
    let pid = target.pid();
    let mut t = stopped(pid);
    let g = find_syscall_gadget(pid, None).expect("a syscall instruction");
    let mut b = [0u8; 2];
    read_memory_exact(pid, g, &mut b).expect("reading gadget");
    assert_eq!(b, SYSCALL_INSN);
    assert!(map_entry(pid, g).expect("mapping").perms.contains('x'));
    // Restricted to a range without code: nothing.
    let stack = read_maps(pid)
        .expect("maps")
        .into_iter()
        .find(|m| m.path == "[stack]")
        .expect("stack");
    assert!(matches!(
        find_syscall_gadget(pid, Some((stack.start, stack.end))),
        Err(InjectError::NoGadget { .. })
    ));
    let mut rs = RemoteSyscall::with_gadget(&mut t, g);
    assert_eq!(rs.remote_getpid().expect("getpid"), pid.as_raw() as i64);
    drop(rs);
    t.detach().expect("detach");
}

#[test]
fn nanosleep_restart_survives_injection() {
    let start = Instant::now();
    let mut target = Target::sleep("1");
    let pid = target.pid();
    wait_in_syscall(pid, libc::SYS_clock_nanosleep);
    let mut t = stopped(pid);
    let saved = t.get_regs().expect("regs");
    assert_eq!(
        saved.rax as i64, -ERESTART_RESTARTBLOCK,
        "rax of a stopped nanosleep"
    );
    assert_eq!(saved.orig_rax as i64, libc::SYS_clock_nanosleep);
    assert!(needs_restart(&saved));
    // Patch mode.
    assert_eq!(
        RemoteSyscall::new(&mut t)
            .remote_getpid()
            .expect("getpid (patch)"),
        pid.as_raw() as i64
    );
    assert_eq!(
        regs_to_array(&t.get_regs().expect("regs")),
        regs_to_array(&saved)
    );
    // Known-gadget mode (needs the park step to keep the restart).
    let g = find_syscall_gadget(pid, None).expect("gadget");
    assert_eq!(
        RemoteSyscall::with_gadget(&mut t, g)
            .remote_getpid()
            .expect("getpid (gadget)"),
        pid.as_raw() as i64
    );
    assert_eq!(
        regs_to_array(&t.get_regs().expect("regs")),
        regs_to_array(&saved)
    );
    t.detach().expect("detach");
    let st = target
        .wait_exit(Duration::from_secs(3))
        .expect("sleep 1 did not finish within 3 s of detach");
    let took = start.elapsed();
    assert!(st.success(), "sleep exited with {st:?}");
    assert!(
        took >= Duration::from_secs(1),
        "sleep ended early: {took:?}"
    );
    assert!(took < Duration::from_secs(3), "sleep took {took:?}");
}

#[test]
fn freezer_v1_seize_while_frozen() {
    let fz = Freezer::new();
    let mut target = Target::python(TICKER);
    target.freezer_state = Some(fz.state_file());
    let pid = target.pid();
    target.ready();
    fz.add(pid);
    target
        .line_starting("tick", Duration::from_secs(5))
        .expect("tick");
    fz.set("FROZEN");
    target.drain();
    let mut t = Tracee::seize_and_interrupt(pid).expect("seize+interrupt while frozen");
    // Not reported while frozen (v1).
    match t.wait_stop(Some(Duration::from_millis(200))) {
        Err(InjectError::Timeout { .. }) => {}
        other => panic!("stop reported while frozen: {other:?}"),
    }
    fz.set("THAWED");
    assert_eq!(t.wait_stop(WAIT).expect("stop after thaw"), Stop::Interrupt);
    // Stays stopped: no ticks.
    target.drain();
    assert!(
        target.line(Duration::from_millis(200)).is_none(),
        "ticked while stopped"
    );
    assert_eq!(
        RemoteSyscall::new(&mut t).remote_getpid().expect("getpid"),
        pid.as_raw() as i64
    );
    t.detach().expect("detach");
    target
        .line_starting("tick", Duration::from_secs(3))
        .expect("no ticks after detach");
}

#[test]
fn signals_met_while_stopping_are_redelivered() {
    let target = Target::python(TICKER);
    let pid = target.pid();
    target.ready();
    for inject_first in [false, true] {
        target
            .line_starting("tick", Duration::from_secs(5))
            .expect("tick");
        let mut t = Tracee::seize(pid).expect("seize");
        kill(pid, Signal::SIGUSR1).expect("kill");
        // The signal-delivery-stop comes before our interrupt.
        wait_state(pid, "t");
        t.interrupt().expect("interrupt");
        assert_eq!(t.wait_stop(WAIT).expect("wait_stop"), Stop::Interrupt);
        let p = t.pending_signals().to_vec();
        assert_eq!(p.len(), 1, "recorded signals: {p:?}");
        assert_eq!(p[0].signo, libc::SIGUSR1);
        let si_pid = i32::from_ne_bytes(p[0].siginfo[16..20].try_into().unwrap());
        assert_eq!(si_pid, std::process::id() as i32, "si_pid of the kill");
        if inject_first {
            // Detach then happens from the SIGTRAP stop of patch mode.
            RemoteSyscall::new(&mut t).remote_getpid().expect("getpid");
            assert!(matches!(t.stop(), Some(Stop::Signal(libc::SIGTRAP))));
        }
        assert!(
            !target.drain().iter().any(|l| l.starts_with("got")),
            "handler ran before detach"
        );
        t.detach().expect("detach");
        target
            .line_starting("got 10", Duration::from_secs(3))
            .expect("SIGUSR1 not delivered after detach");
    }
}

#[test]
fn scratch_sigaction_sigaltstack_prctl_userfaultfd() {
    let target = Target::python(TICKER);
    let pid = target.pid();
    target.ready();
    let mut t = stopped(pid);
    let mut rs = RemoteSyscall::new(&mut t);

    // Python installs handlers for SIGINT and (here) SIGUSR1.
    let int = rs.get_sigaction(libc::SIGINT).expect("sigaction SIGINT");
    assert!(int.handler > 1, "SIGINT handler: {int:?}");
    assert_ne!(int.flags & 0x0400_0000 /* SA_RESTORER */, 0);
    let usr2 = rs.get_sigaction(libc::SIGUSR2).expect("sigaction SIGUSR2");
    assert_eq!(usr2.handler, 0, "SIGUSR2 is SIG_DFL");
    {
        let mut s = RemoteScratch::new(&mut rs, 4096).expect("scratch");
        assert_ne!(s.addr(), 0);
        let ign = KernelSigaction {
            handler: 1, // SIG_IGN
            ..usr2
        };
        let old = s
            .rt_sigaction(libc::SIGUSR2, Some(&ign))
            .expect("set SIG_IGN");
        assert_eq!(old, usr2);
        assert_ne!(status_mask(pid, "SigIgn") & sigbit(libc::SIGUSR2), 0);
        s.rt_sigaction(libc::SIGUSR2, Some(&usr2)).expect("restore");
        assert_eq!(status_mask(pid, "SigIgn") & sigbit(libc::SIGUSR2), 0);

        // sigaltstack: set one, read it back, put the old one back.
        let old = s.sigaltstack(None).expect("get sigaltstack");
        let stack = s
            .syscall()
            .remote_mmap(
                0,
                16 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
            .expect("mmap alt stack");
        let ss = SigAltStack {
            sp: stack,
            flags: 0,
            size: 16 * PAGE,
        };
        s.sigaltstack(Some(&ss)).expect("set sigaltstack");
        assert_eq!(s.sigaltstack(None).expect("get again"), ss);
        let restore = if old.flags & libc::SS_DISABLE != 0 {
            SigAltStack {
                flags: libc::SS_DISABLE,
                ..Default::default()
            }
        } else {
            old
        };
        s.sigaltstack(Some(&restore)).expect("restore sigaltstack");
        assert_eq!(s.sigaltstack(None).expect("get restored").flags, old.flags);
        s.syscall()
            .remote_munmap(stack, 16 * PAGE)
            .expect("munmap alt stack");

        // prctl: read and set the name through the scratch page.
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
        s.write(0, b"cr-renamed\0").expect("write name");
        let addr = s.addr();
        s.syscall()
            .remote_prctl(libc::PR_SET_NAME, addr, 0, 0, 0)
            .expect("PR_SET_NAME");
        assert_eq!(
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .expect("comm")
                .trim(),
            "cr-renamed"
        );
        let mut name = comm.trim().as_bytes().to_vec();
        name.push(0);
        s.write(0, &name).expect("write old name");
        s.syscall()
            .remote_prctl(libc::PR_SET_NAME, addr, 0, 0, 0)
            .expect("PR_SET_NAME back");
        assert_eq!(
            fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm"),
            comm
        );
        s.close().expect("close scratch");
        assert!(map_entry(pid, addr).is_none(), "scratch still mapped");
    }
    assert_eq!(
        rs.remote_prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0)
            .expect("PR_GET_DUMPABLE"),
        1
    );

    // userfaultfd in the target.
    let fd = rs
        .remote_userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .expect("userfaultfd");
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd link");
    assert_eq!(link.to_string_lossy(), "anon_inode:[userfaultfd]");
    rs.remote_close(fd).expect("close uffd");
    assert!(fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_err());
    drop(rs);
    t.detach().expect("detach");
    target.drain();
    target
        .line_starting("tick", Duration::from_secs(3))
        .expect("ticks after detach");
}

#[test]
fn all_threads_of_a_process() {
    let target = Target::python(
        r#"
import threading, time
def worker():
    while True: time.sleep(0.05)
threading.Thread(target=worker, daemon=True).start()
print('ready 0', flush=True)
while True:
    print('tick', flush=True)
    time.sleep(0.05)
"#,
    );
    let pid = target.pid();
    target.ready();
    let tids = list_threads(pid).expect("threads");
    assert_eq!(tids.len(), 2, "threads: {tids:?}");
    let mut ts: Vec<Tracee> = tids
        .iter()
        .map(|&tid| Tracee::seize_and_interrupt(tid).expect("seize"))
        .collect();
    for t in &mut ts {
        t.wait_stop(WAIT).expect("wait_stop");
        assert_eq!(t.tgid(), pid);
    }
    let worker = ts
        .iter_mut()
        .find(|t| t.tid() != pid)
        .expect("worker thread");
    let mut rs = RemoteSyscall::new(worker);
    assert_eq!(rs.remote_getpid().expect("getpid"), pid.as_raw() as i64);
    let tid = rs.tracee().tid();
    assert_eq!(
        rs.inject(libc::SYS_gettid, [0; 6]).expect("gettid"),
        tid.as_raw() as i64
    );
    drop(rs);
    for t in ts {
        t.detach().expect("detach");
    }
    target.drain();
    target
        .line_starting("tick", Duration::from_secs(3))
        .expect("ticks after detach");
}

#[test]
fn cost_per_injected_syscall() {
    let target = Target::python("print('ready 0', flush=True)\nwhile True: pass\n");
    let pid = target.pid();
    target.ready();
    std::thread::sleep(Duration::from_millis(50));
    let mut t = stopped(pid);
    const N: u32 = 5000;
    let t0 = Instant::now();
    for _ in 0..N {
        t.get_regs().expect("get_regs");
    }
    let getregs = t0.elapsed() / N;
    let mut rs = RemoteSyscall::new(&mut t);
    let t0 = Instant::now();
    for _ in 0..N {
        rs.remote_getpid().expect("getpid");
    }
    let patch = t0.elapsed() / N;
    let page = rs
        .remote_mmap(
            0,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
        .expect("mmap");
    write_memory(pid, page, &SYSCALL_INSN).expect("gadget");
    rs.remote_mprotect(page, PAGE, libc::PROT_READ | libc::PROT_EXEC)
        .expect("mprotect");
    drop(rs);
    let mut rs = RemoteSyscall::with_gadget(&mut t, page);
    let t0 = Instant::now();
    for _ in 0..N {
        rs.remote_getpid().expect("getpid");
    }
    let known = t0.elapsed() / N;
    rs.remote_munmap(page, PAGE).expect("munmap");
    drop(rs);
    println!(
        "cost per injected syscall (getpid, {N} calls): patch mode {:.2} us, known gadget {:.2} us \
         (one PTRACE_GETREGS: {:.2} us)",
        patch.as_secs_f64() * 1e6,
        known.as_secs_f64() * 1e6,
        getregs.as_secs_f64() * 1e6
    );
    assert!(patch < Duration::from_millis(1));
    assert!(known < Duration::from_millis(1));
    t.detach().expect("detach");
}

#[test]
fn read_memory_throughput() {
    const MIB: usize = 64;
    let target = Target::python(&format!(
        r#"
import ctypes, time
b = bytearray(range(256)) * ({MIB} * 4096)
a = ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b))
print('ready', a, flush=True)
while True: time.sleep(1)
"#
    ));
    let pid = target.pid();
    let addr = target.ready();
    let t = stopped(pid);
    let len = MIB << 20;
    // bytearray data starts wherever malloc put it; check the pattern from
    // the first byte (value 0) on.
    // Touch the destination first: its page faults are not what we measure.
    let mut buf = vec![1u8; len];
    let t0 = Instant::now();
    read_memory_exact(pid, addr, &mut buf).expect("bulk read");
    let bulk = t0.elapsed();
    assert!(
        buf.iter().enumerate().all(|(i, &b)| b == (i % 256) as u8),
        "pattern"
    );

    // Page by page, one range per page, batched.
    let first = (addr + PAGE - 1) & !(PAGE - 1);
    let pages = (len - (first - addr) as usize) / PAGE as usize;
    let ranges: Vec<(u64, usize)> = (0..pages)
        .map(|i| (first + i as u64 * PAGE, PAGE as usize))
        .collect();
    let mut dst = vec![1u8; pages * PAGE as usize];
    let t0 = Instant::now();
    let n = read_memory_vectored(pid, &ranges, &mut dst).expect("vectored read");
    let vec_t = t0.elapsed();
    assert_eq!(n, dst.len());
    let off = (first - addr) as usize;
    assert_eq!(&dst[..], &buf[off..off + dst.len()]);
    // Every other page: one iovec per page.
    let sparse: Vec<(u64, usize)> = ranges.iter().step_by(2).copied().collect();
    let mut dst2 = vec![1u8; sparse.len() * PAGE as usize];
    let t0 = Instant::now();
    let n2 = read_memory_vectored(pid, &sparse, &mut dst2).expect("sparse read");
    let sparse_t = t0.elapsed();
    assert_eq!(n2, dst2.len());
    assert_eq!(
        &dst2[PAGE as usize..2 * PAGE as usize],
        &buf[off + 2 * PAGE as usize..off + 3 * PAGE as usize]
    );
    // A range that fails stops the count there.
    let bad = [
        (first, PAGE as usize),
        (8, PAGE as usize),
        (first, PAGE as usize),
    ];
    let mut dst3 = vec![0u8; 3 * PAGE as usize];
    assert_eq!(
        read_memory_vectored(pid, &bad, &mut dst3).expect("partial vectored"),
        PAGE as usize
    );
    let gbs = |d: Duration, n: usize| n as f64 / d.as_secs_f64() / 1e9;
    println!(
        "read {MIB} MiB: process_vm_readv bulk {:.2} GB/s, {pages} adjacent page ranges {:.2} GB/s, \
         every other page ({} iovecs) {:.2} GB/s",
        gbs(bulk, len),
        gbs(vec_t, dst.len()),
        sparse.len(),
        gbs(sparse_t, dst2.len())
    );
    t.detach().expect("detach");
}

#[test]
fn trace_clone_adopts_new_threads() {
    let target = Target::python(
        r#"
import threading, time
print('ready 0', flush=True)
while True:
    t = threading.Thread(target=lambda: time.sleep(0.02))
    t.start()
    t.join()
    print('tick', flush=True)
    time.sleep(0.05)
"#,
    );
    let pid = target.pid();
    target.ready();
    let opts = SeizeOptions {
        trace_clone: true,
        ..Default::default()
    };
    let mut t = Tracee::seize_with(pid, opts).expect("seize with TRACECLONE");
    assert_eq!(t.options(), opts);
    let new = loop {
        match t.wait(WAIT).expect("waiting for a clone") {
            Stop::Event(libc::PTRACE_EVENT_CLONE) => {
                break Pid::from_raw(t.event_msg().expect("event msg") as i32)
            }
            Stop::Signal(sig) => t.cont(sig).expect("cont"),
            _ => t.cont(0).expect("cont"),
        }
    };
    let mut child = Tracee::adopt(new, opts).expect("adopt");
    assert_eq!(child.tgid(), pid);
    assert_eq!(
        child.wait_stop(WAIT).expect("new thread's first stop"),
        Stop::Interrupt
    );
    assert_eq!(
        RemoteSyscall::new(&mut child)
            .inject(libc::SYS_gettid, [0; 6])
            .expect("gettid in the new thread"),
        new.as_raw() as i64
    );
    child.detach().expect("detach new thread");
    t.detach().expect("detach");
    target.drain();
    target
        .line_starting("tick", Duration::from_secs(3))
        .expect("ticks after detach");
}

#[test]
fn timeout_of_a_blocking_injected_call_restores_the_thread() {
    let target = Target::python(TICKER);
    let pid = target.pid();
    target.ready();
    let mut t = stopped(pid);
    let saved = t.get_regs().expect("regs");
    let text = peek_word(pid, saved.rip & !7).expect("text");
    let gadget = find_syscall_gadget(pid, None).expect("gadget");
    for mode in [Gadget::Patch, Gadget::Known(gadget)] {
        let mut rs = RemoteSyscall::new(&mut t);
        rs.set_gadget(mode);
        rs.set_timeout(Some(Duration::from_millis(100)));
        match rs.inject(libc::SYS_pause, [0; 6]) {
            Err(InjectError::Timeout { .. }) => {}
            other => panic!("pause() in {mode:?} gave {other:?}"),
        }
        assert_eq!(
            rs.remote_getpid().expect("getpid after timeout"),
            pid.as_raw() as i64
        );
        drop(rs);
        assert_eq!(
            regs_to_array(&t.get_regs().expect("regs")),
            regs_to_array(&saved)
        );
        assert_eq!(peek_word(pid, saved.rip & !7).expect("text"), text);
    }
    t.detach().expect("detach");
    target.drain();
    target
        .line_starting("tick", Duration::from_secs(3))
        .expect("ticks after detach");
}
