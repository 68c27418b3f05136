//! QUIC stream throughput on loopback through the blocking adapters the
//! engine uses (`BlockingSend` / `BlockingRecv`), beside a plain TCP
//! loopback copy of the same bytes measured in the same run (the limit).
//!
//! `cargo bench -p cr-transport --bench quic_stream` (BENCH_MIB to change
//! the 1024 MiB sent per case).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cr_transport::{
    BlockingRecv, BlockingSend, Endpoint, Identity, MigrationId, Peer, StreamHeader, StreamKind,
    TrustStore, Tuning,
};

const WRITE: usize = 1 << 20;

fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x2545f4914f6cdd1d;
    (0..WRITE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn tcp(total: u64, data: &[u8]) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; WRITE];
        let mut got = 0u64;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        got
    });
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    let mut left = total;
    while left > 0 {
        let n = (left as usize).min(data.len());
        s.write_all(&data[..n]).unwrap();
        left -= n as u64;
    }
    drop(s);
    assert_eq!(reader.join().unwrap(), total);
    start.elapsed()
}

/// `blocking`: engine threads through BlockingSend/BlockingRecv; otherwise
/// tasks writing static chunks straight to quinn (the bare stream).
fn quic(total: u64, streams: u16, data: &'static [u8], tuning: Tuning, blocking: bool) -> Duration {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (server, client) = {
        let _g = rt.enter();
        let sid = Identity::generate().unwrap();
        let cid = Identity::generate().unwrap();
        let server = Endpoint::listen(
            any,
            &sid,
            TrustStore::from_peers(vec![
                Peer::new("src", "127.0.0.1:1", cid.fingerprint()).unwrap()
            ])
            .unwrap(),
            tuning.clone(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap().to_string();
        let client = Endpoint::client(
            any,
            &cid,
            TrustStore::from_peers(vec![Peer::new("dst", &addr, sid.fingerprint()).unwrap()])
                .unwrap(),
            tuning,
        )
        .unwrap();
        (server, client)
    };
    let accept = {
        let server = server.clone();
        rt.spawn(async move { server.accept().await.unwrap().establish().await.unwrap() })
    };
    let (cs, _cc) = rt.block_on(client.connect("dst")).unwrap();
    let (ss, _sc) = rt.block_on(accept).unwrap();
    let id = MigrationId([1; 16]);
    let per = total / streams as u64;
    let start = Instant::now();
    if blocking {
        let readers: Vec<_> = (0..streams)
            .map(|_| {
                let (h, ss) = (rt.handle().clone(), ss.clone());
                std::thread::spawn(move || {
                    let (_, mut r) = BlockingRecv::accept(&h, &ss, id).unwrap();
                    let mut buf = vec![0u8; WRITE];
                    let mut got = 0u64;
                    loop {
                        let n = r.read(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        got += n as u64;
                    }
                    got
                })
            })
            .collect();
        let writers: Vec<_> = (0..streams)
            .map(|i| {
                let (h, cs) = (rt.handle().clone(), cs.clone());
                std::thread::spawn(move || {
                    let header = StreamHeader::new(StreamKind::Pages, id, i);
                    let mut w = BlockingSend::open(&h, &cs, header).unwrap();
                    let mut left = per;
                    while left > 0 {
                        let n = (left as usize).min(data.len());
                        w.write_all(&data[..n]).unwrap();
                        left -= n as u64;
                    }
                    w.finish().unwrap()
                })
            })
            .collect();
        for w in writers {
            assert_eq!(w.join().unwrap(), per);
        }
        for r in readers {
            assert_eq!(r.join().unwrap(), per);
        }
    } else {
        let readers: Vec<_> = (0..streams)
            .map(|_| {
                let ss = ss.clone();
                rt.spawn(async move {
                    let (_, mut r) = ss.accept_stream(id).await.unwrap();
                    let mut bufs = vec![bytes::Bytes::new(); 64];
                    let mut got = 0u64;
                    while let Some(n) = r.read_chunks(&mut bufs).await.unwrap() {
                        got += bufs[..n].iter().map(|b| b.len() as u64).sum::<u64>();
                    }
                    got
                })
            })
            .collect();
        let writers: Vec<_> = (0..streams)
            .map(|i| {
                let cs = cs.clone();
                rt.spawn(async move {
                    let header = StreamHeader::new(StreamKind::Pages, id, i);
                    let mut w = cs.open_stream(header).await.unwrap();
                    let mut left = per;
                    while left > 0 {
                        let n = (left as usize).min(data.len());
                        w.write_chunk(bytes::Bytes::from_static(&data[..n]))
                            .await
                            .unwrap();
                        left -= n as u64;
                    }
                    w.finish().unwrap();
                    w.stopped().await.unwrap();
                    per
                })
            })
            .collect();
        for w in writers {
            assert_eq!(rt.block_on(w).unwrap(), per);
        }
        for r in readers {
            assert_eq!(rt.block_on(r).unwrap(), per);
        }
    }
    let elapsed = start.elapsed();
    let stats = cs.connection().stats();
    eprintln!(
        "    (mtu {} B, {} datagrams in {} sends, {} lost packets, rtt {:?})",
        stats.path.current_mtu,
        stats.udp_tx.datagrams,
        stats.udp_tx.ios,
        stats.path.lost_packets,
        stats.path.rtt
    );
    cs.close(0, "done");
    elapsed
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid rusage.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `f` twice; the faster wall time and the CPU seconds per GiB of it.
fn measure(total: u64, f: &dyn Fn() -> Duration) -> (Duration, f64) {
    (0..2)
        .map(|_| {
            let cpu = cpu_time();
            let wall = f();
            let cpu = (cpu_time() - cpu).as_secs_f64() / (total as f64 / (1u64 << 30) as f64);
            (wall, cpu)
        })
        .min_by_key(|(wall, _)| *wall)
        .unwrap()
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn main() {
    let mib: u64 = std::env::var("BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let total = mib << 20;
    let data: &'static [u8] = Box::leak(pattern().into_boxed_slice());
    println!("quic_stream: {mib} MiB per case on 127.0.0.1, best of 2");
    println!("  (cpu = user+system seconds per GiB, both ends together)");
    let (tcp_time, tcp_cpu) = measure(total, &|| tcp(total, data));
    let limit = gbps(total, tcp_time);
    println!("  tcp loopback, 1 connection (limit)       {limit:6.2} GB/s  cpu {tcp_cpu:.2} s/GiB");
    // A 1500-byte Ethernet path, and the default (MTU discovery up to
    // MAX_MTU, which loopback allows).
    let lan = Tuning {
        mtu_upper_bound: 1452,
        ..Tuning::default()
    };
    let jumbo = Tuning::default();
    let medium = Tuning {
        stream_receive_window: 16 << 20,
        receive_window: 64 << 20,
        send_window: 64 << 20,
        ..Tuning::default()
    };
    let small = Tuning {
        stream_receive_window: 1 << 20,
        receive_window: 4 << 20,
        send_window: 4 << 20,
        ..Tuning::default()
    };
    let only = std::env::var("BENCH_ONLY").ok();
    for (label, streams, tuning, blocking) in [
        ("quic bare, 1 stream, mtu 1452", 1, lan.clone(), false),
        ("quic blocking, 1 stream, mtu 1452", 1, lan.clone(), true),
        ("quic blocking, 3 streams, mtu 1452", 3, lan, true),
        ("quic bare, 1 stream, default", 1, jumbo.clone(), false),
        ("quic blocking, 1 stream, default", 1, jumbo.clone(), true),
        ("quic blocking, 3 streams, default", 3, jumbo, true),
        ("quic blocking, 1 stream, 16 MiB windows", 1, medium, true),
        ("quic blocking, 1 stream, 1 MiB windows", 1, small, true),
    ] {
        if only.as_deref().is_some_and(|o| !label.contains(o)) {
            continue;
        }
        let (t, cpu) = measure(total, &|| {
            quic(total, streams, data, tuning.clone(), blocking)
        });
        let g = gbps(total, t);
        println!(
            "  {label:<40} {g:6.2} GB/s  cpu {cpu:.2} s/GiB  ({:.2} of tcp)",
            g / limit
        );
    }
}
