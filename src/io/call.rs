//! The call shell: one task per call that owns the call's RTP and RTCP sockets and its
//! WebSocket, and drives the sans-IO cores: the call ([`Call`], which holds the realtime
//! session and, once answered, the audio bridge with its pacer), the receive path
//! ([`Receiver`]), the RFC 4733 decoder ([`DtmfReceiver`]) and RTCP ([`RtcpSession`]).
//!
//! One task per call, one `select!` over everything the call waits for: the WebSocket, the
//! two UDP sockets, the signalling loop's commands and the earliest core timer. No channel
//! sits on the media path: an RTP datagram becomes an `input_audio_buffer.append` on the
//! socket in the same turn of the loop, and a model delta is framed into the pacer the moment
//! it is read.
//!
//! It reads two clocks, in one place each (`now` and `ntp_now`): the monotonic one for every
//! core, and the wall clock only for RTCP's NTP timestamps. Randomness (SSRC, first sequence
//! number and timestamp, the RTCP interval seed) is drawn here, never in a core.
//!
//! The signalling loop talks to the task through [`CallTask`] (media terms, ACK, digits,
//! end) and hears back [`CallReport`]s (answer, reject, hang up, and the final record).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::call::tools::WebhookOutcome;
use crate::call::{Call, CallAction, CallEnd, CallRecord, TransferOutcome};
use crate::config::{Config, Name, UpstreamConfig};
use crate::fake_realtime::{self, FakeHandle};
use crate::io::media::{MediaConfig, MediaSockets, MediaSummary};
use crate::io::sip::random_u64;
use crate::io::ws::{self, WsStream};
use crate::realtime::{self, CallId, ConnectTarget, Dialect};
use crate::rtp::dtmf::{DtmfEvent, DtmfReceiver};
use crate::rtp::packet;
use crate::rtp::playout::{Pacer, PacerConfig, RtpStart};
use crate::rtp::receive::{FrameKind, ReceiveConfig, ReceiveEvent, Receiver};
use crate::rtp::rtcp::{NtpTime, RtcpConfig, RtcpSession};
use crate::sip::endpoint::CallHandle;
use crate::sip::sdp::{Direction, Negotiated};

