//! Typed configuration values, each checked once when it is read ("parse, don't validate").
//!
//! Every type here deserializes from the plain string an operator writes and refuses a bad one
//! with a message that says what was expected; figment adds the key path and the source (file or
//! environment variable) to that message.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::Deserialize;

/// Implements `Deserialize` through `FromStr` (whose error is a message for the operator).
macro_rules! deserialize_from_str {
    ($ty:ty, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        v.parse().map_err(|e: String| E::custom(e))
                    }
                }
                d.deserialize_str(Visitor)
            }
        }
    };
}

/// The name of an upstream or a profile: what routes and profiles refer to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 1-64 ASCII letters, digits, `_` or `-`: safe in logs, metrics labels and the Realtime API's
/// function names alike.
fn identifier(s: &str, what: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a valid {what}: use 1-64 letters, digits, `_` or `-`"
        ))
    }
}

impl FromStr for Name {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        identifier(s, "name").map(Self)
    }
}
deserialize_from_str!(Name, "a name of letters, digits, `_` or `-`");

/// A SIP transport the daemon listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        })
    }
}

/// One SIP listening socket, written `udp:ADDR:PORT` or `tcp:[IPV6]:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Listen {
    pub transport: Transport,
    pub addr: SocketAddr,
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}` is not a listen address: write `udp:0.0.0.0:5060` or `tcp:[::]:5060`")
        };
        let (transport, addr) = s.split_once(':').ok_or_else(bad)?;
        let transport = match transport.to_ascii_lowercase().as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            _ => return Err(bad()),
        };
        let addr = addr.parse().map_err(|_| bad())?;
        Ok(Self { transport, addr })
    }
}
deserialize_from_str!(Listen, "a listen address such as `udp:0.0.0.0:5060`");

/// A network in `sip.allow_invite_from`: `10.0.0.0/8`, `2001:db8::/32` or one address.
pub use crate::sip::limits::Network;
deserialize_from_str!(Network, "a network such as `10.0.0.0/8` or an address");

/// The address the daemon gives peers for itself (Via, Contact, SDP `c=`) when it sits behind
/// NAT: an IP address or a DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicAddress {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for PublicAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Name(name) => f.write_str(name),
        }
    }
}

impl FromStr for PublicAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(Self::Ip(ip));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if s.len() <= 253 && s.split('.').all(label_ok) {
            Ok(Self::Name(s.to_ascii_lowercase()))
        } else {
            Err(format!(
                "`{s}` is neither an IP address nor a host name (no port here)"
            ))
        }
    }
}
deserialize_from_str!(PublicAddress, "an IP address or a host name");

/// An inclusive UDP port range for RTP, written `20000-29999`. RTP takes the even ports and
/// RTCP the odd port above each, so the range starts even and holds at least one pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub fn first(&self) -> u16 {
        self.first
    }
    pub fn last(&self) -> u16 {
        self.last
    }
    /// How many calls the range can carry at once (one even/odd pair per call).
    pub fn pairs(&self) -> u32 {
        // Ports first..=last, two per call; an odd last port has no partner.
        (u32::from(self.last) - u32::from(self.first)).div_ceil(2)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (first, last) = s
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .ok_or_else(|| format!("`{s}` is not a port range: write `20000-29999`"))?;
        if first < 1024 {
            return Err(format!("port range `{s}` starts below 1024"));
        }
        if first % 2 != 0 {
            return Err(format!(
                "port range `{s}` must start on an even port (RTP uses even ports)"
            ));
        }
        if last <= first {
            return Err(format!(
                "port range `{s}` must hold at least one even/odd port pair"
            ));
        }
        Ok(Self { first, last })
    }
}
deserialize_from_str!(PortRange, "a port range such as `20000-29999`");

/// A `tracing` filter directive such as `info` or `sip_realtime_bridge=debug,warn`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFilter(String);

impl LogFilter {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LogFilter {
    fn default() -> Self {
        Self("info".into())
    }
}

/// The levels a log filter names, and the spelling each is written in.
fn log_level(word: &str) -> Option<&'static str> {
    match word.to_ascii_lowercase().as_str() {
        "trace" => Some("trace"),
        "debug" => Some("debug"),
        "info" => Some("info"),
        "warn" | "warning" => Some("warn"),
        "error" => Some("error"),
        "off" => Some("off"),
        _ => None,
    }
}

/// A level (`trace`, `debug`, `info`, `warn` (or `warning`), `error`, `off`) or a list of
/// `TARGET=LEVEL` directives and one level (`sip_realtime_bridge=debug,info`). Stricter than
/// `tracing`'s filter syntax on purpose: there a bare word such as `verbose` is a *target*, so
/// the filter is valid and lets nothing through; here it is an error that names the levels.
impl FromStr for LogFilter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const HINT: &str = "use trace, debug, info, warn or error, or TARGET=LEVEL directives \
                            such as `sip_realtime_bridge=debug,info`";
        let mut directives = Vec::new();
        for directive in s.split(',').map(str::trim) {
            let normalized = match directive.rsplit_once('=') {
                // Span and field filters (`target[span{field}]=level`) are tracing's own.
                _ if directive.contains('[') => directive.to_owned(),
                None => log_level(directive)
                    .ok_or_else(|| {
                        if directive.is_empty() {
                            format!("`{s}` has an empty directive: {HINT}")
                        } else {
                            format!("`{directive}` is not a log level: {HINT}")
                        }
                    })?
                    .to_owned(),
                Some((target, level)) => match log_level(level.trim()) {
                    Some(level) if !target.trim().is_empty() => {
                        format!("{}={level}", target.trim())
                    }
                    _ => return Err(format!("`{directive}` is not TARGET=LEVEL: {HINT}")),
                },
            };
            directives.push(normalized);
        }
        let filter = directives.join(",");
        tracing_subscriber::EnvFilter::builder()
            .parse(&filter)
            .map(|_| Self(filter))
            .map_err(|e| format!("`{s}` is not a log filter ({e}): {HINT}"))
    }
}
deserialize_from_str!(LogFilter, "a log filter such as `info`");

/// The WebSocket URL of a realtime service. `wss://` (or `https://`, which means the same
/// host over TLS); plain `ws://` only to a loopback address, where nothing crosses a network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUrl(url::Url);

