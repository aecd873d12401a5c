//! The RTP room: everything between RTP datagrams and 20 ms frames of audio, sans-IO.
//!
//! - [`packet`]: RTP header validation (RFC 3550 A.1) and writing.
//! - [`ports`]: the RTP port pool: even ports round-robin, quarantine after each call.
//! - [`receive`]: the receive path: source latching, sequence tracking, reorder, concealment,
//!   20 ms re-framing.
//! - [`playout`]: the pacer: model audio out as RTP on an absolute 20 ms clock, silence fill,
//!   hold, and the exact sent/received account that barge-in truncation needs.
//! - [`dtmf`]: RFC 4733 telephone-events (receive and send) and SIP INFO dtmf-relay bodies.
//! - [`rtcp`]: RTCP reports, BYE, intervals, RTT and call statistics (RFC 3550 6).
pub mod dtmf;
pub mod packet;
pub mod playout;
pub mod ports;
pub mod receive;
pub mod rtcp;
