//! SIP messages: framing, parsing with the checks RFC 4475 expects of a parser, typed
//! accessors, and the replies a UAS builds from a request (or from what could be salvaged of
//! an unparseable one).
//!
//! The path of received bytes is: [`frame_datagram`] or [`StreamFramer`] finds the message
//! boundary; [`parse`] splits the head into unfolded header fields with compact names
//! expanded (the private `head` module), reads the start line and the headers every transaction needs, and
//! checks them; the result is a [`SipMessage`] whose accessors return parsed values. When
//! parsing fails, the [`ParseError`] carries the raw Via, From, To, Call-ID and CSeq values
//! it could find, so [`build_bad_request`] can still answer 400 (or 505/416, see
//! [`build_error_response`]).
//!
//! ## rsip 0.4 and its gaps
//!
//! rsip was run over the 62 torture messages of RFC 4475 and RFC 5118. It refuses 14 whose
//! verdict is "parse" (every IPv6 reference, extension methods, most of the unusual but
//! well-formed messages of RFC 4475 3.1.1) and four that a lenient parser should take
//! (extra SP in the request line, escaped URI headers); its typed Via fails on two more
//! (IPv6 sent-by). It accepts eight that must be rejected (`<sip:...>` as Request-URI, empty
//! Via parameters, an open quote or a comma in a display name, CSeq method mismatch,
//! Content-Length negative or beyond the body). It knows no compact header names (`i:` is
//! an unknown header to it) and a folded header line is a tokenizer error. So the parser
//! here does not depend on it; [`SipMessage::to_rsip`] hands a message to rsip after the gap
//! fixes (long names, unfolded lines, exact body) for code that wants rsip's types.

mod addr;
mod framing;
mod head;
mod reply;

use std::fmt;

pub use addr::{HostPort, NameAddr, Uri, Via};
pub use framing::{Frame, FrameError, FramingLimits, StreamFramer, frame_datagram};
pub use head::{Param, sanitize, split_outside};
pub use reply::{build_bad_request, build_error_response, build_response};

/// Longest text copied from the wire into an error (version strings, schemes).
const ERROR_TEXT_MAX: usize = 40;

/// One header field: long name (compact forms expanded, case as received) and unfolded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name.
    pub name: String,
    /// Value with continuation lines joined.
    pub value: String,
}

/// The CSeq header: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number (below 2^31, RFC 3261 8.1.1.5).
    pub seq: u32,
    /// Method.
    pub method: String,
}

/// Session-Expires (RFC 4028): interval and who refreshes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionExpires {
    /// Interval in seconds.
    pub delta: u32,
    /// `uac` or `uas`, if given.
    pub refresher: Option<String>,
}

/// What could be read from a message that did not parse: the header values a 400 copies
/// (RFC 3261 8.2.6). Values are raw (unfolded, not validated); builders sanitize them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvage {
    /// The request method, if the start line had one.
    pub method: Option<String>,
    /// Every Via header value, in order.
    pub vias: Vec<String>,
    /// The first From value.
    pub from: Option<String>,
    /// The first To value.
    pub to: Option<String>,
    /// The first Call-ID value.
    pub call_id: Option<String>,
    /// The first CSeq value.
    pub cseq: Option<String>,
}

impl Salvage {
    fn from_fields(method: Option<String>, fields: &[head::Field]) -> Self {
        let first = |name: &str| {
            fields
                .iter()
                .find(|f| {
                    f.name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                })
                .map(|f| f.value.clone())
        };
        Self {
            method,
            vias: fields
                .iter()
                .filter(|f| {
                    f.name
                        .as_deref()
                        .is_some_and(|n| n.eq_ignore_ascii_case("Via"))
                })
                .map(|f| f.value.clone())
                .collect(),
            from: first("From"),
            to: first("To"),
            call_id: first("Call-ID"),
            cseq: first("CSeq"),
        }
    }
}

