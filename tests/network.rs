//! Container networking on the real kernel (run as root).
//!
//! Each test makes its own "host": a process in a fresh network namespace
//! (`unshare --net sleep`), which the test thread enters with `setns` while
//! it calls into `cr` (cr treats the caller's namespace as the host). The
//! bridge, its /24 and the containers' namespaces live only inside
//! namespaces the test created, and guards delete the bridge and kill the
//! processes even when an assertion fails.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use cr::container::config::{Ipv4Cidr, MacAddr, NetConfig};
use cr::container::network::{
    bridge_addresses, link_exists, setup, teardown, veth_name, NetworkError, MAX_IFNAME_LEN,
};
use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use nix::unistd::Pid;
use serde_json::Value;

/// A sleeping process alone in a new network namespace; killed on drop.
struct NetnsProcess {
    child: Child,
}

impl NetnsProcess {
    fn spawn() -> Self {
        let before = fs::read_link("/proc/thread-self/ns/net").expect("reading own netns");
        let child = Command::new("unshare")
            .args(["--net", "sleep", "120"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning `unshare --net sleep` (util-linux unshare is required)");
        let process = NetnsProcess { child };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(ns) = fs::read_link(process.ns_path()) {
                if ns != before {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "unshare --net did not enter a new netns"
            );
            sleep(Duration::from_millis(5));
        }
        process
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.child.id()))
    }

    /// Runs a command inside this process's network namespace.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.ns_path().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running nsenter")
    }

    fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["ip", "-j"];
        full.extend_from_slice(args);
        let out = self.run(&full);
        assert!(out.status.success(), "{full:?}: {}", stderr(&out));
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Value::Array(Vec::new());
        }
        serde_json::from_slice(&out.stdout).expect("parsing ip -j output")
    }

    /// `ping -c1 -W1` from this namespace, a few tries (the first may race
    /// with neighbour resolution).
    fn pings(&self, target: Ipv4Addr) -> bool {
        let target = target.to_string();
        (0..3).any(|_| {
            self.run(&["busybox", "ping", "-c1", "-W1", &target])
                .status
                .success()
        })
    }
}

impl Drop for NetnsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test thread, inside the "host" namespace; returns to its own on drop.
struct InHost {
    home: File,
}

impl InHost {
    fn enter(host: &NetnsProcess) -> Self {
        let home = File::open("/proc/thread-self/ns/net").expect("opening own netns");
        let target = File::open(host.ns_path()).expect("opening host netns");
        setns(&target, CloneFlags::CLONE_NEWNET).expect("entering host netns");
        InHost { home }
    }
}

impl Drop for InHost {
    fn drop(&mut self) {
        setns(&self.home, CloneFlags::CLONE_NEWNET).expect("returning to own netns");
    }
}

/// Deletes the test's bridge on drop (the namespace would take it with it
/// anyway; this keeps the rule "remove what you created" explicit).
struct BridgeGuard<'a> {
    host: &'a NetnsProcess,
    name: String,
}

impl Drop for BridgeGuard<'_> {
    fn drop(&mut self) {
        let _ = self.host.run(&["ip", "link", "del", &self.name]);
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A unique bridge name and /24 for test number `n`.
fn bridge_and_prefix(n: u8) -> (String, [u8; 3]) {
    let pid = std::process::id();
    let name = format!("crtb{pid}{n}");
    assert!(name.len() <= MAX_IFNAME_LEN);
    (name, [10, 200 + n, (pid % 250) as u8])
}

fn net_config(bridge: &str, prefix: [u8; 3], host: u8, veth: &str) -> NetConfig {
    NetConfig {
        bridge: bridge.to_string(),
        address: Ipv4Cidr {
            addr: Ipv4Addr::new(prefix[0], prefix[1], prefix[2], host),
            prefix: 24,
        },
        mac: MacAddr([0x02, 0xc7, prefix[1], prefix[2], 0, host]),
        veth: veth.to_string(),
    }
}

/// Everything one test needs: a host namespace entered by this thread and a
/// bridge guard. Field order is drop order: leave the host, delete the
/// bridge, kill the host process.
struct Fixture<'a> {
    _in_host: InHost,
    _bridge: BridgeGuard<'a>,
    bridge: String,
    prefix: [u8; 3],
}

