//! The call shell: one task per call that owns the call's RTP and RTCP sockets and the read
//! half of its WebSocket, feeds the sans-IO [`Call`] with [`Input`]s and carries out its
//! [`Output`]s. It decides nothing: which address RTP goes to, when to answer, hold, RTCP,
//! keepalives, stalls and every ending are the call's.
//!
//! One `select!` over everything the call waits for: the call's timer, the two UDP sockets,
//! the WebSocket's connect and read half, the writer's failure, the signalling loop's
//! commands and webhook answers. Nothing on it awaits a peer: WebSocket frames go through a
//! bounded queue ([`WRITER_QUEUE`]) to a writer task of their own, which reports how many it
//! has written (an atomic the shell reads into [`Input::UpstreamWritten`]); RTP and RTCP go
//! out with `try_send_to` (a full socket buffer drops a datagram, as the network may). So
//! whatever the upstream does, the caller's 20 ms clock keeps its pace until the call ends.
//!
//! It reads the monotonic clock in one function, `now`, and the wall clock once per call (the
//! call derives RTCP's NTP time from it); it draws the call's randomness (SSRC, first
//! sequence number and timestamp, RTCP's seed) when the signalling loop builds the call.
//!
//! When the call is over ([`Output::Finished`]) the task drops its sockets (the ports go back
//! to the pool), hands the WebSocket's close to the writer (which gets [`CLOSE_TIMEOUT`] to
//! send it before it is aborted), and reports the record.
//!
//! Two measurements are the shell's, because only it sees real time pass: the time from an
//! RTP datagram's arrival to the writer's write of the append it became (`latency_in`), and
//! the time from reading a frame with `speech_started` to the end of the input that flushed
//! playback (`barge_in_reactions`); they are added to the record.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::call::upstream::WRITER_QUEUE;
use crate::call::{
    Call, CallEnd, CallEvent, CallRecord, Input, LatencyHistogram, Output, Signalling, Socket,
    UpstreamRefusal, WebhookOutcome, WebhookRequest,
};
use crate::config::{Config, Name, UpstreamConfig};
use crate::fake_realtime::{self, FakeHandle};
use crate::io::media::MediaSockets;
use crate::io::ws::{self, ConnectError, WsStream};
use crate::realtime::{self, CallId, ConnectTarget, Dialect};
use crate::rtp::rtcp::NtpTime;
use crate::sip::dialog::DialogEvent;
use crate::sip::endpoint::CallHandle;

/// Largest datagram read.
const MAX_DATAGRAM: usize = 2048;
/// How long the writer may take to send the close frame before it is aborted.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Barge-in reaction times kept per call.
const REACTIONS_MAX: usize = 64;

/// The monotonic clock of the call task: tokio's, so a paused test runtime drives it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The wall clock, read once per call (for RTCP's NTP timestamps).
pub fn wall_clock() -> NtpTime {
    NtpTime::from_system_time(SystemTime::now())
}

/// How to reach one configured upstream.
#[derive(Clone, Debug)]
pub struct UpstreamTarget {
    pub target: ConnectTarget,
    pub dialect: Dialect,
    pub connect_timeout: Duration,
}

/// The upstreams the routes use, resolved once at start: keys loaded, URLs built, and the
/// in-process fake servers started (they stop when this is dropped).
#[derive(Debug, Default)]
pub struct Upstreams {
    targets: BTreeMap<Name, UpstreamTarget>,
    _fakes: Vec<FakeHandle>,
}

