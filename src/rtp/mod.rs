//! The RTP room: everything between RTP datagrams and 20 ms frames of audio, sans-IO.
//!
//! - [`packet`]: RTP header validation (RFC 3550 A.1) and writing.
pub mod packet;
