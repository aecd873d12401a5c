//! The tokio shell of the fake server: accepts TCP connections, performs the WebSocket
//! handshake (routing by path, checking the key, refusing with the real service's HTTP
//! statuses), then pumps one [`FakeSession`] per socket.
//!
//! The clock is read in exactly one place, `now()`, and the core's timer is driven with
//! `tokio::time::sleep_until`, so tests on tokio's paused clock run whole calls instantly.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::{FakeDialect, FakeError, FakeOptions, FakeSession, Outgoing};

/// How long shutdown waits for connections to send their close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long a TCP client has to complete the WebSocket upgrade before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one place the shell reads the clock: the monotonic instant the core runs on (tokio's,
/// so a paused test clock applies) and the wall-clock Unix time in microseconds, used for
/// `expires_at` and the record's `unix_us`.
fn now() -> (Instant, u64) {
    let unix_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    (tokio::time::Instant::now().into_std(), unix_us)
}

/// What the handshake decided about a request.
#[derive(Debug)]
struct Route {
    dialect: FakeDialect,
    model: String,
    /// The client sent `OpenAI-Beta` on a GA path: upgrade, then error and close 4000.
    beta: bool,
}

/// Serves fake Realtime connections on `listener` until `shutdown` completes, then closes
/// every open connection with 1001 and returns. Fails only if `options` are unusable.
pub async fn serve(
    listener: TcpListener,
    options: Arc<FakeOptions>,
    shutdown: impl Future,
) -> std::io::Result<()> {
    serve_with(listener, options, shutdown, HANDSHAKE_TIMEOUT).await
}

/// [`serve`] with the handshake time limit as a parameter, for tests.
async fn serve_with(
    listener: TcpListener,
    options: Arc<FakeOptions>,
    shutdown: impl Future,
    handshake_timeout: Duration,
) -> std::io::Result<()> {
    let options = prepared(options)?;
    let recorder = options.record.as_deref().map(Recorder::start);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut connections: u64 = 0;
    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections += 1;
                    tracing::debug!(%peer, connection = connections, "fake realtime: accepted");
                    tasks.spawn(connection(
                        stream,
                        Arc::clone(&options),
                        connections,
                        stop_rx.clone(),
                        handshake_timeout,
                        recorder.as_ref().map(|r| r.lines.clone()),
                    ));
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "fake realtime: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    // Stragglers are aborted, so every sender to the recorder is gone and it can finish.
    tasks.shutdown().await;
    if let Some(recorder) = recorder {
        recorder.finish().await;
    }
    Ok(())
}

fn prepared(options: Arc<FakeOptions>) -> Result<Arc<FakeOptions>, FakeError> {
    // Cheap when already prepared: a loaded file is shared, not re-read.
    let mut owned = Arc::unwrap_or_clone(options);
    owned.prepare()?;
    Ok(Arc::new(owned))
}

/// A fake server running in this process on 127.0.0.1; stops when dropped.
#[derive(Debug)]
pub struct FakeHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl FakeHandle {
    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `ws://` URL of a dialect's endpoint on this server, for `model` (the deployment on
    /// Azure).
    pub fn url(&self, dialect: FakeDialect, model: &str) -> String {
        let addr = self.addr;
        match dialect {
            FakeDialect::OpenAiGa => format!("ws://{addr}/v1/realtime?model={model}"),
            FakeDialect::AzureGa => format!("ws://{addr}/openai/v1/realtime?model={model}"),
            FakeDialect::AzurePreview => format!(
                "ws://{addr}/openai/realtime?api-version=2025-04-01-preview&deployment={model}"
            ),
        }
    }

    /// Stops the server and waits until its connections are closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts a fake server on an ephemeral loopback port.
pub async fn start_loopback(options: FakeOptions) -> std::io::Result<FakeHandle> {
    let options = prepared(Arc::new(options))?;
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, options, async move {
        let _ = stopped.await;
    }));
    Ok(FakeHandle {
        addr,
        stop: Some(stop),
        task: Some(task),
    })
}

/// The `fake-realtime --listen ADDR` subcommand: serves until SIGTERM or SIGINT.
pub async fn run_cli(listen: SocketAddr, options: FakeOptions) -> std::io::Result<()> {
    let options = prepared(Arc::new(options))?;
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "fake realtime server listening");
    serve(listener, options, termination()).await
}

