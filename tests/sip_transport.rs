//! The SIP transport shell on real loopback sockets: IPv4 and IPv6 wildcard listeners side by
//! side, the concrete address in Contact and SDP, a BYE of ours over the caller's own TCP
//! connection, and a clear error when an address is taken. Interop with real peers is in
//! `tests/sipp.rs`; the torture messages are in `tests/torture.rs`.
//!
//! The daemon listens on port 0 (UDP and TCP get a port each) and the tests read the ports it
//! bound from its `listening` log lines; that those ports, not 0, are what it puts in Contact
//! and Via is itself tested here. RTP ranges are found free at run time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ipv4_and_ipv6_wildcards_listen_side_by_side_and_advertise_a_concrete_address() {
    let mut daemon = Daemon::start(&config(&["udp:0.0.0.0:0", "udp:[::]:0"], ""));
    let bound = daemon.sip_addrs(2);
    let port_of = |v4: bool| {
        let (_, addr) = bound
            .iter()
            .find(|(_, a)| a.is_ipv4() == v4 && a.ip().is_unspecified())
            .unwrap_or_else(|| panic!("no wildcard socket of that family in {bound:?}"));
        addr.port()
    };
    let (port, port6) = (port_of(true), port_of(false));
    assert!(port != 0 && port6 != 0, "{bound:?}");
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port6}").parse().unwrap();
    wait_for_200(v4);
    let reply = wait_for_200(v6);
    // rport filled in with our port, received with our address.
    let via = header(&reply, "Via").unwrap();
    assert!(
        via.contains("received=::1") && via.contains("rport="),
        "{via}"
    );

    // An INVITE to the IPv4 wildcard: Contact and SDP name 127.0.0.1, never 0.0.0.0.
    let (socket, me) = phone();
    socket
        .send_to(invite("UDP", me, v4, "wild4").as_bytes(), v4)
        .unwrap();
    let mut buf = [0u8; 8192];
    let ok = loop {
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if text.starts_with("SIP/2.0 200") {
            break text;
        }
    };
    let contact = header(&ok, "Contact").unwrap();
    assert!(contact.contains(&format!("@127.0.0.1:{port}")), "{contact}");
    assert!(ok.contains("c=IN IP4 127.0.0.1\r\n"), "{ok}");
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

/// Port 0: the daemon advertises the port the kernel gave its UDP socket, never 0 and never
/// the configured one, in the Contact of its answer and in the Via of its own BYE; the SDP names
/// a port of its RTP range.
#[test]
fn a_port_0_listener_advertises_the_port_it_bound() {
    let (first, last) = ports::free_udp_range(100);
    let mut daemon = Daemon::start(&config_rtp(
        &["udp:127.0.0.1:0"],
        "[limits]\nmax_call_duration = \"1s\"\n",
        &format!("port_range = \"{first}-{last}\""),
    ));
    let to = daemon.udp_addr();
    assert_ne!(to.port(), 0, "{}", daemon.log_text());
    wait_for_200(to);
    let (socket, me) = phone();
    let ok = final_response(&socket, to, &invite("UDP", me, to, "port0"));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let contact = header(&ok, "Contact").unwrap();
    assert!(
        contact.contains(&format!("@{to}>")) || contact.contains(&format!("@{to};")),
        "Contact {contact} does not name {to}"
    );
    let media = ok
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split(' ').next()?.parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no m=audio port: {ok}"));
    assert!((first..=last).contains(&media), "m=audio {media}: {ok}");
    assert!(ok.contains("c=IN IP4 127.0.0.1\r\n"), "{ok}");
    socket
        .send_to(ack_for(&ok, me, to, "port0", 1).as_bytes(), to)
        .unwrap();
    // max_call_duration: the daemon's own request, with its own address in Via.
    let bye = next_request(&socket, "BYE");
    let via = header(&bye, "Via").unwrap();
    assert!(
        via.starts_with(&format!("SIP/2.0/UDP {to};")),
        "Via {via} does not name {to}"
    );
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn our_bye_goes_over_the_callers_tcp_connection() {
    let mut daemon = Daemon::start(&config(
        &["udp:127.0.0.1:0", "tcp:127.0.0.1:0"],
        "[limits]\nmax_call_duration = \"1s\"",
    ));
    wait_for_200(daemon.udp_addr());
    let to = daemon.tcp_addr();
    let mut stream = TcpStream::connect(to).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // The Contact names a port nobody listens on: the BYE can only arrive by reuse.
    let me = stream.local_addr().unwrap();
    let fake_contact: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let msg = invite("TCP", me, to, "tcpbye").replace(
        &format!("<sip:caller@{me};transport=tcp>"),
        &format!("<sip:caller@{fake_contact};transport=tcp>"),
    );
    stream.write_all(msg.as_bytes()).unwrap();
    let mut received = String::new();
    let mut buf = [0u8; 8192];
    let mut acked = false;
    let started = Instant::now();
    while !received.contains("BYE sip:") {
        let len = stream.read(&mut buf).unwrap();
        assert!(len > 0, "connection closed; got:\n{received}");
        received.push_str(&String::from_utf8_lossy(&buf[..len]));
        if !acked && received.contains("SIP/2.0 200 OK") {
            let start = received.find("SIP/2.0 200 OK").unwrap();
            let ok = &received[start..];
            let to_header = header(ok, "To").unwrap();
            let ack = format!(
                "ACK sip:echo@{to} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKack\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=c1\r\nTo: {to_header}\r\n\
                 Call-ID: tcpbye\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
            );
            stream.write_all(ack.as_bytes()).unwrap();
            acked = true;
        }
    }
    // max_call_duration is 1 s: the BYE comes after it, and before the 64*T1 ACK timeout.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    assert!(received.contains("SIP/2.0 100 Trying") && received.contains("SIP/2.0 180 Ringing"));
    let bye = &received[received.find("BYE sip:").unwrap()..];
    assert!(bye.starts_with(&format!(
        "BYE sip:caller@{fake_contact};transport=tcp SIP/2.0"
    )));
    // Via and the 200's Contact name the port the TCP listener bound (the kernel's choice).
    let via = header(bye, "Via").unwrap();
    assert!(
        via.starts_with(&format!("SIP/2.0/TCP {to};")),
        "{via} (listening on {to})"
    );
    let ok = &received[received.find("SIP/2.0 200 OK").unwrap()..];
    let contact = header(ok, "Contact").unwrap();
    assert!(
        contact.contains(&format!("@{to};transport=tcp")),
        "{contact}"
    );
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("max_call_duration reached"), "{stderr}");
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut daemon = Daemon::start(&config(&[&format!("udp:127.0.0.1:{port}")], ""));
    let status = daemon.child.wait().unwrap();
    let stderr = daemon.log_text();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on udp:127.0.0.1:{port}")),
        "{stderr}"
    );
    drop(taken);
}

