//! The RTP receive path, sans-IO: datagrams from the caller in, a continuous run of 20 ms
//! frames (plus telephone-event packets and a few events) out.
//!
//! # Why it is shaped like this
//!
//! The model on the other side of the bridge wants a *continuous* audio timeline: its VAD and
//! the `audio_end_ms` of a truncate are measured in audio time, so every 20 ms the caller spoke
//! (or was silent, or was lost) must become exactly one 20 ms frame upstream. The network gives
//! us none of that: packets are lost, duplicated, reordered, sent in 10-60 ms packets, sent by a
//! peer that restarts, changes SSRC, pauses (silence suppression) or floods. This core turns the
//! one into the other:
//!
//! 1. **Admission.** [`packet::parse`] validates the header; only the negotiated codec payload
//!    type and the negotiated `telephone-event` type are taken. The media source is *latched*
//!    (symmetric RTP, the usual answer to NAT: the address in the SDP is often not where packets
//!    come from): the first address that sends a valid stream is locked, and packets from any
//!    other address are dropped until signalling says the media moved
//!    ([`Receiver::reset_source`]). Latching on a *validated* stream (two sequential packets)
//!    rather than on any packet keeps one stray datagram from capturing the call.
//! 2. **Sequence.** RFC 3550 A.1's `update_seq` is followed to the letter (probation of
//!    `MIN_SEQUENTIAL = 2`, `MAX_DROPOUT = 3000`, `MAX_MISORDER = 100`, cycles, the `bad_seq`
//!    restart after a big jump), because RTCP receiver reports must be computed exactly that way
//!    and because it is a well-tried answer to peers that restart. The one liberty: packets seen
//!    during probation are held, not thrown away, and delivered when the stream validates, so the
//!    first 20-60 ms of a call or of a new SSRC are not lost (A.1's counters still start at the
//!    validating packet). A 128-packet window beside A.1 tells duplicates (dropped) from
//!    reordered packets and remembers since when each missing number is missed.
//! 3. **Timeline.** Payload is placed by RTP *timestamp* into 20 ms slots, so 10/30/60 ms
//!    packetisation is re-framed for free and a timestamp jump (the sender skipped time: silence
//!    suppression, DTX, a telephone event) is just units nobody wrote. A slot is released as soon
//!    as it is complete. An incomplete slot is released, concealed, when data beyond it exists
//!    and either no sequence number is missing (the gap is a timestamp jump: nothing else will
//!    come) or the oldest missing packet has been missed for [`ReceiveConfig::max_reorder_wait`]
//!    (40 ms). Frames therefore leave at the rate they become complete: there is no playout
//!    clock on this side, so sender clock drift cannot build up lag or buffer (the caller appends
//!    each frame to the model at once).
//! 4. **Discontinuities.** A new SSRC (after its own A.1 probation), an A.1 restart, or an
//!    in-order packet whose timestamp goes backwards or leaps further than
//!    [`ReceiveConfig::max_gap_fill`] flush the old stream (what is held is released, gaps
//!    concealed) and start the new one at the next frame boundary: streams are never mixed and a
//!    huge jump never turns into millions of frames. Smaller forward gaps are filled with
//!    concealment frames, kept as a run count so they cost no memory, and paid from a credit
//!    that grows with wall-clock time (capped at `max_gap_fill`): a sender cannot make filled
//!    time outrun real time by more than the cap, however many gaps its packets claim. A
//!    reordered packet whose timestamp lands beyond the buffer is dropped rather than allowed
//!    to push frames out.
//! 5. **Telephone events** (RFC 4733) share the stream's sequence space, so they go through the
//!    source, SSRC, A.1 and duplicate checks, then leave at once as
//!    [`ReceiveEvent::TelephoneEvent`]: their timestamps are the event start, not media time, so
//!    they neither fill slots nor feed the jitter estimate. The decoder lives elsewhere.
//!
//! Memory is bounded whatever arrives: the slot buffer by [`ReceiveConfig::max_buffered_frames`]
//! (a packet beyond it forces the oldest slots out, concealed), the sequence window by its 128
//! bits and at most one hole epoch per missing number, probation by `MIN_SEQUENTIAL` packets,
//! and the output and event queues by fixed caps (the caller drains them after every call; if
//! it does not, the oldest entries are dropped and counted).
//!
//! # Use
//!
//! After every `handle_*` call, drain [`Receiver::poll_frame`] and [`Receiver::poll_event`],
//! and arm a timer for [`Receiver::poll_timeout`], calling [`Receiver::handle_timeout`] when it
//! fires. Concealed frames carry G.711 silence (PCMU `0xFF`, PCMA `0xD5`) or, for Opus, an
//! empty payload to run the decoder's loss concealment on.
//!
//! Opus is taken as one packet per 20 ms frame (what we negotiate); other packetisations of
//! Opus are not re-framed, because an Opus packet cannot be cut without decoding it.