/// Why bytes are not an acceptable SIP message. Every variant but those that only responses
/// can produce carries the [`Salvage`] of a request (`None` for responses, which are dropped,
/// and when not even a head was found).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The message boundary is wrong: no head, or Content-Length invalid or beyond the body.
    #[error("framing: {source}")]
    Framing {
        /// What was wrong.
        source: FrameError,
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
    /// The start line is neither a request line nor a status line.
    #[error("malformed start line")]
    MalformedStartLine {
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
    /// A SIP version other than 2.0 (a UAS answers 505).
    #[error("unsupported SIP version {version:?}")]
    UnsupportedVersion {
        /// The version as received (sanitized, truncated).
        version: String,
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
    /// The Request-URI is not a URI (brackets, embedded LWS, unbracketed IPv6, bad port).
    #[error("malformed Request-URI")]
    MalformedRequestUri {
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
    /// A Request-URI scheme other than sip, sips or tel (a UAS answers 416).
    #[error("unsupported URI scheme {scheme:?}")]
    UnsupportedUriScheme {
        /// The scheme (lower-cased, truncated).
        scheme: String,
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
    /// A status code that is not three digits from 100 to 699.
    #[error("invalid status code")]
    InvalidStatusCode,
    /// A header line without `name:` (or a continuation line before the first header).
    #[error("malformed header line {line}")]
    MalformedHeaderLine {
        /// 1-based line number in the head.
        line: usize,
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
    /// A header every request and response needs is absent.
    #[error("missing {name} header")]
    MissingHeader {
        /// Header name.
        name: &'static str,
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
    /// A single-valued header appears more than once (RFC 4475 3.3.8).
    #[error("more than one {name} header")]
    DuplicateHeader {
        /// Header name.
        name: &'static str,
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
    /// A header the parser needs has a value it cannot read.
    #[error("invalid {name} header")]
    InvalidHeader {
        /// Header name.
        name: &'static str,
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
    /// The CSeq method differs from the request method (RFC 4475 3.1.2.17).
    #[error("CSeq method {cseq_method:?} does not match request method {method:?}")]
    CSeqMethodMismatch {
        /// Method of the request line.
        method: String,
        /// Method in CSeq.
        cseq_method: String,
        /// Salvaged request headers.
        salvage: Option<Box<Salvage>>,
    },
}

impl ParseError {
    /// The salvaged request headers, if the message was a request with a head.
    pub fn salvage(&self) -> Option<&Salvage> {
        match self {
            Self::Framing { salvage, .. }
            | Self::MalformedStartLine { salvage }
            | Self::UnsupportedVersion { salvage, .. }
            | Self::MalformedRequestUri { salvage }
            | Self::UnsupportedUriScheme { salvage, .. }
            | Self::MalformedHeaderLine { salvage, .. }
            | Self::MissingHeader { salvage, .. }
            | Self::DuplicateHeader { salvage, .. }
            | Self::InvalidHeader { salvage, .. }
            | Self::CSeqMethodMismatch { salvage, .. } => salvage.as_deref(),
            Self::InvalidStatusCode => None,
        }
    }

    /// The salvaged request headers, to stamp the top Via before a reply is built.
    pub fn salvage_mut(&mut self) -> Option<&mut Salvage> {
        match self {
            Self::Framing { salvage, .. }
            | Self::MalformedStartLine { salvage }
            | Self::UnsupportedVersion { salvage, .. }
            | Self::MalformedRequestUri { salvage }
            | Self::UnsupportedUriScheme { salvage, .. }
            | Self::MalformedHeaderLine { salvage, .. }
            | Self::MissingHeader { salvage, .. }
            | Self::DuplicateHeader { salvage, .. }
            | Self::InvalidHeader { salvage, .. }
            | Self::CSeqMethodMismatch { salvage, .. } => salvage.as_deref_mut(),
            Self::InvalidStatusCode => None,
        }
    }

    /// The status a UAS answers with when a reply can be addressed: 505 for the version,
    /// 416 for the scheme, 400 otherwise.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::UnsupportedVersion { .. } => 505,
            Self::UnsupportedUriScheme { .. } => 416,
            _ => 400,
        }
    }
}

/// The first line of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StartLine {
    Request { method: String, uri: Uri },
    Response { code: u16, reason: String },
}

/// A parsed SIP request or response. Construct with [`parse`]; the headers every transaction
/// needs (Via, From, To, Call-ID, CSeq) are present and valid, the rest is parsed on access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    start: StartLine,
    headers: Vec<Header>,
    body: Vec<u8>,
    top_via: Via,
    vias: Vec<Via>,
    from: NameAddr,
    to: NameAddr,
    call_id: String,
    cseq: CSeq,
    max_forwards: Option<u32>,
}

fn clip(s: &str) -> String {
    head::sanitize(s).chars().take(ERROR_TEXT_MAX).collect()
}

/// Whether `token` has the shape `SIP/<digits>.<digits>` (case-insensitive).
fn is_sip_version(token: &str) -> bool {
    let Some(prefix) = token.get(..4) else {
        return false;
    };
    let Some((major, minor)) = token.get(4..).and_then(|v| v.split_once('.')) else {
        return false;
    };
    prefix.eq_ignore_ascii_case("SIP/")
        && [major, minor]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses one framed message (a datagram, or a message cut by [`StreamFramer`]).
///
/// Lenient where RFC 4475 lets a parser be (LWS and folding anywhere it may appear, extra SP
/// in the request line, unknown methods, schemes and transports, escaped URIs, IPv6 quirks
/// of RFC 5118), strict where a reply could go wrong (see [`ParseError`]).
pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    let skip = bytes
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let bytes = bytes.get(skip..).unwrap_or_default();
    let no_head = |source| ParseError::Framing {
        source,
        salvage: None,
    };
    if bytes.is_empty() {
        return Err(no_head(FrameError::Empty));
    }
    let (head_bytes, rest) = framing::split_head(bytes).ok_or(no_head(FrameError::NoHeadEnd))?;
    let start_text = head::start_line(head_bytes);
    let fields = head::fields(head_bytes);
    let tokens: Vec<&str> = start_text
        .split([' ', '\t'])
        .filter(|t| !t.is_empty())
        .collect();
    let first = tokens.first().copied().unwrap_or_default();
    let is_response = first.len() >= 4
        && first
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
    let salvage = (!is_response).then(|| {
        let method = head::is_token(first).then(|| first.to_owned());
        Box::new(Salvage::from_fields(method, &fields))
    });
    let s = || salvage.clone();

    let start = if is_response {
        parse_status_line(&start_text)?
    } else {
        parse_request_line(&tokens, &s)?
    };

    if let Some(pos) = fields.iter().position(|f| f.name.is_none()) {
        return Err(ParseError::MalformedHeaderLine {
            line: pos + 2,
            salvage: s(),
        });
    }
    let headers: Vec<Header> = fields
        .into_iter()
        .filter_map(|f| {
            f.name.map(|name| Header {
                name,
                value: f.value,
            })
        })
        .collect();

    let framing_err = |source| ParseError::Framing {
        source,
        salvage: s(),
    };
    let body = match framing::content_length(head_bytes).map_err(framing_err)? {
        None => rest,
        Some(declared) => rest.get(..declared).ok_or_else(|| {
            framing_err(FrameError::ShortBody {
                declared,
                available: rest.len(),
            })
        })?,
    };

    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    };
    let single = |name: &'static str| -> Result<Option<&str>, ParseError> {
        let mut it = values(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(ParseError::DuplicateHeader { name, salvage: s() });
        }
        Ok(first)
    };
    let required = |name: &'static str| -> Result<&str, ParseError> {
        single(name)?.ok_or(ParseError::MissingHeader { name, salvage: s() })
    };
    let invalid = |name: &'static str| ParseError::InvalidHeader { name, salvage: s() };

    // Missing headers first: a message lacking several (RFC 4475 3.3.1) reports one of them.
    let mut vias = Vec::new();
    for value in values("Via") {
        vias.extend(Via::parse_list(value).ok_or_else(|| invalid("Via"))?);
    }
    let top_via = vias
        .first()
        .cloned()
        .ok_or_else(|| ParseError::MissingHeader {
            name: "Via",
            salvage: s(),
        })?;
    let from = required("From")?;
    let to = required("To")?;
    let call_id = required("Call-ID")?;
    let cseq = required("CSeq")?;

    let from = NameAddr::parse(from).ok_or_else(|| invalid("From"))?;
    let to = NameAddr::parse(to).ok_or_else(|| invalid("To"))?;
    // Call-ID is `word ["@" word]`: visible ASCII only, which also keeps control characters
    // out of the replies that copy it.
    if call_id.is_empty() || !call_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("Call-ID"));
    }
    let cseq = parse_cseq(cseq).ok_or_else(|| invalid("CSeq"))?;
    if let StartLine::Request { method, .. } = &start
        && *method != cseq.method
    {
        return Err(ParseError::CSeqMethodMismatch {
            method: clip(method),
            cseq_method: clip(&cseq.method),
            salvage: s(),
        });
    }
    let max_forwards = match single("Max-Forwards")? {
        None => None,
        Some(v) => Some(parse_number(v).ok_or_else(|| invalid("Max-Forwards"))?),
    };

    Ok(SipMessage {
        start,
        call_id: call_id.to_owned(),
        headers,
        body: body.to_vec(),
        top_via,
        vias,
        from,
        to,
        cseq,
        max_forwards,
    })
}

