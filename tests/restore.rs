//! Restore of a single process by syscall injection: a static busybox shell
//! is dumped into memory, killed, and rebuilt inside a husk (a stopped fork
//! of the test process). Needs root and a static `/bin/busybox`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use cr::dump::checkpoint::{dump_process, dump_threads, DumpedProcess};
use cr::inject::{list_threads, read_memory, Tracee};
use cr::restore::process::{finish, prepare, rebuild_process, write_pages, Pages};
use cr_formats::schema::{SyscallRestart, VmaKind};
use cr_formats::{PageOwner, PageReader, PageWriter, PageWriterOptions};
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const BUSYBOX: &str = "/bin/busybox";
const WAIT4: u64 = 61;
const ERESTARTSYS: i64 = -512;

fn require_env() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "tests/restore.rs needs root (ptrace of foreign processes, PR_SET_MM_MAP)"
    );
    let ok = std::fs::metadata(BUSYBOX).is_ok_and(|m| m.is_file());
    assert!(
        ok,
        "tests/restore.rs needs a static {BUSYBOX}: apt-get install -y busybox-static"
    );
}

/// SIGKILLs and reaps the processes it holds when dropped.
struct Reaper(Vec<Pid>);

impl Reaper {
    fn add(&mut self, pid: Pid) {
        self.0.push(pid);
    }

    /// Already reaped: its pid may be reused.
    fn forget(&mut self, pid: Pid) {
        self.0.retain(|p| *p != pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.drain(..) {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::__WALL));
        }
    }
}

/// A busybox shell running `script`, its stdout a pipe whose lines (parsed
/// as numbers) arrive on the receiver. Also returns the pipe's write end,
/// for the husk.
fn spawn_shell(script: &str) -> (Child, Receiver<u64>, OwnedFd) {
    spawn_counter(BUSYBOX, &["sh", "-c", script])
}

/// `program args`, its stdout a pipe whose lines (numbers) arrive on the
/// receiver; also returns the pipe's write end, for the husk.
fn spawn_counter(program: &str, args: &[&str]) -> (Child, Receiver<u64>, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
    let child = Command::new(program)
        .args(args)
        // The C locale: glibc then maps no shared gconv cache, which the
        // dump refuses.
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::from(w.try_clone().expect("dup")))
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(File::from(r)).lines() {
            let Ok(line) = line else { break };
            if let Ok(n) = line.trim().parse::<u64>() {
                if tx.send(n).is_err() {
                    break;
                }
            }
        }
    });
    (child, rx, w)
}

/// Seizes `pid` and stops it; retries until it is inside `wait4` (waiting
/// for its `sleep`) when `want_wait4`.
fn stop_shell(pid: Pid, want_wait4: bool) -> Tracee {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut t = Tracee::seize_and_interrupt(pid).expect("seize");
        t.wait_stop(Some(Duration::from_secs(5))).expect("stop");
        let regs = t.get_regs().expect("regs");
        if !want_wait4 || (regs.orig_rax == WAIT4 && regs.rax as i64 == ERESTARTSYS) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "the shell was never caught in wait4"
        );
        t.detach().expect("detach");
        std::thread::sleep(Duration::from_millis(37));
    }
}

/// Forks a husk: a child of the test process with `stdout` as its fd 1,
/// waiting in pause(). Returns it seized and stopped.
fn spawn_husk(stdout: &OwnedFd, reaper: &mut Reaper) -> Tracee {
    let fd = stdout.as_raw_fd();
    // The child says when its fd 1 is in place.
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
    let ready = ready_w.as_raw_fd();
    // SAFETY: the child only calls async-signal-safe functions (dup2,
    // write, pause, _exit) before it is rebuilt or killed.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: plain syscalls on integers, in the forked child.
        unsafe {
            if libc::dup2(fd, 1) != 1 || libc::write(ready, b"x".as_ptr().cast(), 1) != 1 {
                libc::_exit(111);
            }
            loop {
                libc::pause();
            }
        }
    }
    let pid = Pid::from_raw(pid);
    reaper.add(pid);
    drop(ready_w);
    let mut byte = [0u8; 1];
    assert_eq!(
        nix::unistd::read(&ready_r, &mut byte),
        Ok(1),
        "the husk died before it was ready"
    );
    let mut t = Tracee::seize_and_interrupt(pid).expect("seize husk");
    t.wait_stop(Some(Duration::from_secs(5)))
        .expect("husk stop");
    t
}

