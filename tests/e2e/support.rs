//! What the end-to-end tests share: the tools they need, a packet capture of the daemon's RTP
//! (tcpdump, parsed here), the fake realtime server's record, SIPp and baresip runs, and the
//! audio measurements.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sip_realtime_bridge::audio::g711;

// --- tools --------------------------------------------------------------------------------------

/// The external programs, with the Debian package that has each.
pub const SIPP: (&str, &str, &str) = ("sipp", "-v", "sip-tester");
pub const BARESIP: (&str, &str, &str) = ("baresip", "-h", "baresip");
pub const TCPDUMP: (&str, &str, &str) = ("tcpdump", "--version", "tcpdump");

/// Whether the test can run: every tool is there (and root, for tcpdump). A missing tool fails
/// the test with what to install, unless `SRB_SKIP_E2E=1`, which skips it loudly instead.
pub fn tools_present(test: &str, tools: &[(&str, &str, &str)]) -> bool {
    let mut missing = Vec::new();
    for &(name, probe, package) in tools {
        match Command::new(name)
            .arg(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                missing.push(format!("`{name}` (apt-get install -y {package})"));
            }
            Err(e) => missing.push(format!("`{name}` cannot run: {e}")),
        }
    }
    if tools.iter().any(|t| t.0 == "tcpdump") && !is_root() {
        missing.push("root, for tcpdump's capture on lo".to_owned());
    }
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var("SRB_SKIP_E2E").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: SRB_SKIP_E2E=1 and this test needs {what}");
        return false;
    }
    panic!(
        "{test} needs {what}; CI installs them (.ci/run). Set SRB_SKIP_E2E=1 to skip on a \
         machine without them."
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

// --- waiting for child processes -----------------------------------------------------------------

/// Waits for `child` until `deadline`, then kills it (`None`).
pub fn wait_or_kill(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM (or another signal) by process id: only the processes the tests started.
pub fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status();
}

/// The last `max` bytes of `text` (on a character boundary).
pub fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

// --- packet capture -------------------------------------------------------------------------------

/// A tcpdump capture on `lo` of UDP to and from one address's port range (the daemon's RTP and
/// RTCP ports), written packet by packet and parsed when stopped.
pub struct Capture {
    child: Child,
    file: PathBuf,
    log: PathBuf,
}

/// One captured UDP datagram; `unix_us` is the kernel's wall-clock timestamp.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub unix_us: u64,
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub payload: Vec<u8>,
}

impl Capture {
    pub fn start(dir: &Path, ip: Ipv4Addr, ports: (u16, u16)) -> Self {
        let filter = format!("udp and host {ip} and portrange {}-{}", ports.0, ports.1);
        Self::start_filter(dir, &filter)
    }