async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

// --- the handshake ------------------------------------------------------------------------

// The error type is tungstenite's handshake callback contract, large or not.
#[allow(clippy::result_large_err)]
fn route(request: &Request, api_key: Option<&str>) -> Result<Route, ErrorResponse> {
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let (dialect, model) = match request.uri().path() {
        "/v1/realtime" => (FakeDialect::OpenAiGa, param("model")),
        "/openai/v1/realtime" => (FakeDialect::AzureGa, param("model")),
        "/openai/realtime" => (FakeDialect::AzurePreview, param("deployment")),
        _ => {
            return Err(http_error(
                StatusCode::NOT_FOUND,
                "not_found",
                "Invalid URL: this server serves /v1/realtime, /openai/v1/realtime and /openai/realtime.",
            ));
        }
    };
    if let Some(expected) = api_key {
        let header_value = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let presented = match dialect {
            FakeDialect::OpenAiGa => header_value("authorization")
                .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned)),
            FakeDialect::AzureGa | FakeDialect::AzurePreview => {
                header_value("api-key").or_else(|| param("api-key"))
            }
        };
        if presented.as_deref() != Some(expected) {
            let message = match presented {
                None => "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in the api-key header on Azure.".to_owned(),
                Some(key) => format!(
                    "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                    mask(&key)
                ),
            };
            return Err(http_error(
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
                &message,
            ));
        }
    }
    let beta = dialect.is_ga() && request.headers().contains_key("openai-beta");
    let model = model.unwrap_or_else(|| {
        if dialect.is_ga() {
            "gpt-realtime".to_owned()
        } else {
            "gpt-4o-realtime-preview".to_owned()
        }
    });
    Ok(Route {
        dialect,
        model,
        beta,
    })
}

/// Shows only the ends of a wrong key, as OpenAI does, so logs of the test never hold it.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let head: String = chars.iter().take(3).collect();
    let tail: String = chars.iter().skip(chars.len() - 4).collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 7))
}