/// Every readable mapping of `pid` that restore rebuilds, read whole.
fn snapshot(pid: Pid, dumped: &DumpedProcess) -> Vec<(u64, Vec<u8>)> {
    dumped
        .vmas
        .iter()
        .filter(|v| {
            v.prot & libc::PROT_READ as u32 != 0
                && !matches!(v.kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::Vsyscall)
        })
        .map(|v| {
            let mut buf = vec![0u8; (v.end - v.start) as usize];
            let n = read_memory(pid, v.start, &mut buf).expect("reading a mapping");
            buf.truncate(n);
            (v.start, buf)
        })
        .collect()
}

fn pages_of(dumped: &DumpedProcess) -> Vec<Pages<'_>> {
    dumped
        .pages
        .iter()
        .map(|(addr, data)| Pages {
            vaddr: *addr,
            nr_pages: data.len() as u64 / 4096,
            data: Some(data),
        })
        .collect()
}

/// `/proc/PID/maps` as (start, end, perms, name), without `[vsyscall]`,
/// neighbours with the same protection and name merged: the kernel merges
/// such VMAs when they are mapped again (e.g. a library's read-only text
/// and its RELRO once both are `r--p`), which changes nothing a program
/// can see.
fn maps_of(pid: Pid) -> Vec<(u64, u64, String, String)> {
    let mut out: Vec<(u64, u64, String, String)> = Vec::new();
    for m in cr::inject::read_maps(pid).expect("maps") {
        if m.path == "[vsyscall]" {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == m.start && last.2 == m.perms && last.3 == m.path => {
                last.1 = m.end
            }
            _ => out.push((m.start, m.end, m.perms, m.path)),
        }
    }
    out
}

/// The SigIgn and SigCgt lines of /proc/PID/status.
fn signal_sets(pid: Pid) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .filter(|l| l.starts_with("SigIgn") || l.starts_with("SigCgt"))
        .map(str::to_string)
        .collect()
}

/// Kills the shell (and its children first), reaps it.
fn kill_shell(mut child: Child, tracee: Tracee) -> Vec<i32> {
    let pid = child.id();
    let kids: Vec<i32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    for k in &kids {
        let _ = kill(Pid::from_raw(*k), Signal::SIGKILL);
    }
    let _ = child.kill();
    drop(tracee);
    let _ = child.wait();
    kids
}

/// The numbers the shell printed so far (waits briefly for the pipe).
fn drain(rx: &Receiver<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    while let Ok(n) = rx.recv_timeout(Duration::from_millis(200)) {
        got.push(n);
    }
    got
}

/// Compares the rebuilt husk with the original process: every mapping
/// (address, size, protection, file), every readable byte, the mm fields.
/// The registered rseq area is skipped: the kernel writes the current CPU
/// into it.
fn check_rebuilt(
    husk: Pid,
    original_maps: &[(u64, u64, String, String)],
    snap: &[(u64, Vec<u8>)],
    dumped: &DumpedProcess,
) {
    let now = maps_of(husk);
    assert_eq!(
        now, original_maps,
        "the rebuilt address space differs from the checkpointed one"
    );
    for (addr, want) in snap {
        check_bytes(husk, *addr, want, dumped, "mapping");
    }
}

