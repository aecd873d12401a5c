//! Interop with a real registrar and proxy (issue 7): Kamailio (Debian's `kamailio`, config in
//! `tests/kamailio/kamailio.cfg`: digest auth without a database, bindings in memory, loose
//! routing) on 127.0.0.1, with SIPp and the daemon as its users.
//!
//! | test | what it proves |
//! |---|---|
//! | `kamailio_setup_registers_and_proxies_sipp` | the setup itself, SIPp only: REGISTER is challenged (401) and saved, an INVITE is challenged (407), relayed to the registered contact with Record-Route, and ACK and BYE cross the proxy |
//! | `bridge_registers_at_kamailio_and_answers_through_it` | the daemon registers its account (`[[sip.accounts]]`, 401 answered, the registrar's shorter expiry taken), a caller challenged with 407 reaches it through Kamailio and the account's route, the caller's speech reaches the fake whole and its reply comes back as RTP, BYE crosses the proxy |
//! | `bridge_registers_with_sha256_digest` | the same registration when Kamailio challenges with algorithm=SHA-256 |
//! | `bridge_registers_again_after_kamailio_restarts` | after a Kamailio restart (bindings lost) the daemon's refresh registers it again and a call gets through |
//! | `bridge_transfers_the_caller_to_another_extension_through_kamailio` | transfer by REFER to another registered extension: baresip (registered as alice) calls the daemon through Kamailio and presses 0 (RFC 4733); the daemon REFERs it to extension 2002 (a registered SIPp); baresip calls 2002 through Kamailio (407 answered) and reports the 200 in a NOTIFY sipfrag; only then the daemon hangs up with the transfer as its Reason; its call record says `transferred` |
//!
//! Everything is on 127.0.0.1 and nothing is sent to any other address. No port is fixed, as
//! the host may run other SIP software: the daemon listens on port 0 and the test reads the
//! port it bound from its log; Kamailio's port (UDP and TCP), the SIPp and baresip ports
//! (SIP, media, ctrl_tcp) and the RTP ranges are found free at run time
//! (`tests/common/ports.rs`), and each peer that listens is seen holding its socket before
//! anything is pointed at it, so no other program's answer is taken for its. So the tests run
//! in parallel.
//! Kamailio runs in the foreground in its own process group, which is ended when the test
//! ends, pass or fail. `kamailio` and `sipp` are required (and `baresip` for the transfer test):
//! without them a test fails with what to install, unless `SRB_SKIP_E2E=1`, which skips it with
//! a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
#[path = "e2e/support.rs"]
mod support;

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use common::ports::{self, Proto};
use serde_json::Value;
use support::*;

const KAMAILIO: (&str, &str, &str) = ("kamailio", "-v", "kamailio");

/// The test users of tests/kamailio/kamailio.cfg.
const BRIDGE_USER: (&str, &str) = ("2001", "bridge2001");
const EXTENSION: (&str, &str) = ("2002", "ext2002");
const CALLER: (&str, &str) = ("alice", "alice-secret");

fn config_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kamailio/kamailio.cfg")
}

// --- Kamailio ------------------------------------------------------------------------------------

/// Kamailio in the foreground on udp and tcp 127.0.0.1:`port` (found free), logging to a file in
/// `dir`. Its process group (the main process and its children) is ended on drop.
struct Kamailio {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    defines: Vec<String>,
    /// How many times it was started: each run logs to kamailio-N.log.
    runs: usize,
}

impl Kamailio {
    /// Checks the configuration (`kamailio -c`), then starts it on a port found free and waits
    /// until it answers.
    fn start(dir: &Path, defines: &[&str]) -> Self {
        let port = ports::free_udp_tcp_port();
        let mut check = Command::new("kamailio");
        check.arg("-c").arg("-f").arg(config_file());
        for d in defines {
            check.args(["-A", d]);
        }
        let out = check.output().unwrap();
        assert!(
            out.status.success(),
            "kamailio -c rejects {}:\n{}{}",
            config_file().display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut kamailio = Self {
            child: None,
            dir: dir.to_owned(),
            port,
            defines: defines.iter().map(|&d| d.to_owned()).collect(),
            runs: 0,
        };
        kamailio.spawn();
        kamailio
    }

    fn spawn(&mut self) {
        self.runs += 1;
        let run_dir = self.dir.join(format!("kamailio-run-{}", self.runs));
        std::fs::create_dir_all(&run_dir).unwrap();
        let listen = |proto: &str| format!("{proto}:127.0.0.1:{}", self.port);
        let mut command = Command::new("kamailio");
        command
            .arg("-f")
            .arg(config_file())
            .args(["-l", &listen("udp"), "-l", &listen("tcp")])
            .args(["-DD", "-E", "-n", "1", "-m", "32", "-M", "4"])
            .arg("-Y")
            .arg(&run_dir)
            .arg("-P")
            .arg(run_dir.join("kamailio.pid"));
        for d in &self.defines {
            command.args(["-A", d]);
        }
        let log = File::create(self.log_path()).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group, so that the children go with it.
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Its own sockets, not another program's on the same port, answer the probe.
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        for proto in [Proto::Udp, Proto::Tcp] {
            let log = self.log_path();
            let read = || std::fs::read_to_string(&log).unwrap_or_default();
            ports::wait_until_bound(self.child.as_mut().unwrap(), "kamailio", proto, addr, read);
        }
        self.wait_ready();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("kamailio-{}.log", self.runs))
    }

