//! RFC 3264 offer/answer for one audio stream.
//!
//! We carry exactly one audio stream per call. Answering picks the first `m=audio` line that is
//! enabled (port not 0), plain RTP (`RTP/AVP` or `RTP/AVPF`; we have no SRTP, so `RTP/SAVP`
//! streams are rejected rather than answered falsely) and has a codec we speak. Codec choice
//! follows *our* preference order ([`CodecPrefs`]), not the offer's, and keeps the offer's
//! payload type numbers. Every other `m=` line is answered with port 0 in the same position,
//! as RFC 3264 section 6 requires.
//!
//! Whether we answered or offered, the outcome is one [`Negotiated`]; a re-INVITE's outcome is
//! compared with the previous one ([`Negotiated::changes_since`]) to see hold, resume, a moved
//! remote or a codec change.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::session::{Direction, MediaDescription, MediaKind, RtpMap, SessionDescription};

/// The warn-agent of our `Warning` headers (RFC 3261 section 20.43 allows a pseudonym).
const WARN_AGENT: &str = "sip-realtime-bridge";
/// Packetisation when the peer states none, or one we do not accept.
const DEFAULT_PTIME_MS: u32 = 20;
/// Payload types of our own offers for the dynamic encodings.
const OFFER_PT_OPUS: u8 = 111;
const OFFER_PT_EVENT_8K: u8 = 101;
const OFFER_PT_EVENT_48K: u8 = 110;
/// At most this many offered encodings are listed in a `Warning`, to keep the header short.
const MAX_WARNING_ENCODINGS: usize = 8;

/// Why no audio stream could be agreed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// The description has no enabled `m=audio` line.
    #[error("no audio stream offered")]
    NoAudioStream,
    /// The only audio streams use a transport we do not speak (SRTP, ...).
    #[error("audio transport {proto} is not supported")]
    UnsupportedTransport {
        /// The offered transport.
        proto: String,
    },
    /// No offered audio codec is one we have enabled.
    #[error("no common codec; offered: {}", offered.join(", "))]
    NoCommonCodec {
        /// The offered encodings (`name/rate`), sanitised for use in a header.
        offered: Vec<String>,
    },
    /// The chosen audio stream has no `c=` at either level.
    #[error("audio stream has no connection address")]
    MissingConnection,
    /// The answer to our offer has no `m=` line where our audio was.
    #[error("answer has {answered} media lines; our offer had {offered}")]
    MediaCountMismatch {
        /// `m=` lines in our offer.
        offered: usize,
        /// `m=` lines in the answer.
        answered: usize,
    },
    /// The answer to our offer rejected our audio stream (port 0 or another media type).
    #[error("answer rejected our audio stream")]
    AudioRejected,
}

impl NegotiationError {
    /// The value of the `Warning` header (RFC 3261 section 20.43) for the 488 that refuses the
    /// offer, e.g. `305 sip-realtime-bridge "Incompatible media format: ..."`; the caller adds
    /// the header name.
    pub fn warning_header(&self) -> String {
        let (code, text) = match self {
            Self::NoAudioStream => (304, "Media type not available".to_owned()),
            Self::UnsupportedTransport { proto } => (
                302,
                format!(
                    "Incompatible transport protocol: {}",
                    quoted_string_safe(proto)
                ),
            ),
            Self::NoCommonCodec { offered } => (
                305,
                format!(
                    "Incompatible media format: offered {}",
                    if offered.is_empty() {
                        "nothing".to_owned()
                    } else {
                        offered.join(", ")
                    }
                ),
            ),
            Self::MissingConnection => (301, "Incompatible network address formats".to_owned()),
            Self::MediaCountMismatch { .. } | Self::AudioRejected => {
                (399, "Answer does not match the offer".to_owned())
            }
        };
        format!("{code} {WARN_AGENT} \"{text}\"")
    }
}

/// An audio codec we can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
    /// Opus (RFC 7587), `opus/48000/2`, dynamic payload type.
    Opus,
}