/// Panics unless `husk` holds `want` at `addr`, bytes of the registered
/// rseq area apart (the kernel writes the current CPU into it).
fn check_bytes(husk: Pid, addr: u64, want: &[u8], dumped: &DumpedProcess, what: &str) {
    let rseq = dumped.threads[0]
        .rseq
        .map(|r| (r.addr, r.addr + u64::from(r.len)))
        .unwrap_or((0, 0));
    let mut got = vec![0u8; want.len()];
    let n = read_memory(husk, addr, &mut got).expect("reading the rebuilt memory");
    assert_eq!(n, want.len(), "short read of the rebuilt {what} {addr:#x}");
    let differs = |(i, (a, b)): &(usize, (&u8, &u8))| {
        let at = addr + *i as u64;
        a != b && !(rseq.0 <= at && at < rseq.1)
    };
    if let Some((i, _)) = got.iter().zip(want).enumerate().find(differs) {
        panic!(
            "rebuilt memory differs at {:#x} ({what} {addr:#x}): {:#04x} != {:#04x}",
            addr + i as u64,
            got[i],
            want[i]
        );
    }
}

/// What [`count_across_rebuild`] saw.
struct Counted {
    dumped: DumpedProcess,
    /// Children the original had when it was dumped (killed with it).
    kids: Vec<i32>,
    /// The last number printed before the dump.
    last: u64,
    /// The first five numbers the rebuilt process printed.
    next: Vec<u64>,
}

/// Lets a counting process print a few numbers, stops it (inside wait4 when
/// `want_wait4`), dumps it, kills it, rebuilds it in a husk (checking every
/// mapping and byte before detaching), and collects what it prints next.
fn count_across_rebuild(
    child: Child,
    rx: &Receiver<u64>,
    pipe_w: &OwnedFd,
    want_wait4: bool,
) -> Counted {
    let mut reaper = Reaper(Vec::new());
    let pid = Pid::from_raw(child.id() as i32);
    let first = rx.recv_timeout(Duration::from_secs(5)).expect("no output");
    assert_eq!(first, 1);
    std::thread::sleep(Duration::from_millis(500));

    let mut tracee = stop_shell(pid, want_wait4);
    let maps = maps_of(pid);
    let dumped = dump_process(pid.as_raw(), &mut tracee).expect("dump");
    let snap = snapshot(pid, &dumped);
    let kids = kill_shell(child, tracee);
    let printed = drain(rx);
    let last = *printed.last().expect("nothing printed");
    assert!(last >= 3, "only {printed:?} printed before the dump");

    let mut husk = spawn_husk(pipe_w, &mut reaper);
    let husk_pid = husk.tid();
    let pages = pages_of(&dumped);
    rebuild_process(
        &mut husk,
        &dumped.process,
        &dumped.threads,
        &dumped.vmas,
        &pages,
    )
    .unwrap_or_else(|e| panic!("rebuild_process: {e}"));
    check_rebuilt(husk_pid, &maps, &snap, &dumped);
    husk.detach().expect("detach");

    let mut next = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while next.len() < 5 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(n) => next.push(n),
            Err(RecvTimeoutError::Timeout) => panic!(
                "the rebuilt process printed only {next:?} after {last}; \
                 /proc/{husk_pid}/stat: {}; syscall: {}; fd 1: {:?}, pipe: {:?}",
                std::fs::read_to_string(format!("/proc/{husk_pid}/stat")).unwrap_or_default(),
                std::fs::read_to_string(format!("/proc/{husk_pid}/syscall")).unwrap_or_default(),
                std::fs::read_link(format!("/proc/{husk_pid}/fd/1")),
                std::fs::read_link(format!("/proc/self/fd/{}", pipe_w.as_raw_fd())),
            ),
            Err(e) => panic!("pipe: {e}"),
        }
    }
    eprintln!("last printed before the dump: {last}; after the rebuild: {next:?}");
    // Dumped after printing `last` and before the next print.
    assert_eq!(
        next[0],
        last + 1,
        "the rebuilt process went on with {next:?} after {last}"
    );
    for w in next.windows(2) {
        assert_eq!(w[1], w[0] + 1, "not a sequence: {next:?} after {last}");
    }
    Counted {
        dumped,
        kids,
        last,
        next,
    }
}

