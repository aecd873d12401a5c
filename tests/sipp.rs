//! Interop tests against SIPp (Debian package `sip-tester`): the daemon is started as an operator
//! would start it, and each scenario in `tests/sipp/*.xml` places one call at it over loopback.
//!
//! Each test has its own loopback address 127.0.0.N (Linux routes all of 127.0.0.0/8 to `lo`),
//! and no fixed port, as the host may run other SIP software: the bridge listens on port 0 of
//! N (UDP and TCP) and the harness reads the ports it bound from its `listening` log lines
//! before anything is sent, so nothing but the bridge can answer SIPp. SIPp's own ports (`-p`,
//! `-mp`), the bridge's RTP range and the ports of the peers standing in for a registrar or a
//! UAS, and baresip's, are found free at run time (`tests/common/ports.rs`); a peer that
//! listens is first seen holding its socket before the bridge or SIPp is pointed at it.
//! SIPp fails the call (exit status 1) on any unexpected message, a failed content
//! check or a receive timeout; the harness adds checks on the message trace (no error
//! responses, one dialog) and that the daemon stops cleanly on SIGTERM. On failure it prints the
//! SIPp command, its logs and the daemon's debug log.
//!
//! The last test drives baresip, a real softphone, through its `ctrl_tcp` module: dial, hold,
//! resume, hang up. SIPp and baresip are required: without them the tests fail with the
//! package to install, they do not skip.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::fmt::Write as _;
use std::fs::File;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::ports::{self, Proto};

const BIN: &str = env!("CARGO_BIN_EXE_sip-realtime-bridge");
/// SIPp is killed if it runs longer than this (its own `-timeout` is shorter).
const SIPP_DEADLINE: Duration = Duration::from_secs(30);
const READY_DEADLINE: Duration = Duration::from_secs(10);
const STOP_DEADLINE: Duration = Duration::from_secs(5);

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(format!("{name}.xml"))
}

/// Fails (never skips) when SIPp is missing, so CI cannot pass without running these tests.
fn require_sipp() {
    match Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`sipp` is not installed; these interop tests need it: \
             install sip-tester: apt-get install -y sip-tester"
        ),
        Err(e) => panic!("cannot run `sipp -v`: {e}"),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Udp,
    Tcp,
}

/// One interop case: a scenario, the bridge's address, and what differs from the defaults.
struct Case {
    scenario: &'static str,
    ip: Ipv4Addr,
    transport: Transport,
    /// Extra `[limits]` lines for the bridge's configuration.
    limits: &'static str,
    /// Extra SIPp arguments.
    sipp_args: &'static [&'static str],
}

impl Case {
    fn udp(scenario: &'static str, last_octet: u8) -> Self {
        Self {
            scenario,
            ip: Ipv4Addr::new(127, 0, 0, last_octet),
            transport: Transport::Udp,
            limits: "",
            sipp_args: &[],
        }
    }
}