fn fixture(host: &NetnsProcess, n: u8) -> Fixture<'_> {
    let (bridge, prefix) = bridge_and_prefix(n);
    Fixture {
        _bridge: BridgeGuard {
            host,
            name: bridge.clone(),
        },
        _in_host: InHost::enter(host),
        bridge,
        prefix,
    }
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|v| v == flag))
}

/// Asserts the container side: eth0 with the address and MAC, up; lo up;
/// default route via `gateway` on eth0.
fn assert_container_side(container: &NetnsProcess, net: &NetConfig, gateway: Ipv4Addr) {
    let links = container.ip_json(&["addr", "show", "dev", "eth0"]);
    let eth0 = &links[0];
    assert_eq!(eth0["address"], net.mac.to_string(), "{eth0}");
    assert!(has_flag(eth0, "UP"), "{eth0}");
    let inet: Vec<_> = eth0["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .filter(|a| a["family"] == "inet")
        .collect();
    assert_eq!(inet.len(), 1, "{eth0}");
    assert_eq!(inet[0]["local"], net.address.addr.to_string());
    assert_eq!(inet[0]["prefixlen"], u64::from(net.address.prefix));

    let lo = container.ip_json(&["link", "show", "dev", "lo"]);
    assert!(has_flag(&lo[0], "UP"), "{lo}");

    let routes = container.ip_json(&["route", "show", "default"]);
    assert_eq!(routes.as_array().map(Vec::len), Some(1), "{routes}");
    assert_eq!(routes[0]["gateway"], gateway.to_string(), "{routes}");
    assert_eq!(routes[0]["dev"], "eth0", "{routes}");
}

#[test]
fn setup_configures_both_sides_and_host_reaches_container() {
    let host = NetnsProcess::spawn();
    let container = NetnsProcess::spawn();
    let f = fixture(&host, 0);
    let veth = veth_name("/test/root", &format!("c-{}", std::process::id()));
    let net = net_config(&f.bridge, f.prefix, 10, &veth);

    setup(&net, container.pid()).expect("setup");

    let gateway = net.address.first_host();
    assert_eq!(
        bridge_addresses(&f.bridge).unwrap(),
        vec![Ipv4Cidr {
            addr: gateway,
            prefix: 24
        }]
    );
    assert!(link_exists(&veth).unwrap());
    let bridge_link = host.ip_json(&["link", "show", "dev", &f.bridge]);
    assert!(has_flag(&bridge_link[0], "UP"), "{bridge_link}");
    let veth_link = host.ip_json(&["link", "show", "dev", &veth]);
    assert_eq!(veth_link[0]["master"], f.bridge.as_str(), "{veth_link}");
    assert!(has_flag(&veth_link[0], "UP"), "{veth_link}");
    // The temporary peer name is gone from the host.
    let all = host.ip_json(&["link", "show"]);
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(3),
        "lo, bridge, veth: {all}"
    );

    assert_container_side(&container, &net, gateway);
    assert!(host.pings(net.address.addr), "host cannot ping container");
    assert!(container.pings(gateway), "container cannot ping gateway");

    teardown(&net).expect("teardown");
    assert!(!link_exists(&veth).unwrap());
    let after = container.ip_json(&["link", "show"]);
    assert_eq!(
        after.as_array().map(Vec::len),
        Some(1),
        "only lo left: {after}"
    );
    // The bridge and its address stay for other containers.
    assert_eq!(bridge_addresses(&f.bridge).unwrap().len(), 1);
}

