//! URIs, name-addr values (From, To, Contact, Route, P-Asserted-Identity) and Via values.
//!
//! Our own small parsers rather than rsip's: rsip 0.4 rejects IPv6 references in URIs and Via
//! ("invalid digit found in string" on every RFC 5118 message) and has no `tel:` support.
//! They are lenient about what a UAS does not need to understand and return `None` for what
//! cannot be made sense of; the message parser turns that into a [`super::ParseError`].

use super::head::{self, Param};

/// A host and optional port, as in a SIP URI or a Via sent-by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name, IPv4 address, or IPv6 reference with its brackets (`[2001:db8::1]`).
    pub host: String,
    /// Port, if given.
    pub port: Option<u16>,
}

impl HostPort {
    /// Parses `host[:port]` strictly: an IPv6 address must be bracketed (RFC 5118 4.2), so
    /// `2001:db8::10` is rejected rather than read as host `2001` with a port.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim_matches([' ', '\t']);
        let (host, port) = if s.starts_with('[') {
            let close = s.find(']')?;
            let host = s.get(..=close)?;
            let inner = host.get(1..host.len().saturating_sub(1))?;
            // Lenient inside the brackets (RFC 5118 4.10 "three colons" bug), but only
            // address characters.
            if inner.is_empty()
                || !inner
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return None;
            }
            let rest = s.get(close + 1..)?;
            let port = match rest {
                "" => None,
                r => Some(r.strip_prefix(':')?),
            };
            (host, port)
        } else {
            match s.split_once(':') {
                // COLON allows LWS around it (RFC 3261 25.1).
                Some((h, p)) => (
                    h.trim_end_matches([' ', '\t']),
                    Some(p.trim_start_matches([' ', '\t'])),
                ),
                None => (s, None),
            }
        };
        if host.is_empty()
            || !host.starts_with('[')
                && !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return None;
        }
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse().ok()?)
            }
            Some(_) => return None,
        };
        Some(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// A URI: `sip:`/`sips:` and `tel:` are taken apart, other schemes are kept opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// The URI as received.
    pub raw: String,
    /// Scheme, lower-cased.
    pub scheme: String,
    /// User part (`sip:`) or subscriber number (`tel:`), still %-escaped.
    pub user: Option<String>,
    /// Host and port (`sip:`/`sips:` only).
    pub host_port: Option<HostPort>,
    /// URI parameters.
    pub params: Vec<Param>,
}

impl Uri {
    /// Parses a URI; `None` if the scheme is malformed, or, for `sip:`/`sips:`, if the
    /// host part is.
    pub fn parse(raw: &str) -> Option<Self> {
        // No URI contains whitespace or control characters (RFC 3986 / RFC 3261 25.1); one
        // that did would also change meaning when a reply sanitizes it.
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let (scheme, rest) = raw.split_once(':')?;
        let mut chars = scheme.chars();
        if !chars.next()?.is_ascii_alphabetic()
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return None;
        }
        let scheme = scheme.to_ascii_lowercase();
        let mut uri = Self {
            raw: raw.to_owned(),
            scheme,
            user: None,
            host_port: None,
            params: Vec::new(),
        };
        match uri.scheme.as_str() {
            "sip" | "sips" => {
                // The user part may contain ';', '?' and escaped '@' (RFC 4475 3.1.1.2,
                // 3.1.1.9), so the host starts after the last '@'.
                let (user, host_params) = match rest.rsplit_once('@') {
                    Some((u, h)) => (Some(u), h),
                    None => (None, rest),
                };
                // URI headers (`?...`) are dropped: never turned into real headers (RFC 4475
                // 3.1.2.11).
                let host_params = host_params.split_once('?').map_or(host_params, |(h, _)| h);
                let (host, params) = host_params.split_once(';').unwrap_or((host_params, ""));
                uri.host_port = Some(HostPort::parse(host)?);
                uri.user = user.map(|u| u.split_once(':').map_or(u, |(name, _)| name).to_owned());
                uri.params = head::params(params, true)?;
            }
            "tel" => {
                let (number, params) = rest.split_once(';').unwrap_or((rest, ""));
                if number.is_empty() {
                    return None;
                }
                uri.user = Some(number.to_owned());
                uri.params = head::params(params, true)?;
            }
            _ => {}
        }
        Some(uri)
    }
}

/// A name-addr or addr-spec with header parameters: From, To, Contact, Route...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted.
    pub display: Option<String>,
    /// The URI.
    pub uri: Uri,
    /// Header parameters (after the URI).
    pub params: Vec<Param>,
}