fn http_error(status: StatusCode, code: &str, message: &str) -> ErrorResponse {
    let body = serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}
    });
    let mut response = ErrorResponse::new(Some(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// --- one connection -------------------------------------------------------------------------

#[allow(clippy::result_large_err)] // the handshake callback's type is tungstenite's
async fn connection(
    stream: TcpStream,
    options: Arc<FakeOptions>,
    number: u64,
    mut stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
    record: Option<mpsc::Sender<String>>,
) {
    let mut decided = None;
    let callback = |request: &Request, response: Response| {
        let route = route(request, options.api_key.as_deref())?;
        decided = Some(route);
        Ok(response)
    };
    // A client that never completes the upgrade must not hold a task, nor delay shutdown.
    let handshake = tokio::time::timeout(
        handshake_timeout,
        tokio_tungstenite::accept_hdr_async(stream, callback),
    );
    let socket = tokio::select! {
        result = handshake => match result {
            Ok(Ok(socket)) => socket,
            Ok(Err(error)) => {
                tracing::debug!(%error, "fake realtime: handshake refused or failed");
                return;
            }
            Err(_) => {
                tracing::debug!(connection = number, "fake realtime: handshake timed out");
                return;
            }
        },
        _ = stop.changed() => return,
    };
    let Some(route) = decided else {
        return;
    };
    let (mut sink, mut source) = socket.split();
    if route.beta {
        let error = serde_json::json!({
            "type": "error",
            "event_id": "event_1",
            "error": {
                "type": "invalid_request_error",
                "code": "beta_api_shape_disabled",
                "message": "The Realtime Beta API is no longer supported. Please use the GA API: remove the 'OpenAI-Beta' header.",
                "param": null,
                "event_id": null,
            }
        });
        let _ = sink.send(Message::text(error.to_string())).await;
        let _ = sink.send(close(4000, "beta_api_shape_disabled")).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), source.next()).await;
        return;
    }
    let (start, unix_us) = now();
    let mut session = FakeSession::new(route.dialect, &options, start)
        .with_model(&route.model)
        .with_unix_time(unix_us / 1_000_000)
        .with_connection_number(number);
    let recorder = record.map(|lines| ConnectionRecord {
        lines,
        connection: number,
        start,
        full_audio: options.record_audio,
    });
    loop {
        while let Some(outgoing) = session.poll_transmit() {
            if let Some(recorder) = &recorder {
                recorder.sent(&outgoing).await;
            }
            let (message, last) = match outgoing {
                Outgoing::Text(text) => (Message::text(text), false),
                Outgoing::Close { code, reason } => (close(code, &reason), true),
            };
            if sink.send(message).await.is_err() {
                return;
            }
            if last {
                // Let the client answer the close; do not wait for it forever.
                let _ = tokio::time::timeout(Duration::from_secs(1), source.next()).await;
                return;
            }
        }
        let deadline = session.poll_timeout();
        // A `stop_reading` fault: the socket is left unread (pings too), so the client's
        // frames pile up in the kernel's buffers, as with a service that stopped reading.
        let reading = session.is_reading(now().0);
        tokio::select! {
            message = source.next(), if reading => match message {
                Some(Ok(Message::Text(text))) => {
                    let (at, unix_us) = now();
                    if let Some(recorder) = &recorder {
                        recorder.received(at, unix_us, text.as_str()).await;
                    }
                    session.handle_text(at, text.as_str());
                }
                // The service speaks JSON text frames only; a binary frame is not JSON.
                Some(Ok(Message::Binary(_))) => session.handle_text(now().0, ""),
                Some(Ok(Message::Close(frame))) => {
                    if let Some(recorder) = &recorder {
                        let (code, reason) = frame
                            .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                            .unwrap_or((None, String::new()));
                        recorder.client_closed(code, &reason).await;
                    }
                    return;
                }
                Some(Err(error)) => {
                    if let Some(recorder) = &recorder {
                        recorder.client_closed(None, &error.to_string()).await;
                    }
                    return;
                }
                None => {
                    if let Some(recorder) = &recorder {
                        recorder.client_closed(None, "connection closed").await;
                    }
                    return;
                }
                Some(Ok(_)) => {}
            },
            () = sleep_until(deadline) => session.handle_timeout(now().0),
            _ = stop.changed() => {
                let outgoing = Outgoing::Close { code: 1001, reason: "server shutting down".to_owned() };
                if let Some(recorder) = &recorder {
                    recorder.sent(&outgoing).await;
                }
                let _ = sink.send(close(1001, "server shutting down")).await;
                return;
            }
        }
    }
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Lines queued for the record file before connections wait for the writer.
const RECORD_QUEUE: usize = 1024;

/// Appends received client events to a JSONL file from a blocking-pool thread of its own, so
/// connections never block on the disk, and lines of concurrent connections never interleave.
struct Recorder {
    lines: mpsc::Sender<String>,
    writer: JoinHandle<()>,
}

impl Recorder {
    fn start(path: &Path) -> Self {
        let (lines, mut queue) = mpsc::channel::<String>(RECORD_QUEUE);
        let path = path.to_owned();
        let writer = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path);
            let mut out = match file {
                Ok(file) => Some(std::io::BufWriter::new(file)),
                Err(error) => {
                    tracing::warn!(%error, path = %path.display(), "fake realtime: cannot open record file");
                    None
                }
            };
            // Without a file, keep draining so connections never wait on a dead writer.
            while let Some(line) = queue.blocking_recv() {
                let Some(writer) = out.as_mut() else {
                    continue;
                };
                let mut result = writer.write_all(line.as_bytes());
                // Write what else is queued, then flush once.
                while result.is_ok()
                    && let Ok(line) = queue.try_recv()
                {
                    result = writer.write_all(line.as_bytes());
                }
                if let Err(error) = result.and_then(|()| writer.flush()) {
                    tracing::warn!(%error, path = %path.display(), "fake realtime: cannot write record file");
                    out = None;
                }
            }
        });
        Self { lines, writer }
    }

    /// Waits until every queued line is written; call once no connection holds a sender.
    async fn finish(self) {
        drop(self.lines);
        let _ = self.writer.await;
    }
}

/// One connection's handle on the recorder: stamps and queues its lines.
struct ConnectionRecord {
    lines: mpsc::Sender<String>,
    connection: u64,
    start: Instant,
    /// `record_audio`: keep appended and delta audio in full.
    full_audio: bool,
}

impl ConnectionRecord {
    /// Records a client event, stamped when it was read.
    async fn received(&self, at: Instant, unix_us: u64, text: &str) {
        let line = record_line(
            Direction::In,
            self.connection,
            at.saturating_duration_since(self.start),
            unix_us,
            &RecordedMessage::Text(text),
            self.full_audio,
        );
        // Waits only if the writer is far behind: back-pressure, not loss.
        let _ = self.lines.send(line).await;
    }