mod seq;
mod timeline;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use self::seq::{Arrival, MIN_SEQUENTIAL, SeqState, SeqVerdict, SeqWindow};
use self::timeline::{Framing, Output, Placed, Timeline};
use super::packet::{self, PacketError, RtpHeader};
use crate::audio::FRAME_MS;
use crate::sip::sdp::offer_answer::{Codec, Negotiated};

/// The longest packet accepted, in milliseconds (RFC 3551 allows G.711 up to 150 ms in theory;
/// nobody sends more than 60 in practice, and the reorder buffer must hold a few of them).
pub const MAX_PACKET_MS: u32 = 120;

/// Output frames kept for the caller before the oldest are dropped (the caller drains after
/// every call, so this is only reached when it does not): 10 s of audio.
const MAX_READY: usize = 500;
/// Events kept for the caller before the oldest are dropped.
const MAX_EVENTS: usize = 256;
/// SSRCs remembered as replaced, whose late packets are dropped instead of taking the stream
/// back.
const MAX_RETIRED: usize = 4;

/// Tunables of the receive path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveConfig {
    /// How long a missing packet is waited for once a later one has arrived, before its frame
    /// is concealed. Default 40 ms.
    pub max_reorder_wait: Duration,
    /// Most 20 ms slots held in the reorder buffer; a packet further ahead forces the oldest
    /// out (concealed). Default 16 (320 ms), at least 8.
    pub max_buffered_frames: usize,
    /// Largest forward timestamp jump filled with concealment frames; beyond it the stream is
    /// rebased without filling. Also the most that filled time may run ahead of the wall
    /// clock: filling is paid from a credit that grows with elapsed time up to this cap.
    /// Default 10 s.
    pub max_gap_fill: Duration,
    /// No packet accepted for this long raises [`ReceiveEvent::Inactive`]. Default 30 s.
    pub inactivity_timeout: Duration,
}

impl Default for ReceiveConfig {
    fn default() -> Self {
        Self {
            max_reorder_wait: Duration::from_millis(40),
            max_buffered_frames: 16,
            max_gap_fill: Duration::from_secs(10),
            inactivity_timeout: Duration::from_secs(30),
        }
    }
}

/// What the receive path needs of the negotiated media terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveParams {
    /// The codec; its RTP clock rate is taken from it.
    pub codec: Codec,
    /// The codec's payload type.
    pub payload_type: u8,
    /// The `telephone-event` payload type, if negotiated.
    pub telephone_event_pt: Option<u8>,
}

impl From<&Negotiated> for ReceiveParams {
    fn from(negotiated: &Negotiated) -> Self {
        Self {
            codec: negotiated.codec,
            payload_type: negotiated.payload_type,
            telephone_event_pt: negotiated.telephone_event_pt,
        }
    }
}

/// Whether a frame carries what the sender sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Every sample arrived.
    Received,
    /// Some or all of the frame was lost or skipped by the sender and filled: G.711 silence
    /// where nothing arrived (received samples are kept), or an empty Opus payload.
    Concealed,
}

/// One 20 ms frame of the caller's audio, in the codec's encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedFrame {
    /// Position in the output: 0, 1, 2... with no gaps, across SSRC changes and restarts.
    pub index: u64,
    /// Received or concealed.
    pub kind: FrameKind,
    /// G.711: exactly 160 octets. Opus: the packet, or empty when concealed.
    pub payload: Vec<u8>,
}

/// Why a stream was restarted without an SSRC change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResyncReason {
    /// RFC 3550 A.1: two sequential packets after a jump of the sequence number.
    Sequence,
    /// An in-order packet's timestamp went backwards or leapt beyond
    /// [`ReceiveConfig::max_gap_fill`].
    Timestamp,
}

