//! The SDP model and its parser.
//!
//! The parser is lenient where real PBXes and phones are sloppy and strict only where the audio
//! path would otherwise be guessed:
//!
//! - lines may end in LF or CRLF and carry surrounding whitespace; blank lines, lines that are
//!   not `<letter>=<value>`, unknown line types and unknown attributes are skipped;
//! - `s=`, `t=` and `o=` may be missing, and a malformed `o=` is dropped rather than fatal
//!   (nothing in offer/answer depends on the remote origin);
//! - attribute names are case-insensitive, attributes may come in any order, and a malformed
//!   attribute (`a=rtpmap:x`) is skipped: the stream may still be usable without it;
//! - static payload types (0 PCMU, 3 GSM, 4 G723, 8 PCMA, 9 G722, 13 CN, 18 G729) resolve
//!   without an `a=rtpmap` ([`MediaDescription::rtpmap`]);
//! - `c=` may be at session or media level, IPv4 or IPv6.
//!
//! Strict: the body must start with `v=0` (anything else is not SDP), and `c=` and `m=` lines
//! must parse, because they decide where audio goes. Bodies over [`MAX_SDP_BYTES`],
//! [`MAX_SDP_LINES`] or [`MAX_SDP_MEDIA`] are refused before any work grows with them.

use std::net::IpAddr;

/// Largest SDP body accepted, in bytes; a real audio offer is well under 2 KiB.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Most lines accepted (counting blank ones).
pub const MAX_SDP_LINES: usize = 1000;
/// Most `m=` sections accepted.
pub const MAX_SDP_MEDIA: usize = 64;

/// Why a body is not usable SDP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is larger than [`MAX_SDP_BYTES`].
    #[error("SDP body is {len} bytes; the limit is {max}")]
    TooLarge {
        /// Size of the body.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body has more than [`MAX_SDP_LINES`] lines.
    #[error("SDP body has more than {max} lines")]
    TooManyLines {
        /// The limit.
        max: usize,
    },
    /// The body has more than [`MAX_SDP_MEDIA`] media sections.
    #[error("SDP body has more than {max} media sections")]
    TooManyMedia {
        /// The limit.
        max: usize,
    },
    /// The first field is not `v=`, or there is no field at all.
    #[error("SDP body does not start with v=")]
    MissingVersion,
    /// `v=` is not `0`, the only version there is.
    #[error("SDP version is not 0")]
    UnsupportedVersion,
    /// A `c=` line is not `IN IP4|IP6 <address>`.
    #[error("line {line}: malformed c= field")]
    InvalidConnection {
        /// 1-based line number.
        line: usize,
    },
    /// An `m=` line is not `<media> <port>[/<count>] <proto> <fmt>...`.
    #[error("line {line}: malformed m= field")]
    InvalidMedia {
        /// 1-based line number.
        line: usize,
    },
}

/// A parsed session description: session-level fields and the media sections in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=`, when present and well formed.
    pub origin: Option<Origin>,
    /// `s=`, when present.
    pub session_name: Option<String>,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// Session-level direction attribute.
    pub direction: Option<Direction>,
    /// The `m=` sections, in order.
    pub media: Vec<MediaDescription>,
}

impl SessionDescription {
    /// The connection address that applies to `media`: its own `c=`, else the session's.
    pub fn connection_for(&self, media: &MediaDescription) -> Option<IpAddr> {
        media
            .connection
            .or(self.connection)
            .map(|connection| connection.address)
    }

    /// The direction that applies to `media`: its own attribute, else the session's, else
    /// `sendrecv` (RFC 3264 section 5.1).
    pub fn direction_for(&self, media: &MediaDescription) -> Direction {
        media.direction.or(self.direction).unwrap_or_default()
    }
}

/// The `o=` field. Kept as text: some devices send ids beyond `u64`, and nothing is computed
/// from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// User name, `-` when none.
    pub username: String,
    /// Session id.
    pub session_id: String,
    /// Session version.
    pub session_version: String,
    /// Unicast address of the originator, as written.
    pub address: String,
}

/// A `c=` field. Only the address matters to a unicast audio stream; a multicast TTL or
/// address count suffix is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The connection address; `0.0.0.0` is old-style hold (RFC 2543).
    pub address: IpAddr,
}

