//! The service manager's notification protocol (`sd_notify(3)`), without libsystemd.
//!
//! When systemd starts the daemon with `Type=notify` it sets `NOTIFY_SOCKET` to a Unix datagram
//! socket (a path, or `@name` for an abstract one); each datagram carries newline-separated
//! `KEY=VALUE` assignments. We send `READY=1` once the SIP listeners are bound and the
//! registrations started, `STATUS=...` (what `systemctl status` shows), `STOPPING=1` at
//! shutdown, and `WATCHDOG=1` every half of `WATCHDOG_USEC` from a tokio task.
//!
//! Without `NOTIFY_SOCKET` every call is a no-op. A failed send is logged once and never
//! stops the daemon: the service manager is an observer, not a dependency.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// Where the daemon stands, as the watchdog task needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Stopping,
}

struct Inner {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// The target as given, for the log.
    target: OsString,
    warned: AtomicBool,
    phase: watch::Sender<Phase>,
}

/// A handle on the notification socket: cheap to clone, a no-op when there is none.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Some(inner) => write!(f, "Notifier({:?})", inner.target),
            None => f.write_str("Notifier(disabled)"),
        }
    }
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// From `NOTIFY_SOCKET`: disabled when it is unset or empty, and (with a warning) when it
    /// names an address family we do not speak (`vsock:`).
    pub fn from_env() -> Self {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Self::disabled(),
            Some(target) if target.is_empty() => Self::disabled(),
            Some(target) => Self::to(&target).unwrap_or_else(|error| {
                tracing::warn!(
                    notify_socket = ?target,
                    %error,
                    "NOTIFY_SOCKET is unusable; no readiness notifications will be sent"
                );
                Self::disabled()
            }),
        }
    }

    /// A notifier sending to `target`: an absolute path, or `@name` for an abstract socket.
    pub fn to(target: &OsStr) -> io::Result<Self> {
        let bytes = target.as_bytes();
        let addr = match bytes.split_first() {
            Some((b'/', _)) => SocketAddr::from_pathname(target)?,
            Some((b'@', name)) => abstract_addr(name)?,
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "not an absolute path or an @abstract name",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        // A full receive queue must never block a runtime thread: such a send fails instead.
        socket.set_nonblocking(true)?;
        let (phase, _) = watch::channel(Phase::Starting);
        Ok(Self {
            inner: Some(Arc::new(Inner {
                socket,
                addr,
                target: target.to_owned(),
                warned: AtomicBool::new(false),
                phase,
            })),
        })
    }

    /// Whether there is a socket to notify.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// `READY=1`: start-up is complete. Also arms the watchdog task.
    pub fn ready(&self) {
        self.send("READY=1");
        self.set_phase(Phase::Ready);
    }

    /// `STATUS=<text>`: one line for `systemctl status` (line breaks become spaces).
    pub fn status(&self, text: &str) {
        if self.inner.is_some() {
            self.send(&format!("STATUS={}", text.replace(['\n', '\r'], " ")));
        }
    }

    /// `STOPPING=1`: shutdown has begun. The watchdog task stops pinging.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
        self.set_phase(Phase::Stopping);
    }

    /// `WATCHDOG=1`: still alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn set_phase(&self, phase: Phase) {
        if let Some(inner) = &self.inner {
            inner.phase.send_replace(phase);
        }
    }

    /// Sends one datagram; a failure is logged (as a warning the first time) and otherwise
    /// ignored.
    fn send(&self, message: &str) {
        let Some(inner) = &self.inner else { return };
        if let Err(error) = inner.socket.send_to_addr(message.as_bytes(), &inner.addr) {
            if inner.warned.swap(true, Ordering::Relaxed) {
                tracing::debug!(%error, message, "sd_notify send failed");
            } else {
                tracing::warn!(
                    notify_socket = ?inner.target,
                    %error,
                    message,
                    "cannot notify the service manager (further failures are logged at debug)"
                );
            }
        }
    }

    /// Starts the watchdog task when systemd asked for one (`WATCHDOG_USEC`, for this process
    /// by `WATCHDOG_PID` or for whichever process it started): `WATCHDOG=1` every half of the
    /// timeout, from [`ready`](Self::ready) until [`stopping`](Self::stopping). Must be called
    /// within a tokio runtime. `None` when there is nothing to do.
    pub fn spawn_watchdog(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.as_ref()?;
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let interval = watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())?;
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            "systemd watchdog enabled"
        );
        Some(tokio::spawn(self.clone().watchdog_task(interval)))
    }

    /// `WATCHDOG=1` every `interval`, from ready until stopping.
    pub async fn watchdog_task(self, interval: Duration) {
        let Some(inner) = &self.inner else { return };
        let mut phase = inner.phase.subscribe();
        if phase.wait_for(|p| *p != Phase::Starting).await.is_err() {
            return;
        }
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval is immediate; READY=1 has just said as much.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if *phase.borrow() != Phase::Ready {
                return;
            }
            self.watchdog();
        }
    }
}

fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

/// The ping interval for `WATCHDOG_USEC` = `usec`: half the timeout, or `None` when the
/// watchdog is off (unset, zero, unparsable) or meant for another process (`WATCHDOG_PID`
/// set and not `our_pid`).
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(our_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;
    use std::os::linux::net::SocketAddrExt;

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn receiver() -> (tempfile::TempDir, UnixDatagram, OsString) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path.into_os_string())
    }

    #[test]
    fn sends_each_message_to_a_path_socket() {
        let (_dir, socket, path) = receiver();
        let notifier = Notifier::to(&path).unwrap();
        assert!(notifier.is_enabled());
        notifier.ready();
        notifier.status("calls: 0,\nregistrations: 0/0 registered");
        notifier.watchdog();
        notifier.stopping();
        assert_eq!(recv(&socket), "READY=1");
        assert_eq!(
            recv(&socket),
            "STATUS=calls: 0, registrations: 0/0 registered"
        );
        assert_eq!(recv(&socket), "WATCHDOG=1");
        assert_eq!(recv(&socket), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("srb-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let notifier = Notifier::to(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.ready();
        assert_eq!(recv(&socket), "READY=1");
    }

    #[test]
    fn disabled_and_failing_notifiers_are_harmless() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.ready();
        notifier.status("x");
        notifier.stopping();
        // Nobody listens there: every send fails, none panics.
        let dir = tempfile::tempdir().unwrap();
        let gone = Notifier::to(dir.path().join("nobody").as_os_str()).unwrap();
        gone.ready();
        gone.ready();
        assert!(Notifier::to(OsStr::new("relative/path")).is_err());
        assert!(Notifier::to(OsStr::new("vsock:2:1234")).is_err());
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_us_only() {
        let half = Some(Duration::from_millis(100));
        assert_eq!(watchdog_interval(Some("200000"), None, 42), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("42"), 42), half);
        assert_eq!(watchdog_interval(Some("200000"), Some("7"), 42), None);
        assert_eq!(watchdog_interval(Some("200000"), Some("junk"), 42), None);
        assert_eq!(watchdog_interval(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 42), None);
        assert_eq!(watchdog_interval(None, None, 42), None);
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_pings_between_ready_and_stopping() {
        let (_dir, socket, path) = receiver();
        socket.set_nonblocking(true).unwrap();
        let notifier = Notifier::to(&path).unwrap();
        let task = tokio::spawn(notifier.clone().watchdog_task(Duration::from_millis(100)));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Not ready yet: nothing sent.
        let mut buf = [0u8; 64];
        assert!(socket.recv(&mut buf).is_err());
        notifier.ready();
        tokio::time::sleep(Duration::from_millis(350)).await;
        notifier.stopping();
        task.await.unwrap();
        socket.set_nonblocking(false).unwrap();
        let got: Vec<String> = (0..5).map(|_| recv(&socket)).collect();
        assert_eq!(
            got,
            [
                "READY=1",
                "WATCHDOG=1",
                "WATCHDOG=1",
                "WATCHDOG=1",
                "STOPPING=1"
            ]
        );
    }
}