impl NameAddr {
    /// Parses one name-addr / addr-spec. The display name must be a quoted string or tokens
    /// (RFC 4475 3.1.2.6 and 3.1.2.15 reject an open quote or a comma there).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim_matches([' ', '\t']);
        let (display, rest) = if s.starts_with('"') {
            let (d, rest) = head::quoted(s)?;
            let rest = rest.trim_start_matches([' ', '\t']);
            if !rest.starts_with('<') {
                return None;
            }
            (Some(d), rest)
        } else if let Some(open) = s.find('<') {
            let d = s.get(..open)?.trim_matches([' ', '\t']);
            if !d
                .split([' ', '\t'])
                .filter(|w| !w.is_empty())
                .all(head::is_token)
            {
                return None;
            }
            let display = (!d.is_empty()).then(|| d.to_owned());
            (display, s.get(open..)?)
        } else {
            // addr-spec: parameters after the URI belong to the header (RFC 3261 20.10).
            let (uri, params) = s.split_once(';').unwrap_or((s, ""));
            let uri = uri.trim_matches([' ', '\t']);
            if uri.contains([' ', '\t', ',', '"']) {
                return None;
            }
            return Some(Self {
                display: None,
                uri: Uri::parse(uri)?,
                params: head::params(params, true)?,
            });
        };
        let inner = rest.strip_prefix('<')?;
        let close = inner.find('>')?;
        let uri = inner.get(..close)?.trim_matches([' ', '\t']);
        let after = inner.get(close + 1..)?.trim_start_matches([' ', '\t']);
        let params = match after {
            "" => Vec::new(),
            a => head::params(a.strip_prefix(';')?, true)?,
        };
        Some(Self {
            display,
            uri: Uri::parse(uri)?,
            params,
        })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        head::param(&self.params, "tag").flatten()
    }

    /// Parses a comma-separated list of name-addrs, skipping elements that do not parse
    /// (a UAS can still answer a request with one odd Contact or Route).
    pub fn parse_list(s: &str) -> Vec<Self> {
        head::split_outside(s, ',')
            .unwrap_or_default()
            .into_iter()
            .filter_map(Self::parse)
            .collect()
    }
}

/// One Via value: `SIP/2.0/UDP host:port;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport, upper-cased (`UDP`, `TCP`, `TLS`, or anything else: RFC 4475 3.1.1.10).
    pub transport: String,
    /// sent-by.
    pub sent_by: HostPort,
    /// Via parameters (branch, received, rport, maddr, ttl...).
    pub params: Vec<Param>,
}

