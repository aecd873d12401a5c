//! The webhook shell: one HTTP/1.1 POST of a tool call's JSON body, with a deadline.
//!
//! [`crate::call::tools::invoke`] decides that a function call is a webhook and builds the
//! body; this module sends it and reports a [`WebhookOutcome`], which
//! [`crate::call::tools::webhook_output`] turns into what the model hears. It is async and
//! meant to be spawned by the call's task, so a slow service never holds up the media path.
//!
//! One connection per request (tool calls are rare; no pool to keep alive or leak), `https://`
//! through rustls with the webpki roots (the same trust as the realtime WebSocket), plain
//! `http://` only where the configuration allows it (loopback). Header secrets are loaded at
//! the request, so a rotated key file is picked up, and go out marked sensitive; nothing here
//! logs a header value. The answer is read up to [`MAX_BODY`] bytes; the rest is dropped.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub use crate::call::tools::WebhookOutcome;
use crate::config::{HeaderName, HeaderValue, SecretError, WebhookUrl};

/// The most of an answer's body that is read.
pub const MAX_BODY: usize = 64 * 1024;

/// Why a request failed. The text never holds a header value.
#[derive(Debug, thiserror::Error)]
enum WebhookError {
    #[error("header {name}: {source}")]
    Secret { name: String, source: SecretError },
    #[error("header {name}: the value is not allowed in an HTTP header")]
    HeaderValue { name: String },
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} has no address")]
    NoAddress { host: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("TLS set-up failed: {0}")]
    TlsConfig(rustls::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    #[error("the URL has no host")]
    NoHost,
}

/// POSTs `body` as JSON to `url` with `headers`, and reports what came back: the status and
/// (at most [`MAX_BODY`] bytes of) the body, [`WebhookOutcome::Timeout`] when the whole
/// exchange (resolve, connect, TLS, request, answer) took longer than `timeout`, or
/// [`WebhookOutcome::Error`]. Redirects are not followed.
pub async fn post(
    url: WebhookUrl,
    timeout: Duration,
    headers: BTreeMap<HeaderName, HeaderValue>,
    body: serde_json::Value,
) -> WebhookOutcome {
    match tokio::time::timeout(timeout, exchange(&url, &headers, &body)).await {
        Ok(Ok((status, body))) => WebhookOutcome::Response { status, body },
        Ok(Err(error)) => WebhookOutcome::Error(error.to_string()),
        Err(_) => WebhookOutcome::Timeout,
    }
}

async fn exchange(
    url: &WebhookUrl,
    headers: &BTreeMap<HeaderName, HeaderValue>,
    body: &serde_json::Value,
) -> Result<(u16, Vec<u8>), WebhookError> {
    // Secrets and the request first: a missing secret fails before anything is sent.
    let request = build_request(url, headers, body)?;
    let url = url.url();
    let port = url.port_or_known_default().unwrap_or(443);
    let (addr, server_name) = match url.host() {
        Some(url::Host::Ipv4(ip)) => (SocketAddr::from((ip, port)), None),
        Some(url::Host::Ipv6(ip)) => (SocketAddr::from((ip, port)), None),
        Some(url::Host::Domain(domain)) => {
            let addr = tokio::net::lookup_host((domain, port))
                .await
                .map_err(|source| WebhookError::Resolve {
                    host: domain.to_owned(),
                    source,
                })?
                .next()
                .ok_or_else(|| WebhookError::NoAddress {
                    host: domain.to_owned(),
                })?;
            (addr, Some(domain.to_owned()))
        }
        None => return Err(WebhookError::NoHost),
    };
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| WebhookError::Connect { addr, source })?;
    // Small requests: send at once.
    let _ = tcp.set_nodelay(true);
    if url.scheme() == "https" {
        let name = match server_name {
            Some(domain) => {
                rustls::pki_types::ServerName::try_from(domain).map_err(|_| WebhookError::NoHost)?
            }
            None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
        };
        let host = url.host_str().unwrap_or_default().to_owned();
        let connector = tokio_rustls::TlsConnector::from(tls_config()?);
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|source| WebhookError::Tls { host, source })?;
        send(tls, request).await
    } else {
        send(tcp, request).await
    }
}

fn build_request(
    url: &WebhookUrl,
    headers: &BTreeMap<HeaderName, HeaderValue>,
    body: &serde_json::Value,
) -> Result<http::Request<Full<Bytes>>, WebhookError> {
    let url = url.url();
    let mut target = url.path().to_owned();
    if let Some(query) = url.query() {
        target.push('?');
        target.push_str(query);
    }
    let host = url.host_str().ok_or(WebhookError::NoHost)?;
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let mut builder = http::Request::post(target)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::ACCEPT,
            "application/json, text/plain;q=0.9, */*;q=0.1",
        )
        .header(
            http::header::USER_AGENT,
            concat!("sip-realtime-bridge/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        let secret = value.load().map_err(|source| WebhookError::Secret {
            name: name.to_string(),
            source,
        })?;
        let invalid = || WebhookError::HeaderValue {
            name: name.to_string(),
        };
        let mut value = http::HeaderValue::from_str(secret.expose()).map_err(|_| invalid())?;
        value.set_sensitive(true);
        let name = http::HeaderName::from_bytes(name.as_str().as_bytes()).map_err(|_| invalid())?;
        builder = builder.header(name, value);
    }
    // Serializing a Value cannot fail (its map keys are strings).
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Ok(builder.body(Full::new(Bytes::from(bytes)))?)
}

/// Sends `request` over `io` and reads the answer, at most [`MAX_BODY`] bytes of its body.
async fn send<T>(io: T, request: http::Request<Full<Bytes>>) -> Result<(u16, Vec<u8>), WebhookError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    // The connection is driven by its own task, aborted when this request is done or dropped
    // (the deadline), so nothing outlives the call of `post`.
    let driver = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers
        };
        let room = MAX_BODY.saturating_sub(bytes.len());
        bytes.extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
        if bytes.len() >= MAX_BODY {
            break;
        }
    }
    drop(driver);
    Ok((status, bytes))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The rustls client configuration: ring, the webpki roots, HTTP/1.1. Built once.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, WebhookError> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(WebhookError::TlsConfig)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(CONFIG.get_or_init(|| Arc::new(config)).clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests;
