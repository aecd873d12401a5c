//! The shipped systemd unit: `systemd-analyze verify` finds nothing to say about it, its
//! hardening keeps the exposure score low, its pre-start check matches what it runs, and it
//! waits for the daemon's readiness notification.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sip-realtime-bridge");
const UNIT: &str = "sip-realtime-bridge.service";

fn unit_text() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("systemd")
            .join(UNIT),
    )
    .unwrap()
}

/// A copy of the unit whose ExecStart points at the binary under test (verify checks that the
/// program exists).
fn unit_copy(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join(UNIT);
    std::fs::write(
        &path,
        text.replace("/usr/local/bin/sip-realtime-bridge", BIN),
    )
    .unwrap();
    path
}

fn systemd_analyze(args: &[&str], unit: &Path) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(unit)
        .output()
        .expect("systemd-analyze is missing: install it with `apt-get install -y systemd` (.ci/run does)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Lines of `systemd-analyze` output about our unit (it may also grumble about the host's).
fn about_unit(output: &str, unit: &Path) -> Vec<String> {
    let name = unit.display().to_string();
    output
        .lines()
        .filter(|l| l.contains(&name) || l.contains(UNIT))
        .map(str::to_owned)
        .collect()
}

#[test]
fn unit_verifies_without_a_single_remark() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), &unit_text());
    let (ok, output) = systemd_analyze(&["verify", "--man=no"], &unit);
    assert!(ok, "{output}");
    assert_eq!(about_unit(&output, &unit), Vec::<String>::new(), "{output}");

    // The check can fail: a misspelt key is reported.
    let broken = unit_copy(dir.path(), &unit_text().replace("KillMode=", "KillMod="));
    let (_, output) = systemd_analyze(&["verify", "--man=no"], &broken);
    assert!(!about_unit(&output, &broken).is_empty(), "{output}");
}

#[test]
fn unit_is_hardened() {
    let text = unit_text();
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(text.contains(line), "missing {line:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), &text);
    let (_, output) = systemd_analyze(&["security", "--offline=yes", "--no-pager"], &unit);
    let score: f64 = output
        .lines()
        .find_map(|l| {
            l.split_once("Overall exposure level for")?
                .1
                .split(':')
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{output}"));
    // 0 is fully locked down, 10 is unprotected; systemd calls below 2.0 "OK".
    assert!(score <= 2.0, "exposure {score}:\n{output}");
}

#[test]
fn pre_start_checks_the_configuration_that_start_runs() {
    let text = unit_text();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key}"))
            .to_owned()
    };
    let pre = value("ExecStartPre=");
    let start = value("ExecStart=");
    assert_eq!(
        pre.replace(" check-config ", " run "),
        start,
        "ExecStartPre must check the same file ExecStart runs"
    );
    assert!(start.contains("--config /etc/sip-realtime-bridge/bridge.toml"));
    // A configuration error (exit 3) must not be retried in a loop.
    assert!(text.contains("RestartPreventExitStatus=3"));
}

#[test]
fn unit_waits_for_readiness_and_arms_the_watchdog() {
    let text = unit_text();
    for line in ["Type=notify\n", "NotifyAccess=main\n", "WatchdogSec=30s\n"] {
        assert!(text.contains(line), "missing {line:?}");
    }
    assert!(!text.contains("Type=exec"));
}

/// The package's unit (debian/, installed by `cargo deb`) is the shipped unit with the
/// package's binary path: one unit, kept in step.
#[test]
fn the_package_unit_is_the_shipped_unit_with_usr_bin() {
    let packaged = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("debian")
            .join(UNIT),
    )
    .unwrap();
    let shipped = unit_text();
    assert!(shipped.contains("ExecStart=/usr/local/bin/sip-realtime-bridge run"));
    assert_eq!(
        packaged,
        shipped.replace("/usr/local/bin/", "/usr/bin/"),
        "debian/{UNIT} must be systemd/{UNIT} with /usr/bin paths: \
         sed 's#/usr/local/bin/#/usr/bin/#g' systemd/{UNIT} > debian/{UNIT}"
    );
}