fn parse_request_line(
    tokens: &[&str],
    s: &dyn Fn() -> Option<Box<Salvage>>,
) -> Result<StartLine, ParseError> {
    let [method, uri, version] = tokens else {
        // More than three elements ending in a version: LWS inside the URI (RFC 4475 3.1.2.8).
        if tokens.len() > 3 && tokens.last().is_some_and(|v| is_sip_version(v)) {
            return Err(ParseError::MalformedRequestUri { salvage: s() });
        }
        return Err(ParseError::MalformedStartLine { salvage: s() });
    };
    if !head::is_token(method) || !is_sip_version(version) {
        return Err(ParseError::MalformedStartLine { salvage: s() });
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(ParseError::UnsupportedVersion {
            version: clip(version),
            salvage: s(),
        });
    }
    let uri = Uri::parse(uri).ok_or_else(|| ParseError::MalformedRequestUri { salvage: s() })?;
    if !matches!(uri.scheme.as_str(), "sip" | "sips" | "tel") {
        return Err(ParseError::UnsupportedUriScheme {
            scheme: clip(&uri.scheme),
            salvage: s(),
        });
    }
    Ok(StartLine::Request {
        method: (*method).to_owned(),
        uri,
    })
}

fn parse_status_line(line: &str) -> Result<StartLine, ParseError> {
    let (version, rest) = line.split_once(' ').unwrap_or((line, ""));
    if !is_sip_version(version) {
        return Err(ParseError::MalformedStartLine { salvage: None });
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(ParseError::UnsupportedVersion {
            version: clip(version),
            salvage: None,
        });
    }
    let rest = rest.trim_start_matches(' ');
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let code = (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .then(|| code.parse::<u16>().ok())
        .flatten()
        .filter(|c| (100..=699).contains(c))
        .ok_or(ParseError::InvalidStatusCode)?;
    Ok(StartLine::Response {
        code,
        reason: reason.to_owned(),
    })
}

/// A decimal number of digits only that fits in a u32.
fn parse_number(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_cseq(s: &str) -> Option<CSeq> {
    let mut parts = s.split([' ', '\t']).filter(|p| !p.is_empty());
    let seq = parse_number(parts.next()?)?;
    let method = parts.next()?;
    if parts.next().is_some() || !head::is_token(method) || seq >= 1 << 31 {
        return None;
    }
    Some(CSeq {
        seq,
        method: method.to_owned(),
    })
}

impl SipMessage {
    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method (`None` for a response; see [`SipMessage::cseq`] for its method).
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI.
    pub fn request_uri(&self) -> Option<&Uri> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The dialed number: the user part of a `sip:`/`sips:` Request-URI or the number of a
    /// `tel:` one, still %-escaped.
    pub fn dialed_user(&self) -> Option<&str> {
        self.request_uri()?.user.as_deref()
    }

    /// The status code of a response.
    pub fn status_code(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response (may be empty).
    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    /// The topmost Via (every parsed message has one).
    pub fn top_via(&self) -> &Via {
        &self.top_via
    }

    /// All Via values, topmost first.
    pub fn vias(&self) -> &[Via] {
        &self.vias
    }

    /// From.
    pub fn from(&self) -> &NameAddr {
        &self.from
    }

    /// To.
    pub fn to(&self) -> &NameAddr {
        &self.to
    }

    /// Call-ID.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// CSeq.
    pub fn cseq(&self) -> &CSeq {
        &self.cseq
    }

    /// Max-Forwards, if present.
    pub fn max_forwards(&self) -> Option<u32> {
        self.max_forwards
    }

    /// Contact values that parse (a `*` Contact of a REGISTER is not a URI and is skipped).
    pub fn contacts(&self) -> Vec<NameAddr> {
        self.name_addrs("Contact")
    }

    /// Route values, in order.
    pub fn routes(&self) -> Vec<NameAddr> {
        self.name_addrs("Route")
    }

    /// Record-Route values, in order.
    pub fn record_routes(&self) -> Vec<NameAddr> {
        self.name_addrs("Record-Route")
    }

    /// P-Asserted-Identity values (RFC 3325).
    pub fn p_asserted_identity(&self) -> Vec<NameAddr> {
        self.name_addrs("P-Asserted-Identity")
    }

    fn name_addrs(&self, name: &str) -> Vec<NameAddr> {
        self.header_values(name)
            .flat_map(NameAddr::parse_list)
            .collect()
    }

    /// Content-Type, without parameters, lower-cased (`application/sdp`).
    pub fn content_type(&self) -> Option<String> {
        let v = self.header("Content-Type")?;
        let media = v.split(';').next().unwrap_or_default().trim();
        Some(media.to_ascii_lowercase())
    }

    /// Length of the body (what Content-Length framed, or the rest of the datagram).
    pub fn content_length(&self) -> usize {
        self.body.len()
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Expires in seconds; values beyond 32 bits saturate (RFC 3261 20.19 allows up to
    /// 2^32-1 and RFC 4475 3.1.2.4 asks that overlarge values not break the parser).
    pub fn expires(&self) -> Option<u32> {
        saturating_seconds(self.header("Expires")?)
    }

    /// Option tags of every Supported header.
    pub fn supported(&self) -> Vec<&str> {
        self.tokens("Supported")
    }

    /// Option tags of every Require header.
    pub fn require(&self) -> Vec<&str> {
        self.tokens("Require")
    }

    fn tokens(&self, name: &str) -> Vec<&str> {
        self.header_values(name)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// Session-Expires (RFC 4028; compact `x`).
    pub fn session_expires(&self) -> Option<SessionExpires> {
        let v = self.header("Session-Expires")?;
        let (delta, params) = v.split_once(';').unwrap_or((v, ""));
        let params = head::params(params, true)?;
        Some(SessionExpires {
            delta: saturating_seconds(delta)?,
            refresher: head::param(&params, "refresher")
                .flatten()
                .map(str::to_ascii_lowercase),
        })
    }

    /// Min-SE in seconds (RFC 4028).
    pub fn min_se(&self) -> Option<u32> {
        let v = self.header("Min-SE")?;
        saturating_seconds(v.split(';').next().unwrap_or_default())
    }

    /// The first value of a header, by long or compact name, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// Every value of a header (one per header line), by long or compact name.
    pub fn header_values<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |h| head::same_name(&h.name, name))
            .map(|h| h.value.as_str())
    }

    /// All header fields in order.
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// The message rendered with long header names, unfolded values and the exact body:
    /// the form handed to rsip.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.to_string().into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// Records where a request really came from in its top Via (RFC 3261 18.2.1, RFC 3581):
    /// `received` when the sent-by host is not the source address (or the client asked for
    /// `rport`), and the source port in `rport` when the client asked for it. Responses built
    /// afterwards copy the stamped Via, and [`Via::reply_address`] reads it back. Responses are
    /// left alone.
    pub fn stamp_received(&mut self, source: std::net::SocketAddr) {
        if !self.is_request() {
            return;
        }
        let mut via = self.top_via.clone();
        via.stamp(source);
        if via == self.top_via {
            return;
        }
        let Some(header) = self
            .headers
            .iter_mut()
            .find(|h| head::same_name(&h.name, "Via"))
        else {
            return;
        };
        // Only the first element of the first Via line changes; the others are kept as
        // received.
        let rest = head::split_outside(&header.value, ',')
            .and_then(|parts| parts.get(1..).map(|rest| rest.join(",")))
            .unwrap_or_default();
        header.value = if rest.is_empty() {
            via.to_string()
        } else {
            format!("{via},{rest}")
        };
        if let Some(first) = self.vias.first_mut() {
            *first = via.clone();
        }
        self.top_via = via;
    }

    /// The message as an rsip message, after the gap fixes (see the module overview). Fails
    /// where rsip's own grammar does (IPv6 references, extension methods...).
    pub fn to_rsip(&self) -> Result<rsip::SipMessage, rsip::Error> {
        rsip::SipMessage::try_from(self.to_bytes().as_slice())
    }
}

/// Renders start line and headers up to and including the empty line (no body).
impl fmt::Display for SipMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.start {
            StartLine::Request { method, uri } => write!(f, "{method} {} SIP/2.0\r\n", uri.raw)?,
            StartLine::Response { code, reason } => write!(f, "SIP/2.0 {code} {reason}\r\n")?,
        }
        for h in &self.headers {
            write!(f, "{}: {}\r\n", h.name, h.value)?;
        }
        f.write_str("\r\n")
    }
}

fn saturating_seconds(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u32::MAX))
}

#[cfg(test)]
pub(crate) mod tests;
