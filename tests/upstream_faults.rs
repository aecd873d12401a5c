//! A misbehaving realtime upstream, against the running daemon over real sockets: the built-in
//! fake server acts out a fault (`[upstreams.fake] fault = { kind, after }`), SIPp calls, and
//! the outcome is measured from outside: a tcpdump capture of the daemon's SIP and RTP on `lo`
//! (when the BYE left, the pacing of every RTP packet before it, none after it), the sockets
//! the daemon still holds (`/proc/net/udp`), its peak memory (`/proc/PID/status`), and the
//! fake's record of what crossed the WebSocket. The call record in the log is checked last.
//!
//! | test | what it proves |
//! |---|---|
//! | `an_upstream_that_stops_reading_is_hung_up_while_rtp_keeps_its_pace` | BYE with `cause=38 "realtime upstream not reading"` within the stall limit plus one keepalive interval; RTP every 20 ms until the BYE, none after |
//! | `a_fatal_upstream_error_ends_the_call_and_no_rtp_follows_the_bye` | server errors end the call at once: BYE, the WebSocket closed with a reason, no RTP after the BYE |
//! | `a_refused_session_setup_gets_503_and_leaves_nothing_behind` | 503 Retry-After; the WebSocket closed by the bridge; no RTP socket of the daemon left bound; one record |
//! | `a_flood_of_model_audio_keeps_the_daemon_small` | audio deltas as fast as the socket takes them grow the daemon by less than 48 MB |
//! | `a_drain_with_a_stuck_upstream_ends_at_the_drain_timeout` | SIGTERM with a call whose upstream reads nothing: BYE at the drain timeout, exit 0 soon after |
//!
//! The tests run one at a time (a flood takes both cores, which would disturb another test's
//! pacing), on 127.0.0.1 with no fixed port: the daemon listens on port 0 (the port read from
//! its log), its RTP range and SIPp's ports are found free at run time (`tests/e2e/bridge.rs`),
//! and the sockets counted as the daemon's are those its process holds, not whatever else on
//! the host uses ports of the range. SIPp and tcpdump (and root) are required, as for
//! `tests/e2e.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "e2e/bridge.rs"]
mod bridge;
mod common;
#[path = "e2e/support.rs"]
mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bridge::*;
use support::*;

/// One test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The daemon's SIP and RTP on `lo`.
fn capture(bridge: &Bridge) -> Capture {
    let (a, b) = bridge.rtp_range();
    let filter = format!(
        "udp and host 127.0.0.1 and (portrange {a}-{b} or port {})",
        bridge.sip_port
    );
    Capture::start_filter(bridge.dir(), &filter)
}

/// When the daemon sent the first SIP message whose start line begins with `start` (and that
/// holds `contains`), from the capture.
fn sip_sent_at(datagrams: &[Datagram], sip_port: u16, start: &str, contains: &str) -> Option<u64> {
    datagrams
        .iter()
        .filter(|d| d.src.1 == sip_port)
        .find(|d| {
            let text = String::from_utf8_lossy(&d.payload);
            text.starts_with(start) && text.contains(contains)
        })
        .map(|d| d.unix_us)
}

/// The RTP the daemon sent to SIPp.
fn rtp_from_bridge(bridge: &Bridge, datagrams: &[Datagram]) -> Vec<Rtp> {
    let (a, b) = bridge.rtp_range();
    rtp_packets(datagrams, |d| {
        (a..=b).contains(&d.src.1) && d.src.1 % 2 == 0
    })
}

/// A field of `/proc/PID/status`, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn bye_reason(run: &SippRun) -> Option<String> {
    run.actions
        .lines()
        .find_map(|l| l.strip_prefix("BYE Reason:"))
        .map(|r| r.trim().to_owned())
}

