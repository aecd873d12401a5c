//! The RTP room: everything between RTP datagrams and 20 ms frames of audio, sans-IO.
//!
//! - [`packet`]: RTP header validation (RFC 3550 A.1) and writing.
//! - [`ports`]: the RTP port pool: even ports round-robin, quarantine after each call.
//! - [`receive`]: the receive path: source latching, sequence tracking, reorder, concealment,
//!   20 ms re-framing.
pub mod packet;
pub mod ports;
pub mod receive;