#[test]
fn two_containers_on_one_bridge_reach_each_other() {
    let host = NetnsProcess::spawn();
    let a = NetnsProcess::spawn();
    let b = NetnsProcess::spawn();
    let f = fixture(&host, 1);
    let net_a = net_config(&f.bridge, f.prefix, 10, &veth_name("/t", "a"));
    let net_b = net_config(&f.bridge, f.prefix, 11, &veth_name("/t", "b"));

    setup(&net_a, a.pid()).expect("setup a");
    let bridge_mac = || host.ip_json(&["link", "show", "dev", &f.bridge])[0]["address"].clone();
    let mac_before = bridge_mac();
    setup(&net_b, b.pid()).expect("setup b");
    // cr gives the bridges it creates a fixed MAC: ports do not change it.
    assert_eq!(bridge_mac(), mac_before);

    // One gateway address, shared.
    assert_eq!(bridge_addresses(&f.bridge).unwrap().len(), 1);
    assert_container_side(&b, &net_b, net_a.address.first_host());
    assert!(a.pings(net_b.address.addr), "a cannot ping b");
    assert!(b.pings(net_a.address.addr), "b cannot ping a");
    // b resolved a's configured MAC.
    let neigh = b.ip_json(&["neigh", "show", &net_a.address.addr.to_string()]);
    assert_eq!(neigh[0]["lladdr"], net_a.mac.to_string(), "{neigh}");

    teardown(&net_a).unwrap();
    teardown(&net_b).unwrap();
}

#[test]
fn existing_bridge_address_in_prefix_is_the_gateway() {
    let host = NetnsProcess::spawn();
    let container = NetnsProcess::spawn();
    let f = fixture(&host, 2);
    let [p0, p1, p2] = f.prefix;
    let own = format!("{p0}.{p1}.{p2}.254/24");
    for args in [
        vec!["ip", "link", "add", &f.bridge, "type", "bridge"],
        vec!["ip", "addr", "add", &own, "dev", &f.bridge],
    ] {
        let out = host.run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let net = net_config(&f.bridge, f.prefix, 10, &veth_name("/t", "existing"));

    setup(&net, container.pid()).expect("setup");

    let gateway = Ipv4Addr::new(p0, p1, p2, 254);
    assert_eq!(
        bridge_addresses(&f.bridge).unwrap(),
        vec![Ipv4Cidr {
            addr: gateway,
            prefix: 24
        }],
        "no second address may be added"
    );
    assert_container_side(&container, &net, gateway);
    assert!(container.pings(gateway));
    teardown(&net).unwrap();
}

#[test]
fn duplicate_veth_name_fails_and_leaves_first_intact() {
    let host = NetnsProcess::spawn();
    let first = NetnsProcess::spawn();
    let second = NetnsProcess::spawn();
    let f = fixture(&host, 3);
    let veth = veth_name("/t", "dup");
    let net1 = net_config(&f.bridge, f.prefix, 10, &veth);
    let net2 = net_config(&f.bridge, f.prefix, 11, &veth);

    setup(&net1, first.pid()).expect("first setup");
    let err = setup(&net2, second.pid()).expect_err("second setup with the same veth name");

    assert_eq!(err.errno(), Some(Errno::EEXIST), "{err}");
    let text = err.to_string();
    assert!(text.contains("creating veth pair"), "{text}");
    assert!(text.contains(&veth), "{text}");
    assert!(text.contains("File exists"), "{text}");
    // The first container is untouched, the second got nothing, and no
    // temporary peer is left on the host.
    assert!(link_exists(&veth).unwrap());
    assert_container_side(&first, &net1, net1.address.first_host());
    assert!(host.pings(net1.address.addr));
    let second_links = second.ip_json(&["link", "show"]);
    assert_eq!(
        second_links.as_array().map(Vec::len),
        Some(1),
        "{second_links}"
    );
    let all = host.ip_json(&["link", "show"]);
    assert_eq!(all.as_array().map(Vec::len), Some(3), "{all}");

    teardown(&net1).unwrap();
}

#[test]
fn refused_pair_leaves_nothing_behind() {
    let host = NetnsProcess::spawn();
    let container = NetnsProcess::spawn();
    let f = fixture(&host, 4);
    let veth = veth_name("/t", "badmac");
    let mut net = net_config(&f.bridge, f.prefix, 10, &veth);
    net.mac = MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]); // multicast: refused

    let err = setup(&net, container.pid()).expect_err("multicast MAC must fail");

    let text = err.to_string();
    assert!(text.contains("creating veth pair"), "{text}");
    assert!(text.contains(&veth), "{text}");
    assert_eq!(err.errno(), Some(Errno::EADDRNOTAVAIL), "{text}");
    assert!(!link_exists(&veth).unwrap(), "veth left behind");
    let links = container.ip_json(&["link", "show"]);
    assert_eq!(links.as_array().map(Vec::len), Some(1), "{links}");
    // The bridge (shared) stays.
    assert!(link_exists(&f.bridge).unwrap());
}