    /// A capture of what tcpdump's `filter` selects on `lo`.
    pub fn start_filter(dir: &Path, filter: &str) -> Self {
        let file = dir.join("rtp.pcap");
        let log = dir.join("tcpdump.log");
        let mut child = Command::new("tcpdump")
            // --immediate-mode: each packet to tcpdump at once. Without it libpcap hands packets
            // over in blocks, and the packets of the last, unfinished block are lost at the stop
            // without being counted as dropped.
            .args([
                "-i",
                "lo",
                "-n",
                "-U",
                "--immediate-mode",
                "-B",
                "8192",
                "-s",
                "2048",
                "-w",
            ])
            .arg(&file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // tcpdump says "listening on lo" once the filter is attached.
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("tcpdump exited ({status}) before listening: {text}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "tcpdump is not listening after 10 s: {text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, file, log }
    }

    /// Stops tcpdump (SIGINT: it flushes and reports its drops) and parses the capture; fails
    /// if the kernel dropped any packet, since then the counts would be wrong.
    pub fn stop(mut self) -> Vec<Datagram> {
        // Packets still on their way through lo.
        std::thread::sleep(Duration::from_millis(300));
        signal(&self.child, "INT");
        let status = wait_or_kill(&mut self.child, Duration::from_secs(5));
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        assert!(status.is_some(), "tcpdump did not stop: {log}");
        let dropped = log
            .lines()
            .filter(|l| l.contains("dropped by"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>();
        assert_eq!(dropped, 0, "the capture dropped packets: {log}");
        parse_pcap(&std::fs::read(&self.file).unwrap())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn u16_at(bytes: &[u8], at: usize, big: bool) -> Option<u16> {
    let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
    Some(if big {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    })
}

fn u32_at(bytes: &[u8], at: usize, big: bool) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    })
}

/// The UDP datagrams over IPv4 of a classic pcap file (microsecond or nanosecond timestamps,
/// Ethernet or Linux cooked link type, as tcpdump writes for `lo`).
pub fn parse_pcap(bytes: &[u8]) -> Vec<Datagram> {
    let magic = u32_at(bytes, 0, false).expect("pcap header");
    let (big, nanos) = match magic {
        0xa1b2_c3d4 => (false, false),
        0xa1b2_3c4d => (false, true),
        0xd4c3_b2a1 => (true, false),
        0x4d3c_b2a1 => (true, true),
        other => panic!("not a pcap file (magic {other:#x})"),
    };
    let link = u32_at(bytes, 20, big).unwrap();
    let link_header = match link {
        1 => 14,   // Ethernet
        113 => 16, // Linux cooked (SLL)
        0 => 4,    // BSD loopback
        other => panic!("unexpected pcap link type {other}"),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while let Some(caplen) = u32_at(bytes, at + 8, big) {
        let secs = u64::from(u32_at(bytes, at, big).unwrap());
        let frac = u64::from(u32_at(bytes, at + 4, big).unwrap());
        let unix_us = secs * 1_000_000 + if nanos { frac / 1000 } else { frac };
        let start = at + 16;
        let end = start + caplen as usize;
        let Some(frame) = bytes.get(start..end) else {
            break; // a record cut short at the end of the file
        };
        at = end;
        let Some(ip) = frame.get(link_header..) else {
            continue;
        };
        if ip.first().map(|b| b >> 4) != Some(4) || ip.get(9) != Some(&17) {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16_at(ip, 2, true).unwrap_or(0));
        let Some(udp) = ip.get(ihl..total.min(ip.len())) else {
            continue;
        };
        let (Some(sport), Some(dport)) = (u16_at(udp, 0, true), u16_at(udp, 2, true)) else {
            continue;
        };
        let addr = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
        out.push(Datagram {
            unix_us,
            src: (addr(12), sport),
            dst: (addr(16), dport),
            payload: udp.get(8..).unwrap_or_default().to_vec(),
        });
    }
    out
}

/// An RTP packet's fields the tests look at.
#[derive(Clone, Debug)]
pub struct Rtp {
    pub unix_us: u64,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

/// The RTP packets (not RTCP) among `datagrams` that match `select`.
pub fn rtp_packets(datagrams: &[Datagram], select: impl Fn(&Datagram) -> bool) -> Vec<Rtp> {
    datagrams
        .iter()
        .filter(|d| select(d))
        .filter_map(|d| {
            let p = &d.payload;
            if p.len() < 12 || p[0] >> 6 != 2 {
                return None;
            }
            // RTCP packet types 200-204 sit where RTP has the marker bit and payload type.
            if (200..=204).contains(&p[1]) {
                return None;
            }
            let csrc = usize::from(p[0] & 0x0f);
            let mut header = 12 + 4 * csrc;
            if p[0] & 0x10 != 0 {
                let words = usize::from(u16_at(p, header + 2, true)?);
                header += 4 + 4 * words;
            }
            let mut end = p.len();
            if p[0] & 0x20 != 0 {
                end = end.checked_sub(usize::from(*p.last()?))?;
            }
            Some(Rtp {
                unix_us: d.unix_us,
                payload_type: p[1] & 0x7f,
                seq: u16_at(p, 2, true)?,
                timestamp: u32_at(p, 4, true)?,
                ssrc: u32_at(p, 8, true)?,
                payload: p.get(header..end)?.to_vec(),
            })
        })
        .collect()
}

/// Whether a PCMU payload is all silence (mu-law 0xFF and 0x7F are +0 and -0).
pub fn is_silence_ulaw(payload: &[u8]) -> bool {
    payload.iter().all(|&b| b == 0xff || b == 0x7f)
}

// --- the fake realtime server's record -----------------------------------------------------------

/// The JSONL record of the fake realtime server (`record`, both directions).
pub struct Record {
    pub lines: Vec<Value>,
}

impl Record {
    pub fn load(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        Self { lines }
    }

    pub fn connections(&self) -> BTreeSet<u64> {
        self.lines
            .iter()
            .filter_map(|l| l["conn"].as_u64())
            .collect()
    }

    /// The lines of one connection, one direction ("in" or "out"), in order.
    pub fn of<'a>(&'a self, conn: u64, dir: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.lines
            .iter()
            .filter(move |l| l["conn"] == conn && l["dir"] == dir)
    }

    /// The events of `kind` in one direction of one connection.
    pub fn events<'a>(&'a self, conn: u64, dir: &'a str, kind: &'a str) -> Vec<&'a Value> {
        self.of(conn, dir)
            .filter(|l| l["event"]["type"] == kind)
            .collect()
    }

    /// The audio the bridge appended on one connection, decoded from base64 (`record_audio`).
    pub fn appended_audio(&self, conn: u64) -> Vec<u8> {
        self.events(conn, "in", "input_audio_buffer.append")
            .iter()
            .flat_map(|l| {
                let text = l["event"]["audio"].as_str().unwrap();
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text)
                    .unwrap_or_else(|e| panic!("append audio is not base64 ({e}): {text:.60}"))
            })
            .collect()
    }

    /// A short account of one connection's events, for failure messages.
    pub fn summary(&self, conn: u64) -> String {
        let mut out = String::new();
        let mut appends = 0;
        let mut deltas = 0;
        for l in self.lines.iter().filter(|l| l["conn"] == conn) {
            let kind = l["event"]["type"].as_str().unwrap_or("");
            match kind {
                "input_audio_buffer.append" => appends += 1,
                "response.output_audio.delta" | "response.audio.delta" => deltas += 1,
                _ => {
                    let shown = if kind.is_empty() {
                        l.get("close")
                            .map_or_else(|| l["event"].to_string(), |c| format!("close {c}"))
                    } else if kind == "error"
                        || kind.contains("truncate")
                        || kind.contains("speech")
                    {
                        l["event"].to_string()
                    } else {
                        kind.to_owned()
                    };
                    let _ = writeln!(
                        out,
                        "  {} {:>6} ms {} (+{appends} appends, +{deltas} deltas before)",
                        l["dir"].as_str().unwrap_or("?"),
                        l["t_ms"],
                        tail(&shown, 400),
                    );
                    appends = 0;
                    deltas = 0;
                }
            }
        }
        let _ = writeln!(out, "  (+{appends} appends, +{deltas} deltas at the end)");
        out
    }
}

// --- baresip -----------------------------------------------------------------------------------------

/// Where Debian's baresip keeps its modules.
pub const BARESIP_MODULES: &str = "/usr/lib/baresip/modules";

/// A client for baresip's ctrl_tcp: netstring-framed JSON commands, responses and events.
pub struct Ctrl {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Every response and event read so far.
    pub seen: Vec<Value>,
}

impl Ctrl {
    pub fn connect(addr: SocketAddr) -> Self {
        let start = Instant::now();
        let stream = loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
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

    pub fn send(&mut self, command: &str, params: &str) {
        let json = serde_json::json!({ "command": command, "params": params, "token": command })
            .to_string();
        let frame = format!("{}:{json},", json.len());
        self.stream.write_all(frame.as_bytes()).unwrap();
    }

    pub fn next(&mut self, deadline: Instant) -> Option<Value> {
        loop {
            if let Some(colon) = self.buf.iter().position(|&b| b == b':') {
                let len: usize = std::str::from_utf8(&self.buf[..colon])
                    .unwrap()
                    .parse()
                    .unwrap();
                if self.buf.len() > colon + len + 1 {
                    let body = self.buf[colon + 1..colon + 1 + len].to_vec();
                    self.buf.drain(..colon + len + 2);
                    let value: Value = serde_json::from_slice(&body).unwrap();
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
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("ctrl_tcp: {e}"),
            }
        }
    }

    /// Sends a command; waits (up to `limit`) for its successful response and for `event`.
    pub fn command(&mut self, command: &str, params: &str, event: &str, limit: Duration) -> bool {
        self.send(command, params);
        let deadline = Instant::now() + limit;
        let (mut answered, mut happened) = (false, false);
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
            if m["event"] == true && m["type"] == event {
                happened = true;
            }
        }
        true
    }
}

// --- the daemon's log ---------------------------------------------------------------------------------

/// The "call record" lines of a JSON log (`[log] format = "json"`): their fields, whether the
/// formatter nests them under "fields" or flattens them beside "message".
pub fn call_records(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            if v["fields"]["message"] == "call record" {
                Some(v["fields"].clone())
            } else if v["message"] == "call record" {
                Some(v)
            } else {
                None
            }
        })
        .collect()
}

