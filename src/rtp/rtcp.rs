//! RTCP (RFC 3550 section 6): the call's control channel, as a sans-IO core.
//!
//! RTCP does three jobs for a two-party SIP call: it tells the peer how well its stream arrives
//! (report blocks: loss, jitter), it lets each side measure the round trip (LSR/DLSR, 6.4.1),
//! and it says goodbye (BYE). Many PBXs and SBCs also use the absence of RTCP, or RTCP
//! without RTP, to decide that a call is dead, so a bridge that never sends it gets hung up on.
//!
//! # Design
//!
//! - **Wire format** ([`parse_compound`], [`RtcpPacket::write`]): compound packets are
//!   validated as a whole per RFC 3550 A.2 (version 2 everywhere, the first packet an SR or RR
//!   without padding, padding only in the last packet, the length fields adding up to the
//!   datagram exactly), then each packet's own structure is checked. Everything is read with
//!   bounds-checked accessors: a datagram from the network can produce an error, never a panic.
//!   APP and the feedback/XR types we do not use are kept as opaque [`RtcpPacket::Other`].
//! - **Session** ([`RtcpSession`]): the `handle_*` / `poll_*` core used everywhere in this
//!   crate. It never reads a clock: `now: Instant` drives the report timer and the DLSR
//!   arithmetic, and the wall clock arrives as an [`NtpTime`] argument, because an SR carries
//!   wall-clock time and the RTT formula works on it. It never generates randomness either: the
//!   interval randomisation of RFC 3550 6.3.1 draws from a SplitMix64 stream seeded by the
//!   caller ([`RtcpConfig::seed`]), so simulated-time tests are exactly reproducible, and the
//!   interval itself is a pure function ([`rtcp_interval`]) of its inputs and one draw.
//! - **Reception statistics come in, not out**: the receive core owns sequence tracking and
//!   jitter (RFC 3550 A.1, A.8). It hands us a [`ReceptionStats`] snapshot of raw counts on
//!   every [`RtcpSession::handle_timeout`]; this core does the per-interval arithmetic of A.3
//!   (fraction lost needs the previous report's counts, which only the reporter knows).
//! - **Sender side**: the shell calls [`RtcpSession::handle_rtp_sent`] for every RTP packet it
//!   sends. The `(now, rtp_timestamp)` of the latest packet is the media clock's offset against
//!   the monotonic clock; the SR's RTP timestamp is extrapolated from it to the moment of the
//!   report at the configured clock rate, so the SR pairs the NTP time with the RTP timestamp
//!   a packet sampled at that instant would carry (6.4.1). The pacer sends against absolute
//!   deadlines, so the extrapolation does not drift.
//! - **Scheduling** follows RFC 3550 6.3 and A.7 (`rtcp_interval`, `OnExpire`) including timer
//!   reconsideration: a 5 s minimum (halved for the first report, as 6.2 allows), 5% of the
//!   session bandwidth, the 25%/75% sender/receiver split, the average compound size
//!   including UDP/IP headers, randomisation over [0.5, 1.5) and the e - 3/2 compensation.
//!   Member time-outs, SSRC collision handling and reverse reconsideration are left out: a SIP
//!   call has exactly one peer, and its departure ends the call.
//! - **Transport**: RTCP on its own port (RTP + 1) or multiplexed with RTP (rtcp-mux, RFC
//!   5761; [`super::packet::is_rtcp`] tells the datagrams apart) makes no difference here: the
//!   shell routes datagrams in and sends [`RtcpSession::poll_transmit`]'s out.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

/// RTP/RTCP version 2.
const VERSION: u8 = 2;
/// Sender report.
pub const PT_SR: u8 = 200;
/// Receiver report.
pub const PT_RR: u8 = 201;
/// Source description.
pub const PT_SDES: u8 = 202;
/// Goodbye.
pub const PT_BYE: u8 = 203;
/// Application-defined.
pub const PT_APP: u8 = 204;
/// SDES item type of the canonical name.
const SDES_CNAME: u8 = 1;
/// Octets of one report block.
const REPORT_BLOCK_LEN: usize = 24;
/// Octets of the sender-info section of an SR.
const SENDER_INFO_LEN: usize = 20;
/// Largest count in the 5-bit RC/SC field.
const MAX_COUNT: usize = 31;
/// IPv4 + UDP header octets, added to each compound packet's size for the average RTCP size
/// (RFC 3550 6.2: the bandwidth includes lower-layer headers). IPv6 would be 48; the difference
/// is lost in the 5 s minimum for a two-party call.
pub const UDP_IP_OVERHEAD: usize = 28;
/// The default minimum report interval (RFC 3550 6.2).
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(5);
/// e - 3/2: divides the randomised interval so that timer reconsideration does not make the
/// average interval longer than intended (RFC 3550 6.3.1, A.7).
const COMPENSATION: f64 = std::f64::consts::E - 1.5;
/// Sent SRs remembered for matching the LSR of an incoming report block.
const SENT_SR_MEMORY: usize = 8;