impl Codec {
    /// The encoding name as written in `a=rtpmap`.
    pub fn encoding(self) -> &'static str {
        match self {
            Self::Pcmu => "PCMU",
            Self::Pcma => "PCMA",
            Self::Opus => "opus",
        }
    }

    /// RTP clock rate in Hz.
    pub fn clock_rate(self) -> u32 {
        match self {
            Self::Pcmu | Self::Pcma => 8000,
            Self::Opus => 48000,
        }
    }

    /// Channel count of the RTP format (Opus is always signalled as 2, RFC 7587).
    pub fn channels(self) -> u16 {
        match self {
            Self::Pcmu | Self::Pcma => 1,
            Self::Opus => 2,
        }
    }

    fn static_payload_type(self) -> Option<u8> {
        match self {
            Self::Pcmu => Some(0),
            Self::Pcma => Some(8),
            Self::Opus => None,
        }
    }

    fn matches(self, map: &RtpMap) -> bool {
        // Lenient on channels: a missing count means 1, and some Opus offers omit the `/2`.
        let channels_ok = match self {
            Self::Pcmu | Self::Pcma => matches!(map.channels, None | Some(1)),
            Self::Opus => matches!(map.channels, None | Some(2)),
        };
        map.encoding.eq_ignore_ascii_case(self.encoding())
            && map.clock_rate == self.clock_rate()
            && channels_ok
    }

    fn rtpmap_value(self, payload_type: u8) -> String {
        match self {
            Self::Opus => format!("{payload_type} opus/48000/2"),
            Self::Pcmu | Self::Pcma => format!("{payload_type} {}/8000", self.encoding()),
        }
    }
}

/// Our enabled codecs, most preferred first. Opus is offered and accepted only when listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecPrefs {
    codecs: Vec<Codec>,
}

impl CodecPrefs {
    /// Preferences in the given order; duplicates are dropped and an empty list means the
    /// default (PCMU, PCMA), because a call with no codec at all is never what was configured.
    pub fn new(codecs: impl IntoIterator<Item = Codec>) -> Self {
        let mut unique = Vec::new();
        for codec in codecs {
            if !unique.contains(&codec) {
                unique.push(codec);
            }
        }
        if unique.is_empty() {
            return Self::default();
        }
        Self { codecs: unique }
    }

    /// The codecs, most preferred first.
    pub fn codecs(&self) -> &[Codec] {
        &self.codecs
    }
}

impl Default for CodecPrefs {
    fn default() -> Self {
        Self {
            codecs: vec![Codec::Pcmu, Codec::Pcma],
        }
    }
}

/// Our side of the media session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// Address our RTP socket is reachable at (goes in `o=` and `c=`).
    pub address: IpAddr,
    /// Our RTP port; RTCP is on the next port unless rtcp-mux is agreed.
    pub rtp_port: u16,
    /// `o=` session id, fixed for the dialog.
    pub session_id: u64,
    /// `o=` session version; call [`Self::bump_version`] before each new description in the
    /// dialog (RFC 3264 section 8).
    pub session_version: u64,
    /// `o=` user name; `-` when empty or not a single token.
    pub username: String,
}

impl LocalMedia {
    /// Local media with user name `-`.
    pub fn new(address: IpAddr, rtp_port: u16, session_id: u64, session_version: u64) -> Self {
        Self {
            address,
            rtp_port,
            session_id,
            session_version,
            username: "-".to_owned(),
        }
    }

    /// Increments the session version for the next offer or answer in the same dialog.
    pub fn bump_version(&mut self) {
        self.session_version = self.session_version.wrapping_add(1);
    }

    fn username(&self) -> &str {
        let valid = !self.username.is_empty()
            && self
                .username
                .bytes()
                .all(|byte| byte.is_ascii_graphic() && byte != b'"');
        if valid { &self.username } else { "-" }
    }

    /// `v=` to `t=`: identical for offers and answers.
    fn write_session_header(&self, out: &mut String) {
        let addr_type = address_type(self.address);
        push_line(out, format_args!("v=0"));
        push_line(
            out,
            format_args!(
                "o={} {} {} IN {addr_type} {}",
                self.username(),
                self.session_id,
                self.session_version,
                self.address
            ),
        );
        push_line(out, format_args!("s=-"));
        push_line(out, format_args!("c=IN {addr_type} {}", self.address));
        push_line(out, format_args!("t=0 0"));
    }
}

/// The agreed terms of the audio stream, from our side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The codec we send and expect.
    pub codec: Codec,
    /// Its payload type (the offerer's number).
    pub payload_type: u8,
    /// RTP clock rate in Hz.
    pub clock_rate: u32,
    /// Channel count of the RTP format.
    pub channels: u16,
    /// Packetisation in milliseconds.
    pub ptime_ms: u32,
    /// `telephone-event` payload type at the codec's clock rate, when both sides have it.
    pub telephone_event_pt: Option<u8>,
    /// Where to send RTP. An unspecified address or port 0 is old-style hold.
    pub remote_rtp: SocketAddr,
    /// Where to send RTCP: the RTP address under rtcp-mux, else `a=rtcp`, else the RTP port
    /// plus one (RFC 3550); `None` when there is nowhere to send.
    pub remote_rtcp: Option<SocketAddr>,
    /// Whether RTP and RTCP share a port (RFC 5761).
    pub rtcp_mux: bool,
    /// Our direction: the direction in our answer, or the reverse of the peer's answer to our
    /// offer.
    pub direction: Direction,
}

