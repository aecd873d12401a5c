//! The SIP room: everything between bytes on a SIP socket and the call's logic.
//!
//! All of it is sans-IO (no sockets, tasks or clock; see the crate overview). The room is
//! planned as:
//!
//! - **message**: transport framing (UDP datagrams, TCP/TLS streams), parsing with the gap
//!   fixes rsip 0.4 needs, typed accessors, and response building (including 400 for
//!   requests that do not parse);
//! - **transaction**: the RFC 3261 section 17 client and server transactions and their timers;
//! - **dialog**: dialog state, in-dialog requests, session timers (RFC 4028);
//! - **sdp**: offer/answer (RFC 3264) for PCMU, PCMA, Opus and telephone-event.
//!
//! Only the modules below exist so far; the others arrive with their own changes.

pub mod message;