/// Why a datagram is not a valid compound RTCP packet (RFC 3550 6.1, A.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    /// Shorter than one RTCP header.
    #[error("shorter than an RTCP header ({0} octets)")]
    TooShort(usize),
    /// A packet is not version 2.
    #[error("RTCP version {0}")]
    Version(u8),
    /// The first packet of a compound packet is not an SR or RR.
    #[error("compound packet starts with packet type {0}, not SR or RR")]
    FirstNotReport(u8),
    /// The padding bit is set on a packet that is not the last one (or on the first one).
    #[error("padding on a packet that is not the last")]
    PaddingNotLast,
    /// The padding count is zero or larger than the packet body.
    #[error("invalid padding count")]
    Padding,
    /// A length field runs past the end of the datagram.
    #[error("length field of packet type {0} runs past the datagram")]
    Length(u8),
    /// The body of a packet is too short for its count field or an item inside it.
    #[error("packet type {0} truncated inside its body")]
    Truncated(u8),
    /// The CNAME does not fit in an SDES item (255 octets).
    #[error("CNAME of {0} octets is longer than 255")]
    CnameTooLong(usize),
}

/// A 64-bit NTP timestamp (RFC 3550 4): seconds since 1900 in the high 32 bits, the fraction
/// in the low 32.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// Seconds from 1900-01-01 (NTP epoch) to 1970-01-01 (Unix epoch).
    pub const UNIX_OFFSET_SECS: u64 = 2_208_988_800;

    /// The NTP time `since_unix_epoch` after 1970-01-01 (wrapping in 2036, as NTP does).
    pub fn from_unix(since_unix_epoch: Duration) -> Self {
        let secs = since_unix_epoch
            .as_secs()
            .wrapping_add(Self::UNIX_OFFSET_SECS);
        let frac = (u64::from(since_unix_epoch.subsec_nanos()) << 32) / 1_000_000_000;
        Self((secs << 32) | frac)
    }

    /// Converts a wall-clock reading the shell took (times before 1970 map to the epoch).
    pub fn from_system_time(time: SystemTime) -> Self {
        Self::from_unix(
            time.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// The middle 32 bits (16.16 fixed point seconds): the LSR format of 6.4.1.
    pub fn middle_32(self) -> u32 {
        (self.0 >> 16) as u32
    }
}

/// One reception report block (RFC 3550 6.4.1): what the reporter observed of source `ssrc`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Packets lost in the last interval over packets expected, in 1/256 (8-bit fixed point).
    pub fraction_lost: u8,
    /// Packets lost since the start of reception (24-bit signed on the wire; duplicates can make
    /// it negative).
    pub cumulative_lost: i32,
    /// Cycles (high 16 bits) and highest sequence number received (low 16).
    pub extended_highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received from `ssrc`; 0 if none.
    pub last_sr: u32,
    /// Delay between receiving that SR and sending this block, in 1/65536 s; 0 if none.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    /// The fraction lost as a ratio in [0, 1).
    pub fn loss_ratio(&self) -> f64 {
        f64::from(self.fraction_lost) / 256.0
    }

    /// The jitter as a duration at `clock_rate` Hz (zero for a zero clock rate).
    pub fn jitter_duration(&self, clock_rate: u32) -> Duration {
        if clock_rate == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::from(self.jitter) * 1_000_000_000 / u64::from(clock_rate))
    }
}

/// The sender-info section of an SR (RFC 3550 6.4.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// Wall-clock time of the report.
    pub ntp: NtpTime,
    /// The RTP timestamp corresponding to `ntp`.
    pub rtp_timestamp: u32,
    /// RTP packets sent since the start (wraps).
    pub packet_count: u32,
    /// RTP payload octets sent since the start (wraps).
    pub octet_count: u32,
}

/// One SDES chunk; only the CNAME item is kept (others are skipped when parsing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SdesChunk {
    /// The source described.
    pub ssrc: u32,
    /// Its canonical name, if the chunk carried one (invalid UTF-8 is replaced).
    pub cname: Option<String>,
}

/// One packet of a compound RTCP packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtcpPacket {
    /// SR: reports from a participant that is sending.
    SenderReport {
        /// The sender.
        ssrc: u32,
        /// What it sent, and when.
        sender: SenderInfo,
        /// What it received.
        blocks: Vec<ReportBlock>,
    },
    /// RR: reports from a participant that is not sending.
    ReceiverReport {
        /// The reporter.
        ssrc: u32,
        /// What it received.
        blocks: Vec<ReportBlock>,
    },
    /// SDES.
    SourceDescription(Vec<SdesChunk>),
    /// BYE.
    Goodbye {
        /// The sources leaving.
        ssrcs: Vec<u32>,
        /// Why, if given (invalid UTF-8 is replaced).
        reason: Option<String>,
    },
    /// APP or a type we do not interpret (feedback, XR...), padding removed.
    Other {
        /// The packet type.
        packet_type: u8,
        /// The 5-bit count/subtype field.
        count: u8,
        /// The body after the 4-octet header.
        body: Vec<u8>,
    },
}