/// Largest datagram read.
const MAX_DATAGRAM: usize = 2048;
/// WebSocket ping interval; no frame at all for two of them and the upstream is lost.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The monotonic clock of the call task: tokio's, so a paused test runtime drives it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The wall clock, for RTCP's NTP timestamps only.
fn ntp_now() -> NtpTime {
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

/// What the signalling loop asks of a call task.
#[derive(Debug)]
enum Command {
    /// The answer's (or a re-INVITE's) media terms.
    Media(Box<Negotiated>),
    /// The caller's ACK confirmed the dialog: start sending.
    Confirm,
    /// A key pressed, signalled by SIP INFO.
    Digit(char),
    /// We end the call (max duration, shutdown).
    End(CallEnd),
    /// What became of our REFER.
    Transfer(TransferOutcome),
    /// The dialog is over (`CallEnd` as classified by the loop).
    SipEnded(CallEnd, String),
}

/// What a call task reports.
#[derive(Debug)]
pub enum CallReport {
    /// Answer (200), reject or hang up: what the core decided, for the dialog.
    Action(CallAction),
    /// The task stopped: the call's record and media counters.
    Finished(Box<(CallRecord, Option<MediaSummary>)>),
}

/// The signalling loop's side of a call task.
#[derive(Debug)]
pub struct CallTask {
    commands: mpsc::UnboundedSender<Command>,
}

impl CallTask {
    /// New media terms (the first ones start the audio).
    pub fn media(&self, negotiated: &Negotiated) {
        let _ = self
            .commands
            .send(Command::Media(Box::new(negotiated.clone())));
    }

    /// The dialog is confirmed (the caller's ACK): our stream starts. Until then nothing is
    /// sent, so a forged INVITE (whose sender never sees our To tag and cannot ACK) cannot
    /// aim 50 packets a second at an address it names in its SDP.
    pub fn confirm(&self) {
        let _ = self.commands.send(Command::Confirm);
    }

    /// A digit from SIP INFO.
    pub fn digit(&self, digit: char) {
        let _ = self.commands.send(Command::Digit(digit));
    }

    /// What became of the call's REFER.
    pub fn transfer(&self, outcome: TransferOutcome) {
        let _ = self.commands.send(Command::Transfer(outcome));
    }

    /// Ends the call from our side for `reason`.
    pub fn end(&self, reason: CallEnd) {
        let _ = self.commands.send(Command::End(reason));
    }

    /// The dialog ended; the task closes the upstream, sends RTCP BYE and reports `Finished`.
    pub fn sip_ended(&self, end: CallEnd, detail: String) {
        let _ = self.commands.send(Command::SipEnded(end, detail));
    }
}

/// Starts the task of `call`: it connects `upstream` at once; reports go to `reports`.
pub fn spawn(
    handle: CallHandle,
    core: Call,
    sockets: MediaSockets,
    upstream: UpstreamTarget,
    config: &MediaConfig,
    reports: mpsc::Sender<(CallHandle, CallReport)>,
) -> std::io::Result<CallTask> {
    sockets.rtp.set_nonblocking(true)?;
    sockets.rtcp.set_nonblocking(true)?;
    let rtp = UdpSocket::from_std(sockets.rtp)?;
    let rtcp_socket = UdpSocket::from_std(sockets.rtcp)?;
    let (commands, rx) = mpsc::unbounded_channel();
    let (webhook_tx, webhook_rx) = mpsc::unbounded_channel();
    let mut task = Task {
        handle,
        core,
        rtp,
        rtcp_socket,
        ws: None,
        media: None,
        reports,
        config: config.clone(),
        confirmed: false,
        sip_ended: false,
        send_errors: 0,
        last_heard: now(),
        webhook_tx,
    };
    tokio::spawn(async move { task.run(rx, webhook_rx, upstream).await });
    Ok(CallTask { commands })
}

/// The media cores, once the terms are known.
struct Media {
    negotiated: Negotiated,
    receiver: Receiver,
    dtmf: DtmfReceiver,
    rtcp: RtcpSession,
}

struct Task {
    handle: CallHandle,
    core: Call,
    rtp: UdpSocket,
    rtcp_socket: UdpSocket,
    ws: Option<WsStream>,
    media: Option<Media>,
    reports: mpsc::Sender<(CallHandle, CallReport)>,
    config: MediaConfig,
    /// Whether the caller's ACK has arrived.
    confirmed: bool,
    /// Whether the dialog has ended (the task may stop once the upstream is closed).
    sip_ended: bool,
    send_errors: u64,
    /// When the upstream last sent a frame (keepalive).
    last_heard: Instant,
    /// Webhook outcomes, from the request tasks this task spawned.
    webhook_tx: mpsc::UnboundedSender<WebhookDone>,
}

/// A webhook request's outcome: the tool call, what came back, the timeout it had.
type WebhookDone = (CallId, WebhookOutcome, Duration);

fn receive_config(config: &MediaConfig) -> ReceiveConfig {
    ReceiveConfig {
        inactivity_timeout: config.inactivity_timeout,
        ..ReceiveConfig::default()
    }
}

async fn next_frame(
    ws: Option<&mut WsStream>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Task {
    async fn run(
        &mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut webhooks: mpsc::UnboundedReceiver<WebhookDone>,
        upstream: UpstreamTarget,
    ) {
        // Connect, while the caller hears ringing; a CANCEL or the answer deadline may come
        // first.
        let timeout = upstream.connect_timeout;
        let connect = ws::connect(&upstream.target, timeout);
        tokio::pin!(connect);
        loop {
            tokio::select! {
                result = &mut connect => {
                    match result {
                        Ok(mut ws) => {
                            self.core.handle_connected(now());
                            if self.core.upstream_open() {
                                self.ws = Some(ws);
                                self.last_heard = now();
                            } else {
                                // The call ended while connecting.
                                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(call = %self.handle, %error, "upstream connect failed");
                            self.core.handle_connect_failed(now(), &error.to_string());
                        }
                    }
                    break;
                }
                () = sleep_until(self.core.poll_timeout()) => self.core.handle_timeout(now()),
                command = commands.recv() => self.command(command),
            }
            self.drain().await;
            if self.done() {
                self.stop().await;
                return;
            }
        }
        self.drain().await;

        let mut rtp_buf = vec![0u8; MAX_DATAGRAM];
        let mut rtcp_buf = vec![0u8; MAX_DATAGRAM];
        let mut ping = tokio::time::interval(KEEPALIVE);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        while !self.done() {
            let wake = [
                self.core.poll_timeout(),
                self.media.as_ref().and_then(|m| m.receiver.poll_timeout()),
                self.media.as_ref().and_then(|m| m.rtcp.poll_timeout()),
                self.media.as_ref().and_then(|m| m.dtmf.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            let mut datagram_at = None;
            tokio::select! {
                frame = next_frame(self.ws.as_mut()) => self.ws_frame(frame),
                received = self.rtp.recv_from(&mut rtp_buf) => {
                    if let Ok((len, from)) = received {
                        let at = now();
                        let bytes = rtp_buf.get(..len).unwrap_or_default();
                        if let Some(media) = &mut self.media {
                            if packet::is_rtcp(bytes) {
                                if is_peer(media, from) {
                                    let _ = media.rtcp.handle_rtcp(at, ntp_now(), bytes);
                                }
                            } else {
                                media.receiver.handle_datagram(at, from, bytes);
                                datagram_at = Some(at);
                            }
                        }
                    }
                }
                received = self.rtcp_socket.recv_from(&mut rtcp_buf) => {
                    if let Ok((len, from)) = received
                        && let Some(media) = &mut self.media
                        && is_peer(media, from)
                    {
                        let bytes = rtcp_buf.get(..len).unwrap_or_default();
                        let _ = media.rtcp.handle_rtcp(now(), ntp_now(), bytes);
                    }
                }
                () = sleep_until(wake) => {
                    let now = now();
                    self.core.handle_timeout(now);
                    if let Some(media) = &mut self.media {
                        media.receiver.handle_timeout(now);
                        media.dtmf.handle_timeout(now);
                        let reception = media.receiver.reception_stats();
                        media.rtcp.handle_timeout(now, ntp_now(), reception);
                    }
                }
                command = commands.recv() => self.command(command),
                Some((call_id, outcome, timeout)) = webhooks.recv() => {
                    self.core.handle_webhook_result(now(), &call_id, &outcome, timeout);
                }
                _ = ping.tick(), if self.ws.is_some() => self.keepalive().await,
            }
            let appended_before = self.appended();
            self.drain().await;
            if let Some(at) = datagram_at {
                let appended = self.appended().saturating_sub(appended_before);
                if appended > 0 {
                    self.core
                        .record_latency_in(now().saturating_duration_since(at), appended);
                }
            }
        }
        self.stop().await;
    }

    /// Caller frames appended to the session so far.
    fn appended(&mut self) -> u64 {
        self.core
            .bridge_mut()
            .map_or(0, |b| b.stats().caller_frames_appended)
    }

    /// The task ends once the dialog is over and the upstream closed.
    fn done(&self) -> bool {
        self.sip_ended && self.core.is_ended() && self.ws.is_none()
    }

    fn ws_frame(&mut self, frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>) {
        self.last_heard = now();
        match frame {
            Some(Ok(Message::Text(text))) => {
                let started = now();
                if self.core.handle_ws_text(started, text.as_str()) {
                    self.core
                        .record_barge_in_reaction(now().saturating_duration_since(started));
                }
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                    .unwrap_or((None, String::new()));
                self.core.handle_ws_closed(now(), code, &reason);
                self.ws = None;
            }
            // Pings are answered by tungstenite itself; binary frames are not part of the
            // protocol.
            Some(Ok(_)) => {}
            Some(Err(error)) => {
                self.core.handle_ws_closed(now(), None, &error.to_string());
                self.ws = None;
            }
            None => {
                self.core
                    .handle_ws_closed(now(), None, "connection closed without a close frame");
                self.ws = None;
            }
        }
    }

    async fn keepalive(&mut self) {
        if now().saturating_duration_since(self.last_heard) > KEEPALIVE * 2 {
            self.core.handle_ws_closed(
                now(),
                None,
                "no frame from the service for two keepalive intervals",
            );
            self.ws = None;
        } else if let Some(ws) = &mut self.ws
            && let Err(error) = ws.send(Message::Ping(Vec::new().into())).await
        {
            self.core
                .handle_ws_closed(now(), None, &format!("ping failed: {error}"));
            self.ws = None;
        }
    }

    fn command(&mut self, command: Option<Command>) {
        let now = now();
        match command {
            Some(Command::Media(negotiated)) => self.media_terms(now, *negotiated),
            Some(Command::Confirm) => {
                self.confirmed = true;
                self.apply_direction();
                self.core.handle_confirmed(now);
            }
            Some(Command::Digit(digit)) => self.core.handle_digit(now, digit),
            Some(Command::End(reason)) => self.core.end_call(now, reason),
            Some(Command::Transfer(outcome)) => self.core.handle_transfer(now, outcome),
            Some(Command::SipEnded(end, detail)) => {
                self.sip_ended = true;
                self.core.handle_sip_ended(now, end, &detail);
            }
            // The signalling loop is gone: end as at shutdown.
            None => {
                self.sip_ended = true;
                self.core.handle_sip_ended(now, CallEnd::Shutdown, "");
            }
        }
    }

    fn media_terms(&mut self, now: Instant, negotiated: Negotiated) {
        let format_changed = self.media.as_ref().is_some_and(|m| {
            let old = &m.negotiated;
            negotiated.codec != old.codec
                || negotiated.payload_type != old.payload_type
                || negotiated.telephone_event_pt != old.telephone_event_pt
                || negotiated.ptime_ms != old.ptime_ms
                || negotiated.clock_rate != old.clock_rate
        });
        match &mut self.media {
            None => {
                let first = random_u64();
                let start = RtpStart {
                    ssrc: first as u32,
                    sequence: (first >> 32) as u16,
                    timestamp: random_u64() as u32,
                };
                let pacer = match Pacer::new(PacerConfig::for_negotiated(&negotiated), start, now) {
                    Ok(pacer) => pacer,
                    Err(error) => {
                        tracing::warn!(call = %self.handle, %error, "no pacer for these terms");
                        self.core.end_call(now, CallEnd::MediaFailed);
                        return;
                    }
                };
                let rtcp = match RtcpSession::new(
                    RtcpConfig::new(
                        start.ssrc,
                        self.config.cname.clone(),
                        negotiated.clock_rate,
                        random_u64(),
                    ),
                    now,
                ) {
                    Ok(rtcp) => rtcp,
                    Err(error) => {
                        tracing::warn!(call = %self.handle, %error, "no RTCP for these terms");
                        self.core.end_call(now, CallEnd::MediaFailed);
                        return;
                    }
                };
                if let Err(error) = self.core.handle_media(now, negotiated.codec, pacer) {
                    tracing::warn!(call = %self.handle, %error, "audio bridge not started");
                    return;
                }
                self.media = Some(Media {
                    receiver: Receiver::new(
                        now,
                        receive_config(&self.config),
                        (&negotiated).into(),
                    ),
                    dtmf: DtmfReceiver::new(negotiated.clock_rate),
                    rtcp,
                    negotiated,
                });
            }
            Some(_) if format_changed => {
                // The bridge's codec and pacer are fixed for the call; our answer keeps the
                // codec whenever the new offer still lists it, so this is a peer that dropped
                // it. End the call clearly rather than play the wrong format.
                tracing::warn!(call = %self.handle, codec = negotiated.codec.encoding(), "media format changed mid-call: hanging up");
                self.core.end_call(now, CallEnd::MediaFailed);
                return;
            }
            Some(media) => {
                if negotiated.remote_rtp != media.negotiated.remote_rtp {
                    // A new address in SDP: lock to it at once, so stragglers from the old one
                    // cannot be latched (RFC 4961 symmetric RTP); no address (hold): learn
                    // again.
                    let remote = negotiated.remote_rtp;
                    let usable = !remote.ip().is_unspecified() && remote.port() != 0;
                    media.receiver.reset_source(usable.then_some(remote));
                }
                media.negotiated = negotiated;
            }
        }
        self.apply_direction();
    }

    /// Hold (our direction does not send, or the peer gave no address) stops the pacer's
    /// packets; the clock and timestamps run on. Nothing is sent before the ACK. While our
    /// direction does not receive, the caller's silence is no reason to hang up.
    fn apply_direction(&mut self) {
        let Some(media) = &mut self.media else {
            return;
        };
        let direction = if media.negotiated.is_hold() || !self.confirmed {
            Direction::Inactive
        } else {
            media.negotiated.direction
        };
        if let Some(bridge) = self.core.bridge_mut() {
            bridge.pacer_mut().set_direction(direction);
        }
        let receives = media.negotiated.direction.receives();
        media.receiver.set_expect_media(receives, now());
        let expected = self.confirmed && receives && !media.negotiated.is_hold();
        self.core.set_caller_audio_expected(now(), expected);
    }

    /// Hands everything the cores produced to where it goes, until nothing is left.
    async fn drain(&mut self) {
        if let Some(media) = &mut self.media {
            while let Some(frame) = media.receiver.poll_frame() {
                let concealed = frame.kind == FrameKind::Concealed;
                self.core
                    .handle_caller_frame(now(), &frame.payload, concealed);
            }
            let mut inactive = false;
            while let Some(event) = media.receiver.poll_event() {
                match event {
                    ReceiveEvent::TelephoneEvent { header, payload } => {
                        media.dtmf.handle_packet(now(), &header, &payload);
                    }
                    ReceiveEvent::Inactive { .. } => inactive = true,
                    ReceiveEvent::SourceLearned { source } => {
                        tracing::debug!(call = %self.handle, %source, "RTP source latched");
                    }
                    other => tracing::debug!(call = %self.handle, event = ?other, "RTP"),
                }
            }
            let mut digits = Vec::new();
            while let Some(event) = media.dtmf.poll_event() {
                if let DtmfEvent::Ended { press, .. } = event {
                    tracing::info!(call = %self.handle, digit = %press.digit, duration_ms = press.duration.as_millis() as u64, "DTMF");
                    digits.push(press.digit);
                }
            }
            if inactive {
                tracing::info!(call = %self.handle, "no RTP for the inactivity timeout");
                self.core.handle_rtp_inactive(now());
            }
            for digit in digits {
                self.core.handle_digit(now(), digit.as_char());
            }
        }
        // The upstream.
        while let Some(text) = self.core.poll_ws_transmit() {
            let Some(ws) = &mut self.ws else {
                continue;
            };
            if let Err(error) = ws.send(Message::text(text)).await {
                self.ws = None;
                self.core
                    .handle_ws_closed(now(), None, &format!("send failed: {error}"));
            }
        }
        // RTP out.
        let now = now();
        while let Some(datagram) = self.core.poll_rtp_transmit(now) {
            if let Some(media) = &mut self.media
                && let Ok(sent) = packet::parse(&datagram)
            {
                media
                    .rtcp
                    .handle_rtp_sent(now, sent.header.timestamp, sent.payload.len());
            }
            self.send_rtp(&datagram);
        }
        if let Some(media) = &mut self.media {
            while let Some(report) = media.rtcp.poll_transmit() {
                send_rtcp(&self.rtp, &self.rtcp_socket, &media.negotiated, &report);
            }
            while media.rtcp.poll_event().is_some() {}
        }
        // What the core decided.
        while let Some(action) = self.core.poll_action() {
            if let CallAction::Webhook {
                call_id,
                url,
                timeout,
                headers,
                body,
            } = action
            {
                // Off the media path: its own task; the outcome comes back by channel.
                let done = self.webhook_tx.clone();
                tokio::spawn(async move {
                    let outcome = crate::io::webhook::post(url, timeout, headers, body).await;
                    let _ = done.send((call_id, outcome, timeout));
                });
                continue;
            }
            if action == CallAction::CloseUpstream {
                if let Some(mut ws) = self.ws.take() {
                    let close = CloseFrame {
                        code: CloseCode::Normal,
                        reason: "call ended".into(),
                    };
                    // Bounded: a stuck upstream must not hold the call's end.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), ws.close(Some(close))).await;
                }
                continue;
            }
            let _ = self
                .reports
                .send((self.handle, CallReport::Action(action)))
                .await;
        }
    }

    /// Our RTP goes where the caller's comes from once it is latched (symmetric RTP, RFC
    /// 4961: right behind NAT, where the SDP address is a private one), else to the SDP address.
    fn send_rtp(&mut self, datagram: &[u8]) {
        let Some(media) = &self.media else {
            return;
        };
        let to = media
            .receiver
            .source()
            .unwrap_or(media.negotiated.remote_rtp);
        if to.ip().is_unspecified() || to.port() == 0 {
            return;
        }
        if let Err(error) = self.rtp.try_send_to(datagram, to) {
            self.send_errors += 1;
            if self.send_errors == 1 {
                tracing::warn!(call = %self.handle, %to, %error, "cannot send RTP");
            }
        }
    }

    async fn stop(&mut self) {
        let summary = self.media.as_mut().map(|media| {
            let reception = media.receiver.reception_stats();
            let packets_lost = reception.as_ref().map_or(0, |r| {
                let expected = i64::from(r.extended_highest_seq) - i64::from(r.base_seq) + 1;
                expected - i64::try_from(r.received_packets).unwrap_or(i64::MAX)
            });
            media
                .rtcp
                .close(now(), ntp_now(), reception, Some("call ended"));
            while let Some(report) = media.rtcp.poll_transmit() {
                send_rtcp(&self.rtp, &self.rtcp_socket, &media.negotiated, &report);
            }
            MediaSummary {
                received: media.receiver.stats(),
                packets_sent: self
                    .core
                    .bridge_mut()
                    .map_or(0, |b| b.pacer().stats().packets),
                rtcp: media.rtcp.stats().clone(),
                packets_lost,
            }
        });
        let record = self.core.record(now());
        let _ = self
            .reports
            .send((
                self.handle,
                CallReport::Finished(Box::new((record, summary))),
            ))
            .await;
    }
}

/// RTCP is taken only from the peer: the latched media source or the SDP address.
fn is_peer(media: &Media, from: SocketAddr) -> bool {
    let ip = from.ip().to_canonical();
    ip == media.negotiated.remote_rtp.ip().to_canonical()
        || media
            .receiver
            .source()
            .is_some_and(|s| s.ip().to_canonical() == ip)
}

fn send_rtcp(rtp: &UdpSocket, rtcp: &UdpSocket, negotiated: &Negotiated, datagram: &[u8]) {
    let Some(to) = negotiated.remote_rtcp else {
        return;
    };
    if to.ip().is_unspecified() || to.port() == 0 {
        return;
    }
    // Under rtcp-mux RTCP shares the RTP socket (RFC 5761).
    let socket = if negotiated.rtcp_mux { rtp } else { rtcp };
    let _ = socket.try_send_to(datagram, to);
}

/// Writes `record` (and the media counters) as the call's one log record.
pub fn log_record(handle: CallHandle, record: &CallRecord, media: Option<&MediaSummary>) {
    let reactions: Vec<u64> = record
        .barge_in_reactions
        .iter()
        .map(|d| d.as_micros() as u64)
        .collect();
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
