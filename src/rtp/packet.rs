//! RTP packets on the wire (RFC 3550 section 5.1): validation of what arrives, and the
//! 12-byte header of what we send.
//!
//! Parsing sits on `rtp-rs` (version, CSRC list, header extension and padding bounds), with
//! the checks it leaves to us: padding that would eat into the header, and RTCP packets that
//! share the port under rtcp-mux (RFC 5761 section 4: payload-type octet 192-223).

/// RTP version 2.
const VERSION: u8 = 2;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 12;

/// The fields of an RTP header that the media path uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit (start of a talkspurt for audio).
    pub marker: bool,
    /// Payload type, 0-127.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

/// A validated RTP packet borrowed from its datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The header.
    pub header: RtpHeader,
    /// The payload, without CSRCs, extension or padding.
    pub payload: &'a [u8],
}

/// Why a datagram is not an acceptable RTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the fixed header.
    #[error("shorter than an RTP header ({0} octets)")]
    TooShort(usize),
    /// Not version 2.
    #[error("RTP version {0}")]
    Version(u8),
    /// The CSRC list or header extension runs past the end.
    #[error("CSRC list or header extension truncated")]
    Truncated,
    /// The padding count is zero or larger than what follows the header.
    #[error("invalid padding")]
    Padding,
    /// An RTCP packet (RFC 5761 demultiplexing), not RTP.
    #[error("RTCP packet on the RTP path")]
    Rtcp,
}

/// Whether a datagram on a muxed port is RTCP (RFC 5761 section 4: the second octet, which is
/// the RTCP packet type, lies in 192-223; RTP payload types never do once the marker is
/// masked, for the types RFC 5761 allows with rtcp-mux).
pub fn is_rtcp(bytes: &[u8]) -> bool {
    bytes.get(1).is_some_and(|b| (192..=223).contains(b))
}

/// Validates a datagram as RTP (RFC 3550 A.1's header checks).
pub fn parse(bytes: &[u8]) -> Result<RtpPacket<'_>, PacketError> {
    use rtp_rs::RtpReaderError as E;
    if bytes.len() < HEADER_LEN {
        return Err(PacketError::TooShort(bytes.len()));
    }
    if is_rtcp(bytes) {
        return Err(PacketError::Rtcp);
    }
    let reader = rtp_rs::RtpReader::new(bytes).map_err(|e| match e {
        E::BufferTooShort(n) => PacketError::TooShort(n),
        E::UnsupportedVersion(v) => PacketError::Version(v),
        E::HeadersTruncated { .. } => PacketError::Truncated,
        E::PaddingLengthInvalid(_) => PacketError::Padding,
    })?;
    if reader.version() != VERSION {
        return Err(PacketError::Version(reader.version()));
    }
    // rtp-rs bounds the padding by the datagram; it must not reach into the headers either,
    // and a padding count of zero is invalid (RFC 3550 5.1).
    let payload_start = reader.payload_offset();
    let padding = match reader.padding() {
        Some(0) => return Err(PacketError::Padding),
        Some(n) => usize::from(n),
        None => 0,
    };
    let end = bytes
        .len()
        .checked_sub(padding)
        .filter(|end| *end >= payload_start)
        .ok_or(PacketError::Padding)?;
    let payload = bytes.get(payload_start..end).ok_or(PacketError::Padding)?;
    Ok(RtpPacket {
        header: RtpHeader {
            marker: reader.mark(),
            payload_type: reader.payload_type(),
            sequence: u16::from(reader.sequence_number()),
            timestamp: reader.timestamp(),
            ssrc: reader.ssrc(),
        },
        payload,
    })
}

/// Appends a packet with `header` (no CSRCs, no extension, no padding) and `payload` to `out`.
pub fn write(header: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.push(VERSION << 6);
    out.push((u8::from(header.marker) << 7) | (header.payload_type & 0x7f));
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use proptest::prelude::*;

    use super::*;

    fn header() -> RtpHeader {
        RtpHeader {
            marker: true,
            payload_type: 8,
            sequence: 65535,
            timestamp: 0xdead_beef,
            ssrc: 0x0102_0304,
        }
    }

    #[test]
    fn written_packets_parse_back() {
        let mut out = Vec::new();
        write(&header(), &[1, 2, 3], &mut out);
        assert_eq!(
            out[..HEADER_LEN],
            [0x80, 0x88, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]
        );
        let packet = parse(&out).unwrap();
        assert_eq!(packet.header, header());
        assert_eq!(packet.payload, [1, 2, 3]);
    }

    #[test]
    fn csrcs_extension_and_padding_are_skipped() {
        let mut bytes = vec![0x80 | 0x20 | 0x10 | 2, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        bytes.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // two CSRCs
        bytes.extend_from_slice(&[0xbe, 0xde, 0, 1, 9, 9, 9, 9]); // one-word extension
        bytes.extend_from_slice(&[7, 7, 7]); // payload
        bytes.extend_from_slice(&[0, 0, 3]); // three octets of padding
        let packet = parse(&bytes).unwrap();
        assert_eq!(packet.payload, [7, 7, 7]);
        assert_eq!((packet.header.sequence, packet.header.timestamp), (1, 160));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let mut good = Vec::new();
        write(&header(), &[1, 2, 3, 4], &mut good);
        assert_eq!(parse(&good[..11]), Err(PacketError::TooShort(11)));
        let mut v1 = good.clone();
        v1[0] = 0x40;
        assert_eq!(parse(&v1), Err(PacketError::Version(1)));
        let mut csrc = good.clone();
        csrc[0] |= 0x0f; // 15 CSRCs that are not there
        assert_eq!(parse(&csrc), Err(PacketError::Truncated));
        let mut ext = good.clone();
        ext[0] |= 0x10; // extension header missing
        assert_eq!(parse(&ext), Err(PacketError::Truncated));
        let mut pad = good.clone();
        pad[0] |= 0x20;
        *pad.last_mut().unwrap() = 200; // more padding than payload
        assert!(parse(&pad).is_err());
        let mut zero = good.clone();
        zero[0] |= 0x20;
        *zero.last_mut().unwrap() = 0;
        assert_eq!(parse(&zero), Err(PacketError::Padding));
        let mut rtcp = good;
        rtcp[1] = 200; // a sender report on a muxed port
        assert_eq!(parse(&rtcp), Err(PacketError::Rtcp));
    }

    proptest! {
        #[test]
        fn no_input_panics_and_payload_is_inside(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(packet) = parse(&bytes) {
                prop_assert!(packet.payload.len() + HEADER_LEN <= bytes.len());
            }
        }
    }
}
