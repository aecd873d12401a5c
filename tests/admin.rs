//! The admin endpoint against the running daemon: a call placed over UDP shows in /metrics
//! (parsed here with a small Prometheus text parser), /health and /ready answer, and /ready
//! turns 503 while the daemon drains a live call after SIGTERM. Loopback only: SIP on port 0
//! (the port read from the daemon's log), the admin endpoint on a port found free at run time
//! and confirmed by the daemon's `admin endpoint listening` line before the test talks to it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text exposition format: comments skipped, `name{a="b",...} value` lines, label
/// values unescaped (`\\`, `\"`, `\n`).
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).expect(line);
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(after) = rest.strip_prefix('{') {
            let mut chars = after.char_indices().peekable();
            let end = loop {
                let (start, c) = chars.next().expect(line);
                if c == '}' {
                    break start + 1;
                }
                if c == ',' {
                    continue;
                }
                let mut key = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                let mut value = String::new();
                loop {
                    match chars.next().expect(line).1 {
                        '\\' => match chars.next().expect(line).1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key, value);
            };
            rest = &after[end..];
        }
        let value = rest.trim();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
        };
        samples.push((name, labels, value));
    }
    samples
}

/// The value of the sample `name` whose labels include `labels`; None if there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

/// GET `path`: the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap();
    (status, body)
}

/// A daemon with its admin endpoint on a port found free, and the endpoint's address as the
/// daemon logged it. `admin.listen` must name a port (0 is refused), so the port is found free
/// first; when another program takes it before the daemon binds it, the daemon logs that and
/// goes on without the endpoint: the test then tries once more with another port, and never
/// talks to whatever holds the first one.
fn daemon_with_admin() -> (Daemon, SocketAddr) {
    let mut failures = Vec::new();
    for _ in 0..2 {
        let admin_port = ports::free_tcp_port();
        let mut daemon = Daemon::start(&config(
            &["udp:127.0.0.1:0"],
            &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n"),
        ));
        match daemon.admin_addr() {
            Ok(admin) => {
                assert_eq!(admin.port(), admin_port, "{}", daemon.log_text());
                return (daemon, admin);
            }
            Err(error) => failures.push(error),
        }
    }
    panic!("the admin endpoint could not bind a port found free, twice: {failures:?}");
}

/// INVITE, 200, ACK: a live call; the To header of the 200.
fn live_call(socket: &UdpSocket, to: SocketAddr, call_id: &str) -> String {
    let me = socket.local_addr().unwrap();
    let ok = final_response(socket, to, &invite("UDP", me, to, call_id));
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    socket
        .send_to(ack_for(&ok, me, to, call_id, 1).as_bytes(), to)
        .unwrap();
    header(&ok, "To").unwrap().to_owned()
}

