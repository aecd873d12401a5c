//! The daemon as systemd sees it with `Type=notify`: over the `NOTIFY_SOCKET` datagram socket
//! it reports READY=1, then its STATUS, pings the watchdog every half of `WATCHDOG_USEC`, and
//! says STOPPING=1 on SIGTERM before it exits 0. The daemon's SIP socket is on port 0 of
//! 127.0.0.1 (the test sends it nothing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn recv(socket: &UnixDatagram) -> Option<String> {
    let mut buf = [0u8; 1024];
    match socket.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("recv: {e}"),
    }
}

#[test]
fn ready_status_watchdog_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let log = dir.path().join("daemon.log");
    let mut daemon = common::Daemon::start_logged(
        &common::config(&["udp:127.0.0.1:0"], ""),
        "info",
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
        &log,
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    assert_eq!(recv(&socket).as_deref(), Some("READY=1"), "{}", log_text());
    assert_eq!(
        recv(&socket).as_deref(),
        Some("STATUS=calls: 0, registrations: 0/0 registered"),
        "{}",
        log_text()
    );
    // Every 100 ms: at least three within a second, and nothing else.
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        assert_eq!(
            recv(&socket).as_deref(),
            Some("WATCHDOG=1"),
            "{}",
            log_text()
        );
        pings += 1;
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    assert_eq!(daemon.terminate(), Some(0), "{}", log_text());
    // Pings sent before the signal may still be queued; STOPPING=1 follows them, then nothing.
    let mut after = Vec::new();
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    while let Some(message) = recv(&socket) {
        after.push(message);
    }
    let (last, before) = after.split_last().expect("no STOPPING=1");
    assert_eq!(last, "STOPPING=1", "{after:?}");
    assert!(before.iter().all(|m| m == "WATCHDOG=1"), "{after:?}");
}