/// Bounds-checked big-endian reading.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let bytes: [u8; 4] = self.take(4)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }

    fn u64(&mut self) -> Option<u64> {
        let bytes: [u8; 8] = self.take(8)?.try_into().ok()?;
        Some(u64::from_be_bytes(bytes))
    }
}

/// Parses and validates a compound RTCP packet (RFC 3550 6.1 and the checks of A.2).
pub fn parse_compound(bytes: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    if bytes.len() < 4 {
        return Err(RtcpError::TooShort(bytes.len()));
    }
    let mut packets = Vec::new();
    let mut rest = Reader(bytes);
    while !rest.0.is_empty() {
        let first = packets.is_empty();
        let header = rest.take(4).ok_or(RtcpError::TooShort(rest.0.len()))?;
        let [b0, packet_type, len_hi, len_lo]: [u8; 4] = header
            .try_into()
            .map_err(|_| RtcpError::TooShort(header.len()))?;
        let version = b0 >> 6;
        if version != VERSION {
            return Err(RtcpError::Version(version));
        }
        if first && packet_type != PT_SR && packet_type != PT_RR {
            return Err(RtcpError::FirstNotReport(packet_type));
        }
        let body_len = usize::from(u16::from_be_bytes([len_hi, len_lo])) * 4;
        let body = rest.take(body_len).ok_or(RtcpError::Length(packet_type))?;
        let padded = b0 & 0x20 != 0;
        let body = if padded {
            // A.2: padding belongs to the last packet only, and never to the first (the
            // first packet's padding bit is part of A.2's header mask).
            if first || !rest.0.is_empty() {
                return Err(RtcpError::PaddingNotLast);
            }
            let pad = usize::from(*body.last().ok_or(RtcpError::Padding)?);
            let end = body
                .len()
                .checked_sub(pad)
                .filter(|_| pad > 0)
                .ok_or(RtcpError::Padding)?;
            body.get(..end).ok_or(RtcpError::Padding)?
        } else {
            body
        };
        packets.push(parse_one(packet_type, b0 & 0x1f, body)?);
    }
    Ok(packets)
}

fn parse_one(packet_type: u8, count: u8, body: &[u8]) -> Result<RtcpPacket, RtcpError> {
    let truncated = RtcpError::Truncated(packet_type);
    let mut r = Reader(body);
    Ok(match packet_type {
        PT_SR => {
            let ssrc = r.u32().ok_or(truncated)?;
            let sender = SenderInfo {
                ntp: NtpTime(r.u64().ok_or(truncated)?),
                rtp_timestamp: r.u32().ok_or(truncated)?,
                packet_count: r.u32().ok_or(truncated)?,
                octet_count: r.u32().ok_or(truncated)?,
            };
            let blocks = parse_blocks(&mut r, count).ok_or(truncated)?;
            RtcpPacket::SenderReport {
                ssrc,
                sender,
                blocks,
            }
        }
        PT_RR => {
            let ssrc = r.u32().ok_or(truncated)?;
            let blocks = parse_blocks(&mut r, count).ok_or(truncated)?;
            RtcpPacket::ReceiverReport { ssrc, blocks }
        }
        PT_SDES => {
            let chunks = (0..count)
                .map(|_| parse_sdes_chunk(&mut r))
                .collect::<Option<Vec<_>>>()
                .ok_or(truncated)?;
            RtcpPacket::SourceDescription(chunks)
        }
        PT_BYE => {
            let ssrcs = (0..count)
                .map(|_| r.u32())
                .collect::<Option<Vec<_>>>()
                .ok_or(truncated)?;
            let reason = match r.u8() {
                None => None,
                Some(len) => {
                    let text = r.take(usize::from(len)).ok_or(truncated)?;
                    Some(String::from_utf8_lossy(text).into_owned())
                }
            };
            RtcpPacket::Goodbye { ssrcs, reason }
        }
        _ => RtcpPacket::Other {
            packet_type,
            count,
            body: body.to_vec(),
        },
    })
}

fn parse_blocks(r: &mut Reader<'_>, count: u8) -> Option<Vec<ReportBlock>> {
    (0..count)
        .map(|_| {
            let ssrc = r.u32()?;
            let loss = r.u32()?;
            Some(ReportBlock {
                ssrc,
                fraction_lost: (loss >> 24) as u8,
                // Sign-extend the 24-bit field.
                cumulative_lost: ((loss << 8) as i32) >> 8,
                extended_highest_seq: r.u32()?,
                jitter: r.u32()?,
                last_sr: r.u32()?,
                delay_since_last_sr: r.u32()?,
            })
        })
        .collect()
}

