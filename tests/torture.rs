//! RFC 4475 and RFC 5118 torture messages sent to the running daemon, inside a network
//! namespace that has only loopback.
//!
//! The messages name hosts in 192.0.2.0/24, 135.180.130.133, example.com and IPv6
//! documentation prefixes in Via, Contact and SDP. Whatever the daemon's addressing code does
//! with them, nothing can leave the machine: the daemon and the sender both run in a fresh
//! namespace (`ip netns`) whose only interface is `lo`.
//!
//! - `torture_messages_over_udp` (outside) checks for root and `ip`, creates the namespace,
//!   re-runs this test binary inside it (`ip netns exec NAME <this binary> --exact
//!   inner_torture --include-ignored`) with `SRB_TORTURE_IN_NETNS=1`, shows its output and
//!   asserts it passed; the namespace is deleted on drop, also on failure. Without root or
//!   `ip` it fails, unless `SRB_SKIP_NETNS_TESTS=1`, in which case it says so loudly and
//!   passes.
//! - `inner_torture` (ignored, so it only runs that way) refuses to run outside such a
//!   namespace, starts the daemon on udp/tcp 127.0.0.1:5080 and sends every message from
//!   127.0.0.1:5060, listening as well on every other port a message's Via names (replies go
//!   to the sent-by port, RFC 3261 18.2.2, or to the source port with `rport`, RFC 3581).
//!   Each message's outcome is checked against `torture/verdicts.rs`, and an OPTIONS probe
//!   after each one must get 200. Then a few TCP cases, then SIGTERM: the daemon must still
//!   be running and exit 0.
//!
//! Replies are matched by Call-ID and CSeq number; everything else arriving (200
//! retransmissions of unacknowledged INVITEs, BYEs after 64*T1) is logged and ignored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "torture/netns.rs"]
mod netns;
#[path = "torture/verdicts.rs"]
mod verdicts;
#[path = "torture/wire.rs"]
mod wire;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use verdicts::{CASES, Case, Check, DBLREQ_TRAILING_CALL_ID, Verdict};
use wire::Head;

const IN_NETNS: &str = "SRB_TORTURE_IN_NETNS";
const SKIP: &str = "SRB_SKIP_NETNS_TESTS";
const BIN: &str = env!("CARGO_BIN_EXE_sip-realtime-bridge");

const DAEMON_PORT: u16 = 5080;
const SOURCE_PORT: u16 = 5060;
/// How long to wait to call a message dropped.
const DROP_WAIT: Duration = Duration::from_millis(300);
/// How long a reply (and the probe's 200) may take.
const REPLY_WAIT: Duration = Duration::from_secs(2);
/// How long the daemon may take to start answering.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// How long the daemon may take to exit after SIGTERM.
const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// The whole inner run, after which the outer test kills it.
const INNER_LIMIT: Duration = Duration::from_secs(55);

const CONFIG: &str = r#"
[sip]
listen = ["udp:127.0.0.1:5080", "tcp:127.0.0.1:5080"]
t1 = "100ms"
[rtp]
port_range = "30000-30099"
[upstreams.fake]
kind = "fake"
[profiles.echo]
upstream = "fake"
[[routes]]
profile = "echo"
"#;

fn data(set: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(set)
        .join(file)
}

