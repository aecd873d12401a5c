//! The RTP side of one call, sans-IO: the negotiated terms, the receive path, the RFC 4733
//! decoder and the RTCP session, and the rules that join them to the sockets the shell holds.
//!
//! - **Where our RTP goes**: to the latched source of the caller's RTP once there is one
//!   (symmetric RTP, RFC 4961: right behind NAT, where the SDP names a private address), else
//!   to the SDP address; an unspecified address or port 0 (old-style hold) gets nothing.
//! - **RTCP** goes to the SDP's RTCP address, on the RTP socket under rtcp-mux (RFC 5761),
//!   and is taken only from the peer (the latched source or the SDP address): RTCP on the RTP
//!   socket is recognised by its payload type range (RFC 5761 4).
//! - **A re-INVITE** that moves the peer locks the source to the new address at once, so
//!   stragglers from the old one cannot be latched; one that drops the address (hold)
//!   learns again. One that changes the codec, payload type, ptime or clock cannot be
//!   followed (the pacer and the bridge are built for one format): the call ends.
//! - **Direction**: nothing is sent before the caller's ACK confirms the dialog (a forged
//!   INVITE's sender never sees our tag and cannot ACK, so it cannot aim 50 packets a second
//!   at an address it names), nor while the peer holds us; the caller's silence is no reason
//!   to hang up while our side does not receive.

use std::net::SocketAddr;
use std::time::Instant;

use crate::rtp::dtmf::{DtmfEvent, DtmfReceiver};
use crate::rtp::packet;
use crate::rtp::playout::{Pacer, PacerConfig, PlayoutError, RtpStart};
use crate::rtp::receive::{ReceiveConfig, ReceiveEvent, ReceivedFrame, Receiver};
use crate::rtp::rtcp::{NtpTime, RtcpConfig, RtcpError, RtcpSession};
use crate::sip::sdp::{Direction, Negotiated};

use super::record::MediaSummary;

/// Which of the call's two sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Socket {
    /// The even port: RTP (and RTCP under rtcp-mux).
    Rtp,
    /// The port above it: RTCP.
    Rtcp,
}

/// The random starting point of our stream, drawn by the shell (RFC 3550 5.1), and the seed
/// of RTCP's interval randomisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaSeeds {
    /// Our SSRC, first sequence number and first timestamp.
    pub rtp: RtpStart,
    /// Seeds RTCP's report intervals.
    pub rtcp: u64,
}