fn parse_sdes_chunk(r: &mut Reader<'_>) -> Option<SdesChunk> {
    let start = r.0.len();
    let ssrc = r.u32()?;
    let mut cname = None;
    loop {
        let item = r.u8()?;
        if item == 0 {
            break;
        }
        let len = r.u8()?;
        let text = r.take(usize::from(len))?;
        if item == SDES_CNAME {
            cname = Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    // The null item is followed by null octets up to the next 32-bit boundary of the chunk.
    let used = start - r.0.len();
    r.take((4 - used % 4) % 4)?;
    Some(SdesChunk { ssrc, cname })
}

/// The longest prefix of `text` of at most 255 octets that ends on a character boundary.
fn text_255(text: &str) -> &str {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

fn write_header(out: &mut Vec<u8>, count: usize, packet_type: u8, body_len: usize) {
    // Callers cap counts at 31 and pad bodies to whole words; both fit their fields.
    out.push((VERSION << 6) | (count.min(MAX_COUNT) as u8));
    out.push(packet_type);
    out.extend_from_slice(&((body_len / 4) as u16).to_be_bytes());
}

fn write_blocks(out: &mut Vec<u8>, blocks: &[ReportBlock]) {
    for b in blocks.iter().take(MAX_COUNT) {
        out.extend_from_slice(&b.ssrc.to_be_bytes());
        let lost = (b.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff;
        out.extend_from_slice(&((u32::from(b.fraction_lost) << 24) | lost).to_be_bytes());
        out.extend_from_slice(&b.extended_highest_seq.to_be_bytes());
        out.extend_from_slice(&b.jitter.to_be_bytes());
        out.extend_from_slice(&b.last_sr.to_be_bytes());
        out.extend_from_slice(&b.delay_since_last_sr.to_be_bytes());
    }
}

fn pad_to_word(out: &mut Vec<u8>, from: usize) {
    while !(out.len() - from).is_multiple_of(4) {
        out.push(0);
    }
}

impl RtcpPacket {
    /// Appends this packet to `out` (no padding bit; lists beyond 31 entries and texts beyond
    /// 255 octets are cut, as the fields cannot express more).
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Self::SenderReport {
                ssrc,
                sender,
                blocks,
            } => {
                let n = blocks.len().min(MAX_COUNT);
                write_header(out, n, PT_SR, 4 + SENDER_INFO_LEN + n * REPORT_BLOCK_LEN);
                out.extend_from_slice(&ssrc.to_be_bytes());
                out.extend_from_slice(&sender.ntp.0.to_be_bytes());
                out.extend_from_slice(&sender.rtp_timestamp.to_be_bytes());
                out.extend_from_slice(&sender.packet_count.to_be_bytes());
                out.extend_from_slice(&sender.octet_count.to_be_bytes());
                write_blocks(out, blocks);
            }
            Self::ReceiverReport { ssrc, blocks } => {
                let n = blocks.len().min(MAX_COUNT);
                write_header(out, n, PT_RR, 4 + n * REPORT_BLOCK_LEN);
                out.extend_from_slice(&ssrc.to_be_bytes());
                write_blocks(out, blocks);
            }
            Self::SourceDescription(chunks) => {
                let start = out.len();
                let chunks = chunks
                    .get(..chunks.len().min(MAX_COUNT))
                    .unwrap_or_default();
                write_header(out, chunks.len(), PT_SDES, 0);
                for chunk in chunks {
                    let chunk_start = out.len();
                    out.extend_from_slice(&chunk.ssrc.to_be_bytes());
                    if let Some(cname) = &chunk.cname {
                        let cname = text_255(cname);
                        out.push(SDES_CNAME);
                        out.push(cname.len() as u8);
                        out.extend_from_slice(cname.as_bytes());
                    }
                    out.push(0); // end of items
                    pad_to_word(out, chunk_start);
                }
                patch_length(out, start);
            }
            Self::Goodbye { ssrcs, reason } => {
                let start = out.len();
                let ssrcs = ssrcs.get(..ssrcs.len().min(MAX_COUNT)).unwrap_or_default();
                write_header(out, ssrcs.len(), PT_BYE, 0);
                for ssrc in ssrcs {
                    out.extend_from_slice(&ssrc.to_be_bytes());
                }
                if let Some(reason) = reason {
                    let reason = text_255(reason);
                    out.push(reason.len() as u8);
                    out.extend_from_slice(reason.as_bytes());
                    pad_to_word(out, start);
                }
                patch_length(out, start);
            }
            Self::Other {
                packet_type,
                count,
                body,
            } => {
                let start = out.len();
                write_header(out, usize::from(*count), *packet_type, 0);
                out.extend_from_slice(body);
                pad_to_word(out, start);
                patch_length(out, start);
            }
        }
    }
}

/// Writes the length field of the packet that starts at `start` and runs to the end of `out`.
fn patch_length(out: &mut [u8], start: usize) {
    let words = ((out.len() - start) / 4).saturating_sub(1) as u16;
    if let Some(field) = out.get_mut(start + 2..start + 4) {
        field.copy_from_slice(&words.to_be_bytes());
    }
}

/// What RFC 3550's `rtcp_interval()` (A.7) needs to know.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntervalInputs {
    /// Members of the session, counting us.
    pub members: u32,
    /// Members that sent RTP recently, counting us.
    pub senders: u32,
    /// The RTCP bandwidth in octets per second (5% of the session bandwidth).
    pub rtcp_bandwidth: f64,
    /// Whether we sent RTP since the second-to-last report.
    pub we_sent: bool,
    /// The average compound RTCP size in octets, UDP/IP headers included.
    pub avg_rtcp_size: f64,
    /// Whether we have not sent a report yet (halves the minimum, 6.2).
    pub initial: bool,
    /// The minimum interval (5 s by default).
    pub min_interval: Duration,
}

/// The randomised RTCP transmission interval of RFC 3550 6.3.1 / A.7 for one draw `random` in
/// [0, 1) (values outside are clamped into it, NaN counts as 0.5).
///
/// For a two-party call the bandwidth term is far below the minimum, so the result is
/// `min * [0.5, 1.5) / (e - 3/2)`: 2.05 s to 6.16 s, mean 4.10 s, with the 5 s minimum.
pub fn rtcp_interval(inputs: &IntervalInputs, random: f64) -> Duration {
    let mut min = inputs.min_interval.as_secs_f64();
    if inputs.initial {
        min /= 2.0;
    }
    let mut bandwidth = inputs.rtcp_bandwidth;
    let mut n = f64::from(inputs.members.max(1));
    let senders = f64::from(inputs.senders);
    if senders <= n * 0.25 {
        if inputs.we_sent {
            bandwidth *= 0.25;
            n = senders.max(1.0);
        } else {
            bandwidth *= 0.75;
            n = (n - senders).max(1.0);
        }
    }
    let deterministic = if bandwidth > 0.0 {
        (inputs.avg_rtcp_size * n / bandwidth).max(min)
    } else {
        min
    };
    let random = if random.is_nan() {
        0.5
    } else {
        random.clamp(0.0, 1.0)
    };
    let t = deterministic * (random + 0.5) / COMPENSATION;
    Duration::try_from_secs_f64(t).unwrap_or(inputs.min_interval)
}

/// SplitMix64: a tiny deterministic generator for the interval draws, seeded by the caller.
#[derive(Clone, Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    /// A draw in [0, 1) with 53 bits of resolution.
    fn next_unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Raw reception counts for one remote source, as the receive core keeps them (RFC 3550 A.1,
/// A.8). Counts are totals since reception started; the per-interval arithmetic is ours (A.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceptionStats {
    /// The remote source.
    pub ssrc: u32,
    /// The extended sequence number of the first packet received (A.1 `base_seq`).
    pub base_seq: u32,
    /// Cycles and highest sequence number received (A.1 `cycles + max_seq`).
    pub extended_highest_seq: u32,
    /// Packets received, duplicates and late packets included (A.1 `received`).
    pub received_packets: u64,
    /// Payload octets received.
    pub received_octets: u64,
    /// Interarrival jitter in RTP timestamp units (A.8's `jitter >> 4`).
    pub jitter: u32,
}

impl ReceptionStats {
    /// Packets expected so far (A.3).
    pub fn expected(&self) -> u64 {
        u64::from(self.extended_highest_seq.wrapping_sub(self.base_seq)) + 1
    }

    /// Cumulative packets lost (A.3), clamped to the 24-bit signed field of a report block.
    pub fn cumulative_lost(&self) -> i32 {
        let lost = i128::from(self.expected()) - i128::from(self.received_packets);
        lost.clamp(-0x80_0000, 0x7f_ffff) as i32
    }
}

/// Fraction lost over one interval in 1/256 (RFC 3550 A.3), from the expected and received
/// counts at this report and the previous one. Duplicates that outnumber losses give 0.
pub fn fraction_lost(expected: u64, expected_prior: u64, received: u64, received_prior: u64) -> u8 {
    let expected_interval = i128::from(expected) - i128::from(expected_prior);
    let received_interval = i128::from(received) - i128::from(received_prior);
    let lost_interval = expected_interval - received_interval;
    if expected_interval <= 0 || lost_interval <= 0 {
        return 0;
    }
    ((lost_interval << 8) / expected_interval).min(255) as u8
}

/// Configuration of one call's RTCP session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtcpConfig {
    /// Our SSRC (the one our RTP carries).
    pub ssrc: u32,
    /// Our CNAME (at most 255 octets), sent in every compound packet (6.5.1).
    pub cname: String,
    /// The RTP clock rate of our stream and the peer's (8000 for G.711, 48000 for Opus).
    pub clock_rate: u32,
    /// Session bandwidth in bits per second; RTCP takes 5% of it (6.2).
    pub session_bandwidth_bps: u32,
    /// Minimum report interval (5 s by default; the first report uses half).
    pub min_interval: Duration,
    /// Seed of the interval randomisation; the shell draws it from the OS per call.
    pub seed: u64,
}

