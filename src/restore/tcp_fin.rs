//! The peer's FIN of a half-closed TCP connection (`CLOSE_WAIT`), delivered
//! again to the rebuilt socket (part of the inet kind: restore::inet).
//!
//! Repair mode can refill the receive queue but not mark a FIN in it, so
//! PID 1 sends the FIN the peer once sent, from the peer's address, on a
//! raw socket of the container's namespace, as CRIU does:
//!
//! ```text
//!  IPv4 (20 bytes) or IPv6 (40 bytes) header: peer -> local, TCP
//!  TCP header (20 bytes):
//!   0      2      4        8        12   13    14      16     18   20
//!   | sport| dport| seq     | ack     |0x50|0x11 | window| csum | 0 |
//!   peer   local  rcv_seq-1 snd_una        FIN+ACK  the peer's, unscaled
//! ```
//!
//! The packet carries [`crate::netlock::BYPASS_MARK`], the one mark the
//! network lock lets through: it goes out and comes back in on loopback
//! while every other packet is still dropped. The socket is in
//! `CLOSE_WAIT` when [`inject`] returns.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use cr_formats::schema::TcpConnection;

use crate::dump::inet::set_int;

/// The one's complement sum of `data` (16-bit words, big-endian).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The addresses as one family: IPv4-mapped IPv6 addresses (a dual-stack
/// socket) travel as IPv4.
fn family(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// The FIN+ACK segment and its IP header, `peer` -> `local`.
pub fn segment(local: SocketAddr, peer: SocketAddr, c: &TcpConnection) -> io::Result<Vec<u8>> {
    let seq = c.rcv_seq.wrapping_sub(1);
    let ack = c.snd_seq.wrapping_sub(c.send_queue.0.len() as u32);
    let shift = c.wscale.map_or(0, |(snd, _)| u32::from(snd));
    let window = (c.window.snd_wnd >> shift).min(0xffff) as u16;
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&peer.port().to_be_bytes());
    tcp.extend_from_slice(&local.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[0x50, 0x11]);
    tcp.extend_from_slice(&window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    let len = tcp.len() as u16;
    let mut out = Vec::with_capacity(60);
    match (family(peer.ip()), family(local.ip())) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let pseudo = [
                &src.octets()[..],
                &dst.octets()[..],
                &[0, 6],
                &len.to_be_bytes(),
            ]
            .concat();
            let sum = checksum(&[&pseudo, &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(20 + len).to_be_bytes());
            ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            let sum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            out.extend_from_slice(&ip);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let pseudo = [
                &src.octets()[..],
                &dst.octets()[..],
                &u32::from(len).to_be_bytes(),
                &[0, 0, 0, 6],
            ]
            .concat();
            let sum = checksum(&[&pseudo, &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&[6, 64]);
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        _ => {
            return Err(io::Error::other(format!(
                "{peer} and {local} are of different families"
            )))
        }
    }
    out.extend_from_slice(&tcp);
    Ok(out)
}

/// Sends the peer's FIN to the socket `local` <- `peer` and waits until the
/// kernel has taken it (the socket `s` is in `CLOSE_WAIT`).
pub fn inject(s: i32, local: SocketAddr, peer: SocketAddr, c: &TcpConnection) -> io::Result<()> {
    let packet = segment(local, peer, c)?;
    let v4 = packet[0] >> 4 == 4;
    let domain = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket takes plain integers and returns a new fd or -1.
    let raw = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket just returned this fd; nothing else owns it.
    let raw = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int(
        raw.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_MARK,
        crate::netlock::BYPASS_MARK as i32,
    )?;
    let dst = match family(local.ip()) {
        IpAddr::V4(a) => SocketAddr::new(IpAddr::V4(a), 0),
        IpAddr::V6(a) => SocketAddr::new(IpAddr::V6(a), 0),
    };
    let sent = match dst {
        SocketAddr::V4(a) => {
            let sa = nix::sys::socket::SockaddrIn::from(a);
            nix::sys::socket::sendto(
                raw.as_raw_fd(),
                &packet,
                &sa,
                nix::sys::socket::MsgFlags::empty(),
            )
        }
        SocketAddr::V6(a) => {
            let sa = nix::sys::socket::SockaddrIn6::from(a);
            nix::sys::socket::sendto(
                raw.as_raw_fd(),
                &packet,
                &sa,
                nix::sys::socket::MsgFlags::empty(),
            )
        }
    };
    sent.map_err(io::Error::from)?;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut info = [0u8; 8];
        crate::dump::inet::get_bytes(s, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
        if info[0] == crate::dump::inet::sys::TCP_CLOSE_WAIT {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "the socket is in TCP state {} 2 s after the FIN, not CLOSE_WAIT",
                info[0]
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_of_a_known_header_verifies() {
        // An IPv4 header whose checksum field holds the right sum sums to 0.
        let ip = [
            0x45u8, 0, 0, 0x28, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let sum = checksum(&[&ip]);
        let mut with = ip;
        with[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum(&[&with]), 0);
        // Odd lengths are padded with a zero byte, split parts sum as one.
        assert_eq!(checksum(&[&[1, 2, 3]]), checksum(&[&[1], &[2, 3, 0]]));
    }
}