impl ServiceUrl {
    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ServiceUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut url = url::Url::parse(s).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => format!(
                "`{s}` is not a URL: it has no scheme; write it with https:// (or wss://), \
                 such as `https://{s}`"
            ),
            e => format!("`{s}` is not a URL: {e}"),
        })?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("put credentials in api_key_env or api_key_file, not in the URL".into());
        }
        if url.host().is_none() {
            return Err(format!("`{s}` has no host"));
        }
        // A gateway key in the query would be printed wherever the URL is (probe, logs).
        if let Some(name) = credential_in_query(&url) {
            return Err(format!(
                "query parameter `{name}` looks like a credential: put it in api_key_env or \
                 api_key_file"
            ));
        }
        let loopback = is_loopback_url(&url);
        let secure = match url.scheme() {
            "wss" | "https" => true,
            "ws" | "http" if loopback => false,
            plain @ ("ws" | "http") => {
                return Err(format!(
                    "`{s}`: plain {plain}:// (no TLS) is allowed only to a loopback IP address \
                     (127.0.0.1, [::1]); use https:// or wss://"
                ));
            }
            other => {
                return Err(format!(
                    "`{s}`: scheme `{other}` is not ws, wss, http or https"
                ));
            }
        };
        url.set_scheme(if secure { "wss" } else { "ws" })
            .map_err(|()| format!("`{s}`: cannot use as a WebSocket URL"))?;
        Ok(Self(url))
    }
}
deserialize_from_str!(ServiceUrl, "a wss:// URL");

/// The name of a query parameter of `url` that looks like a credential, if any: such a URL
/// would put the secret wherever the URL is printed.
fn credential_in_query(url: &url::Url) -> Option<String> {
    url.query_pairs()
        .map(|(name, _)| name.into_owned())
        .find(|name| {
            let name = name.to_ascii_lowercase();
            [
                "key",
                "api-key",
                "api_key",
                "apikey",
                "token",
                "access_token",
                "sig",
                "signature",
            ]
            .contains(&name.as_str())
        })
}

/// The URL of a tool's webhook: `https://`, or plain `http://` only to a loopback IP address
/// (the same rule as an upstream's `url`). Credentials belong in the tool's `headers`, so
/// user information and credential-like query parameters are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    pub fn url(&self) -> &url::Url {
        &self.0
    }
}

impl fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for WebhookUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s).map_err(|e| format!("`{s}` is not a URL: {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("put credentials in the tool's headers, not in the URL".into());
        }
        if url.host().is_none() {
            return Err(format!("`{s}` has no host"));
        }
        if let Some(name) = credential_in_query(&url) {
            return Err(format!(
                "query parameter `{name}` looks like a credential: put it in the tool's \
                 headers (value_env or value_file)"
            ));
        }
        match url.scheme() {
            "https" => Ok(Self(url)),
            "http" if is_loopback_url(&url) => Ok(Self(url)),
            "http" => Err(format!(
                "`{s}`: plain http:// is allowed only to a loopback IP address (127.0.0.1, \
                 [::1]); use https://"
            )),
            other => Err(format!("`{s}`: scheme `{other}` is not http or https")),
        }
    }
}
deserialize_from_str!(WebhookUrl, "an https:// URL");

