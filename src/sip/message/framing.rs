//! Where a SIP message ends: datagram framing for UDP and a stream framer for TCP/TLS.
//!
//! rsip does not check Content-Length against the body, so framing is entirely ours
//! (RFC 3261 section 18.3): on a datagram the body is what Content-Length says (extra octets
//! are ignored, fewer is an error the caller answers with 400), or the rest of the datagram
//! when the header is absent; on a stream Content-Length is mandatory and limits protect the
//! buffer.

use super::head;

/// The end of the head: the first empty line.
const HEAD_END: &[u8] = b"\r\n\r\n";

/// Why bytes could not be framed as one SIP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Nothing but keepalive CRLFs (or nothing at all).
    #[error("empty datagram")]
    Empty,
    /// The head is not terminated by an empty line.
    #[error("message head has no terminating empty line")]
    NoHeadEnd,
    /// A Content-Length value that is not a non-negative decimal number that fits.
    #[error("invalid Content-Length value {value:?}")]
    InvalidContentLength {
        /// The value as received (sanitized).
        value: String,
    },
    /// Two Content-Length headers that disagree.
    #[error("conflicting Content-Length values {first} and {second}")]
    ConflictingContentLength {
        /// The first value.
        first: usize,
        /// The first value that differs from it.
        second: usize,
    },
    /// The datagram holds fewer body octets than Content-Length announces.
    #[error("body has {available} octets but Content-Length is {declared}")]
    ShortBody {
        /// Content-Length.
        declared: usize,
        /// Octets after the head.
        available: usize,
    },
    /// A message on a stream without Content-Length (RFC 3261 18.3 makes it mandatory there).
    #[error("Content-Length is required on stream transports")]
    MissingContentLength,
    /// The message (head or head plus body) exceeds the size limit.
    #[error("message larger than {limit} octets")]
    MessageTooLarge {
        /// The limit in octets.
        limit: usize,
    },
    /// The head has more lines than allowed.
    #[error("more than {limit} header lines")]
    TooManyHeaderLines {
        /// The limit in lines.
        limit: usize,
    },
}

/// Limits a framer enforces so a peer cannot make us buffer without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingLimits {
    /// Largest message (head, empty line and body) in octets.
    pub max_message_size: usize,
    /// Most lines in the head, start line and continuation lines included.
    pub max_header_lines: usize,
}

impl Default for FramingLimits {
    fn default() -> Self {
        Self {
            max_message_size: 64 * 1024,
            max_header_lines: 256,
        }
    }
}

/// One framed message: the head (start line and headers, lines separated by CRLF, without the
/// empty line) and exactly the body Content-Length covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Start line and header lines.
    pub head: &'a [u8],
    /// The body.
    pub body: &'a [u8],
}

/// Position of the first CRLFCRLF at or after `from`.
fn find_head_end(bytes: &[u8], from: usize) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(HEAD_END.len())
        .position(|w| w == HEAD_END)
        .map(|p| p + from)
}

/// Number of leading CR/LF octets (keepalives, RFC 5626 section 3.5.1 and common practice).
fn leading_crlf(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// The Content-Length of a head, if any (long or compact name, any case). Duplicates that
/// agree are accepted; duplicates that disagree are an error.
pub fn content_length(head: &[u8]) -> Result<Option<usize>, FrameError> {
    let mut found: Option<usize> = None;
    for field in head::fields(head) {
        let Some(name) = field.name.as_deref() else {
            continue;
        };
        if !name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let value = field.value.trim();
        // Digits only: "-999" or "+5" must never become a length (RFC 4475 3.1.2.3).
        let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            value.parse::<usize>().ok()
        } else {
            None
        };
        let Some(n) = parsed else {
            return Err(FrameError::InvalidContentLength {
                value: head::sanitize(value).chars().take(32).collect(),
            });
        };
        match found {
            Some(first) if first != n => {
                return Err(FrameError::ConflictingContentLength { first, second: n });
            }
            _ => found = Some(n),
        }
    }
    Ok(found)
}