#[test]
fn rebuilt_shell_counts_on_where_it_was_checkpointed() {
    require_env();
    let (child, rx, pipe_w) = spawn_shell("i=0; while :; do i=$((i+1)); echo $i; sleep 0.2; done");
    // It goes on counting: the shell's `sleep` is gone (the restarted wait4
    // gives ECHILD), the loop goes on with the next number.
    let c = count_across_rebuild(child, &rx, &pipe_w, true);
    assert_eq!(
        c.dumped.threads[0].syscall,
        SyscallRestart::Restart { nr: WAIT4 },
        "the shell should have been dumped inside wait4"
    );
    assert!(!c.kids.is_empty(), "the shell had no `sleep` child");
    assert!(c.next.len() == 5 && c.last >= 3);
}

#[test]
fn rebuilt_dynamic_python_counts_on() {
    require_env();
    let python = "/usr/bin/python3";
    if !std::path::Path::new(python).exists() {
        eprintln!("skipped: no {python} (apt-get install -y python3)");
        return;
    }
    let (child, rx, pipe_w) = spawn_counter(
        python,
        &[
            "-S",
            "-c",
            "import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.2)\n",
        ],
    );
    let c = count_across_rebuild(child, &rx, &pipe_w, false);
    // ld.so, libc, libm... were mapped again from their files.
    let files = c
        .dumped
        .vmas
        .iter()
        .filter(|v| matches!(v.kind, VmaKind::File { .. }))
        .count();
    assert!(
        files > 10,
        "only {files} file mappings: not a dynamic python?"
    );
    eprintln!("python dumped in {:?}", c.dumped.threads[0].syscall);
}

/// A python whose counting happens in a thread other than the leader (the
/// leader waits on an Event: a futex without timeout; a third thread sleeps
/// in a loop) is dumped with all its threads and rebuilt in a husk seized
/// without PTRACE_O_TRACECLONE: every thread comes back with its TID and
/// the counting thread goes on from its own stack and TLS.
#[test]
fn rebuilt_threads_get_their_tids_and_go_on() {
    require_env();
    let python = "/usr/bin/python3";
    assert!(
        std::path::Path::new(python).exists(),
        "missing prerequisite: {python} (apt-get install -y python3)"
    );
    let script = "import threading, time\n\
        def count():\n    i = 0\n    while True:\n        i += 1\n        print(i, flush=True)\n        time.sleep(0.2)\n\
        def idle():\n    while True:\n        time.sleep(0.05)\n\
        threading.Thread(target=idle, daemon=True).start()\n\
        threading.Thread(target=count, daemon=True).start()\n\
        threading.Event().wait()\n";
    let mut reaper = Reaper(Vec::new());
    let (mut child, rx, pipe_w) = spawn_counter(python, &["-S", "-c", script]);
    let pid = Pid::from_raw(child.id() as i32);
    let first = rx.recv_timeout(Duration::from_secs(5)).expect("no output");
    assert_eq!(first, 1);
    std::thread::sleep(Duration::from_millis(500));

    let tids = list_threads(pid).expect("threads");
    assert_eq!(tids.len(), 3, "{tids:?}");
    let mut tracees: Vec<Tracee> = tids
        .iter()
        .map(|t| Tracee::seize_and_interrupt(*t).expect("seize"))
        .collect();
    for t in &mut tracees {
        t.wait_stop(Some(Duration::from_secs(5))).expect("stop");
    }
    tracees.sort_by_key(|t| t.tid() != pid);
    let dumped = dump_threads(pid.as_raw(), &mut tracees).expect("dump");
    assert_eq!(dumped.threads.len(), 3);
    let restarts: Vec<_> = dumped.threads.iter().map(|t| t.syscall).collect();
    // Kill it; its traced threads are reaped here, then the leader.
    let _ = child.kill();
    for t in &tids[..] {
        if *t != pid {
            let _ = nix::sys::wait::waitpid(*t, Some(nix::sys::wait::WaitPidFlag::__WALL));
        }
    }
    drop(tracees);
    let _ = child.wait();
    let printed = drain(&rx);
    let last = *printed.last().expect("nothing printed");

    let pages = pages_of(&dumped);
    // A TID that is taken (this test's own PID) fails the rebuild at the
    // clone, with a typed error naming the thread, before any memory of the
    // image is mapped.
    let taken = std::process::id() as i32;
    let mut clash = dumped.threads.clone();
    clash[1].tid = taken;
    let mut husk = spawn_husk(&pipe_w, &mut reaper);
    let err = rebuild_process(&mut husk, &dumped.process, &clash, &dumped.vmas, &pages)
        .expect_err("a taken TID must fail");
    let msg = err.to_string();
    assert!(
        matches!(err, cr::restore::RestoreError::Thread { tid, .. } if tid == taken),
        "{msg}"
    );
    assert!(msg.contains("clone3") && msg.contains("EEXIST"), "{msg}");
    assert_eq!(list_threads(husk.tid()).expect("threads").len(), 1);
    drop(husk);

    let mut husk = spawn_husk(&pipe_w, &mut reaper);
    let husk_pid = husk.tid();
    assert!(!husk.options().trace_clone);
    let others = rebuild_process(
        &mut husk,
        &dumped.process,
        &dumped.threads,
        &dumped.vmas,
        &pages,
    )
    .unwrap_or_else(|e| panic!("rebuild_process: {e}"));
    assert_eq!(others.len(), 2);
    let mut now = vec![husk_pid];
    now.extend(others.iter().map(|t| t.tid()));
    now.sort();
    // The husk is the leader (its own PID); the others have their TIDs.
    let mut want: Vec<Pid> = dumped
        .threads
        .iter()
        .map(|t| Pid::from_raw(t.tid))
        .filter(|t| *t != pid)
        .chain([husk_pid])
        .collect();
    want.sort();
    assert_eq!(now, want, "the rebuilt threads' TIDs");
    assert_eq!(list_threads(husk_pid).expect("threads"), want);
    for t in others {
        t.detach().expect("detach a thread");
    }
    husk.detach().expect("detach");

    let mut next = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while next.len() < 5 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(n) => next.push(n),
            Err(e) => panic!(
                "the rebuilt threads printed only {next:?} after {last} ({e}); dumped in {restarts:?}"
            ),
        }
    }
    assert_eq!(next[0], last + 1, "{next:?} after {last}");
    for w in next.windows(2) {
        assert_eq!(w[1], w[0] + 1, "not a sequence: {next:?} after {last}");
    }
    assert_eq!(list_threads(husk_pid).expect("threads").len(), 3);
}