impl Negotiated {
    /// Whether the peer has put us on hold: it does not want our media (it answered or offered
    /// `sendonly`/`inactive`) or gave no address to send it to (`c=0.0.0.0` or port 0).
    pub fn is_hold(&self) -> bool {
        !self.direction.sends()
            || self.remote_rtp.ip().is_unspecified()
            || self.remote_rtp.port() == 0
    }

    /// What changed from `previous` (the terms before a re-INVITE) to `self`.
    pub fn changes_since(&self, previous: &Negotiated) -> MediaChange {
        let (was_held, is_held) = (previous.is_hold(), self.is_hold());
        MediaChange {
            hold_started: !was_held && is_held,
            resumed: was_held && !is_held,
            remote_moved: previous.remote_rtp != self.remote_rtp
                || previous.remote_rtcp != self.remote_rtcp,
            codec_changed: previous.codec != self.codec
                || previous.payload_type != self.payload_type
                || previous.ptime_ms != self.ptime_ms
                || previous.telephone_event_pt != self.telephone_event_pt,
            direction_changed: previous.direction != self.direction,
        }
    }
}

/// The difference between two [`Negotiated`] terms of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaChange {
    /// The peer put the call on hold.
    pub hold_started: bool,
    /// The peer took the call off hold.
    pub resumed: bool,
    /// The RTP or RTCP destination changed.
    pub remote_moved: bool,
    /// Codec, payload type, ptime or telephone-event changed.
    pub codec_changed: bool,
    /// Our direction changed.
    pub direction_changed: bool,
}

impl MediaChange {
    /// Whether nothing changed (a session refresh).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Our answer: the body to send and the terms it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The SDP body, CRLF line ends.
    pub sdp: String,
    /// The agreed terms.
    pub negotiated: Negotiated,
}

