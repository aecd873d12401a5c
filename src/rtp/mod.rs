//! The RTP room: everything between RTP datagrams and 20 ms frames of audio, sans-IO.
//!
//! - [`packet`]: RTP header validation (RFC 3550 A.1) and writing.
//! - [`rtcp`]: RTCP reports, BYE, intervals, RTT and call statistics (RFC 3550 6), sans-IO.
pub mod packet;
pub mod rtcp;