#[test]
fn an_upstream_that_stops_reading_is_hung_up_while_rtp_keeps_its_pace() {
    if !tools_present(
        "an_upstream_that_stops_reading_is_hung_up_while_rtp_keeps_its_pace",
        &[SIPP, TCPDUMP],
    ) {
        return;
    }
    let _serial = serial();
    let mut setup = Setup::new();
    setup.fake = r#"fault = { kind = "stop_reading", after = "3s" }"#;
    // pcm16: six times the bytes of G.711 on the WebSocket, so the socket buffers fill sooner.
    setup.profile = "audio_format = \"pcm16\"".to_owned();
    setup.upstreams = "[limits]\nupstream_stall_timeout = \"10s\"\n".to_owned();
    let bridge = Bridge::start(setup);
    bridge.caller_audio(&silence_ulaw(1000));
    let capture = capture(&bridge);
    let run = bridge.sipp("e2e_upstream_drop", &["-m", "1"], Duration::from_secs(90));
    let datagrams = capture.stop();
    let sip_port = bridge.sip_port;
    let rtp = rtp_from_bridge(&bridge, &datagrams);
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    assert_eq!(
        bye_reason(&run).as_deref(),
        Some("Q.850;cause=38;text=\"realtime upstream not reading\""),
        "{report}"
    );
    let answered = sip_sent_at(&datagrams, sip_port, "SIP/2.0 200", "INVITE").expect("200 OK");
    let bye = sip_sent_at(&datagrams, sip_port, "BYE ", "").expect("BYE in the capture");
    let after_ms = (bye - answered) / 1000;
    println!(
        "BYE {after_ms} ms after the answer; {} RTP packets",
        rtp.len()
    );
    // Stopped reading 3 s after the connect; the ping at 15 s went unanswered; 10 s later the
    // BYE: within the stall limit plus one keepalive interval of the fault.
    assert!(
        (3_000 + 10_000..=3_000 + 10_000 + 15_000).contains(&after_ms),
        "BYE {after_ms} ms after the answer\n{report}"
    );
    // RTP kept its pace to the end, and stopped there.
    let before: Vec<&Rtp> = rtp.iter().filter(|p| p.unix_us <= bye).collect();
    let after = rtp.iter().filter(|p| p.unix_us > bye).count();
    assert_eq!(after, 0, "RTP after the BYE\n{report}");
    assert!(before.len() > 1_000, "{} packets\n{report}", before.len());
    let worst_gap = before
        .windows(2)
        .map(|w| w[1].unix_us - w[0].unix_us)
        .max()
        .unwrap();
    assert!(
        worst_gap < 60_000,
        "a gap of {worst_gap} us in our RTP\n{report}"
    );
    assert!(
        before
            .windows(2)
            .all(|w| w[1].seq == w[0].seq.wrapping_add(1)),
        "no packet missing\n{report}"
    );
    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let call = stopped.call_record();
    assert_eq!(call["end_reason"], "upstream_stalled", "{call}");
}

#[test]
fn a_fatal_upstream_error_ends_the_call_and_no_rtp_follows_the_bye() {
    if !tools_present(
        "a_fatal_upstream_error_ends_the_call_and_no_rtp_follows_the_bye",
        &[SIPP, TCPDUMP],
    ) {
        return;
    }
    let _serial = serial();
    let mut setup = Setup::new();
    setup.fake = r#"fault = { kind = "error_every_event", after = "2s" }"#;
    setup.profile = "audio_format = \"g711_ulaw\"".to_owned();
    let bridge = Bridge::start(setup);
    bridge.caller_audio(&silence_ulaw(1000));
    let capture = capture(&bridge);
    let run = bridge.sipp("e2e_upstream_drop", &["-m", "1"], Duration::from_secs(30));
    let datagrams = capture.stop();
    let sip_port = bridge.sip_port;
    let rtp = rtp_from_bridge(&bridge, &datagrams);
    // After the call: the daemon and SIPp wait a few seconds, and still nothing flows.
    std::thread::sleep(Duration::from_secs(2));
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    let reason = bye_reason(&run).unwrap_or_default();
    assert!(
        reason.starts_with("Q.850;cause=38;text=\"realtime upstream closed"),
        "{reason}\n{report}"
    );
    let answered = sip_sent_at(&datagrams, sip_port, "SIP/2.0 200", "INVITE").expect("200 OK");
    let bye = sip_sent_at(&datagrams, sip_port, "BYE ", "").expect("BYE in the capture");
    assert!(
        (bye - answered) / 1000 < 4_000,
        "BYE {} ms after the answer\n{report}",
        (bye - answered) / 1000
    );
    assert_eq!(
        rtp.iter().filter(|p| p.unix_us > bye).count(),
        0,
        "RTP after the BYE\n{report}"
    );
    // The bridge closed the WebSocket, with a reason.
    let conn = *stopped.record.connections().first().unwrap();
    let close = stopped
        .record
        .of(conn, "in")
        .find_map(|l| l.get("close").cloned())
        .unwrap_or_else(|| panic!("no close from the bridge\n{report}"));
    assert_eq!(close["code"], 1000, "{report}");
    assert_eq!(close["reason"], "call ended", "{report}");
    assert_eq!(stopped.exit, Some(0), "clean exit on SIGTERM\n{report}");
    let call = stopped.call_record();
    assert_eq!(call["end_reason"], "upstream_closed", "{call}");
}

