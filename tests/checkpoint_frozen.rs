//! `checkpoint_frozen` (what a migration's source does), called in this
//! test's own process: a checkpoint that keeps the container frozen until
//! its holder thaws or stops it. A file of its own: the library seizes and
//! reaps tasks here, which must not meet other tests' child processes.

mod common;

use std::time::Duration;

use common::*;

const COUNTER: &[&str] = &[
    "/bin/sh",
    "-c",
    "i=0; while :; do i=$((i+1)); echo $i > /root/count; sleep 0.1; done",
];

fn count(h: &TestHost, name: &str) -> u64 {
    let out = h.cr(&["exec", name, "--", "cat", "/root/count"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn a_checkpoint_kept_frozen_is_thawed_or_stopped_by_its_holder() {
    use cr::dump::checkpoint::{checkpoint_frozen, CheckpointOptions};
    let h = TestHost::new();
    h.run("held", TestImage::Busybox, None, &[], COUNTER);
    assert!(wait_until(Duration::from_secs(5), || count(&h, "held") >= 3));
    let host = cr::host::Host::open(&h.root).expect("host");
    let container = cr::container::Container::open(&host, "held").expect("container");
    let opts = |dir: &str| CheckpointOptions {
        image_dir: h.root.join(dir),
        leave_running: false,
        keep_frozen: true,
        compression: cr_formats::Compression::None,
        pre_copy_rounds: 2,
        page_sink: None,
    };
    let file = h.root.join("containers/held/upper/root/count");
    let read = || std::fs::read_to_string(&file).unwrap_or_default();

    // Thawed: it goes on where it was.
    let (summary, frozen) = checkpoint_frozen(&container, &opts("img-a")).expect("checkpoint");
    assert!(summary.image.join("records.img").is_file());
    // Held by ptrace stops (the dump thaws the freezer to take them).
    let at = read();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(read(), at, "a task ran while held frozen");
    frozen.thaw().expect("thaw");
    assert_eq!(h.state("held"), "running");
    assert!(wait_until(Duration::from_secs(5), || read() != at));

    // Dropped without a decision: thawed too (a failed migration).
    let (_, frozen) = checkpoint_frozen(&container, &opts("img-b")).expect("checkpoint");
    drop(frozen);
    assert_eq!(h.state("held"), "running");

    // Stopped: the image brings it back.
    let (summary, frozen) = checkpoint_frozen(&container, &opts("img-c")).expect("checkpoint");
    frozen.stop(&container).expect("stop");
    assert_eq!(h.state("held"), "stopped");
    let image = summary.image.to_str().expect("utf-8").to_string();
    h.ok(&["restore", "held", "--image", &image]);
    assert_eq!(h.state("held"), "running");
}
