//! The command line as an operator meets it: `check-config`, `run`, exit codes, and secrets
//! that must never appear in any output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sip-realtime-bridge");
const KEY: &str = "sk-proj-TESTKEY-7c1e5a9d3b8f4e2a";

/// The binary with a clean environment, so the caller's `SRB_*` or `RUST_LOG` cannot leak in.
fn bridge() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear();
    cmd
}

/// A shipped configuration's daemon, on loopback ports of its own (the host may hold 5060) and
/// without the admin endpoint (or 9091).
fn on_free_ports(cmd: &mut Command) -> &mut Command {
    cmd.env(
        "SRB_SIP__LISTEN",
        r#"["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]"#,
    )
    .env("SRB_ADMIN__ENABLED", "false")
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("bridge.toml");
    std::fs::write(&path, body).unwrap();
    path
}

const OPENAI_ENV: &str = r#"
[sip]
listen = ["udp:127.0.0.1:0"]
[upstreams.openai]
kind = "openai"
api_key_env = "TEST_OPENAI_KEY"
[profiles.support]
upstream = "openai"
[[routes]]
profile = "support"
[admin]
enabled = false
"#;

#[test]
fn shipped_configurations_check_clean() {
    for file in ["conf/demo.toml", "conf/bridge.toml", "conf/example.toml"] {
        let out = bridge()
            .args(["check-config", "--config"])
            .arg(repo(file))
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{file}: {stderr}");
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(stdout.contains(": OK: "), "{stdout}");
    }
}

#[test]
fn unknown_key_exits_3_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let body = OPENAI_ENV.replace("[sip]\n", "[sip]\nlisten_port = 5060\n");
    let out = bridge()
        .args(["check-config", "-c"])
        .arg(write_config(dir.path(), &body))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("sip.listen_port"), "{stderr}");
    assert!(stderr.contains("unknown key"), "{stderr}");
}

#[test]
fn wrong_type_exits_3_and_names_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!("[limits]\nmax_calls = \"many\"\n{OPENAI_ENV}"),
    );
    let out = bridge()
        .arg("check-config")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr.contains("limits.max_calls"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("expected a nonzero u32"), "{stderr}");
}

#[test]
fn run_refuses_an_invalid_configuration_with_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[routes]\n");
    let out = bridge()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{:?}", text(&out));
}

#[test]
fn environment_overrides_the_file_and_its_errors_name_the_variable() {
    let demo = repo("conf/demo.toml");
    let out = bridge()
        .args(["check-config", "-c"])
        .arg(&demo)
        .env("SRB_LIMITS__MAX_CALLS", "7")
        .env("SRB_SIP__LISTEN", r#"["udp:127.0.0.1:5999"]"#)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("max_calls 7"), "{stdout}");
    assert!(stdout.contains("SIP udp:127.0.0.1:5999;"), "{stdout}");

    let out = bridge()
        .args(["check-config", "-c"])
        .arg(&demo)
        .env("SRB_LIMITS__MAX_CALLS", "lots")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr.contains("limits.max_calls (from environment variable SRB_LIMITS__MAX_CALLS)"),
        "{stderr}"
    );

    let out = bridge()
        .args(["check-config", "-c"])
        .arg(&demo)
        .env("SRB_LIMITS__MAX_CALS", "5")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr.contains("limits.max_cals"), "{stderr}");
}

#[test]
fn missing_configuration_file_is_an_error() {
    let out = bridge()
        .args(["check-config", "--config", "/nonexistent/bridge.toml"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr.contains("cannot read configuration file /nonexistent/bridge.toml"),
        "{stderr}"
    );
}

#[test]
fn usage_errors_exit_2_and_help_documents_exit_codes() {
    let out = bridge().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = bridge().arg("--help").output().unwrap();
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    for needle in ["Exit codes:", "check-config", "run", "--config", "SRB_"] {
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
    let out = bridge().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        concat!("sip-realtime-bridge ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_warns_about_unreadable_secrets_but_passes() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), OPENAI_ENV);
    let out = bridge()
        .arg("check-config")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains(": OK: "));
    assert!(
        stderr.contains(
            "warning: upstreams.openai.api_key_env: environment variable TEST_OPENAI_KEY is not set"
        ),
        "{stderr}"
    );
}

#[test]
fn run_refuses_to_start_without_its_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), OPENAI_ENV);
    let out = bridge().arg("run").arg("-c").arg(&path).output().unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("TEST_OPENAI_KEY is not set"), "{stderr}");
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("openai.key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let body = OPENAI_ENV.replace(
        "api_key_env = \"TEST_OPENAI_KEY\"",
        &format!("api_key_file = \"{}\"", key.display()),
    );
    let path = write_config(dir.path(), &body);
    let out = bridge().arg("run").arg("-c").arg(&path).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("upstreams.openai.api_key_file"), "{stderr}");
    assert!(stderr.contains("readable by group or others"), "{stderr}");
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));
}

