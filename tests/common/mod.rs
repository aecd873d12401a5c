//! What the daemon-level tests share: a daemon process on a temporary configuration, and a
//! minimal SIP phone over std sockets on loopback.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sip-realtime-bridge");

/// A daemon that is killed (SIGTERM, then waited for) when dropped.
pub struct Daemon {
    pub child: Child,
    _dir: tempfile::TempDir,
    /// The configuration file the daemon was started with (tests of reload rewrite it).
    #[allow(dead_code)]
    pub config_path: PathBuf,
}

impl Daemon {
    pub fn start(config: &str) -> Self {
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
        Self {
            child,
            _dir: dir,
            config_path: path,
        }
    }

    /// Like [`Daemon::start`], with `RUST_LOG` = `rust_log`, the extra environment `env`, and
    /// standard error (the log) written to the file `log`, which a chatty daemon cannot fill up
    /// as it can a pipe nobody reads until the end. Stop it with [`Daemon::terminate`].
    pub fn start_logged(config: &str, rust_log: &str, env: &[(&str, &str)], log: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bridge.toml");
        std::fs::write(&path, config).unwrap();
        let child = Command::new(BIN)
            .env_clear()
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            _dir: dir,
            config_path: path,
        }
    }

    /// SIGTERM, then waits up to 10 s (then kills): the exit code, `None` if killed.
    pub fn terminate(&mut self) -> Option<i32> {
        if let Some(status) = self.child.try_wait().unwrap() {
            return status.code();
        }
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Stops the daemon: SIGTERM (drain), and a second one after a moment when it is still
    /// running, so calls a test left up are ended at once rather than after the drain timeout
    /// (the drain itself has tests of its own).
    pub fn stop(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let first = Instant::now() + Duration::from_millis(300);
        while self.child.try_wait().unwrap().is_none() && Instant::now() < first {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.child.try_wait().unwrap().is_none() {
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        }
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

pub fn config(listen: &[&str], extra: &str) -> String {
    let listen: Vec<String> = listen.iter().map(|l| format!("\"{l}\"")).collect();
    format!(
        "[sip]\nlisten = [{}]\n{extra}\n[rtp]\nport_range = \"31000-31099\"\n\
         [upstreams.fake]\nkind = \"fake\"\n[profiles.echo]\nupstream = \"fake\"\n\
         [[routes]]\nprofile = \"echo\"\n",
        listen.join(", ")
    )
}

pub fn free_port() -> u16 {
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

pub fn options(local: SocketAddr, call_id: &str) -> String {
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
pub fn wait_for_200(to: SocketAddr) -> String {
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

pub fn sdp(host: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n\
         m=audio 6000 RTP/AVP 0\r\n"
    )
}

pub fn invite(transport: &str, local: SocketAddr, to: SocketAddr, call_id: &str) -> String {
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

pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Sends `message` and returns the first final response (status >= 200).
pub fn final_response(socket: &UdpSocket, to: SocketAddr, message: &str) -> String {
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

/// An INVITE like [`invite`] with the given SDP body.
pub fn invite_with_sdp(
    local: SocketAddr,
    to: SocketAddr,
    call_id: &str,
    cseq: u32,
    to_tag: Option<&str>,
    body: &str,
) -> String {
    let to_header = match to_tag {
        Some(tag) => format!("<sip:echo@{to}>;tag={tag}"),
        None => format!("<sip:echo@{to}>"),
    };
    format!(
        "INVITE sip:echo@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK{call_id}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{local}>;tag=c1\r\nTo: {to_header}\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:caller@{local}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An ACK for the 2xx `ok` of the INVITE with `cseq`.
pub fn ack_for(ok: &str, local: SocketAddr, to: SocketAddr, call_id: &str, cseq: u32) -> String {
    let to_header = header(ok, "To").unwrap();
    format!(
        "ACK sip:echo@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bKack{call_id}{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{local}>;tag=c1\r\nTo: {to_header}\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The To tag of a response.
pub fn to_tag(response: &str) -> String {
    let to = header(response, "To").unwrap();
    to.split(";tag=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}
