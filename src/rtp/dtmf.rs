//! DTMF digits, sans-IO: RFC 4733 telephone-events in both directions, and SIP INFO
//! `application/dtmf-relay` bodies.
//!
//! ## Receiving ([`DtmfReceiver`])
//!
//! RFC 4733 (section 2.5) sends one *event* as a run of packets that all carry the RTP
//! timestamp of the event's start: the first one (marker bit set), updates whose `duration`
//! grows, and a final packet with the E bit, which the sender repeats (three times in
//! total) because it is the one that matters. So:
//!
//! - an event is identified by `(SSRC, RTP timestamp)`; a new timestamp is a new event, even
//!   for the same digit pressed twice;
//! - the first packet seen for an event (whatever its marker, since the marker packet may be
//!   lost) starts it: [`DtmfEvent::Started`];
//! - the first E-bit packet ends it: [`DtmfEvent::Ended`] with the duration it carries; the
//!   repeated end packets, and any late update, are counted and otherwise ignored, so a digit
//!   is reported exactly once;
//! - if every end packet is lost, the event still ends: either a newer event starts
//!   ([`EndCause::Superseded`]) or no packet for it arrives for [`DEFAULT_END_TIMEOUT`]
//!   (one second, [`DtmfReceiver::with_end_timeout`]) ([`EndCause::Timeout`]); the duration is
//!   the last one heard. One second is far longer than any sane update interval (senders
//!   update every 20-50 ms), yet short enough that a menu reacts to a digit whose end
//!   packets all vanished;
//! - packets for an older timestamp than the current event (reordered stragglers) are
//!   dropped;
//! - events 0-15 are the DTMF digits `0-9 * # A-D`; other events (flash, modem and fax tones,
//!   RFC 4734) are counted and ignored. Payloads shorter than four octets are counted as
//!   malformed. Nothing on the wire can make this panic.
//!
//! Not handled: RFC 2198 redundancy (several events in one payload; only the first is read)
//! and the segments of events longer than the 16-bit duration field (section 2.5.1.3): a
//! press held over 8 s at 8 kHz is reported as one press per segment.
//!
//! ## Sending ([`EventSequence`], and the pacer)
//!
//! [`EventSequence`] is the RFC 4733 packet train of one digit at a given clock and packet
//! time: a first packet with the marker bit, one update per packet time with the duration so
//! far, then the final packet (E bit) sent three times, one packet time apart (section
//! 2.5.1.4), all on the event's start timestamp. It only makes payloads; the RTP header
//! around them is the business of the stream that sends them.
//!
//! That stream is the playout pacer: [`crate::rtp::playout::Pacer::send_digit`] queues a
//! digit, and the pacer sends the event packets *in place of* audio frames on its own 20 ms
//! slots, with its SSRC and sequence numbers and the telephone-event payload type. The audio
//! queue is paused, not dropped, meanwhile, so what the model said is still played afterwards
//! and barge-in accounting (`sent_ms`) stays exact. Sharing one SSRC and one sequence space is
//! what RFC 4733 section 2.1 expects (events and audio of one source share its timing), and
//! sharing the pacer's clock means no second timer and no interleaving races.
//!
//! ## SIP INFO ([`parse_info_body`])
//!
//! Some PBXs relay digits out of band as `application/dtmf-relay` bodies
//! (`Signal=5\r\nDuration=160\r\n`). [`parse_info_body`] turns one into the same
//! [`DigitPress`] the RTP path reports, so the `Call` handles both alike.

use std::time::{Duration, Instant};

use super::packet::RtpHeader;

/// How long an event may go without a packet before it is ended for lost end packets.
pub const DEFAULT_END_TIMEOUT: Duration = Duration::from_secs(1);
/// The volume we send digits at: -10 dBm0, a common choice (RFC 4733 allows 0-63, as
/// -dBm0).
pub const DEFAULT_VOLUME: u8 = 10;
/// Duration assumed for an INFO body without a usable `Duration` line.
pub const DEFAULT_INFO_DURATION: Duration = Duration::from_millis(100);
/// Longest digit we send: one event's duration field is 16 bits, 8.19 s at 8 kHz, and a
/// digit longer than a few seconds is a mistake; longer requests are cut to this.
pub const MAX_SEND_DURATION: Duration = Duration::from_secs(5);
/// Times the final packet of an event is sent (RFC 4733 section 2.5.1.4).
pub const END_REPEATS: u32 = 3;