/// Frames one UDP datagram. Leading CRLF keepalives are skipped; without Content-Length the
/// body is the rest of the datagram; octets beyond Content-Length are ignored.
pub fn frame_datagram(bytes: &[u8]) -> Result<Frame<'_>, FrameError> {
    let bytes = bytes.get(leading_crlf(bytes)..).unwrap_or_default();
    if bytes.is_empty() {
        return Err(FrameError::Empty);
    }
    let (head, rest) = split_head(bytes).ok_or(FrameError::NoHeadEnd)?;
    let body = match content_length(head)? {
        None => rest,
        Some(declared) => rest.get(..declared).ok_or(FrameError::ShortBody {
            declared,
            available: rest.len(),
        })?,
    };
    Ok(Frame { head, body })
}

/// Splits at the first empty line: (head, everything after it).
pub(crate) fn split_head(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = find_head_end(bytes, 0)?;
    Some((
        bytes.get(..end)?,
        bytes.get(end + HEAD_END.len()..).unwrap_or_default(),
    ))
}

/// Cuts SIP messages out of a byte stream (TCP, TLS). Feed it with [`StreamFramer::push`] and
/// drain it with [`StreamFramer::next_message`] until `Ok(None)`. After an error the stream
/// cannot be resynchronised: the caller closes the connection (RFC 4475 3.1.2.3); the framer
/// keeps returning the same error.
#[derive(Debug, Clone, Default)]
pub struct StreamFramer {
    limits: FramingLimits,
    buffer: Vec<u8>,
    /// How far the buffer has been searched for the end of the head, so a message arriving a
    /// byte at a time is not rescanned from the start each time.
    scanned: usize,
    /// Line ends seen in `buffer[..scanned]` while looking for the end of the head.
    lines_seen: usize,
    /// Length of the message at the front of the buffer once its head has been read.
    pending_total: Option<usize>,
    failed: Option<FrameError>,
}

impl StreamFramer {
    /// A framer with the given limits.
    pub fn new(limits: FramingLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// Octets buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// The next complete message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let result = self.try_next();
        if let Err(err) = &result {
            self.failed = Some(err.clone());
            self.buffer = Vec::new();
        }
        result
    }

    fn try_next(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.pending_total.is_none() {
            let skip = leading_crlf(&self.buffer);
            if skip > 0 {
                // Messages start with a token, so leading CR/LF octets are keepalives.
                self.buffer.drain(..skip);
                self.scanned = 0;
                self.lines_seen = 0;
            }
        }
        let limit = self.limits.max_message_size;
        let total = match self.pending_total {
            Some(total) => total,
            None => {
                let from = self.scanned.saturating_sub(HEAD_END.len() - 1);
                let Some(end) = find_head_end(&self.buffer, from) else {
                    // Count only what arrived since the last call: a peer sending one octet
                    // at a time must not make each call rescan the whole buffer.
                    let new = self.buffer.get(self.scanned..).unwrap_or_default();
                    self.lines_seen += new.iter().filter(|&&b| b == b'\n').count();
                    self.scanned = self.buffer.len();
                    self.check_lines(self.lines_seen)?;
                    if self.buffer.len() > limit {
                        return Err(FrameError::MessageTooLarge { limit });
                    }
                    return Ok(None);
                };
                let head = self.buffer.get(..end).unwrap_or_default();
                self.check_lines(head.iter().filter(|&&b| b == b'\n').count())?;
                let body_len = content_length(head)?.ok_or(FrameError::MissingContentLength)?;
                let total = end
                    .checked_add(HEAD_END.len())
                    .and_then(|n| n.checked_add(body_len))
                    .filter(|&n| n <= limit)
                    .ok_or(FrameError::MessageTooLarge { limit })?;
                // The head is parsed once; waiting for the body costs nothing per push.
                self.pending_total = Some(total);
                total
            }
        };
        if self.buffer.len() < total {
            return Ok(None);
        }
        let message: Vec<u8> = self.buffer.drain(..total).collect();
        self.pending_total = None;
        self.scanned = 0;
        self.lines_seen = 0;
        Ok(Some(message))
    }

