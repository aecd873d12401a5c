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
//!
//! Each test has its own ports on 127.0.0.1 (Kamailio 15081-15089, the daemon or the called SIPp
//! on +100, the calling SIPp on +200, the daemon's RTP from 24000, 200 ports a test), so they
//! run in parallel; nothing is sent to any other address.
//! Kamailio runs in the foreground in its own process group, which is ended when the test
//! ends, pass or fail. `kamailio` and `sipp` are required: without them a test fails with what
//! to install, unless `SRB_SKIP_E2E=1`, which skips it with a message.
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

/// Kamailio in the foreground on udp and tcp 127.0.0.1:`port`, logging to a file in `dir`. Its
/// process group (the main process and its children) is ended on drop.
struct Kamailio {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
    defines: Vec<String>,
    /// How many times it was started: each run logs to kamailio-N.log.
    runs: usize,
}

impl Kamailio {
    /// Checks the configuration (`kamailio -c`), then starts it and waits until it answers.
    fn start(dir: &Path, port: u16, defines: &[&str]) -> Self {
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

    /// Stops it and starts it again on the same port: every binding is forgotten.
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

/// A SIPp started in the background (a UAS, or a UAC to `remote`), logging in its own
/// directory `dir/label`.
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
    let (kam_port, uas_port, caller_port) = (15081, 15181, 15281);
    let dir = tempfile::tempdir().unwrap();
    let kamailio = Kamailio::start(dir.path(), kam_port, &[]);

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
    let uas = Sipp::spawn(
        dir.path(),
        "uas",
        "kamailio_uas",
        uas_port,
        None,
        &["-s", EXTENSION.0],
    );
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
    caller_port: u16,
}

impl Rig {
    /// Starts both on `kam_port` and `bridge_port` (RTP from `rtp_base`, 200 ports) and waits
    /// until the daemon is registered.
    /// `defines`: Kamailio's, beside `MAX_EXPIRES`.
    fn start(
        kam_port: u16,
        bridge_port: u16,
        caller_port: u16,
        rtp_base: u16,
        defines: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let max_expires = format!("MAX_EXPIRES={GRANTED}");
        let mut all = vec![max_expires.as_str()];
        all.extend_from_slice(defines);
        let kamailio = Kamailio::start(dir.path(), kam_port, &all);
        let log = dir.path().join("bridge.log");
        let record = dir.path().join("fake.jsonl");
        let config = format!(
            r#"[log]
format = "json"

[sip]
listen = ["udp:127.0.0.1:{bridge_port}"]

[[sip.accounts]]
name = "pbx"
registrar = "sip:127.0.0.1:{kam_port}"
username = "{user}"
password_env = "PBX_PASSWORD"
expires = {EXPIRES}

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
"#,
            user = BRIDGE_USER.0,
            rtp_last = rtp_base + 199,
            record = record.display(),
        );
        let daemon = Daemon::start_logged(
            &config,
            "info,sip_realtime_bridge=debug",
            &[("PBX_PASSWORD", BRIDGE_USER.1)],
            &log,
        );
        let mut rig = Self {
            kamailio,
            daemon,
            dir,
            log,
            record,
            kam_port,
            caller_port,
        };
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(Some(status)) = rig.daemon.child.try_wait() {
            panic!("the daemon exited at once ({status})\n{}", rig.report(&[]));
        }
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
    let rig = Rig::start(15082, 15182, 15282, 24000, &[]);

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
            && l.contains(&format!("to sip:{}@127.0.0.1:15182", BRIDGE_USER.0))),
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
    let mut rig = Rig::start(15083, 15183, 15283, 24200, &[]);
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
    let rig = Rig::start(15084, 15184, 15284, 24400, &["SHA256"]);
    let challenge = register_challenge(15084);
    assert!(
        challenge.contains("algorithm=SHA-256"),
        "Kamailio -A SHA256 challenges with SHA-256: {challenge}"
    );
    let registered = rig.registered(1);
    assert_eq!(registered[0]["account"], "pbx", "{}", registered[0]);
    rig.finish();
}
