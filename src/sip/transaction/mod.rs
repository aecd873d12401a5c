//! The RFC 3261 section 17 transaction layer, with the RFC 6026 corrections, sans-IO.
//!
//! A transaction is one request and the responses to it. This layer makes that exchange
//! reliable over UDP (retransmitting requests and responses on the RFC's timers) and absorbs
//! the duplicates the network delivers, so the transaction user (TU: the UAS/UAC cores and
//! dialogs) sees each request once and each response once (2xx to INVITE excepted, below).
//!
//! ## What lives here
//!
//! - [`TimerTable`] and [`TimerConfig`]: one slot per named timer (A-M), T1/T2/T4.
//! - Four state machines: [`InviteServer`] (17.2.1), [`NonInviteServer`] (17.2.2),
//!   [`NonInviteClient`] (17.1.2) and [`InviteClient`] (17.1.1).
//! - [`TransactionKey`] (the matching rules of 17.1.3 and 17.2.3, including the RFC 2543
//!   fallback) and [`TransactionTable`], a bounded map from key to [`TransactionId`].
//!
//! ## Messages are opaque here
//!
//! Nothing in this module parses or builds SIP. A machine is handed the *encoded* message it
//! must (re)send ([`Wire`]: shared bytes, so a retransmission is a reference-count increment)
//! and the few facts it acts on (a status code, whether a request is an ACK). Messages handed
//! to the TU are of a caller-chosen type `M` (a parsed response, for instance), carried through
//! untouched. Matching takes the fields it compares as plain strings in [`RequestFields`]; the
//! caller extracts them from its parsed message.
//!
//! ## How a shell drives a machine
//!
//! Create the machine with the current time; feed it what arrives (`handle_request`,
//! `handle_ack`, `handle_response`), what the TU decides (`send_provisional`, `send_final`),
//! transport failures (`handle_transport_error`) and expired timers (`handle_timeout` once
//! `poll_timeout` has passed). After every call drain `poll_transmit` (bytes to send to the
//! transaction's peer) and `poll_event` (for the TU) until both are `None`. A machine whose
//! [`state`](InviteServer::state) is `Terminated` has emitted [`TxEvent::Terminated`]; the
//! shell then removes its key from the [`TransactionTable`]. Time enters only as `now`.
//!
//! ## Reliable transports
//!
//! With `reliable = true` (TCP, TLS) the retransmission timers A, E and G are never armed and
//! the "wait for stray retransmissions" timers D, I, J and K are zero, so the machine
//! terminates at once instead of arming a zero-length timer (RFC 3261 17.1.1.2, 17.1.2.2,
//! 17.2.1, 17.2.2). B, F, H, L and M keep their 64*T1 values.
//!
//! ## RFC 6026 deviations from RFC 3261
//!
//! RFC 3261 destroyed an INVITE transaction as soon as a 2xx was sent or received, which made
//! retransmitted INVITEs look like new requests at the server and let stray 2xx retransmissions
//! at the client go unmatched. RFC 6026 replaces that with an **Accepted** state on both sides:
//!
//! - [`InviteServer`]: a 2xx moves Proceeding -> Accepted and arms Timer L (64*T1). In
//!   Accepted, retransmitted INVITEs are absorbed (not answered: the *TU* retransmits the 2xx
//!   until the ACK arrives, RFC 3261 13.3.1.4, by calling `send_final` again, which this
//!   machine passes to the transport), and an ACK is passed to the TU as
//!   [`TxEvent::AckReceived`]. A transport error there is reported to the TU without ending
//!   the transaction. Timer L terminates it.
//! - [`InviteClient`]: a 2xx moves Calling/Proceeding -> Accepted and arms Timer M (64*T1).
//!   Every 2xx received in Accepted (retransmissions, or 2xx from other forks) is passed to
//!   the TU, which sends the ACK itself (the ACK for a 2xx is its own transaction-less request,
//!   built by the dialog). Timer M terminates the transaction; a transport error does not
//!   (the machine sends nothing in Accepted).
//! - A non-2xx final response from the TU in Accepted is refused
//!   ([`TransactionError::ResponseNotAllowed`]): RFC 6026's Accepted state has no such
//!   transition. Responses arriving in Completed/Accepted that neither RFC routes to the TU
//!   (a 3xx-6xx in Accepted, a 2xx in Completed) are absorbed here.

mod invite_client;
mod invite_server;
mod key;
mod non_invite_client;
mod non_invite_server;
mod timer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use invite_client::{InviteClient, InviteClientState};
pub use invite_server::{InviteServer, InviteServerState};
pub use key::{
    DEFAULT_TABLE_CAPACITY, MAGIC_COOKIE, MAX_KEY_BYTES, RequestFields, TransactionId,
    TransactionKey, TransactionTable,
};

