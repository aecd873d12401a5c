//! The media shell: one task per call that owns the call's RTP and RTCP sockets and drives the
//! sans-IO media cores: the receive path ([`Receiver`]), the pacer ([`Pacer`]), the RFC 4733
//! decoder ([`DtmfReceiver`]) and RTCP ([`RtcpSession`]).
//!
//! It reads two clocks, in one place each (`now` and `ntp_now`): the monotonic one for every
//! core, and the wall clock only for RTCP's NTP timestamps. Randomness (SSRC, first sequence
//! number and timestamp, the RTCP interval seed) is drawn here, never in a core.
//!
//! Until the call issue connects the model, the caller's frames are counted and dropped and the
//! pacer sends silence: a continuous, correctly timed stream, so the phone's jitter buffer and
//! NAT bindings are kept, and RTCP reports flow both ways. The signalling loop talks to the task
//! through [`MediaHandle`] (new SDP terms, stop) and hears back [`MediaReport`]s (inactivity,
//! digits, the end-of-call summary).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::io::sip::random_u64;
use crate::rtp::dtmf::{DigitPress, DtmfEvent, DtmfReceiver};
use crate::rtp::packet;
use crate::rtp::playout::{Pacer, PacerConfig, RtpStart};
use crate::rtp::receive::{ReceiveConfig, ReceiveEvent, ReceiveStats, Receiver};
use crate::rtp::rtcp::{NtpTime, RtcpConfig, RtcpSession, RtcpStats};
use crate::sip::endpoint::CallHandle;
use crate::sip::sdp::{Direction, Negotiated};

/// Largest datagram read.
const MAX_DATAGRAM: usize = 2048;

/// The monotonic clock of the media task: tokio's, so a paused test runtime drives it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The wall clock, for RTCP's NTP timestamps only.
fn ntp_now() -> NtpTime {
    NtpTime::from_system_time(SystemTime::now())
}

/// A call's media sockets: RTP on an even port, RTCP on the one above.
#[derive(Debug)]
pub struct MediaSockets {
    /// The RTP port.
    pub port: u16,
    rtp: std::net::UdpSocket,
    rtcp: std::net::UdpSocket,
}

impl MediaSockets {
    /// Binds RTP on `ip:port` and RTCP on `ip:port+1`.
    pub fn bind(ip: std::net::IpAddr, port: u16) -> std::io::Result<Self> {
        let rtp = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
        let rtcp = std::net::UdpSocket::bind(SocketAddr::new(ip, port.wrapping_add(1)))?;
        Ok(Self { port, rtp, rtcp })
    }
}

/// Media settings of the daemon.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// No RTP for this long: the call is reported inactive (and hung up).
    pub inactivity_timeout: Duration,
    /// RTCP CNAME.
    pub cname: String,
}

/// What the signalling loop asks of a call's media task.
#[derive(Debug)]
enum Command {
    /// New terms from a re-INVITE or UPDATE (hold, resume, new address, codec).
    Update(Box<Negotiated>),
    /// The caller's ACK confirmed the dialog: start sending.
    Confirm,
    /// The call is over: send RTCP BYE and stop.
    Stop,
}

/// What a media task reports.
#[derive(Clone, Debug, PartialEq)]
pub enum MediaReport {
    /// No RTP arrived for the inactivity timeout.
    Inactive,
    /// The caller pressed a key (RFC 4733).
    Digit(DigitPress),
    /// The task stopped; its counters.
    Finished(Box<MediaSummary>),
}

/// A call's media counters at its end, for the call's log record.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaSummary {
    /// The receive path.
    pub received: ReceiveStats,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// RTCP: loss, jitter and round-trip time both ways.
    pub rtcp: RtcpStats,
}

/// The signalling loop's side of a media task.
#[derive(Debug)]
pub struct MediaHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl MediaHandle {
    /// New media terms (the task keeps the codec; hold, resume and address changes apply).
    pub fn update(&self, negotiated: &Negotiated) {
        let _ = self
            .commands
            .send(Command::Update(Box::new(negotiated.clone())));
    }

    /// The dialog is confirmed (the caller's ACK): our stream starts. Until then nothing is
    /// sent, so a forged INVITE (whose sender never sees our To tag and cannot ACK) cannot
    /// aim 50 packets a second at an address it names in its SDP.
    pub fn confirm(&self) {
        let _ = self.commands.send(Command::Confirm);
    }

    /// Ends the task (RTCP BYE first); a `Finished` report follows.
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
    }
}

