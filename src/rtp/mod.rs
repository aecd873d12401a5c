//! The RTP room: everything between RTP datagrams and 20 ms frames of audio, sans-IO.
//!
//! - [`packet`]: RTP header validation (RFC 3550 A.1) and writing.
//! - [`ports`]: the RTP port pool: even ports round-robin, quarantine after each call.
//! - [`receive`]: the receive path: source latching, sequence tracking, reorder, concealment,
//!   20 ms re-framing.
//! - [`rtcp`]: RTCP reports, BYE, intervals, RTT and call statistics (RFC 3550 6).
pub mod packet;
pub mod ports;
pub mod receive;
pub mod rtcp;
