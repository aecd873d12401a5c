//! The message head as text: line splitting, unfolding of continuation lines, compact header
//! names, and the small lexical helpers (comma lists, parameters, quoted strings) that every
//! header parser in this module shares.
//!
//! This is the one place that covers rsip 0.4's lexical gaps: it knows no compact header forms
//! and it does not unfold LWS continuation lines, so everything that reaches rsip (see
//! [`super::SipMessage::to_rsip`]) has been through [`fields`] first.

/// The compact forms of header names and their long names.
///
/// RFC 3261 section 7.3.3 (i m e l c f s k t v), RFC 3265 (o Event, u Allow-Events),
/// RFC 3515 (r Refer-To), RFC 3892 (b Referred-By), RFC 4028 (x Session-Expires),
/// RFC 3841 (a Accept-Contact, j Reject-Contact, d Request-Disposition),
/// RFC 4474 (y Identity, n Identity-Info).
const COMPACT_FORMS: [(&str, &str); 20] = [
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("o", "Event"),
    ("u", "Allow-Events"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
    ("x", "Session-Expires"),
    ("a", "Accept-Contact"),
    ("j", "Reject-Contact"),
    ("d", "Request-Disposition"),
    ("y", "Identity"),
    ("n", "Identity-Info"),
];

/// The long name for a header name given in either form (case-insensitive for compact forms);
/// other names come back unchanged.
pub fn long_name(name: &str) -> &str {
    COMPACT_FORMS
        .iter()
        .find(|(short, _)| short.eq_ignore_ascii_case(name))
        .map_or(name, |(_, long)| long)
}

/// Whether two header names denote the same header (case-insensitive, compact-aware).
pub fn same_name(a: &str, b: &str) -> bool {
    long_name(a).eq_ignore_ascii_case(long_name(b))
}

/// One header field of the head after unfolding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The long header name (compact forms expanded), or `None` when the line had no valid
    /// `name:` prefix.
    pub name: Option<String>,
    /// The value, trimmed, with continuation lines joined by a single space.
    pub value: String,
}

/// Splits a head (start line plus header lines, without the blank line) into its lines on
/// CRLF. A bare LF also ends a line: some senders use it, and leaving it inside a value would
/// only hide it from the checks.
pub fn lines(head: &[u8]) -> impl Iterator<Item = &[u8]> {
    head.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
}

/// The start line of a head.
pub fn start_line(head: &[u8]) -> String {
    String::from_utf8_lossy(lines(head).next().unwrap_or_default()).into_owned()
}

/// The header fields of a head (everything after the start line), unfolded. A continuation
/// line before any header becomes a nameless field so the parser can reject it.
pub fn fields(head: &[u8]) -> Vec<Field> {
    let mut out: Vec<Field> = Vec::new();
    for line in lines(head).skip(1) {
        let text = String::from_utf8_lossy(line);
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            if let Some(last) = out.last_mut() {
                // RFC 3261 7.3.1: folding is equivalent to a single SP.
                let piece = text.trim_matches([' ', '\t']);
                if !piece.is_empty() {
                    if !last.value.is_empty() {
                        last.value.push(' ');
                    }
                    last.value.push_str(piece);
                }
                continue;
            }
            out.push(Field {
                name: None,
                value: text.into_owned(),
            });
            continue;
        }
        out.push(split_field(&text));
    }
    out
}

fn split_field(text: &str) -> Field {
    let Some((name, value)) = text.split_once(':') else {
        return Field {
            name: None,
            value: text.to_owned(),
        };
    };
    let name = name.trim_end_matches([' ', '\t']);
    let value = value.trim_matches([' ', '\t']).to_owned();
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Field { name: None, value };
    }
    Field {
        name: Some(long_name(name).to_owned()),
        value,
    }
}