#[test]
fn setup_for_a_missing_process_fails_before_creating_anything() {
    let host = NetnsProcess::spawn();
    let f = fixture(&host, 5);
    let veth = veth_name("/t", "nopid");
    let net = net_config(&f.bridge, f.prefix, 10, &veth);
    // Pid beyond pid_max (4194304 at most): never a live process.
    let err = setup(&net, Pid::from_raw(i32::MAX)).expect_err("no such process");
    assert!(
        matches!(err, NetworkError::Namespace { .. }),
        "{err}: {err:?}"
    );
    assert!(!link_exists(&veth).unwrap());
}

#[test]
fn address_equal_to_gateway_is_refused() {
    let host = NetnsProcess::spawn();
    let container = NetnsProcess::spawn();
    let f = fixture(&host, 6);
    let veth = veth_name("/t", "gw");
    let net = net_config(&f.bridge, f.prefix, 1, &veth);
    let err = setup(&net, container.pid()).expect_err("x.x.x.1 is the gateway");
    assert!(
        matches!(err, NetworkError::AddressIsGateway { .. }),
        "{err}"
    );
    assert!(!link_exists(&veth).unwrap());
    assert!(err.to_string().contains(&net.address.to_string()), "{err}");
    assert!(
        bridge_addresses(&f.bridge).unwrap().is_empty(),
        "refused before adding the gateway"
    );
}

#[test]
fn teardown_is_idempotent() {
    let host = NetnsProcess::spawn();
    let container = NetnsProcess::spawn();
    let f = fixture(&host, 7);
    let veth = veth_name("/t", "idem");
    let net = net_config(&f.bridge, f.prefix, 10, &veth);

    // Never set up: nothing to remove.
    teardown(&net).expect("teardown of a missing veth");
    setup(&net, container.pid()).expect("setup");
    teardown(&net).expect("first teardown");
    teardown(&net).expect("second teardown");
    assert!(!link_exists(&veth).unwrap());
    // The container's namespace lost eth0 with it.
    let links = container.ip_json(&["link", "show"]);
    assert_eq!(links.as_array().map(Vec::len), Some(1), "{links}");
}

#[test]
fn bridge_addresses_of_missing_device_names_it() {
    let host = NetnsProcess::spawn();
    let _in_host = InHost::enter(&host);
    let err = bridge_addresses("crtbmissing").expect_err("no such device");
    assert_eq!(err.errno(), Some(Errno::ENODEV));
    assert!(err.to_string().contains("crtbmissing"), "{err}");
    assert!(!link_exists("crtbmissing").unwrap());
}

#[test]
fn veth_name_fits_in_ifnamsiz() {
    let long = "x".repeat(63);
    for (root, name) in [("/var/lib/cr", "web"), ("/", &long[..]), (&long[..], "a")] {
        let v = veth_name(root, name);
        assert!(v.len() <= MAX_IFNAME_LEN, "{v}");
        assert!(v.starts_with("crv"));
    }
    assert_ne!(veth_name("/a", "b"), veth_name("/a", "c"));
    assert_ne!(veth_name("/a", "b"), veth_name("/b", "b"));
}