    /// The log of the current run.
    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Sends OPTIONS until any SIP response comes back (a 407 or 403 says it is up).
    fn wait_ready(&mut self) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut n = 0;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("kamailio exited ({status}) at start:\n{}", self.log());
            }
            n += 1;
            let probe = common::options(socket.local_addr().unwrap(), &format!("kamprobe{n}"));
            socket.send_to(probe.as_bytes(), to).unwrap();
            let mut buf = [0u8; 4096];
            if let Ok((len, _)) = socket.recv_from(&mut buf)
                && buf[..len].starts_with(b"SIP/2.0 ")
            {
                return;
            }
        }
        panic!(
            "kamailio does not answer on {to} after 10 s:\n{}",
            self.log()
        );
    }

    /// SIGTERM to the process group, then SIGKILL if it is still there after 5 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        if wait_or_kill(&mut child, Duration::from_secs(5)).is_none() {
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        }
        // The children may outlive the main process by a moment.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
    }

    /// Stops it and starts it again on the same port: every binding is forgotten. (Should another
    /// program take the port meanwhile, the restart fails with Kamailio's log.)
    fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        self.stop();
    }
}

// --- SIPp ----------------------------------------------------------------------------------------

/// A SIPp started in the background (a UAS, or a UAC to `remote`) on 127.0.0.1:`local`, logging
/// in its own directory `dir/label`; its media port (`-mp`) is found free unless `extra` gives
/// one.
struct Sipp {
    child: Child,
    dir: PathBuf,
    command: String,
}

