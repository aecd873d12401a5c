//! What the daemon-level tests share: a daemon process on a temporary configuration, the
//! addresses it reports in its log, and a minimal SIP phone over std sockets on loopback.
//!
//! Tests share the host with other programs, so nothing here uses a fixed port: the daemon
//! listens on port 0 (`udp:127.0.0.1:0`) and the test reads the ports it bound from its
//! `listening` log lines ([`Daemon::udp_addr`], [`Daemon::tcp_addr`]); the admin endpoint is off
//! unless a test turns it on; RTP ranges and the ports of peers are found free at run time
//! ([`ports`]).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

pub mod ports;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sip-realtime-bridge");

/// How long a daemon may take to report its sockets.
pub const LISTEN_DEADLINE: Duration = Duration::from_secs(15);

/// A daemon that is killed (SIGTERM, then waited for) when dropped.
pub struct Daemon {
    pub child: Child,
    _dir: tempfile::TempDir,
    /// The configuration file the daemon was started with (tests of reload rewrite it).
    #[allow(dead_code)]
    pub config_path: PathBuf,
    /// Its standard error: the log.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `RUST_LOG=info` on `config`; its log goes to a file in its
    /// temporary directory ([`Daemon::log_text`], and returned by [`Daemon::stop`]).
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        Self::spawn(dir, config, "info", &[], log)
    }

    /// Like [`Daemon::start`], with `RUST_LOG` = `rust_log`, the extra environment `env`, and
    /// standard error (the log) written to the file `log`, which a chatty daemon cannot fill up
    /// as it can a pipe nobody reads until the end. Stop it with [`Daemon::terminate`].
    pub fn start_logged(config: &str, rust_log: &str, env: &[(&str, &str)], log: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn(dir, config, rust_log, env, log.to_owned())
    }

    fn spawn(
        dir: tempfile::TempDir,
        config: &str,
        rust_log: &str,
        env: &[(&str, &str)],
        log: PathBuf,
    ) -> Self {
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
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            _dir: dir,
            config_path: path,
            log,
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `find` finds something in the log; fails with the log when the daemon exits
    /// first or nothing is found within [`LISTEN_DEADLINE`].
    pub fn wait_for_log<T>(&mut self, what: &str, find: impl Fn(&str) -> Option<T>) -> T {
        wait_for_log(&mut self.child, &self.log, what, find)
    }

    /// The SIP sockets the daemon bound (transport `UDP` or `TCP`, address with the port the
    /// kernel chose for port 0), once it has reported at least `n` of them.
    pub fn sip_addrs(&mut self, n: usize) -> Vec<(String, SocketAddr)> {
        self.wait_for_log(&format!("{n} listening SIP socket(s)"), |log| {
            let found = sip_listening(log);
            (found.len() >= n).then_some(found)
        })
    }

    /// The address of the daemon's (first) UDP SIP socket, from its log.
    pub fn udp_addr(&mut self) -> SocketAddr {
        self.transport_addr("UDP")
    }

    /// The address of the daemon's (first) TCP SIP socket, from its log.
    pub fn tcp_addr(&mut self) -> SocketAddr {
        self.transport_addr("TCP")
    }

    fn transport_addr(&mut self, transport: &str) -> SocketAddr {
        self.wait_for_log(&format!("a listening {transport} SIP socket"), |log| {
            sip_listening(log)
                .into_iter()
                .find(|(t, _)| t == transport)
                .map(|(_, addr)| addr)
        })
    }

    /// The admin endpoint's address from the log, or the error it logged when it could not
    /// bind (the daemon goes on without it).
    pub fn admin_addr(&mut self) -> Result<SocketAddr, String> {
        self.wait_for_log("the admin endpoint listening (or failing)", admin_listening)
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
    /// (the drain itself has tests of its own). The exit code and the whole log.
    pub fn stop(mut self) -> (Option<i32>, String) {
        if let Some(status) = self.child.try_wait().unwrap() {
            return (status.code(), self.log_text());
        }
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
        (status.code(), self.log_text())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `find` finds something in the log file `log` of the daemon `child`; fails with
/// the log when the daemon exits first or nothing is found within [`LISTEN_DEADLINE`] (then
/// the daemon is killed). `what` names what is awaited, for the failure message.
pub fn wait_for_log<T>(
    child: &mut Child,
    log: &Path,
    what: &str,
    find: impl Fn(&str) -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(found) = find(&text) {
            return found;
        }
        if let Some(status) = child.try_wait().unwrap() {
            // It may have written its last lines just before exiting.
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(found) = find(&text) {
                return found;
            }
            panic!("the daemon exited ({status}) before its log showed {what}; its log:\n{text}");
        }
        if start.elapsed() > LISTEN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon's log shows no {what} after {LISTEN_DEADLINE:?}; its log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One log line as JSON (`[log] format = "json"`): its fields, whether the formatter nests them
/// under "fields" or flattens them beside "message".
fn json_fields(line: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["fields"]["message"].is_string() {
        Some(v["fields"].clone())
    } else if v["message"].is_string() {
        Some(v)
    } else {
        None
    }
}

/// The value of `key=` in a text log line: quoted (`key="UDP"`) or up to the next space.
fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    match rest.strip_prefix('"') {
        Some(quoted) => quoted.split('"').next(),
        None => rest.split_whitespace().next(),
    }
}

/// The SIP sockets in a daemon's log (text or JSON): its `listening` lines, each with the
/// transport (`UDP`, `TCP`) and the bound address.
pub fn sip_listening(log: &str) -> Vec<(String, SocketAddr)> {
    log.lines()
        .filter_map(|line| {
            if let Some(fields) = json_fields(line) {
                if fields["message"] != "listening" {
                    return None;
                }
                let transport = fields["transport"].as_str()?.to_owned();
                let addr = fields["addr"].as_str()?.parse().ok()?;
                return Some((transport, addr));
            }
            // `... sip_realtime_bridge::io::sip: listening transport="UDP" addr=127.0.0.1:40770`
            if !line.contains(": listening transport=") {
                return None;
            }
            let transport = text_field(line, "transport")?.to_owned();
            let addr = text_field(line, "addr")?.parse().ok()?;
            Some((transport, addr))
        })
        .collect()
}

/// The admin endpoint in a daemon's log: `Ok` with the address it listens on, `Err` with the
/// logged error when it could not start; `None` while neither is logged.
pub fn admin_listening(log: &str) -> Option<Result<SocketAddr, String>> {
    log.lines().find_map(|line| {
        let (message, addr, error) = match json_fields(line) {
            Some(f) => (
                f["message"].as_str()?.to_owned(),
                f["addr"].as_str().map(str::to_owned),
                f["error"].as_str().map(str::to_owned),
            ),
            None => (
                line.to_owned(),
                text_field(line, "addr").map(str::to_owned),
                Some(line.to_owned()),
            ),
        };
        if message.contains("admin endpoint listening") {
            Some(Ok(addr?.parse().ok()?))
        } else if message.contains("admin endpoint not started") {
            Some(Err(error.unwrap_or(message)))
        } else {
            None
        }
    })
}

/// A configuration with the SIP sockets `listen` (port 0 for the kernel to choose), `extra`
/// after them (more `[sip]` keys, then tables), the admin endpoint off unless `extra` has an
/// `[admin]` table, a 100-port RTP range found free at run time, and the fake upstream.
pub fn config(listen: &[&str], extra: &str) -> String {
    let (first, last) = ports::free_udp_range(100);
    config_rtp(listen, extra, &format!("port_range = \"{first}-{last}\"\n"))
}

/// [`config`] with `rtp` as the body of the `[rtp]` table (which then needs a `port_range`).
pub fn config_rtp(listen: &[&str], extra: &str, rtp: &str) -> String {
    let listen: Vec<String> = listen.iter().map(|l| format!("\"{l}\"")).collect();
    let admin = if extra.contains("[admin]") {
        ""
    } else {
        "[admin]\nenabled = false\n"
    };
    format!(
        "[sip]\nlisten = [{}]\n{extra}\n{admin}[rtp]\n{rtp}\n\
         [upstreams.fake]\nkind = \"fake\"\n[profiles.echo]\nupstream = \"fake\"\n\
         [[routes]]\nprofile = \"echo\"\n",
        listen.join(", ")
    )
}

/// A port free for UDP and TCP on 127.0.0.1 and for UDP on ::1 at the time of the call (bound,
/// read, released). The daemon itself is given port 0 instead; this is for a port nothing
/// should listen on.
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
/// A phone's UDP socket on 127.0.0.1 (a port of its own, a 5 s read timeout) and its address.
pub fn phone() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let me = socket.local_addr().unwrap();
    (socket, me)
}

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