/// Starts the media task of `call`; reports go to `reports`.
pub fn spawn(
    call: CallHandle,
    sockets: MediaSockets,
    negotiated: &Negotiated,
    config: &MediaConfig,
    reports: mpsc::Sender<(CallHandle, MediaReport)>,
) -> std::io::Result<MediaHandle> {
    sockets.rtp.set_nonblocking(true)?;
    sockets.rtcp.set_nonblocking(true)?;
    let rtp = UdpSocket::from_std(sockets.rtp)?;
    let rtcp_socket = UdpSocket::from_std(sockets.rtcp)?;
    let start = now();
    let first = random_u64();
    let rtp_start = RtpStart {
        ssrc: first as u32,
        sequence: (first >> 32) as u16,
        timestamp: random_u64() as u32,
    };
    let pacer = Pacer::new(PacerConfig::for_negotiated(negotiated), rtp_start, start)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let rtcp = RtcpSession::new(
        RtcpConfig::new(
            rtp_start.ssrc,
            config.cname.clone(),
            negotiated.clock_rate,
            random_u64(),
        ),
        start,
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let receiver = Receiver::new(start, receive_config(config), negotiated.into());
    let (commands, rx) = mpsc::unbounded_channel();
    let mut task = Task {
        call,
        rtp,
        rtcp_socket,
        negotiated: negotiated.clone(),
        receiver,
        pacer,
        dtmf: DtmfReceiver::new(negotiated.clock_rate),
        rtcp,
        reports,
        frames_in: 0,
        config: config.clone(),
        confirmed: false,
        send_errors: 0,
    };
    task.apply_direction();
    tokio::spawn(async move { task.run(rx).await });
    Ok(MediaHandle { commands })
}

struct Task {
    call: CallHandle,
    rtp: UdpSocket,
    rtcp_socket: UdpSocket,
    negotiated: Negotiated,
    receiver: Receiver,
    pacer: Pacer,
    dtmf: DtmfReceiver,
    rtcp: RtcpSession,
    reports: mpsc::Sender<(CallHandle, MediaReport)>,
    frames_in: u64,
    config: MediaConfig,
    /// Whether the caller's ACK has arrived (see [`MediaHandle::confirm`]).
    confirmed: bool,
    send_errors: u64,
}

fn receive_config(config: &MediaConfig) -> ReceiveConfig {
    ReceiveConfig {
        inactivity_timeout: config.inactivity_timeout,
        ..ReceiveConfig::default()
    }
}

impl Task {
    async fn run(&mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut rtp_buf = vec![0u8; MAX_DATAGRAM];
        let mut rtcp_buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let wake = [
                self.receiver.poll_timeout(),
                self.pacer.poll_timeout(),
                self.rtcp.poll_timeout(),
                self.dtmf.poll_timeout(),
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = self.rtp.recv_from(&mut rtp_buf) => {
                    if let Ok((len, from)) = received {
                        let bytes = rtp_buf.get(..len).unwrap_or_default();
                        if packet::is_rtcp(bytes) {
                            if self.is_peer(from) {
                                let _ = self.rtcp.handle_rtcp(now(), ntp_now(), bytes);
                            }
                        } else {
                            self.receiver.handle_datagram(now(), from, bytes);
                        }
                    }
                }
                received = self.rtcp_socket.recv_from(&mut rtcp_buf) => {
                    if let Ok((len, from)) = received
                        && self.is_peer(from)
                    {
                        let bytes = rtcp_buf.get(..len).unwrap_or_default();
                        let _ = self.rtcp.handle_rtcp(now(), ntp_now(), bytes);
                    }
                }
                () = sleep => {
                    let now = now();
                    self.receiver.handle_timeout(now);
                    self.pacer.handle_timeout(now);
                    self.dtmf.handle_timeout(now);
                    let reception = self.receiver.reception_stats();
                    self.rtcp.handle_timeout(now, ntp_now(), reception);
                }
                command = commands.recv() => match command {
                    Some(Command::Update(negotiated)) => self.update(*negotiated),
                    Some(Command::Confirm) => {
                        self.confirmed = true;
                        self.apply_direction();
                    }
                    Some(Command::Stop) | None => {
                        self.stop().await;
                        return;
                    }
                },
            }
            self.drain().await;
        }
    }

    /// Hold (our direction does not send, or the peer gave no address) stops the pacer's
    /// packets; the clock and timestamps run on. Nothing is sent before the ACK. While our
    /// direction does not receive, the caller's silence is no reason to hang up.
    fn apply_direction(&mut self) {
        let direction = if self.negotiated.is_hold() || !self.confirmed {
            Direction::Inactive
        } else {
            self.negotiated.direction
        };
        self.pacer.set_direction(direction);
        self.receiver
            .set_expect_media(self.negotiated.direction.receives(), now());
    }

    /// RTCP is taken only from the peer: the latched media source or the SDP address.
    fn is_peer(&self, from: SocketAddr) -> bool {
        let ip = from.ip().to_canonical();
        ip == self.negotiated.remote_rtp.ip().to_canonical()
            || self
                .receiver
                .source()
                .is_some_and(|s| s.ip().to_canonical() == ip)
    }

    fn update(&mut self, negotiated: Negotiated) {
        let old = &self.negotiated;
        let format_changed = negotiated.codec != old.codec
            || negotiated.payload_type != old.payload_type
            || negotiated.telephone_event_pt != old.telephone_event_pt
            || negotiated.ptime_ms != old.ptime_ms
            || negotiated.clock_rate != old.clock_rate;
        if format_changed {
            // New payload format: new cores on the same sockets (same SSRC and sequence, so
            // the peer sees one stream); counters of the old receiver end here.
            tracing::info!(call = %self.call, codec = negotiated.codec.encoding(), "media format changed");
            let now = now();
            let start = RtpStart {
                ssrc: self.pacer.ssrc(),
                sequence: self.pacer.next_sequence(),
                timestamp: random_u64() as u32,
            };
            match Pacer::new(PacerConfig::for_negotiated(&negotiated), start, now) {
                Ok(pacer) => self.pacer = pacer,
                Err(error) => tracing::warn!(call = %self.call, %error, "pacer kept"),
            }
            self.receiver = Receiver::new(now, receive_config(&self.config), (&negotiated).into());
            self.dtmf = DtmfReceiver::new(negotiated.clock_rate);
            let seed = random_u64();
            if let Ok(rtcp) = RtcpSession::new(
                RtcpConfig::new(
                    start.ssrc,
                    self.config.cname.clone(),
                    negotiated.clock_rate,
                    seed,
                ),
                now,
            ) {
                self.rtcp = rtcp;
            }
        } else if negotiated.remote_rtp != old.remote_rtp {
            // A new address in SDP: lock to it at once, so stragglers from the old one cannot
            // be latched (RFC 4961 symmetric RTP); no address (hold): learn again.
            let remote = negotiated.remote_rtp;
            let usable = !remote.ip().is_unspecified() && remote.port() != 0;
            self.receiver.reset_source(usable.then_some(remote));
        }
        self.negotiated = negotiated;
        self.apply_direction();
    }

    async fn drain(&mut self) {
        while let Some(frame) = self.receiver.poll_frame() {
            // The call issue hands these to the model; until then they are counted.
            self.frames_in += 1;
            let _ = frame;
        }
        while let Some(event) = self.receiver.poll_event() {
            match event {
                ReceiveEvent::TelephoneEvent { header, payload } => {
                    self.dtmf.handle_packet(now(), &header, &payload);
                }
                ReceiveEvent::Inactive { .. } => {
                    tracing::info!(call = %self.call, "no RTP for the inactivity timeout");
                    let _ = self.reports.send((self.call, MediaReport::Inactive)).await;
                }
                ReceiveEvent::SourceLearned { source } => {
                    tracing::debug!(call = %self.call, %source, "RTP source latched");
                }
                other => tracing::debug!(call = %self.call, event = ?other, "RTP"),
            }
        }
        while let Some(event) = self.dtmf.poll_event() {
            if let DtmfEvent::Ended { press, .. } = event {
                tracing::info!(call = %self.call, digit = %press.digit, duration_ms = press.duration.as_millis() as u64, "DTMF");
                let _ = self
                    .reports
                    .send((self.call, MediaReport::Digit(press)))
                    .await;
            }
        }
        while self.pacer.poll_event().is_some() {}
        let now = now();
        while let Some(datagram) = self.pacer.poll_transmit() {
            let datagram: Vec<u8> = datagram;
            if let Ok(sent) = packet::parse(&datagram) {
                self.rtcp
                    .handle_rtp_sent(now, sent.header.timestamp, sent.payload.len());
            }
            self.send_rtp(&datagram);
        }
        while let Some(report) = self.rtcp.poll_transmit() {
            self.send_rtcp(&report);
        }
        while self.rtcp.poll_event().is_some() {}
    }

    /// Our RTP goes where the caller's comes from once it is latched (symmetric RTP, RFC
    /// 4961: right behind NAT, where the SDP address is a private one), else to the SDP address.
    fn send_rtp(&mut self, datagram: &[u8]) {
        let to = self.receiver.source().unwrap_or(self.negotiated.remote_rtp);
        if to.ip().is_unspecified() || to.port() == 0 {
            return;
        }
        if let Err(error) = self.rtp.try_send_to(datagram, to) {
            self.send_errors += 1;
            if self.send_errors == 1 {
                tracing::warn!(call = %self.call, %to, %error, "cannot send RTP");
            }
        }
    }

    fn send_rtcp(&self, datagram: &[u8]) {
        let Some(to) = self.negotiated.remote_rtcp else {
            return;
        };
        if to.ip().is_unspecified() || to.port() == 0 {
            return;
        }
        // Under rtcp-mux RTCP shares the RTP socket (RFC 5761).
        let socket = if self.negotiated.rtcp_mux {
            &self.rtp
        } else {
            &self.rtcp_socket
        };
        let _ = socket.try_send_to(datagram, to);
    }

    async fn stop(&mut self) {
        let reception = self.receiver.reception_stats();
        self.rtcp
            .close(now(), ntp_now(), reception, Some("call ended"));
        while let Some(report) = self.rtcp.poll_transmit() {
            self.send_rtcp(&report);
        }
        let summary = MediaSummary {
            received: self.receiver.stats(),
            packets_sent: self.pacer.stats().packets,
            rtcp: self.rtcp.stats().clone(),
        };
        tracing::debug!(call = %self.call, frames_in = self.frames_in, packets_out = summary.packets_sent, send_errors = self.send_errors, "media stopped");
        let _ = self
            .reports
            .send((self.call, MediaReport::Finished(Box::new(summary))))
            .await;
    }
}