/// One DTMF digit: RFC 4733 events 0-15.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Digit {
    /// `0`
    D0,
    /// `1`
    D1,
    /// `2`
    D2,
    /// `3`
    D3,
    /// `4`
    D4,
    /// `5`
    D5,
    /// `6`
    D6,
    /// `7`
    D7,
    /// `8`
    D8,
    /// `9`
    D9,
    /// `*` (event 10)
    Star,
    /// `#` (event 11)
    Pound,
    /// `A` (event 12)
    A,
    /// `B` (event 13)
    B,
    /// `C` (event 14)
    C,
    /// `D` (event 15)
    D,
}

const DIGITS: [Digit; 16] = [
    Digit::D0,
    Digit::D1,
    Digit::D2,
    Digit::D3,
    Digit::D4,
    Digit::D5,
    Digit::D6,
    Digit::D7,
    Digit::D8,
    Digit::D9,
    Digit::Star,
    Digit::Pound,
    Digit::A,
    Digit::B,
    Digit::C,
    Digit::D,
];

impl Digit {
    /// The digit of an RFC 4733 event code, `None` for codes above 15 (not DTMF).
    pub fn from_event(code: u8) -> Option<Digit> {
        DIGITS.get(usize::from(code)).copied()
    }

    /// The RFC 4733 event code.
    pub fn event(self) -> u8 {
        self as u8
    }

    /// The digit written as a key (`0-9`, `*`, `#`, `A-D`); lower-case `a-d` are accepted.
    pub fn from_char(c: char) -> Option<Digit> {
        match c {
            '0'..='9' => Digit::from_event(c as u8 - b'0'),
            '*' => Some(Digit::Star),
            '#' => Some(Digit::Pound),
            'A'..='D' => Digit::from_event(c as u8 - b'A' + 12),
            'a'..='d' => Digit::from_event(c as u8 - b'a' + 12),
            _ => None,
        }
    }

    /// The key as a character (`0-9`, `*`, `#`, `A-D`).
    pub fn as_char(self) -> char {
        match self {
            Digit::Star => '*',
            Digit::Pound => '#',
            Digit::A | Digit::B | Digit::C | Digit::D => char::from(b'A' + self.event() - 12),
            _ => char::from(b'0' + self.event()),
        }
    }
}

impl std::fmt::Display for Digit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// A digit the caller pressed, and for how long: what both the RTP path and SIP INFO report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DigitPress {
    /// The key.
    pub digit: Digit,
    /// How long it was held.
    pub duration: Duration,
}

/// One decoded RFC 4733 telephone-event payload (section 2.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventPayload {
    /// Event code (0-15 are DTMF digits).
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level, 0-63, as -dBm0.
    pub volume: u8,
    /// Duration so far, in RTP timestamp units.
    pub duration: u16,
}

/// Length of one telephone-event payload.
pub const PAYLOAD_LEN: usize = 4;

impl EventPayload {
    /// Decodes the first event of a payload; `None` when it is shorter than four octets.
    /// Octets beyond the fourth (RFC 2198 redundancy is not negotiated, so there should be
    /// none) are ignored.
    pub fn decode(payload: &[u8]) -> Option<EventPayload> {
        let [event, flags, hi, lo] = *payload.first_chunk::<PAYLOAD_LEN>()?;
        Some(EventPayload {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3f,
            duration: u16::from_be_bytes([hi, lo]),
        })
    }

    /// The four octets on the wire (the R bit is zero).
    pub fn encode(&self) -> [u8; PAYLOAD_LEN] {
        let [hi, lo] = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            hi,
            lo,
        ]
    }
}

/// Why an event ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndCause {
    /// A packet with the E bit arrived.
    EndBit,
    /// No end packet arrived and nothing was heard for the end timeout.
    Timeout,
    /// No end packet arrived before a newer event started.
    Superseded,
}

/// What the receiver noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DtmfEvent {
    /// A digit went down (the first packet of its event arrived).
    Started {
        /// The key.
        digit: Digit,
        /// Its power level, as -dBm0.
        volume: u8,
    },
    /// A digit went up; reported once per event.
    Ended {
        /// The key and how long it was held (the last duration heard).
        press: DigitPress,
        /// How we know it ended.
        cause: EndCause,
    },
}

/// Counters of a [`DtmfReceiver`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DtmfStats {
    /// Events started (digits only).
    pub events: u64,
    /// Packets that updated a running event.
    pub updates: u64,
    /// End packets after the first (the RFC's retransmissions) and late updates of an event
    /// already ended.
    pub repeated_ends: u64,
    /// Events ended by the timeout or by a newer event, their end packets lost.
    pub lost_ends: u64,
    /// Packets of events other than 0-15.
    pub ignored_events: u64,
    /// Packets older than the current event.
    pub stale: u64,
    /// Payloads shorter than four octets.
    pub malformed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Current {
    ssrc: u32,
    timestamp: u32,
    digit: Digit,
    /// Largest duration heard, in timestamp units.
    duration: u16,
    ended: bool,
    last_heard: Instant,
}

