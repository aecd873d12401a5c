//! Ports for tests that share the host with other programs: nothing here is a fixed port.
//!
//! The daemon itself listens on port 0 and says in its log what it bound (see
//! [`super::Daemon::udp_addr`]). Peers that cannot report a port (SIPp `-p` and `-mp`, Kamailio
//! `-l`, baresip's `sip_listen`, `ctrl_tcp_listen` and `rtp_ports`) and RTP ranges get ports
//! found free at run time: taken from a block below the kernel's ephemeral range (so no socket
//! bound to port 0 and no outgoing connection is handed one of them meanwhile), each checked by
//! binding it on the wildcard address (which fails when any address of the host has the port),
//! then released for the peer to bind. The blocks start at a random place and move on for every
//! request, so parallel tests (and other test processes) rarely even try the same ports.
//!
//! A port can still be taken between the check and the peer's bind. A peer that cannot bind
//! exits; [`wait_until_bound`] fails the test with that peer's log and says why, and makes sure
//! that what answers on the address is the peer's own socket, never another program's.
//!
//! `tests/occupy_ports.py` plays the other programs: run `cargo test` while it holds the
//! addresses the tests once hard-coded and answers every SIP request with a forged 200.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The lowest port handed out.
const FIRST: u16 = 20_000;
/// How long a peer may take to bind its socket.
pub const BIND_DEADLINE: Duration = Duration::from_secs(10);

/// The first port of the kernel's ephemeral range (what port 0 and connect() draw from), or
/// 32768 when it cannot be read; ports are handed out below it.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768u16)
        .clamp(FIRST + 4_000, 32_768)
}

/// Where the next block starts, as an offset from [`FIRST`]; `u32::MAX` until first used.
static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);

/// The first port of the next block of `len` ports (even, so that an RTP range may start
/// there).
fn next_block(len: u16) -> u16 {
    let span = u32::from(ephemeral_start() - FIRST);
    let len = u32::from(len).next_multiple_of(2);
    assert!(len < span / 2, "a block of {len} ports is too large");
    if CURSOR.load(Ordering::SeqCst) == u32::MAX {
        // A random start: another test process picks elsewhere.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let seed = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
        let _ = CURSOR.compare_exchange(u32::MAX, seed % span, Ordering::SeqCst, Ordering::SeqCst);
    }
    let offset = CURSOR.fetch_add(len, Ordering::SeqCst) % (span - len);
    FIRST + u16::try_from(offset & !1).unwrap()
}

fn udp_free(port: u16) -> Option<UdpSocket> {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).ok()
}

fn tcp_free(port: u16) -> Option<TcpListener> {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).ok()
}

/// `len` consecutive ports (the first even) that no socket of the host holds for UDP at the
/// time of the call: for RTP ranges (the daemon's `rtp.port_range`, baresip's `rtp_ports`).
/// On a host so busy that no such block is left, the block with the fewest ports in use (at
/// most a tenth) is taken instead: the daemon skips the ports it cannot bind.
pub fn free_udp_range(len: u16) -> (u16, u16) {
    let span = ephemeral_start() - FIRST;
    let mut best: Option<(usize, u16)> = None;
    // Twice round the whole span at most.
    for _ in 0..2 * (span / len.max(2)).max(1) {
        let first = next_block(len);
        // All held at once while checking, then released together.
        let held: Vec<Option<UdpSocket>> = (first..first + len).map(udp_free).collect();
        let taken = held.iter().filter(|s| s.is_none()).count();
        if taken == 0 {
            return (first, first + len - 1);
        }
        if best.is_none_or(|(fewest, _)| taken < fewest) {
            best = Some((taken, first));
        }
    }
    match best {
        Some((taken, first)) if taken <= usize::from(len / 10) => (first, first + len - 1),
        _ => panic!(
            "no {len} consecutive UDP ports in {FIRST}-{} with at most a tenth in use",
            ephemeral_start()
        ),
    }
}

/// A port no socket of the host holds for UDP nor TCP: for a SIP peer that listens on both
/// (Kamailio, SIPp, baresip).
pub fn free_udp_tcp_port() -> u16 {
    for _ in 0..ephemeral_start() - FIRST {
        let port = next_block(2);
        if let (Some(_udp), Some(_tcp)) = (udp_free(port), tcp_free(port)) {
            return port;
        }
    }
    panic!("no free UDP and TCP port in {FIRST}-{}", ephemeral_start());
}