/// A media direction attribute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv`, the default.
    #[default]
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The attribute name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The same stream seen from the other end; this is also the answer to an offered
    /// direction (RFC 3264 section 6.1).
    pub fn reversed(self) -> Self {
        match self {
            Self::SendRecv => Self::SendRecv,
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            Self::Inactive => Self::Inactive,
        }
    }

    /// Whether this end sends media.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// Whether this end receives media.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }

    fn from_attribute(name: &str) -> Option<Self> {
        match name {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }
}

/// The media type of an `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaKind {
    /// `audio`.
    Audio,
    /// `video`.
    Video,
    /// `text`.
    Text,
    /// `application`.
    Application,
    /// `message`.
    Message,
    /// `image` (T.38 fax).
    Image,
    /// Anything else, as written.
    Other(String),
}

impl MediaKind {
    fn from_token(token: &str) -> Self {
        match token.to_ascii_lowercase().as_str() {
            "audio" => Self::Audio,
            "video" => Self::Video,
            "text" => Self::Text,
            "application" => Self::Application,
            "message" => Self::Message,
            "image" => Self::Image,
            _ => Self::Other(token.to_owned()),
        }
    }

    /// The media type as it goes on an `m=` line.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Audio => "audio",
            Self::Video => "video",
            Self::Text => "text",
            Self::Application => "application",
            Self::Message => "message",
            Self::Image => "image",
            Self::Other(token) => token,
        }
    }
}

/// An `a=rtpmap` (or the static default for a well-known payload type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type, 0-127.
    pub payload_type: u8,
    /// Encoding name as written (compare case-insensitively).
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Channel count, when given.
    pub channels: Option<u16>,
}

/// An `a=fmtp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    /// Payload type, 0-127.
    pub payload_type: u8,
    /// The parameters, as written.
    pub parameters: String,
}

