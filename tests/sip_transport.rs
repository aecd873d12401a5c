//! The SIP transport shell on real loopback sockets: IPv4 and IPv6 wildcard listeners side by
//! side, the concrete address in Contact and SDP, a BYE of ours over the caller's own TCP
//! connection, and a clear error when an address is taken. Interop with real peers is in
//! `tests/sipp.rs`; the torture messages are in `tests/torture.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn ipv4_and_ipv6_wildcards_listen_side_by_side_and_advertise_a_concrete_address() {
    let port = free_port();
    let daemon = Daemon::start(&config(
        &[&format!("udp:0.0.0.0:{port}"), &format!("udp:[::]:{port}")],
        "",
    ));
    let v4: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let v6: SocketAddr = format!("[::1]:{port}").parse().unwrap();
    wait_for_200(v4);
    let reply = wait_for_200(v6);
    // rport filled in with our port, received with our address.
    let via = header(&reply, "Via").unwrap();
    assert!(
        via.contains("received=::1") && via.contains("rport="),
        "{via}"
    );

    // An INVITE to the IPv4 wildcard: Contact and SDP name 127.0.0.1, never 0.0.0.0.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let me = socket.local_addr().unwrap();
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

#[test]
fn our_bye_goes_over_the_callers_tcp_connection() {
    let port = free_port();
    let daemon = Daemon::start(&config(
        &[
            &format!("udp:127.0.0.1:{port}"),
            &format!("tcp:127.0.0.1:{port}"),
        ],
        "[limits]\nmax_call_duration = \"1s\"",
    ));
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_200(to);
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
    assert!(header(bye, "Via").unwrap().starts_with("SIP/2.0/TCP"));
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
    let mut stderr = String::new();
    daemon
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on udp:127.0.0.1:{port}")),
        "{stderr}"
    );
    drop(taken);
}

#[test]
fn an_exhausted_rtp_range_refuses_with_503_and_ports_rest_after_a_call() {
    let port = free_port();
    // One RTP port pair only.
    let daemon = Daemon::start(
        &config(&[&format!("udp:127.0.0.1:{port}")], "").replace("31000-31099", "31100-31101"),
    );
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_200(to);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let me = socket.local_addr().unwrap();
    let ok = final_response(&socket, to, &invite("UDP", me, to, "first"));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert!(ok.contains("m=audio 31100 RTP/AVP"), "{ok}");
    let busy = final_response(&socket, to, &invite("UDP", me, to, "second"));
    assert!(busy.starts_with("SIP/2.0 503"), "{busy}");
    assert_eq!(header(&busy, "Retry-After"), Some("5"));

    // End the first call; its port rests (30 s), so a new call is still refused.
    let tag = header(&ok, "To").unwrap().to_owned();
    let bye = format!(
        "BYE sip:bridge@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbye1\r\n\
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
    let port = free_port();
    let mut daemon = Daemon::start(&config(
        &[&format!("udp:127.0.0.1:{port}")],
        "[limits]\ndrain_timeout = \"1500ms\"\n",
    ));
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_200(to);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let me = socket.local_addr().unwrap();
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
    let port = free_port();
    let daemon = Daemon::start(&config(&[&format!("udp:127.0.0.1:{port}")], ""));
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_200(to);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let me = socket.local_addr().unwrap();
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
    let mut daemon = daemon;
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
    let port = free_port();
    let mut daemon = Daemon::start(&config(&[&format!("udp:127.0.0.1:{port}")], ""));
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
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