impl Upstreams {
    /// Resolves every upstream a route can reach.
    pub async fn start(config: &Config) -> std::io::Result<Upstreams> {
        let mut upstreams = Upstreams::default();
        for (name, upstream) in config.routed_upstreams() {
            let dialect = Dialect::for_upstream(upstream);
            let target = match upstream {
                UpstreamConfig::Fake(fake) => {
                    let handle = fake_realtime::start_loopback(fake.options.clone()).await?;
                    tracing::info!(upstream = %name, addr = %handle.addr(), "fake realtime server started");
                    let target = ConnectTarget {
                        url: realtime::fake_url(handle.addr(), dialect),
                        auth_header: None,
                    };
                    upstreams._fakes.push(handle);
                    target
                }
                real => {
                    let key = match real.api_key().map(crate::config::SecretSource::load) {
                        Some(Ok(key)) => Some(key),
                        Some(Err(error)) => {
                            return Err(std::io::Error::other(format!(
                                "upstream {name}: cannot read the API key: {error}"
                            )));
                        }
                        None => None,
                    };
                    realtime::connect_request(real, key.as_ref())
                        .map_err(|e| std::io::Error::other(format!("upstream {name}: {e}")))?
                }
            };
            upstreams.targets.insert(
                name.clone(),
                UpstreamTarget {
                    target,
                    dialect,
                    connect_timeout: upstream.connect_timeout(),
                },
            );
        }
        Ok(upstreams)
    }

    /// The target of upstream `name`.
    pub fn get(&self, name: &Name) -> Option<&UpstreamTarget> {
        self.targets.get(name)
    }
}

/// What the signalling loop tells a call task.
#[derive(Debug)]
enum Command {
    Dialog(DialogEvent),
    Drain(Instant),
    Stop(CallEnd),
}

/// What a call task reports to the signalling loop.
#[derive(Debug)]
pub enum CallReport {
    /// A request for the call's dialog.
    Signalling(Signalling),
    /// The task has ended and its sockets are closed: the call's record.
    Finished(Box<CallRecord>),
}

/// The signalling loop's side of a call task.
#[derive(Debug)]
pub struct CallTask {
    commands: mpsc::UnboundedSender<Command>,
}

impl CallTask {
    /// An event of the call's dialog.
    pub fn dialog(&self, event: DialogEvent) {
        let _ = self.commands.send(Command::Dialog(event));
    }

    /// The daemon drains: the call may go on until `until`.
    pub fn drain(&self, until: Instant) {
        let _ = self.commands.send(Command::Drain(until));
    }

    /// Ends the call now for `end`.
    pub fn stop(&self, end: CallEnd) {
        let _ = self.commands.send(Command::Stop(end));
    }
}

/// Starts the task of `call` on `sockets`; reports go to `reports`.
pub fn spawn(
    handle: CallHandle,
    call: Call,
    sockets: MediaSockets,
    upstream: UpstreamTarget,
    reports: mpsc::UnboundedSender<(CallHandle, CallReport)>,
) -> std::io::Result<CallTask> {
    sockets.rtp.set_nonblocking(true)?;
    sockets.rtcp.set_nonblocking(true)?;
    let rtp = UdpSocket::from_std(sockets.rtp)?;
    let rtcp = UdpSocket::from_std(sockets.rtcp)?;
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (webhook_tx, webhook_rx) = mpsc::unbounded_channel();
    let mut task = Task {
        handle,
        call,
        rtp,
        rtcp,
        upstream,
        connecting: None,
        reader: None,
        writer: None,
        webhook_tx,
        reports: reports.clone(),
        latency_in: Arc::new(Mutex::new(LatencyHistogram::default())),
        reactions: Vec::new(),
        send_errors: 0,
        broken: None,
    };
    tokio::spawn(async move {
        let record = task.run(commands_rx, webhook_rx).await;
        // Sockets closed before the loop hears of the end: it releases the ports then.
        drop(task);
        let _ = reports.send((handle, CallReport::Finished(Box::new(record))));
    });
    Ok(CallTask { commands })
}

type Connecting = Pin<Box<dyn Future<Output = Result<WsStream, ConnectError>> + Send>>;

