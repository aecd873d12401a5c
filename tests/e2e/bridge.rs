//! The daemon as the end-to-end tests run it: a configuration from a [`Setup`] (the in-process
//! fake with a record, a profile), SIPp runs against it, a capture of its RTP, and what is left
//! when it stops (exit code, log, the fake's record). Shared by `tests/e2e.rs` and
//! `tests/upstream_faults.rs`.
//!
//! No fixed port: the daemon listens on UDP port 0 of 127.0.0.1 and [`Bridge::start`] reads the
//! port it bound from its log ([`Bridge::sip_port`]); its RTP range (200 ports) is found free at
//! run time ([`Bridge::rtp_range`]), and so are SIPp's ports, for each run; the admin endpoint is
//! off.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, Daemon};
use crate::support::*;

pub const LOCALHOST: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

/// How many ports the daemon's RTP range has.
pub const RTP_PORTS: u16 = 200;

/// What differs between the tests' daemons.
#[derive(Default)]
pub struct Setup {
    /// Extra keys of `[upstreams.fake]` (`record` is always set).
    pub fake: &'static str,
    /// Keys of `[profiles.p]` after `upstream` (sub-tables last).
    pub profile: String,
    /// The upstream of the profile (default "fake"), and extra upstream tables.
    pub upstream: &'static str,
    pub upstreams: String,
    /// Extra environment of the daemon (API keys).
    pub env: Vec<(&'static str, String)>,
}

impl Setup {
    pub fn new() -> Self {
        Self {
            upstream: "fake",
            ..Self::default()
        }
    }
}

/// The daemon under test, its directory (config, log, fake record, capture, SIPp logs).
pub struct Bridge {
    pub daemon: Daemon,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub record: PathBuf,
    pub setup: Setup,
    /// The UDP port the daemon bound (its `listening` log line).
    pub sip_port: u16,
    /// Its RTP range.
    rtp: (u16, u16),
}

impl Bridge {
    pub fn start(setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("bridge.log");
        let record = dir.path().join("fake.jsonl");
        let (a, b) = crate::common::ports::free_udp_range(RTP_PORTS);
        let config = format!(
            r#"[log]
format = "json"

[sip]
listen = ["udp:127.0.0.1:0"]

[admin]
enabled = false

[rtp]
port_range = "{a}-{b}"

[upstreams.fake]
kind = "fake"
record = "{record}"
{fake}

{upstreams}

[profiles.p]
upstream = "{upstream}"
{profile}

[[routes]]
profile = "p"
"#,
            record = record.display(),
            fake = setup.fake,
            upstreams = setup.upstreams,
            upstream = setup.upstream,
            profile = setup.profile,
        );
        let env: Vec<(&str, &str)> = setup.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut daemon =
            Daemon::start_logged(&config, "info,sip_realtime_bridge=debug", &env, &log);
        let sip = daemon.udp_addr();
        assert_eq!(sip.ip(), LOCALHOST, "{}", daemon.log_text());
        common::wait_for_200(sip);
        Self {
            daemon,
            dir,
            log,
            record,
            setup,
            sip_port: sip.port(),
            rtp: (a, b),
        }
    }

    /// The daemon's RTP range.
    pub fn rtp_range(&self) -> (u16, u16) {
        self.rtp
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Writes the caller's audio for SIPp's rtp_stream (caller.ulaw in the SIPp directory).
    pub fn caller_audio(&self, ulaw: &[u8]) {
        std::fs::write(self.dir().join("caller.ulaw"), ulaw).unwrap();
    }

    pub fn sipp(&self, scenario: &str, extra: &[&str], limit: Duration) -> SippRun {
        run_sipp(self.dir(), scenario, self.sip_port, extra, limit)
    }

    pub fn capture(&self) -> Capture {
        Capture::start(self.dir(), LOCALHOST, self.rtp)
    }

    /// Stops the daemon (SIGTERM): its exit code, its log, and the fake's record (complete once
    /// the daemon has exited).
    pub fn stop(mut self) -> Stopped {
        let exit = self.daemon.terminate();
        let log = self.log_text();
        let record = Record::load(&self.record);
        Stopped {
            exit,
            log,
            record,
            _dir: keep_or_remove(self.dir),
        }
    }
}

pub struct Stopped {
    pub exit: Option<i32>,
    pub log: String,
    pub record: Record,
    pub _dir: Option<tempfile::TempDir>,
}

/// The test's directory: removed at the end, or kept (and named) with `SRB_E2E_KEEP=1`, to look
/// at the capture, the record and the logs by hand.
pub fn keep_or_remove(dir: tempfile::TempDir) -> Option<tempfile::TempDir> {
    if std::env::var("SRB_E2E_KEEP").as_deref() == Ok("1") {
        eprintln!("SRB_E2E_KEEP=1: keeping {}", dir.keep().display());
        None
    } else {
        Some(dir)
    }
}

impl Stopped {
    /// The daemon's log (end) and the fake's record, for failure messages.
    pub fn report(&self) -> String {
        let mut out = format!("daemon exit after SIGTERM: {:?}\n", self.exit);
        for conn in self.record.connections() {
            out += &format!("--- fake record, connection {conn} ---\n");
            out += &self.record.summary(conn);
        }
        out += "--- daemon log, last 15 kB ---\n";
        out += tail(&self.log, 15_000);
        out
    }

    /// The one call record in the daemon's log (secondary evidence).
    pub fn call_record(&self) -> Value {
        let records = call_records(&self.log);
        assert_eq!(
            records.len(),
            1,
            "one \"call record\" log line expected\n{}",
            self.report()
        );
        records[0].clone()
    }
}

/// The RTP of one call in a capture: what SIPp sent to the bridge, what the bridge sent back.
pub struct CallRtp {
    pub to_bridge: Vec<Rtp>,
    pub from_bridge: Vec<Rtp>,
}

pub fn call_rtp(datagrams: &[Datagram], sipp_port: u16, bridge_port: u16) -> CallRtp {
    CallRtp {
        to_bridge: rtp_packets(datagrams, |d| {
            d.src.1 == sipp_port && d.dst.1 == bridge_port
        }),
        from_bridge: rtp_packets(datagrams, |d| {
            d.src.1 == bridge_port && d.dst.1 == sipp_port
        }),
    }
}

/// The one call of a SIPp run: its RTP ports from the message trace.
pub fn one_call_ports(run: &SippRun, report: &str) -> (u16, u16) {
    let calls = media_ports(&parse_trace(&run.messages));
    assert_eq!(calls.len(), 1, "one call with media: {calls:?}\n{report}");
    (calls[0].1, calls[0].2)
}
