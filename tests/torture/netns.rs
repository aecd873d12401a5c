//! A throw-away network namespace with only loopback, deleted on drop (also when the test
//! panics), and the checks that the current process may make one / is inside one.

use std::process::{Command, Output};

/// Runs a command to completion; `Err` with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(format!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Why this process cannot create a namespace, if it cannot.
pub fn missing_prerequisite() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // "Uid:\treal\teffective\tsaved\tfs"
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned);
    if euid.as_deref() != Some("0") {
        return Some(format!(
            "the torture test needs root to create a network namespace (effective uid: {})",
            euid.as_deref().unwrap_or("unknown")
        ));
    }
    if let Err(e) = run("ip", &["-V"]) {
        return Some(format!(
            "the torture test needs `ip` (iproute2) for `ip netns`: {e}"
        ));
    }
    None
}

/// The interfaces this process sees (names under /sys/class/net).
pub fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A network namespace created by this process. Dropping it kills what still runs in it
/// (only processes this test started can be there: the namespace is fresh and private) and
/// deletes it.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// `ip netns add NAME`, then loopback up inside it.
    pub fn create(name: &str) -> Result<Self, String> {
        run("ip", &["netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
        };
        run(
            "ip",
            &["netns", "exec", name, "ip", "link", "set", "lo", "up"],
        )?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Process ids still running inside the namespace.
    pub fn pids(&self) -> Vec<String> {
        run("ip", &["netns", "pids", &self.name])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for pid in self.pids() {
            eprintln!(
                "torture: killing leftover process {pid} in netns {}",
                self.name
            );
            let _ = run("kill", &["-KILL", &pid]);
        }
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!(
                "torture: WARNING: could not delete netns {}: {e}",
                self.name
            );
        }
    }
}
