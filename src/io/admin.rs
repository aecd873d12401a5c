//! The admin HTTP endpoint: `GET /metrics` (Prometheus text 0.0.4), `GET /health` (200 while
//! the process runs) and `GET /ready` (200 when not draining and every account is registered,
//! else 503 with a one-line reason). 404 for other paths, 405 for other methods (HEAD is
//! served as GET without a body).
//!
//! HTTP/1.1 through hyper, on its own tasks: nothing here touches the media path or waits on
//! the signalling loop; it reads the shared [`Metrics`] the loop updates. At most
//! [`MAX_CONNECTIONS`] connections at once (more are closed at accept), a request's header must
//! arrive within [`HEADER_TIMEOUT`], and a connection lives at most [`CONNECTION_LIFETIME`].
//! There is no authentication: the configuration documents that the address belongs on
//! loopback or a management network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::AdminConfig;
use crate::metrics::{self, Metrics};

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// A request's header must be complete within this long.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A (keep-alive) connection is closed after this long whatever it does.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// The running endpoint; dropping it stops accepting (connections in flight finish).
pub struct Admin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Admin {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `config.listen` and serves it. `Ok(None)` when the endpoint is disabled.
pub async fn start(config: &AdminConfig, metrics: Arc<Metrics>) -> std::io::Result<Option<Admin>> {
    if !config.enabled {
        return Ok(None);
    }
    let listener = TcpListener::bind(config.listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on admin.listen {}: {e}", config.listen),
        )
    })?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, metrics));
    Ok(Some(Admin { addr, task }))
}

/// [`start`], logged: the address on success; on failure a warning, and the daemon goes on
/// serving calls without the endpoint (a taken metrics port must not take calls down).
pub async fn start_logged(config: &AdminConfig, metrics: Arc<Metrics>) -> Option<Admin> {
    match start(config, metrics).await {
        Ok(Some(admin)) => {
            tracing::info!(addr = %admin.local_addr(), "admin endpoint listening (/metrics, /health, /ready)");
            Some(admin)
        }
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(%error, "admin endpoint not started; calls are served without it");
            None
        }
    }
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "admin: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            tracing::debug!(%peer, "admin: too many connections, closing");
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "admin: connection error"),
                Err(_) => tracing::debug!(%peer, "admin: connection lifetime reached"),
            }
        });
    }
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    route(request.method(), request.uri().path(), metrics)
}

/// The answer to `method` on `path`.
fn route(method: &Method, path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    if !matches!(path, "/metrics" | "/health" | "/ready") {
        return text(StatusCode::NOT_FOUND, "not found\n".to_owned());
    }
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/metrics" => {
            let mut response = text(StatusCode::OK, metrics.render());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/ready" => match metrics.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".to_owned()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
        _ => text(StatusCode::OK, "ok\n".to_owned()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_health_ready_and_refuses_the_rest() {
        let metrics = Arc::new(Metrics::new());
        let config = AdminConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        let admin = start(&config, Arc::clone(&metrics)).await.unwrap().unwrap();
        let addr = admin.local_addr();
        let get = |path: &str, method: &str| {
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        };

        let r = exchange(addr, &get("/metrics", "GET")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("content-type: text/plain; version=0.0.4"), "{r}");
        assert!(
            r.contains("# TYPE srb_active_calls gauge\nsrb_active_calls 0\n"),
            "{r}"
        );
        let r = exchange(addr, &get("/health", "GET")).await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nok\n"),
            "{r}"
        );
        let r = exchange(addr, &get("/ready?x=1", "GET")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        metrics.set_accounts(["pbx"]);
        let r = exchange(addr, &get("/ready", "GET")).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("not registered: pbx\n"), "{r}");
        let r = exchange(addr, &get("/nope", "GET")).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = exchange(addr, &get("/metrics", "POST")).await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert!(r.contains("allow: GET, HEAD"), "{r}");
        let r = exchange(addr, &get("/health", "HEAD")).await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        // Garbage is answered 400 and closed, and the endpoint goes on.
        let r = exchange(addr, "NOT HTTP\r\n\r\n").await;
        assert!(r.is_empty() || r.starts_with("HTTP/1.1 400"), "{r}");
        let r = exchange(addr, &get("/health", "GET")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }

    #[tokio::test]
    async fn a_disabled_endpoint_binds_nothing() {
        let config = AdminConfig {
            enabled: false,
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        assert!(
            start(&config, Arc::new(Metrics::new()))
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let config = AdminConfig {
            enabled: true,
            listen: "127.0.0.1:0".parse().unwrap(),
        };
        let admin = start(&config, Arc::new(Metrics::new()))
            .await
            .unwrap()
            .unwrap();
        let mut stream = tokio::net::TcpStream::connect(admin.local_addr())
            .await
            .unwrap();
        stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(HEADER_TIMEOUT * 2, stream.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "still open after twice the header timeout");
    }
}