impl RtcpConfig {
    /// A configuration with the RFC defaults: 5 s minimum, and a session bandwidth of 80 kbit/s
    /// (G.711 with RTP/UDP/IPv4 headers at 20 ms).
    pub fn new(ssrc: u32, cname: impl Into<String>, clock_rate: u32, seed: u64) -> Self {
        Self {
            ssrc,
            cname: cname.into(),
            clock_rate,
            session_bandwidth_bps: 80_000,
            min_interval: DEFAULT_MIN_INTERVAL,
            seed,
        }
    }
}

/// What the session reports to the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RtcpEvent {
    /// The peer sent BYE for these sources: its media is ending.
    Goodbye {
        /// The sources leaving.
        ssrcs: Vec<u32>,
        /// The reason, if given.
        reason: Option<String>,
    },
}

/// Per-call RTCP statistics, both directions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RtcpStats {
    /// RTP packets we sent.
    pub sent_packets: u64,
    /// RTP payload octets we sent.
    pub sent_octets: u64,
    /// RTP packets we received (from the latest [`ReceptionStats`]).
    pub received_packets: u64,
    /// RTP payload octets we received.
    pub received_octets: u64,
    /// Our view of the peer's stream: the report block we sent last.
    pub local: Option<ReportBlock>,
    /// The peer's view of our stream: the last report block about our SSRC.
    pub remote: Option<ReportBlock>,
    /// The peer's last sender info (its packet and octet counts), if it sent an SR.
    pub remote_sender: Option<SenderInfo>,
    /// The peer's CNAME, once seen.
    pub remote_cname: Option<String>,
    /// The latest round-trip time (6.4.1).
    pub rtt: Option<Duration>,
    /// The round-trip time smoothed over reports (1/8 gain, as TCP's SRTT).
    pub smoothed_rtt: Option<Duration>,
    /// Compound packets we sent.
    pub reports_sent: u64,
    /// Valid compound packets received.
    pub reports_received: u64,
    /// Datagrams refused as malformed.
    pub malformed_received: u64,
}