    /// Records the client's close frame (`code`), or the end of a connection without one.
    async fn client_closed(&self, code: Option<u16>, reason: &str) {
        let (at, unix_us) = now();
        let line = record_line(
            Direction::In,
            self.connection,
            at.saturating_duration_since(self.start),
            unix_us,
            &RecordedMessage::ClientClose { code, reason },
            self.full_audio,
        );
        let _ = self.lines.send(line).await;
    }

    /// Records a server event or close frame, stamped as it is handed to the socket.
    async fn sent(&self, outgoing: &Outgoing) {
        let (at, unix_us) = now();
        let message = match outgoing {
            Outgoing::Text(text) => RecordedMessage::Text(text),
            Outgoing::Close { code, reason } => RecordedMessage::Close {
                code: *code,
                reason,
            },
        };
        let line = record_line(
            Direction::Out,
            self.connection,
            at.saturating_duration_since(self.start),
            unix_us,
            &message,
            self.full_audio,
        );
        let _ = self.lines.send(line).await;
    }
}

/// Which way a recorded message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    /// Received from the client.
    In,
    /// Sent by the fake.
    Out,
}

/// What a record line holds.
enum RecordedMessage<'a> {
    /// A text frame: an event, or text that is not JSON.
    Text(&'a str),
    /// A close frame the fake sent.
    Close { code: u16, reason: &'a str },
    /// The client's close frame (`code`), or the connection's end without one (`None`).
    ClientClose { code: Option<u16>, reason: &'a str },
}

/// One record line, newline-terminated:
/// `{"dir": "in"|"out", "t_ms": .., "unix_us": .., "conn": .., "event": ..}`, or with
/// `"close": {"code": .., "reason": ..}` instead of `"event"` for a close frame the fake sent
/// ("out") or the client sent ("in"; `code` null when the connection ended without one).
/// Unless `full_audio`, the audio of `input_audio_buffer.append` ("in") and of audio deltas
/// ("out") is replaced by its size (`"<N bytes base64>"`, N the base64 text's length), so files
/// stay small; text that is not JSON is recorded as a string.
fn record_line(
    dir: Direction,
    connection: u64,
    since_start: Duration,
    unix_us: u64,
    message: &RecordedMessage<'_>,
    full_audio: bool,
) -> String {
    let t_ms = u64::try_from(since_start.as_millis()).unwrap_or(u64::MAX);
    let dir_name = match dir {
        Direction::In => "in",
        Direction::Out => "out",
    };
    let mut line = serde_json::Map::new();
    line.insert("dir".into(), dir_name.into());
    line.insert("t_ms".into(), t_ms.into());
    line.insert("unix_us".into(), unix_us.into());
    line.insert("conn".into(), connection.into());
    match message {
        RecordedMessage::Text(text) => {
            let mut event = serde_json::from_str::<serde_json::Value>(text)
                .unwrap_or_else(|_| serde_json::Value::String((*text).to_owned()));
            if !full_audio {
                abbreviate_audio(dir, &mut event);
            }
            line.insert("event".into(), event);
        }
        RecordedMessage::Close { code, reason } => {
            line.insert(
                "close".into(),
                serde_json::json!({"code": code, "reason": reason}),
            );
        }
        RecordedMessage::ClientClose { code, reason } => {
            line.insert(
                "close".into(),
                serde_json::json!({"code": code, "reason": reason}),
            );
        }
    }
    let line = serde_json::Value::Object(line);
    format!("{line}\n")
}

/// Replaces the audio of an append (received) or an audio delta (sent) by its size.
fn abbreviate_audio(dir: Direction, event: &mut serde_json::Value) {
    let kind = event.get("type").and_then(serde_json::Value::as_str);
    let field = match (dir, kind) {
        (Direction::In, Some("input_audio_buffer.append")) => "audio",
        (Direction::Out, Some("response.output_audio.delta" | "response.audio.delta")) => "delta",
        _ => return,
    };
    if let Some(audio) = event.get_mut(field)
        && let Some(length) = audio.as_str().map(str::len)
    {
        *audio = serde_json::Value::String(format!("<{length} bytes base64>"));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Error as WsError;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    async fn first_text(
        socket: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<TcpStream>,
        >,
    ) -> serde_json::Value {
        loop {
            match socket.next().await.unwrap().unwrap() {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn keyed(key: &str) -> FakeOptions {
        FakeOptions {
            api_key: Some(key.to_owned()),
            ..FakeOptions::default()
        }
    }

    #[tokio::test]
    async fn each_path_answers_in_its_dialect() {
        let server = start_loopback(keyed("sk-test")).await.unwrap();
        for dialect in [
            FakeDialect::OpenAiGa,
            FakeDialect::AzureGa,
            FakeDialect::AzurePreview,
        ] {
            let mut request = server.url(dialect, "dep1").into_client_request().unwrap();
            let (name, value) = match dialect {
                FakeDialect::OpenAiGa => ("authorization", "Bearer sk-test"),
                _ => ("api-key", "sk-test"),
            };
            request
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
            let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
            let created = first_text(&mut socket).await;
            assert_eq!(created["type"], "session.created");
            let session = &created["session"];
            assert_eq!(session["object"], "realtime.session");
            assert_eq!(session["model"], "dep1");
            assert!(session["id"].as_str().unwrap().starts_with("sess_"));
            assert!(session["expires_at"].as_u64().unwrap() > 1_600_000_000);
            if dialect.is_ga() {
                assert_eq!(session["type"], "realtime");
                assert_eq!(session["audio"]["input"]["format"]["type"], "audio/pcm");
                assert!(session.get("input_audio_format").is_none());
            } else {
                assert_eq!(session["input_audio_format"], "pcm16");
                assert!(session.get("audio").is_none());
            }
        }
        server.shutdown().await;
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let server = start_loopback(FakeOptions::default()).await.unwrap();
        let url = format!("ws://{}/v2/realtime?model=x", server.addr());
        match tokio_tungstenite::connect_async(url).await {
            Err(WsError::Http(response)) => assert_eq!(response.status(), StatusCode::NOT_FOUND),
            other => panic!("expected 404, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn wrong_key_is_401_with_openai_json() {
        let server = start_loopback(keyed("sk-right-key-1234")).await.unwrap();
        let mut request = server
            .url(FakeDialect::OpenAiGa, "gpt-realtime")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_static("Bearer sk-wrong-key-9999"),
        );
        match tokio_tungstenite::connect_async(request).await {
            Err(WsError::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
                let body: serde_json::Value =
                    serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["code"], "invalid_api_key");
                assert_eq!(body["error"]["type"], "invalid_request_error");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.starts_with("Incorrect API key provided"));
                assert!(!message.contains("sk-wrong-key-9999"), "the key is masked");
            }
            other => panic!("expected 401, got {other:?}"),
        }
        // Azure paths want the api-key header, not Bearer.
        let mut request = server
            .url(FakeDialect::AzureGa, "dep")
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_static("Bearer sk-right-key-1234"),
        );
        assert!(matches!(
            tokio_tungstenite::connect_async(request).await,
            Err(WsError::Http(r)) if r.status() == StatusCode::UNAUTHORIZED
        ));
    }

    #[tokio::test]
    async fn beta_header_gets_error_and_close_4000() {
        let server = start_loopback(FakeOptions::default()).await.unwrap();
        let mut request = server
            .url(FakeDialect::OpenAiGa, "gpt-realtime")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("openai-beta", HeaderValue::from_static("realtime=v1"));
        let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let error = first_text(&mut socket).await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["code"], "beta_api_shape_disabled");
        match socket.next().await.unwrap().unwrap() {
            Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 4000),
            other => panic!("expected close, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_that_never_upgrades_is_dropped_after_the_handshake_timeout() {
        use tokio::io::AsyncReadExt as _;
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            Arc::new(FakeOptions::default()),
            async move {
                let _ = stopped.await;
            },
            Duration::from_millis(100),
        ));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0_u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the server closed the idle socket: {read:?}"
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_a_stalled_handshake() {
        let server = start_loopback(FakeOptions::default()).await.unwrap();
        // Half a request line, then nothing: the handshake is under way and stalls.
        let mut stalled = TcpStream::connect(server.addr()).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stalled, b"GET /v1/realtime HTTP/1.1\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(1), server.shutdown())
            .await
            .expect("shutdown is not held up by the grace period");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn records_both_directions_and_serves_a_turn() {
        let before_us = unix_now_us();
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("events.jsonl");
        let options = FakeOptions {
            record: Some(record.clone()),
            speed: 1000.0,
            ..FakeOptions::default()
        };
        let server = start_loopback(options).await.unwrap();
        let (mut socket, _) =
            tokio_tungstenite::connect_async(server.url(FakeDialect::OpenAiGa, "m"))
                .await
                .unwrap();
        assert_eq!(first_text(&mut socket).await["type"], "session.created");
        socket
            .send(Message::text(
                r#"{"type":"response.create","event_id":"c1"}"#,
            ))
            .await
            .unwrap();
        socket.send(Message::text("not json")).await.unwrap();
        let mut kinds = Vec::new();
        loop {
            let event = first_text(&mut socket).await;
            let kind = event["type"].as_str().unwrap().to_owned();
            kinds.push(kind.clone());
            if kind == "error" {
                assert_eq!(event["error"]["code"], "invalid_json");
                break;
            }
        }
        assert!(kinds.contains(&"response.done".to_owned()), "{kinds:?}");
        // A second connection's events are told apart by "conn"; appended audio is recorded
        // by size only.
        let (mut second, _) =
            tokio_tungstenite::connect_async(server.url(FakeDialect::OpenAiGa, "m"))
                .await
                .unwrap();
        assert_eq!(first_text(&mut second).await["type"], "session.created");
        let audio =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![0_u8; 4800]);
        second
            .send(Message::text(
                serde_json::json!({"type": "input_audio_buffer.append", "audio": audio})
                    .to_string(),
            ))
            .await
            .unwrap();
        second
            .send(Message::text(r#"{"type":"input_audio_buffer.clear"}"#))
            .await
            .unwrap();
        assert_eq!(
            first_text(&mut second).await["type"],
            "input_audio_buffer.cleared"
        );
        server.shutdown().await;
        let after_us = unix_now_us();
        let text = std::fs::read_to_string(&record).unwrap();
        let all: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Every line has its direction and both clocks; a connection's lines are in order.
        for conn in [1, 2] {
            let mine: Vec<&serde_json::Value> = all.iter().filter(|l| l["conn"] == conn).collect();
            assert!(!mine.is_empty(), "{text}");
            let mut last = (0, before_us);
            for line in mine {
                assert!(line["dir"] == "in" || line["dir"] == "out", "{line}");
                let t_ms = line["t_ms"].as_u64().unwrap();
                let unix_us = line["unix_us"].as_u64().unwrap();
                assert!(unix_us >= last.1 && unix_us <= after_us, "{line}");
                assert!(t_ms >= last.0, "{line}");
                last = (t_ms, unix_us);
            }
        }
        let lines: Vec<&serde_json::Value> = all.iter().filter(|l| l["dir"] == "in").collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0]["event"]["type"], "response.create");
        assert_eq!(lines[0]["event"]["event_id"], "c1");
        assert!(lines[0]["t_ms"].is_u64());
        assert_eq!(lines[0]["conn"], 1);
        assert_eq!(lines[1]["event"], "not json");
        assert_eq!(lines[1]["conn"], 1);
        assert_eq!(
            lines[2]["event"],
            serde_json::json!({"type": "input_audio_buffer.append", "audio": "<6400 bytes base64>"})
        );
        assert_eq!(lines[2]["conn"], 2);
        assert_eq!(lines[3]["event"]["type"], "input_audio_buffer.clear");
        assert_eq!(lines[3]["conn"], 2);

        // What the fake sent, in the order sent: the greeting, the reply with its audio by
        // size only, the error for the text that was not JSON, and the close at shutdown.
        let sent = |conn: u64| -> Vec<&serde_json::Value> {
            all.iter()
                .filter(|l| l["dir"] == "out" && l["conn"] == conn)
                .collect()
        };
        let kinds = |lines: &[&serde_json::Value]| -> Vec<String> {
            lines
                .iter()
                .map(|l| match l["event"]["type"].as_str() {
                    Some(kind) => kind.to_owned(),
                    None => format!("close {}", l["close"]["code"]),
                })
                .collect()
        };
        let first = sent(1);
        let first_kinds = kinds(&first);
        assert_eq!(first_kinds[0], "session.created", "{first_kinds:?}");
        assert!(
            first_kinds.contains(&"response.done".to_owned()),
            "{first_kinds:?}"
        );
        let error_at = first_kinds.iter().position(|k| k == "error").unwrap();
        assert_eq!(first[error_at]["event"]["error"]["code"], "invalid_json");
        assert_eq!(first_kinds.last().unwrap(), "close 1001", "{first_kinds:?}");
        assert_eq!(
            first.last().unwrap()["close"]["reason"],
            "server shutting down"
        );
        let deltas: Vec<&str> = first
            .iter()
            .filter(|l| l["event"]["type"] == "response.output_audio.delta")
            .map(|l| l["event"]["delta"].as_str().unwrap())
            .collect();
        assert!(!deltas.is_empty(), "{first_kinds:?}");
        assert!(
            deltas
                .iter()
                .all(|d| d.starts_with('<') && d.ends_with(" bytes base64>")),
            "{deltas:?}"
        );
        assert_eq!(
            kinds(&sent(2)),
            [
                "session.created",
                "input_audio_buffer.cleared",
                "close 1001"
            ]
        );
        assert!(text.len() < 20_000, "no audio in the file: {}", text.len());
    }

    fn unix_now_us() -> u64 {
        u64::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros(),
        )
        .unwrap()
    }

    fn base64(bytes: &[u8]) -> String {
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
    }

    fn unbase64(text: &str) -> Vec<u8> {
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text).unwrap()
    }

    #[tokio::test]
    async fn record_audio_keeps_appended_and_reply_audio_in_full() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join("events.jsonl");
        let options: FakeOptions = serde_json::from_value(serde_json::json!({
            "record": record,
            "record_audio": true,
            "reply": {"kind": "tone", "frequency_hz": 1000, "duration_ms": 300},
            "speed": 1000.0,
            "session_max_duration": "2s",
        }))
        .unwrap();
        let server = start_loopback(options).await.unwrap();
        let (mut socket, _) =
            tokio_tungstenite::connect_async(server.url(FakeDialect::OpenAiGa, "m"))
                .await
                .unwrap();
        assert_eq!(first_text(&mut socket).await["type"], "session.created");
        // Distinct bytes, so any reordering or cut shows.
        let appended: Vec<Vec<u8>> = (0..3_u8)
            .map(|n| {
                (0..960_u32)
                    .map(|i| (i as u8).wrapping_mul(7).wrapping_add(n))
                    .collect()
            })
            .collect();
        for audio in &appended {
            socket
                .send(Message::text(
                    serde_json::json!({"type": "input_audio_buffer.append", "audio": base64(audio)})
                        .to_string(),
                ))
                .await
                .unwrap();
        }
        socket
            .send(Message::text(r#"{"type":"response.create"}"#))
            .await
            .unwrap();
        let mut received = Vec::new();
        loop {
            let event = first_text(&mut socket).await;
            match event["type"].as_str().unwrap() {
                "response.output_audio.delta" => {
                    received.extend(unbase64(event["delta"].as_str().unwrap()));
                }
                "response.done" => break,
                _ => {}
            }
        }
        // The session ends by itself after 2 s: the close is recorded too.
        let close = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match socket.next().await {
                    Some(Ok(Message::Close(frame))) => return frame,
                    Some(Ok(_)) => {}
                    other => panic!("expected a close, got {other:?}"),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
        server.shutdown().await;

        let text = std::fs::read_to_string(&record).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let recorded_in: Vec<Vec<u8>> = lines
            .iter()
            .filter(|l| l["dir"] == "in" && l["event"]["type"] == "input_audio_buffer.append")
            .map(|l| unbase64(l["event"]["audio"].as_str().unwrap()))
            .collect();
        assert_eq!(recorded_in, appended);
        let recorded_out: Vec<u8> = lines
            .iter()
            .filter(|l| l["dir"] == "out" && l["event"]["type"] == "response.output_audio.delta")
            .flat_map(|l| unbase64(l["event"]["delta"].as_str().unwrap()))
            .collect();
        // 300 ms of 24 kHz 16-bit audio, exactly what the client got.
        assert_eq!(recorded_out.len(), 300 * 48);
        assert_eq!(recorded_out, received);
        let last = lines.last().unwrap();
        assert_eq!(last["dir"], "out");
        assert_eq!(last["close"]["code"], 1001);
        assert!(
            last["close"]["reason"]
                .as_str()
                .unwrap()
                .contains("maximum duration"),
            "{last}"
        );
    }
}