/// Something the call may want to know, besides frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiveEvent {
    /// The media source was latched: packets from other addresses are dropped from now on.
    SourceLearned {
        /// The latched address.
        source: SocketAddr,
    },
    /// A new SSRC validated and replaced the previous one (the first stream raises none).
    SsrcChanged {
        /// The replaced SSRC.
        from: u32,
        /// The new SSRC.
        to: u32,
    },
    /// The stream was restarted on a discontinuity (frames continue without a gap).
    Resynced {
        /// The stream's SSRC.
        ssrc: u32,
        /// What was discontinuous.
        reason: ResyncReason,
    },
    /// A packet of the negotiated `telephone-event` type (RFC 4733), for the DTMF decoder.
    TelephoneEvent {
        /// Its header.
        header: RtpHeader,
        /// Its payload.
        payload: Vec<u8>,
    },
    /// No packet was accepted for [`ReceiveConfig::inactivity_timeout`]. Raised once; raised
    /// again only after media came back and stopped again.
    Inactive {
        /// When the last packet was accepted (or the receiver was created).
        last_packet: Instant,
    },
}

/// Counters of the receive path. Every datagram handed in ends up in exactly one of
/// `packets_accepted`, `bad_header`, `rtcp`, `wrong_payload_type`, `bad_payload`,
/// `foreign_source`, `retired_ssrc`, `bad_sequence`, `duplicates`, `probation_discarded`,
/// or is still held in probation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// Datagrams handed in.
    pub packets_received: u64,
    /// Packets taken into the stream (audio and telephone events), including late ones.
    pub packets_accepted: u64,
    /// Not an RTP packet ([`packet::parse`] refused it).
    pub bad_header: u64,
    /// RTCP on the RTP port (RFC 5761 mux): the shell should have routed it elsewhere.
    pub rtcp: u64,
    /// A payload type outside the negotiated set.
    pub wrong_payload_type: u64,
    /// An audio packet with an empty or over-long ([`MAX_PACKET_MS`]) payload.
    pub bad_payload: u64,
    /// From an address other than the latched source.
    pub foreign_source: u64,
    /// From an SSRC that was replaced by a newer one.
    pub retired_ssrc: u64,
    /// Refused by RFC 3550 A.1 (a large sequence jump not yet confirmed by a second packet).
    pub bad_sequence: u64,
    /// Seen before.
    pub duplicates: u64,
    /// Held during a probation that a non-sequential packet then restarted.
    pub probation_discarded: u64,
    /// Accepted after a packet with a higher sequence number.
    pub reordered: u64,
    /// Accepted audio packets that came (at least partly) after their frame was released.
    pub late: u64,
    /// Accepted reordered audio packets whose timestamp lies beyond the reorder buffer (a
    /// sequence number and a timestamp that disagree): their audio is dropped.
    pub out_of_window: u64,
    /// Timestamp gaps filled only partly because filled time would have run more than
    /// [`ReceiveConfig::max_gap_fill`] ahead of the wall clock.
    pub gaps_trimmed: u64,
    /// Telephone-event packets surfaced.
    pub telephone_events: u64,
    /// Frames released with all their samples.
    pub frames_received: u64,
    /// Frames released with some or all samples concealed (loss, gaps, flushes).
    pub frames_concealed: u64,
    /// Frames dropped because the caller did not drain the output.
    pub frames_overflowed: u64,
    /// Events dropped because the caller did not drain them.
    pub events_overflowed: u64,
    /// SSRC changes (after the first stream).
    pub ssrc_changes: u64,
    /// RFC 3550 A.1 restarts.
    pub resyncs: u64,
    /// Rebases on a timestamp discontinuity.
    pub timestamp_resyncs: u64,
    /// RFC 3550 A.8 interarrival jitter of the current stream, in RTP timestamp units.
    pub jitter: u32,
}

/// The numbers of an RTCP report block (RFC 3550 6.4.1) about the current stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportBlockStats {
    /// The stream reported on.
    pub ssrc: u32,
    /// Fraction lost since the previous call, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (expected - received, may be negative), clamped to 24 bits.
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub extended_highest_seq: u32,
    /// Interarrival jitter, in RTP timestamp units.
    pub jitter: u32,
}