fn manifest_files(set: &str) -> Vec<String> {
    std::fs::read_to_string(data(set, "MANIFEST.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect()
}

/// The table names every manifest file once, in manifest order, and each request's top Via
/// can be read (so the reply port is known). Runs anywhere; no network.
#[test]
fn verdict_table_covers_both_manifests() {
    let in_table: Vec<String> = CASES
        .iter()
        .map(|c| format!("{}/{}", c.set, c.file))
        .collect();
    let in_manifests: Vec<String> = ["rfc4475", "rfc5118"]
        .iter()
        .flat_map(|set| {
            manifest_files(set)
                .into_iter()
                .map(move |f| format!("{set}/{f}"))
        })
        .collect();
    assert_eq!(in_table, in_manifests);
    for case in CASES {
        let head = Head::read(&std::fs::read(data(case.set, case.file)).unwrap());
        if head.is_response() || case.file == "test.dat" {
            continue;
        }
        assert!(
            head.top_via().is_some(),
            "{}: top Via unreadable",
            case.file
        );
        assert!(
            head.cseq_number().is_some(),
            "{}: no CSeq to match",
            case.file
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Outside: the namespace.

#[test]
fn torture_messages_over_udp() {
    if std::env::var_os(IN_NETNS).is_some() {
        return; // never nest
    }
    if let Some(reason) = netns::missing_prerequisite() {
        if std::env::var(SKIP).as_deref() == Ok("1") {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !! torture_messages_over_udp SKIPPED ({SKIP}=1): {reason}\n\
                 !! The RFC 4475 / RFC 5118 torture messages were NOT sent to the daemon.\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            return;
        }
        panic!(
            "{reason}.\nRun the tests as root with iproute2 installed, or set {SKIP}=1 to skip \
             this test explicitly."
        );
    }
    let name = format!("srb-torture-{}", std::process::id());
    let ns = netns::NetNs::create(&name).unwrap_or_else(|e| panic!("cannot create netns: {e}"));
    let logs = tempfile::tempdir().unwrap();
    let out_path = logs.path().join("inner.out");
    let err_path = logs.path().join("inner.err");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(&exe)
        .args([
            "--exact",
            "inner_torture",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(IN_NETNS, "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("cannot start ip netns exec");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > INNER_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    println!("---- inner_torture stdout ----\n{stdout}\n---- inner_torture stderr ----\n{stderr}");
    drop(ns);
    let Some(status) = status else {
        panic!("inner_torture did not finish within {INNER_LIMIT:?}; killed");
    };
    assert!(
        status.success(),
        "inner_torture failed ({status}); its output is above"
    );
    // An exit 0 with no test run (a renamed or filtered test) must not pass for a success.
    assert!(
        stdout.contains("test inner_torture ... ok") && stdout.contains("1 passed"),
        "inner_torture did not run; its output is above"
    );
    println!("torture: done in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// Inside: the daemon and the sender.

/// The daemon process, killed on drop if still running.
struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bridge.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&config)
            // A clean environment: SRB_* variables are configuration overrides to the daemon
            // (ours, SRB_TORTURE_IN_NETNS, would be refused as an unknown key).
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("daemon.out")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("daemon.err")).unwrap())
            .spawn()
            .expect("cannot start the daemon");
        Self { child, dir }
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!(
            "---- daemon stdout ----\n{}\n---- daemon stderr ----\n{}",
            read("daemon.out"),
            read("daemon.err")
        )
    }

    /// SIGTERM, then the exit status within [`EXIT_LIMIT`] (None: still running).
    fn terminate(&mut self) -> (Option<std::process::ExitStatus>, Duration) {
        let pid = self.child.id().to_string();
        let sent = Instant::now();
        netns::run("kill", &["-TERM", &pid]).unwrap();
        while sent.elapsed() < EXIT_LIMIT {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (Some(status), sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (None, sent.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One datagram we received.
struct Datagram {
    port: u16,
    at: Instant,
    bytes: Vec<u8>,
    head: Head,
}

/// Our UDP sockets on 127.0.0.1 (one per port a reply may target) and what they received.
struct Net {
    sender: UdpSocket,
    daemon: SocketAddr,
    rx: mpsc::Receiver<Datagram>,
    log: Vec<Datagram>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Net {
    fn bind(ports: &BTreeSet<u16>) -> Self {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut sender = None;
        let mut threads = Vec::new();
        for &port in ports {
            let socket = UdpSocket::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:{port}: {e}"));
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            if port == SOURCE_PORT {
                sender = Some(socket.try_clone().unwrap());
            }
            let (tx, stop) = (tx.clone(), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_535];
                while !stop.load(Ordering::Relaxed) {
                    match socket.recv_from(&mut buf) {
                        Ok((n, _)) => {
                            let bytes = buf[..n].to_vec();
                            let head = Head::read(&bytes);
                            let d = Datagram {
                                port,
                                at: Instant::now(),
                                bytes,
                                head,
                            };
                            if tx.send(d).is_err() {
                                return;
                            }
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => {} // ICMP errors surface here on Linux; keep listening
                    }
                }
            }));
        }
        Self {
            sender: sender.expect("the source port is among the bound ports"),
            daemon: SocketAddr::from(([127, 0, 0, 1], DAEMON_PORT)),
            rx,
            log: Vec::new(),
            stop,
            threads,
        }
    }

    fn send(&self, bytes: &[u8]) -> usize {
        self.sender.send_to(bytes, self.daemon).unwrap();
        self.log.len()
    }

    /// The first datagram from index `since` on that satisfies `pred`, waiting until
    /// `deadline` for it.
    fn wait(
        &mut self,
        since: usize,
        deadline: Instant,
        pred: impl Fn(&Datagram) -> bool,
    ) -> Option<usize> {
        let mut checked = since;
        loop {
            while checked < self.log.len() {
                if pred(&self.log[checked]) {
                    return Some(checked);
                }
                checked += 1;
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(d) => self.log.push(d),
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("receivers stopped"),
            }
        }
    }

    /// Takes in whatever has arrived so far.
    fn drain(&mut self) {
        while let Ok(d) = self.rx.try_recv() {
            self.log.push(d);
        }
    }

    fn shutdown(mut self) -> Vec<Datagram> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.drain();
        self.log
    }
}

/// How a datagram is tied to a torture message.
#[derive(Clone, Debug)]
struct Key {
    call_id: Option<String>,
    cseq: Option<String>,
}

impl Key {
    fn of(head: &Head) -> Self {
        Self {
            call_id: head.call_id().map(str::to_owned),
            cseq: head.cseq_number(),
        }
    }

    fn matches(&self, d: &Datagram) -> bool {
        self.call_id
            .as_deref()
            .is_none_or(|c| d.head.call_id() == Some(c))
            && self
                .cseq
                .as_deref()
                .is_none_or(|n| d.head.cseq_number().as_deref() == Some(n))
    }
}

fn is_final(d: &Datagram) -> bool {
    d.head.is_response() && d.head.status().is_some_and(|s| s >= 200)
}

/// An OPTIONS the daemon must answer with 200; `Err` says what happened instead.
fn probe(net: &mut Net, n: usize, wait: Duration) -> Result<Duration, String> {
    let call_id = format!("probe-{n}-{}@127.0.0.1", std::process::id());
    let request = format!(
        "OPTIONS sip:probe@127.0.0.1:{DAEMON_PORT} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:{SOURCE_PORT};branch=z9hG4bK-srb-probe-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:torture@127.0.0.1>;tag=probe{n}\r\n\
         To: <sip:probe@127.0.0.1:{DAEMON_PORT}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let sent = Instant::now();
    let since = net.send(request.as_bytes());
    let found = net.wait(since, sent + wait, |d| {
        is_final(d) && d.head.call_id() == Some(call_id.as_str())
    });
    match found {
        Some(i) if net.log[i].head.status() == Some(200) => Ok(sent.elapsed()),
        Some(i) => Err(format!("probe answered {}", net.log[i].head.start)),
        None => Err(format!(
            "no answer to the OPTIONS probe within {REPLY_WAIT:?}"
        )),
    }
}

/// What happened to one message.
struct Outcome {
    case: &'static Case,
    /// The first final response: its head, the port it reached, after how long.
    reply: Option<(Head, u16, Duration)>,
    reply_ports: Vec<u16>,
    probe: Result<Duration, String>,
    failures: Vec<String>,
}

fn verdict_text(v: Verdict) -> String {
    match v {
        Verdict::Reply(c) => c.to_string(),
        Verdict::ReplyOneOf(cs) => cs.iter().map(u16::to_string).collect::<Vec<_>>().join("|"),
        Verdict::ReplyOrDrop(cs) => format!(
            "{}|drop",
            cs.iter().map(u16::to_string).collect::<Vec<_>>().join("|")
        ),
        Verdict::Drop => "drop".to_owned(),
    }
}

fn run_case(net: &mut Net, case: &'static Case, n: usize) -> Outcome {
    let bytes = std::fs::read(data(case.set, case.file)).unwrap();
    let head = Head::read(&bytes);
    let key = Key::of(&head);
    let reply_ports = head
        .top_via()
        .map(|v| v.reply_ports(SOURCE_PORT))
        .unwrap_or_default();
    let sent = Instant::now();
    let since = net.send(&bytes);
    let mut failures = Vec::new();
    let wait = match case.verdict {
        Verdict::Reply(_) | Verdict::ReplyOneOf(_) => REPLY_WAIT,
        Verdict::ReplyOrDrop(_) | Verdict::Drop => DROP_WAIT,
    };
    let reply = if matches!(case.verdict, Verdict::Drop) {
        if let Some(i) = net.wait(since, sent + wait, |d| key.matches(d)) {
            failures.push(format!(
                "must be dropped, but the daemon sent {:?} to port {}",
                net.log[i].head.start, net.log[i].port
            ));
        }
        None
    } else {
        net.wait(since, sent + wait, |d| is_final(d) && key.matches(d))
            .map(|i| {
                let d = &net.log[i];
                (d.head.clone(), d.port, d.at.duration_since(sent))
            })
    };
    let allowed: &[u16] = match case.verdict {
        Verdict::Reply(ref c) => std::slice::from_ref(c),
        Verdict::ReplyOneOf(cs) | Verdict::ReplyOrDrop(cs) => cs,
        Verdict::Drop => &[],
    };
    match (&reply, case.verdict) {
        (None, Verdict::Reply(_) | Verdict::ReplyOneOf(_)) => failures.push(format!(
            "expected {}, got no final response within {wait:?}",
            verdict_text(case.verdict)
        )),
        (Some((reply, port, _)), _) => {
            let status = reply.status().unwrap();
            if !allowed.contains(&status) {
                failures.push(format!(
                    "expected {}, got {:?}",
                    verdict_text(case.verdict),
                    reply.start
                ));
            }
            if !reply_ports.contains(port) {
                failures.push(format!(
                    "reply reached port {port}, expected {reply_ports:?} (RFC 3261 18.2.2 / RFC 3581)"
                ));
            }
            failures.extend(check_reply(case, &head, reply));
        }
        (None, _) => {}
    }
    let probe = probe(net, n, REPLY_WAIT);
    if let Err(e) = &probe {
        failures.push(format!("daemon not healthy after it: {e}"));
    }
    Outcome {
        case,
        reply,
        reply_ports,
        probe,
        failures,
    }
}

/// Header checks of the table, and the Via stamping of RFC 3261 18.2.1 / RFC 3581.
fn check_reply(case: &Case, request: &Head, reply: &Head) -> Vec<String> {
    let mut failures = Vec::new();
    for check in case.checks {
        let has = |name: &str, text: &str| {
            reply
                .values(name)
                .any(|v| v.to_ascii_lowercase().contains(&text.to_ascii_lowercase()))
        };
        match *check {
            Check::HeaderContains(name, text) if !has(name, text) => failures.push(format!(
                "reply lacks {name} containing {text:?} ({:?})",
                reply.values(name).collect::<Vec<_>>()
            )),
            Check::HeaderLacks(name, text) if has(name, text) => failures.push(format!(
                "reply's {name} must not contain {text:?} ({:?})",
                reply.values(name).collect::<Vec<_>>()
            )),
            Check::NoHeader(name) if reply.first(name).is_some() => failures.push(format!(
                "reply must not carry {name} ({:?})",
                reply.values(name).collect::<Vec<_>>()
            )),
            _ => {}
        }
    }
    if let (Some(asked), Some(got)) = (request.top_via(), reply.top_via()) {
        // Every sent-by here differs from 127.0.0.1, or the request has rport: either way
        // the response's top Via carries received=127.0.0.1.
        if got.param("received") != Some(Some("127.0.0.1")) {
            failures.push(format!(
                "reply's top Via lacks received=127.0.0.1 (RFC 3261 18.2.1): {:?}",
                reply.first("via")
            ));
        }
        let rport = SOURCE_PORT.to_string();
        if asked.param("rport").is_some() && got.param("rport") != Some(Some(rport.as_str())) {
            failures.push(format!(
                "reply's top Via lacks rport={SOURCE_PORT} (RFC 3581 4): {:?}",
                reply.first("via")
            ));
        }
    }
    failures
}

/// Everything our sockets may be sent replies on: the source port, every sent-by port the
/// messages name (also the ones rport makes wrong, so a misdirected reply is reported rather
/// than lost), and 5061.
fn ports() -> BTreeSet<u16> {
    let mut ports = BTreeSet::from([SOURCE_PORT, 5061]);
    for case in CASES {
        let head = Head::read(&std::fs::read(data(case.set, case.file)).unwrap());
        if let Some(via) = head.top_via() {
            ports.extend(via.port);
            ports.extend(via.reply_ports(SOURCE_PORT));
        }
    }
    ports.remove(&DAEMON_PORT);
    ports
}

/// Reads a TCP stream until EOF, error or `limit`; what came, and whether it was closed.
fn read_tcp(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        stream
            .set_read_timeout(Some(
                (limit - start.elapsed()).max(Duration::from_millis(1)),
            ))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (got, Some(start.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => return (got, Some(start.elapsed())),
        }
    }
    (got, None)
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("(nothing)")
        .to_owned()
}

/// The stream cases of RFC 4475 3.1.2.2 and 3.1.2.3, and an OPTIONS over TCP afterwards.
fn tcp_cases(report: &mut String, failures: &mut Vec<String>) {
    let daemon = SocketAddr::from(([127, 0, 0, 1], DAEMON_PORT));
    let connect = || TcpStream::connect_timeout(&daemon, Duration::from_secs(2));

    // ncl.dat: a negative Content-Length loses the framing; the connection must be closed.
    match connect() {
        Ok(mut s) => {
            s.write_all(&std::fs::read(data("rfc4475", "ncl.dat")).unwrap())
                .unwrap();
            let (got, closed) = read_tcp(&mut s, Duration::from_secs(3));
            let _ = writeln!(
                report,
                "tcp ncl.dat: sent back {:?}; closed after {closed:?}",
                first_line(&got)
            );
            if closed.is_none() {
                failures.push(
                    "tcp ncl.dat: connection still open 3 s after a negative Content-Length \
                     (RFC 4475 3.1.2.3: unrecoverable framing error, close it)"
                        .into(),
                );
            }
            let head = Head::read(&got);
            if !got.is_empty() && !head.status().is_some_and(|s| (400..500).contains(&s)) {
                failures.push(format!(
                    "tcp ncl.dat: only an error response may come back, got {:?}",
                    head.start
                ));
            }
        }
        Err(e) => failures.push(format!("tcp: cannot connect to {daemon}: {e}")),
    }

    // clerr.dat: body shorter than Content-Length; over a stream the daemon cannot tell and
    // must wait for the rest (then give up after its partial-message timeout, 30 s in
    // src/io/sip.rs, longer than this test may run): nothing back, still open after 2 s.
    match connect() {
        Ok(mut s) => {
            s.write_all(&std::fs::read(data("rfc4475", "clerr.dat")).unwrap())
                .unwrap();
            let (got, closed) = read_tcp(&mut s, Duration::from_secs(2));
            let _ = writeln!(
                report,
                "tcp clerr.dat: sent back {:?}; closed after {closed:?} (waited 2 s)",
                first_line(&got)
            );
            if !got.is_empty() {
                failures.push(format!(
                    "tcp clerr.dat: the incomplete INVITE must not be answered, got {:?}",
                    first_line(&got)
                ));
            }
            if let Some(after) = closed {
                failures.push(format!(
                    "tcp clerr.dat: closed after {after:?}; RFC 4475 3.1.2.2 says wait for the \
                     rest of the body"
                ));
            }
            let _ = s.shutdown(Shutdown::Both);
        }
        Err(e) => failures.push(format!("tcp: cannot connect to {daemon}: {e}")),
    }

    // The daemon still answers over TCP, on the connection the request came on.
    match connect() {
        Ok(mut s) => {
            let local = s.local_addr().unwrap();
            let request = format!(
                "OPTIONS sip:probe@127.0.0.1:{DAEMON_PORT};transport=tcp SIP/2.0\r\n\
                 Via: SIP/2.0/TCP {local};branch=z9hG4bK-srb-tcp-probe;rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:torture@127.0.0.1>;tag=tcpprobe\r\n\
                 To: <sip:probe@127.0.0.1:{DAEMON_PORT}>\r\n\
                 Call-ID: tcp-probe-{}@127.0.0.1\r\n\
                 CSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n",
                std::process::id()
            );
            s.write_all(request.as_bytes()).unwrap();
            let start = Instant::now();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            s.set_read_timeout(Some(REPLY_WAIT)).unwrap();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") && start.elapsed() < REPLY_WAIT {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let status = Head::read(&got).status();
            let _ = writeln!(report, "tcp OPTIONS probe: {:?}", first_line(&got));
            if status != Some(200) {
                failures.push(format!(
                    "tcp OPTIONS probe: expected 200 on the same connection, got {:?}",
                    first_line(&got)
                ));
            }
        }
        Err(e) => failures.push(format!("tcp: cannot connect to {daemon}: {e}")),
    }
}

#[test]
#[ignore = "runs only inside the network namespace made by torture_messages_over_udp"]
fn inner_torture() {
    if std::env::var(IN_NETNS).as_deref() != Ok("1") {
        eprintln!(
            "inner_torture: not inside the torture namespace ({IN_NETNS} unset); it runs only \
             through torture_messages_over_udp. Nothing sent."
        );
        return;
    }
    let interfaces = netns::interfaces();
    assert_eq!(
        interfaces,
        ["lo"],
        "refusing to send torture messages: this network namespace has interfaces besides lo"
    );
    let started = Instant::now();
    let mut daemon = Daemon::start();
    let mut net = Net::bind(&ports());

    // Ready when an OPTIONS gets 200.
    let mut n = 0;
    loop {
        n += 1;
        if probe(&mut net, n, Duration::from_millis(100)).is_ok() {
            break;
        }
        assert!(
            daemon.running(),
            "the daemon exited at startup\n{}",
            daemon.log()
        );
        assert!(
            started.elapsed() < STARTUP_LIMIT,
            "the daemon does not answer OPTIONS after {STARTUP_LIMIT:?}\n{}",
            daemon.log()
        );
    }
    let ready = started.elapsed();

    let mut outcomes = Vec::new();
    for case in CASES {
        n += 1;
        outcomes.push(run_case(&mut net, case, n));
    }
    let udp_done = Instant::now();

    let mut report = String::new();
    let mut failures: Vec<String> = Vec::new();
    for o in &outcomes {
        let got = match &o.reply {
            Some((head, port, after)) => format!(
                "{} ->:{port} {}ms",
                head.status().unwrap(),
                after.as_millis()
            ),
            None => "none".to_owned(),
        };
        let probe = match &o.probe {
            Ok(d) => format!("200 {}ms", d.as_millis()),
            Err(_) => "FAILED".to_owned(),
        };
        let _ = writeln!(
            report,
            "{:<5} {:<30} expect {:<12} got {:<18} ports {:<14} probe {:<10} {}",
            if o.failures.is_empty() { "ok" } else { "FAIL" },
            o.case.file,
            verdict_text(o.case.verdict),
            got,
            format!("{:?}", o.reply_ports),
            probe,
            o.case.why
        );
        for f in &o.failures {
            failures.push(format!("{}: {f}", o.case.file));
        }
    }

    let tcp_started = Instant::now();
    tcp_cases(&mut report, &mut failures);

    let running = daemon.running();
    if !running {
        failures.push("the daemon is no longer running after the torture run".into());
    }
    let log = net.shutdown();

    // Never answered: the INVITE in dblreq's trailing octets, and the dropped messages (late
    // replies included).
    for d in &log {
        if d.head.call_id() == Some(DBLREQ_TRAILING_CALL_ID) {
            failures.push(format!(
                "dblreq.dat: the trailing INVITE was handled: {:?} reached port {}",
                d.head.start, d.port
            ));
        }
        if d.at >= tcp_started
            && d.head
                .call_id()
                .is_some_and(|c| c.starts_with("clerr.") || c.starts_with("ncl."))
        {
            failures.push(format!(
                "tcp: a UDP datagram about a TCP message: {:?} to port {}",
                d.head.start, d.port
            ));
        }
    }
    for case in CASES.iter().filter(|c| matches!(c.verdict, Verdict::Drop)) {
        let key = Key::of(&Head::read(
            &std::fs::read(data(case.set, case.file)).unwrap(),
        ));
        if let Some(d) = log.iter().find(|d| key.matches(d)) {
            failures.push(format!(
                "{}: answered late: {:?} to port {}",
                case.file, d.head.start, d.port
            ));
        }
    }
    let unmatched = log
        .iter()
        .filter(|d| !d.head.is_response())
        .map(|d| {
            d.head
                .start
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect::<Vec<_>>();
    let _ = writeln!(
        report,
        "received {} datagrams in all; requests from the daemon (ignored): {:?}",
        log.len(),
        unmatched
    );
    let bytes_received: usize = log.iter().map(|d| d.bytes.len()).sum();
    let _ = writeln!(report, "({bytes_received} bytes)");

    let (status, exit_after) = if running {
        daemon.terminate()
    } else {
        (None, Duration::ZERO)
    };
    match status {
        Some(s) if s.success() => {}
        Some(s) => failures.push(format!("the daemon exited with {s} after SIGTERM, not 0")),
        None if running => failures.push(format!(
            "the daemon did not exit within {EXIT_LIMIT:?} of SIGTERM"
        )),
        None => {}
    }
    let _ = writeln!(
        report,
        "daemon ready after {ready:?}; UDP cases took {:?}; TCP cases {:?}; SIGTERM -> {status:?} after {exit_after:?}; total {:?}",
        udp_done.duration_since(started + ready),
        tcp_started.elapsed().saturating_sub(exit_after),
        started.elapsed()
    );
    println!("{report}");
    if !failures.is_empty() {
        println!("{}", daemon.log());
        panic!(
            "{} torture failure(s):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
}