/// One call's RTCP: report scheduling, building, parsing and statistics (see the module docs).
#[derive(Debug)]
pub struct RtcpSession {
    config: RtcpConfig,
    rtcp_bandwidth: f64,
    rng: SplitMix64,
    avg_rtcp_size: f64,
    initial: bool,
    /// Time of the last report sent (A.7 `tp`); the session start before the first.
    last_report: Instant,
    /// Next scheduled report (A.7 `tn`); `None` once closed.
    next_report: Option<Instant>,
    /// Latest RTP packet we sent: when, and its timestamp (the media clock's offset).
    last_rtp: Option<(Instant, u32)>,
    /// Our packet count at the last report and the one before (for `we_sent`, 6.3.8).
    sent_at_reports: [u64; 2],
    /// Received count at the last report, to tell whether the peer is sending.
    received_at_report: u64,
    reception: Option<ReceptionStats>,
    /// A.3's `expected_prior` and `received_prior`, for the source they belong to.
    priors: Option<(u32, u64, u64)>,
    remote_ssrc: Option<u32>,
    /// The peer's last SR: its LSR value and when it arrived.
    remote_sr: Option<(u32, u32, Instant)>,
    remote_sr_since_report: bool,
    /// LSR values of our recent SRs, to accept only RTT samples that answer one of them.
    sent_srs: VecDeque<u32>,
    stats: RtcpStats,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<RtcpEvent>,
}

impl RtcpSession {
    /// Starts the session at `now` and schedules the first report (RFC 3550 6.2: half the
    /// minimum interval, randomised).
    pub fn new(config: RtcpConfig, now: Instant) -> Result<Self, RtcpError> {
        if config.cname.len() > 255 {
            return Err(RtcpError::CnameTooLong(config.cname.len()));
        }
        // A.7: initialised to the probable size of the first compound packet (RR with one block,
        // SDES with our CNAME).
        let sdes_len = 4 + (4 + 2 + config.cname.len() + 1).div_ceil(4) * 4;
        let probable = 8 + REPORT_BLOCK_LEN + sdes_len + UDP_IP_OVERHEAD;
        let mut session = Self {
            rtcp_bandwidth: f64::from(config.session_bandwidth_bps) * 0.05 / 8.0,
            rng: SplitMix64(config.seed),
            config,
            avg_rtcp_size: probable as f64,
            initial: true,
            last_report: now,
            next_report: None,
            last_rtp: None,
            sent_at_reports: [0; 2],
            received_at_report: 0,
            reception: None,
            priors: None,
            remote_ssrc: None,
            remote_sr: None,
            remote_sr_since_report: false,
            sent_srs: VecDeque::with_capacity(SENT_SR_MEMORY),
            stats: RtcpStats::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        let first = session.draw_interval();
        session.next_report = Some(now + first);
        Ok(session)
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.config.ssrc
    }

    /// Records one RTP packet we sent at `now`, with its header timestamp and payload length.
    pub fn handle_rtp_sent(&mut self, now: Instant, rtp_timestamp: u32, payload_len: usize) {
        self.stats.sent_packets += 1;
        self.stats.sent_octets += payload_len as u64;
        self.last_rtp = Some((now, rtp_timestamp));
    }

    /// Sends a report if one is due at `now` (with timer reconsideration, A.7 `OnExpire`).
    /// `reception` is the receive core's latest snapshot for the peer's stream, if any.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        ntp_now: NtpTime,
        reception: Option<ReceptionStats>,
    ) {
        self.note_reception(reception);
        let Some(due) = self.next_report else {
            return;
        };
        if now < due {
            return;
        }
        let interval = self.draw_interval();
        if self.last_report + interval <= now {
            let datagram = self.build_compound(now, ntp_now, None);
            self.transmits.push_back(datagram);
            let next = self.draw_interval();
            self.next_report = Some(now + next);
        } else {
            self.next_report = Some(self.last_report + interval);
        }
    }