/// The receive side of RFC 4733 for one stream: telephone-event packets in, digit starts and
/// ends out. See the module documentation for the rules.
#[derive(Debug)]
pub struct DtmfReceiver {
    clock_rate: u32,
    end_timeout: Duration,
    current: Option<Current>,
    events: std::collections::VecDeque<DtmfEvent>,
    stats: DtmfStats,
}

impl DtmfReceiver {
    /// A receiver for telephone-events at `clock_rate` Hz (the rate of their `a=rtpmap`,
    /// 8000 for G.711 calls); a zero rate is taken as 8000.
    pub fn new(clock_rate: u32) -> DtmfReceiver {
        DtmfReceiver {
            clock_rate: if clock_rate == 0 { 8000 } else { clock_rate },
            end_timeout: DEFAULT_END_TIMEOUT,
            current: None,
            events: std::collections::VecDeque::new(),
            stats: DtmfStats::default(),
        }
    }

    /// Replaces [`DEFAULT_END_TIMEOUT`].
    pub fn with_end_timeout(mut self, timeout: Duration) -> DtmfReceiver {
        self.end_timeout = timeout;
        self
    }

    /// The counters so far.
    pub fn stats(&self) -> DtmfStats {
        self.stats
    }

    /// Takes one telephone-event packet (the RTP path has already matched its payload type).
    pub fn handle_packet(&mut self, now: Instant, header: &RtpHeader, payload: &[u8]) {
        let Some(event) = EventPayload::decode(payload) else {
            self.stats.malformed += 1;
            return;
        };
        let Some(digit) = Digit::from_event(event.event) else {
            self.stats.ignored_events += 1;
            return;
        };
        if let Some(current) = self.current.as_mut()
            && current.ssrc == header.ssrc
        {
            if current.timestamp == header.timestamp {
                if current.ended {
                    self.stats.repeated_ends += 1;
                    return;
                }
                current.duration = current.duration.max(event.duration);
                current.last_heard = now;
                if event.end {
                    current.ended = true;
                    let press = press(self.clock_rate, current.digit, current.duration);
                    self.events.push_back(DtmfEvent::Ended {
                        press,
                        cause: EndCause::EndBit,
                    });
                } else {
                    self.stats.updates += 1;
                }
                return;
            }
            // Serial-number comparison (RFC 1982) so the wrap of the timestamp is handled.
            if (header.timestamp.wrapping_sub(current.timestamp) as i32) < 0 {
                self.stats.stale += 1;
                return;
            }
        }
        // A new event: the previous one, if its end never came, ends now.
        self.end_current(EndCause::Superseded);
        self.stats.events += 1;
        self.events.push_back(DtmfEvent::Started {
            digit,
            volume: event.volume,
        });
        self.current = Some(Current {
            ssrc: header.ssrc,
            timestamp: header.timestamp,
            digit,
            duration: event.duration,
            ended: event.end,
            last_heard: now,
        });
        if event.end {
            // Start and updates lost: the event is reported whole.
            let press = press(self.clock_rate, digit, event.duration);
            self.events.push_back(DtmfEvent::Ended {
                press,
                cause: EndCause::EndBit,
            });
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to run: the end timeout of an event
    /// whose end has not arrived.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let current = self.current.as_ref().filter(|c| !c.ended)?;
        current.last_heard.checked_add(self.end_timeout)
    }

    /// Ends an event that has been silent for the end timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|deadline| now >= deadline) {
            self.end_current(EndCause::Timeout);
        }
    }

    /// The next digit start or end.
    pub fn poll_event(&mut self) -> Option<DtmfEvent> {
        self.events.pop_front()
    }

    fn end_current(&mut self, cause: EndCause) {
        if let Some(current) = self.current.as_mut()
            && !current.ended
        {
            current.ended = true;
            self.stats.lost_ends += 1;
            let press = press(self.clock_rate, current.digit, current.duration);
            self.events.push_back(DtmfEvent::Ended { press, cause });
        }
    }
}

/// A press of `duration` timestamp units at `clock_rate` Hz (never zero).
fn press(clock_rate: u32, digit: Digit, duration: u16) -> DigitPress {
    let micros = u64::from(duration) * 1_000_000 / u64::from(clock_rate.max(1));
    DigitPress {
        digit,
        duration: Duration::from_micros(micros),
    }
}

/// One packet of an [`EventSequence`]: its payload and whether it carries the marker bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventPacket {
    /// Set on the first packet of the event only.
    pub marker: bool,
    /// The telephone-event payload.
    pub payload: EventPayload,
}