/// Why media terms could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no pacer for these terms: {0}")]
    Pacer(#[from] PlayoutError),
    #[error("no RTCP for these terms: {0}")]
    Rtcp(#[from] RtcpError),
    #[error("the media format changed mid-call ({0}): the call cannot follow")]
    FormatChanged(&'static str),
}

/// The RTP side of a call once its terms are known. See the module documentation.
pub struct MediaLeg {
    negotiated: Negotiated,
    receiver: Receiver,
    dtmf: DtmfReceiver,
    rtcp: RtcpSession,
    closed: bool,
}

impl MediaLeg {
    /// The leg for the first media terms, and the pacer our stream is sent by.
    pub fn start(
        now: Instant,
        negotiated: Negotiated,
        seeds: MediaSeeds,
        cname: &str,
        receive: ReceiveConfig,
    ) -> Result<(MediaLeg, Pacer), MediaError> {
        let pacer = Pacer::new(PacerConfig::for_negotiated(&negotiated), seeds.rtp, now)?;
        let rtcp = RtcpSession::new(
            RtcpConfig::new(seeds.rtp.ssrc, cname, negotiated.clock_rate, seeds.rtcp),
            now,
        )?;
        let leg = MediaLeg {
            receiver: Receiver::new(now, receive, (&negotiated).into()),
            dtmf: DtmfReceiver::new(negotiated.clock_rate),
            rtcp,
            negotiated,
            closed: false,
        };
        Ok((leg, pacer))
    }

    /// The terms in force.
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// New terms from a re-INVITE or UPDATE (see the module documentation).
    pub fn update(&mut self, negotiated: Negotiated) -> Result<(), MediaError> {
        let old = &self.negotiated;
        let changed = if negotiated.codec != old.codec {
            Some("codec")
        } else if negotiated.payload_type != old.payload_type {
            Some("payload type")
        } else if negotiated.telephone_event_pt != old.telephone_event_pt {
            Some("telephone-event payload type")
        } else if negotiated.ptime_ms != old.ptime_ms {
            Some("ptime")
        } else if negotiated.clock_rate != old.clock_rate {
            Some("clock rate")
        } else {
            None
        };
        if let Some(what) = changed {
            return Err(MediaError::FormatChanged(what));
        }
        if negotiated.remote_rtp != old.remote_rtp {
            let remote = negotiated.remote_rtp;
            let usable = !remote.ip().is_unspecified() && remote.port() != 0;
            self.receiver.reset_source(usable.then_some(remote));
        }
        self.negotiated = negotiated;
        Ok(())
    }

    /// The direction the pacer sends in, and whether caller audio is expected, given whether
    /// the dialog is `confirmed`; tells the receiver whether silence may end the call.
    pub fn apply_direction(&mut self, now: Instant, confirmed: bool) -> (Direction, bool) {
        let held = self.negotiated.is_hold();
        let send = if held || !confirmed {
            Direction::Inactive
        } else {
            self.negotiated.direction
        };
        let receives = self.negotiated.direction.receives();
        self.receiver.set_expect_media(receives, now);
        (send, confirmed && receives && !held)
    }

    /// A datagram on `socket` from `from`, at `now` (wall clock `ntp`).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        ntp: NtpTime,
        socket: Socket,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        if self.closed {
            return;
        }
        let rtcp = socket == Socket::Rtcp || packet::is_rtcp(bytes);
        if rtcp {
            if self.is_peer(from) {
                let _ = self.rtcp.handle_rtcp(now, ntp, bytes);
            }
        } else {
            self.receiver.handle_datagram(now, from, bytes);
        }
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

    /// Where our RTP goes now, if anywhere.
    pub fn rtp_target(&self) -> Option<SocketAddr> {
        let to = self.receiver.source().unwrap_or(self.negotiated.remote_rtp);
        usable(to).then_some(to)
    }

    /// Where our RTCP goes, and from which socket.
    pub fn rtcp_target(&self) -> Option<(Socket, SocketAddr)> {
        let to = self.negotiated.remote_rtcp.filter(|to| usable(*to))?;
        let socket = if self.negotiated.rtcp_mux {
            Socket::Rtp
        } else {
            Socket::Rtcp
        };
        Some((socket, to))
    }

    /// One RTP packet of ours left at `now` (for RTCP's sender report).
    pub fn rtp_sent(&mut self, now: Instant, datagram: &[u8]) {
        if let Ok(sent) = packet::parse(datagram) {
            self.rtcp
                .handle_rtp_sent(now, sent.header.timestamp, sent.payload.len());
        }
    }

    /// Runs the receiver's, the DTMF decoder's and RTCP's timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, ntp: NtpTime) {
        if self.closed {
            return;
        }
        self.receiver.handle_timeout(now);
        self.dtmf.handle_timeout(now);
        let reception = self.receiver.reception_stats();
        self.rtcp.handle_timeout(now, ntp, reception);
    }

    /// The receiver's and the DTMF decoder's next deadlines, and RTCP's.
    pub fn timeouts(&self) -> (Option<Instant>, Option<Instant>, Option<Instant>) {
        if self.closed {
            return (None, None, None);
        }
        (
            self.receiver.poll_timeout(),
            self.dtmf.poll_timeout(),
            self.rtcp.poll_timeout(),
        )
    }

    /// The next caller frame, in order.
    pub fn poll_frame(&mut self) -> Option<ReceivedFrame> {
        self.receiver.poll_frame()
    }

    /// What the receive path and the DTMF decoder have to tell: digits pressed (RFC 4733) and
    /// whether the caller's RTP stopped for the inactivity timeout.
    pub fn poll_happenings(&mut self, now: Instant, digits: &mut Vec<char>) -> bool {
        let mut inactive = false;
        while let Some(event) = self.receiver.poll_event() {
            match event {
                ReceiveEvent::TelephoneEvent { header, payload } => {
                    self.dtmf.handle_packet(now, &header, &payload);
                }
                ReceiveEvent::Inactive { .. } => inactive = true,
                ReceiveEvent::SourceLearned { source } => {
                    tracing::debug!(%source, "RTP source latched");
                }
                other => tracing::debug!(event = ?other, "RTP"),
            }
        }
        while let Some(event) = self.dtmf.poll_event() {
            if let DtmfEvent::Ended { press, .. } = event {
                tracing::info!(digit = %press.digit, duration_ms = press.duration.as_millis() as u64, "DTMF");
                digits.push(press.digit.as_char());
            }
        }
        inactive
    }

    /// The next RTCP datagram to send.
    pub fn poll_rtcp(&mut self) -> Option<Vec<u8>> {
        let datagram = self.rtcp.poll_transmit();
        while self.rtcp.poll_event().is_some() {}
        datagram
    }

    /// The call ended at `now`: RTCP says BYE (when we ever sent), nothing more is taken.
    pub fn close(&mut self, now: Instant, ntp: NtpTime) {
        if self.closed {
            return;
        }
        let reception = self.receiver.reception_stats();
        self.rtcp.close(now, ntp, reception, Some("call ended"));
        self.closed = true;
    }

    /// The counters, with `packets_sent` from the pacer.
    pub fn summary(&self, packets_sent: u64) -> MediaSummary {
        let reception = self.receiver.reception_stats();
        let packets_lost = reception.as_ref().map_or(0, |r| {
            let expected = i64::from(r.extended_highest_seq) - i64::from(r.base_seq) + 1;
            expected - i64::try_from(r.received_packets).unwrap_or(i64::MAX)
        });
        MediaSummary {
            received: self.receiver.stats(),
            packets_sent,
            rtcp: self.rtcp.stats().clone(),
            packets_lost,
        }
    }
}

fn usable(to: SocketAddr) -> bool {
    !to.ip().is_unspecified() && to.port() != 0
}