/// Answers `offer` (RFC 3264 section 6): see the module docs for the rules.
pub fn answer(
    offer: &SessionDescription,
    local: &LocalMedia,
    prefs: &CodecPrefs,
) -> Result<Answer, NegotiationError> {
    let mut first_error = None;
    let mut chosen = None;
    for (index, media) in offer.media.iter().enumerate() {
        if media.kind != MediaKind::Audio || media.port == 0 {
            continue;
        }
        match answer_stream(offer, media, prefs) {
            Ok(terms) => {
                chosen = Some((index, terms));
                break;
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    let Some((chosen_index, terms)) = chosen else {
        return Err(first_error.unwrap_or(NegotiationError::NoAudioStream));
    };

    let mut sdp = String::new();
    local.write_session_header(&mut sdp);
    for (index, media) in offer.media.iter().enumerate() {
        if index == chosen_index {
            write_answered_audio(&mut sdp, media, local, &terms);
        } else {
            write_rejected(&mut sdp, media);
        }
    }
    Ok(Answer {
        sdp,
        negotiated: terms.negotiated,
    })
}

/// Builds our offer for an offerless INVITE (or a re-INVITE we start): one `m=audio` with every
/// enabled codec in preference order, `telephone-event` at each clock rate in use, 20 ms,
/// `sendrecv`.
pub fn offer(local: &LocalMedia, prefs: &CodecPrefs) -> String {
    let codecs = prefs.codecs();
    let payload_type = |codec: Codec| codec.static_payload_type().unwrap_or(OFFER_PT_OPUS);
    let has_g711 = codecs.iter().any(|codec| codec.clock_rate() == 8000);
    let has_opus = codecs.contains(&Codec::Opus);
    let mut events = Vec::new();
    if has_g711 {
        events.push((OFFER_PT_EVENT_8K, 8000));
    }
    if has_opus {
        events.push((OFFER_PT_EVENT_48K, 48000));
    }

    let mut sdp = String::new();
    local.write_session_header(&mut sdp);
    let mut m_line = format!("m=audio {} RTP/AVP", local.rtp_port);
    for codec in codecs {
        let _ = write!(m_line, " {}", payload_type(*codec));
    }
    for (pt, _) in &events {
        let _ = write!(m_line, " {pt}");
    }
    push_line(&mut sdp, format_args!("{m_line}"));
    for codec in codecs {
        push_line(
            &mut sdp,
            format_args!("a=rtpmap:{}", codec.rtpmap_value(payload_type(*codec))),
        );
    }
    for (pt, rate) in &events {
        push_line(
            &mut sdp,
            format_args!("a=rtpmap:{pt} telephone-event/{rate}"),
        );
        push_line(&mut sdp, format_args!("a=fmtp:{pt} 0-16"));
    }
    push_line(&mut sdp, format_args!("a=ptime:{DEFAULT_PTIME_MS}"));
    push_line(&mut sdp, format_args!("a=sendrecv"));
    sdp
}

/// Interprets the peer's answer to `our_offer` (the body of a 2xx, or of the ACK after an
/// offerless INVITE). The answer picks the codec: its first listed format that we offered and
/// support.
pub fn negotiate_answer(
    our_offer: &SessionDescription,
    their_answer: &SessionDescription,
) -> Result<Negotiated, NegotiationError> {
    let (index, offered) = our_offer
        .media
        .iter()
        .enumerate()
        .find(|(_, media)| media.kind == MediaKind::Audio && media.port != 0)
        .ok_or(NegotiationError::NoAudioStream)?;
    let answered = their_answer
        .media
        .get(index)
        .ok_or(NegotiationError::MediaCountMismatch {
            offered: our_offer.media.len(),
            answered: their_answer.media.len(),
        })?;
    if answered.kind != MediaKind::Audio || answered.port == 0 {
        return Err(NegotiationError::AudioRejected);
    }
    let ours = [Codec::Pcmu, Codec::Pcma, Codec::Opus];
    let (codec, payload_type) = answered
        .payload_types()
        .filter(|pt| offered.lists(*pt))
        .find_map(|pt| {
            // A sloppy answer may omit the rtpmap of a dynamic type; ours is authoritative.
            let map = answered.rtpmap(pt).or_else(|| offered.rtpmap(pt))?;
            let codec = ours.into_iter().find(|codec| codec.matches(&map))?;
            Some((codec, pt))
        })
        .ok_or_else(|| NegotiationError::NoCommonCodec {
            offered: describe_encodings(answered),
        })?;
    let telephone_event_pt = answered
        .payload_types()
        .filter(|pt| offered.lists(*pt))
        .find(|pt| {
            answered
                .rtpmap(*pt)
                .or_else(|| offered.rtpmap(*pt))
                .is_some_and(|map| is_telephone_event(&map, codec.clock_rate()))
        });
    let rtcp_mux = offered.rtcp_mux && answered.rtcp_mux;
    let direction = their_answer.direction_for(answered).reversed();
    stream_terms(
        their_answer,
        answered,
        codec,
        payload_type,
        telephone_event_pt,
        rtcp_mux,
        direction,
    )
    .map(|terms| terms.negotiated)
}

/// What [`answer`] agreed for the chosen stream, plus what only the rendering needs.
struct StreamTerms {
    negotiated: Negotiated,
    /// Whether the offer stated a ptime, so the answer echoes one.
    ptime_offered: bool,
}

fn answer_stream(
    offer: &SessionDescription,
    media: &MediaDescription,
    prefs: &CodecPrefs,
) -> Result<StreamTerms, NegotiationError> {
    if !is_plain_rtp(&media.proto) {
        return Err(NegotiationError::UnsupportedTransport {
            proto: media.proto.clone(),
        });
    }
    let (codec, payload_type) = prefs
        .codecs()
        .iter()
        .find_map(|codec| {
            media
                .payload_types()
                .find(|pt| media.rtpmap(*pt).is_some_and(|map| codec.matches(&map)))
                .map(|pt| (*codec, pt))
        })
        .ok_or_else(|| NegotiationError::NoCommonCodec {
            offered: describe_encodings(media),
        })?;
    let telephone_event_pt = telephone_event(media, codec.clock_rate());
    let direction = offer.direction_for(media).reversed();
    stream_terms(
        offer,
        media,
        codec,
        payload_type,
        telephone_event_pt,
        media.rtcp_mux,
        direction,
    )
}

/// The remote addresses and ptime of `media` (from the description `remote` that holds it).
fn stream_terms(
    remote: &SessionDescription,
    media: &MediaDescription,
    codec: Codec,
    payload_type: u8,
    telephone_event_pt: Option<u8>,
    rtcp_mux: bool,
    direction: Direction,
) -> Result<StreamTerms, NegotiationError> {
    let ip = remote
        .connection_for(media)
        .ok_or(NegotiationError::MissingConnection)?;
    let remote_rtp = SocketAddr::new(ip, media.port);
    let remote_rtcp = if media.port == 0 || ip.is_unspecified() {
        None
    } else if rtcp_mux {
        Some(remote_rtp)
    } else if let Some(rtcp) = media.rtcp {
        Some(SocketAddr::new(rtcp.address.unwrap_or(ip), rtcp.port))
    } else {
        media
            .port
            .checked_add(1)
            .map(|port| SocketAddr::new(ip, port))
    };
    Ok(StreamTerms {
        negotiated: Negotiated {
            codec,
            payload_type,
            clock_rate: codec.clock_rate(),
            channels: codec.channels(),
            ptime_ms: accepted_ptime(media),
            telephone_event_pt,
            remote_rtp,
            remote_rtcp,
            rtcp_mux,
            direction,
        },
        ptime_offered: media.ptime_ms.is_some(),
    })
}

/// The offered ptime when it is a whole number of 10 ms frames from 10 to 60 (what every codec
/// we carry can packetise), else `maxptime` if that is below our default, else 20 ms.
fn accepted_ptime(media: &MediaDescription) -> u32 {
    let usable = |ms: u32| (10..=60).contains(&ms) && ms.is_multiple_of(10);
    match (media.ptime_ms, media.maxptime_ms) {
        (Some(ptime), _) if usable(ptime) => ptime,
        (_, Some(max)) if usable(max) && max < DEFAULT_PTIME_MS => max,
        _ => DEFAULT_PTIME_MS,
    }
}

fn is_plain_rtp(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/AVP") || proto.eq_ignore_ascii_case("RTP/AVPF")
}

/// The first listed `telephone-event` payload type at `clock_rate`.
fn telephone_event(media: &MediaDescription, clock_rate: u32) -> Option<u8> {
    media.payload_types().find(|pt| {
        media
            .rtpmap(*pt)
            .is_some_and(|map| is_telephone_event(&map, clock_rate))
    })
}

fn is_telephone_event(map: &RtpMap, clock_rate: u32) -> bool {
    map.encoding.eq_ignore_ascii_case("telephone-event") && map.clock_rate == clock_rate
}

/// The offered encodings as `name/rate`, for the `Warning` text.
fn describe_encodings(media: &MediaDescription) -> Vec<String> {
    media
        .payload_types()
        .filter_map(|pt| media.rtpmap(pt))
        .filter(|map| !map.encoding.eq_ignore_ascii_case("telephone-event"))
        .map(|map| format!("{}/{}", quoted_string_safe(&map.encoding), map.clock_rate))
        .take(MAX_WARNING_ENCODINGS)
        .collect()
}

/// Peer text made safe inside a quoted-string: printable ASCII without `"` or `\`.
fn quoted_string_safe(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .take(32)
        .collect()
}

fn write_answered_audio(
    out: &mut String,
    media: &MediaDescription,
    local: &LocalMedia,
    terms: &StreamTerms,
) {
    let negotiated = &terms.negotiated;
    let pt = negotiated.payload_type;
    match negotiated.telephone_event_pt {
        Some(event) => push_line(
            out,
            format_args!("m=audio {} {} {pt} {event}", local.rtp_port, media.proto),
        ),
        None => push_line(
            out,
            format_args!("m=audio {} {} {pt}", local.rtp_port, media.proto),
        ),
    }
    push_line(
        out,
        format_args!("a=rtpmap:{}", negotiated.codec.rtpmap_value(pt)),
    );
    if let Some(event) = negotiated.telephone_event_pt {
        push_line(
            out,
            format_args!("a=rtpmap:{event} telephone-event/{}", negotiated.clock_rate),
        );
        push_line(out, format_args!("a=fmtp:{event} 0-16"));
    }
    if terms.ptime_offered {
        push_line(out, format_args!("a=ptime:{}", negotiated.ptime_ms));
    }
    if let Some(mid) = &media.mid {
        push_line(out, format_args!("a=mid:{mid}"));
    }
    if negotiated.rtcp_mux {
        push_line(out, format_args!("a=rtcp-mux"));
    }
    push_line(out, format_args!("a={}", negotiated.direction.as_str()));
}

/// A refused stream: port 0, the offer's type, transport and formats (RFC 3264 section 6).
fn write_rejected(out: &mut String, media: &MediaDescription) {
    let formats = if media.formats.is_empty() {
        // An m= line needs at least one format; any will do on a rejected line.
        "0".to_owned()
    } else {
        media.formats.join(" ")
    };
    push_line(
        out,
        format_args!("m={} 0 {} {formats}", media.kind.as_str(), media.proto),
    );
    if let Some(mid) = &media.mid {
        push_line(out, format_args!("a=mid:{mid}"));
    }
}

fn address_type(address: IpAddr) -> &'static str {
    match address {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

fn push_line(out: &mut String, line: std::fmt::Arguments<'_>) {
    // Writing into a String cannot fail.
    let _ = out.write_fmt(line);
    out.push_str("\r\n");
}