/// RFC 3261 `token` characters.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Whether `s` is a non-empty token.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// Splits `s` at `sep` where the separator is outside quoted strings and `<...>`.
/// Returns `None` when a quoted string or angle bracket is left open.
pub fn split_outside(s: &str, sep: char) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut in_angle = false;
    for (i, c) in s.char_indices() {
        if in_quotes {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_quotes = false;
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '<' if !in_angle => in_angle = true,
            '>' if in_angle => in_angle = false,
            c if c == sep && !in_angle => {
                parts.push(s.get(start..i).unwrap_or_default());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if in_quotes || in_angle {
        return None;
    }
    parts.push(s.get(start..).unwrap_or_default());
    Some(parts)
}

/// A header or URI parameter: `name` or `name=value` (LWS around `=` removed, quotes kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Parameter name as received.
    pub name: String,
    /// Value, if the parameter had `=`.
    pub value: Option<String>,
}

/// Parses `;`-separated parameters (the text after the first `;`). Empty elements are
/// skipped when `lenient`, otherwise they make the list invalid (`None`).
pub fn params(s: &str, lenient: bool) -> Option<Vec<Param>> {
    let mut out = Vec::new();
    for piece in split_outside(s, ';')? {
        let piece = piece.trim_matches([' ', '\t']);
        // Control characters have no place in a parameter, and replies copy parameters.
        if piece.chars().any(|c| c.is_control() && c != '\t') {
            return None;
        }
        if piece.is_empty() {
            if lenient {
                continue;
            }
            return None;
        }
        let (name, value) = match piece.split_once('=') {
            Some((n, v)) => (
                n.trim_end_matches([' ', '\t']),
                Some(v.trim_start_matches([' ', '\t'])),
            ),
            None => (piece, None),
        };
        if name.is_empty() {
            if lenient {
                continue;
            }
            return None;
        }
        out.push(Param {
            name: name.to_owned(),
            value: value.map(str::to_owned),
        });
    }
    Some(out)
}

/// The value of parameter `name` (case-insensitive): `Some(None)` when present without a value.
pub fn param<'a>(params: &'a [Param], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.value.as_deref())
}

/// Reads a quoted string at the start of `s` (which must begin with `"`). Returns the
/// unescaped content and the rest after the closing quote, or `None` if unterminated.
pub fn quoted(s: &str) -> Option<(String, &str)> {
    let inner = s.strip_prefix('"')?;
    let mut out = String::new();
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Some((out, inner.get(i + 1..).unwrap_or_default()));
        } else {
            out.push(c);
        }
    }
    None
}

/// Replaces every control character (CR, LF, NUL, DEL...) except HTAB with a space, so text
/// taken from the wire cannot start a new header line in something we send.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn compact_names_expand_and_long_names_pass_through() {
        assert_eq!(long_name("i"), "Call-ID");
        assert_eq!(long_name("X"), "Session-Expires");
        assert_eq!(long_name("Via"), "Via");
        assert!(same_name("v", "VIA"));
        assert!(!same_name("v", "t"));
    }

    #[test]
    fn continuation_lines_are_unfolded_and_names_trimmed() {
        let head = b"INVITE sip:a@b SIP/2.0\r\nTO :\r\n sip:x@y ;  tag=1\r\nv: SIP/2.0/UDP h\r\n\t;branch=z";
        let f = fields(head);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].name.as_deref(), Some("TO"));
        assert_eq!(f[0].value, "sip:x@y ;  tag=1");
        assert_eq!(f[1].name.as_deref(), Some("Via"));
        assert_eq!(f[1].value, "SIP/2.0/UDP h ;branch=z");
    }

    #[test]
    fn a_continuation_line_never_becomes_a_header_name() {
        // "l: 5" folded under another header must not be taken for Content-Length.
        let f = fields(b"R\r\nSubject: a\r\n l: 5");
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].value, "a l: 5");
    }

    #[test]
    fn split_outside_respects_quotes_and_brackets() {
        let p = split_outside(r#""a,b" <sip:x;y,z>, <sip:w>"#, ',').unwrap();
        assert_eq!(p.len(), 2);
        assert!(split_outside(r#""open"#, ',').is_none());
    }

    #[test]
    fn quoted_handles_escapes() {
        let (s, rest) = quoted(r#""J \"R\"" <x>"#).unwrap();
        assert_eq!(s, r#"J "R""#);
        assert_eq!(rest, " <x>");
        assert!(quoted(r#""unterminated"#).is_none());
    }

    #[test]
    fn sanitize_removes_line_breaks() {
        assert_eq!(sanitize("a\r\nVia: x\0"), "a  Via: x ");
    }
}