pub use non_invite_client::{NonInviteClient, NonInviteClientState};
pub use non_invite_server::{NonInviteServer, NonInviteServerState};
pub use timer::{Timer, TimerConfig, TimerTable};

/// The shortest interval a timer is armed for (see `Core::arm`).
const MIN_TIMER: Duration = Duration::from_millis(1);

/// An encoded SIP message, shared so that retransmissions do not copy it.
pub type Wire = Arc<[u8]>;

/// A SIP status code (100-699), as the caller read it from the status line.
pub type StatusCode = u16;

/// Errors of the transaction layer: things the TU asked for that the RFC does not allow, and
/// a full [`TransactionTable`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// A status code outside 100-699, or of the wrong class for the call (a 2xx passed to
    /// `send_provisional`, for instance).
    #[error("status code {status} is not valid here")]
    InvalidStatus {
        /// The rejected code.
        status: StatusCode,
    },
    /// The transaction's state does not allow sending this response (RFC 3261 17.2 and RFC
    /// 6026: nothing after a final response, except 2xx retransmissions in Accepted).
    #[error("a {status} response cannot be sent in the {state} state")]
    ResponseNotAllowed {
        /// The rejected code.
        status: StatusCode,
        /// The machine's state, for the log.
        state: &'static str,
    },
    /// The key's fields (branch, sent-by, or the RFC 2543 fields) are longer than any
    /// legitimate request needs; the caller answers 400 or drops the request.
    #[error("the transaction key is {bytes} bytes long (at most {limit})")]
    KeyTooLarge {
        /// The key's size.
        bytes: usize,
        /// [`MAX_KEY_BYTES`].
        limit: usize,
    },
    /// The table holds its maximum number of transactions; the caller answers the request
    /// with 503 Service Unavailable.
    #[error("the transaction table is full ({capacity} transactions)")]
    TableFull {
        /// The configured cap.
        capacity: usize,
    },
    /// A transaction with this key already exists (the caller should have matched the
    /// request to it instead).
    #[error("a transaction with this key already exists")]
    DuplicateKey,
}

/// Bytes to send to the transaction's peer (the shell knows the address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The encoded message.
    pub payload: Wire,
    /// Whether this is a repeat of something already sent (a timer retransmission, or a
    /// stored response/ACK resent because the peer retransmitted); for logs and metrics.
    pub retransmission: bool,
}

/// What a transaction tells its TU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxEvent<M> {
    /// A response for the TU (client transactions): each provisional, the final response once,
    /// and in Accepted every 2xx.
    Response {
        /// The response's status code.
        status: StatusCode,
        /// The response, as the caller handed it in.
        message: M,
    },
    /// An ACK for a 2xx arrived at an [`InviteServer`] in Accepted (RFC 6026): the dialog
    /// stops retransmitting its 2xx.
    AckReceived(M),
    /// Timer B, F or H fired: no (final) response, or no ACK, in 64*T1.
    Timeout,
    /// The transport reported a failure sending for this transaction (RFC 3261 17.1.4,
    /// 17.2.4).
    TransportError,
    /// The transaction is over; its key can be removed from the table. Emitted exactly once.
    Terminated,
}

/// What every machine shares: timers, output queues and the transport's reliability.
#[derive(Debug)]
struct Core<M> {
    config: TimerConfig,
    reliable: bool,
    timers: TimerTable,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent<M>>,
}

impl<M> Core<M> {
    fn new(config: TimerConfig, reliable: bool) -> Self {
        Self {
            config,
            reliable,
            timers: TimerTable::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn send(&mut self, payload: &Wire, retransmission: bool) {
        self.transmits.push_back(Transmit {
            payload: Arc::clone(payload),
            retransmission,
        });
    }

    fn emit(&mut self, event: TxEvent<M>) {
        self.events.push_back(event);
    }

    /// Stops every timer and tells the TU; the caller sets its state to Terminated.
    fn terminate(&mut self) {
        self.timers.stop_all();
        self.events.push_back(TxEvent::Terminated);
    }

    /// Arms `timer` to fire `after` from `now`. Every timer this layer arms is meant to be
    /// positive (the zero-length ones of reliable transports are never armed), so a zero
    /// duration from a misconfigured T1 is raised to [`MIN_TIMER`]: otherwise a retransmission
    /// timer would re-arm at `now` forever and `handle_timeout` would never return. A deadline
    /// beyond what `Instant` can represent means "never".
    fn arm(&mut self, timer: Timer, now: Instant, after: Duration) {
        match now.checked_add(after.max(MIN_TIMER)) {
            Some(deadline) => self.timers.set(timer, deadline),
            None => self.timers.stop(timer),
        }
    }
}

/// Whether a received status code is one SIP defines (RFC 3261 7.2: 100-699).
fn valid_status(status: StatusCode) -> bool {
    (100..=699).contains(&status)
}