/// The RFC 4733 packet train of one digit, one packet per packet time: see the module
/// documentation. All its packets go out on the RTP timestamp of the first one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSequence {
    digit: Digit,
    volume: u8,
    samples_per_packet: u32,
    /// Packets carrying a growing duration, the last of which is the first end packet.
    updates: u32,
    /// Packets produced so far.
    sent: u32,
}

impl EventSequence {
    /// The train for `digit` held for `duration` (rounded up to whole packet times, at least
    /// one, at most [`MAX_SEND_DURATION`]), with `samples_per_packet` timestamp units per
    /// packet time (160 for 20 ms at 8 kHz) and `volume` as -dBm0 (clamped to 0-63).
    pub fn new(
        digit: Digit,
        duration: Duration,
        volume: u8,
        samples_per_packet: u32,
        packet_time: Duration,
    ) -> EventSequence {
        let packet_us = packet_time.as_micros().max(1);
        let wanted_us = duration.min(MAX_SEND_DURATION).as_micros();
        let mut updates = u32::try_from(wanted_us.div_ceil(packet_us))
            .unwrap_or(u32::MAX)
            .max(1);
        // The duration field is 16 bits; stay inside it whatever the clock.
        let samples = samples_per_packet.max(1);
        updates = updates.min(u32::from(u16::MAX) / samples).max(1);
        EventSequence {
            digit,
            volume: volume.min(63),
            samples_per_packet: samples,
            updates,
            sent: 0,
        }
    }

    /// The digit being sent.
    pub fn digit(&self) -> Digit {
        self.digit
    }

    /// Packets in the whole train: the updates plus the two repeated end packets.
    pub fn packets(&self) -> u32 {
        self.updates + END_REPEATS - 1
    }

    /// Packets not yet produced.
    pub fn remaining(&self) -> u32 {
        self.packets().saturating_sub(self.sent)
    }

    /// The duration the end packets report, in timestamp units.
    pub fn total_duration(&self) -> u16 {
        u16::try_from(self.updates * self.samples_per_packet).unwrap_or(u16::MAX)
    }
}

impl Iterator for EventSequence {
    type Item = EventPacket;

    fn next(&mut self) -> Option<EventPacket> {
        if self.sent >= self.packets() {
            return None;
        }
        let index = self.sent;
        self.sent += 1;
        let so_far = (index + 1).min(self.updates) * self.samples_per_packet;
        Some(EventPacket {
            marker: index == 0,
            payload: EventPayload {
                event: self.digit.event(),
                end: index + 1 >= self.updates,
                volume: self.volume,
                duration: u16::try_from(so_far).unwrap_or(u16::MAX),
            },
        })
    }
}

/// Why an INFO body gave no digit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InfoError {
    /// No `Signal=` line.
    #[error("no Signal line in the dtmf-relay body")]
    NoSignal,
    /// A `Signal=` value that is not a DTMF key.
    #[error("Signal {0:?} is not a DTMF key")]
    BadSignal(String),
}

/// Parses an `application/dtmf-relay` body (`Signal=5\r\nDuration=160\r\n`).
///
/// Lenient, as PBXs are sloppy: keys are case-insensitive, spaces around `=` and either line
/// ending are fine, unknown or unreadable lines are skipped, and the first `Signal` and
/// `Duration` win. `Signal` is a key (`0-9 * # A-D`, any case) or an event code `10-15` (some
/// phones send `10` for `*` and `11` for `#`). `Duration` is in milliseconds; when missing or
/// unreadable it is [`DEFAULT_INFO_DURATION`].
pub fn parse_info_body(body: &[u8]) -> Result<DigitPress, InfoError> {
    let mut signal: Option<&str> = None;
    let mut duration: Option<Duration> = None;
    for line in body.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.eq_ignore_ascii_case("signal") {
            signal.get_or_insert(value);
        } else if key.eq_ignore_ascii_case("duration")
            && duration.is_none()
            && let Ok(ms) = value.parse::<u32>()
        {
            duration = Some(Duration::from_millis(u64::from(ms)));
        }
    }
    let signal = signal.ok_or(InfoError::NoSignal)?;
    let mut chars = signal.chars();
    let digit = match (chars.next(), chars.next()) {
        (Some(c), None) => Digit::from_char(c),
        _ => signal.parse::<u8>().ok().and_then(Digit::from_event),
    }
    .ok_or_else(|| InfoError::BadSignal(signal.chars().take(32).collect()))?;
    Ok(DigitPress {
        digit,
        duration: duration.unwrap_or(DEFAULT_INFO_DURATION),
    })
}

#[cfg(test)]
mod tests;