    /// Ends the session: queues a final compound packet with BYE (RFC 3550 6.3.7: only if we
    /// ever sent RTP or RTCP) and stops the timer.
    pub fn close(
        &mut self,
        now: Instant,
        ntp_now: NtpTime,
        reception: Option<ReceptionStats>,
        reason: Option<&str>,
    ) {
        if self.next_report.take().is_none() {
            return;
        }
        self.note_reception(reception);
        if self.stats.sent_packets > 0 || self.stats.reports_sent > 0 {
            let datagram = self.build_compound(now, ntp_now, Some(reason));
            self.transmits.push_back(datagram);
        }
    }

    /// Takes in one RTCP datagram received at `now` (wall clock `ntp_now`). Malformed datagrams
    /// are counted and refused; nothing in them can disturb the session.
    pub fn handle_rtcp(
        &mut self,
        now: Instant,
        ntp_now: NtpTime,
        datagram: &[u8],
    ) -> Result<(), RtcpError> {
        let packets = parse_compound(datagram).inspect_err(|_| {
            self.stats.malformed_received += 1;
        })?;
        self.stats.reports_received += 1;
        self.average_in(datagram.len());
        for packet in packets {
            match packet {
                RtcpPacket::SenderReport {
                    ssrc,
                    sender,
                    blocks,
                } => {
                    if ssrc == self.config.ssrc {
                        continue; // our own report looped back
                    }
                    self.remote_ssrc = Some(ssrc);
                    self.remote_sr = Some((ssrc, sender.ntp.middle_32(), now));
                    self.remote_sr_since_report = true;
                    self.stats.remote_sender = Some(sender);
                    self.note_blocks(ntp_now, &blocks);
                }
                RtcpPacket::ReceiverReport { ssrc, blocks } => {
                    if ssrc == self.config.ssrc {
                        continue;
                    }
                    self.remote_ssrc = Some(ssrc);
                    self.note_blocks(ntp_now, &blocks);
                }
                RtcpPacket::SourceDescription(chunks) => {
                    for chunk in chunks {
                        if Some(chunk.ssrc) == self.remote_ssrc && chunk.cname.is_some() {
                            self.stats.remote_cname = chunk.cname;
                        }
                    }
                }
                RtcpPacket::Goodbye { ssrcs, reason } => {
                    if ssrcs.iter().any(|s| *s != self.config.ssrc) {
                        self.events.push_back(RtcpEvent::Goodbye { ssrcs, reason });
                    }
                }
                RtcpPacket::Other { .. } => {}
            }
        }
        Ok(())
    }

    /// The next datagram to send to the peer's RTCP address.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event for the call.
    pub fn poll_event(&mut self) -> Option<RtcpEvent> {
        self.events.pop_front()
    }

