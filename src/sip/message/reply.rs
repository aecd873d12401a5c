//! Responses a UAS builds from a request (RFC 3261 8.2.6), and from the salvage of a request
//! that did not parse.
//!
//! Everything copied from the request goes through [`head::sanitize`], and the reason phrase
//! and To tag given by the caller too: text from the wire must never end a header line early
//! and start one of its own (header injection).

use std::fmt::Write as _;

use super::{ParseError, SipMessage, head};

/// The header values a response copies from its request.
struct Copied<'a> {
    vias: Vec<&'a str>,
    from: &'a str,
    to: &'a str,
    call_id: &'a str,
    cseq: &'a str,
}

/// A response to `request`: Via (all, in order), From, To (with `to_tag` added if To has no
/// tag yet), Call-ID and CSeq copied, `Content-Length: 0`. A code outside 100..=699 is
/// clamped into it; the reason loses control characters; the tag keeps only token
/// characters.
pub fn build_response(
    request: &SipMessage,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Vec<u8> {
    let copied = Copied {
        vias: request.header_values("Via").collect(),
        from: request.header("From").unwrap_or_default(),
        to: request.header("To").unwrap_or_default(),
        call_id: request.call_id(),
        cseq: request.header("CSeq").unwrap_or_default(),
    };
    let tag = match request.to().tag() {
        Some(_) => None,
        None => to_tag,
    };
    render(code, reason, &copied, tag)
}

/// A 400 for a request that did not parse, when it can be addressed: the salvage has at
/// least one Via, From, To, Call-ID and CSeq, and the request was not an ACK (which is never
/// answered). `None` otherwise: the message is dropped.
pub fn build_bad_request(err: &ParseError, reason: &str) -> Option<Vec<u8>> {
    build_error_response(err, 400, reason)
}

/// Like [`build_bad_request`] with another code, typically [`ParseError::status_code`]
/// (505 for an unsupported version, 416 for an unsupported URI scheme). When To has no tag,
/// one derived from Call-ID, From and the top Via is added (RFC 3261 8.2.6.2), so a
/// retransmission of the same bad request gets the same stateless answer.
pub fn build_error_response(err: &ParseError, code: u16, reason: &str) -> Option<Vec<u8>> {
    let salvage = err.salvage()?;
    if salvage
        .method
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("ACK"))
        || salvage.cseq.as_deref().is_some_and(|c| {
            c.split_whitespace()
                .nth(1)
                .is_some_and(|m| m.eq_ignore_ascii_case("ACK"))
        })
    {
        return None;
    }
    let copied = Copied {
        vias: salvage
            .vias
            .iter()
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .collect(),
        from: salvage.from.as_deref().filter(|v| !v.is_empty())?,
        to: salvage.to.as_deref().filter(|v| !v.is_empty())?,
        call_id: salvage.call_id.as_deref().filter(|v| !v.is_empty())?,
        cseq: salvage.cseq.as_deref().filter(|v| !v.is_empty())?,
    };
    if copied.vias.is_empty() {
        return None;
    }
    let has_tag = head::split_outside(copied.to, ';')
        .unwrap_or_default()
        .iter()
        .skip(1)
        .any(|p| {
            p.split('=')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case("tag"))
        });
    let tag = (!has_tag).then(|| stateless_tag(&copied));
    Some(render(code, reason, &copied, tag.as_deref()))
}

/// FNV-1a over the fields that identify the request: deterministic, no randomness or clock
/// in a sans-IO core.
fn stateless_tag(copied: &Copied<'_>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let parts = [
        copied.call_id,
        copied.from,
        copied.vias.first().copied().unwrap_or_default(),
    ];
    for byte in parts.iter().flat_map(|p| p.bytes().chain([0])) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn render(code: u16, reason: &str, copied: &Copied<'_>, to_tag: Option<&str>) -> Vec<u8> {
    let code = code.clamp(100, 699);
    let reason = head::sanitize(reason);
    let mut out = String::with_capacity(256);
    // Writing to a String cannot fail; the results are ignored for that reason.
    let _ = write!(out, "SIP/2.0 {code} {}\r\n", reason.trim());
    for via in &copied.vias {
        let _ = write!(out, "Via: {}\r\n", head::sanitize(via));
    }
    let _ = write!(out, "From: {}\r\n", head::sanitize(copied.from));
    let _ = write!(out, "To: {}", head::sanitize(copied.to));
    let tag: String = to_tag
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii() && head::is_token_byte(*c as u8))
        .collect();
    if !tag.is_empty() {
        let _ = write!(out, ";tag={tag}");
    }
    let _ = write!(
        out,
        "\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        head::sanitize(copied.call_id),
        head::sanitize(copied.cseq)
    );
    out.into_bytes()
}