/// A port no socket of the host holds for TCP (baresip's ctrl_tcp, the admin endpoint).
pub fn free_tcp_port() -> u16 {
    for _ in 0..ephemeral_start() - FIRST {
        let port = next_block(2);
        if tcp_free(port).is_some() {
            return port;
        }
    }
    panic!("no free TCP port in {FIRST}-{}", ephemeral_start());
}

/// A port for SIPp's `-mp`: SIPp binds it and the port two above (its video socket), and its
/// `rtp_stream` sockets count up from it past ports in use. The first four are checked free;
/// the block of 64 is kept from other requests of this process.
pub fn free_sipp_media_port() -> u16 {
    for _ in 0..(ephemeral_start() - FIRST) / 32 {
        let first = next_block(64);
        let held: Option<Vec<UdpSocket>> = (first..first + 4).map(udp_free).collect();
        if held.is_some() {
            return first;
        }
    }
    panic!(
        "no free UDP ports for SIPp's media in {FIRST}-{}",
        ephemeral_start()
    );
}

// --- who holds an address ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    Tcp,
}

/// An address in /proc/net/{udp,tcp}{,6}: hex words in the kernel's byte order, then the port.
pub fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(ip.get(i * 8..i * 8 + 8)?)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The inodes of the sockets bound to `addr` (or to the wildcard on its port); for TCP only
/// listening ones.
fn socket_inodes(proto: Proto, addr: SocketAddr) -> HashSet<u64> {
    let files: &[&str] = match proto {
        Proto::Udp => &["/proc/net/udp", "/proc/net/udp6"],
        Proto::Tcp => &["/proc/net/tcp", "/proc/net/tcp6"],
    };
    let mut inodes = HashSet::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (
                fields.get(1).and_then(|a| parse_proc_addr(a)),
                fields.get(3),
                fields.get(9).and_then(|i| i.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if proto == Proto::Tcp && *state != "0A" {
                continue;
            }
            let ip_matches = match (local.ip(), addr.ip()) {
                (l, a) if l == a || l.is_unspecified() => true,
                (IpAddr::V6(l), IpAddr::V4(a)) => l.to_ipv4_mapped() == Some(a),
                _ => false,
            };
            if local.port() == addr.port() && ip_matches {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// `pid` and every process below it (Kamailio's workers hold its sockets too).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((child, ppid));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// The socket inodes that the processes `pids` have open.
fn open_sockets(pids: &[u32]) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// Whether process `pid` (or a process below it) holds a socket bound to `addr` (for TCP: a
/// listening one), so that what answers there is that process.
pub fn held_by(pid: u32, proto: Proto, addr: SocketAddr) -> bool {
    let bound = socket_inodes(proto, addr);
    !bound.is_empty() && !bound.is_disjoint(&open_sockets(&process_tree(pid)))
}

/// The UDP ports in `range` that process `pid` (or a process below it) has sockets bound to.
pub fn udp_ports_held_by(pid: u32, range: (u16, u16)) -> Vec<u16> {
    let open = open_sockets(&process_tree(pid));
    let mut ports = Vec::new();
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (
                fields.get(1).and_then(|a| parse_proc_addr(a)),
                fields.get(9).and_then(|i| i.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if (range.0..=range.1).contains(&local.port()) && open.contains(&inode) {
                ports.push(local.port());
            }
        }
    }
    ports
}

/// Waits until `child` (named `what`) holds `addr`, the port it was told to bind. Fails with
/// `log()` when it exits first (most likely another program took the port since it was found
/// free) or has not bound it within [`BIND_DEADLINE`].
pub fn wait_until_bound(
    child: &mut Child,
    what: &str,
    proto: Proto,
    addr: SocketAddr,
    log: impl Fn() -> String,
) {
    let start = Instant::now();
    loop {
        if held_by(child.id(), proto, addr) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "{what} exited ({status}) before it bound {proto:?} {addr}: if it could not \
                 bind, another program took the port after the test found it free; run the \
                 test again. Its output:\n{}",
                log()
            );
        }
        assert!(
            start.elapsed() < BIND_DEADLINE,
            "{what} has not bound {proto:?} {addr} after {BIND_DEADLINE:?}. Its output:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