fn write_config(dir: &Path, ip: Ipv4Addr, limits: &str) -> PathBuf {
    let (rtp_first, rtp_last) = ports::free_udp_range(100);
    let body = format!(
        r#"[sip]
# Port 0: the kernel chooses, the log says which.
listen = ["udp:{ip}:0", "tcp:{ip}:0"]
# 64*T1 = 6.4 s: the lost-ACK case ends in seconds.
t1 = "100ms"

[admin]
enabled = false

[rtp]
port_range = "{rtp_first}-{rtp_last}"

[limits]
{limits}

[upstreams.fake]
kind = "fake"

[profiles.echo]
upstream = "fake"

[[routes]]
profile = "echo"
"#
    );
    let path = dir.join("bridge.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// The daemon under test; killed on drop if a test panics before stopping it.
struct Bridge {
    child: Child,
    log: PathBuf,
    ip: Ipv4Addr,
    /// The addresses it bound (port 0 in the configuration), from its log.
    udp: SocketAddr,
    tcp: SocketAddr,
}

impl Bridge {
    /// Starts the daemon and waits for the `listening` lines of its two sockets.
    fn start(dir: &Path, ip: Ipv4Addr, limits: &str) -> Self {
        let config = write_config(dir, ip, limits);
        let log = dir.join("bridge.log");
        let mut child = Command::new(BIN)
            .env_clear()
            .env("RUST_LOG", "debug")
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let (udp, tcp) =
            common::wait_for_log(&mut child, &log, "both SIP sockets listening", |l| {
                let found = common::sip_listening(l);
                let of = |t: &str| found.iter().find(|(k, _)| k == t).map(|(_, a)| *a);
                Some((of("UDP")?, of("TCP")?))
            });
        assert!(
            udp.ip() == ip && tcp.ip() == ip && udp.port() != 0 && tcp.port() != 0,
            "the bridge reports {udp} and {tcp}, not ports of {ip}"
        );
        Self {
            child,
            log,
            ip,
            udp,
            tcp,
        }
    }

    /// Its SIP address for `transport`.
    fn addr(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Udp => self.udp,
            Transport::Tcp => self.tcp,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the daemon answers an OPTIONS over UDP (and, for TCP cases, accepts a
    /// connection), or fails with its log.
    fn wait_ready(&mut self, transport: Transport) {
        let socket = UdpSocket::bind((self.ip, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let local = socket.local_addr().unwrap();
        let target = self.udp;
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        for n in 1u32.. {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("bridge exited early ({status}); its log:\n{}", self.log());
            }
            assert!(
                start.elapsed() < READY_DEADLINE,
                "bridge did not answer OPTIONS on {target} within {READY_DEADLINE:?}; its log:\n{}",
                self.log()
            );
            let ip = self.ip;
            let options = format!(
                "OPTIONS sip:ping@{target} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP {local};branch=z9hG4bK-ready-{n}\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:harness@{ip}>;tag=ready{n}\r\n\
                 To: <sip:ping@{ip}>\r\n\
                 Call-ID: ready-{n}-{}@{ip}\r\n\
                 CSeq: {n} OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n",
                std::process::id()
            );
            socket.send_to(options.as_bytes(), target).unwrap();
            if let Ok((len, _)) = socket.recv_from(&mut buf) {
                let reply = String::from_utf8_lossy(&buf[..len]);
                let status = reply.lines().next().unwrap_or_default();
                assert!(
                    status.starts_with("SIP/2.0 200"),
                    "OPTIONS got {status:?}; reply:\n{reply}\nbridge log:\n{}",
                    self.log()
                );
                break;
            }
        }
        if transport == Transport::Tcp {
            let tcp = self.tcp;
            while TcpStream::connect_timeout(&tcp, Duration::from_millis(200)).is_err() {
                assert!(
                    start.elapsed() < READY_DEADLINE,
                    "bridge does not accept TCP on {tcp}; its log:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGTERM, then waits for the exit; `None` if it had to be killed.
    fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.child.try_wait().unwrap() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < STOP_DEADLINE {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one SIPp run left behind.
struct SippRun {
    command: String,
    /// `None` when SIPp overran [`SIPP_DEADLINE`] and was killed.
    status: Option<ExitStatus>,
    /// `-trace_msg`: every message sent and received, with timestamps.
    messages: String,
    /// `-trace_logs`: the scenarios' `<log>` actions.
    actions: String,
    /// `-trace_err`: unexpected messages, failed checks, timeouts.
    errors: String,
    /// SIPp's screen (final statistics).
    screen: String,
}

/// Runs SIPp as a UAC for `case` against `target`, from a port (and media ports) found free.
fn run_sipp(dir: &Path, case: &Case, target: SocketAddr) -> SippRun {
    let ip = case.ip.to_string();
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "-sf".into(),
        scenario(case.scenario).to_string_lossy().into_owned(),
        "-t".into(),
        match case.transport {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
        .into(),
        "-i".into(),
        ip.clone(),
        "-p".into(),
        ports::free_udp_tcp_port().to_string(),
        "-mi".into(),
        ip.clone(),
        "-mp".into(),
        ports::free_sipp_media_port().to_string(),
        "-m".into(),
        "1".into(),
        "-l".into(),
        "1".into(),
        "-nostdin".into(),
        // Whole-run and per-receive limits: a dead bridge fails fast.
        "-timeout".into(),
        "25s".into(),
        "-timeout_error".into(),
        "-recv_timeout".into(),
        "5000".into(),
        "-trace_msg".into(),
        "-message_file".into(),
        file("sipp-messages.log"),
        "-trace_err".into(),
        "-error_file".into(),
        file("sipp-errors.log"),
        "-trace_logs".into(),
        "-log_file".into(),
        file("sipp-actions.log"),
    ];
    args.extend(case.sipp_args.iter().map(|&a| a.to_owned()));
    args.push(target.to_string());
    let command = format!("sipp {}", args.join(" "));

    let screen_path = dir.join("sipp-screen.log");
    let mut child = Command::new("sipp")
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(File::create(&screen_path).unwrap())
        .stderr(Stdio::from(
            File::create(dir.join("sipp-stderr.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let status = wait_or_kill(&mut child, SIPP_DEADLINE);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    SippRun {
        command,
        status,
        messages: read("sipp-messages.log"),
        actions: read("sipp-actions.log"),
        errors: read("sipp-errors.log") + &read("sipp-stderr.log"),
        screen: std::fs::read_to_string(&screen_path).unwrap_or_default(),
    }
}

/// The last `max` bytes of `text` (on a character boundary).
/// Waits for `child` to exit, killing it after `deadline`; `None` when it had to be killed.
fn wait_or_kill(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Everything needed to diagnose a failure from a CI log.
fn report(case: &Case, run: &SippRun, bridge_log: &str, bridge_exit: Option<ExitStatus>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "=== scenario {} on {} ===", case.scenario, case.ip);
    let _ = writeln!(out, "command: {}", run.command);
    let _ = writeln!(
        out,
        "sipp exit: {:?}; bridge exit after SIGTERM: {:?}",
        run.status, bridge_exit
    );
    let _ = writeln!(out, "--- scenario log (-trace_logs) ---\n{}", run.actions);
    let _ = writeln!(out, "--- SIPp errors (-trace_err) ---\n{}", run.errors);
    let _ = writeln!(
        out,
        "--- SIP messages (-trace_msg), last 20 kB ---\n{}",
        tail(&run.messages, 20_000)
    );
    let _ = writeln!(
        out,
        "--- SIPp screen, end ---\n{}",
        tail(&run.screen, 3_000)
    );
    let _ = writeln!(
        out,
        "--- bridge log, last 20 kB ---\n{}",
        tail(bridge_log, 20_000)
    );
    out
}

/// A message from SIPp's `-trace_msg` file.
struct Traced {
    received: bool,
    text: String,
}

impl Traced {
    fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }

    /// The response code, for a response.
    fn status(&self) -> Option<u16> {
        let rest = self.start_line().strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.text
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
    }

    fn cseq_method(&self) -> Option<&str> {
        self.header("CSeq")?.split_whitespace().nth(1)
    }

    fn to_tag(&self) -> Option<&str> {
        let to = self.header("To")?;
        let at = to.find(";tag=")?;
        to[at + 5..].split([';', ' ', '>']).next()
    }
}

fn parse_trace(trace: &str) -> Vec<Traced> {
    let mut out = Vec::new();
    for block in trace.split("-----------------------------------------------") {
        let mut lines = block.lines();
        // Timestamp rest of the separator line, then "UDP message received [..] bytes :".
        let _ = lines.next();
        let Some(kind) = lines.next() else { continue };
        let received = kind.contains("message received");
        if !received && !kind.contains("message sent") {
            continue;
        }
        let text: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        out.push(Traced {
            received,
            text: text.join("\n"),
        });
    }
    out
}

/// What a passing case leaves for case-specific checks.
struct Outcome {
    trace: Vec<Traced>,
    actions: String,
    report: String,
}

/// Runs one case end to end and applies the checks every case shares.
fn interop(case: &Case, allowed_errors: &[u16]) -> Outcome {
    require_sipp();
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), case.ip, case.limits);
    bridge.wait_ready(case.transport);
    let run = run_sipp(dir.path(), case, bridge.addr(case.transport));
    let bridge_exit = bridge.stop();
    let bridge_log = bridge.log();
    let report = report(case, &run, &bridge_log, bridge_exit);

    assert!(
        run.status.is_some_and(|s| s.success()),
        "SIPp failed\n{report}"
    );
    assert!(
        bridge_exit.is_some_and(|s| s.success()),
        "the bridge did not exit cleanly on SIGTERM\n{report}"
    );
    assert!(
        !bridge_log.lines().any(|l| l.contains(" ERROR ")),
        "the bridge logged an error\n{report}"
    );
    let trace = parse_trace(&run.messages);
    assert!(
        trace.iter().any(|m| m.received),
        "no message from the bridge in the trace\n{report}"
    );
    for m in trace.iter().filter(|m| m.received) {
        if let Some(code) = m.status() {
            assert!(
                code < 400 || allowed_errors.contains(&code),
                "unexpected error response {:?}\n{report}",
                m.start_line()
            );
        }
    }
    Outcome {
        trace,
        actions: run.actions,
        report,
    }
}

/// The received 200s to INVITEs (the initial one and any re-INVITE: all in one dialog).
fn invite_200s(trace: &[Traced]) -> Vec<&Traced> {
    trace
        .iter()
        .filter(|m| m.received && m.status() == Some(200) && m.cseq_method() == Some("INVITE"))
        .collect()
}

/// Every 200 to the INVITE names the same dialog (one To tag): retransmissions, not new calls.
fn assert_one_dialog(outcome: &Outcome) -> usize {
    let oks = invite_200s(&outcome.trace);
    let tags: Vec<Option<&str>> = oks.iter().map(|m| m.to_tag()).collect();
    assert!(
        !tags.is_empty() && tags.iter().all(|t| t.is_some() && *t == tags[0]),
        "200s to the INVITE with To tags {tags:?}: more than one dialog, or none\n{}",
        outcome.report
    );
    oks.len()
}

/// The bridge sent exactly one BYE: our 200 ended its transaction (no retransmission).
fn assert_one_bye_from_bridge(outcome: &Outcome) {
    let byes = outcome
        .trace
        .iter()
        .filter(|m| m.received && m.start_line().starts_with("BYE "))
        .count();
    assert_eq!(byes, 1, "BYEs from the bridge\n{}", outcome.report);
}

#[test]
fn basic_call_over_udp() {
    let outcome = interop(&Case::udp("basic_call", 31), &[]);
    assert_one_dialog(&outcome);
}

#[test]
fn basic_call_over_tcp_answers_on_the_callers_connection() {
    let case = Case {
        transport: Transport::Tcp,
        ..Case::udp("tcp_call", 38)
    };
    let outcome = interop(&case, &[]);
    assert_one_dialog(&outcome);
    let bye_ok = outcome
        .trace
        .iter()
        .any(|m| m.received && m.status() == Some(200) && m.cseq_method() == Some("BYE"));
    assert!(bye_ok, "no 200 to the BYE\n{}", outcome.report);
}

#[test]
fn caller_cancel() {
    // 481: the CANCEL found no transaction (the answer won); 487: the CANCEL won.
    let outcome = interop(&Case::udp("cancel", 32), &[481, 487]);
    let outcomes: Vec<&str> = outcome
        .actions
        .lines()
        .filter(|l| l.contains("outcome: "))
        .collect();
    assert_eq!(outcomes.len(), 1, "{}", outcome.report);
    // Shown with --nocapture: which side of the race this run exercised.
    println!("caller_cancel: {}", outcomes[0]);
}

/// The CANCEL scenario's other branch (CANCEL wins: 200 to the CANCEL and 487 to the INVITE,
/// in either order), which the bridge cannot show while it answers at once, checked against a
/// SIPp UAS stand-in that never answers. This tests the scenario, not the bridge.
#[test]
fn cancel_scenario_handles_the_cancel_winning() {
    require_sipp();
    for (order, last_octet) in [("0", 41), ("1", 42)] {
        let case = Case::udp("cancel", last_octet);
        let dir = tempfile::tempdir().unwrap();
        let ip = case.ip.to_string();
        let stand_in = SocketAddr::from((case.ip, ports::free_udp_tcp_port()));
        let stderr = dir.path().join("stand-in-stderr.log");
        let mut uas = Command::new("sipp")
            .arg("-sf")
            .arg(scenario("uas_cancel_stand_in"))
            .args(["-set", "order", order, "-i", &ip, "-p"])
            .arg(stand_in.port().to_string())
            .args(["-mp", &ports::free_sipp_media_port().to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "15s", "-timeout_error"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        // The caller is pointed at the stand-in only once it holds its port.
        ports::wait_until_bound(&mut uas, "the SIPp stand-in", Proto::Udp, stand_in, || {
            std::fs::read_to_string(&stderr).unwrap_or_default()
        });
        let run = run_sipp(dir.path(), &case, stand_in);
        let uas_status = wait_or_kill(&mut uas, STOP_DEADLINE);
        let report = report(&case, &run, "(no bridge: SIPp stand-in)", None);
        assert!(
            run.status.is_some_and(|s| s.success()),
            "order {order}\n{report}"
        );
        assert!(
            uas_status.is_some_and(|s| s.success()),
            "stand-in, order {order}\n{report}"
        );
        assert!(
            run.actions.contains("outcome: CANCEL won the race"),
            "order {order}\n{report}"
        );
    }
}

#[test]
fn bridge_hangs_up_at_max_call_duration() {
    let case = Case {
        limits: r#"max_call_duration = "3s""#,
        sipp_args: &["-set", "min_ms", "2500", "-set", "max_ms", "6000"],
        ..Case::udp("bye_from_bridge", 33)
    };
    let outcome = interop(&case, &[]);
    assert_one_dialog(&outcome);
    assert_one_bye_from_bridge(&outcome);
}

#[test]
fn reinvite_hold_and_resume() {
    let outcome = interop(&Case::udp("hold_resume", 34), &[]);
    assert_one_dialog(&outcome);
    let answers = outcome
        .actions
        .lines()
        .filter(|l| l.starts_with("hold answer:") || l.starts_with("resume answer:"))
        .count();
    assert_eq!(answers, 2, "{}", outcome.report);
}

#[test]
fn options_out_of_dialog() {
    interop(&Case::udp("options", 35), &[]);
}

#[test]
fn retransmitted_invite_is_absorbed() {
    let case = Case {
        sipp_args: &["-nr"],
        ..Case::udp("retransmitted_invite", 36)
    };
    let outcome = interop(&case, &[]);
    let oks = assert_one_dialog(&outcome);
    assert!(
        oks >= 2,
        "expected the 200 again after the copy\n{}",
        outcome.report
    );
    let invites_sent = outcome
        .trace
        .iter()
        .filter(|m| !m.received && m.start_line().starts_with("INVITE "))
        .count();
    assert_eq!(invites_sent, 2, "{}", outcome.report);
}

#[test]
fn lost_ack_retransmits_the_200_then_sends_bye() {
    // t1 = 100ms: retransmissions at 0.1, 0.3, 0.7, 1.5, 3.1 s...; BYE at 64*T1 = 6.4 s.
    let case = Case {
        sipp_args: &["-nr", "-set", "min_ms", "6000", "-set", "max_ms", "9000"],
        ..Case::udp("lost_ack", 37)
    };
    let outcome = interop(&case, &[]);
    let oks = assert_one_dialog(&outcome);
    assert!(
        oks >= 3,
        "expected the 200 and at least 2 retransmissions, got {oks}\n{}",
        outcome.report
    );
    assert!(
        !outcome
            .trace
            .iter()
            .any(|m| !m.received && m.start_line().starts_with("ACK ")),
        "the scenario must never ACK\n{}",
        outcome.report
    );
    assert_one_bye_from_bridge(&outcome);
}

// --- baresip: a real softphone, driven over its ctrl_tcp module ---------------------------------

const BARESIP_MODULES: &str = "/usr/lib/baresip/modules";

/// Issue 8's drain: ten live calls when SIGTERM arrives; every one runs to its caller's BYE
/// (none is cut), new ones are refused meanwhile, and the daemon exits 0 after the last.
#[test]
fn a_drain_with_ten_live_calls_loses_none() {
    require_sipp();
    let ip = Ipv4Addr::new(127, 0, 0, 49);
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), ip, "drain_timeout = \"30s\"\n");
    bridge.wait_ready(Transport::Udp);
    let mut sipp = Command::new("sipp")
        .arg("-sf")
        .arg(scenario("held_call"))
        .args(["-i", &ip.to_string(), "-mi", &ip.to_string()])
        .args(["-p", &ports::free_udp_tcp_port().to_string()])
        .args(["-mp", &ports::free_sipp_media_port().to_string()])
        .args(["-m", "10", "-l", "10", "-r", "20", "-d", "4000", "-nostdin"])
        .args([
            "-timeout",
            "25s",
            "-timeout_error",
            "-trace_err",
            "-trace_stat",
        ])
        .arg(bridge.udp.to_string())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // All ten are up (answered within a second at 20 calls/s), then the daemon is told to stop.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = bridge.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let stopped = Instant::now();
    let sipp_status = wait_or_kill(&mut sipp, SIPP_DEADLINE);
    let exit = wait_or_kill(&mut bridge.child, Duration::from_secs(10));
    let log = bridge.log();
    let errors: String = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("errors"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    let report = format!(
        "--- bridge ---\n{}\n--- SIPp errors ---\n{errors}",
        tail(&log, 8000)
    );
    assert!(
        sipp_status.is_some_and(|s| s.success()),
        "a call failed: SIPp counts every call that did not reach its own BYE\n{report}"
    );
    assert_eq!(exit.and_then(|s| s.code()), Some(0), "{report}");
    // The last BYE came about 2.5 s after the signal; the drain ended with it, not at 30 s.
    assert!(stopped.elapsed() < Duration::from_secs(10), "{report}");
    let records: Vec<&str> = log.lines().filter(|l| l.contains("call record")).collect();
    assert_eq!(records.len(), 10, "{report}");
    assert!(
        records
            .iter()
            .all(|r| r.contains("end_reason=\"caller_bye\"")),
        "{report}"
    );
    assert!(log.contains("draining"), "{report}");
}

/// Blind transfer with a real peer: the caller presses 0 (SIP INFO), the profile maps 0 to the
/// transfer target "operator", the bridge sends REFER (Refer-To the target, Referred-By us),
/// follows the NOTIFYs and, once the sipfrag says 200, hangs up with a Reason.
#[test]
fn digit_action_transfers_the_caller_by_refer() {
    const TRANSFER: &str = "\n[[profiles.echo.transfer_targets]]\nname = \"operator\"\n\
        description = \"The front desk\"\nuri = \"sip:operator@pbx.example.com\"\n\
        [profiles.echo.dtmf.actions]\n\"0\" = { transfer = \"operator\" }\n";
    let case = Case {
        limits: TRANSFER,
        ..Case::udp("transfer", 48)
    };
    let outcome = interop(&case, &[]);
    assert!(
        outcome
            .actions
            .contains("REFER to sip:operator@pbx.example.com"),
        "{}",
        outcome.report
    );
    assert!(
        outcome.actions.contains("BYE reason: call transferred"),
        "{}",
        outcome.report
    );
    assert!(
        outcome.report.contains("end_reason=\"transferred\""),
        "{}",
        outcome.report
    );
}

/// A digest registrar in SIPp (its own digest code checks our credentials): the bridge
/// registers at start (401, then credentials), logs the granted expiry, and de-registers
/// (Expires: 0) at shutdown. Its REGISTERs name the port the bridge bound (port 0 in its
/// configuration) in Via and Contact.
#[test]
fn bridge_registers_with_digest_and_unregisters_at_shutdown() {
    use std::os::unix::fs::PermissionsExt as _;
    require_sipp();
    let ip = Ipv4Addr::new(127, 0, 0, 47);
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("pbx-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let registrar_addr = SocketAddr::from((ip, ports::free_udp_tcp_port()));
    let registrar_stderr = dir.path().join("registrar-stderr.log");
    let mut registrar = Command::new("sipp")
        .arg("-sf")
        .arg(scenario("registrar"))
        .args(["-i", &ip.to_string(), "-mi", &ip.to_string()])
        .args(["-p", &registrar_addr.port().to_string()])
        .args(["-mp", &ports::free_sipp_media_port().to_string()])
        .args(["-m", "1", "-nostdin"])
        .args([
            "-timeout",
            "20s",
            "-timeout_error",
            "-trace_err",
            "-trace_msg",
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&registrar_stderr).unwrap())
        .spawn()
        .unwrap();
    // The bridge registers only at a registrar seen holding its port.
    ports::wait_until_bound(
        &mut registrar,
        "the SIPp registrar",
        Proto::Udp,
        registrar_addr,
        || std::fs::read_to_string(&registrar_stderr).unwrap_or_default(),
    );
    let accounts = format!(
        "\n[[sip.accounts]]\nname = \"pbx\"\nregistrar = \"sip:{registrar_addr}\"\nusername = \"2001\"\n\
         password_file = \"{}\"\n",
        password.display()
    );
    let mut bridge = Bridge::start(dir.path(), ip, &accounts);
    let start = Instant::now();
    while !bridge.log().contains("registered account=pbx") && start.elapsed() < READY_DEADLINE {
        std::thread::sleep(Duration::from_millis(50));
    }
    let exit = bridge.stop();
    let registrar_status = wait_or_kill(&mut registrar, STOP_DEADLINE);
    let log = bridge.log();
    let registrar_file = |suffix: &str| -> String {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("registrar_") && name.ends_with(suffix)
            })
            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
            .collect()
    };
    let sipp_log = registrar_file(".log");
    let report = format!(
        "--- bridge ---\n{}\n--- SIPp ---\n{}",
        tail(&log, 6000),
        tail(&sipp_log, 6000)
    );
    assert!(exit.is_some_and(|s| s.success()), "{report}");
    assert!(
        registrar_status.is_some_and(|s| s.success()),
        "the registrar saw no valid credentials or no de-registration\n{report}"
    );
    assert!(
        log.contains("registered account=pbx expires=60"),
        "{report}"
    );
    assert!(log.contains("unregistered account=pbx"), "{report}");
    assert!(!log.contains("s3cret"), "the password reached the log");
    // Every REGISTER (challenged, authorised, de-registration) names the bound port.
    let trace = parse_trace(&registrar_file("_messages.log"));
    let registers: Vec<&Traced> = trace
        .iter()
        .filter(|m| m.received && m.start_line().starts_with("REGISTER "))
        .collect();
    assert!(
        registers.len() >= 3,
        "REGISTERs: {}\n{report}",
        registers.len()
    );
    let udp = bridge.udp;
    for register in registers {
        let (via, contact) = (register.header("Via"), register.header("Contact"));
        assert!(
            via.is_some_and(|v| v.starts_with(&format!("SIP/2.0/UDP {udp};"))),
            "Via {via:?} does not name the bound {udp}\n{report}"
        );
        assert!(
            contact.is_some_and(|c| c.contains(&format!("@{udp}>")) || c.contains(&format!("@{udp};"))),
            "Contact {contact:?} does not name the bound {udp}\n{report}"
        );
    }
}

fn require_baresip() {
    match Command::new("baresip")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`baresip` is not installed; this interop test needs it: \
             apt-get install -y baresip-core"
        ),
        Err(e) => panic!("cannot run `baresip -h`: {e}"),
    }
    assert!(
        Path::new(BARESIP_MODULES).join("ctrl_tcp.so").exists(),
        "baresip's modules are not in {BARESIP_MODULES}: apt-get install -y baresip-core"
    );
}

/// A 16-bit mono 8 kHz WAV of `seconds` of a 440 Hz tone: baresip's audio source (`aufile`), as
/// the machine has no sound card and `ausine` only runs at 48 kHz.
fn write_tone_wav(path: &Path, seconds: u32) {
    let rate: u32 = 8000;
    let samples = rate * seconds;
    let mut wav = Vec::with_capacity(44 + 2 * samples as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + 2 * samples).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(2 * samples).to_le_bytes());
    for i in 0..samples {
        let t = f64::from(i) / f64::from(rate);
        let v = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16;
        wav.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, wav).unwrap();
}

/// A client for baresip's ctrl_tcp: netstring-framed JSON commands, responses and events.
struct Ctrl {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Every message received, for the failure report.
    seen: Vec<serde_json::Value>,
}

impl Ctrl {
    fn connect(addr: SocketAddr) -> Self {
        let start = Instant::now();
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        start.elapsed() < READY_DEADLINE,
                        "baresip's ctrl_tcp on {addr}: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            stream,
            buf: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn send(&mut self, command: &str, params: &str) {
        use std::io::Write as _;
        let json = serde_json::json!({ "command": command, "params": params, "token": command })
            .to_string();
        let frame = format!("{}:{json},", json.len());
        self.stream.write_all(frame.as_bytes()).unwrap();
    }

    /// The next complete message, if one arrives before `deadline`.
    fn next(&mut self, deadline: Instant) -> Option<serde_json::Value> {
        use std::io::Read as _;
        loop {
            if let Some(colon) = self.buf.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .unwrap()
                    .parse()
                    .unwrap();
                if self.buf.len() > colon + len + 1 {
                    let body = self.buf[colon + 1..colon + 1 + len].to_vec();
                    self.buf.drain(..colon + len + 2);
                    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    self.seen.push(value.clone());
                    return Some(value);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("ctrl_tcp: {e}"),
            }
        }
    }

    /// Sends a command and waits, within 5 s, for its successful response and (if given) for
    /// an event of type `event`, in either order.
    fn command(&mut self, command: &str, params: &str, event: Option<&str>) -> bool {
        self.send(command, params);
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut answered, mut happened) = (false, event.is_none());
        while !(answered && happened) {
            let Some(m) = self.next(deadline) else {
                return false;
            };
            if m["response"] == true && m["token"] == command {
                if m["ok"] != true {
                    return false;
                }
                answered = true;
            }
            if event.is_some_and(|e| m["event"] == true && m["type"] == e) {
                happened = true;
            }
        }
        true
    }
}

#[test]
fn baresip_call_hold_resume_hangup() {
    require_baresip();
    let ip = Ipv4Addr::new(127, 0, 0, 39);
    let dir = tempfile::tempdir().unwrap();
    let mut bridge = Bridge::start(dir.path(), ip, "");
    bridge.wait_ready(Transport::Udp);

    let conf = dir.path().join("baresip");
    std::fs::create_dir(&conf).unwrap();
    let wav = dir.path().join("tone.wav");
    write_tone_wav(&wav, 10);
    // Its SIP and ctrl_tcp ports and RTP range, found free.
    let sip = SocketAddr::from((ip, ports::free_udp_tcp_port()));
    let ctrl_addr = SocketAddr::from((ip, ports::free_tcp_port()));
    let (rtp_first, rtp_last) = ports::free_udp_range(100);
    std::fs::write(
        conf.join("config"),
        format!(
            "poll_method epoll\n\
             sip_listen {sip}\n\
             sip_trans_def udp\n\
             net_interface {ip}\n\
             audio_source aufile,{wav}\n\
             audio_alert aufile,{wav}\n\
             rtp_ports {rtp_first}-{rtp_last}\n\
             module_path {BARESIP_MODULES}\n\
             module g711.so\n\
             module aufile.so\n\
             module_app account.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             ctrl_tcp_listen {ctrl_addr}\n",
            wav = wav.display()
        ),
    )
    .unwrap();
    std::fs::write(
        conf.join("accounts"),
        format!("<sip:tester@{ip}>;regint=0\n"),
    )
    .unwrap();
    std::fs::write(conf.join("contacts"), "").unwrap();

    let log_path = dir.path().join("baresip.log");
    let log = File::create(&log_path).unwrap();
    let mut baresip = Command::new("baresip")
        .arg("-f")
        .arg(&conf)
        .args(["-4", "-s"]) // -s: SIP trace on stdout
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    // Commands go to baresip's own ctrl_tcp socket, never to another program's.
    let baresip_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    ports::wait_until_bound(&mut baresip, "baresip", Proto::Udp, sip, baresip_log);
    ports::wait_until_bound(&mut baresip, "baresip", Proto::Tcp, ctrl_addr, baresip_log);
    let mut ctrl = Ctrl::connect(ctrl_addr);
    let mut steps = Vec::new();
    let dial = format!("sip:echo@{}", bridge.udp);
    let mut ok = true;
    // Each re-INVITE's answer arrives as CALL_REMOTE_SDP.
    for (command, params, event) in [
        ("dial", dial.as_str(), "CALL_ESTABLISHED"),
        ("hold", "", "CALL_REMOTE_SDP"),
        ("resume", "", "CALL_REMOTE_SDP"),
        ("hangup", "", "CALL_CLOSED"),
    ] {
        ok = ok && ctrl.command(command, params, Some(event));
        steps.push((command, ok));
        std::thread::sleep(Duration::from_millis(300));
    }
    ctrl.send("quit", "");

    let start = Instant::now();
    while baresip.try_wait().unwrap().is_none() && start.elapsed() < STOP_DEADLINE {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = baresip.kill();
    let _ = baresip.wait();
    let bridge_exit = bridge.stop();
    let bridge_log = bridge.log();
    let trace = std::fs::read_to_string(&log_path).unwrap_or_default();
    let events: Vec<String> = ctrl.seen.iter().map(ToString::to_string).collect();
    let report = format!(
        "steps: {steps:?}\nbridge exit: {bridge_exit:?}\n--- ctrl_tcp ---\n{}\n\
         --- baresip (SIP trace) ---\n{}\n--- bridge log ---\n{}",
        events.join("\n"),
        tail(&trace, 20_000),
        tail(&bridge_log, 20_000)
    );

    assert!(ok, "baresip did not get through the call\n{report}");
    assert!(bridge_exit.is_some_and(|s| s.success()), "{report}");
    // The ladder, from both ends: no error response anywhere, and the SDP directions of hold
    // (sendonly offered, recvonly answered) and resume (sendrecv) as baresip saw them.
    let statuses: Vec<u16> = trace
        .lines()
        .filter_map(|l| l.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok())
        .collect();
    assert!(statuses.iter().all(|&c| c < 400), "{statuses:?}\n{report}");
    let oks = statuses.iter().filter(|&&c| c == 200).count();
    assert!(
        oks >= 4,
        "INVITE, hold, resume and BYE each want a 200: {statuses:?}\n{report}"
    );
    let sent_codes: Vec<&str> = bridge_log
        .lines()
        .filter_map(|l| l.split_once("send SIP/2.0 ").map(|(_, r)| r))
        .collect();
    assert!(
        sent_codes
            .iter()
            .all(|c| c.starts_with('1') || c.starts_with('2')),
        "the bridge sent {sent_codes:?}\n{report}"
    );
    let directions: Vec<&str> = trace
        .lines()
        .filter(|l| ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"].contains(&l.trim()))
        .map(str::trim)
        .collect();
    assert_eq!(
        directions,
        [
            "a=sendrecv", // INVITE
            "a=sendrecv", // 200
            "a=sendonly", // hold re-INVITE
            "a=recvonly", // its 200
            "a=sendrecv", // resume re-INVITE
            "a=sendrecv", // its 200
        ],
        "{report}"
    );
}