// --- SIPp ------------------------------------------------------------------------------------------

/// One SIPp run (a UAC scenario from tests/sipp/, media files relative to `dir`).
pub struct SippRun {
    pub command: String,
    pub status: Option<ExitStatus>,
    pub messages: String,
    pub actions: String,
    pub errors: String,
    pub screen: String,
}

impl SippRun {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn report(&self) -> String {
        format!(
            "command (in the test's temporary directory): {}\nexit: {:?}\n\
             --- scenario log ---\n{}\n--- SIPp errors ---\n{}\n\
             --- SIP messages, last 12 kB ---\n{}\n--- screen, end ---\n{}",
            self.command,
            self.status,
            self.actions,
            tail(&self.errors, 6_000),
            tail(&self.messages, 12_000),
            tail(&self.screen, 2_000)
        )
    }
}

pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(format!("{name}.xml"))
}

/// Runs SIPp as a UAC against 127.0.0.1:`port` in `dir` until it ends or `limit`; its own SIP
/// port (`-p`) and media ports (`-mp`) on 127.0.0.1 are found free.
pub fn run_sipp(dir: &Path, name: &str, port: u16, extra: &[&str], limit: Duration) -> SippRun {
    let local = crate::common::ports::free_udp_tcp_port();
    let media = crate::common::ports::free_sipp_media_port();
    let ip = Ipv4Addr::LOCALHOST;
    let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
    let ip_text = ip.to_string();
    let mut args: Vec<String> = vec![
        "-sf".into(),
        scenario(name).to_string_lossy().into_owned(),
        "-i".into(),
        ip_text.clone(),
        "-p".into(),
        local.to_string(),
        "-mi".into(),
        ip_text.clone(),
        "-mp".into(),
        media.to_string(),
        "-nostdin".into(),
        "-recv_timeout".into(),
        "15000".into(),
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
    args.extend(extra.iter().map(|&a| a.to_owned()));
    args.push(format!("{ip}:{port}"));
    let command = format!("sipp {}", args.join(" "));
    let mut child = Command::new("sipp")
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("sipp-screen.log")).unwrap())
        .stderr(File::create(dir.join("sipp-stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let status = wait_or_kill(&mut child, limit);
    let read = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap_or_default();
    SippRun {
        command,
        status,
        messages: read("sipp-messages.log"),
        actions: read("sipp-actions.log"),
        errors: read("sipp-errors.log") + &read("sipp-stderr.log"),
        screen: read("sipp-screen.log"),
    }
}

// --- audio ------------------------------------------------------------------------------------------

/// The committed speech fixture (raw mu-law, 8 kHz; see tests/data/e2e/regenerate.sh).
pub fn speech_ulaw() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/e2e/speech.ulaw");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(
        bytes.len() % 160,
        0,
        "{} is whole 20 ms packets",
        path.display()
    );
    bytes
}

