//! The SIP room: everything between bytes on a SIP socket and the call's logic.
//!
//! All of it is sans-IO (no sockets, tasks or clock; see the crate overview):
//!
//! - [`message`]: transport framing (UDP datagrams, TCP/TLS streams), our own lenient parser
//!   with typed accessors (rsip 0.4 failed too much of RFC 4475/5118 to sit in front; the
//!   measurements are in the module docs), and response building, including a 400 for a
//!   request that does not parse when it can be addressed;
//! - [`transaction`]: the RFC 3261 section 17 client and server transactions with the RFC 6026
//!   changes, their timers, matching and the transaction table;
//! - [`sdp`]: lenient SDP parsing and RFC 3264 offer/answer for PCMU, PCMA, Opus and
//!   telephone-event;
//! - [`dialog`]: the UAS call core: dialog state, 2xx retransmission until the ACK, CANCEL,
//!   BYE, re-INVITE/UPDATE offer/answer, OPTIONS, RFC 4028 session timers, blind transfer
//!   (REFER, NOTIFY sipfrag), and the replies to requests outside any dialog;
//! - [`register`]: the REGISTER client of one PBX account (challenge, refresh, back-off,
//!   de-registration), with [`auth`] (digest MD5/SHA-256, qop=auth);
//! - [`endpoint`]: all calls behind one front door: parse, stamp `received`/`rport`, route
//!   replies per RFC 3261 18.2.2, dispatch to the call by Call-ID, admit new INVITEs, drive the
//!   registrations, answer the rest statelessly. Its tokio shell is `io::sip`;
//! - [`limits`]: the per-source rate limit (token buckets, bans) and the INVITE ACL that the
//!   shell applies in front of the endpoint.

pub mod auth;
pub mod dialog;
pub mod endpoint;
pub mod limits;
pub mod message;
pub mod register;
pub mod sdp;
pub mod transaction;