#[test]
fn rebuilt_memory_matches_the_dump_byte_for_byte() {
    require_env();
    let mut reaper = Reaper(Vec::new());
    // A known pattern in the shell's heap, then a long sleep in a child.
    let (child, rx, pipe_w) = spawn_shell(
        "p=CRPATTERN; i=0; while [ $i -lt 12 ]; do p=$p$p; i=$((i+1)); done; \
         echo ${#p}; while :; do sleep 1; done",
    );
    let pid = Pid::from_raw(child.id() as i32);
    let len = rx.recv_timeout(Duration::from_secs(5)).expect("no output");
    assert_eq!(len, 9 * 4096);
    std::thread::sleep(Duration::from_millis(100));

    let mut tracee = stop_shell(pid, false);
    let maps = maps_of(pid);
    let dumped = dump_process(pid.as_raw(), &mut tracee).expect("dump");
    let snap = snapshot(pid, &dumped);
    let sigs = signal_sets(pid);
    let heap = dumped
        .vmas
        .iter()
        .find(|v| v.kind == VmaKind::Heap)
        .expect("no heap");
    let _ = kill_shell(child, tracee);

    // Through the real page store: small chunks, zero pages as Zero runs.
    let owner = PageOwner::Mm {
        pid: dumped.process.pid,
    };
    let mut opts = PageWriterOptions::new(7);
    opts.chunk_size = 64 * 1024;
    let mut stream = Vec::new();
    let mut writer = PageWriter::new(&mut stream, opts).expect("page writer");
    for (addr, data) in &dumped.pages {
        writer.write_pages(owner, *addr, data).expect("write pages");
    }
    let (_, stats) = writer.finish().expect("finish pages");
    assert!(stats.chunks > 1, "{stats:?}");

    let mut husk = spawn_husk(&pipe_w, &mut reaper);
    let husk_pid = husk.tid();
    let prepared = prepare(&mut husk, &dumped.process, &dumped.threads, &dumped.vmas)
        .unwrap_or_else(|e| panic!("prepare: {e}"));
    let mut reader = PageReader::new(&stream[..]).expect("page reader");
    let mut zero_runs = 0;
    while let Some(chunk) = reader.next_chunk().expect("chunk") {
        let runs: Vec<Pages<'_>> = chunk
            .runs()
            .filter(|r| r.owner == owner)
            .map(Pages::from)
            .collect();
        zero_runs += runs.iter().filter(|r| r.data.is_none()).count();
        write_pages(prepared.pid, &dumped.vmas, &runs).unwrap_or_else(|e| panic!("pages: {e}"));
    }
    assert!(reader.is_complete());
    assert!(zero_runs > 0, "no zero runs: the test misses a case");
    let others = finish(&mut husk, prepared, &dumped.process, &dumped.threads)
        .unwrap_or_else(|e| panic!("finish: {e}"));
    assert!(others.is_empty(), "a single-threaded process got threads");
    let pages = pages_of(&dumped);

    // Every dumped page is in place...
    for p in &pages {
        let want = p.data.expect("data");
        check_bytes(husk_pid, p.vaddr, want, &dumped, "page run");
    }
    // ...and so is every other byte of every mapping.
    check_rebuilt(husk_pid, &maps, &snap, &dumped);
    // The pattern is in the rebuilt heap.
    let mut h = vec![0u8; (heap.end - heap.start) as usize];
    let n = read_memory(husk_pid, heap.start, &mut h).expect("heap");
    let needle = "CRPATTERN".repeat(64);
    assert!(
        h[..n].windows(needle.len()).any(|w| w == needle.as_bytes()),
        "the pattern is not in the rebuilt heap"
    );
    // The kernel's view of the mm: brk, stack, args, env, auxv, exe.
    let mm = dumped.process.mm.as_ref().expect("mm");
    let stat = std::fs::read_to_string(format!("/proc/{husk_pid}/stat")).expect("stat");
    let fields = cr::dump::procfs::parse_stat_mm(&stat).expect("stat mm fields");
    assert_eq!(
        fields,
        [
            mm.start_code,
            mm.end_code,
            mm.start_stack,
            mm.start_data,
            mm.end_data,
            mm.start_brk,
            mm.arg_start,
            mm.arg_end,
            mm.env_start,
            mm.env_end
        ]
    );
    let auxv = std::fs::read(format!("/proc/{husk_pid}/auxv")).expect("auxv");
    assert_eq!(auxv, mm.auxv.0);
    let exe = std::fs::read_link(format!("/proc/{husk_pid}/exe")).expect("exe");
    assert_eq!(exe.to_string_lossy().as_bytes(), mm.exe_file.as_bytes());
    let cmdline = std::fs::read(format!("/proc/{husk_pid}/cmdline")).expect("cmdline");
    assert!(
        cmdline.starts_with(b"/bin/busybox\0sh\0-c\0"),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let comm = std::fs::read_to_string(format!("/proc/{husk_pid}/comm")).expect("comm");
    assert_eq!(comm.trim_end(), "busybox");
    // Signal dispositions: the husk's own (cr's) handlers are all gone.
    assert_eq!(signal_sets(husk_pid), sigs);
    drop(husk);
    drop(reaper);
    drop(pipe_w);
}

#[test]
fn rebuilt_sleep_sleeps_only_the_time_it_had_left() {
    require_env();
    let mut reaper = Reaper(Vec::new());
    // The husk needs some fd 1; sleep writes nothing.
    let (_r, pipe_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
    let mut child = Command::new(BUSYBOX)
        .args(["sleep", "2"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning busybox sleep");
    let pid = Pid::from_raw(child.id() as i32);
    std::thread::sleep(Duration::from_millis(1200));
    let mut tracee = stop_shell(pid, false);
    let dumped = dump_process(pid.as_raw(), &mut tracee).expect("dump");
    let nr = match dumped.threads[0].syscall {
        SyscallRestart::RestartBlock { nr } => nr,
        other => panic!("busybox sleep was dumped in {other:?}, not in a restart-block sleep"),
    };
    assert!(
        nr == libc::SYS_clock_nanosleep as u64 || nr == libc::SYS_nanosleep as u64,
        "syscall {nr}"
    );
    let _ = child.kill();
    drop(tracee);
    let _ = child.wait();

    let mut husk = spawn_husk(&pipe_w, &mut reaper);
    let husk_pid = husk.tid();
    let pages = pages_of(&dumped);
    // Refused before anything is touched: the same thread twice, and no
    // thread group leader.
    let two = [dumped.threads[0].clone(), dumped.threads[0].clone()];
    let err = rebuild_process(&mut husk, &dumped.process, &two, &dumped.vmas, &pages)
        .expect_err("a duplicated thread must be refused");
    assert!(err.to_string().contains("appears twice"), "{err}");
    let mut orphan = dumped.threads[0].clone();
    orphan.tid += 1;
    let err = rebuild_process(&mut husk, &dumped.process, &[orphan], &dumped.vmas, &pages)
        .expect_err("a process without its leader must be refused");
    assert!(err.to_string().contains("thread group leader"), "{err}");
    rebuild_process(
        &mut husk,
        &dumped.process,
        &dumped.threads,
        &dumped.vmas,
        &pages,
    )
    .unwrap_or_else(|e| panic!("rebuild_process: {e}"));
    let started = Instant::now();
    husk.detach().expect("detach");
    let status = nix::sys::wait::waitpid(husk_pid, None).expect("waitpid");
    let slept = started.elapsed();
    reaper.forget(husk_pid);
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(husk_pid, 0),
        "the rebuilt sleep did not exit cleanly"
    );
    // About 0.8 s were left of the 2 s; sleeping the full 2 s again would
    // mean the remaining time was lost.
    assert!(
        slept > Duration::from_millis(500) && slept < Duration::from_millis(1500),
        "the rebuilt sleep slept {slept:?}, about 0.8 s were left"
    );
}

#[test]
fn rebuild_errors_name_the_step_the_vma_and_the_errno() {
    require_env();
    let mut reaper = Reaper(Vec::new());
    let (_r, pipe_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
    let mut child = Command::new(BUSYBOX)
        .args(["sleep", "5"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning busybox sleep");
    let pid = Pid::from_raw(child.id() as i32);
    std::thread::sleep(Duration::from_millis(100));
    let mut tracee = stop_shell(pid, false);
    let dumped = dump_process(pid.as_raw(), &mut tracee).expect("dump");
    let _ = child.kill();
    drop(tracee);
    let _ = child.wait();

    // A file that is gone: the error names the VMA, its file and ENOENT.
    let mut vmas = dumped.vmas.clone();
    let file = vmas
        .iter_mut()
        .find(|v| matches!(v.kind, VmaKind::File { .. }))
        .expect("no file mapping");
    let start = file.start;
    if let VmaKind::File { path, .. } = &mut file.kind {
        *path = "/nonexistent/cr-restore-test".into();
    }
    let mut husk = spawn_husk(&pipe_w, &mut reaper);
    let pages = pages_of(&dumped);
    let err = rebuild_process(&mut husk, &dumped.process, &dumped.threads, &vmas, &pages)
        .expect_err("a missing file must fail");
    let msg = err.to_string();
    assert!(
        matches!(err, cr::restore::RestoreError::MapVma { start: s, .. } if s == start),
        "{msg}"
    );
    assert!(
        msg.contains("/nonexistent/cr-restore-test") && msg.contains("ENOENT"),
        "{msg}"
    );
    assert!(msg.contains(&format!("{start:#x}")), "{msg}");
}