/// A SIP URI to transfer a call to (`sip:` or `sips:`), as it will go into a Refer-To header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri(String);

impl SipUri {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SipUri {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            |why: &str| format!("`{s}` is not a SIP URI ({why}); write `sip:100@pbx.example.com`");
        let lower = s.to_ascii_lowercase();
        if !(lower.starts_with("sip:") || lower.starts_with("sips:")) {
            return Err(bad("it must start with sip: or sips:"));
        }
        // It goes into a header between angle brackets: nothing that could end or split it.
        if s.bytes()
            .any(|b| !b.is_ascii_graphic() || matches!(b, b'<' | b'>' | b'"'))
        {
            return Err(bad("no spaces, quotes or angle brackets"));
        }
        let uri = rsip::Uri::try_from(s).map_err(|_| bad("it does not parse"))?;
        if uri.host().to_string().is_empty() {
            return Err(bad("it has no host"));
        }
        Ok(Self(s.to_owned()))
    }
}
deserialize_from_str!(SipUri, "a SIP URI such as `sip:100@pbx.example.com`");

/// A telephone keypad key: `0`-`9`, `*`, `#` or `A`-`D` (RFC 4733 events 0-15), stored upper
/// case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digit(char);

impl Digit {
    pub fn as_char(self) -> char {
        self.0
    }

    /// The key `c` stands for, if it is one (`a`-`d` count as `A`-`D`).
    pub fn new(c: char) -> Option<Self> {
        let c = c.to_ascii_uppercase();
        (c.is_ascii_digit() || matches!(c, '*' | '#' | 'A'..='D')).then_some(Self(c))
    }
}

impl fmt::Display for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Digit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut chars = s.chars();
        match (chars.next().and_then(Self::new), chars.next()) {
            (Some(digit), None) => Ok(digit),
            _ => Err(format!(
                "`{s}` is not a keypad key: use one of 0-9, *, # or A-D"
            )),
        }
    }
}
deserialize_from_str!(Digit, "a keypad key (0-9, *, #, A-D)");

/// The name of an HTTP request header a webhook sends. Headers the bridge sets itself
/// (`Host`, `Content-Type`, `Content-Length`, and the connection-level ones) cannot be set.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HeaderName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // RFC 9110 token characters.
        let token = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(format!("`{s}` is not an HTTP header name"));
        }
        let reserved = [
            "host",
            "content-type",
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "te",
            "trailer",
            "upgrade",
            "proxy-connection",
        ];
        if reserved.contains(&s.to_ascii_lowercase().as_str()) {
            return Err(format!("header `{s}` is set by the bridge itself"));
        }
        Ok(Self(s.to_owned()))
    }
}
deserialize_from_str!(HeaderName, "an HTTP header name");

/// How a route matches a number: a prefix (`{ prefix = "+4930" }`) or a regular expression
/// (`{ regex = "^\\+4930[0-9]{4}$" }`, anchored only where the pattern says so).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Matcher {
    Prefix(String),
    Regex(Pattern),
}

impl Matcher {
    pub fn matches(&self, number: &str) -> bool {
        match self {
            Self::Prefix(p) => number.starts_with(p.as_str()),
            Self::Regex(r) => r.0.is_match(number),
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Prefix(p) => write!(f, "prefix {p:?}"),
            Self::Regex(r) => write!(f, "regex {:?}", r.0.as_str()),
        }
    }
}

/// Whether `url` names a loopback IP address, the only place plain `ws://` may go. A name such
/// as `localhost` does not count: what it resolves to is up to the host's resolver.
pub fn is_loopback_url(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(_)) | None => false,
    }
}

/// A compiled regular expression.
#[derive(Clone, Debug)]
pub struct Pattern(regex::Regex);

impl FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        regex::RegexBuilder::new(s)
            .size_limit(1 << 20)
            .build()
            .map(Self)
            .map_err(|e| format!("invalid regular expression: {e}"))
    }
}
deserialize_from_str!(Pattern, "a regular expression");

/// The name of a function the model may call: what the Realtime API accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolName(String);

impl ToolName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ToolName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        identifier(s, "tool name").map(Self)
    }
}
deserialize_from_str!(ToolName, "a tool name");

/// The name of an environment variable that holds a secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvVarName(String);

