//! SDP (RFC 8866, formerly RFC 4566) and the RFC 3264 offer/answer model, sans-IO.
//!
//! - [`session`]: the [`SessionDescription`] model and a lenient, bounded [`parse`]: PBX SDP is
//!   often sloppy (LF-only line ends, missing `s=`/`t=`, upper-case codec names, no `a=rtpmap`
//!   for static payload types, unknown lines), so input is accepted whenever the audio stream can
//!   still be understood; the parser never panics and refuses oversized bodies.
//! - [`offer_answer`]: [`answer`] an offer (codec choice in our preference order, DTMF,
//!   ptime, direction, rtcp-mux, rejected streams), build an [`offer`] for an offerless INVITE,
//!   and [`negotiate_answer`] to read the answer to our offer. Every path ends in the same
//!   [`Negotiated`] terms, which re-INVITE handling compares ([`Negotiated::changes_since`]).
//!
//! Output is exact: CRLF line ends, fields in RFC 8866 order, one active `m=audio` line.
//!
//! ```
//! use sip_realtime_bridge::sip::sdp::{answer, parse, Codec, CodecPrefs, LocalMedia};
//!
//! let offer = parse("v=0\nc=IN IP4 192.0.2.7\nm=audio 4000 RTP/AVP 0 8\n").expect("lenient");
//! let local = LocalMedia::new("192.0.2.1".parse().expect("ip"), 20000, 42, 1);
//! let prefs = CodecPrefs::new([Codec::Pcma, Codec::Pcmu]);
//! let answer = answer(&offer, &local, &prefs).expect("PCMA is offered");
//! assert_eq!(answer.negotiated.codec, Codec::Pcma);
//! assert!(answer.sdp.contains("m=audio 20000 RTP/AVP 8\r\n"));
//! ```

pub mod offer_answer;
pub mod session;

pub use offer_answer::{
    Answer, Codec, CodecPrefs, LocalMedia, MediaChange, Negotiated, NegotiationError, answer,
    negotiate_answer, offer,
};
pub use session::{
    Connection, Direction, Fmtp, MAX_SDP_BYTES, MAX_SDP_LINES, MAX_SDP_MEDIA, MediaDescription,
    MediaKind, Origin, RtcpAttribute, RtpMap, SdpError, SessionDescription, parse,
};

#[cfg(test)]
mod tests;