/// Starts `run`, waits for the "ready" log line, sends SIGTERM, returns (exit code, stderr).
fn run_until_ready_then_term(cmd: &mut Command) -> (Option<i32>, String) {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("ready") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let ready = rx.recv_timeout(Duration::from_secs(30));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let mut all = reader.join().unwrap();
    all.push_str(&stdout);
    assert!(ready.is_ok(), "the daemon never logged `ready`:\n{all}");
    (status.code(), all)
}

#[test]
fn api_key_from_the_environment_never_appears_in_output_even_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), OPENAI_ENV);

    let (code, output) = run_until_ready_then_term(
        bridge()
            .arg("run")
            .arg("-c")
            .arg(&path)
            .env("TEST_OPENAI_KEY", KEY)
            .env("RUST_LOG", "trace"),
    );
    assert_eq!(code, Some(0), "{output}");
    // The trace output is really there and really talks about the key, redacted.
    assert!(output.contains("effective configuration"), "{output}");
    assert!(output.contains("API key readable"), "{output}");
    assert!(output.contains("[redacted]"), "{output}");
    assert!(!output.contains(KEY), "the key leaked:\n{output}");
    assert!(
        !output.contains("TESTKEY"),
        "part of the key leaked:\n{output}"
    );

    let out = bridge()
        .args(["check-config", "-c"])
        .arg(&path)
        .env("TEST_OPENAI_KEY", KEY)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("effective configuration"), "{stderr}");
    assert!(!stdout.contains("TESTKEY") && !stderr.contains("TESTKEY"));
}