impl EnvVarName {
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for EnvVarName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut bytes = s.bytes();
        let ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            // Never echo the value: an operator may have pasted the secret itself here.
            Err(
                "is not an environment variable name: *_env keys name the variable that \
                 holds the secret, not the secret itself"
                    .into(),
            )
        }
    }
}
deserialize_from_str!(EnvVarName, "an environment variable name");

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_for_both_transports_and_families() {
        let l: Listen = "udp:127.0.0.1:5060".parse().unwrap();
        assert_eq!((l.transport, l.addr.port()), (Transport::Udp, 5060));
        let l: Listen = "TCP:[::1]:5080".parse().unwrap();
        assert_eq!(l.transport, Transport::Tcp);
        assert!(l.addr.is_ipv6());
        for bad in [
            "127.0.0.1:5060",
            "sctp:1.2.3.4:5060",
            "udp:1.2.3.4",
            "udp:[::1]",
        ] {
            assert!(bad.parse::<Listen>().is_err(), "{bad}");
        }
    }

    #[test]
    fn port_ranges_must_start_even_and_hold_a_pair() {
        let r: PortRange = "20000-20009".parse().unwrap();
        assert_eq!((r.first(), r.last(), r.pairs()), (20000, 20009, 5));
        assert_eq!("40000-40001".parse::<PortRange>().unwrap().pairs(), 1);
        for bad in [
            "20001-20010",
            "20000-20000",
            "30000-20000",
            "80-90",
            "a-b",
            "20000",
        ] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn public_address_accepts_ips_and_host_names_only() {
        assert_eq!(
            "192.0.2.7".parse::<PublicAddress>().unwrap(),
            PublicAddress::Ip("192.0.2.7".parse().unwrap())
        );
        assert!(matches!("[2001:db8::1]".parse(), Ok(PublicAddress::Ip(_))));
        assert_eq!(
            "SBC.Example.com".parse::<PublicAddress>().unwrap(),
            PublicAddress::Name("sbc.example.com".into())
        );
        for bad in ["sbc.example.com:5060", "-x.example.com", "a..b", ""] {
            assert!(bad.parse::<PublicAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn service_urls_require_tls_except_to_loopback() {
        let u: ServiceUrl = "https://res.openai.azure.com".parse().unwrap();
        assert_eq!(u.url().scheme(), "wss");
        assert!(
            "wss://api.openai.com/v1/realtime"
                .parse::<ServiceUrl>()
                .is_ok()
        );
        assert_eq!(
            "ws://127.0.0.1:9000/v1/realtime"
                .parse::<ServiceUrl>()
                .unwrap()
                .url()
                .scheme(),
            "ws"
        );
        assert!("ws://[::1]:9000".parse::<ServiceUrl>().is_ok());
        for bad in [
            "ws://api.openai.com/v1/realtime",
            "http://10.0.0.1/",
            "ftp://x.example",
            "wss://user:pw@api.openai.com/",
            "not a url",
            "ws://localhost:9000",
            "wss://gw.example.com/v1/realtime?api-key=abc",
            "wss://gw.example.com/v1/realtime?Token=abc",
        ] {
            assert!(bad.parse::<ServiceUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn matchers_match_by_prefix_or_regex() {
        let p = Matcher::Prefix("+4930".into());
        assert!(p.matches("+49301234") && !p.matches("+4940"));
        let r = Matcher::Regex("^1[0-9]{2}$".parse().unwrap());
        assert!(r.matches("100") && !r.matches("1000"));
        assert!("([".parse::<Pattern>().is_err());
    }

    #[test]
    fn names_and_env_var_names_are_checked() {
        assert!("support-de_1".parse::<Name>().is_ok());
        assert!("has space".parse::<Name>().is_err());
        assert!("OPENAI_API_KEY".parse::<EnvVarName>().is_ok());
        assert!("sk-abc123".parse::<EnvVarName>().is_err());
        assert!("1ABC".parse::<EnvVarName>().is_err());
        assert!("get_weather".parse::<ToolName>().is_ok());
        assert!("get weather".parse::<ToolName>().is_err());
    }

    #[test]
    fn log_filters_are_checked() {
        assert!("info".parse::<LogFilter>().is_ok());
        assert!(
            "sip_realtime_bridge=debug,warn"
                .parse::<LogFilter>()
                .is_ok()
        );
        // `warning` is read as `warn`, in directives too, and levels in any case.
        assert_eq!("warning".parse::<LogFilter>().unwrap().as_str(), "warn");
        assert_eq!(
            "sip_realtime_bridge=WARNING,Info"
                .parse::<LogFilter>()
                .unwrap()
                .as_str(),
            "sip_realtime_bridge=warn,info"
        );
        // A bare word is a target to tracing (valid, and silent): here it is refused.
        let error = "verbose".parse::<LogFilter>().unwrap_err();
        assert!(error.contains("`verbose` is not a log level"), "{error}");
        assert!(
            error.contains("trace, debug, info, warn or error"),
            "{error}"
        );
        for bad in ["", "info,", "loud=", "=debug", "x=notalevel"] {
            assert!(bad.parse::<LogFilter>().is_err(), "{bad:?}");
        }
    }
}