/// Polls /metrics until `check` passes (the call record arrives after the BYE's 200).
fn metrics_until(admin: SocketAddr, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(admin, "/metrics");
        assert_eq!(status, 200, "{body}");
        let samples = parse_prometheus(&body);
        if check(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "metrics never matched:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_health_and_readiness_follow_calls_and_the_drain() {
    let (mut daemon, admin) = daemon_with_admin();
    let to = daemon.udp_addr();
    wait_for_200(to);
    assert_eq!(get(admin, "/health"), (200, "ok\n".into()));
    assert_eq!(get(admin, "/ready"), (200, "ready\n".into()));
    assert_eq!(get(admin, "/nothing").0, 404);

    // One call: INVITE, ACK, BYE from the caller.
    let (socket, me) = phone();
    let to_header = live_call(&socket, to, "metered");
    std::thread::sleep(Duration::from_millis(200));
    let bye = format!(
        "BYE sip:bridge@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbyem\r\n\
         Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag=c1\r\nTo: {to_header}\r\n\
         Call-ID: metered\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let ok = final_response(&socket, to, &bye);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");

    let caller_bye = [("end_reason", "caller_bye"), ("answered", "true")];
    let samples = metrics_until(admin, |s| {
        value(s, "srb_calls_total", &caller_bye).is_some()
            && value(s, "srb_active_calls", &[]) == Some(0.0)
    });
    assert_eq!(value(&samples, "srb_calls_total", &caller_bye), Some(1.0));
    assert_eq!(
        samples
            .iter()
            .filter(|(n, _, _)| n == "srb_calls_total")
            .count(),
        1,
        "{samples:?}"
    );
    assert_eq!(value(&samples, "srb_active_calls", &[]), Some(0.0));
    assert_eq!(
        value(&samples, "srb_call_setup_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "srb_call_setup_seconds_bucket", &[("le", "+Inf")]),
        Some(1.0)
    );
    let setup = value(&samples, "srb_call_setup_seconds_sum", &[]).unwrap();
    assert!(setup > 0.0 && setup < 10.0, "{setup}");
    // The upstream was connected once, before the answer.
    assert_eq!(
        value(&samples, "srb_upstream_connect_seconds_count", &[]),
        Some(1.0)
    );
    let connect = value(&samples, "srb_upstream_connect_seconds_sum", &[]).unwrap();
    assert!(
        connect <= setup,
        "connect {connect} after the answer {setup}"
    );
    // Buckets are cumulative.
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|(n, _, _)| n == "srb_call_setup_seconds_bucket")
        .map(|(_, _, v)| *v)
        .collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(value(&samples, "srb_draining", &[]), Some(0.0));
    assert_eq!(value(&samples, "srb_websocket_failures_total", &[]), None);

    // A live call, then SIGTERM: /ready says 503 while the call drains; /health stays 200.
    live_call(&socket, to, "draining");
    metrics_until(admin, |s| value(s, "srb_active_calls", &[]) == Some(1.0));
    assert_eq!(get(admin, "/ready").0, 200);
    let pid = daemon.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let ready = loop {
        let ready = get(admin, "/ready");
        if ready.0 != 200 || Instant::now() > deadline {
            break ready;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(ready, (503, "draining\n".into()));
    assert_eq!(get(admin, "/health"), (200, "ok\n".into()));
    let samples = metrics_until(admin, |s| value(s, "srb_draining", &[]) == Some(1.0));
    assert_eq!(value(&samples, "srb_active_calls", &[]), Some(1.0));

    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("admin endpoint listening"), "{stderr}");
}

#[test]
fn the_parser_reads_escaped_labels_and_special_values() {
    let samples = parse_prometheus(
        "# HELP a x\n# TYPE a counter\na{k=\"q\\\"\\\\\\n,}\",l=\"2\"} 3\nb +Inf\nc{} 0.5\n",
    );
    assert_eq!(
        value(&samples, "a", &[("k", "q\"\\\n,}"), ("l", "2")]),
        Some(3.0)
    );
    assert_eq!(value(&samples, "b", &[]), Some(f64::INFINITY));
    assert_eq!(value(&samples, "c", &[]), Some(0.5));
}

/// The metric names a PromQL expression uses: `srb_` words, a histogram's `_bucket`, `_sum`
/// and `_count` series named by their family.
fn queried_metrics(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("srb_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.push(family.to_owned());
        i = end;
    }
    names
}

/// Every metric the Grafana dashboard (deploy/grafana/) queries is one the daemon exports, with
/// the labels the dashboard groups by.
#[test]
fn the_grafana_dashboard_queries_only_metrics_the_daemon_exports() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/grafana/sip-realtime-bridge.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        exprs.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_owned()),
        );
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        exprs.push(variable["definition"].as_str().unwrap().to_owned());
    }

    let (daemon, admin) = daemon_with_admin();
    let (status, text) = get(admin, "/metrics");
    assert_eq!(status, 200);
    drop(daemon);
    // `# TYPE name kind` for every family, whether or not it has samples yet.
    let families: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let mut queried = std::collections::BTreeSet::new();
    for expr in &exprs {
        for name in queried_metrics(expr) {
            let kind = families.get(name.as_str());
            assert!(
                kind.is_some(),
                "the dashboard queries {name}, which /metrics lacks: {expr}"
            );
            if expr.contains(&format!("{name}_bucket")) {
                assert_eq!(kind, Some(&"histogram"), "{expr}");
            }
            queried.insert(name);
        }
    }
    // The labels the dashboard groups or filters by are the daemon's.
    for (name, label) in [
        ("srb_calls_total", "end_reason"),
        ("srb_calls_total", "answered"),
        ("srb_websocket_failures_total", "kind"),
        ("srb_registered", "account"),
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(name) && e.contains(label)),
            "the dashboard does not use {label} of {name}"
        );
        let help = format!("# HELP {name} ");
        assert!(text.contains(&help), "{name}");
    }
    // What an operator needs on one screen.
    for name in [
        "srb_active_calls",
        "srb_calls_total",
        "srb_call_setup_seconds",
        "srb_upstream_connect_seconds",
        "srb_first_model_audio_seconds",
        "srb_barge_ins_total",
        "srb_barge_in_reaction_seconds",
        "srb_upstream_errors_total",
        "srb_websocket_failures_total",
        "srb_rtp_packets_lost_total",
        "srb_rtp_jitter_seconds",
        "srb_registered",
        "srb_draining",
    ] {
        assert!(queried.contains(name), "the dashboard shows no {name}");
    }
}