impl Sipp {
    fn spawn(
        dir: &Path,
        label: &str,
        name: &str,
        local: u16,
        remote: Option<u16>,
        extra: &[&str],
    ) -> Self {
        let dir = dir.join(label);
        std::fs::create_dir_all(&dir).unwrap();
        let file = |n: &str| dir.join(n).to_string_lossy().into_owned();
        let mut args: Vec<String> = [
            "-sf",
            &scenario(name).to_string_lossy(),
            "-i",
            "127.0.0.1",
            "-p",
            &local.to_string(),
            "-mi",
            "127.0.0.1",
            "-m",
            "1",
            "-nostdin",
            "-recv_timeout",
            "15000",
            "-trace_msg",
            "-message_file",
            &file("sipp-messages.log"),
            "-trace_err",
            "-error_file",
            &file("sipp-errors.log"),
            "-trace_logs",
            "-log_file",
            &file("sipp-actions.log"),
        ]
        .iter()
        .map(|&a| a.to_owned())
        .collect();
        if !extra.contains(&"-mp") {
            args.extend(["-mp".to_owned(), ports::free_sipp_media_port().to_string()]);
        }
        args.extend(extra.iter().map(|&a| a.to_owned()));
        if let Some(port) = remote {
            args.push(format!("127.0.0.1:{port}"));
        }
        let command = format!("sipp {}", args.join(" "));
        let child = Command::new("sipp")
            .args(&args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("sipp-screen.log")).unwrap())
            .stderr(File::create(dir.join("sipp-stderr.log")).unwrap())
            .spawn()
            .unwrap();
        Self {
            child,
            dir,
            command,
        }
    }

    /// Waits until it holds its UDP port `local` (a UAS, before a call is sent its way).
    fn wait_bound(&mut self, local: u16) {
        let stderr = self.dir.join("sipp-stderr.log");
        ports::wait_until_bound(
            &mut self.child,
            &format!("SIPp ({})", self.command),
            Proto::Udp,
            SocketAddr::from(([127, 0, 0, 1], local)),
            || std::fs::read_to_string(&stderr).unwrap_or_default(),
        );
    }

    /// Waits for it to end (killed after `limit`).
    fn finish(mut self, limit: Duration) -> SippRun {
        let status = wait_or_kill(&mut self.child, limit);
        let read = |n: &str| std::fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        SippRun {
            command: self.command.clone(),
            status,
            messages: read("sipp-messages.log"),
            actions: read("sipp-actions.log"),
            errors: read("sipp-errors.log") + &read("sipp-stderr.log"),
            screen: read("sipp-screen.log"),
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Registers `user` (AOR sip:user@127.0.0.1) with contact 127.0.0.1:`local`, through Kamailio
/// on `kamailio`.
fn sipp_register(
    dir: &Path,
    label: &str,
    local: u16,
    kamailio: u16,
    user: (&str, &str),
) -> SippRun {
    Sipp::spawn(
        dir,
        label,
        "kamailio_register",
        local,
        Some(kamailio),
        &["-s", user.0, "-au", user.0, "-ap", user.1],
    )
    .finish(Duration::from_secs(20))
}

/// Calls `callee` at Kamailio on `kamailio` as alice from 127.0.0.1:`local`, playing
/// `dir/label/caller.ulaw`, hanging up `hold_ms` after the audio started.
fn sipp_call(
    dir: &Path,
    label: &str,
    local: u16,
    kamailio: u16,
    callee: &str,
    caller: &[u8],
    hold_ms: u64,
) -> Sipp {
    std::fs::create_dir_all(dir.join(label)).unwrap();
    std::fs::write(dir.join(label).join("caller.ulaw"), caller).unwrap();
    Sipp::spawn(
        dir,
        label,
        "kamailio_call",
        local,
        Some(kamailio),
        &[
            "-s",
            callee,
            "-au",
            CALLER.0,
            "-ap",
            CALLER.1,
            "-d",
            &hold_ms.to_string(),
        ],
    )
}

/// The Call-ID of the first INVITE SIPp sent.
fn invite_call_id(run: &SippRun) -> String {
    parse_trace(&run.messages)
        .iter()
        .find(|m| !m.received && m.start_line().starts_with("INVITE "))
        .and_then(|m| m.header("Call-ID").map(str::to_owned))
        .unwrap_or_default()
}

/// Polls `what` until it returns `Some` or `limit` passes.
fn wait_for<T>(limit: Duration, mut what: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = what() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn keep_or_remove(dir: tempfile::TempDir) {
    if std::env::var("SRB_E2E_KEEP").as_deref() == Ok("1") {
        eprintln!("SRB_E2E_KEEP=1: keeping {}", dir.keep().display());
    }
}

// --- the setup itself, SIPp only --------------------------------------------------------------------

#[test]
fn kamailio_setup_registers_and_proxies_sipp() {
    if !tools_present(
        "kamailio_setup_registers_and_proxies_sipp",
        &[KAMAILIO, SIPP],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kamailio = Kamailio::start(dir.path(), &[]);
    let kam_port = kamailio.port;
    let (uas_port, caller_port) = (ports::free_udp_tcp_port(), ports::free_udp_tcp_port());

    // The extension registers (401, then credentials), then answers on the same address.
    let register = sipp_register(dir.path(), "register", uas_port, kam_port, EXTENSION);
    let report = |runs: &[&SippRun]| {
        let mut out = String::new();
        for run in runs {
            out += &run.report();
            out += "\n";
        }
        out + "--- kamailio log, last 8 kB ---\n" + tail(&kamailio.log(), 8_000)
    };
    assert!(
        register.ok(),
        "SIPp could not register\n{}",
        report(&[&register])
    );
    let mut uas = Sipp::spawn(
        dir.path(),
        "uas",
        "kamailio_uas",
        uas_port,
        None,
        &["-s", EXTENSION.0],
    );
    uas.wait_bound(uas_port);
    // The caller is challenged (407), answers with credentials, and reaches the extension.
    let caller = sipp_call(
        dir.path(),
        "caller",
        caller_port,
        kam_port,
        EXTENSION.0,
        &silence_ulaw(500),
        500,
    )
    .finish(Duration::from_secs(30));
    let uas = uas.finish(Duration::from_secs(10));
    let log = kamailio.log();
    let report = report(&[&register, &caller, &uas]);
    assert!(caller.ok(), "the call failed\n{report}");
    assert!(uas.ok(), "the extension did not take the call\n{report}");

    // From the proxy's side: each step as the configuration logs it.
    assert!(
        log.contains("kamtest: 401 for REGISTER of sip:2002@127.0.0.1"),
        "REGISTER challenged\n{report}"
    );
    assert!(
        log.contains(&format!(
            "kamtest: registered sip:2002@127.0.0.1 at <sip:2002@127.0.0.1:{uas_port}"
        )),
        "binding saved\n{report}"
    );
    let call_id = invite_call_id(&caller);
    for step in [
        "407 for INVITE from sip:alice@127.0.0.1".to_owned(),
        format!("in-dialog ACK relayed to sip:2002@127.0.0.1:{uas_port}"),
        format!("in-dialog BYE relayed to sip:2002@127.0.0.1:{uas_port}"),
    ] {
        assert!(
            log.contains(&step),
            "kamailio log lacks \"{step}\"\n{report}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("in-dialog BYE") && l.contains(&call_id)),
        "the BYE of call {call_id} crossed the proxy\n{report}"
    );
    // The 200 the caller got carried the proxy's Record-Route.
    assert!(
        caller
            .actions
            .contains(&format!("Record-Route: <sip:127.0.0.1:{kam_port};lr")),
        "Record-Route of the proxy in the 200\n{report}"
    );
    drop(kamailio);
    keep_or_remove(dir);
}

// --- the bridge as a registered user ------------------------------------------------------------------

/// Registration time the daemon asks for (the least it accepts in its configuration).
const EXPIRES: u32 = 60;
/// What Kamailio grants instead (`-A MAX_EXPIRES=20`): short, so that the daemon's refresh (at
/// 85 % of what was granted) comes within the test after Kamailio's restart.
const GRANTED: u32 = 20;

/// The daemon's log lines (JSON) whose message is `message`, their fields flattened.
fn log_events(log: &str, message: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| {
            if v["fields"]["message"] == message {
                Some(v["fields"].clone())
            } else if v["message"] == message {
                Some(v)
            } else {
                None
            }
        })
        .collect()
}

/// Kamailio and the daemon registered at it as account "pbx" (user 2001), fake upstream with
/// `record` and `record_audio`, G.711 passed through; calls route by the account.
struct Rig {
    kamailio: Kamailio,
    daemon: Daemon,
    dir: tempfile::TempDir,
    log: PathBuf,
    record: PathBuf,
    kam_port: u16,
    /// The daemon's UDP port (port 0 in its configuration), from its log.
    bridge_port: u16,
    caller_port: u16,
}

impl Rig {
    /// Starts both (Kamailio on a port found free, the daemon on port 0, its RTP range of 200
    /// ports found free; the caller's port is found free too) and waits until the daemon is
    /// registered. `defines`: Kamailio's, beside `MAX_EXPIRES`; `profile`: more of the daemon's
    /// configuration (TOML tables, e.g. the profile's transfer targets), appended, given
    /// Kamailio's port.
    fn start(defines: &[&str], profile: &dyn Fn(u16) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let max_expires = format!("MAX_EXPIRES={GRANTED}");
        let mut all = vec![max_expires.as_str()];
        all.extend_from_slice(defines);
        let kamailio = Kamailio::start(dir.path(), &all);
        let kam_port = kamailio.port;
        let caller_port = ports::free_udp_tcp_port();
        let (rtp_base, rtp_last) = ports::free_udp_range(200);
        let profile = profile(kam_port);
        let log = dir.path().join("bridge.log");
        let record = dir.path().join("fake.jsonl");
        let config = format!(
            r#"[log]
format = "json"

[sip]
listen = ["udp:127.0.0.1:0"]

[[sip.accounts]]
name = "pbx"
registrar = "sip:127.0.0.1:{kam_port}"
username = "{user}"
password_env = "PBX_PASSWORD"
expires = {EXPIRES}

[admin]
enabled = false

[rtp]
port_range = "{rtp_base}-{rtp_last}"

[upstreams.fake]
kind = "fake"
record = "{record}"
record_audio = true

[profiles.p]
upstream = "fake"
audio_format = "g711_ulaw"

# Only calls that came through the account (Request-URI user = its Contact user).
[[routes]]
account = "pbx"
profile = "p"
{profile}
"#,
            user = BRIDGE_USER.0,
            record = record.display(),
        );
        let mut daemon = Daemon::start_logged(
            &config,
            "info,sip_realtime_bridge=debug",
            &[("PBX_PASSWORD", BRIDGE_USER.1)],
            &log,
        );
        let bridge_port = daemon.udp_addr().port();
        let rig = Self {
            kamailio,
            daemon,
            dir,
            log,
            record,
            kam_port,
            bridge_port,
            caller_port,
        };
        // Kamailio challenged the daemon's REGISTER, then saved the binding.
        assert!(
            wait_for(Duration::from_secs(10), || rig
                .binding_saved()
                .then_some(()))
            .is_some(),
            "kamailio saved no binding for {} within 10 s\n{}",
            BRIDGE_USER.0,
            rig.report(&[])
        );
        assert!(
            rig.kamailio.log().contains(&format!(
                "kamtest: 401 for REGISTER of sip:{}@127.0.0.1",
                BRIDGE_USER.0
            )),
            "the daemon's REGISTER was challenged first\n{}",
            rig.report(&[])
        );
        rig
    }

    fn bridge_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the current Kamailio run saved the daemon's binding.
    fn binding_saved(&self) -> bool {
        self.kamailio.log().contains(&format!(
            "kamtest: registered sip:{}@127.0.0.1 at <sip:{}@127.0.0.1:",
            BRIDGE_USER.0, BRIDGE_USER.0
        ))
    }

    /// The daemon's "registered" log events, once at least `n` are there (5 s at most).
    fn registered(&self, n: usize) -> Vec<Value> {
        wait_for(Duration::from_secs(5), || {
            let events = log_events(&self.bridge_log(), "registered");
            (events.len() >= n).then_some(events)
        })
        .unwrap_or_else(|| {
            panic!(
                "fewer than {n} \"registered\" in the daemon's log\n{}",
                self.report(&[])
            )
        })
    }

    /// A call as alice to 2001 at Kamailio, playing `audio`, hanging up after `hold_ms`.
    fn call(&self, label: &str, audio: &[u8], hold_ms: u64) -> SippRun {
        sipp_call(
            self.dir.path(),
            label,
            self.caller_port,
            self.kam_port,
            BRIDGE_USER.0,
            audio,
            hold_ms,
        )
        .finish(Duration::from_secs(30))
    }

    /// SIPp runs, the fake's record, Kamailio's log (current run) and the daemon's log.
    fn report(&self, runs: &[&SippRun]) -> String {
        let mut out = String::new();
        for run in runs {
            out += &run.report();
            out += "\n";
        }
        let record = Record::load(&self.record);
        for conn in record.connections() {
            out += &format!("--- fake record, connection {conn} ---\n");
            out += &record.summary(conn);
        }
        out + "--- kamailio log (current run), last 6 kB ---\n"
            + tail(&self.kamailio.log(), 6_000)
            + "\n--- daemon log, last 12 kB ---\n"
            + tail(&self.bridge_log(), 12_000)
    }

    fn finish(mut self) {
        assert_eq!(
            self.daemon.terminate(),
            Some(0),
            "clean exit on SIGTERM\n{}",
            self.report(&[])
        );
        drop(self.kamailio);
        keep_or_remove(self.dir);
    }
}

#[test]
fn bridge_registers_at_kamailio_and_answers_through_it() {
    if !tools_present(
        "bridge_registers_at_kamailio_and_answers_through_it",
        &[KAMAILIO, SIPP],
    ) {
        return;
    }
    let rig = Rig::start(&[], &|_| String::new());

    // 1. Registered: the daemon says so, with the expiry Kamailio granted (it asked for more).
    let registered = rig.registered(1);
    assert_eq!(registered[0]["account"], "pbx", "{}", registered[0]);
    assert_eq!(
        registered[0]["expires"].as_u64(),
        Some(u64::from(GRANTED)),
        "{}",
        registered[0]
    );

    // 2. A caller, challenged with 407 by Kamailio, calls the daemon's address of record.
    let mut speech = silence_ulaw(300);
    speech.extend(speech_ulaw());
    speech.extend(silence_ulaw(1500));
    let run = rig.call("call", &speech, 6000);
    let report = || rig.report(&[&run]);
    assert!(run.ok(), "the call through Kamailio failed\n{}", report());
    let call_id = invite_call_id(&run);
    let kam_log = rig.kamailio.log();
    assert!(
        kam_log.contains("kamtest: 407 for INVITE from sip:alice@127.0.0.1"),
        "the caller was challenged\n{}",
        report()
    );
    assert!(
        kam_log.lines().any(|l| l.contains("kamtest: INVITE for")
            && l.contains(&format!(
                "to sip:{}@127.0.0.1:{}",
                BRIDGE_USER.0, rig.bridge_port
            ))),
        "the INVITE went to the daemon's registered Contact\n{}",
        report()
    );
    assert!(
        kam_log
            .lines()
            .any(|l| l.contains("in-dialog BYE relayed to") && l.contains(&call_id)),
        "the caller's BYE crossed the proxy\n{}",
        report()
    );
    assert!(
        run.actions
            .contains(&format!("Record-Route: <sip:127.0.0.1:{};lr", rig.kam_port)),
        "the daemon's 200 kept the proxy's Record-Route\n{}",
        report()
    );

    // 3. The fake heard the caller's speech, whole, and spoke back (its echo of the turn).
    let record = Record::load(&rig.record);
    let conns = record.connections();
    assert_eq!(conns.len(), 1, "one upstream connection\n{}", report());
    let conn = *conns.first().unwrap();
    let heard = record.appended_audio(conn);
    let spoken = speech_ulaw();
    assert!(
        heard.windows(spoken.len()).any(|w| w == spoken.as_slice()),
        "the speech SIPp sent ({} bytes) is not whole in what the fake received ({} bytes)\n{}",
        spoken.len(),
        heard.len(),
        report()
    );
    let deltas = record
        .events(conn, "out", "response.output_audio.delta")
        .len()
        + record.events(conn, "out", "response.audio.delta").len();
    assert!(deltas > 0, "the fake sent no reply audio\n{}", report());

    // 4. The daemon's account of the call: through the account, ended by the caller's BYE,
    // the model's reply sent as RTP.
    let call = wait_for(Duration::from_secs(5), || {
        call_records(&rig.bridge_log()).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no call record\n{}", report()));
    assert_eq!(call["call_id"], call_id.as_str(), "{call}");
    assert_eq!(call["end_reason"], "caller_bye", "{call}");
    assert_eq!(call["answered"], true, "{call}");
    assert_eq!(call["callee"], BRIDGE_USER.0, "{call}");
    assert!(
        call["model_frames_sent"].as_u64().unwrap_or(0) > 0,
        "the model's reply went to the caller as RTP: {call}"
    );
    rig.finish();
}

#[test]
fn bridge_registers_again_after_kamailio_restarts() {
    if !tools_present(
        "bridge_registers_again_after_kamailio_restarts",
        &[KAMAILIO, SIPP],
    ) {
        return;
    }
    let mut rig = Rig::start(&[], &|_| String::new());
    rig.registered(1);

    // Kamailio restarts and forgets the binding (usrloc in memory). The daemon's refresh, at
    // 85 % of the granted expiry, must register it again.
    rig.kamailio.restart();
    let limit = Duration::from_secs(u64::from(GRANTED) + 5);
    assert!(
        wait_for(limit, || rig.binding_saved().then_some(())).is_some(),
        "the daemon did not register again within {limit:?} after Kamailio's restart\n{}",
        rig.report(&[])
    );
    let registered = rig.registered(2);
    assert_eq!(registered[1]["account"], "pbx", "{}", registered[1]);

    // And calls reach it again.
    let run = rig.call("call-after-restart", &silence_ulaw(500), 1000);
    assert!(
        run.ok(),
        "the call after Kamailio's restart failed\n{}",
        rig.report(&[&run])
    );
    let call = wait_for(Duration::from_secs(5), || {
        call_records(&rig.bridge_log()).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no call record\n{}", rig.report(&[&run])));
    assert_eq!(call["end_reason"], "caller_bye", "{call}");
    rig.finish();
}

/// The challenge Kamailio on `port` answers an unauthenticated REGISTER with.
fn register_challenge(port: u16) -> String {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let local = socket.local_addr().unwrap();
    let register = format!(
        "REGISTER sip:127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};rport;branch=z9hG4bKprobe{port}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:2002@127.0.0.1>;tag=p1\r\nTo: <sip:2002@127.0.0.1>\r\n\
         Call-ID: challenge-probe-{port}\r\nCSeq: 1 REGISTER\r\nContact: <sip:2002@{local}>\r\n\
         Expires: 0\r\nContent-Length: 0\r\n\r\n"
    );
    let response =
        common::final_response(&socket, SocketAddr::from(([127, 0, 0, 1], port)), &register);
    assert!(response.starts_with("SIP/2.0 401"), "{response}");
    common::header(&response, "WWW-Authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate: {response}"))
        .to_owned()
}

#[test]
fn bridge_registers_with_sha256_digest() {
    if !tools_present("bridge_registers_with_sha256_digest", &[KAMAILIO, SIPP]) {
        return;
    }
    // Kamailio 5.6 challenges with one algorithm per instance: here SHA-256 only (SIPp 3.6
    // answers MD5 only, so no call).
    let rig = Rig::start(&["SHA256"], &|_| String::new());
    let challenge = register_challenge(rig.kam_port);
    assert!(
        challenge.contains("algorithm=SHA-256"),
        "Kamailio -A SHA256 challenges with SHA-256: {challenge}"
    );
    let registered = rig.registered(1);
    assert_eq!(registered[0]["account"], "pbx", "{}", registered[0]);
    rig.finish();
}

// --- transfer by REFER to another registered extension ----------------------------------------------

/// baresip as alice: registered at Kamailio on `kam_port` (its account answers 401 and 407 with
/// alice's password), SIP on 127.0.0.1:`sip_port`, driven over ctrl_tcp on `ctrl_port`, RTP in
/// `rtp`, sending silence; started once it holds both sockets. Its SIP trace (`-s`) goes to
/// `dir/baresip.log`. Killed on drop.
struct Baresip {
    child: Child,
    log: PathBuf,
}

impl Baresip {
    fn start(dir: &Path, kam_port: u16, sip_port: u16, ctrl_port: u16, rtp: (u16, u16)) -> Self {
        let conf = dir.join("baresip");
        std::fs::create_dir_all(&conf).unwrap();
        let silence = dir.join("silence.wav");
        write_wav(&silence, &vec![0; 8000 * 20], 8000);
        std::fs::write(
            conf.join("config"),
            format!(
                "poll_method epoll\n\
                 sip_listen 127.0.0.1:{sip_port}\n\
                 sip_trans_def udp\n\
                 net_interface 127.0.0.1\n\
                 audio_source aufile,{silence}\n\
                 audio_alert aufile,{silence}\n\
                 rtp_ports {}-{}\n\
                 module_path {BARESIP_MODULES}\n\
                 module g711.so\n\
                 module aufile.so\n\
                 module_app account.so\n\
                 module_app menu.so\n\
                 module_app ctrl_tcp.so\n\
                 ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n",
                rtp.0,
                rtp.1,
                silence = silence.display(),
            ),
        )
        .unwrap();
        // The registrar is the AOR's host; auth_pass answers both challenges.
        std::fs::write(
            conf.join("accounts"),
            format!(
                "<sip:{}@127.0.0.1:{kam_port}>;auth_pass={};regint=60;audio_codecs=PCMU\n",
                CALLER.0, CALLER.1
            ),
        )
        .unwrap();
        std::fs::write(conf.join("contacts"), "").unwrap();
        let log = dir.join("baresip.log");
        let out = File::create(&log).unwrap();
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-4", "-s"]) // -s: SIP trace on stdout
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        // Commands go to its own ctrl_tcp socket, never to another program's.
        let read = || std::fs::read_to_string(&log).unwrap_or_default();
        for (proto, port) in [(Proto::Udp, sip_port), (Proto::Tcp, ctrl_port)] {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            ports::wait_until_bound(&mut child, "baresip", proto, addr, read);
        }
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asks it to quit (over ctrl_tcp), then kills it if it is still there after 5 s.
    fn quit(&mut self, ctrl: &mut Ctrl) -> Option<std::process::ExitStatus> {
        ctrl.send("quit", "");
        wait_or_kill(&mut self.child, Duration::from_secs(5))
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Reads ctrl_tcp messages until an event for which `matches` holds, for up to `limit`.
fn wait_event(ctrl: &mut Ctrl, limit: Duration, matches: impl Fn(&Value) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    // Already seen (e.g. while waiting for a command's response)?
    if ctrl.seen.iter().any(|m| m["event"] == true && matches(m)) {
        return true;
    }
    while let Some(m) = ctrl.next(deadline) {
        if m["event"] == true && matches(&m) {
            return true;
        }
    }
    false
}

/// The SIP messages of baresip's trace (`-s`), in order: (sent by baresip from `own`, the message with
/// CRLF line ends). Each is printed as `#`, `UDP FROM -> TO`, the message, between colour codes.
fn baresip_trace(log: &str, own: SocketAddr) -> Vec<(bool, String)> {
    log.split("\x1b[36;1m#\n")
        .skip(1)
        .filter_map(|chunk| {
            let chunk = chunk.split("\x1b[;m").next()?;
            let (route, message) = chunk.split_once('\n')?;
            let from = route.split_whitespace().nth(1)?;
            let sent = from == own.to_string();
            Some((sent, message.replace("\r\n", "\n").replace('\n', "\r\n")))
        })
        .collect()
}

fn event_is(m: &Value, kind: &str, peer: &str) -> bool {
    m["type"] == kind && m["peeruri"].as_str().is_some_and(|p| p.contains(peer))
}

#[test]
fn bridge_transfers_the_caller_to_another_extension_through_kamailio() {
    if !tools_present(
        "bridge_transfers_the_caller_to_another_extension_through_kamailio",
        &[KAMAILIO, SIPP, BARESIP],
    ) {
        return;
    }
    // Key 0 transfers the caller to extension 2002, at the proxy (whose port Rig::start finds).
    let extension_at = |kam_port: u16| format!("sip:{}@127.0.0.1:{kam_port}", EXTENSION.0);
    let transfer = |kam_port: u16| {
        format!(
            r#"
[[profiles.p.transfer_targets]]
name = "operator"
description = "Extension 2002, behind the proxy."
uri = "{}"

[profiles.p.dtmf.actions]
"0" = {{ transfer = "operator" }}
"#,
            extension_at(kam_port)
        )
    };
    let rig = Rig::start(&[], &transfer);
    let (kam_port, bridge_port, caller_port) = (rig.kam_port, rig.bridge_port, rig.caller_port);
    let target = extension_at(kam_port);
    let (ext_port, ctrl_port) = (ports::free_udp_tcp_port(), ports::free_tcp_port());
    let dir = rig.dir.path().to_owned();

    // Extension 2002: registers, then waits for a call on the same address.
    let register = sipp_register(&dir, "register-2002", ext_port, kam_port, EXTENSION);
    assert!(
        register.ok(),
        "extension 2002 could not register\n{}",
        rig.report(&[&register])
    );
    let mut extension = Sipp::spawn(
        &dir,
        "extension-2002",
        "kamailio_uas",
        ext_port,
        None,
        &["-s", EXTENSION.0],
    );
    extension.wait_bound(ext_port);

    // The caller: baresip as alice, registered, calls 2001 through the proxy and presses 0.
    let rtp = ports::free_udp_range(100);
    let mut baresip = Baresip::start(&dir, kam_port, caller_port, ctrl_port, rtp);
    let mut ctrl = Ctrl::connect(SocketAddr::from(([127, 0, 0, 1], ctrl_port)));
    let mut steps: Vec<(&str, bool)> = Vec::new();
    // (Its REGISTER may be done before ctrl_tcp is connected: the proxy's log tells.)
    let registered = wait_for(Duration::from_secs(5), || {
        rig.kamailio
            .log()
            .contains(&format!("kamtest: registered sip:{}@127.0.0.1", CALLER.0))
            .then_some(())
    })
    .is_some();
    steps.push(("alice registered", registered));
    let bridge_uri = format!("sip:{}@127.0.0.1:{kam_port}", BRIDGE_USER.0);
    let answered = registered
        && ctrl.command(
            "dial",
            &bridge_uri,
            "CALL_ESTABLISHED",
            Duration::from_secs(10),
        );
    steps.push(("the bridge answered", answered));
    // The RTP stream runs before the key (RFC 4733 events ride on it).
    std::thread::sleep(Duration::from_millis(500));
    if answered {
        ctrl.send("sndcode", "0");
    }
    // baresip takes the REFER, calls 2002 through the proxy and reports to the bridge (NOTIFY),
    // which then hangs up its leg.
    let transferred = answered
        && wait_event(&mut ctrl, Duration::from_secs(8), |m| {
            event_is(m, "CALL_ESTABLISHED", &target)
        });
    steps.push(("the extension answered the transferred call", transferred));
    let bridge_left = transferred
        && wait_event(&mut ctrl, Duration::from_secs(5), |m| {
            event_is(m, "CALL_CLOSED", &bridge_uri)
        });
    steps.push(("the bridge's leg closed", bridge_left));
    // alice and 2002 talk for a moment; alice hangs up.
    std::thread::sleep(Duration::from_millis(300));
    let hung_up = transferred
        && ctrl.command("hangup", "", "CALL_CLOSED", Duration::from_secs(5))
        && wait_event(&mut ctrl, Duration::from_secs(1), |m| {
            event_is(m, "CALL_CLOSED", &target)
        });
    steps.push(("alice hung up on 2002", hung_up));
    let baresip_exit = baresip.quit(&mut ctrl);
    let extension = extension.finish(Duration::from_secs(5));
    let events: Vec<String> = ctrl.seen.iter().map(ToString::to_string).collect();
    let report = format!(
        "steps: {steps:?}\nbaresip exit: {baresip_exit:?}\n--- ctrl_tcp ---\n{}\n\
         --- baresip (SIP trace), last 16 kB ---\n{}\n{}",
        events.join("\n"),
        tail(&baresip.log(), 16_000),
        rig.report(&[&register, &extension])
    );
    assert!(
        steps.iter().all(|&(_, ok)| ok),
        "the transfer did not go through\n{report}"
    );

    // Extension 2002 got the call from alice, through the proxy, and its BYE.
    assert!(extension.ok(), "extension 2002's run\n{report}");
    let trace = parse_trace(&extension.messages);
    let invite = trace
        .iter()
        .find(|m| m.received && m.start_line().starts_with("INVITE "))
        .unwrap_or_else(|| panic!("2002 received no INVITE\n{report}"));
    assert!(
        invite
            .header("From")
            .is_some_and(|f| f.contains(&format!("sip:{}@", CALLER.0))),
        "the INVITE to 2002 is from alice: {:?}\n{report}",
        invite.header("From")
    );
    assert!(
        invite
            .header("Via")
            .is_some_and(|v| v.contains(&format!("127.0.0.1:{kam_port}"))),
        "the INVITE to 2002 came through the proxy: {:?}\n{report}",
        invite.header("Via")
    );

    // The daemon: one call, answered, ended by the transfer.
    let call = wait_for(Duration::from_secs(5), || {
        call_records(&rig.bridge_log()).into_iter().next()
    })
    .unwrap_or_else(|| panic!("no call record\n{report}"));
    assert_eq!(call["end_reason"], "transferred", "{call}\n{report}");
    assert_eq!(call["answered"], true, "{call}");
    assert_eq!(call["callee"], BRIDGE_USER.0, "{call}");
    assert_eq!(call["end_detail"], target.as_str(), "{call}");
    let call_id = call["call_id"].as_str().unwrap_or_default().to_owned();

    // The proxy saw each step: the REFER (bridge to alice) and alice's NOTIFYs (to the bridge)
    // in the bridge's dialog, alice's new INVITE to 2002 (challenged, then relayed to 2002's
    // registered contact), and the bridge's BYE.
    let kam_log = rig.kamailio.log();
    let in_dialog = |method: &str, port: u16| {
        kam_log.lines().any(|l| {
            l.contains(&format!("kamtest: in-dialog {method} relayed to sip:"))
                && l.contains(&format!("@127.0.0.1:{port} call-id {call_id}"))
        })
    };
    for (step, method, port) in [
        ("the bridge's REFER to alice", "REFER", caller_port),
        ("alice's NOTIFY to the bridge", "NOTIFY", bridge_port),
        ("the bridge's BYE to alice", "BYE", caller_port),
    ] {
        assert!(
            in_dialog(method, port),
            "{step} (call {call_id}) did not cross the proxy\n{report}"
        );
    }
    assert!(
        kam_log.contains(&format!(
            "kamtest: INVITE for {target} to sip:{}@127.0.0.1:{ext_port}",
            EXTENSION.0
        )),
        "alice's call to 2002 went to 2002's registered contact\n{report}"
    );

    // The ladder as alice saw it, in the bridge's dialog: the REFER named 2002 (202), alice
    // reported the new call's 200 in a final NOTIFY sipfrag, and only then the bridge hung up,
    // giving the transfer as the reason.
    let ladder = baresip_trace(
        &baresip.log(),
        SocketAddr::from(([127, 0, 0, 1], caller_port)),
    );
    let ours: Vec<&(bool, String)> = ladder
        .iter()
        .filter(|(_, m)| common::header(m, "Call-ID") == Some(call_id.as_str()))
        .collect();
    let position = |sent: bool, what: &dyn Fn(&str) -> bool| {
        ours.iter().position(|(s, m)| *s == sent && what(m))
    };
    let refer = position(false, &|m| {
        m.starts_with("REFER ")
            && common::header(m, "Refer-To").is_some_and(|r| r.contains(&target))
    });
    let accepted = position(true, &|m| {
        m.starts_with("SIP/2.0 202")
            && common::header(m, "CSeq").is_some_and(|c| c.ends_with("REFER"))
    });
    let notify_200 = position(true, &|m| {
        m.starts_with("NOTIFY ")
            && common::header(m, "Subscription-State").is_some_and(|s| s.starts_with("terminated"))
            && m.contains("\r\n\r\nSIP/2.0 200")
    });
    let bye = position(false, &|m| {
        m.starts_with("BYE ")
            && common::header(m, "Reason")
                .is_some_and(|r| r.starts_with("Q.850;cause=16;text=\"call transferred"))
    });
    let ladder_text: Vec<String> = ours
        .iter()
        .map(|(sent, m)| {
            let first = m.lines().next().unwrap_or_default();
            format!("{} {first}", if *sent { "alice ->" } else { "alice <-" })
        })
        .collect();
    assert!(
        refer.is_some() && accepted > refer && notify_200 > accepted && bye > notify_200,
        "REFER {refer:?}, 202 {accepted:?}, NOTIFY 200 {notify_200:?}, BYE with Reason {bye:?} \
         out of order or missing in alice's dialog with the bridge:\n{}\n{report}",
        ladder_text.join("\n")
    );
    // The key reached the bridge as a digit (RFC 4733, baresip's way).
    let digits = log_events(&rig.bridge_log(), "DTMF");
    assert!(
        digits.iter().any(|d| d["digit"] == "0"),
        "the bridge saw no key 0: {digits:?}\n{report}"
    );
    drop(baresip);
    rig.finish();
}
