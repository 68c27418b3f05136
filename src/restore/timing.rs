//! Phase timestamps of one restore, for the supervisor's log and the
//! checkpoint benchmark's breakdown.
//!
//! The supervisor calls [`mark`] as each phase ends (image loaded, husks
//! ready, memory laid out, pages written, processes finished, resumed);
//! [`summary`] renders them as one line, `restore phases (ms): NAME +WALL
//! [cpu CPU] ...`: the wall-clock milliseconds since the previous mark and
//! the CPU time the supervisor (all its threads) used meanwhile. The CPU
//! figure tells a slow phase from a machine that is busy with other work.

use std::sync::Mutex;
use std::time::Instant;

struct Mark {
    name: &'static str,
    at: Instant,
    cpu_ms: f64,
}

static MARKS: Mutex<Vec<Mark>> = Mutex::new(Vec::new());
/// Lines other processes of the restore reported (PID 1's file timings).
static NOTES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Adds `line` to the next [`summary`], after the marks.
pub fn note(line: String) {
    if let Ok(mut notes) = NOTES.lock() {
        notes.push(line);
    }
}

/// User plus system time of this process (every thread), in ms.
fn cpu_ms() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage struct it is given; it lives on
    // this stack frame and was zero-initialised.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: getrusage succeeded and wrote the whole struct (and it was
    // zeroed before anyway).
    let usage = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// Records that phase `name` ended now.
pub fn mark(name: &'static str) {
    let mark = Mark {
        name,
        at: Instant::now(),
        cpu_ms: cpu_ms(),
    };
    if let Ok(mut marks) = MARKS.lock() {
        marks.push(mark);
    }
}

/// One line with every mark since the first, then forgets them.
pub fn summary() -> String {
    let Ok(mut marks) = MARKS.lock() else {
        return String::new();
    };
    let mut line = String::from("restore phases (ms):");
    let mut prev: Option<(Instant, f64)> = None;
    for m in marks.iter() {
        let (wall, cpu) = prev.map_or((0.0, 0.0), |(at, cpu)| {
            (m.at.duration_since(at).as_secs_f64() * 1e3, m.cpu_ms - cpu)
        });
        line.push_str(&format!(" {} +{wall:.1} [cpu {cpu:.1}]", m.name));
        prev = Some((m.at, m.cpu_ms));
    }
    if let (Some(first), Some(last)) = (marks.first(), marks.last()) {
        let total = last.at.duration_since(first.at).as_secs_f64() * 1e3;
        line.push_str(&format!(", total {total:.1}"));
    }
    marks.clear();
    if let Ok(mut notes) = NOTES.lock() {
        for n in notes.drain(..) {
            line.push_str("; ");
            line.push_str(&n);
        }
    }
    line
}