#[test]
fn an_exhausted_rtp_range_refuses_with_503_and_ports_rest_after_a_call() {
    // One RTP port pair only, found free.
    let (rtp, _) = ports::free_udp_range(2);
    let mut daemon = Daemon::start(&config_rtp(
        &["udp:127.0.0.1:0"],
        "",
        &format!("port_range = \"{rtp}-{}\"", rtp + 1),
    ));
    let to = daemon.udp_addr();
    wait_for_200(to);
    let (socket, me) = phone();
    let ok = final_response(&socket, to, &invite("UDP", me, to, "first"));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert!(ok.contains(&format!("m=audio {rtp} RTP/AVP")), "{ok}");
    let busy = final_response(&socket, to, &invite("UDP", me, to, "second"));
    assert!(busy.starts_with("SIP/2.0 503"), "{busy}");
    assert_eq!(header(&busy, "Retry-After"), Some("5"));

    // End the first call; its port rests (30 s), so a new call is still refused.
    let tag = header(&ok, "To").unwrap().to_owned();
    let bye = format!(
        "BYE sip:bridge@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbye1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=c1\r\nTo: {tag}\r\nCall-ID: first\r\n\
         CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let bye_ok = final_response(&socket, to, &bye);
    assert!(bye_ok.starts_with("SIP/2.0 200"), "{bye_ok}");
    let again = final_response(&socket, to, &invite("UDP", me, to, "third"));
    assert!(again.starts_with("SIP/2.0 503"), "{again}");
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("RTP port range exhausted"), "{stderr}");
}

