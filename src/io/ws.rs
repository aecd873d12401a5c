//! WebSocket connection to a realtime service: TLS, authentication, time limit, and handshake
//! failures turned into errors an operator can act on.
//!
//! TLS is rustls with the webpki root store and nothing else: there is no switch that turns
//! certificate checks off. Plain `ws://` is refused unless the host is a loopback address
//! (the in-process fake server), where nothing crosses a network. The API key travels in one
//! header, marked sensitive so `http`'s own `Debug` hides it, and appears in no error.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{self, protocol::WebSocketConfig};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::types::is_loopback_url;
use crate::realtime::ConnectTarget;

/// An open WebSocket to a realtime service.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The largest frame accepted from the service. Audio deltas are small; a 16 MiB frame is
/// already far beyond anything legitimate, and the limit bounds memory per call.
const MAX_FRAME_BYTES: usize = 16 << 20;

/// Why a connection could not be opened. Never contains the key.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("refusing plain ws:// to {0}: only loopback addresses may be reached without TLS")]
    InsecureUrl(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("authentication failed (HTTP {status}): {message}; check the API key")]
    Unauthorized { status: u16, message: String },
    #[error("access denied (HTTP 403): {message}")]
    Forbidden { message: String },
    #[error("not found (HTTP 404): {message}; check the model or deployment name and the endpoint")]
    NotFound { message: String },
    #[error("the service answered HTTP {status}: {message}")]
    Http {
        status: u16,
        message: String,
        /// Its `Retry-After`, in seconds (a 429 or 503 usually says when to come back).
        retry_after: Option<u64>,
    },
    #[error("invalid request: {0}")]
    Request(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    #[error("WebSocket handshake: {0}")]
    Handshake(String),
}

impl ConnectError {
    /// The HTTP status of a refused handshake, if that is what happened.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized { status, .. } | Self::Http { status, .. } => Some(*status),
            Self::Forbidden { .. } => Some(403),
            Self::NotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// The service's `Retry-After` (seconds), when it refused with one.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Opens the WebSocket, within `timeout` for TCP, TLS and the HTTP upgrade together.
pub async fn connect(target: &ConnectTarget, timeout: Duration) -> Result<WsStream, ConnectError> {
    let url = &target.url;
    match url.scheme() {
        "wss" => {}
        "ws" if is_loopback_url(url) => {}
        _ => {
            return Err(ConnectError::InsecureUrl(
                url.host_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    let mut http = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Request(e.to_string()))?;
    if let Some((name, value)) = &target.auth_header {
        // The error of from_str does not quote the value, so the key cannot leak through it.
        let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
            ConnectError::Request("the API key contains characters not allowed in a header".into())
        })?;
        value.set_sensitive(true);
        http.headers_mut()
            .insert(HeaderName::from_static(name), value);
    }
    let config = WebSocketConfig::default()
        .max_frame_size(Some(MAX_FRAME_BYTES))
        .max_message_size(Some(MAX_FRAME_BYTES));
    let handshake =
        tokio_tungstenite::connect_async_tls_with_config(http, Some(config), true, None);
    match tokio::time::timeout(timeout, handshake).await {
        Err(_) => Err(ConnectError::Timeout(timeout)),
        Ok(Ok((stream, _response))) => Ok(stream),
        Ok(Err(error)) => Err(classify(error)),
    }
}

fn classify(error: tungstenite::Error) -> ConnectError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let message = body_message(response.body().as_deref(), status);
            // Delta-seconds only (RFC 9110 10.2.3); an HTTP date is rare from these services.
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            match status.as_u16() {
                401 => ConnectError::Unauthorized {
                    status: 401,
                    message,
                },
                403 => ConnectError::Forbidden { message },
                404 => ConnectError::NotFound { message },
                code => ConnectError::Http {
                    status: code,
                    message,
                    retry_after,
                },
            }
        }
        tungstenite::Error::Io(e) => ConnectError::Io(e),
        tungstenite::Error::Tls(e) => ConnectError::Tls(e.to_string()),
        other => ConnectError::Handshake(other.to_string()),
    }
}

/// The service's own words from an error body: OpenAI and Azure send
/// `{"error":{"message":...}}`; anything else is shown as short, printable text.
fn body_message(body: Option<&[u8]>, status: StatusCode) -> String {
    let fallback = || {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned()
    };
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return fallback();
    };
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let error = json.get("error").unwrap_or(&json);
        let message = error.get("message").and_then(|m| m.as_str());
        let code = error.get("code").and_then(|c| c.as_str());
        match (message, code) {
            (Some(m), Some(c)) => return format!("{} ({c})", printable(m)),
            (Some(m), None) => return printable(m),
            (None, Some(c)) => return printable(c),
            (None, None) => {}
        }
    }
    let text = printable(&String::from_utf8_lossy(body));
    if text.trim().is_empty() {
        fallback()
    } else {
        text
    }
}