/// An `a=rtcp` (RFC 3605).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpAttribute {
    /// RTCP port.
    pub port: u16,
    /// RTCP address, when it differs from the RTP one.
    pub address: Option<IpAddr>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// Media type.
    pub kind: MediaKind,
    /// Transport port; 0 means the stream is disabled.
    pub port: u16,
    /// The `/<count>` after the port, when given.
    pub port_count: Option<u16>,
    /// Transport protocol as written (`RTP/AVP`, `RTP/SAVP`, `udptl`, ...).
    pub proto: String,
    /// Formats as written; for RTP these are payload type numbers ([`Self::payload_types`]).
    pub formats: Vec<String>,
    /// `a=rtpmap` lines, first per payload type.
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp` lines, first per payload type.
    pub fmtps: Vec<Fmtp>,
    /// `a=ptime`, in milliseconds.
    pub ptime_ms: Option<u32>,
    /// `a=maxptime`, in milliseconds.
    pub maxptime_ms: Option<u32>,
    /// Media-level direction attribute.
    pub direction: Option<Direction>,
    /// Media-level `c=`.
    pub connection: Option<Connection>,
    /// `a=rtcp`.
    pub rtcp: Option<RtcpAttribute>,
    /// `a=rtcp-mux` (RFC 5761).
    pub rtcp_mux: bool,
    /// `a=mid` (RFC 5888).
    pub mid: Option<String>,
}

impl MediaDescription {
    fn new(kind: MediaKind, port: u16, port_count: Option<u16>, proto: String) -> Self {
        Self {
            kind,
            port,
            port_count,
            proto,
            formats: Vec::new(),
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            ptime_ms: None,
            maxptime_ms: None,
            direction: None,
            connection: None,
            rtcp: None,
            rtcp_mux: false,
            mid: None,
        }
    }

    /// The formats that are RTP payload type numbers, in offer order.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats
            .iter()
            .filter_map(|format| format.parse::<u8>().ok())
            .filter(|pt| *pt <= 127)
    }

    /// Whether `payload_type` is listed on the `m=` line.
    pub fn lists(&self, payload_type: u8) -> bool {
        self.payload_types().any(|pt| pt == payload_type)
    }

    /// The mapping for `payload_type`: its `a=rtpmap`, else the static assignment of RFC 3551
    /// (phones commonly omit `a=rtpmap` for 0, 8, 9 and 18).
    pub fn rtpmap(&self, payload_type: u8) -> Option<RtpMap> {
        if let Some(map) = self
            .rtpmaps
            .iter()
            .find(|map| map.payload_type == payload_type)
        {
            return Some(map.clone());
        }
        let encoding = match payload_type {
            0 => "PCMU",
            3 => "GSM",
            4 => "G723",
            8 => "PCMA",
            9 => "G722",
            13 => "CN",
            18 => "G729",
            _ => return None,
        };
        Some(RtpMap {
            payload_type,
            encoding: encoding.to_owned(),
            clock_rate: 8000,
            channels: None,
        })
    }

    /// The `a=fmtp` parameters for `payload_type`.
    pub fn fmtp(&self, payload_type: u8) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|fmtp| fmtp.payload_type == payload_type)
            .map(|fmtp| fmtp.parameters.as_str())
    }
}

/// Parses an SDP body leniently (see the module docs); never panics.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_SDP_BYTES {
        return Err(SdpError::TooLarge {
            len: text.len(),
            max: MAX_SDP_BYTES,
        });
    }
    let mut session = SessionDescription::default();
    let mut seen_version = false;
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        if line > MAX_SDP_LINES {
            return Err(SdpError::TooManyLines { max: MAX_SDP_LINES });
        }
        let Some((kind, value)) = raw.trim().split_once('=') else {
            continue;
        };
        let mut kind_chars = kind.trim_end().chars();
        let (Some(kind), None) = (kind_chars.next(), kind_chars.next()) else {
            continue;
        };
        let value = value.trim();
        if !seen_version {
            if kind != 'v' {
                return Err(SdpError::MissingVersion);
            }
            if value != "0" {
                return Err(SdpError::UnsupportedVersion);
            }
            seen_version = true;
            continue;
        }
        match kind {
            'o' if session.media.is_empty() && session.origin.is_none() => {
                session.origin = parse_origin(value);
            }
            's' if session.media.is_empty() && session.session_name.is_none() => {
                session.session_name = Some(value.to_owned());
            }
            'c' => {
                let connection =
                    parse_connection(value).ok_or(SdpError::InvalidConnection { line })?;
                // The first c= wins: a second one would only add multicast addresses.
                let slot = match session.media.last_mut() {
                    Some(media) => &mut media.connection,
                    None => &mut session.connection,
                };
                slot.get_or_insert(connection);
            }
            'm' => {
                if session.media.len() >= MAX_SDP_MEDIA {
                    return Err(SdpError::TooManyMedia { max: MAX_SDP_MEDIA });
                }
                let media = parse_media(value).ok_or(SdpError::InvalidMedia { line })?;
                session.media.push(media);
            }
            'a' => apply_attribute(&mut session, value),
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::MissingVersion);
    }
    Ok(session)
}

fn parse_origin(value: &str) -> Option<Origin> {
    let mut fields = value.split_whitespace();
    let username = fields.next()?;
    let session_id = fields.next()?;
    let session_version = fields.next()?;
    let _net_type = fields.next()?;
    let _addr_type = fields.next()?;
    let address = fields.next()?;
    Some(Origin {
        username: username.to_owned(),
        session_id: session_id.to_owned(),
        session_version: session_version.to_owned(),
        address: address.to_owned(),
    })
}

/// `IN IP4 <addr>[/ttl[/count]]`; the address must be a literal because a sans-IO core cannot
/// resolve names.
fn parse_connection(value: &str) -> Option<Connection> {
    let mut fields = value.split_whitespace();
    if !fields.next()?.eq_ignore_ascii_case("IN") {
        return None;
    }
    let addr_type = fields.next()?;
    let address = fields.next()?;
    let address = address.split('/').next()?;
    let address = address.trim_start_matches('[').trim_end_matches(']');
    let address: IpAddr = address.parse().ok()?;
    // Lenient: a wrong IP4/IP6 label next to a literal that is clearly the other family is a
    // typo, not a reason to drop the call; any other label is refused.
    if !(addr_type.eq_ignore_ascii_case("IP4") || addr_type.eq_ignore_ascii_case("IP6")) {
        return None;
    }
    Some(Connection { address })
}

fn parse_media(value: &str) -> Option<MediaDescription> {
    let mut fields = value.split_whitespace();
    let kind = MediaKind::from_token(fields.next()?);
    let port_spec = fields.next()?;
    let (port, port_count) = match port_spec.split_once('/') {
        Some((port, count)) => (port.parse().ok()?, Some(count.parse().ok()?)),
        None => (port_spec.parse().ok()?, None),
    };
    let proto = fields.next()?.to_owned();
    let mut media = MediaDescription::new(kind, port, port_count, proto);
    media.formats = fields.map(str::to_owned).collect();
    Some(media)
}

fn apply_attribute(session: &mut SessionDescription, value: &str) {
    let (name, argument) = match value.split_once(':') {
        Some((name, argument)) => (name.trim(), argument.trim()),
        None => (value, ""),
    };
    let name = name.to_ascii_lowercase();
    if let Some(direction) = Direction::from_attribute(&name) {
        // Last one wins, as most stacks do when a sloppy peer repeats itself.
        match session.media.last_mut() {
            Some(media) => media.direction = Some(direction),
            None => session.direction = Some(direction),
        }
        return;
    }
    // Every other attribute we understand is media-level only.
    let Some(media) = session.media.last_mut() else {
        return;
    };
    match name.as_str() {
        "rtpmap" => {
            if let Some(map) = parse_rtpmap(argument)
                && !media
                    .rtpmaps
                    .iter()
                    .any(|known| known.payload_type == map.payload_type)
            {
                media.rtpmaps.push(map);
            }
        }
        "fmtp" => {
            if let Some(fmtp) = parse_fmtp(argument)
                && !media
                    .fmtps
                    .iter()
                    .any(|known| known.payload_type == fmtp.payload_type)
            {
                media.fmtps.push(fmtp);
            }
        }
        "ptime" => media.ptime_ms = parse_milliseconds(argument).or(media.ptime_ms),
        "maxptime" => media.maxptime_ms = parse_milliseconds(argument).or(media.maxptime_ms),
        "rtcp" => media.rtcp = parse_rtcp(argument).or(media.rtcp),
        "rtcp-mux" => media.rtcp_mux = true,
        "mid" => {
            if let Some(mid) = argument.split_whitespace().next() {
                media.mid = Some(mid.to_owned());
            }
        }
        _ => {}
    }
}

fn parse_payload_type(token: &str) -> Option<u8> {
    token.parse::<u8>().ok().filter(|pt| *pt <= 127)
}

fn parse_rtpmap(argument: &str) -> Option<RtpMap> {
    let mut fields = argument.split_whitespace();
    let payload_type = parse_payload_type(fields.next()?)?;
    let mut spec = fields.next()?.split('/');
    let encoding = spec.next().filter(|name| !name.is_empty())?;
    let clock_rate = spec.next()?.parse().ok()?;
    let channels = match spec.next() {
        Some(channels) => Some(channels.parse().ok()?),
        None => None,
    };
    Some(RtpMap {
        payload_type,
        encoding: encoding.to_owned(),
        clock_rate,
        channels,
    })
}

fn parse_fmtp(argument: &str) -> Option<Fmtp> {
    let (payload_type, parameters) = match argument.split_once(char::is_whitespace) {
        Some((payload_type, parameters)) => (payload_type, parameters.trim()),
        None => (argument, ""),
    };
    Some(Fmtp {
        payload_type: parse_payload_type(payload_type)?,
        parameters: parameters.to_owned(),
    })
}

/// `20`, and the `20.0` some phones write.
fn parse_milliseconds(argument: &str) -> Option<u32> {
    let whole = argument.split('.').next()?;
    whole.parse().ok()
}

fn parse_rtcp(argument: &str) -> Option<RtcpAttribute> {
    let (port, rest) = match argument.split_once(char::is_whitespace) {
        Some((port, rest)) => (port, rest.trim()),
        None => (argument, ""),
    };
    let port = port.parse().ok()?;
    let address = if rest.is_empty() {
        None
    } else {
        // A malformed address part leaves the port usable with the RTP address.
        parse_connection(rest).map(|connection| connection.address)
    };
    Some(RtcpAttribute { port, address })
}