/// Answers `invite` and ACKs the 200: a live call from `socket`.
fn live_call(socket: &UdpSocket, to: SocketAddr, call_id: &str) -> String {
    let me = socket.local_addr().unwrap();
    let ok = final_response(socket, to, &invite("UDP", me, to, call_id));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let to_header = header(&ok, "To").unwrap().to_owned();
    let ack = format!(
        "ACK sip:bridge@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKack{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=c1\r\nTo: {to_header}\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(ack.as_bytes(), to).unwrap();
    to_header
}

fn signal(daemon: &Daemon, name: &str) {
    let pid = daemon.child.id().to_string();
    Command::new("kill").args([name, &pid]).status().unwrap();
}

/// The next request of `method` the daemon sends to `socket`.
fn next_request(socket: &UdpSocket, method: &str) -> String {
    let mut buf = [0u8; 8192];
    loop {
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if text.starts_with(&format!("{method} ")) {
            return text;
        }
    }
}

#[test]
fn on_sigterm_new_calls_and_options_get_503_and_live_calls_get_bye_at_the_drain_timeout() {
    let mut daemon = Daemon::start(&config(
        &["udp:127.0.0.1:0"],
        "[limits]\ndrain_timeout = \"1500ms\"\n",
    ));
    let to = daemon.udp_addr();
    wait_for_200(to);
    let (socket, me) = phone();
    live_call(&socket, to, "live");
    std::thread::sleep(Duration::from_millis(200));

    let sent = Instant::now();
    signal(&daemon, "-TERM");
    std::thread::sleep(Duration::from_millis(200));
    // Draining: a new call is refused, and so is OPTIONS (load balancers stop sending)...
    let refused = final_response(&socket, to, &invite("UDP", me, to, "late"));
    assert!(refused.starts_with("SIP/2.0 503"), "{refused}");
    let options = final_response(&socket, to, &common::options(me, "drain-opt"));
    assert!(options.starts_with("SIP/2.0 503"), "{options}");
    assert!(header(&options, "Retry-After").is_some(), "{options}");
    // ...while the live call goes on until the drain timeout, then gets a BYE with a Reason.
    let bye = next_request(&socket, "BYE");
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(header(&bye, "Call-ID"), Some("live"));
    assert_eq!(
        header(&bye, "Reason"),
        Some("Q.850;cause=16;text=\"bridge shutting down\"")
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("shutting down: 503"), "{stderr}");
    assert!(stderr.contains("drain timeout"), "{stderr}");
}

#[test]
fn a_drain_ends_when_the_last_call_ends_and_a_second_sigterm_stops_at_once() {
    let mut daemon = Daemon::start(&config(&["udp:127.0.0.1:0"], ""));
    let to = daemon.udp_addr();
    wait_for_200(to);
    let (socket, me) = phone();
    let to_header = live_call(&socket, to, "finishing");
    std::thread::sleep(Duration::from_millis(200));
    signal(&daemon, "-TERM");
    std::thread::sleep(Duration::from_millis(300));
    // The caller hangs up during the drain (default timeout 60 s): the daemon exits at once.
    let bye = format!(
        "BYE sip:bridge@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbyef\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=c1\r\nTo: {to_header}\r\nCall-ID: finishing\r\n\
         CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let ok = final_response(&socket, to, &bye);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    let started = Instant::now();
    while daemon.child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "still running after its last call"
    );
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");

    // A second SIGTERM: BYE now, without waiting for the drain timeout.
    let mut daemon = Daemon::start(&config(&["udp:127.0.0.1:0"], ""));
    let to = daemon.udp_addr();
    wait_for_200(to);
    live_call(&socket, to, "cut");
    std::thread::sleep(Duration::from_millis(200));
    signal(&daemon, "-TERM");
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    signal(&daemon, "-TERM");
    let bye = next_request(&socket, "BYE");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(header(&bye, "Call-ID"), Some("cut"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("second SIGTERM: stopping now"), "{stderr}");
}

// --- the harness's port helpers (tests/common/ports.rs), tested once here ----------------------

#[test]
fn the_harness_reads_proc_addresses_and_finds_the_sockets_a_process_holds() {
    use ports::{Proto, held_by, parse_proc_addr, udp_ports_held_by};
    assert_eq!(
        parse_proc_addr("0100007F:13C4"),
        Some("127.0.0.1:5060".parse().unwrap())
    );
    assert_eq!(
        parse_proc_addr("00000000000000000000000001000000:1F90"),
        Some("[::1]:8080".parse().unwrap())
    );
    let me = std::process::id();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(held_by(me, Proto::Udp, udp.local_addr().unwrap()));
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    assert!(held_by(me, Proto::Tcp, tcp_addr));
    // A port held by nobody is held by no process; the daemon holds its own socket, not ours
    // (it is our child, so its sockets count as ours: a process's tree holds what it holds).
    drop(tcp);
    assert!(!held_by(me, Proto::Tcp, tcp_addr));
    let mut daemon = Daemon::start(&config(&["udp:127.0.0.1:0"], ""));
    let theirs = daemon.udp_addr();
    assert!(held_by(daemon.child.id(), Proto::Udp, theirs));
    assert!(!held_by(
        daemon.child.id(),
        Proto::Udp,
        udp.local_addr().unwrap()
    ));

    let (first, last) = ports::free_udp_range(10);
    assert_eq!((last - first, first % 2), (9, 0));
    assert!(udp_ports_held_by(me, (first, last)).is_empty());
    let held = UdpSocket::bind(("127.0.0.1", first + 3)).unwrap();
    assert_eq!(udp_ports_held_by(me, (first, last)), [first + 3]);
    drop(held);
    // Ports found free are not handed out twice by this process, nor from the kernel's
    // ephemeral range.
    let a = ports::free_udp_tcp_port();
    let b = ports::free_udp_tcp_port();
    assert_ne!(a, b);
    let ephemeral: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(a < ephemeral && b < ephemeral && last < ephemeral);
    let (code, log) = daemon.stop();
    assert_eq!(code, Some(0), "{log}");
}
