//! A minimal classic-pcap reader for replaying captured RTP: global header (24 octets, magic
//! in either byte order, microsecond or nanosecond resolution), 16-octet record headers, link
//! types Ethernet (1) and Linux cooked v1 (113), IPv4 (no fragments) carrying UDP.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// One UDP datagram from a capture.
#[derive(Clone, Debug)]
pub struct Datagram {
    /// Capture time, from the first record.
    pub at: Duration,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub payload: Vec<u8>,
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_LINUX_SLL: u32 = 113;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;
const IPPROTO_UDP: u8 = 17;

fn u16_be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// Reads every IPv4/UDP datagram of a capture; other frames are skipped. Errors name what
/// is wrong with the file.
pub fn read_udp(bytes: &[u8]) -> Result<Vec<Datagram>, String> {
    let header = bytes.get(..24).ok_or("shorter than a pcap global header")?;
    let magic: [u8; 4] = header[..4].try_into().unwrap();
    let (big_endian, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (false, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (false, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (true, true),
        other => return Err(format!("not a classic pcap file (magic {other:02x?})")),
    };
    let word = |b: &[u8], at: usize| -> Option<u32> {
        let raw: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if big_endian {
            u32::from_be_bytes(raw)
        } else {
            u32::from_le_bytes(raw)
        })
    };
    let link_type = word(header, 20).unwrap();
    if link_type != LINKTYPE_ETHERNET && link_type != LINKTYPE_LINUX_SLL {
        return Err(format!(
            "link type {link_type} is not Ethernet (1) or Linux cooked (113)"
        ));
    }
    let mut out = Vec::new();
    let mut first: Option<Duration> = None;
    let mut at = 24;
    while at < bytes.len() {
        let record = bytes.get(at..at + 16).ok_or("truncated record header")?;
        let (secs, frac, caplen) = (
            word(record, 0).unwrap(),
            word(record, 4).unwrap(),
            word(record, 8).unwrap() as usize,
        );
        let frame = bytes
            .get(at + 16..at + 16 + caplen)
            .ok_or("truncated record")?;
        at += 16 + caplen;
        let time = Duration::from_secs(u64::from(secs))
            + if nanos {
                Duration::from_nanos(u64::from(frac))
            } else {
                Duration::from_micros(u64::from(frac))
            };
        let first = *first.get_or_insert(time);
        if let Some((source, destination, payload)) = udp_of(link_type, frame) {
            out.push(Datagram {
                at: time - first,
                source,
                destination,
                payload,
            });
        }
    }
    Ok(out)
}

fn udp_of(link_type: u32, frame: &[u8]) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
    let (mut ethertype, mut ip_start) = match link_type {
        LINKTYPE_ETHERNET => (u16_be(frame, 12)?, 14),
        _ => (u16_be(frame, 14)?, 16),
    };
    if ethertype == ETHERTYPE_VLAN {
        ethertype = u16_be(frame, ip_start + 2)?;
        ip_start += 4;
    }
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(ip_start..)?;
    let version_ihl = *ip.first()?;
    if version_ihl >> 4 != 4 || *ip.get(9)? != IPPROTO_UDP {
        return None;
    }
    // Fragments (offset or more-fragments set) are not reassembled.
    if u16_be(ip, 6)? & 0x3fff != 0 {
        return None;
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    let total = usize::from(u16_be(ip, 2)?);
    let addr = |at: usize| -> Option<Ipv4Addr> {
        let o: [u8; 4] = ip.get(at..at + 4)?.try_into().ok()?;
        Some(Ipv4Addr::from(o))
    };
    let (src, dst) = (addr(12)?, addr(16)?);
    let udp = ip.get(ihl..total.min(ip.len()))?;
    let (sport, dport, ulen) = (
        u16_be(udp, 0)?,
        u16_be(udp, 2)?,
        usize::from(u16_be(udp, 4)?),
    );
    let payload = udp.get(8..ulen)?.to_vec();
    Some((
        SocketAddr::V4(SocketAddrV4::new(src, sport)),
        SocketAddr::V4(SocketAddrV4::new(dst, dport)),
        payload,
    ))
}

/// Reads a capture from the Debian `sip-tester` package, failing the test with the fix when
/// it is not installed.
pub fn sip_tester_capture(name: &str) -> Vec<Datagram> {
    let path = format!("/usr/share/sip-tester/{name}");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("cannot read {path} ({e}): install the Debian package sip-tester (apt-get install sip-tester)")
    });
    read_udp(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[cfg(test)]
mod self_tests {
    use super::*;

    fn frame_with_udp(link_type: u32) -> Vec<u8> {
        let mut f = Vec::new();
        if link_type == LINKTYPE_ETHERNET {
            f.extend_from_slice(&[0; 12]);
        } else {
            f.extend_from_slice(&[0; 14]);
        }
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let payload = [1u8, 2, 3];
        let total = 20 + 8 + payload.len() as u16;
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&5000u16.to_be_bytes());
        f.extend_from_slice(&6000u16.to_be_bytes());
        f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&payload);
        f
    }

    fn file(big_endian: bool, link_type: u32) -> Vec<u8> {
        let w = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut b = Vec::new();
        b.extend_from_slice(&w(0xa1b2_c3d4));
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(&w(65535));
        b.extend_from_slice(&w(link_type));
        for (secs, micros) in [(10, 0), (10, 20_000)] {
            let frame = frame_with_udp(link_type);
            b.extend_from_slice(&w(secs));
            b.extend_from_slice(&w(micros));
            b.extend_from_slice(&w(frame.len() as u32));
            b.extend_from_slice(&w(frame.len() as u32));
            b.extend_from_slice(&frame);
        }
        b
    }

    #[test]
    fn reads_both_byte_orders_and_link_types() {
        for big_endian in [false, true] {
            for link_type in [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL] {
                let d = read_udp(&file(big_endian, link_type)).unwrap();
                assert_eq!(d.len(), 2);
                assert_eq!(d[1].at, Duration::from_millis(20));
                assert_eq!(d[0].source, "10.0.0.1:5000".parse().unwrap());
                assert_eq!(d[0].destination, "10.0.0.2:6000".parse().unwrap());
                assert_eq!(d[0].payload, [1, 2, 3]);
            }
        }
        assert!(read_udp(b"not a pcap file at all....").is_err());
        let mut truncated = file(false, 1);
        truncated.truncate(40);
        assert!(read_udp(&truncated).is_err());
    }
}
