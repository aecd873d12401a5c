//! The media path on real loopback sockets: an answered call streams paced RTP (silence until
//! the model is connected) with RTCP, hears the caller's RTP and DTMF, stops sending on hold and
//! resumes, and hangs up when the caller's RTP stops. Each test has its own loopback address
//! (127.0.0.1-3); the daemon listens on port 0 there and the test reads the port from its log,
//! its RTP range is found free at run time, and the phone's sockets are on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use sip_realtime_bridge::rtp::packet::{self, RtpHeader};
use sip_realtime_bridge::rtp::rtcp::{RtcpPacket, parse_compound};

/// The body of an `[rtp]` table: a 100-port range found free at run time, and `more`.
fn rtp_with(more: &str) -> String {
    let (first, last) = common::ports::free_udp_range(100);
    format!("port_range = \"{first}-{last}\"\n{more}\n")
}

/// A phone: SIP, RTP and RTCP sockets on one loopback address.
struct Phone {
    sip: UdpSocket,
    rtp: UdpSocket,
    rtcp: UdpSocket,
}

impl Phone {
    fn new(ip: &str) -> Self {
        // An even RTP port with the odd one above free.
        let (rtp, rtcp) = loop {
            let rtp = UdpSocket::bind(format!("{ip}:0")).unwrap();
            let port = rtp.local_addr().unwrap().port();
            if port.is_multiple_of(2)
                && let Ok(rtcp) = UdpSocket::bind(format!("{ip}:{}", port + 1))
            {
                break (rtp, rtcp);
            }
        };
        let sip = UdpSocket::bind(format!("{ip}:0")).unwrap();
        for s in [&sip, &rtp, &rtcp] {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        Self { sip, rtp, rtcp }
    }

    fn sdp(&self, direction: &str) -> String {
        let a = self.rtp.local_addr().unwrap();
        format!(
            "v=0\r\no=- 7 7 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n",
            ip = a.ip(),
            port = a.port()
        )
    }

    /// Sends a request and returns its final response.
    fn request(&self, to: SocketAddr, message: &str) -> String {
        self.sip
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let response = final_response(&self.sip, to, message);
        self.sip
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        response
    }
}

fn rtp_packet(seq: u16, payload_type: u8, marker: bool, timestamp: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    packet::write(
        &RtpHeader {
            marker,
            payload_type,
            sequence: seq,
            timestamp,
            ssrc: 0x5eed_0001,
        },
        payload,
        &mut out,
    );
    out
}

/// The daemon's media address from the SDP of `ok`.
fn media_address(ok: &str) -> SocketAddr {
    let ip = ok
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap()
        .trim();
    let port: u16 = ok
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    format!("{ip}:{port}").parse().unwrap()
}

/// Receives the daemon's RTP for `span` while sending ours at 20 ms; returns the headers and
/// payload lengths received.
fn exchange(
    phone: &Phone,
    to: SocketAddr,
    span: Duration,
    seq: &mut u16,
    send: bool,
) -> Vec<(RtpHeader, usize)> {
    phone
        .rtp
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    let mut next_send = start;
    let mut buf = [0u8; 2048];
    while start.elapsed() < span {
        if send && Instant::now() >= next_send {
            let ts = u32::from(*seq).wrapping_mul(160);
            phone
                .rtp
                .send_to(&rtp_packet(*seq, 0, *seq == 0, ts, &[0x7f; 160]), to)
                .unwrap();
            *seq = seq.wrapping_add(1);
            next_send += Duration::from_millis(20);
        }
        if let Ok((len, _)) = phone.rtp.recv_from(&mut buf)
            && let Ok(p) = packet::parse(&buf[..len])
        {
            got.push((p.header, p.payload.len()));
        }
    }
    got
}

/// One stream: consecutive sequence numbers, timestamps on the 160-sample grid (a slot the
/// pacer skipped after a stall of the machine advances the timestamp without a packet).
fn assert_continuous(packets: &[(RtpHeader, usize)]) {
    for pair in packets.windows(2) {
        let (a, b) = (pair[0].0, pair[1].0);
        assert_eq!(b.sequence, a.sequence.wrapping_add(1), "{packets:?}");
        let step = b.timestamp.wrapping_sub(a.timestamp);
        assert!(
            step >= 160 && step.is_multiple_of(160),
            "timestamp step {step}"
        );
        assert_eq!((b.ssrc, b.payload_type), (a.ssrc, 0));
    }
}

#[test]
fn an_answered_call_streams_paced_rtp_with_rtcp_hears_dtmf_and_ends_when_rtp_stops() {
    let mut daemon = Daemon::start(&config_rtp(
        &["udp:127.0.0.1:0"],
        "",
        &rtp_with("inactivity_timeout = \"1s\""),
    ));
    let to = daemon.udp_addr();
    wait_for_200(to);
    let phone = Phone::new("127.0.0.1");
    let me = phone.sip.local_addr().unwrap();
    let ok = phone.request(
        to,
        &invite_with_sdp(me, to, "media1", 1, None, &phone.sdp("sendrecv")),
    );
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    phone
        .sip
        .send_to(ack_for(&ok, me, to, "media1", 1).as_bytes(), to)
        .unwrap();
    let bridge_rtp = media_address(&ok);

    // Two seconds both ways: the bridge's stream is paced at 50 packets a second, continuous,
    // 160 octets of mu-law silence each.
    let mut seq = 0u16;
    let packets = exchange(&phone, bridge_rtp, Duration::from_secs(2), &mut seq, true);
    assert!(
        (80..=105).contains(&packets.len()),
        "{} packets",
        packets.len()
    );
    assert_continuous(&packets);
    assert!(packets.iter().all(|(_, len)| *len == 160));

    // A DTMF 5 (RFC 4733: start, updates, three ends on one timestamp).
    let ts = u32::from(seq).wrapping_mul(160);
    for (i, (end, duration)) in [
        (false, 160u16),
        (false, 320),
        (false, 480),
        (true, 640),
        (true, 640),
        (true, 640),
    ]
    .into_iter()
    .enumerate()
    {
        let payload = [
            5,
            if end { 0x80 | 10 } else { 10 },
            (duration >> 8) as u8,
            duration as u8,
        ];
        phone
            .rtp
            .send_to(&rtp_packet(seq, 101, i == 0, ts, &payload), bridge_rtp)
            .unwrap();
        seq = seq.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(20));
    }
    let more = exchange(
        &phone,
        bridge_rtp,
        Duration::from_millis(1500),
        &mut seq,
        true,
    );
    assert!(more.len() >= 30, "{} packets", more.len());