#[test]
fn a_refused_session_setup_gets_503_and_leaves_nothing_behind() {
    if !tools_present(
        "a_refused_session_setup_gets_503_and_leaves_nothing_behind",
        &[SIPP],
    ) {
        return;
    }
    let _serial = serial();
    let mut setup = Setup::new();
    setup.fake = r#"fault = { kind = "refuse_session" }"#;
    let bridge = Bridge::start(setup);
    let range = bridge.rtp_range();
    let run = bridge.sipp("e2e_refused", &["-m", "3"], Duration::from_secs(30));
    // Everything of the three calls is released once they are refused.
    std::thread::sleep(Duration::from_millis(500));
    let bound = common::ports::udp_ports_held_by(bridge.daemon.child.id(), range);
    let log = bridge.log_text();
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    assert_eq!(
        run.actions.matches("503 Retry-After:  30 ").count(),
        3,
        "{report}"
    );
    assert!(
        bound.is_empty(),
        "RTP ports still bound: {bound:?}\n{report}"
    );
    assert_eq!(
        call_records(&log).len(),
        3,
        "a record for every call, before the stop\n{report}"
    );
    // Every WebSocket was closed by the bridge, though the service kept it open.
    let conns = stopped.record.connections();
    assert_eq!(conns.len(), 3, "{report}");
    for conn in conns {
        let close = stopped
            .record
            .of(conn, "in")
            .find_map(|l| l.get("close").cloned())
            .unwrap_or_else(|| panic!("connection {conn} not closed by the bridge\n{report}"));
        assert_eq!(close["code"], 1000, "{report}");
    }
    for call in call_records(&stopped.log) {
        assert_eq!(call["end_reason"], "upstream_failed", "{call}");
        assert_eq!(call["answered"], false, "{call}");
    }
}

#[test]
fn a_flood_of_model_audio_keeps_the_daemon_small() {
    if !tools_present("a_flood_of_model_audio_keeps_the_daemon_small", &[SIPP]) {
        return;
    }
    let _serial = serial();
    let mut setup = Setup::new();
    setup.fake = r#"fault = { kind = "flood_audio", after = "2s" }"#;
    setup.profile = "audio_format = \"g711_ulaw\"".to_owned();
    let bridge = Bridge::start(setup);
    bridge.caller_audio(&silence_ulaw(12_000));
    let pid = bridge.daemon.child.id();
    let baseline = status_kb(pid, "VmRSS:");
    let run = bridge.sipp(
        "e2e_call",
        &["-m", "1", "-d", "10000"],
        Duration::from_secs(40),
    );
    let peak = status_kb(pid, "VmHWM:");
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    let growth_mb = peak.saturating_sub(baseline) / 1024;
    println!("RSS {baseline} kB before the call, peak {peak} kB: +{growth_mb} MB");
    assert!(
        growth_mb < 48,
        "the daemon grew by {growth_mb} MB\n{report}"
    );
    let call = stopped.call_record();
    assert_eq!(call["end_reason"], "caller_bye", "{call}");
    // The flood was far more than the limit: most of it was dropped, not kept.
    assert!(
        call["model_audio_dropped_ms"].as_u64().unwrap() > 120_000,
        "{call}"
    );
}

#[test]
fn a_drain_with_a_stuck_upstream_ends_at_the_drain_timeout() {
    if !tools_present(
        "a_drain_with_a_stuck_upstream_ends_at_the_drain_timeout",
        &[SIPP],
    ) {
        return;
    }
    let _serial = serial();
    let mut setup = Setup::new();
    setup.fake = r#"fault = { kind = "stop_reading", after = "1s" }"#;
    setup.upstreams =
        "[limits]\ndrain_timeout = \"3s\"\nupstream_stall_timeout = \"60s\"\n".to_owned();
    let mut bridge = Bridge::start(setup);
    bridge.caller_audio(&silence_ulaw(1000));
    let pid = bridge.daemon.child.id().to_string();
    let signalled = std::sync::Arc::new(Mutex::new(None));
    let at = std::sync::Arc::clone(&signalled);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        *at.lock().unwrap() = Some(Instant::now());
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    });
    let run = bridge.sipp("e2e_upstream_drop", &["-m", "1"], Duration::from_secs(40));
    killer.join().unwrap();
    let sigterm = signalled.lock().unwrap().unwrap();
    let bye_after = sigterm.elapsed();
    // The daemon exits once the call has really ended and the BYE is answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(status) = bridge.daemon.child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited_after = sigterm.elapsed();
    let stopped = bridge.stop();
    let report = format!("{}\n{}", run.report(), stopped.report());
    assert!(run.ok(), "SIPp failed\n{report}");
    assert_eq!(
        bye_reason(&run).as_deref(),
        Some("Q.850;cause=16;text=\"bridge shutting down\""),
        "{report}"
    );
    println!("SIGTERM -> BYE (SIPp done) {bye_after:?}, -> exit {exited_after:?}");
    assert!(
        bye_after >= Duration::from_millis(2_900) && bye_after < Duration::from_secs(5),
        "BYE {bye_after:?} after SIGTERM\n{report}"
    );
    assert!(
        exit.is_some_and(|s| s.success()),
        "exit {exit:?} {exited_after:?} after SIGTERM\n{report}"
    );
    assert!(
        exited_after < Duration::from_secs(6),
        "exit {exited_after:?} after SIGTERM\n{report}"
    );
    let call = stopped.call_record();
    assert_eq!(call["end_reason"], "shutdown", "{call}");
}