#[test]
fn json_log_lines_are_json_objects() {
    let (code, output) = run_until_ready_then_term(
        on_free_ports(&mut bridge())
            .arg("run")
            .arg("-c")
            .arg(repo("conf/demo.toml"))
            .env("SRB_LOG__FORMAT", "json"),
    );
    assert_eq!(code, Some(0), "{output}");
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{output}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(output.contains(r#""message":"ready""#), "{output}");
}

#[test]
fn sigint_also_stops_the_daemon_cleanly() {
    let mut child = on_free_ports(&mut bridge())
        .arg("run")
        .arg("-c")
        .arg(repo("conf/demo.toml"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap().contains("ready")));
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert!(rest.iter().any(|l| l.contains("SIGINT")), "{rest:?}");
}

#[test]
fn probe_against_the_in_process_fake_succeeds() {
    let out = bridge()
        .args(["probe", "-c"])
        .arg(repo("conf/demo.toml"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("profile echo -> upstream fake (fake): OK: connected in"),
        "{stdout}"
    );
    assert!(stdout.contains("sent without error"), "{stdout}");
}

/// A free loopback port (bound, read, released: the fake binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `fake-realtime` as its own process, requiring the key in FAKE_KEY; killed on drop.
struct FakeProcess(std::process::Child);

impl FakeProcess {
    fn start(port: u16, key: &str) -> Self {
        let mut child = bridge()
            .args(["fake-realtime", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--api-key-env", "FAKE_KEY"])
            .env("FAKE_KEY", key)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        assert!(
            lines.any(|l| l.unwrap().contains("listening")),
            "fake-realtime did not start"
        );
        Self(child)
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn probe_reports_success_a_401_and_a_refused_setting_against_the_fake_server() {
    let port = free_port();
    let _fake = FakeProcess::start(port, "right-key");
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            r#"
[upstreams.openai]
kind = "openai"
url = "ws://127.0.0.1:{port}/v1/realtime"
api_key_env = "TEST_OPENAI_KEY"
[upstreams.azure]
kind = "azure-preview"
endpoint = "http://127.0.0.1:{port}"
deployment = "rt"
api_key_env = "TEST_OPENAI_KEY"
[profiles.support]
upstream = "openai"
audio_format = "g711_alaw"
[profiles.legacy]
upstream = "azure"
[profiles.odd]
upstream = "openai"
voice = "nobody"
[[routes]]
profile = "support"
"#
        ),
    );
    let probe = |key: &str, profile: Option<&str>| {
        let mut cmd = bridge();
        cmd.args(["probe", "-c"])
            .arg(&path)
            .env("TEST_OPENAI_KEY", key);
        if let Some(p) = profile {
            cmd.args(["--profile", p]);
        }
        let out = cmd.output().unwrap();
        let (stdout, stderr) = text(&out);
        (out.status.code(), stdout, stderr)
    };

    let (code, stdout, stderr) = probe("right-key", None);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("1 s of silence (8000 bytes of g711_alaw)"),
        "{stdout}"
    );

    let (code, stdout, stderr) = probe("right-key", Some("legacy"));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(
        stdout.contains("/openai/realtime?api-version=2025-04-01-preview&deployment=rt"),
        "{stdout}"
    );

    let (code, stdout, stderr) = probe("wrong-key", None);
    assert_eq!(code, Some(4), "{stdout}{stderr}");
    assert!(
        stderr.contains("FAILED: connect: authentication failed (HTTP 401)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong-key") && !stdout.contains("wrong-key"),
        "{stderr}"
    );

    let (code, _, stderr) = probe("right-key", Some("odd"));
    assert_eq!(code, Some(4), "{stderr}");
    assert!(
        stderr.contains("field session.audio.output.voice"),
        "{stderr}"
    );

    let (code, _, stderr) = probe("right-key", Some("missing"));
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("no profile named `missing`"), "{stderr}");
}

#[test]
fn check_config_reports_every_problem_with_its_key_and_origin() {
    let dir = tempfile::tempdir().unwrap();
    let body = OPENAI_ENV
        .replace(
            "[sip]\n",
            "[log]\nlevel = \"verbose\"\n[limits]\nmax_calls = 0\n[sip]\n",
        )
        .replace(
            "[profiles.support]\n",
            "[profiles.other]\nupstream = \"nowhere\"\n[profiles.support]\nvoice = 5\n",
        );
    let path = write_config(dir.path(), &body);
    let out = bridge()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    // figment names the file relative to the working directory where it can.
    let dir_name = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for key in [
        "log.level",
        "limits.max_calls",
        "profiles.support.voice",
        "profiles.other.upstream",
    ] {
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("no line for {key}:\n{stderr}"));
        let origin = line
            .strip_prefix(&format!("  {key} (from "))
            .and_then(|rest| rest.split_once("): "))
            .map(|(origin, _)| origin);
        assert!(
            origin.is_some_and(|o| o.ends_with(&format!("{dir_name}/bridge.toml"))),
            "{line}"
        );
    }
    assert!(
        stderr.contains("`verbose` is not a log level: use trace, debug, info, warn or error"),
        "{stderr}"
    );
}

#[test]
fn an_invalid_rust_log_falls_back_to_the_level_and_never_silences_the_daemon() {
    // The port is taken: the daemon must say so even with a RUST_LOG typo.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let body = OPENAI_ENV.replace(
        "listen = [\"udp:127.0.0.1:0\"]",
        &format!("listen = [\"udp:127.0.0.1:{port}\"]"),
    );
    let path = write_config(dir.path(), &body);
    let out = bridge()
        .args(["run", "--config"])
        .arg(&path)
        .env("TEST_OPENAI_KEY", KEY)
        .env("RUST_LOG", "verbose")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("warning: RUST_LOG is ignored: `verbose` is not a log level")
            && stderr.contains("logging at log.level = \"info\" instead"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("ERROR"), "{stderr}");
    drop(taken);
}

#[test]
fn probe_without_its_key_exits_3_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), OPENAI_ENV);
    let out = bridge()
        .args(["probe", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stderr.contains("cannot read the API key (upstreams.openai.api_key_env)")
            && stderr.contains("TEST_OPENAI_KEY"),
        "{stderr}"
    );
}

#[test]
fn the_example_configuration_starts_with_only_the_openai_key() {
    // As installed, but on a loopback port of its own (the host may run a PBX on 5060).
    let mut cmd = bridge();
    on_free_ports(&mut cmd)
        .args(["run", "--config"])
        .arg(repo("conf/example.toml"))
        .env("OPENAI_API_KEY", KEY);
    let (code, log) = run_until_ready_then_term(&mut cmd);
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
    assert!(log.contains("upstreams: openai (openai)"), "{log}");

    // Without the key it does not start, and says which key is missing.
    let out = bridge()
        .args(["run", "--config"])
        .arg(repo("conf/example.toml"))
        .env("SRB_SIP__LISTEN", r#"["udp:127.0.0.1:0"]"#)
        .env("SRB_ADMIN__ENABLED", "false")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert!(stderr.contains("OPENAI_API_KEY"), "{stderr}");
}