/// `ms` of mu-law silence.
pub fn silence_ulaw(ms: usize) -> Vec<u8> {
    vec![0xff; ms * 8]
}

/// A sine of `hz` at `dbfs` (peak, relative to full scale) lasting `ms`, at `rate`.
pub fn sine(hz: f64, dbfs: f64, ms: usize, rate: usize) -> Vec<i16> {
    let amplitude = 32767.0 * 10f64.powf(dbfs / 20.0);
    (0..ms * rate / 1000)
        .map(|i| {
            let t = i as f64 / rate as f64;
            (amplitude * (2.0 * std::f64::consts::PI * hz * t).sin()).round() as i16
        })
        .collect()
}

pub fn ulaw_encode(pcm: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    g711::encode_ulaw_into(pcm, &mut out);
    out
}

pub fn ulaw_decode(codes: &[u8]) -> Vec<i16> {
    let mut out = Vec::new();
    g711::decode_ulaw_into(codes, &mut out);
    out
}

pub fn pcm16le(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

pub fn rms(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / samples.len() as f64).sqrt()
}

pub fn db(ratio: f64) -> f64 {
    20.0 * ratio.log10()
}

/// The first and one-past-last index of the samples above `threshold` in magnitude.
pub fn active_span(samples: &[i16], threshold: i16) -> Option<(usize, usize)> {
    let first = samples
        .iter()
        .position(|s| s.unsigned_abs() > threshold.unsigned_abs())?;
    let last = samples
        .iter()
        .rposition(|s| s.unsigned_abs() > threshold.unsigned_abs())?;
    Some((first, last + 1))
}