/// At most 300 characters, without control characters, for one log line.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
// tungstenite's handshake callback type fixes the large error variant.
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::result_large_err
)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::Message;

    const KEY: &str = "sk-test-xyz";

    /// The connect target of an `openai` upstream whose URL override points at `url`, with
    /// [`KEY`]: the same path the daemon takes, minus the real host.
    fn openai_target(url: &str) -> ConnectTarget {
        let config = crate::config::Config::from_toml(&format!(
            "[upstreams.o]\nkind = \"openai\"\nurl = \"{url}\"\napi_key_env = \"K\"\n\
             [profiles.p]\nupstream = \"o\"\n[[routes]]\nprofile = \"p\"\n"
        ))
        .unwrap();
        let upstream = config.upstreams.values().next().unwrap();
        let key = upstream
            .api_key()
            .unwrap()
            .load_with(|_| Some(KEY.into()))
            .unwrap();
        crate::realtime::connect_request(upstream, Some(&key)).unwrap()
    }

    fn plain_target(url: url::Url) -> ConnectTarget {
        ConnectTarget {
            url,
            auth_header: None,
        }
    }

    /// A server that answers every connection with `response` (raw HTTP) and closes.
    async fn http_server(response: &'static str) -> url::Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        format!("ws://{addr}/v1/realtime?model=m").parse().unwrap()
    }

    #[tokio::test]
    async fn unauthorized_handshake_reports_the_services_message() {
        let body = r#"{"error":{"message":"Incorrect API key provided: sk-te***xyz.","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        let response: &'static str = Box::leak(
            format!(
                "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let url = http_server(response).await;
        let err = connect(&openai_target(url.as_str()), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.http_status(), Some(401));
        assert_eq!(
            err.to_string(),
            "authentication failed (HTTP 401): Incorrect API key provided: sk-te***xyz. (invalid_api_key); check the API key"
        );
    }

    #[tokio::test]
    async fn not_found_and_other_statuses_are_named() {
        let url = http_server("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
        let err = connect(&plain_target(url.clone()), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ConnectError::NotFound { message } if message == "Not Found"),
            "{err}"
        );
        let url = http_server(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 8\r\n\r\nbusy\x07\r\nx",
        )
        .await;
        let err = connect(&plain_target(url.clone()), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "the service answered HTTP 503: busy   x");
    }

    #[tokio::test]
    async fn a_429_carries_the_services_retry_after() {
        let url = http_server(
            "HTTP/1.1 429 Too Many Requests\r\nretry-after: 17\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        let err = connect(&plain_target(url), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.http_status(), Some(429));
        assert_eq!(err.retry_after(), Some(17));
        let url = http_server("HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n").await;
        let err = connect(&plain_target(url), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.retry_after(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: url::Url = format!("ws://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        // Accepts the TCP connection (the backlog does) but never answers the upgrade.
        let err = connect(&plain_target(url.clone()), Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::Timeout(d) if d == Duration::from_secs(10)),
            "{err}"
        );
        drop(listener);
    }

    #[tokio::test]
    async fn plain_ws_to_a_remote_host_is_refused_before_any_traffic() {
        let url: url::Url = "ws://api.openai.com/v1/realtime".parse().unwrap();
        let err = connect(&plain_target(url.clone()), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::InsecureUrl(ref h) if h == "api.openai.com"),
            "{err}"
        );
        let named: url::Url = "ws://localhost:1/".parse().unwrap();
        assert!(matches!(
            connect(&plain_target(named), Duration::from_secs(1)).await,
            Err(ConnectError::InsecureUrl(_))
        ));
        let http: url::Url = "http://127.0.0.1:1/".parse().unwrap();
        assert!(matches!(
            connect(&plain_target(http.clone()), Duration::from_secs(1)).await,
            Err(ConnectError::InsecureUrl(_))
        ));
    }

    #[tokio::test]
    async fn key_travels_in_the_requested_header_and_frames_flow() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut seen = None;
            let callback =
                |req: &tungstenite::handshake::server::Request,
                 resp: tungstenite::handshake::server::Response| {
                    seen = req
                        .headers()
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_owned());
                    Ok(resp)
                };
            let mut ws = tokio_tungstenite::accept_hdr_async(socket, callback)
                .await
                .unwrap();
            ws.send(Message::text("hello")).await.unwrap();
            let echoed = ws.next().await.unwrap().unwrap();
            (seen, echoed)
        });
        let target = openai_target(&format!("ws://{addr}/v1/realtime"));
        let mut ws = connect(&target, Duration::from_secs(5)).await.unwrap();
        let first = ws.next().await.unwrap().unwrap();
        assert_eq!(first, Message::text("hello"));
        ws.send(Message::text("back")).await.unwrap();
        let (seen, echoed) = server.await.unwrap();
        assert_eq!(seen.as_deref(), Some("Bearer sk-test-xyz"));
        assert_eq!(echoed, Message::text("back"));
    }

    #[test]
    fn connect_target_debug_is_redacted() {
        let debug = format!("{:?}", openai_target("wss://x.example/v1/realtime"));
        assert!(!debug.contains(KEY), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }
}