/// RFC 3550 A.8 interarrival jitter, in the appendix's integer form (scaled by 16).
#[derive(Clone, Copy, Debug, Default)]
struct Jitter {
    last_transit: Option<u32>,
    scaled: u32,
}

impl Jitter {
    fn update(&mut self, arrival: u32, timestamp: u32) {
        let transit = arrival.wrapping_sub(timestamp);
        if let Some(last) = self.last_transit {
            let d = i64::from(transit.wrapping_sub(last) as i32).abs();
            let j = i64::from(self.scaled);
            self.scaled = u32::try_from((j + d - ((j + 8) >> 4)).max(0)).unwrap_or(u32::MAX);
        }
        self.last_transit = Some(transit);
    }

    fn value(&self) -> u32 {
        self.scaled >> 4
    }
}

/// The stream being received.
#[derive(Clone, Debug)]
struct Stream {
    ssrc: u32,
    seq: SeqState,
    window: SeqWindow,
    jitter: Jitter,
}

/// A packet kept during probation.
#[derive(Clone, Debug)]
struct Held {
    now: Instant,
    header: RtpHeader,
    payload: Vec<u8>,
}

/// A new stream on probation.
#[derive(Clone, Debug)]
struct Candidate {
    source: SocketAddr,
    ssrc: u32,
    seq: SeqState,
    held: Vec<Held>,
}

/// What a payload type is to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Audio,
    TelephoneEvent,
}

/// The receive core. See the module docs.
#[derive(Debug)]
pub struct Receiver {
    config: ReceiveConfig,
    params: ReceiveParams,
    clock_rate: u32,
    max_packet_units: i64,
    /// The latched media source.
    source: Option<SocketAddr>,
    stream: Option<Stream>,
    candidate: Option<Candidate>,
    retired: VecDeque<u32>,
    timeline: Timeline,
    output: Output,
    events: VecDeque<ReceiveEvent>,
    stats: ReceiveStats,
    /// Origin of arrival times in RTP units, for the jitter.
    epoch: Instant,
    last_packet: Instant,
    inactive_reported: bool,
    /// Whether media is expected at all: not while the call is on hold in our receive
    /// direction (`a=inactive`, or we are `sendonly`), when silence is normal.
    expect_media: bool,
    release_deadline: Option<Instant>,
}

impl Receiver {
    /// A receiver for a call whose media was negotiated as `params`, created at `now` (the
    /// inactivity timeout counts from here until the first packet). Out-of-range settings are
    /// clamped: `max_buffered_frames` to at least 8.
    pub fn new(now: Instant, config: ReceiveConfig, params: ReceiveParams) -> Self {
        let config = ReceiveConfig {
            max_buffered_frames: config.max_buffered_frames.max(8),
            ..config
        };
        let clock_rate = params.codec.clock_rate();
        let frame_ticks = i64::from(clock_rate / 1000 * FRAME_MS);
        let (framing, frame_units, unit_ticks) = match params.codec {
            Codec::Pcmu => (Framing::Sampled { silence: 0xFF }, frame_ticks, 1),
            Codec::Pcma => (Framing::Sampled { silence: 0xD5 }, frame_ticks, 1),
            Codec::Opus => (Framing::Packet, 1, frame_ticks),
        };
        let timeline = Timeline::new(
            now,
            framing,
            frame_units,
            unit_ticks,
            i64::from(clock_rate) / unit_ticks,
            config.max_buffered_frames,
            config.max_gap_fill,
        );
        Self {
            config,
            params,
            clock_rate,
            max_packet_units: i64::from(clock_rate / 1000 * MAX_PACKET_MS) / unit_ticks.max(1),
            source: None,
            stream: None,
            candidate: None,
            retired: VecDeque::new(),
            timeline,
            output: Output::new(framing, MAX_READY),
            events: VecDeque::new(),
            stats: ReceiveStats::default(),
            epoch: now,
            last_packet: now,
            inactive_reported: false,
            expect_media: true,
            release_deadline: None,
        }
    }

    // ---- input ------------------------------------------------------------------------------