/// The frequency of a steady tone by its rising zero crossings, interpolated between samples.
pub fn frequency(samples: &[i16], rate: f64) -> f64 {
    let mut crossings = Vec::new();
    for (i, pair) in samples.windows(2).enumerate() {
        let (a, b) = (f64::from(pair[0]), f64::from(pair[1]));
        if a < 0.0 && b >= 0.0 {
            crossings.push(i as f64 + a / (a - b));
        }
    }
    assert!(
        crossings.len() >= 3,
        "no steady tone: {} crossings",
        crossings.len()
    );
    let periods = (crossings.len() - 1) as f64;
    rate * periods / (crossings[crossings.len() - 1] - crossings[0])
}

/// A 16-bit mono WAV of `pcm` at `rate`.
pub fn write_wav(path: &Path, pcm: &[i16], rate: u32) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).unwrap();
    for &s in pcm {
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();
}

/// A WAV's samples (first channel) and rate.
pub fn read_wav(path: &Path) -> (Vec<i16>, u32) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    assert_eq!(spec.bits_per_sample, 16, "{spec:?}");
    let channels = usize::from(spec.channels);
    let samples: Vec<i16> = reader
        .samples::<i16>()
        .map(Result::unwrap)
        .step_by(channels)
        .collect();
    (samples, spec.sample_rate)
}

// --- SIPp's message trace -------------------------------------------------------------------------

/// A message from SIPp's `-trace_msg` file.
pub struct Traced {
    pub received: bool,
    pub text: String,
}

impl Traced {
    pub fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.text
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
            })
    }

    /// The port of the SDP body's audio m= line.
    pub fn audio_port(&self) -> Option<u16> {
        self.text
            .lines()
            .find_map(|l| l.trim().strip_prefix("m=audio "))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

pub fn parse_trace(trace: &str) -> Vec<Traced> {
    let mut out = Vec::new();
    for block in trace.split("-----------------------------------------------") {
        let mut lines = block.lines();
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

/// Each call's RTP ports from the trace: (Call-ID, SIPp's port from its INVITE, the bridge's
/// port from its 200 to the INVITE).
pub fn media_ports(trace: &[Traced]) -> Vec<(String, u16, u16)> {
    let mut calls = Vec::new();
    for m in trace {
        let call_id = m.header("Call-ID").unwrap_or_default().to_owned();
        if !m.received && m.start_line().starts_with("INVITE ") {
            if let Some(port) = m.audio_port()
                && !calls.iter().any(|(c, _, _)| *c == call_id)
            {
                calls.push((call_id, port, 0));
            }
        } else if m.received
            && m.start_line().starts_with("SIP/2.0 200")
            && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
            && let Some(port) = m.audio_port()
            && let Some(call) = calls.iter_mut().find(|(c, _, _)| *c == call_id)
        {
            call.2 = port;
        }
    }
    calls.retain(|c| c.2 != 0);
    calls
}