impl Via {
    /// Parses one Via value (LWS around `/` allowed, RFC 4475 3.1.1.1). Empty parameters
    /// (`;;`) make it invalid (RFC 4475 3.1.2.1).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim_matches([' ', '\t']);
        if s.chars().any(|c| c.is_control() && c != '\t') {
            return None;
        }
        let (protocol_and_host, params) = s.split_once(';').unwrap_or((s, ""));
        let mut parts = protocol_and_host.splitn(3, '/');
        let name = parts.next()?.trim_matches([' ', '\t']);
        let version = parts.next()?.trim_matches([' ', '\t']);
        let rest = parts.next()?.trim_start_matches([' ', '\t']);
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return None;
        }
        let (transport, sent_by) = rest.split_once([' ', '\t'])?;
        if !head::is_token(transport) {
            return None;
        }
        let params = if s.contains(';') {
            head::params(params, false)?
        } else {
            Vec::new()
        };
        Some(Self {
            transport: transport.to_ascii_uppercase(),
            sent_by: HostPort::parse(sent_by)?,
            params,
        })
    }

    /// Reads what a reply needs from a Via that [`Via::parse`] refuses: any `SIP/x.y`
    /// version, empty parameters skipped. Only for addressing the error response to a request
    /// that did not parse (RFC 4475 3.1.2.1 and 3.1.2.16 still want a 400 or 505).
    pub fn parse_lenient(s: &str) -> Option<Self> {
        let s = s.trim_matches([' ', '\t']);
        if s.chars().any(|c| c.is_control() && c != '\t') {
            return None;
        }
        let (protocol_and_host, params) = s.split_once(';').unwrap_or((s, ""));
        let mut parts = protocol_and_host.splitn(3, '/');
        let name = parts.next()?.trim_matches([' ', '\t']);
        let _version = parts.next()?;
        let rest = parts.next()?.trim_start_matches([' ', '\t']);
        if !name.eq_ignore_ascii_case("SIP") {
            return None;
        }
        let (transport, sent_by) = rest.split_once([' ', '\t'])?;
        if !head::is_token(transport) {
            return None;
        }
        Some(Self {
            transport: transport.to_ascii_uppercase(),
            sent_by: HostPort::parse(sent_by)?,
            params: head::params(params, true).unwrap_or_default(),
        })
    }

    /// Parses every Via value of one header line; `None` if any element is invalid or
    /// empty.
    pub fn parse_list(s: &str) -> Option<Vec<Self>> {
        head::split_outside(s, ',')?
            .into_iter()
            .map(Self::parse)
            .collect()
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        head::param(&self.params, "branch").flatten()
    }

    /// The `received` parameter (RFC 3261 18.2.1), brackets kept if the sender used them.
    pub fn received(&self) -> Option<&str> {
        head::param(&self.params, "received").flatten()
    }

    /// The `rport` parameter (RFC 3581): `Some(None)` when present without a value (the
    /// client asks for it), `Some(Some(port))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        head::param(&self.params, "rport").map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// Records where the message really came from (RFC 3261 18.2.1, RFC 3581): `received`
    /// when the sent-by host is not the source address or the client asked for `rport`, and
    /// the source port in `rport` when it asked. A `received` the client wrote is replaced.
    pub fn stamp(&mut self, source: std::net::SocketAddr) {
        let wants_rport = self.rport().is_some();
        let source_ip = source.ip().to_canonical();
        let sent_by_ip = self
            .sent_by
            .host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
            .map(|ip| ip.to_canonical());
        self.params.retain(|p| {
            !(p.name.eq_ignore_ascii_case("received")
                || (wants_rport && p.name.eq_ignore_ascii_case("rport")))
        });
        if wants_rport || sent_by_ip != Some(source_ip) {
            self.params.push(Param {
                name: "received".into(),
                value: Some(source_ip.to_string()),
            });
        }
        if wants_rport {
            self.params.push(Param {
                name: "rport".into(),
                value: Some(source.port().to_string()),
            });
        }
    }

    /// Whether the transport is reliable (TCP, TLS, SCTP, WS: anything but UDP).
    pub fn is_reliable(&self) -> bool {
        !self.transport.eq_ignore_ascii_case("UDP")
    }

    /// Where a response to this (stamped) Via goes, per RFC 3261 18.2.2 and RFC 3581: the
    /// `received` address (else the sent-by host), at the `rport` port for UDP (else the
    /// sent-by port, else 5060, or 5061 for TLS). Over TCP this is only where a new
    /// connection goes when the request's own connection has closed. `maddr` is not honoured: multicast replies are a
    /// reflection risk and no telephony peer needs them. The host is a name when the sent-by
    /// was one and no `received` was stamped.
    pub fn reply_address(&self) -> HostPort {
        let default_port = if self.transport.eq_ignore_ascii_case("TLS") {
            5061
        } else {
            5060
        };
        let host = self
            .received()
            .map(|r| {
                let bare = r.trim_start_matches('[').trim_end_matches(']');
                if bare.contains(':') {
                    format!("[{bare}]")
                } else {
                    bare.to_owned()
                }
            })
            .unwrap_or_else(|| self.sent_by.host.clone());
        // rport only means something for UDP (RFC 3581 section 4): over a connection it is
        // the client's ephemeral port, and a new connection goes to the sent-by port.
        let rport = if self.is_reliable() {
            None
        } else {
            self.rport().flatten()
        };
        let port = rport.or(self.sent_by.port).unwrap_or(default_port);
        HostPort {
            host,
            port: Some(port),
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.sent_by)?;
        for param in &self.params {
            match &param.value {
                Some(value) => write!(f, ";{}={value}", param.name)?,
                None => write!(f, ";{}", param.name)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(HostPort::parse("h.example:5070").unwrap().port, Some(5070));
        let v6 = HostPort::parse("[2001:db8::10]:5070").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("[2001:db8::10]", Some(5070)));
        assert!(HostPort::parse("2001:db8::10").is_none());
        assert!(HostPort::parse("h:99999").is_none());
        assert!(HostPort::parse("h:").is_none());
        assert!(HostPort::parse("[]").is_none());
    }

    #[test]
    fn sip_and_tel_uris() {
        let u = Uri::parse("sip:+4930123;phone-context=x@gw.example:5060;user=phone?X=y").unwrap();
        assert_eq!(u.user.as_deref(), Some("+4930123;phone-context=x"));
        assert_eq!(u.host_port.unwrap().port, Some(5060));
        assert_eq!(u.params[0].name, "user");
        let t = Uri::parse("tel:+1-201-555-0123;ext=1").unwrap();
        assert_eq!(t.user.as_deref(), Some("+1-201-555-0123"));
        assert!(Uri::parse("<sip:a@b>").is_none());
        assert_eq!(Uri::parse("http://x").unwrap().scheme, "http");
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(r#""A \"B\"" <sip:a@b;lr> ;tag = 12"#).unwrap();
        assert_eq!(n.display.as_deref(), Some(r#"A "B""#));
        assert_eq!(n.tag(), Some("12"));
        let n = NameAddr::parse("sip:a@b;tag=9").unwrap();
        assert_eq!((n.tag(), n.uri.raw.as_str()), (Some("9"), "sip:a@b"));
        let n = NameAddr::parse("caller<sip:c@d>").unwrap();
        assert_eq!(n.display.as_deref(), Some("caller"));
        assert!(NameAddr::parse("Bell, Alexander <sip:a@b>").is_none());
        assert!(NameAddr::parse(r#""open <sip:a@b>"#).is_none());
    }

    #[test]
    fn via_forms() {
        let v = Via::parse(
            "SIP  / 2.0  / tcp   h.example ; branch = z9hG4bK1;rport;received=192.0.2.1",
        )
        .unwrap();
        assert_eq!(v.transport, "TCP");
        assert_eq!(v.branch(), Some("z9hG4bK1"));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some("192.0.2.1"));
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;,;,,").is_none());
        assert!(
            Via::parse_list("SIP/2.0/UDP a, SIP/2.0/TCP [::1]:5061")
                .unwrap()
                .len()
                == 2
        );
        assert!(Via::parse_list("SIP/2.0/UDP a,").is_none());
    }
}