    /// When the next report is due; `None` after [`Self::close`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_report
    }

    /// The call's statistics so far.
    pub fn stats(&self) -> &RtcpStats {
        &self.stats
    }

    /// The current interval inputs (members, senders, bandwidth, average size...).
    pub fn interval_inputs(&self) -> IntervalInputs {
        let peer = self.remote_ssrc.is_some() || self.reception.is_some();
        let peer_sending = self.remote_sr_since_report
            || self
                .reception
                .is_some_and(|r| r.received_packets > self.received_at_report);
        let we_sent = self.we_sent();
        IntervalInputs {
            members: 1 + u32::from(peer),
            senders: u32::from(we_sent) + u32::from(peer_sending),
            rtcp_bandwidth: self.rtcp_bandwidth,
            we_sent,
            avg_rtcp_size: self.avg_rtcp_size,
            initial: self.initial,
            min_interval: self.config.min_interval,
        }
    }

    /// Whether we sent RTP since the report before last (6.3.8 `we_sent`; 6.4 SR vs RR).
    fn we_sent(&self) -> bool {
        self.stats.sent_packets > self.sent_at_reports[1]
    }

    fn draw_interval(&mut self) -> Duration {
        let random = self.rng.next_unit();
        rtcp_interval(&self.interval_inputs(), random)
    }

    fn average_in(&mut self, datagram_len: usize) {
        // 6.3.3: avg_rtcp_size = 1/16 * packet_size + 15/16 * avg_rtcp_size.
        let size = (datagram_len + UDP_IP_OVERHEAD) as f64;
        self.avg_rtcp_size = size / 16.0 + self.avg_rtcp_size * 15.0 / 16.0;
    }

    fn note_reception(&mut self, reception: Option<ReceptionStats>) {
        let Some(r) = reception else {
            return;
        };
        if self.reception.is_some_and(|old| old.ssrc != r.ssrc) {
            // A new source: its counts start afresh, and an SR from the old one is stale.
            self.priors = None;
            self.received_at_report = 0;
            self.remote_sr = None;
        }
        self.stats.received_packets = r.received_packets;
        self.stats.received_octets = r.received_octets;
        self.reception = Some(r);
    }

    fn note_blocks(&mut self, ntp_now: NtpTime, blocks: &[ReportBlock]) {
        let Some(block) = blocks.iter().find(|b| b.ssrc == self.config.ssrc) else {
            return;
        };
        self.stats.remote = Some(*block);
        if block.last_sr == 0 || !self.sent_srs.contains(&block.last_sr) {
            return;
        }
        if let Some(rtt) = round_trip(ntp_now, block.last_sr, block.delay_since_last_sr) {
            self.stats.rtt = Some(rtt);
            self.stats.smoothed_rtt = Some(match self.stats.smoothed_rtt {
                None => rtt,
                Some(srtt) => (srtt * 7 + rtt) / 8,
            });
        }
    }

    /// The report block about the peer's stream (A.3 arithmetic), advancing the priors.
    fn local_block(&mut self, now: Instant) -> Option<ReportBlock> {
        let r = self.reception?;
        let expected = r.expected();
        let (expected_prior, received_prior) = match self.priors {
            Some((ssrc, e, rx)) if ssrc == r.ssrc => (e, rx),
            _ => (0, 0),
        };
        self.priors = Some((r.ssrc, expected, r.received_packets));
        let (last_sr, delay_since_last_sr) = match self.remote_sr {
            Some((ssrc, lsr, at)) if ssrc == r.ssrc => (lsr, dlsr_units(now.duration_since(at))),
            _ => (0, 0),
        };
        Some(ReportBlock {
            ssrc: r.ssrc,
            fraction_lost: fraction_lost(
                expected,
                expected_prior,
                r.received_packets,
                received_prior,
            ),
            cumulative_lost: r.cumulative_lost(),
            extended_highest_seq: r.extended_highest_seq,
            jitter: r.jitter,
            last_sr,
            delay_since_last_sr,
        })
    }

    /// The RTP timestamp of our media clock at `now`, extrapolated from the last packet sent.
    fn rtp_timestamp_at(&self, now: Instant) -> u32 {
        let Some((sent_at, ts)) = self.last_rtp else {
            return 0;
        };
        let elapsed = now.saturating_duration_since(sent_at);
        let ticks = elapsed.as_nanos() * u128::from(self.config.clock_rate) / 1_000_000_000;
        ts.wrapping_add(ticks as u32)
    }

    fn build_compound(
        &mut self,
        now: Instant,
        ntp_now: NtpTime,
        bye: Option<Option<&str>>,
    ) -> Vec<u8> {
        let ssrc = self.config.ssrc;
        let blocks: Vec<ReportBlock> = self.local_block(now).into_iter().collect();
        self.stats.local = blocks.first().copied();
        let report = if self.we_sent() {
            let ntp = ntp_now;
            if self.sent_srs.len() == SENT_SR_MEMORY {
                self.sent_srs.pop_front();
            }
            self.sent_srs.push_back(ntp.middle_32());
            RtcpPacket::SenderReport {
                ssrc,
                sender: SenderInfo {
                    ntp,
                    rtp_timestamp: self.rtp_timestamp_at(now),
                    packet_count: self.stats.sent_packets as u32,
                    octet_count: self.stats.sent_octets as u32,
                },
                blocks,
            }
        } else {
            RtcpPacket::ReceiverReport { ssrc, blocks }
        };
        let mut out = Vec::with_capacity(128);
        report.write(&mut out);
        RtcpPacket::SourceDescription(vec![SdesChunk {
            ssrc,
            cname: Some(self.config.cname.clone()),
        }])
        .write(&mut out);
        if let Some(reason) = bye {
            RtcpPacket::Goodbye {
                ssrcs: vec![ssrc],
                reason: reason.map(str::to_owned),
            }
            .write(&mut out);
        }
        self.average_in(out.len());
        self.stats.reports_sent += 1;
        self.last_report = now;
        self.initial = false;
        self.sent_at_reports = [self.stats.sent_packets, self.sent_at_reports[0]];
        self.received_at_report = self.reception.map_or(0, |r| r.received_packets);
        self.remote_sr_since_report = false;
        out
    }
}

/// A duration in the 1/65536 s units of DLSR, saturating.
fn dlsr_units(d: Duration) -> u32 {
    let units = d.as_nanos() * 65_536 / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// Round-trip time per RFC 3550 6.4.1: `A - LSR - DLSR` in 16.16 seconds, where `A` is the
/// arrival time's middle 32 bits. `None` if the result is negative (a peer overstating its
/// delay, or a wall-clock step).
pub fn round_trip(arrival: NtpTime, last_sr: u32, delay_since_last_sr: u32) -> Option<Duration> {
    let units = arrival
        .middle_32()
        .wrapping_sub(last_sr)
        .wrapping_sub(delay_since_last_sr);
    // Modular arithmetic: anything in the upper half is a negative difference.
    if units > u32::MAX / 2 {
        return None;
    }
    Some(Duration::from_nanos(
        u64::from(units) * 1_000_000_000 / 65_536,
    ))
}

#[cfg(test)]
mod tests;