    fn check_lines(&self, newlines: usize) -> Result<(), FrameError> {
        let limit = self.limits.max_header_lines;
        if newlines >= limit {
            return Err(FrameError::TooManyHeaderLines { limit });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const MSG: &[u8] =
        b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nl: 5\r\n\r\nhello";

    #[test]
    fn datagram_body_is_content_length_and_extra_octets_are_ignored() {
        let mut bytes = MSG.to_vec();
        bytes.extend_from_slice(b"INVITE garbage");
        let f = frame_datagram(&bytes).unwrap();
        assert_eq!(f.body, b"hello");
        assert!(f.head.ends_with(b"l: 5"));
    }

    #[test]
    fn datagram_short_body_is_an_error() {
        let bytes = &MSG[..MSG.len() - 1];
        assert_eq!(
            frame_datagram(bytes),
            Err(FrameError::ShortBody {
                declared: 5,
                available: 4
            })
        );
    }

    #[test]
    fn datagram_without_content_length_takes_the_rest() {
        let f = frame_datagram(b"\r\n\r\nSIP/2.0 200 OK\r\nX: y\r\n\r\nabc").unwrap();
        assert_eq!(f.body, b"abc");
        assert_eq!(frame_datagram(b"\r\n\r\n"), Err(FrameError::Empty));
        assert_eq!(
            frame_datagram(b"SIP/2.0 200 OK\r\n"),
            Err(FrameError::NoHeadEnd)
        );
    }

    #[test]
    fn content_length_duplicates_negative_and_case() {
        assert_eq!(
            content_length(b"R\r\ncontent-LENGTH: 3\r\nL: 3").unwrap(),
            Some(3)
        );
        assert_eq!(
            content_length(b"R\r\nContent-Length: 3\r\nl: 4"),
            Err(FrameError::ConflictingContentLength {
                first: 3,
                second: 4
            })
        );
        assert!(matches!(
            content_length(b"R\r\nContent-Length: -999"),
            Err(FrameError::InvalidContentLength { .. })
        ));
        assert!(matches!(
            content_length(b"R\r\nContent-Length: 99999999999999999999999"),
            Err(FrameError::InvalidContentLength { .. })
        ));
    }

    #[test]
    fn stream_split_at_every_byte_boundary_yields_both_messages() {
        let second = b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut all = b"\r\n\r\n".to_vec();
        all.extend_from_slice(MSG);
        all.extend_from_slice(b"\r\n");
        all.extend_from_slice(second);
        for cut in 0..=all.len() {
            let mut framer = StreamFramer::default();
            let mut got = Vec::new();
            for part in [&all[..cut], &all[cut..]] {
                framer.push(part);
                while let Some(m) = framer.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, vec![MSG.to_vec(), second.to_vec()], "cut at {cut}");
            assert_eq!(framer.buffered(), 0);
        }
    }

    #[test]
    fn stream_byte_by_byte() {
        let mut framer = StreamFramer::default();
        let mut got = Vec::new();
        for b in MSG.iter().chain(MSG.iter()) {
            framer.push(&[*b]);
            while let Some(m) = framer.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn stream_requires_content_length_and_stays_failed() {
        let mut framer = StreamFramer::default();
        framer.push(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n");
        assert_eq!(framer.next_message(), Err(FrameError::MissingContentLength));
        framer.push(MSG);
        assert_eq!(framer.next_message(), Err(FrameError::MissingContentLength));
    }

    #[test]
    fn stream_line_limit_holds_when_lines_arrive_one_octet_at_a_time() {
        let mut framer = StreamFramer::new(FramingLimits {
            max_message_size: 1000,
            max_header_lines: 3,
        });
        let mut result = Ok(None);
        for b in b"R\r\na: 1\r\nb: 2\r\nc: 3\r\n" {
            framer.push(&[*b]);
            result = framer.next_message();
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(FrameError::TooManyHeaderLines { limit: 3 }));
    }

    #[test]
    fn stream_limits() {
        let limits = FramingLimits {
            max_message_size: 100,
            max_header_lines: 4,
        };
        let mut framer = StreamFramer::new(limits);
        framer.push(&[b'A'; 101]);
        assert_eq!(
            framer.next_message(),
            Err(FrameError::MessageTooLarge { limit: 100 })
        );

        let mut framer = StreamFramer::new(limits);
        framer.push(b"R\r\nContent-Length: 200\r\n\r\n");
        assert_eq!(
            framer.next_message(),
            Err(FrameError::MessageTooLarge { limit: 100 })
        );

        let mut framer = StreamFramer::new(limits);
        framer.push(b"R\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n");
        assert_eq!(
            framer.next_message(),
            Err(FrameError::TooManyHeaderLines { limit: 4 })
        );

        let mut framer = StreamFramer::new(limits);
        framer.push(b"R\r\nContent-Length: -1\r\n\r\n");
        assert!(matches!(
            framer.next_message(),
            Err(FrameError::InvalidContentLength { .. })
        ));
    }
}