    // RTCP from the bridge: a sender report (it is sending) with our reception in it.
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(6);
    let report = loop {
        assert!(Instant::now() < deadline, "no RTCP from the bridge");
        if let Ok((len, _)) = phone.rtcp.recv_from(&mut buf) {
            break parse_compound(&buf[..len]).unwrap();
        }
        exchange(
            &phone,
            bridge_rtp,
            Duration::from_millis(100),
            &mut seq,
            true,
        );
    };
    let RtcpPacket::SenderReport {
        ssrc,
        sender,
        blocks,
    } = &report[0]
    else {
        panic!("{report:?}")
    };
    assert_eq!(*ssrc, packets[0].0.ssrc);
    assert!(sender.packet_count > 0);
    // Its report block is about our stream, from the receive path's counts (the first report
    // may leave as early as 1 s into the call, so only "some packets, none lost" is certain).
    let block = blocks.first().expect("a report block about our stream");
    assert_eq!(block.ssrc, 0x5eed_0001);
    assert!(block.extended_highest_seq >= 1, "{block:?}");
    assert!(block.cumulative_lost <= 0, "{block:?}");
    assert!(
        report
            .iter()
            .any(|p| matches!(p, RtcpPacket::SourceDescription(_)))
    );

    // The caller's RTP stops: after the inactivity timeout (1 s) the bridge sends BYE.
    phone
        .sip
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let bye = loop {
        let (len, from) = phone.sip.recv_from(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if text.starts_with("BYE ") {
            let ok = format!(
                "SIP/2.0 200 OK\r\n{}\r\nContent-Length: 0\r\n\r\n",
                text.lines()
                    .filter(|l| ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                        .iter()
                        .any(|h| l.starts_with(h)))
                    .collect::<Vec<_>>()
                    .join("\r\n")
            );
            phone.sip.send_to(ok.as_bytes(), from).unwrap();
            break text;
        }
    };
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(header(&bye, "Call-ID"), Some("media1"));
    // The BYE says why (RFC 3326).
    assert_eq!(
        header(&bye, "Reason"),
        Some("Q.850;cause=41;text=\"RTP timeout\"")
    );
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("DTMF") && stderr.contains("digit=5"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no RTP for the inactivity timeout"),
        "{stderr}"
    );
    // One record for the call, with the reason and the digit the model was told about.
    let record = stderr
        .lines()
        .find(|l| l.contains("call record"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(record.contains("end_reason=\"rtp_timeout\""), "{record}");
    assert!(record.contains("digits=1"), "{record}");
}

#[test]
fn nothing_is_sent_before_the_ack_and_a_held_call_is_not_hung_up_for_silence() {
    let mut daemon = Daemon::start(&config_rtp(
        &["udp:127.0.0.3:0"],
        "",
        &rtp_with("inactivity_timeout = \"1s\""),
    ));
    let to = daemon.udp_addr();
    wait_for_200(to);
    let phone = Phone::new("127.0.0.3");
    let me = phone.sip.local_addr().unwrap();
    let ok = phone.request(
        to,
        &invite_with_sdp(me, to, "ack1", 1, None, &phone.sdp("sendrecv")),
    );
    let bridge_rtp = media_address(&ok);
    let mut seq = 0u16;
    // Answered but not acknowledged: a forged INVITE's SDP address gets nothing.
    let early = exchange(
        &phone,
        bridge_rtp,
        Duration::from_millis(500),
        &mut seq,
        false,
    );
    assert!(early.is_empty(), "{} packets before the ACK", early.len());
    phone
        .sip
        .send_to(ack_for(&ok, me, to, "ack1", 1).as_bytes(), to)
        .unwrap();
    let flowing = exchange(
        &phone,
        bridge_rtp,
        Duration::from_millis(500),
        &mut seq,
        true,
    );
    assert!(
        flowing.len() >= 10,
        "{} packets after the ACK",
        flowing.len()
    );

    // Hold with a=inactive: the phone stops its RTP, which is normal now; no BYE follows the
    // 1 s inactivity timeout. (First drop the 200s retransmitted while the ACK waited.)
    let mut buf = [0u8; 4096];
    while phone.sip.recv_from(&mut buf).is_ok() {}
    let tag = to_tag(&ok);
    let held = phone.request(
        to,
        &invite_with_sdp(me, to, "ack1", 2, Some(&tag), &phone.sdp("inactive")),
    );
    assert!(held.contains("a=inactive"), "{held}");
    phone
        .sip
        .send_to(ack_for(&held, me, to, "ack1", 2).as_bytes(), to)
        .unwrap();
    phone
        .sip
        .set_read_timeout(Some(Duration::from_millis(2500)))
        .unwrap();
    if let Ok((len, _)) = phone.sip.recv_from(&mut buf) {
        panic!(
            "unexpected during hold: {}",
            String::from_utf8_lossy(&buf[..len])
        );
    }
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("no RTP for the inactivity timeout"),
        "{stderr}"
    );
}

#[test]
fn hold_stops_our_stream_and_resume_continues_it() {
    let mut daemon = Daemon::start(&config(&["udp:127.0.0.2:0"], ""));
    let to = daemon.udp_addr();
    wait_for_200(to);
    let phone = Phone::new("127.0.0.2");
    let me = phone.sip.local_addr().unwrap();
    let ok = phone.request(
        to,
        &invite_with_sdp(me, to, "hold1", 1, None, &phone.sdp("sendrecv")),
    );
    phone
        .sip
        .send_to(ack_for(&ok, me, to, "hold1", 1).as_bytes(), to)
        .unwrap();
    let tag = to_tag(&ok);
    let bridge_rtp = media_address(&ok);
    let mut seq = 0u16;
    let before = exchange(
        &phone,
        bridge_rtp,
        Duration::from_millis(600),
        &mut seq,
        true,
    );
    assert!(before.len() >= 15, "{}", before.len());

    // Hold: the phone sends only; the bridge answers recvonly and stops its packets.
    let held = phone.request(
        to,
        &invite_with_sdp(me, to, "hold1", 2, Some(&tag), &phone.sdp("sendonly")),
    );
    assert!(held.contains("a=recvonly"), "{held}");
    phone
        .sip
        .send_to(ack_for(&held, me, to, "hold1", 2).as_bytes(), to)
        .unwrap();
    // Packets in flight when the hold took effect belong to the stream before it.
    let in_flight = exchange(
        &phone,
        bridge_rtp,
        Duration::from_millis(100),
        &mut seq,
        true,
    );
    let before: Vec<_> = before.into_iter().chain(in_flight).collect();
    let during = exchange(
        &phone,
        bridge_rtp,
        Duration::from_millis(600),
        &mut seq,
        true,
    );
    assert!(during.is_empty(), "{} packets during hold", during.len());

    // Resume: the stream continues (same SSRC, next sequence number, timestamps that kept
    // running), marked as a new talkspurt.
    let resumed = phone.request(
        to,
        &invite_with_sdp(me, to, "hold1", 3, Some(&tag), &phone.sdp("sendrecv")),
    );
    assert!(resumed.contains("a=sendrecv"), "{resumed}");
    phone
        .sip
        .send_to(ack_for(&resumed, me, to, "hold1", 3).as_bytes(), to)
        .unwrap();
    let after = exchange(
        &phone,
        bridge_rtp,
        Duration::from_millis(600),
        &mut seq,
        true,
    );
    assert!(after.len() >= 15, "{}", after.len());
    let (last, first) = (before.last().unwrap().0, after[0].0);
    assert_eq!(first.ssrc, last.ssrc);
    assert_eq!(first.sequence, last.sequence.wrapping_add(1));
    assert!(first.marker);
    let gap = first.timestamp.wrapping_sub(last.timestamp);
    assert!(
        gap.is_multiple_of(160) && gap >= 160 * 30,
        "timestamps kept running: {gap}"
    );
    assert_continuous(&after);
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
}