    /// One UDP datagram from `source` arrived at `now`. Timers due at `now` run first, as if
    /// [`Receiver::handle_timeout`] had been called.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        self.expire(now);
        self.release(now);
        self.stats.packets_received += 1;
        self.admit(now, source, bytes);
        self.release(now);
    }

    /// Time passed: releases frames whose missing packets are no longer waited for and raises
    /// [`ReceiveEvent::Inactive`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        self.release(now);
    }

    /// Signalling changed where media comes from (a re-INVITE or UPDATE with a new address):
    /// unlatches the source. With `Some(address)` the source is locked to it at once; with
    /// `None` it is learned again from the next valid stream, from any address. The stream
    /// itself continues: if the new source sends another SSRC, that is an SSRC change.
    pub fn reset_source(&mut self, new_expected: Option<SocketAddr>) {
        self.source = new_expected;
        if let Some(candidate) = self.candidate.take() {
            self.stats.probation_discarded += candidate.held.len() as u64;
        }
        // A stream from the new place may legitimately reuse an SSRC we retired.
        self.retired.clear();
    }

    // ---- output -----------------------------------------------------------------------------

    /// The next 20 ms frame, in order.
    pub fn poll_frame(&mut self) -> Option<ReceivedFrame> {
        self.output.pop(self.timeline.frame_octets())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ReceiveEvent> {
        self.events.pop_front()
    }

    /// When [`Receiver::handle_timeout`] must be called next: the end of the wait for a missing
    /// packet, or the inactivity deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let inactivity = (!self.inactive_reported && self.expect_media)
            .then(|| self.last_packet + self.config.inactivity_timeout);
        match (self.release_deadline, inactivity) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The counters.
    pub fn stats(&self) -> ReceiveStats {
        ReceiveStats {
            frames_received: self.output.frames_received,
            frames_concealed: self.output.frames_concealed,
            frames_overflowed: self.output.frames_overflowed,
            jitter: self.stream.as_ref().map_or(0, |s| s.jitter.value()),
            ..self.stats
        }
    }

    /// The numbers of an RTCP report block about the current stream (RFC 3550 A.3), starting a
    /// new interval for `fraction_lost`. `None` before a stream has validated.
    pub fn take_report_block_stats(&mut self) -> Option<ReportBlockStats> {
        let stream = self.stream.as_mut()?;
        let report = stream.seq.take_report();
        Some(ReportBlockStats {
            ssrc: stream.ssrc,
            fraction_lost: report.fraction_lost,
            cumulative_lost: report.cumulative_lost,
            extended_highest_seq: report.extended_highest_seq,
            jitter: stream.jitter.value(),
        })
    }

    /// The raw A.1 counts of the current stream for [`crate::rtp::rtcp::RtcpSession`], which
    /// does the per-interval A.3 arithmetic itself. Payload octets are not counted here.
    pub fn reception_stats(&self) -> Option<crate::rtp::rtcp::ReceptionStats> {
        let stream = self.stream.as_ref()?;
        let (base_seq, received) = stream.seq.raw_counts();
        Some(crate::rtp::rtcp::ReceptionStats {
            ssrc: stream.ssrc,
            base_seq,
            extended_highest_seq: stream.seq.extended_max(),
            received_packets: u64::from(received),
            received_octets: 0,
            jitter: stream.jitter.value(),
        })
    }

    /// Whether the caller is expected to send media. Off (hold in our receive direction) the
    /// inactivity timeout does not run; back on, it counts again from `now`, so a long hold
    /// does not end the call the moment it is resumed.
    pub fn set_expect_media(&mut self, expect: bool, now: Instant) {
        if expect && !self.expect_media {
            self.last_packet = now;
            self.inactive_reported = false;
        }
        self.expect_media = expect;
    }

    /// The latched media source, if any.
    pub fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// The SSRC of the current stream, if one has validated.
    pub fn ssrc(&self) -> Option<u32> {
        self.stream.as_ref().map(|s| s.ssrc)
    }

    /// Slots held in the reorder buffer (never more than
    /// [`ReceiveConfig::max_buffered_frames`]).
    pub fn buffered_frames(&self) -> usize {
        self.timeline.buffered()
    }

    /// Frames released but not yet polled.
    pub fn queued_frames(&self) -> u64 {
        self.output.frames_queued()
    }

    // ---- internals --------------------------------------------------------------------------

    fn push_event(&mut self, event: ReceiveEvent) {
        self.events.push_back(event);
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
            self.stats.events_overflowed += 1;
        }
    }

    fn expire(&mut self, now: Instant) {
        if self.expect_media
            && !self.inactive_reported
            && now >= self.last_packet + self.config.inactivity_timeout
        {
            self.inactive_reported = true;
            self.push_event(ReceiveEvent::Inactive {
                last_packet: self.last_packet,
            });
        }
    }

    /// Admission up to the stream: header, payload type, source, SSRC, A.1.
    fn admit(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        let packet = match packet::parse(bytes) {
            Ok(packet) => packet,
            Err(PacketError::Rtcp) => {
                self.stats.rtcp += 1;
                return;
            }
            Err(_) => {
                self.stats.bad_header += 1;
                return;
            }
        };
        let header = packet.header;
        let kind = if header.payload_type == self.params.payload_type {
            Kind::Audio
        } else if Some(header.payload_type) == self.params.telephone_event_pt {
            Kind::TelephoneEvent
        } else {
            self.stats.wrong_payload_type += 1;
            return;
        };
        if kind == Kind::Audio {
            let units = self.timeline.units_of(packet.payload);
            if packet.payload.is_empty() || units > self.max_packet_units {
                self.stats.bad_payload += 1;
                return;
            }
        }
        if self.source.is_some_and(|locked| locked != source) {
            self.stats.foreign_source += 1;
            return;
        }
        if self.retired.contains(&header.ssrc) {
            self.stats.retired_ssrc += 1;
            return;
        }
        let current = self.stream.as_mut().filter(|s| s.ssrc == header.ssrc);
        let Some(stream) = current else {
            self.on_probation(now, source, header, packet.payload);
            return;
        };
        match stream.seq.update(header.sequence) {
            SeqVerdict::Valid => {}
            SeqVerdict::Resync => {
                stream.window = SeqWindow::new(header.sequence);
                stream.jitter.last_transit = None;
                let ssrc = stream.ssrc;
                self.timeline.flush(&mut self.output);
                self.stats.resyncs += 1;
                self.push_event(ReceiveEvent::Resynced {
                    ssrc,
                    reason: ResyncReason::Sequence,
                });
            }
            SeqVerdict::Bad | SeqVerdict::Probation { .. } => {
                self.stats.bad_sequence += 1;
                return;
            }
        }
        self.deliver(now, source, header, packet.payload);
    }

    /// A packet of an SSRC that is not (yet) the stream's.
    fn on_probation(
        &mut self,
        now: Instant,
        source: SocketAddr,
        header: RtpHeader,
        payload: &[u8],
    ) {
        let same = self
            .candidate
            .as_ref()
            .is_some_and(|c| c.source == source && c.ssrc == header.ssrc);
        if !same {
            if let Some(old) = self.candidate.take() {
                self.stats.probation_discarded += old.held.len() as u64;
            }
            self.candidate = Some(Candidate {
                source,
                ssrc: header.ssrc,
                seq: SeqState::new(header.sequence),
                held: Vec::new(),
            });
        }
        let Some(candidate) = self.candidate.as_mut() else {
            return;
        };
        let held = Held {
            now,
            header,
            payload: payload.to_vec(),
        };
        match candidate.seq.update(header.sequence) {
            SeqVerdict::Probation { restarted } => {
                if restarted {
                    self.stats.probation_discarded += candidate.held.len() as u64;
                    candidate.held.clear();
                }
                // Probation holds fewer than MIN_SEQUENTIAL packets by construction; the bound
                // is kept explicitly all the same.
                if candidate.held.len() >= MIN_SEQUENTIAL as usize {
                    candidate.held.remove(0);
                    self.stats.probation_discarded += 1;
                }
                candidate.held.push(held);
            }
            SeqVerdict::Valid => {
                let Some(candidate) = self.candidate.take() else {
                    return;
                };
                self.start_stream(candidate, held, source);
            }
            // A.1 gives neither during probation.
            SeqVerdict::Resync | SeqVerdict::Bad => self.stats.bad_sequence += 1,
        }
    }

    /// A candidate validated: the old stream (if any) is flushed, the new one begins at the next
    /// frame boundary with the packets held during its probation.
    fn start_stream(&mut self, candidate: Candidate, last: Held, source: SocketAddr) {
        let first_seq = candidate
            .held
            .first()
            .map_or(last.header.sequence, |h| h.header.sequence);
        self.timeline.flush(&mut self.output);
        if let Some(old) = self.stream.take() {
            self.stats.ssrc_changes += 1;
            self.retired.push_back(old.ssrc);
            if self.retired.len() > MAX_RETIRED {
                self.retired.pop_front();
            }
            self.push_event(ReceiveEvent::SsrcChanged {
                from: old.ssrc,
                to: candidate.ssrc,
            });
        }
        self.stream = Some(Stream {
            ssrc: candidate.ssrc,
            seq: candidate.seq,
            window: SeqWindow::new(first_seq),
            jitter: Jitter::default(),
        });
        for held in candidate.held.into_iter().chain(std::iter::once(last)) {
            self.deliver(held.now, source, held.header, &held.payload);
        }
    }

    /// A packet valid for the current stream.
    fn deliver(&mut self, now: Instant, source: SocketAddr, header: RtpHeader, payload: &[u8]) {
        if self.source.is_none() {
            self.source = Some(source);
            self.push_event(ReceiveEvent::SourceLearned { source });
        }
        let arrival = self.arrival_ticks(now);
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        let ext = stream.window.extend(header.sequence);
        let in_order = ext > stream.window.highest();
        let arrived = stream.window.insert(ext, now);
        let ssrc = stream.ssrc;
        if arrived != Arrival::Duplicate && header.payload_type == self.params.payload_type {
            stream.jitter.update(arrival, header.timestamp);
        }
        match arrived {
            Arrival::Duplicate => {
                self.stats.duplicates += 1;
                return;
            }
            Arrival::TooOld => {
                self.stats.packets_accepted += 1;
                self.stats.late += 1;
                return;
            }
            Arrival::New { reordered } => {
                if reordered {
                    self.stats.reordered += 1;
                }
            }
        }
        self.stats.packets_accepted += 1;
        self.last_packet = now;
        self.inactive_reported = false;
        if header.payload_type != self.params.payload_type {
            self.stats.telephone_events += 1;
            self.push_event(ReceiveEvent::TelephoneEvent {
                header,
                payload: payload.to_vec(),
            });
            return;
        }
        let placed =
            match self
                .timeline
                .place(now, header.timestamp, payload, in_order, &mut self.output)
            {
                Placed::Rebase => {
                    self.timeline.flush(&mut self.output);
                    self.stats.timestamp_resyncs += 1;
                    if let Some(stream) = self.stream.as_mut() {
                        stream.jitter.last_transit = None;
                    }
                    self.push_event(ReceiveEvent::Resynced {
                        ssrc,
                        reason: ResyncReason::Timestamp,
                    });
                    self.timeline
                        .place(now, header.timestamp, payload, in_order, &mut self.output)
                }
                placed => placed,
            };
        match placed {
            Placed::Written { late, trimmed } => {
                self.stats.late += u64::from(late);
                self.stats.gaps_trimmed += u64::from(trimmed);
            }
            Placed::Late => self.stats.late += 1,
            Placed::OutOfWindow => self.stats.out_of_window += 1,
            Placed::Rebase => {}
        }
    }

    /// `now` on the RTP clock (wrapping), for the jitter.
    fn arrival_ticks(&self, now: Instant) -> u32 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        (nanos * u128::from(self.clock_rate) / 1_000_000_000) as u32
    }

    /// Releases every frame that may go at `now` and notes when the next may.
    fn release(&mut self, now: Instant) {
        self.release_deadline = None;
        loop {
            if self.timeline.head_complete() {
                self.timeline.release_head(&mut self.output);
                continue;
            }
            if !self.timeline.head_has_data_after() {
                break;
            }
            let deadline = self
                .stream
                .as_ref()
                .and_then(|s| s.window.hole_deadline(self.config.max_reorder_wait));
            match deadline {
                Some(deadline) if now < deadline => {
                    self.release_deadline = Some(deadline);
                    break;
                }
                Some(_) => {
                    if let Some(stream) = self.stream.as_mut() {
                        stream.window.abandon_oldest();
                    }
                }
                None => self.timeline.release_head(&mut self.output),
            }
        }
    }
}

#[cfg(test)]
mod tests;
