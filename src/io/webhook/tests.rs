//! Against a loopback HTTP server written here: one connection, one request recorded, a
//! canned answer.

use super::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// What the server received.
#[derive(Debug)]
struct Received {
    head: String,
    body: Vec<u8>,
}

impl Received {
    /// The value of header `name` (case-insensitive), if sent once.
    fn header(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect();
        match values.as_slice() {
            [one] => Some((*one).to_owned()),
            _ => None,
        }
    }
}

/// A server on 127.0.0.1 that reads one request, waits `delay`, then writes `answer` and
/// closes. Returns its URL (with `path`) and what it received.
async fn serve(
    path: &str,
    delay: Duration,
    answer: Vec<u8>,
) -> (WebhookUrl, oneshot::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}{path}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let received = loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before a whole request");
            data.extend_from_slice(&buf[..n]);
            let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8(data[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                break Received {
                    head,
                    body: data[end + 4..end + 4 + length].to_vec(),
                };
            }
        };
        let _ = tx.send(received);
        tokio::time::sleep(delay).await;
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    });
    (url, rx)
}

fn answer(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut a = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    a.extend_from_slice(body);
    a
}

fn headers(list: &[(&str, HeaderValue)]) -> BTreeMap<HeaderName, HeaderValue> {
    list.iter()
        .map(|(n, v)| (n.parse().unwrap(), v.clone()))
        .collect()
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn a_json_answer_comes_back_with_its_status_and_the_request_is_a_json_post() {
    let (url, received) = serve(
        "/hooks/order?tenant=7",
        Duration::ZERO,
        answer("200 OK", "application/json", br#"{"status":"shipped"}"#),
    )
    .await;
    let body = json!({"call_id": "abc@host", "tool": "lookup_order", "arguments": {"id": "A-17"}});
    let outcome = post(url.clone(), 5 * SECOND, BTreeMap::new(), body.clone()).await;
    assert_eq!(
        outcome,
        WebhookOutcome::Response {
            status: 200,
            body: br#"{"status":"shipped"}"#.to_vec()
        }
    );
    let received = received.await.unwrap();
    assert!(
        received
            .head
            .starts_with("POST /hooks/order?tenant=7 HTTP/1.1\r\n"),
        "{}",
        received.head
    );
    assert_eq!(
        received.header("host").unwrap(),
        format!("127.0.0.1:{}", url.url().port().unwrap())
    );
    assert_eq!(received.header("content-type").unwrap(), "application/json");
    assert!(
        received
            .header("user-agent")
            .unwrap()
            .starts_with("sip-realtime-bridge/")
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&received.body).unwrap(),
        body
    );
}

#[tokio::test]
async fn a_slow_service_times_out() {
    let (url, _received) = serve(
        "/slow",
        10 * SECOND,
        answer("200 OK", "application/json", b"{}"),
    )
    .await;
    let started = std::time::Instant::now();
    let outcome = post(url, Duration::from_millis(300), BTreeMap::new(), json!({})).await;
    assert_eq!(outcome, WebhookOutcome::Timeout);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < 5 * SECOND,
        "{took:?}"
    );
}

#[tokio::test]
async fn a_failing_service_reports_its_status_and_body() {
    let (url, _received) = serve(
        "/",
        Duration::ZERO,
        answer("500 Internal Server Error", "text/plain", b"database down"),
    )
    .await;
    let outcome = post(url, 5 * SECOND, BTreeMap::new(), json!({})).await;
    assert_eq!(
        outcome,
        WebhookOutcome::Response {
            status: 500,
            body: b"database down".to_vec()
        }
    );
}

#[tokio::test]
async fn a_text_answer_is_passed_as_bytes_and_chunked_bodies_are_read() {
    let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\
        \r\n6\r\nShips \r\n6\r\nMonday\r\n0\r\n\r\n"
        .to_vec();
    let (url, _received) = serve("/", Duration::ZERO, chunked).await;
    let outcome = post(url, 5 * SECOND, BTreeMap::new(), json!({})).await;
    assert_eq!(
        outcome,
        WebhookOutcome::Response {
            status: 200,
            body: b"Ships Monday".to_vec()
        }
    );
}