/// What the call task hands its writer.
enum Write {
    /// A text frame; `since`: when the datagram it carries audio of arrived.
    Text {
        text: String,
        since: Option<Instant>,
    },
    Ping([u8; 8]),
    Close {
        code: u16,
        reason: &'static str,
    },
}

/// The call task's side of the writer.
struct Writer {
    queue: mpsc::Sender<Write>,
    written: Arc<AtomicU64>,
    reported: u64,
    failed: oneshot::Receiver<String>,
    abort: AbortHandle,
}

struct Task {
    handle: CallHandle,
    call: Call,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    upstream: UpstreamTarget,
    connecting: Option<Connecting>,
    reader: Option<SplitStream<WsStream>>,
    writer: Option<Writer>,
    webhook_tx: mpsc::UnboundedSender<(CallId, WebhookOutcome, Duration)>,
    reports: mpsc::UnboundedSender<(CallHandle, CallReport)>,
    latency_in: Arc<Mutex<LatencyHistogram>>,
    reactions: Vec<Duration>,
    send_errors: u64,
    /// The writer could not take a frame: reported as the WebSocket's end on the next turn.
    broken: Option<String>,
}

async fn maybe<F: Future + Unpin>(future: Option<&mut F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn next_frame(
    reader: Option<&mut SplitStream<WsStream>>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(
        &mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut webhooks: mpsc::UnboundedReceiver<(CallId, WebhookOutcome, Duration)>,
    ) -> CallRecord {
        let mut rtp_buf = vec![0u8; MAX_DATAGRAM];
        let mut rtcp_buf = vec![0u8; MAX_DATAGRAM];
        let mut since = None;
        let mut read_at = None;
        loop {
            let wake = match self.perform(since.take(), read_at.take()) {
                Ok(wake) => wake,
                Err(record) => return *record,
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {
                    self.call.handle_input(now(), Input::Timeout);
                }
                received = self.rtp.recv_from(&mut rtp_buf) => {
                    if let Ok((len, from)) = received {
                        let at = now();
                        since = Some(at);
                        let bytes = rtp_buf.get(..len).unwrap_or_default();
                        self.call.handle_input(at, Input::Datagram { socket: Socket::Rtp, from, bytes });
                    }
                }
                received = self.rtcp.recv_from(&mut rtcp_buf) => {
                    if let Ok((len, from)) = received {
                        let bytes = rtcp_buf.get(..len).unwrap_or_default();
                        self.call.handle_input(now(), Input::Datagram { socket: Socket::Rtcp, from, bytes });
                    }
                }
                connected = maybe(self.connecting.as_mut()) => {
                    self.connecting = None;
                    self.connected(connected);
                }
                frame = next_frame(self.reader.as_mut()) => {
                    let at = now();
                    read_at = Some(at);
                    self.frame(at, frame);
                }
                failed = maybe(self.writer.as_mut().map(|w| &mut w.failed)) => {
                    let reason = failed.unwrap_or_else(|_| "writer gone".to_owned());
                    self.upstream_gone(&format!("send failed: {reason}"));
                }
                command = commands.recv() => {
                    let input = match command {
                        Some(Command::Dialog(event)) => Input::Dialog(event),
                        Some(Command::Drain(until)) => Input::Drain { until },
                        Some(Command::Stop(end)) => Input::Stop(end),
                        // The signalling loop is gone: end as at shutdown.
                        None => Input::Stop(CallEnd::Shutdown),
                    };
                    self.call.handle_input(now(), input);
                }
                Some((call_id, outcome, timeout)) = webhooks.recv() => {
                    self.call.handle_input(now(), Input::Webhook { call_id, outcome, timeout });
                }
            }
        }
    }

    /// Carries out the call's outputs until it asks for a timer (`Ok`, when) or is over
    /// (`Err`, its record). `since`: the input was a datagram that arrived then; `read_at`:
    /// it was a WebSocket frame read then.
    fn perform(
        &mut self,
        since: Option<Instant>,
        read_at: Option<Instant>,
    ) -> Result<Instant, Box<CallRecord>> {
        if let Some(reason) = self.broken.take() {
            self.upstream_gone(&reason);
        }
        if let Some(writer) = &mut self.writer {
            let written = writer.written.load(Ordering::Acquire);
            if written != writer.reported {
                writer.reported = written;
                self.call
                    .handle_input(now(), Input::UpstreamWritten(written));
            }
        }
        loop {
            let Some(output) = self.call.poll_output() else {
                // Finished already went out (not expected: it ends this loop).
                return Err(Box::new(self.call.record(now())));
            };
            match output {
                Output::Timeout { at, .. } => return Ok(at),
                Output::Transmit {
                    socket,
                    to,
                    datagram,
                } => {
                    let socket = match socket {
                        Socket::Rtp => &self.rtp,
                        Socket::Rtcp => &self.rtcp,
                    };
                    if let Err(error) = socket.try_send_to(&datagram, to) {
                        self.send_errors += 1;
                        if self.send_errors == 1 {
                            tracing::warn!(call = %self.handle, %to, %error, "cannot send RTP");
                        }
                    }
                }
                Output::Connect => {
                    let target = self.upstream.target.clone();
                    let timeout = self.upstream.connect_timeout;
                    self.connecting =
                        Some(Box::pin(async move { ws::connect(&target, timeout).await }));
                }
                Output::UpstreamSend(text) => self.write(Write::Text { text, since }),
                Output::UpstreamPing(payload) => self.write(Write::Ping(payload)),
                Output::UpstreamClose { code, reason } => self.close_upstream(code, reason),
                Output::Signalling(request) => self.report(CallReport::Signalling(request)),
                Output::Webhook(request) => self.webhook(request),
                Output::Event(CallEvent::BargeIn(barge_in)) => {
                    let reaction = read_at.map(|at| now().saturating_duration_since(at));
                    tracing::debug!(call = %self.handle, ?reaction, truncated = ?barge_in.truncated,
                        deleted = ?barge_in.deleted, "barge-in");
                    if let Some(reaction) = reaction
                        && self.reactions.len() < REACTIONS_MAX
                    {
                        self.reactions.push(reaction);
                    }
                }
                Output::Finished(mut record) => {
                    record.barge_in_reactions = std::mem::take(&mut self.reactions);
                    record.latency_in = self
                        .latency_in
                        .lock()
                        .map(|h| h.clone())
                        .unwrap_or_default();
                    return Err(record);
                }
            }
        }
    }

    fn report(&self, report: CallReport) {
        // The reports channel is unbounded: a busy signalling loop never stalls a call.
        let _ = self.reports.send((self.handle, report));
    }

    fn connected(&mut self, result: Result<WsStream, ConnectError>) {
        match result {
            Ok(ws) => {
                let (sink, reader) = ws.split();
                let (queue, queue_rx) = mpsc::channel(WRITER_QUEUE);
                let (failed_tx, failed) = oneshot::channel();
                let written = Arc::new(AtomicU64::new(0));
                let task = tokio::spawn(write_upstream(
                    sink,
                    queue_rx,
                    Arc::clone(&written),
                    Arc::clone(&self.latency_in),
                    failed_tx,
                ));
                self.writer = Some(Writer {
                    queue,
                    written,
                    reported: 0,
                    failed,
                    abort: task.abort_handle(),
                });
                self.reader = Some(reader);
                self.call.handle_input(now(), Input::UpstreamOpened);
            }
            Err(error) => {
                let refusal = UpstreamRefusal {
                    detail: error.to_string(),
                    status: error.http_status(),
                    retry_after: error.retry_after(),
                };
                self.call
                    .handle_input(now(), Input::UpstreamRefused(refusal));
            }
        }
    }

    fn frame(
        &mut self,
        at: Instant,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) {
        match frame {
            Some(Ok(Message::Text(text))) => {
                self.call
                    .handle_input(at, Input::UpstreamText(text.as_str()));
            }
            Some(Ok(Message::Pong(payload))) => {
                self.call.handle_input(at, Input::UpstreamPong(&payload));
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                    .unwrap_or((None, String::new()));
                self.drop_upstream();
                self.call.handle_input(
                    at,
                    Input::UpstreamClosed {
                        code,
                        reason: &reason,
                    },
                );
            }
            // Pings are answered by tungstenite itself; binary frames are not part of the
            // protocol.
            Some(Ok(_)) => {}
            Some(Err(error)) => self.upstream_gone(&error.to_string()),
            None => self.upstream_gone("connection closed without a close frame"),
        }
    }

    /// The WebSocket failed: dropped, and the call told.
    fn upstream_gone(&mut self, reason: &str) {
        self.drop_upstream();
        self.call
            .handle_input(now(), Input::UpstreamClosed { code: None, reason });
    }

    /// Drops both halves; the writer closes the connection (its queue sender is gone).
    fn drop_upstream(&mut self) {
        self.reader = None;
        if let Some(writer) = self.writer.take() {
            arm_abort(writer.abort);
        }
    }

    fn write(&mut self, write: Write) {
        let Some(writer) = &self.writer else {
            return;
        };
        // The call keeps its backlog below the queue's capacity, so this does not fail but
        // for a writer that has died.
        if writer.queue.try_send(write).is_err() {
            self.broken = Some("the writer's queue is full or gone".to_owned());
        }
    }

    fn close_upstream(&mut self, code: u16, reason: &'static str) {
        // Still connecting: the connect is dropped (cancelled).
        self.connecting = None;
        self.reader = None;
        if let Some(writer) = self.writer.take() {
            if writer
                .queue
                .try_send(Write::Close { code, reason })
                .is_err()
            {
                writer.abort.abort();
            } else {
                arm_abort(writer.abort);
            }
        }
    }

    fn webhook(&self, request: WebhookRequest) {
        let done = self.webhook_tx.clone();
        let WebhookRequest {
            call_id,
            url,
            timeout,
            headers,
            body,
        } = request;
        // Off the media path: its own task; the outcome comes back by channel.
        tokio::spawn(async move {
            let outcome = crate::io::webhook::post(url, timeout, headers, body).await;
            let _ = done.send((call_id, outcome, timeout));
        });
    }
}

/// Aborts the writer if it has not finished within [`CLOSE_TIMEOUT`]: a service that does
/// not read gets no more time than that to take the close frame.
fn arm_abort(abort: AbortHandle) {
    tokio::spawn(async move {
        tokio::time::sleep(CLOSE_TIMEOUT).await;
        abort.abort();
    });
}

/// The writer: sends what the call task queues, in order, flushing after each batch, and
/// counts what it wrote. Ends with the close frame, when the call task's queue is gone, or on
/// the first error (reported on `failed`).
async fn write_upstream(
    mut sink: SplitSink<WsStream, Message>,
    mut queue: mpsc::Receiver<Write>,
    written: Arc<AtomicU64>,
    latency: Arc<Mutex<LatencyHistogram>>,
    failed: oneshot::Sender<String>,
) {
    let mut batch = Vec::with_capacity(64);
    let mut stamps = Vec::new();
    let result: Result<(), tokio_tungstenite::tungstenite::Error> = async {
        loop {
            if queue.recv_many(&mut batch, 64).await == 0 {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
                return Ok(());
            }
            let mut frames = 0;
            for write in batch.drain(..) {
                match write {
                    Write::Text { text, since } => {
                        stamps.extend(since);
                        sink.feed(Message::text(text)).await?;
                    }
                    Write::Ping(payload) => {
                        sink.feed(Message::Ping(payload.to_vec().into())).await?
                    }
                    Write::Close { code, reason } => {
                        let frame = CloseFrame {
                            code: code.into(),
                            reason: reason.into(),
                        };
                        sink.send(Message::Close(Some(frame))).await?;
                        return Ok(());
                    }
                }
                frames += 1;
            }
            sink.flush().await?;
            written.fetch_add(frames, Ordering::Release);
            if !stamps.is_empty() {
                let at = now();
                if let Ok(mut histogram) = latency.lock() {
                    for since in stamps.drain(..) {
                        histogram.record(at.saturating_duration_since(since));
                    }
                }
                stamps.clear();
            }
        }
    }
    .await;
    if let Err(error) = result {
        let _ = failed.send(error.to_string());
    }
}

/// Writes `record` as the call's one log record.
pub fn log_record(handle: CallHandle, record: &CallRecord) {
    let reactions: Vec<u64> = record
        .barge_in_reactions
        .iter()
        .map(|d| d.as_micros() as u64)
        .collect();
    let media = record.media.as_ref();
    let received = media.map(|m| &m.received);
    tracing::info!(
        call = %handle,
        call_id = %record.info.call_id,
        route = %record.info.route,
        profile = %record.info.profile,
        caller = %record.info.caller,
        callee = %record.info.callee,
        codec = record.codec.map_or("", |c| c.encoding()),
        audio_format = %record.audio_format,
        end_reason = record.end.as_str(),
        end_detail = %record.end_detail,
        answered = record.setup.is_some(),
        setup_ms = record.setup.map_or(0, |d| d.as_millis() as u64),
        upstream_connect_ms = record.upstream_connect.map_or(0, |d| d.as_millis() as u64),
        first_model_audio_ms = record.first_model_audio.map_or(0, |d| d.as_millis() as u64),
        talk_ms = record.talk.as_millis() as u64,
        duration_ms = record.total.as_millis() as u64,
        barge_ins = record.barge_ins,
        barge_in_reaction_us = %serde_json::to_string(&reactions).unwrap_or_default(),
        frames_after_barge_in = record.frames_after_barge_in,
        truncates = record.truncates,
        truncate_errors = record.truncate_errors,
        deletes = record.deletes,
        late_deltas_dropped = record.late_deltas_dropped,
        model_audio_dropped_ms = record.model_audio_dropped_ms,
        unknown_item_deltas = record.unknown_item_deltas,
        upstream_errors = record.upstream_errors.len(),
        upstream_error_list = %serde_json::to_string(&record.upstream_errors).unwrap_or_default(),
        digits = record.digits,
        caller_frames_filled = record.caller_frames_filled,
        packets_in = received.map_or(0, |r| r.packets_accepted),
        packets_lost = media.map_or(0, |m| m.packets_lost),
        frames_concealed = received.map_or(0, |r| r.frames_concealed),
        packets_out = media.map_or(0, |m| m.packets_sent),
        rtt_ms = media.and_then(|m| m.rtcp.rtt).map_or(0, |d| d.as_millis() as u64),
        caller_frames_in = record.caller_frames_in,
        frames_to_model = record.frames_to_model,
        caller_frames_dropped = record.caller_frames_dropped,
        caller_frames_unsent = record.caller_frames_unsent,
        upstream_backlog_max = record.upstream_backlog_max,
        model_frames_queued = record.model_frames_queued,
        model_frames_sent = record.model_frames_sent,
        latency_in_p50_us = record.latency_in.quantile_us(0.5).unwrap_or(0),
        latency_in_p99_us = record.latency_in.quantile_us(0.99).unwrap_or(0),
        latency_out_p50_us = record.latency_out.quantile_us(0.5).unwrap_or(0),
        latency_out_p99_us = record.latency_out.quantile_us(0.99).unwrap_or(0),
        latency_in_hist = %record.latency_in.encode(),
        latency_out_hist = %record.latency_out.encode(),
        caller_transcript = %record.caller_transcript,
        assistant_transcript = %record.assistant_transcript,
        "call record"
    );
}
