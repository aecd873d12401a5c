//! The SIP transport shell on real loopback sockets: IPv4 and IPv6 wildcard listeners side by
//! side, the concrete address in Contact and SDP, a BYE of ours over the caller's own TCP
//! connection, and a clear error when an address is taken. Interop with real peers is in
//! `tests/sipp.rs`; the torture messages are in `tests/torture.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sip-realtime-bridge");

/// A daemon that is killed (SIGTERM, then waited for) when dropped.
struct Daemon {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(BIN)
            .env_clear()
            .env("RUST_LOG", "info")
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self { child, _dir: dir }
    }

    fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status.code(), stderr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(listen: &[&str], extra: &str) -> String {
    let listen: Vec<String> = listen.iter().map(|l| format!("\"{l}\"")).collect();
    format!(
        "[sip]\nlisten = [{}]\n{extra}\n[rtp]\nport_range = \"31000-31099\"\n\
         [upstreams.fake]\nkind = \"fake\"\n[profiles.echo]\nupstream = \"fake\"\n\
         [[routes]]\nprofile = \"echo\"\n",
        listen.join(", ")
    )
}

fn free_port() -> u16 {
    // Both families and both transports must be free on this port.
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if UdpSocket::bind(("::1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
}

fn options(local: SocketAddr, call_id: &str) -> String {
    let host = match local {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    format!(
        "OPTIONS sip:probe@{host} SIP/2.0\r\nVia: SIP/2.0/UDP {host};rport;branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:t@{host}>;tag=t1\r\nTo: <sip:probe@{host}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Sends OPTIONS until a 200 comes back (the daemon may still be starting).
fn wait_for_200(to: SocketAddr) -> String {
    let any: SocketAddr = if to.is_ipv4() {
        "127.0.0.1:0".parse().unwrap()
    } else {
        "[::1]:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(any).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let msg = options(socket.local_addr().unwrap(), &format!("probe{n}"));
        socket.send_to(msg.as_bytes(), to).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            if text.starts_with("SIP/2.0 200") {
                return text;
            }
        }
    }
    panic!("no 200 to OPTIONS from {to}");
}

fn sdp(host: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n\
         m=audio 6000 RTP/AVP 0\r\n"
    )
}

fn invite(transport: &str, local: SocketAddr, to: SocketAddr, call_id: &str) -> String {
    let body = sdp(&local.ip().to_string());
    format!(
        "INVITE sip:echo@{to} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{local}>;tag=c1\r\nTo: <sip:echo@{to}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{local};transport={t}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        t = transport.to_ascii_lowercase()
    )
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

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

/// Sends `message` and returns the first final response (status >= 200).
fn final_response(socket: &UdpSocket, to: SocketAddr, message: &str) -> String {
    socket.send_to(message.as_bytes(), to).unwrap();
    let mut buf = [0u8; 8192];
    loop {
        let (len, _) = socket.recv_from(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if !text.starts_with("SIP/2.0 1") {
            return text;
        }
    }
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