#[tokio::test]
async fn a_large_answer_is_cut_at_64_kib() {
    let big = vec![b'x'; 100 * 1024];
    let (url, _received) = serve("/", Duration::ZERO, answer("200 OK", "text/plain", &big)).await;
    let WebhookOutcome::Response { status, body } =
        post(url, 5 * SECOND, BTreeMap::new(), json!({})).await
    else {
        panic!("expected a response")
    };
    assert_eq!((status, body.len()), (200, MAX_BODY));
}

#[tokio::test]
async fn a_refused_connection_is_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let url: WebhookUrl = format!("http://{addr}/x").parse().unwrap();
    let WebhookOutcome::Error(text) = post(url, 5 * SECOND, BTreeMap::new(), json!({})).await
    else {
        panic!("expected an error")
    };
    assert!(
        text.contains(&format!("cannot connect to {addr}")),
        "{text}"
    );
}

#[tokio::test]
async fn https_to_a_plain_http_server_fails_the_handshake() {
    // A plain HTTP server answers the ClientHello with an HTTP error and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let _ = stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
        let _ = stream.shutdown().await;
    });
    let url: WebhookUrl = format!("https://{addr}/x").parse().unwrap();
    let outcome = post(url, 5 * SECOND, BTreeMap::new(), json!({})).await;
    assert!(
        matches!(outcome, WebhookOutcome::Error(ref e) if e.starts_with("TLS with 127.0.0.1 failed")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn headers_are_delivered_including_secrets_from_the_environment_and_a_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "file-secret-123\n").unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let (url, received) = serve(
        "/",
        Duration::ZERO,
        answer("204 No Content", "text/plain", b""),
    )
    .await;
    // Cargo sets CARGO_PKG_NAME for the tests it runs: an environment secret that exists
    // without this test changing the environment.
    let list = headers(&[
        ("X-Tenant", HeaderValue::Plain("acme".into())),
        (
            "X-Env-Key",
            HeaderValue::Secret(crate::config::SecretSource::Env("CARGO_PKG_NAME".into())),
        ),
        (
            "Authorization",
            HeaderValue::Secret(crate::config::SecretSource::File(key_file)),
        ),
    ]);
    let outcome = post(url, 5 * SECOND, list, json!({"a": 1})).await;
    assert_eq!(
        outcome,
        WebhookOutcome::Response {
            status: 204,
            body: Vec::new()
        }
    );
    let received = received.await.unwrap();
    assert_eq!(received.header("x-tenant").as_deref(), Some("acme"));
    assert_eq!(
        received.header("x-env-key").as_deref(),
        Some(env!("CARGO_PKG_NAME"))
    );
    assert_eq!(
        received.header("authorization").as_deref(),
        Some("file-secret-123")
    );
}

#[tokio::test]
async fn a_missing_secret_fails_before_anything_is_sent_and_names_only_its_source() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: WebhookUrl = format!("http://{}/x", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let list = headers(&[(
        "Authorization",
        HeaderValue::Secret(crate::config::SecretSource::Env(
            "SRB_TEST_SURELY_UNSET_WEBHOOK_KEY".into(),
        )),
    )]);
    let outcome = post(url, 5 * SECOND, list, json!({})).await;
    assert_eq!(
        outcome,
        WebhookOutcome::Error(
            "header Authorization: environment variable SRB_TEST_SURELY_UNSET_WEBHOOK_KEY is \
             not set"
                .into()
        )
    );
    // Nobody connected.
    let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
    assert!(accepted.is_err());
}

#[test]
fn the_tls_configuration_builds_with_the_webpki_roots() {
    let config = tls_config().unwrap();
    assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
}
