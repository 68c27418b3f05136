//! Cost of the network namespace in a checkpoint and a restore: how long
//! `dump::netns::collect` (rtnetlink dumps, `/proc/sys/net` of the namespace
//! and of a fresh one, iptables-save twice; taken while the container is
//! frozen) and `restore::netns::apply` (devices, sysctls, addresses, routes,
//! rules, neighbours, iptables-restore twice) take, for a namespace with a
//! veth pair inside, 4 addresses, 2 routes, a rule, a neighbour and 3
//! iptables rules. Also the record's size.
//!
//! Run as root: `cargo bench --bench netns`.

use std::process::{Child, Command, Stdio};
use std::time::Instant;

use cr::dump::netns::{collect, survey};
use cr::restore::netns::apply;

/// A process in a new, empty network namespace (killed on drop).
struct Ns(Child);

impl Ns {
    fn new() -> Ns {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare -n sleep");
        // unshare execs sleep once the namespace exists.
        let pid = child.id();
        for _ in 0..200 {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ns(child)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    fn run(&self, cmd: &[&str]) {
        let out = Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid()))
            .args(cmd)
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the benchmark runs as root"
    );
    let source = Ns::new();
    for cmd in [
        "ip link set lo up",
        "ip link add v1 type veth peer name v2",
        "ip link set v1 up",
        "ip link set v2 up mtu 1400",
        "ip addr add 10.77.0.1/24 dev v1",
        "ip addr add 10.77.0.2/24 dev v1",
        "ip addr add 10.78.0.1/24 dev v2",
        "ip -6 addr add fd00:78::1/64 dev v2 nodad",
        "ip route add 172.31.9.0/24 via 10.77.0.254 dev v1",
        "ip route add 172.31.10.0/24 dev v2 table 100",
        "ip rule add from 10.78.0.0/24 lookup 100 priority 1000",
        "ip neigh add 10.77.0.77 lladdr 02:00:00:00:00:77 dev v1 nud permanent",
        "iptables -A INPUT -p tcp --dport 9999 -j DROP",
        "iptables -A OUTPUT -p udp --dport 53 -j ACCEPT",
        "ip6tables -A INPUT -p tcp --dport 9999 -j DROP",
        "sysctl -q -w net.ipv4.ip_forward=1",
        "sysctl -q -w net.core.somaxconn=1000",
    ] {
        source.run(&cmd.split(' ').collect::<Vec<_>>());
    }
    const ROUNDS: usize = 10;
    let mut surveys = Vec::new();
    let mut collects = Vec::new();
    let mut applies = Vec::new();
    let mut size = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        survey(source.pid()).expect("survey");
        surveys.push(ms(t));
        let t = Instant::now();
        let record = collect(source.pid()).expect("collect");
        collects.push(ms(t));
        size = postcard_len(&record);
        let target = Ns::new();
        let t = Instant::now();
        apply(&record, target.pid()).expect("apply");
        applies.push(ms(t));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "netns survey (before the freeze): median {:.1} ms over {ROUNDS}",
        median(&mut surveys)
    );
    println!(
        "netns collect (while frozen):     median {:.1} ms over {ROUNDS}",
        median(&mut collects)
    );
    println!(
        "netns apply (restore):            median {:.1} ms over {ROUNDS}",
        median(&mut applies)
    );
    println!("NetNamespace record: {size} bytes");
}

/// Bytes the record adds to a records stream (frame header included).
fn postcard_len(record: &cr_formats::schema::NetNamespace) -> usize {
    let manifest = cr_formats::schema::Manifest {
        image_id: 1,
        cr_version: String::new(),
        container: String::new(),
        config_toml: String::new(),
        created_unix_ns: 0,
        arch: cr_formats::schema::Arch::X86_64,
        page_size: 4096,
        kernel_release: String::new(),
        pages_codec: cr_formats::Codec::None,
    };
    let stream = |with: bool| {
        let mut buf = Vec::new();
        let mut writer = cr_formats::RecordWriter::new(&mut buf, &manifest).expect("writer");
        if with {
            writer
                .write(&cr_formats::schema::Record::NetNamespace(record.clone()))
                .expect("writing the record");
        }
        writer.finish().expect("finishing");
        buf.len()
    };
    stream(true) - stream(false)
}
