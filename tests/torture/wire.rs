//! Just enough SIP reading for the harness: header lookup (folding, compact names, any case),
//! the start line, and the top Via's transport, sent-by port and `rport`. Deliberately
//! independent of the crate's parser: the torture test must not trust what it tests.

/// A message's start line and unfolded headers (values trimmed), read leniently.
#[derive(Clone, Debug)]
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

/// RFC 3261 7.3.3 compact forms, mapped to the long names (lower case).
fn long_name(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let long = match lower.as_str() {
        "i" => "call-id",
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "e" => "content-encoding",
        _ => return lower,
    };
    long.to_owned()
}

impl Head {
    /// Reads the part before the first empty line (all of it if there is none).
    pub fn read(bytes: &[u8]) -> Self {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_owned();
        let mut unfolded: Vec<String> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t'])
                && let Some(last) = unfolded.last_mut()
            {
                last.push(' ');
                last.push_str(line.trim());
                continue;
            }
            unfolded.push(line.to_owned());
        }
        let headers = unfolded
            .iter()
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                Some((long_name(name), value.trim().to_owned()))
            })
            .collect();
        Self { start, headers }
    }

    /// Values of a header (long or compact name, any case), in order.
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        let want = long_name(name);
        self.headers
            .iter()
            .filter(move |(n, _)| *n == want)
            .map(|(_, v)| v.as_str())
    }

    pub fn first(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    pub fn call_id(&self) -> Option<&str> {
        self.first("call-id")
    }

    /// The CSeq number as text without leading zeros (wsinv.dat has `0009`; scalar02.dat's
    /// does not fit any integer type).
    pub fn cseq_number(&self) -> Option<String> {
        let digits = self.first("cseq")?.split_whitespace().next()?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let trimmed = digits.trim_start_matches('0');
        Some(if trimmed.is_empty() { "0" } else { trimmed }.to_owned())
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start.strip_prefix("SIP/2.0 ")?;
        rest.split(' ').next()?.parse().ok()
    }

    pub fn is_response(&self) -> bool {
        self.start.starts_with("SIP/")
    }

    /// The top Via value (the first header's first comma-separated value).
    pub fn top_via(&self) -> Option<TopVia> {
        let value = self.first("via")?;
        TopVia::read(value.split(',').next().unwrap_or_default())
    }
}

/// The parts of a Via value the reply address depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopVia {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
}

impl TopVia {
    /// `SIP / 2.0 / UDP host[:port];params`, with LWS anywhere RFC 3261 allows it.
    pub fn read(value: &str) -> Option<Self> {
        let (protocol_and_host, params) = match value.split_once(';') {
            Some((a, b)) => (a, Some(b)),
            None => (value, None),
        };
        let mut parts = protocol_and_host.splitn(3, '/');
        let (_name, _version, rest) = (parts.next()?, parts.next()?, parts.next()?);
        let rest = rest.trim();
        let split = rest.find(char::is_whitespace)?;
        let transport = rest[..split].to_ascii_uppercase();
        let sent_by: String = rest[split..]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let (host, port) = if let Some(after) = sent_by.strip_prefix('[') {
            let close = after.find(']')?;
            let host = format!("[{}]", &after[..close]);
            let port = after[close + 1..].strip_prefix(':').map(str::parse);
            (host, port)
        } else {
            match sent_by.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p.parse())),
                None => (sent_by.clone(), None),
            }
        };
        let port = match port {
            Some(Ok(p)) => Some(p),
            Some(Err(_)) => return None,
            None => None,
        };
        let params = params
            .unwrap_or_default()
            .split(';')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n.trim().to_ascii_lowercase(), Some(v.trim().to_owned())),
                None => (p.trim().to_ascii_lowercase(), None),
            })
            .collect();
        Some(Self {
            transport,
            host,
            port,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref())
    }

    /// The UDP ports a correct reply may reach us on, given we sent from `source_port`
    /// (RFC 3261 18.2.2 with RFC 3581): the source port if the request asked for `rport`,
    /// else the sent-by port, else the transport's default (5060; 5061 also for TLS, whose
    /// default port a daemon may apply even when answering over UDP).
    pub fn reply_ports(&self, source_port: u16) -> Vec<u16> {
        if self.param("rport").is_some() {
            return vec![source_port];
        }
        match self.port {
            Some(port) => vec![port],
            None if self.transport.starts_with("TLS") => vec![5060, 5061],
            None => vec![5060],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_via_with_lws() {
        let head = Head::read(
            b"INVITE sip:a@b SIP/2.0\r\nVia  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\r\n",
        );
        let via = head.top_via().unwrap();
        assert_eq!(
            (via.transport.as_str(), via.host.as_str()),
            ("UDP", "192.0.2.2")
        );
        assert_eq!(via.port, None);
        assert_eq!(via.reply_ports(5060), [5060]);
    }

    #[test]
    fn ipv6_sent_by_and_rport() {
        let via = TopVia::read("SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111").unwrap();
        assert_eq!(
            (via.host.as_str(), via.port),
            ("[2001:db8::9:1]", Some(6050))
        );
        let via = TopVia::read("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-d8;rport").unwrap();
        assert_eq!(via.reply_ports(5060), [5060]);
    }
}
