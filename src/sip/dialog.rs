//! The UAS dialog core: one inbound call from its INVITE to its end, sans-IO.
//!
//! [`UasCall`] is created from a parsed initial INVITE and owns everything the call needs on
//! the SIP side: the INVITE server transaction, the server transactions of later requests, the
//! client transactions of the requests we send (BYE, session-refresh UPDATE or re-INVITE, and
//! the ACK for a 2xx to that re-INVITE), the dialog state
//! of RFC 3261 section 12 (tags, Call-ID, CSeq numbers, route set, remote target) and the
//! offer/answer state of RFC 3264 (through [`super::sdp`]).
//!
//! It speaks the crate's verbs: feed it requests ([`UasCall::handle_request`]), responses to
//! its own requests ([`UasCall::handle_response`]) and expired timers
//! ([`UasCall::handle_timeout`]); give it the call logic's decisions ([`UasCall::ring`],
//! [`UasCall::answer`], [`UasCall::reject`], [`UasCall::hang_up`]); then drain
//! [`UasCall::poll_transmit`] and [`UasCall::poll_event`] and ask [`UasCall::poll_timeout`].
//!
//! ## What it answers by itself
//!
//! - 100 Trying at once; the 2xx retransmitted until the ACK (RFC 3261 13.3.1.4: the TU's job,
//!   since RFC 6026 leaves the transaction in Accepted), BYE after 64*T1 without one;
//! - CANCEL (200, and 487 to the INVITE while it is unanswered), BYE (200), OPTIONS (200 with
//!   Allow/Accept/Supported), re-INVITE and UPDATE (new answer, 491 while a re-INVITE waits for
//!   its ACK or our own re-INVITE waits for its final response, 488 with Warning when the new
//!   offer has no common codec), unknown methods (501),
//!   CSeq regressions (500, RFC 3261 12.2.2), requests for another dialog (481);
//! - before any method-specific handling of an in-dialog request (ACK and CANCEL aside): 420
//!   Bad Extension with `Unsupported` when its Require lists an option tag we lack (RFC 3261
//!   8.2.2.3); then, for a re-INVITE or UPDATE, 415 with `Accept: application/sdp` for a body
//!   that is not SDP and 406 when its `Accept` rules out the SDP our 2xx would carry
//!   ([`check_offer_acceptable`], which the endpoint also applies to initial INVITEs);
//! - an offer that overlaps one still open (a re-INVITE or an UPDATE with SDP before our answer
//!   to the INVITE) gets 500 with a Retry-After from 0 to 10 s (RFC 3261 14.2). The RFC wants
//!   it random; the core derives it from a hash of the Call-ID instead (stable for the call,
//!   spread across calls);
//! - RFC 4028 session timers: the 200 echoes Session-Expires with a refresher, 422 below our
//!   Min-SE (to callers that support timers; otherwise the interval is raised), a refresh at
//!   half the interval when we refresh, BYE when the session expires. A request without
//!   Session-Expires gets ours ([`SessionTimerConfig::session_expires`], at least Min-SE) with
//!   `refresher=uas` (RFC 4028 section 9): we refresh; `Require: timer` only goes to a caller
//!   that said it supports timers.
//!
//! ## Session refreshes we send
//!
//! When we are the refresher, half the interval after the last negotiation or successful
//! refresh we send ([`DialogEvent::RefreshDue`]):
//!
//! - an UPDATE without body when the peer allows UPDATE: its latest `Allow` (in its INVITE, or
//!   any later request or response) lists it, or, with no `Allow` ever seen, its `Supported`
//!   does;
//! - otherwise a re-INVITE (always allowed) carrying the SDP we last sent, unchanged, so with
//!   the same `o=` version (RFC 3264 section 8). It waits 1 s while another INVITE transaction
//!   is in progress (RFC 3261 14.1). Its 2xx is ACKed by us (RFC 3261 13.2.2.4: a new
//!   transaction with the INVITE's CSeq number, to the remote target through the route set,
//!   again for each 2xx retransmission); its answer updates the media terms if they changed.
//!   A 3xx-6xx is ACKed by its transaction.
//!
//! The session expires (BYE, [`EndedBy::SessionExpired`]) `min(32, SE/3)` seconds before the
//! interval since the last successful negotiation or refresh runs out, whoever refreshes. The
//! outcome of our refresh:
//!
//! - 2xx: the interval (the 2xx's Session-Expires, else ours) starts again, and the 2xx's
//!   Contact becomes the remote target;
//! - 422 with a Min-SE above the interval: retried at once with that interval and Min-SE;
//! - 491: retried after 1 s (RFC 3261 14.1 gives the side that did not choose the Call-ID a
//!   random 0-2 s; a core draws no random numbers, so the middle of the range);
//! - 405 or 501 to an UPDATE: the peer takes no UPDATE after all; retried at once as a
//!   re-INVITE;
//! - 408, or no final response (Timer B/F): BYE, [`EndedBy::RefreshTimeout`];
//! - 481: the dialog is gone at the peer (RFC 3261 12.2.1.2); no BYE, [`EndedBy::DialogGone`];
//! - a transport error: BYE, [`EndedBy::TransportFailure`];
//! - any other final response: no retry; the session expires on its deadline.
//!
//! Requests that match no dialog go to [`respond_out_of_dialog`].
//!
//! Every call ends with exactly one [`DialogEvent::Ended`]; a BYE we send at that point is
//! still driven to completion, and [`UasCall::is_finished`] says when nothing is left to do.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message::{NameAddr, SipMessage, Uri, build_response, sanitize};
use super::sdp::{
    self, CodecPrefs, LocalMedia, MediaChange, Negotiated, NegotiationError, SessionDescription,
};
use super::transaction::{
    InviteClient, InviteClientState, InviteServer, InviteServerState, NonInviteClient,
    NonInviteClientState, NonInviteServer, RequestFields, TimerConfig, TransactionError,
    TransactionKey, Transmit as TxTransmit, TxEvent, Wire,
};

#[cfg(test)]
mod tests;

/// Server transactions one call keeps at once (its INVITE, a re-INVITE, in-dialog requests).
const MAX_SERVER_TRANSACTIONS: usize = 32;
/// The methods we accept in a dialog, for `Allow`.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, NOTIFY";
/// The option tags we support, for `Supported`.
pub const SUPPORTED: &str = "timer";
/// The body types we accept, for `Accept`.
pub const ACCEPT: &str = "application/sdp";
/// RFC 4028's lowest allowed Min-SE, and our default.
pub const DEFAULT_MIN_SE: u32 = 90;
/// Max-Forwards of the requests we send.
const MAX_FORWARDS: u32 = 70;
/// Retry-After of a 500 that refuses an overlapping offer is at most this many seconds (RFC
/// 3261 14.2: "a randomly chosen value of between 0 and 10 seconds"); see [`retry_after_secs`].
const RETRY_AFTER_MAX_SECS: u32 = 10;
/// RFC 4028 section 10: the non-refresher sends BYE `min(32, SE/3)` seconds before expiry.
const EXPIRY_MARGIN_MAX_SECS: u32 = 32;
/// How long after a 491 to our session refresh we try again, and how long a re-INVITE refresh
/// waits while another INVITE transaction is in progress. RFC 3261 14.1 asks the UAC that does
/// not own the Call-ID (us: the caller chose it) for a random delay from 0 to 2 s; a sans-IO
/// core draws no random numbers, and the middle of that range is as good as any draw.
const GLARE_RETRY: Duration = Duration::from_secs(1);

/// Errors of the dialog layer: commands the call's state does not allow, and requests that are
/// not this layer's to take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// [`UasCall::new`] was given something other than an INVITE request.
    #[error("a call can only be created from an INVITE request")]
    NotAnInvite,
    /// The initial INVITE already carries a To tag: it belongs to a dialog that is not ours
    /// (the caller answers it with 481, see [`respond_out_of_dialog`]).
    #[error("the INVITE already has a To tag")]
    AlreadyInDialog,
    /// The command is not possible in the call's current state.
    #[error("{command} is not allowed while the call is {state}")]
    NotAllowed {
        /// The command, for the log.
        command: &'static str,
        /// The call's state, for the log.
        state: &'static str,
    },
    /// A status code outside the range the command takes.
    #[error("status code {status} is not valid for {command}")]
    InvalidStatus {
        /// The command.
        command: &'static str,
        /// The rejected code.
        status: u16,
    },
    /// The offer could not be answered; a 488 with a Warning was sent and the call is over.
    #[error("the offer could not be answered: {0}")]
    Negotiation(#[from] NegotiationError),
    /// The transaction layer refused a response (a local invariant broke).
    #[error("transaction layer: {0}")]
    Transaction(#[from] TransactionError),
}

/// Where a transmission goes; the shell turns this into a socket address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A response: sent back per the top Via (RFC 3261 18.2.2, RFC 3581 rport), usually on the
    /// connection or to the source the request came from.
    ReplyPerVia,
    /// A request we send in the dialog: resolve this URI (the remote target, or the first
    /// route of the route set) per RFC 3263.
    Uri(Uri),
}

/// Bytes to send and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The encoded message.
    pub payload: Wire,
    /// Where it goes.
    pub destination: Destination,
    /// Whether it repeats something already sent (for logs and metrics).
    pub retransmission: bool,
}

/// Why a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndedBy {
    /// The caller sent BYE.
    Remote,
    /// We hung up ([`UasCall::hang_up`]) or rejected ([`UasCall::reject`]).
    Local,
    /// The caller cancelled before the answer.
    Cancelled,
    /// Our 2xx was never acknowledged (64*T1); we sent BYE.
    AckTimeout,
    /// The session timer ran out without a successful refresh (RFC 4028 section 10): the peer
    /// did not refresh, or it refused ours (any non-2xx but 408, 422 with a usable Min-SE, 481
    /// and 491) and no later refresh got through; we sent BYE.
    SessionExpired,
    /// Our session refresh got no final response (Timer B/F) or a 408 Request Timeout (RFC
    /// 4028 section 10, RFC 3261 12.2.1.2); we sent BYE.
    RefreshTimeout,
    /// The peer answered a request of ours (a session refresh) with 481: the dialog no longer
    /// exists on its side (RFC 3261 12.2.1.2). No BYE was sent: there is no dialog to end.
    DialogGone,
    /// We refused the INVITE ourselves with this status (422, 488).
    Refused {
        /// The status sent.
        status: u16,
    },
    /// The ACK of an offerless INVITE carried no usable answer; we sent BYE.
    BadAnswer,
    /// The transport could not deliver our session refresh; we sent BYE (which the transport
    /// may fail to deliver too).
    TransportFailure,
}

/// What the call logic learns from the dialog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialogEvent {
    /// The media terms of the call are known: at [`UasCall::answer`] when the INVITE had an
    /// offer, at the ACK when it had none.
    MediaNegotiated(Negotiated),
    /// Our 200 OK to the INVITE went out ([`UasCall::answer`]): the call is answered (the
    /// media terms come with it, or at the ACK of an offerless INVITE).
    Answered,
    /// The ACK for our 2xx arrived: the dialog is confirmed.
    Confirmed,
    /// A re-INVITE or UPDATE changed the media terms (hold, resume, new address, new codec).
    MediaChanged(Negotiated, MediaChange),
    /// The caller cancelled the INVITE before the answer (followed by `Ended`).
    Cancelled,
    /// Our 2xx was not acknowledged within 64*T1; BYE was sent (followed by `Ended`).
    AckTimeout,
    /// We are the session-timer refresher and sent a session refresh: at half the interval, and
    /// again when the peer asks for a retry (491, 422 with Min-SE, 405/501 to an UPDATE). It is
    /// an UPDATE when the peer allows UPDATE, else a re-INVITE with our current SDP.
    RefreshDue,
    /// The caller pressed a key, signalled by SIP INFO (`application/dtmf-relay`) rather than
    /// RFC 4733 in the media.
    Digit(crate::rtp::dtmf::DigitPress),
    /// The peer accepted our REFER (202): the transfer is being attempted; NOTIFYs follow.
    TransferAccepted,
    /// The peer refused our REFER (`status`), or it got no answer (`None`).
    TransferFailed { status: Option<u16> },
    /// A NOTIFY about our REFER (RFC 3515 sipfrag): the status of the transferred call so far;
    /// `terminated` when the subscription ended (the status is then final).
    TransferProgress { status: u16, terminated: bool },
    /// The call is over. Emitted exactly once, last.
    Ended {
        /// Why.
        by: EndedBy,
    },
}

/// Which side refreshes the session (RFC 4028).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    /// The caller (`refresher=uac`).
    Uac,
    /// We (`refresher=uas`).
    Uas,
}

impl Refresher {
    fn as_str(self) -> &'static str {
        match self {
            Self::Uac => "uac",
            Self::Uas => "uas",
        }
    }
}

/// RFC 4028's recommended session interval, and our default when the caller asks for none.
pub const DEFAULT_SESSION_EXPIRES: u32 = 1800;

/// Our session-timer policy (RFC 4028).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimerConfig {
    /// Whether session timers are used at all; when off, Session-Expires is ignored and we
    /// never ask for one.
    pub enabled: bool,
    /// The shortest interval we accept, in seconds (422 below it).
    pub min_se: u32,
    /// The interval we ask for, in seconds, when a request has no Session-Expires (RFC 4028
    /// section 9 lets the UAS insert one; we then refresh). Values below `min_se` (or below the
    /// request's Min-SE) are raised to it.
    pub session_expires: u32,
}

impl Default for SessionTimerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_se: DEFAULT_MIN_SE,
            session_expires: DEFAULT_SESSION_EXPIRES,
        }
    }
}

/// Local parameters of one inbound call.
#[derive(Clone, Debug)]
pub struct UasConfig {
    /// Our Contact URI (`sip:bridge@192.0.2.1:5060`), the remote target of the caller's
    /// in-dialog requests.
    pub contact: String,
    /// Our To tag for this dialog (the shell generates it: randomness is not a core's).
    pub local_tag: String,
    /// The sent-by of our Via (`192.0.2.1:5060`) on requests we send.
    pub via_sent_by: String,
    /// Our media address and `o=` line state.
    pub media: LocalMedia,
    /// Our codec preference.
    pub codecs: CodecPrefs,
    /// T1/T2/T4.
    pub timers: TimerConfig,
    /// Whether the transport is reliable (TCP, TLS).
    pub reliable: bool,
    /// Session-timer policy.
    pub session_timer: SessionTimerConfig,
    /// `Server` of our responses and `User-Agent` of our requests; empty for none.
    pub user_agent: String,
}

/// Where the call stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallState {
    /// The INVITE is unanswered (100 or 180 sent).
    Early,
    /// Our 2xx is out, waiting for the ACK.
    Answered,
    /// ACK received: the dialog is confirmed.
    Confirmed,
    /// The call has ended (BYE sent or received, rejected, cancelled).
    Ended,
}

impl CallState {
    fn name(self) -> &'static str {
        match self {
            Self::Early => "early",
            Self::Answered => "answered",
            Self::Confirmed => "confirmed",
            Self::Ended => "ended",
        }
    }
}

/// A 2xx to an INVITE (initial or re-INVITE) that we retransmit until its ACK.
#[derive(Debug)]
struct PendingAck {
    response: Wire,
    cseq: u32,
    next_retransmit: Instant,
    interval: Duration,
    give_up: Instant,
    /// Our offer in that 2xx, when the INVITE had none: the ACK carries the answer.
    our_offer: Option<SessionDescription>,
}

/// An active session timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SessionTimer {
    interval: u32,
    refresher: Refresher,
    /// When we send the next refresh: only when we are the refresher and none is in flight (or
    /// refused for good).
    refresh_at: Option<Instant>,
    /// When the session expires without a successful refresh: BYE (RFC 4028 section 10). Set at
    /// each negotiation and successful refresh; failed refreshes leave it alone.
    expires_at: Instant,
}

#[derive(Debug)]
enum ServerMachine {
    Invite(InviteServer<()>),
    NonInvite(NonInviteServer<()>),
}

#[derive(Debug)]
struct ServerTx {
    key: TransactionKey,
    machine: ServerMachine,
}

impl ServerTx {
    fn terminated(&self) -> bool {
        match &self.machine {
            ServerMachine::Invite(m) => m.state() == InviteServerState::Terminated,
            ServerMachine::NonInvite(m) => {
                m.state() == super::transaction::NonInviteServerState::Terminated
            }
        }
    }
}

/// What a request we sent is for, to act on its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientPurpose {
    Bye,
    /// A blind transfer (RFC 3515).
    Refer,
    /// A session refresh for this interval (seconds).
    Refresh(u32),
}

#[derive(Debug)]
enum ClientMachine {
    NonInvite(NonInviteClient<SipMessage>),
    /// Our re-INVITE, with the ACK its transaction sends for a 3xx-6xx (RFC 3261 17.1.1.3:
    /// same branch, Request-URI and Route as the INVITE).
    Invite {
        machine: InviteClient<SipMessage>,
        failure_ack: Wire,
    },
}

#[derive(Debug)]
struct ClientTx {
    branch: String,
    method: &'static str,
    purpose: ClientPurpose,
    destination: Destination,
    machine: ClientMachine,
}

impl ClientTx {
    fn handle_response(&mut self, now: Instant, status: u16, response: SipMessage) {
        match &mut self.machine {
            ClientMachine::NonInvite(m) => m.handle_response(now, status, response),
            ClientMachine::Invite {
                machine,
                failure_ack,
            } => {
                let ack = Arc::clone(failure_ack);
                machine.handle_response(now, status, response, move |_| ack);
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match &mut self.machine {
            ClientMachine::NonInvite(m) => m.handle_timeout(now),
            ClientMachine::Invite { machine, .. } => machine.handle_timeout(now),
        }
    }

    fn poll_transmit(&mut self) -> Option<TxTransmit> {
        match &mut self.machine {
            ClientMachine::NonInvite(m) => m.poll_transmit(),
            ClientMachine::Invite { machine, .. } => machine.poll_transmit(),
        }
    }

    fn poll_event(&mut self) -> Option<TxEvent<SipMessage>> {
        match &mut self.machine {
            ClientMachine::NonInvite(m) => m.poll_event(),
            ClientMachine::Invite { machine, .. } => machine.poll_event(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match &self.machine {
            ClientMachine::NonInvite(m) => m.poll_timeout(),
            ClientMachine::Invite { machine, .. } => machine.poll_timeout(),
        }
    }

    fn terminated(&self) -> bool {
        match &self.machine {
            ClientMachine::NonInvite(m) => m.state() == NonInviteClientState::Terminated,
            ClientMachine::Invite { machine, .. } => {
                machine.state() == InviteClientState::Terminated
            }
        }
    }

    /// A request of ours still waiting for its final response.
    fn awaiting_final(&self) -> bool {
        match &self.machine {
            ClientMachine::NonInvite(m) => matches!(
                m.state(),
                NonInviteClientState::Trying | NonInviteClientState::Proceeding
            ),
            ClientMachine::Invite { .. } => self.is_pending_invite(),
        }
    }

    /// An INVITE of ours that has no final response yet (RFC 3261 14.1, 14.2: glare).
    fn is_pending_invite(&self) -> bool {
        match &self.machine {
            ClientMachine::NonInvite(_) => false,
            ClientMachine::Invite { machine, .. } => matches!(
                machine.state(),
                InviteClientState::Calling | InviteClientState::Proceeding
            ),
        }
    }
}

/// Our latest re-INVITE (a session refresh): the offer it carried, to read the answer in its
/// 2xx, and the ACK for that 2xx, resent for each retransmission of it.
#[derive(Debug)]
struct LocalReinvite {
    cseq: u32,
    offer: Option<SessionDescription>,
    ack: Option<(Wire, Destination)>,
}

/// One inbound call (UAS side): see the module docs.
#[derive(Debug)]
pub struct UasCall {
    config: UasConfig,
    state: CallState,
    invite: SipMessage,
    invite_key: TransactionKey,
    call_id: String,
    remote_tag: Option<String>,
    /// The INVITE's To value (our URI as the caller addressed us), without a tag.
    local_party: String,
    /// The INVITE's From value, with the caller's tag.
    remote_party: String,
    remote_target: Uri,
    route_set: Vec<NameAddr>,
    remote_cseq: u32,
    local_cseq: u32,
    offer: Option<SessionDescription>,
    negotiated: Option<Negotiated>,
    pending_ack: Option<PendingAck>,
    session_timer: Option<SessionTimer>,
    /// The Min-SE a 422 to our refresh asked for: sent in our later refreshes (RFC 4028 7.4).
    refresh_min_se: Option<u32>,
    /// Whether the peer takes UPDATE: its latest Allow lists it (or, with no Allow seen, its
    /// Supported does). Else our session refreshes are re-INVITEs.
    peer_allows_update: bool,
    /// The SDP we last sent (answer or offer): the body of a refresh re-INVITE, unchanged, so
    /// with the same `o=` version (RFC 3264 section 8).
    local_sdp: Option<String>,
    local_reinvite: Option<LocalReinvite>,
    /// A hang-up asked for while our 2xx waits for its ACK: RFC 3261 15 forbids the BYE until
    /// the ACK arrives or the 2xx times out.
    bye_deferred: bool,
    /// The `Reason` header (RFC 3326) of our BYE, from [`UasCall::hang_up_with_reason`].
    bye_reason: Option<String>,
    /// Our REFER awaits its final response.
    refer_pending: bool,
    servers: Vec<ServerTx>,
    clients: Vec<ClientTx>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<DialogEvent>,
}

impl UasCall {
    /// A call for `invite`; queues the 100 Trying (or a 422 when Session-Expires is below our
    /// Min-SE, which ends the call at once). An unparseable SDP offer is not an error here:
    /// [`UasCall::answer`] refuses it with 488.
    pub fn new(now: Instant, invite: &SipMessage, config: UasConfig) -> Result<Self, DialogError> {
        if invite.method() != Some("INVITE") {
            return Err(DialogError::NotAnInvite);
        }
        if invite.to().tag().is_some() {
            return Err(DialogError::AlreadyInDialog);
        }
        let remote_target = invite
            .contacts()
            .into_iter()
            .next()
            .map_or_else(|| invite.from().uri.clone(), |contact| contact.uri);
        let mut call = Self {
            state: CallState::Early,
            invite_key: server_key(invite),
            call_id: invite.call_id().to_owned(),
            remote_tag: invite.from().tag().map(str::to_owned),
            // Copied into the BYE and UPDATE we send: a bare CR in a display name must not
            // become a line break (header injection) at a peer that splits on CR.
            local_party: sanitize(invite.header("To").unwrap_or_default()),
            remote_party: sanitize(invite.header("From").unwrap_or_default()),
            remote_target,
            // A UAS keeps Record-Route in the order received (RFC 3261 12.1.1).
            route_set: invite.record_routes(),
            remote_cseq: invite.cseq().seq,
            local_cseq: 0,
            offer: sdp_body(invite).and_then(|text| sdp::parse(&text).ok()),
            negotiated: None,
            pending_ack: None,
            session_timer: None,
            refresh_min_se: None,
            peer_allows_update: false,
            local_sdp: None,
            local_reinvite: None,
            bye_deferred: false,
            bye_reason: None,
            refer_pending: false,
            servers: Vec::new(),
            clients: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            invite: invite.clone(),
            config,
        };
        call.learn_peer_methods(invite);
        let mut ist = InviteServer::new(now, call.config.timers, call.config.reliable);
        let trying = with_headers(
            build_response(invite, 100, "Trying", None),
            &server_header(&call.config.user_agent),
            None,
        );
        ist.send_provisional(now, 100, trying)?;
        call.servers.push(ServerTx {
            key: call.invite_key.clone(),
            machine: ServerMachine::Invite(ist),
        });
        if let Some(too_small) = call.session_expires_too_small(invite) {
            let response = call.response(
                invite,
                422,
                "Session Interval Too Small",
                &[("Min-SE", too_small.to_string())],
            );
            call.send_final_invite(now, 422, response)?;
            call.end(EndedBy::Refused { status: 422 });
        }
        call.pump(now);
        Ok(call)
    }

    /// Where the call stands.
    pub fn state(&self) -> CallState {
        self.state
    }

    /// The Call-ID.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Our To tag.
    pub fn local_tag(&self) -> &str {
        &self.config.local_tag
    }

    /// The current media terms, once negotiated.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    /// Whether the call has ended and every transaction and timer is done: the shell may drop
    /// it.
    pub fn is_finished(&self) -> bool {
        self.state == CallState::Ended
            && self.servers.is_empty()
            && self.clients.is_empty()
            && self.transmits.is_empty()
    }

    /// Whether a request we sent (a BYE, a refresh) still waits for its final response. At
    /// shutdown the daemon waits for these, not for the timers that only absorb
    /// retransmissions.
    pub fn awaiting_responses(&self) -> bool {
        self.clients.iter().any(ClientTx::awaiting_final)
    }

    /// Sends 180 Ringing.
    pub fn ring(&mut self, now: Instant) -> Result<(), DialogError> {
        self.require_state("ring", CallState::Early)?;
        let response = self.response(&self.invite, 180, "Ringing", &self.dialog_headers());
        self.ist_mut()
            .map(|ist| ist.send_provisional(now, 180, response))
            .transpose()?;
        self.pump(now);
        Ok(())
    }

    /// Answers the INVITE: 200 OK with our SDP answer (or our offer, when the INVITE had none).
    /// When the offer cannot be answered a 488 with a Warning is sent, the call ends
    /// ([`EndedBy::Refused`]) and the reason is returned.
    pub fn answer(&mut self, now: Instant) -> Result<(), DialogError> {
        self.require_state("answer", CallState::Early)?;
        let invite = self.invite.clone();
        let (body, our_offer) = match &self.offer {
            Some(offer) => match sdp::answer(offer, &self.config.media, &self.config.codecs) {
                Ok(answer) => {
                    self.negotiated = Some(answer.negotiated.clone());
                    self.events
                        .push_back(DialogEvent::MediaNegotiated(answer.negotiated));
                    (answer.sdp, None)
                }
                Err(error) => {
                    self.refuse_offer(now, &invite, &error)?;
                    return Err(error.into());
                }
            },
            None if sdp_body(&invite).is_some() => {
                // A body that is SDP but does not parse: nothing to answer.
                let error = NegotiationError::NoAudioStream;
                self.refuse_offer(now, &invite, &error)?;
                return Err(error.into());
            }
            None => {
                let text = sdp::offer(&self.config.media, &self.config.codecs);
                let parsed = sdp::parse(&text).ok();
                (text, parsed)
            }
        };
        let mut extra = self.dialog_headers();
        extra.extend(self.capability_headers());
        extra.extend(self.negotiate_session_timer(now, &invite));
        let response = self.response_with_sdp(&invite, 200, "OK", &extra, &body);
        self.send_final_invite(now, 200, Arc::clone(&response))?;
        self.events.push_front(DialogEvent::Answered);
        self.local_sdp = Some(body);
        self.start_pending_ack(now, response, invite.cseq().seq, our_offer);
        self.state = CallState::Answered;
        self.pump(now);
        Ok(())
    }

    /// Rejects the INVITE with a final non-2xx `code` (300-699) and `reason`.
    pub fn reject(&mut self, now: Instant, code: u16, reason: &str) -> Result<(), DialogError> {
        self.reject_with(now, code, reason, None)
    }

    /// [`UasCall::reject`] with a `Retry-After` (seconds), for 503s that tell the caller's
    /// proxy when to try again (RFC 3261 21.5.4).
    pub fn reject_with(
        &mut self,
        now: Instant,
        code: u16,
        reason: &str,
        retry_after: Option<u32>,
    ) -> Result<(), DialogError> {
        self.require_state("reject", CallState::Early)?;
        if !(300..=699).contains(&code) {
            return Err(DialogError::InvalidStatus {
                command: "reject",
                status: code,
            });
        }
        let invite = self.invite.clone();
        let extra: Vec<(&'static str, String)> = retry_after
            .map(|secs| ("Retry-After", secs.to_string()))
            .into_iter()
            .collect();
        let response = self.response(&invite, code, reason, &extra);
        self.send_final_invite(now, code, response)?;
        self.end(EndedBy::Local);
        self.pump(now);
        Ok(())
    }

    /// Ends the call: BYE once answered (deferred until the ACK while our 2xx waits for it),
    /// 603 Decline before the answer.
    pub fn hang_up(&mut self, now: Instant) -> Result<(), DialogError> {
        match self.state {
            CallState::Early => self.reject(now, 603, "Decline"),
            CallState::Answered => {
                self.bye_deferred = true;
                Ok(())
            }
            CallState::Confirmed => {
                self.send_bye(now);
                self.end(EndedBy::Local);
                self.pump(now);
                Ok(())
            }
            CallState::Ended => Err(self.not_allowed("hang_up")),
        }
    }

    /// [`UasCall::hang_up`] with a `Reason` header value (RFC 3326) on the BYE, such as
    /// `Q.850;cause=41;text="RTP timeout"`, so the caller's side can tell why the call ended.
    /// Before the answer the INVITE is declined (603) as by `hang_up`.
    pub fn hang_up_with_reason(&mut self, now: Instant, reason: &str) -> Result<(), DialogError> {
        if self.state != CallState::Ended {
            self.bye_reason = Some(sanitize(reason));
        }
        self.hang_up(now)
    }

    /// Blind transfer (RFC 3515): REFER to `refer_to` (a SIP URI) with `Referred-By` naming
    /// us. The outcome comes as [`DialogEvent::TransferAccepted`] / `TransferFailed`, then
    /// `TransferProgress` from the peer's NOTIFYs. Only in a confirmed call, one at a time.
    pub fn refer(&mut self, now: Instant, refer_to: &str) -> Result<(), DialogError> {
        self.require_state("refer", CallState::Confirmed)?;
        if self.refer_pending {
            return Err(self.not_allowed("refer"));
        }
        self.refer_pending = true;
        let referred_by = format!("<{}>", self.invite.to().uri.raw);
        let extra = [
            ("Refer-To", format!("<{}>", sanitize(refer_to))),
            ("Referred-By", sanitize(&referred_by)),
        ];
        self.send_request(now, "REFER", ClientPurpose::Refer, &extra, None);
        self.pump(now);
        Ok(())
    }

    /// The codec the call will use: what [`UasCall::answer`] picks from the offer, or, for an
    /// offerless INVITE, our most preferred codec (the one our offer lists first). `None` when
    /// the offer has no codec we take (the answer will be a 488).
    pub fn planned_codec(&self) -> Option<sdp::Codec> {
        if let Some(negotiated) = &self.negotiated {
            return Some(negotiated.codec);
        }
        match &self.offer {
            Some(offer) => sdp::answer(offer, &self.config.media, &self.config.codecs)
                .ok()
                .map(|a| a.negotiated.codec),
            None => self.config.codecs.codecs().first().copied(),
        }
    }

    /// A request for this call arrived (the shell matched it by Call-ID and tags, or by the
    /// INVITE's branch for CANCEL and retransmissions). `raw` is not kept: replies are built
    /// from the parsed message.
    pub fn handle_request(&mut self, now: Instant, request: &SipMessage, _raw: Wire) {
        let Some(method) = request.method().map(str::to_owned) else {
            return;
        };
        let key = server_key(request);
        if let Some(tx) = self.servers.iter_mut().find(|tx| tx.key == key) {
            // A retransmission (or the ACK of a non-2xx, which shares the INVITE's branch).
            match (&mut tx.machine, method.as_str()) {
                (ServerMachine::Invite(m), "ACK") => m.handle_ack(now, ()),
                (ServerMachine::Invite(m), _) => m.handle_request(now),
                (ServerMachine::NonInvite(m), _) => m.handle_request(now),
            }
            // An ACK for a 2xx shares the branch only when the caller reused it (RFC 2543
            // style); it still confirms the dialog.
            if method == "ACK" {
                self.handle_ack(now, request);
            }
            self.pump(now);
            return;
        }
        if request.call_id() != self.call_id {
            return;
        }
        match method.as_str() {
            "ACK" => self.handle_ack(now, request),
            "CANCEL" => self.handle_cancel(now, request, key),
            _ if request.to().tag() != Some(self.config.local_tag.as_str())
                || request.from().tag() != self.remote_tag.as_deref() =>
            {
                // Not our dialog (or a second INVITE of the same call without our tag).
                let response = self.response(request, 481, "Call/Transaction Does Not Exist", &[]);
                self.reply_once(now, key, 481, response);
            }
            _ if request.cseq().seq <= self.remote_cseq => {
                // RFC 3261 12.2.2: an out-of-order request.
                let response = self.response(request, 500, "Server Internal Error", &[]);
                self.reply_once(now, key, 500, response);
            }
            _ => {
                self.remote_cseq = request.cseq().seq;
                self.learn_peer_methods(request);
                // RFC 3261 8.2.2.3 (extensions), then 8.2.3 (content), before the method.
                let refusal =
                    check_required_extensions(request).or_else(|| check_offer_acceptable(request));
                if let Some(refusal) = refusal {
                    self.refuse(now, request, key, &refusal);
                    self.pump(now);
                    return;
                }
                match method.as_str() {
                    "BYE" => self.handle_bye(now, request, key),
                    "INVITE" => self.handle_reinvite(now, request, key),
                    "UPDATE" => self.handle_update(now, request, key),
                    "INFO" => self.handle_info(now, request, key),
                    "NOTIFY" => self.handle_notify(now, request, key),
                    "OPTIONS" => {
                        let mut extra = self.capability_headers();
                        extra.push(("Accept", ACCEPT.to_owned()));
                        let response = self.response(request, 200, "OK", &extra);
                        self.reply_once(now, key, 200, response);
                    }
                    _ => {
                        let response = self.response(
                            request,
                            501,
                            "Not Implemented",
                            &[("Allow", ALLOW.to_owned())],
                        );
                        self.reply_once(now, key, 501, response);
                    }
                }
            }
        }
        self.pump(now);
    }

    /// A response to a request we sent (BYE, UPDATE, re-INVITE), matched by its top Via branch
    /// and CSeq method.
    pub fn handle_response(&mut self, now: Instant, response: &SipMessage) {
        let Some(status) = response.status_code() else {
            return;
        };
        let branch = response.top_via().branch().unwrap_or_default();
        if let Some(tx) = self.clients.iter_mut().find(|tx| {
            tx.branch.eq_ignore_ascii_case(branch) && response.cseq().method == tx.method
        }) {
            tx.handle_response(now, status, response.clone());
            self.learn_peer_methods(response);
        }
        self.pump(now);
    }

    /// Runs every timer that has expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        for tx in &mut self.servers {
            match &mut tx.machine {
                ServerMachine::Invite(m) => m.handle_timeout(now),
                ServerMachine::NonInvite(m) => m.handle_timeout(now),
            }
        }
        for tx in &mut self.clients {
            tx.handle_timeout(now);
        }
        self.handle_ack_timers(now);
        self.handle_session_timer(now);
        self.pump(now);
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the call logic.
    pub fn poll_event(&mut self) -> Option<DialogEvent> {
        self.events.pop_front()
    }

    /// When [`UasCall::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let servers = self.servers.iter().filter_map(|tx| match &tx.machine {
            ServerMachine::Invite(m) => m.poll_timeout(),
            ServerMachine::NonInvite(m) => m.poll_timeout(),
        });
        let clients = self.clients.iter().filter_map(ClientTx::poll_timeout);
        let pending = self
            .pending_ack
            .iter()
            .flat_map(|p| [p.next_retransmit, p.give_up]);
        let session = self
            .session_timer
            .iter()
            .filter(|_| self.state != CallState::Ended)
            .flat_map(|t| t.refresh_at.into_iter().chain([t.expires_at]));
        servers.chain(clients).chain(pending).chain(session).min()
    }

    // ---- requests from the caller ----

    fn handle_ack(&mut self, now: Instant, ack: &SipMessage) {
        if ack.to().tag() != Some(self.config.local_tag.as_str()) {
            return;
        }
        let Some(pending) = self
            .pending_ack
            .take_if(|pending| pending.cseq == ack.cseq().seq)
        else {
            return;
        };
        if let Some(our_offer) = pending.our_offer {
            // Offerless INVITE: the ACK carries the answer to our offer (RFC 3264 section 4).
            let terms = sdp_body(ack)
                .and_then(|text| sdp::parse(&text).ok())
                .and_then(|answer| sdp::negotiate_answer(&our_offer, &answer).ok());
            match terms {
                Some(terms) => self.adopt_media(terms),
                None if self.state == CallState::Answered => {
                    self.state = CallState::Confirmed;
                    self.events.push_back(DialogEvent::Confirmed);
                    self.send_bye(now);
                    self.end(EndedBy::BadAnswer);
                    return;
                }
                // A re-INVITE's bad answer keeps the old terms.
                None => {}
            }
        }
        if self.state == CallState::Answered {
            self.state = CallState::Confirmed;
            self.events.push_back(DialogEvent::Confirmed);
            if self.bye_deferred {
                self.send_bye(now);
                self.end(EndedBy::Local);
            }
        }
    }

    fn handle_cancel(&mut self, now: Instant, cancel: &SipMessage, key: TransactionKey) {
        // CANCEL matches the INVITE by branch (RFC 3261 9.2), with the method aside.
        let targets_invite = key.cancel_target().is_some_and(|t| t == self.invite_key)
            || cancel.top_via().branch() == self.invite.top_via().branch()
                && cancel.cseq().seq == self.invite.cseq().seq;
        if !targets_invite {
            let response = self.response(cancel, 481, "Call/Transaction Does Not Exist", &[]);
            self.reply_once(now, key, 481, response);
            return;
        }
        let ok = self.response(cancel, 200, "OK", &[]);
        self.reply_once(now, key, 200, ok);
        if self.state == CallState::Early {
            let invite = self.invite.clone();
            let terminated = self.response(&invite, 487, "Request Terminated", &[]);
            if self.send_final_invite(now, 487, terminated).is_ok() {
                self.events.push_back(DialogEvent::Cancelled);
                self.end(EndedBy::Cancelled);
            }
        }
    }

    fn handle_bye(&mut self, now: Instant, bye: &SipMessage, key: TransactionKey) {
        let ok = self.response(bye, 200, "OK", &[]);
        self.reply_once(now, key, 200, ok);
        if self.state == CallState::Early {
            // A BYE on the early dialog ends the INVITE too (RFC 3261 15.1.2).
            let invite = self.invite.clone();
            let terminated = self.response(&invite, 487, "Request Terminated", &[]);
            let _ = self.send_final_invite(now, 487, terminated);
        }
        if self.state != CallState::Ended {
            self.pending_ack = None;
            self.end(EndedBy::Remote);
        }
    }

    fn handle_reinvite(&mut self, now: Instant, invite: &SipMessage, key: TransactionKey) {
        let refusal = match self.state {
            // RFC 3261 14.2: our 2xx to the previous INVITE waits for its ACK, or our own
            // re-INVITE waits for its final response.
            CallState::Confirmed if self.pending_ack.is_some() || self.local_invite_pending() => {
                Some((491, "Request Pending", Vec::new()))
            }
            CallState::Confirmed => None,
            CallState::Answered => Some((491, "Request Pending", Vec::new())),
            // RFC 3261 14.2: a re-INVITE before our final response to the INVITE.
            CallState::Early => Some((
                500,
                "Server Internal Error",
                vec![("Retry-After", retry_after_secs(&self.call_id).to_string())],
            )),
            CallState::Ended => Some((
                481,
                "Call/Transaction Does Not Exist",
                Vec::<(&'static str, String)>::new(),
            )),
        };
        let refusal = refusal.or_else(|| {
            self.session_expires_too_small(invite).map(|min| {
                (
                    422,
                    "Session Interval Too Small",
                    vec![("Min-SE", min.to_string())],
                )
            })
        });
        if let Some((status, reason, headers)) = refusal {
            let refusal = Refusal {
                status,
                reason,
                headers,
            };
            self.refuse(now, invite, key, &refusal);
            return;
        }
        let mut ist = InviteServer::new(now, self.config.timers, self.config.reliable);
        self.refresh_target(invite);
        let offered = sdp_body(invite);
        let (code, response, our_offer, sent_sdp) = match offered {
            Some(text) => match self.answer_offer(&text) {
                Ok(body) => {
                    let extra = self.success_headers(now, invite);
                    let response = self.response_with_sdp(invite, 200, "OK", &extra, &body);
                    (200, response, None, Some(body))
                }
                Err(error) => (488, self.not_acceptable(invite, &error), None, None),
            },
            None => {
                // A re-INVITE without an offer: our 2xx offers, the ACK answers.
                self.config.media.bump_version();
                let text = sdp::offer(&self.config.media, &self.config.codecs);
                let parsed = sdp::parse(&text).ok();
                let extra = self.success_headers(now, invite);
                let response = self.response_with_sdp(invite, 200, "OK", &extra, &text);
                (200, response, parsed, Some(text))
            }
        };
        let _ = ist.send_final(now, code, Arc::clone(&response));
        self.push_server(ServerTx {
            key,
            machine: ServerMachine::Invite(ist),
        });
        if code == 200 {
            self.local_sdp = sent_sdp;
            self.start_pending_ack(now, response, invite.cseq().seq, our_offer);
        }
    }

    fn handle_update(&mut self, now: Instant, update: &SipMessage, key: TransactionKey) {
        if self.state == CallState::Ended {
            let response = self.response(update, 481, "Call/Transaction Does Not Exist", &[]);
            self.reply_once(now, key, 481, response);
            return;
        }
        if let Some(min) = self.session_expires_too_small(update) {
            let response = self.response(
                update,
                422,
                "Session Interval Too Small",
                &[("Min-SE", min.to_string())],
            );
            self.reply_once(now, key, 422, response);
            return;
        }
        let offered = sdp_body(update);
        if offered.is_some() {
            // An offer while one is outstanding (RFC 3311 5.2): the INVITE's offer is not
            // answered yet (500), or our offer in a 2xx waits for its answer in the ACK (491).
            let refusal = if self.state == CallState::Early {
                Some((500, "Server Internal Error"))
            } else if self
                .pending_ack
                .as_ref()
                .is_some_and(|p| p.our_offer.is_some())
                || self.local_invite_pending()
            {
                Some((491, "Request Pending"))
            } else {
                None
            };
            if let Some((code, reason)) = refusal {
                let extra = [("Retry-After", retry_after_secs(&self.call_id).to_string())];
                let extra = if code == 500 { &extra[..] } else { &[] };
                let response = self.response(update, code, reason, extra);
                self.reply_once(now, key, code, response);
                return;
            }
        }
        self.refresh_target(update);
        let response = match offered {
            Some(text) => match self.answer_offer(&text) {
                Ok(body) => {
                    let extra = self.success_headers(now, update);
                    let response = self.response_with_sdp(update, 200, "OK", &extra, &body);
                    self.local_sdp = Some(body);
                    response
                }
                Err(error) => {
                    let response = self.not_acceptable(update, &error);
                    self.reply_once(now, key, 488, response);
                    return;
                }
            },
            None => {
                let extra = self.success_headers(now, update);
                self.response(update, 200, "OK", &extra)
            }
        };
        self.reply_once(now, key, 200, response);
    }

    /// Answers a new offer in the dialog and reports the change; the old terms stay when it
    /// cannot be answered.
    fn answer_offer(&mut self, text: &str) -> Result<String, NegotiationError> {
        let offer = sdp::parse(text).map_err(|_| NegotiationError::NoAudioStream)?;
        let mut media = self.config.media.clone();
        media.bump_version();
        let answer = sdp::answer(&offer, &media, &self.config.codecs)?;
        self.config.media = media;
        self.adopt_media(answer.negotiated);
        Ok(answer.sdp)
    }

    fn adopt_media(&mut self, terms: Negotiated) {
        match self.negotiated.replace(terms.clone()) {
            Some(previous) => {
                let change = terms.changes_since(&previous);
                self.events
                    .push_back(DialogEvent::MediaChanged(terms, change));
            }
            None => self.events.push_back(DialogEvent::MediaNegotiated(terms)),
        }
    }

    /// A target-refresh request (re-INVITE, UPDATE) may move the remote target (RFC 3261
    /// 12.2.2).
    fn refresh_target(&mut self, request: &SipMessage) {
        if let Some(contact) = request.contacts().into_iter().next() {
            self.remote_target = contact.uri;
        }
    }

    // ---- timers ----

    fn handle_ack_timers(&mut self, now: Instant) {
        let Some(pending) = &mut self.pending_ack else {
            return;
        };
        if now >= pending.give_up {
            self.pending_ack = None;
            self.events.push_back(DialogEvent::AckTimeout);
            if self.state == CallState::Answered {
                self.state = CallState::Confirmed;
            }
            if self.state != CallState::Ended {
                self.send_bye(now);
                self.end(EndedBy::AckTimeout);
            }
            return;
        }
        if now >= pending.next_retransmit {
            self.transmits.push_back(Transmit {
                payload: Arc::clone(&pending.response),
                destination: Destination::ReplyPerVia,
                retransmission: true,
            });
            pending.interval = pending
                .interval
                .saturating_mul(2)
                .min(self.config.timers.t2);
            pending.next_retransmit = after(now, pending.interval);
        }
    }

    fn handle_session_timer(&mut self, now: Instant) {
        let Some(timer) = self.session_timer else {
            return;
        };
        if self.state == CallState::Ended {
            return;
        }
        if now >= timer.expires_at {
            // No refresh got through in time, whoever's job it was (RFC 4028 section 10).
            self.send_bye(now);
            self.end(EndedBy::SessionExpired);
        } else if timer.refresh_at.is_some_and(|at| now >= at) {
            self.send_refresh(now);
        }
    }

    // ---- session refreshes we send (RFC 4028 sections 7.4 and 10) ----

    /// Sends a session refresh for the current interval: an UPDATE without body when the peer
    /// allows UPDATE, else a re-INVITE with the SDP we last sent (unchanged, same `o=` version:
    /// RFC 3264 section 8). A re-INVITE waits [`GLARE_RETRY`] while another INVITE transaction
    /// is in progress (RFC 3261 14.1). The session's expiry is not touched: only a 2xx moves it.
    fn send_refresh(&mut self, now: Instant) {
        let use_update = self.peer_allows_update;
        let busy = !use_update && (self.pending_ack.is_some() || self.local_invite_pending());
        let Some(timer) = self
            .session_timer
            .as_mut()
            .filter(|t| t.refresher == Refresher::Uas)
        else {
            return;
        };
        if self.state == CallState::Ended {
            return;
        }
        if busy {
            timer.refresh_at = Some(after(now, GLARE_RETRY));
            return;
        }
        timer.refresh_at = None;
        let interval = timer.interval;
        self.events.push_back(DialogEvent::RefreshDue);
        let mut extra = vec![("Session-Expires", format!("{interval};refresher=uas"))];
        if let Some(min_se) = self.refresh_min_se {
            extra.push(("Min-SE", min_se.to_string()));
        }
        extra.push(("Supported", SUPPORTED.to_owned()));
        let purpose = ClientPurpose::Refresh(interval);
        if use_update {
            self.send_request(now, "UPDATE", purpose, &extra, None);
            return;
        }
        extra.push(("Allow", ALLOW.to_owned()));
        let body = self
            .local_sdp
            .clone()
            .unwrap_or_else(|| sdp::offer(&self.config.media, &self.config.codecs));
        let offer = sdp::parse(&body).ok();
        let cseq = self.send_request(now, "INVITE", purpose, &extra, Some(&body));
        self.local_reinvite = Some(LocalReinvite {
            cseq,
            offer,
            ack: None,
        });
    }

    /// Acts on the outcome of our session refresh for `interval` seconds, sent as `method`.
    fn handle_refresh_outcome(
        &mut self,
        now: Instant,
        method: &'static str,
        interval: u32,
        event: TxEvent<SipMessage>,
    ) {
        if let TxEvent::Response { status, message } = &event
            && (200..300).contains(status)
            && method == "INVITE"
        {
            // Every 2xx to our re-INVITE is ACKed, even after the call ended (RFC 3261
            // 13.2.2.4); only the first one refreshes anything.
            if !self.ack_reinvite_2xx(message) {
                return;
            }
        }
        if self.state == CallState::Ended {
            return;
        }
        match event {
            TxEvent::Response { status, message } if (200..300).contains(&status) => {
                // Both are target refresh requests (RFC 3261 12.2.1.2, RFC 3311 5.1); the ACK
                // of a re-INVITE already took the new target.
                if method == "INVITE" {
                    self.adopt_refresh_answer(&message);
                } else {
                    self.refresh_target(&message);
                }
                self.restart_refresh_timer(now, &message, interval);
            }
            TxEvent::Response { status, .. } if status < 200 => {}
            // The dialog is gone at the peer (RFC 3261 12.2.1.2): nothing to send BYE for.
            TxEvent::Response { status: 481, .. } => self.end(EndedBy::DialogGone),
            TxEvent::Response { status: 408, .. } | TxEvent::Timeout => {
                self.send_bye(now);
                self.end(EndedBy::RefreshTimeout);
            }
            TxEvent::TransportError => {
                self.send_bye(now);
                self.end(EndedBy::TransportFailure);
            }
            TxEvent::Response {
                status: 422,
                message,
            } => {
                // RFC 4028 7.4: retry at once with at least the Min-SE asked for. A 422
                // without a larger Min-SE is a refusal like any other.
                if let Some(min_se) = message.min_se().filter(|min| *min > interval)
                    && let Some(timer) = self.session_timer.as_mut()
                {
                    timer.interval = timer.interval.max(min_se);
                    self.refresh_min_se = Some(min_se);
                    self.send_refresh(now);
                }
            }
            // Glare (RFC 3261 14.1): try again shortly.
            TxEvent::Response { status: 491, .. } => {
                if let Some(timer) = self.session_timer.as_mut() {
                    timer.refresh_at = Some(after(now, GLARE_RETRY));
                }
            }
            // The peer does not take UPDATE after all: re-INVITE, which it must.
            TxEvent::Response {
                status: 405 | 501, ..
            } if method == "UPDATE" => {
                self.peer_allows_update = false;
                self.send_refresh(now);
            }
            // Any other refusal: no more refreshes from us; the session expires on the
            // deadline of the last successful one, with BYE (RFC 4028 section 10).
            TxEvent::Response { .. } | TxEvent::AckReceived(_) | TxEvent::Terminated => {}
        }
    }

    /// ACKs a 2xx to our re-INVITE (RFC 3261 13.2.2.4: a new transaction, same CSeq number,
    /// to the dialog's remote target through its route set, which that 2xx may refresh);
    /// a retransmitted 2xx gets the same ACK again. Returns whether this was the first 2xx.
    fn ack_reinvite_2xx(&mut self, response: &SipMessage) -> bool {
        let cseq = response.cseq().seq;
        let Some(reinvite) = self.local_reinvite.as_ref().filter(|r| r.cseq == cseq) else {
            return false;
        };
        if let Some((ack, destination)) = &reinvite.ack {
            self.transmits.push_back(Transmit {
                payload: Arc::clone(ack),
                destination: destination.clone(),
                retransmission: true,
            });
            return false;
        }
        if self.state != CallState::Ended {
            self.refresh_target(response);
        }
        let branch = format!(
            "z9hG4bK{}-{cseq}-ack",
            sanitize_token(&self.config.local_tag)
        );
        let (ack, destination) = self.build_request("ACK", cseq, &branch, &[], None);
        self.transmits.push_back(Transmit {
            payload: Arc::clone(&ack),
            destination: destination.clone(),
            retransmission: false,
        });
        if let Some(reinvite) = self.local_reinvite.as_mut() {
            reinvite.ack = Some((ack, destination));
        }
        true
    }

    /// The answer in the 2xx to our refresh re-INVITE: new terms are adopted (and reported);
    /// an answer that is missing or unusable keeps the current ones.
    fn adopt_refresh_answer(&mut self, response: &SipMessage) {
        let terms = self
            .local_reinvite
            .as_ref()
            .and_then(|r| r.offer.as_ref())
            .zip(sdp_body(response).and_then(|text| sdp::parse(&text).ok()))
            .and_then(|(offer, answer)| sdp::negotiate_answer(offer, &answer).ok());
        if let Some(terms) = terms
            && self.negotiated.as_ref() != Some(&terms)
        {
            self.adopt_media(terms);
        }
    }

    /// Whether a re-INVITE of ours still waits for its final response.
    fn local_invite_pending(&self) -> bool {
        self.clients.iter().any(ClientTx::is_pending_invite)
    }

    /// Learns from the peer's Allow (or, lacking any, its Supported) whether it takes UPDATE.
    fn learn_peer_methods(&mut self, message: &SipMessage) {
        let mut allow = message
            .header_values("Allow")
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|method| !method.is_empty())
            .peekable();
        if allow.peek().is_some() {
            self.peer_allows_update = allow.any(|method| method.eq_ignore_ascii_case("UPDATE"));
        } else if has_tag(&message.supported(), "UPDATE") {
            self.peer_allows_update = true;
        }
    }

    // ---- session timers (RFC 4028) ----

    /// Our Min-SE when the request's Session-Expires is below it.
    fn session_expires_too_small(&self, request: &SipMessage) -> Option<u32> {
        let settings = self.config.session_timer;
        let expires = request.session_expires()?;
        // A 422 only helps a caller that can retry with our Min-SE (RFC 4028 section 9); when a
        // proxy inserted the header for a caller without timer support, the interval is raised
        // in the answer instead.
        let supports =
            has_tag(&request.supported(), "timer") || has_tag(&request.require(), "timer");
        (settings.enabled && supports && expires.delta < settings.min_se).then_some(settings.min_se)
    }

    /// The headers of a 2xx to a session refresh (or the initial INVITE), and the timer they
    /// start. No Session-Expires in the request: we insert ours (RFC 4028 section 9) and
    /// refresh; session timers disabled: none.
    fn negotiate_session_timer(
        &mut self,
        now: Instant,
        request: &SipMessage,
    ) -> Vec<(&'static str, String)> {
        self.session_timer = None;
        let settings = self.config.session_timer;
        if !settings.enabled {
            return Vec::new();
        }
        let supports =
            has_tag(&request.supported(), "timer") || has_tag(&request.require(), "timer");
        let floor = request.min_se().unwrap_or(0).max(settings.min_se);
        let (interval, refresher) = match request.session_expires() {
            Some(expires) => {
                // The caller's choice stands; without one, the caller refreshes if it can (RFC
                // 4028 section 9).
                let refresher = match expires.refresher.as_deref() {
                    Some("uas") => Refresher::Uas,
                    Some("uac") if supports => Refresher::Uac,
                    _ if supports => Refresher::Uac,
                    _ => Refresher::Uas,
                };
                (expires.delta.max(floor), refresher)
            }
            // The caller asked for no timer: we want one anyway, and refresh it ourselves (a
            // caller without timer support could not; one with it did not volunteer).
            None => (settings.session_expires.max(floor), Refresher::Uas),
        };
        self.session_timer = schedule_session_timer(now, interval, refresher);
        let mut headers = vec![(
            "Session-Expires",
            format!("{interval};refresher={}", refresher.as_str()),
        )];
        if supports {
            headers.push(("Require", "timer".to_owned()));
        }
        headers
    }

    // ---- building and sending ----

    fn success_headers(
        &mut self,
        now: Instant,
        request: &SipMessage,
    ) -> Vec<(&'static str, String)> {
        let mut extra = self.contact_header();
        extra.extend(self.capability_headers());
        // No session timer before the call is answered: its expiry would mean a BYE on an
        // early dialog, which the callee must not send (RFC 3261 section 15).
        if self.state != CallState::Early {
            extra.extend(self.negotiate_session_timer(now, request));
        }
        extra
    }

    fn contact_header(&self) -> Vec<(&'static str, String)> {
        vec![("Contact", format!("<{}>", self.config.contact))]
    }

    /// Headers of a response that creates the dialog: our Contact, and every Record-Route of
    /// the INVITE in order (RFC 3261 12.1.1), so the caller's ACK and BYE cross the same proxies.
    fn dialog_headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = self.contact_header();
        headers.extend(
            self.invite
                .header_values("Record-Route")
                .map(|value| ("Record-Route", value.to_owned())),
        );
        headers
    }

    fn capability_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("Allow", ALLOW.to_owned()),
            ("Supported", SUPPORTED.to_owned()),
        ]
    }

    fn response(
        &self,
        request: &SipMessage,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
    ) -> Wire {
        let mut headers = server_header(&self.config.user_agent);
        headers.extend_from_slice(extra);
        with_headers(
            build_response(request, code, reason, Some(&self.config.local_tag)),
            &headers,
            None,
        )
    }

    fn response_with_sdp(
        &self,
        request: &SipMessage,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
        sdp: &str,
    ) -> Wire {
        let mut headers = server_header(&self.config.user_agent);
        headers.extend_from_slice(extra);
        with_headers(
            build_response(request, code, reason, Some(&self.config.local_tag)),
            &headers,
            Some(sdp),
        )
    }

    fn not_acceptable(&self, request: &SipMessage, error: &NegotiationError) -> Wire {
        self.response(
            request,
            488,
            "Not Acceptable Here",
            &[("Warning", error.warning_header())],
        )
    }

    fn refuse_offer(
        &mut self,
        now: Instant,
        invite: &SipMessage,
        error: &NegotiationError,
    ) -> Result<(), DialogError> {
        let response = self.not_acceptable(invite, error);
        self.send_final_invite(now, 488, response)?;
        self.end(EndedBy::Refused { status: 488 });
        self.pump(now);
        Ok(())
    }

    fn send_final_invite(
        &mut self,
        now: Instant,
        code: u16,
        response: Wire,
    ) -> Result<(), DialogError> {
        let Some(ist) = self.ist_mut() else {
            return Err(self.not_allowed("final response"));
        };
        ist.send_final(now, code, response)?;
        self.pump_servers();
        Ok(())
    }

    /// Adds a server transaction after queueing what it has to send, so that transmissions
    /// leave in the order they were decided (a CANCEL's 200 before the INVITE's 487).
    fn push_server(&mut self, mut tx: ServerTx) {
        self.pump_server(&mut tx);
        self.servers.push(tx);
    }

    fn pump_servers(&mut self) {
        let mut servers = std::mem::take(&mut self.servers);
        for tx in &mut servers {
            self.pump_server(tx);
        }
        servers.retain(|tx| !tx.terminated());
        self.servers = servers;
    }

    fn pump_server(&mut self, tx: &mut ServerTx) {
        loop {
            let transmit = match &mut tx.machine {
                ServerMachine::Invite(m) => m.poll_transmit(),
                ServerMachine::NonInvite(m) => m.poll_transmit(),
            };
            let Some(transmit) = transmit else { break };
            self.transmits.push_back(Transmit {
                payload: transmit.payload,
                destination: Destination::ReplyPerVia,
                retransmission: transmit.retransmission,
            });
        }
        // Server events need nothing: an ACK is handled from the request itself, and Timer H
        // (no ACK for our non-2xx) fires when the call is already over.
        loop {
            let event = match &mut tx.machine {
                ServerMachine::Invite(m) => m.poll_event().map(|_| ()),
                ServerMachine::NonInvite(m) => m.poll_event().map(|_| ()),
            };
            if event.is_none() {
                break;
            }
        }
    }

    fn start_pending_ack(
        &mut self,
        now: Instant,
        response: Wire,
        cseq: u32,
        our_offer: Option<SessionDescription>,
    ) {
        let t1 = self.config.timers.t1;
        self.pending_ack = Some(PendingAck {
            response,
            cseq,
            next_retransmit: after(now, t1),
            interval: t1,
            give_up: after(now, self.config.timers.transaction_timeout()),
            our_offer,
        });
    }

    /// Refuses an in-dialog request with a final non-2xx: an INVITE through its own INVITE
    /// server transaction (retransmitted until the caller's ACK), anything else through
    /// [`Self::reply_once`].
    fn refuse(
        &mut self,
        now: Instant,
        request: &SipMessage,
        key: TransactionKey,
        refusal: &Refusal,
    ) {
        let response = self.response(request, refusal.status, refusal.reason, &refusal.headers);
        if request.method() == Some("INVITE") {
            let mut ist = InviteServer::new(now, self.config.timers, self.config.reliable);
            let _ = ist.send_final(now, refusal.status, response);
            self.push_server(ServerTx {
                key,
                machine: ServerMachine::Invite(ist),
            });
        } else {
            self.reply_once(now, key, refusal.status, response);
        }
    }

    /// Answers a non-INVITE request through its own server transaction, so that its
    /// retransmissions get the same response.
    /// SIP INFO in the dialog: `application/dtmf-relay` carries a key press (the legacy,
    /// package-less usage PBXs send; RFC 6086 section 2.3 keeps it legal). Another body type
    /// gets 415 with what we accept; a relay body without a readable signal, 400.
    /// NOTIFY for our REFER's implicit subscription (RFC 3515 section 2.4.4): the body is a
    /// `message/sipfrag` status line of the transferred call.
    fn handle_notify(&mut self, now: Instant, request: &SipMessage, key: TransactionKey) {
        let is_refer = request
            .header("Event")
            .is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("refer"));
        if !is_refer {
            let response = self.response(
                request,
                489,
                "Bad Event",
                &[("Allow-Events", "refer".to_owned())],
            );
            self.reply_once(now, key, 489, response);
            return;
        }
        let terminated = request
            .header("Subscription-State")
            .is_some_and(|s| s.trim().to_ascii_lowercase().starts_with("terminated"));
        let status = std::str::from_utf8(request.body())
            .ok()
            .and_then(|body| body.lines().next())
            .and_then(|line| line.strip_prefix("SIP/2.0 "))
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|code| (100..700).contains(code));
        match status {
            Some(status) => {
                self.events
                    .push_back(DialogEvent::TransferProgress { status, terminated });
                let response = self.response(request, 200, "OK", &[]);
                self.reply_once(now, key, 200, response);
            }
            None => {
                let response = self.response(request, 400, "Bad Request", &[]);
                self.reply_once(now, key, 400, response);
            }
        }
    }

    fn handle_info(&mut self, now: Instant, request: &SipMessage, key: TransactionKey) {
        const DTMF_RELAY: &str = "application/dtmf-relay";
        let (code, reason, extra) = match request.content_type().as_deref() {
            Some(DTMF_RELAY) => match crate::rtp::dtmf::parse_info_body(request.body()) {
                Ok(press) => {
                    self.events.push_back(DialogEvent::Digit(press));
                    (200, "OK", Vec::new())
                }
                Err(_) => (400, "Bad Request", Vec::new()),
            },
            // An INFO without a body is a keepalive some PBXs send.
            None if request.body().is_empty() => (200, "OK", Vec::new()),
            _ => (
                415,
                "Unsupported Media Type",
                vec![("Accept", DTMF_RELAY.to_owned())],
            ),
        };
        let response = self.response(request, code, reason, &extra);
        self.reply_once(now, key, code, response);
    }

    fn reply_once(&mut self, now: Instant, key: TransactionKey, code: u16, response: Wire) {
        // Anyone who knows the Call-ID can send requests that get a 481 or 501; keeping a
        // transaction for each would let them grow this call without bound. Past the cap the
        // answer goes out once, without a transaction to absorb retransmissions.
        if self.servers.len() >= MAX_SERVER_TRANSACTIONS {
            self.transmits.push_back(Transmit {
                payload: response,
                destination: Destination::ReplyPerVia,
                retransmission: false,
            });
            return;
        }
        let mut machine = NonInviteServer::new(now, self.config.timers, self.config.reliable);
        machine.handle_request(now);
        if machine.send_final(now, code, response).is_ok() {
            self.push_server(ServerTx {
                key,
                machine: ServerMachine::NonInvite(machine),
            });
        }
    }

    fn send_bye(&mut self, now: Instant) {
        if !self.clients.iter().any(|c| c.purpose == ClientPurpose::Bye) {
            let extra: Vec<(&'static str, String)> = self
                .bye_reason
                .clone()
                .map(|reason| ("Reason", reason))
                .into_iter()
                .collect();
            self.send_request(now, "BYE", ClientPurpose::Bye, &extra, None);
        }
        self.pending_ack = None;
        self.session_timer = None;
    }

    /// Sends an in-dialog request (RFC 3261 12.2.1.1) in its own client transaction: next
    /// CSeq, route set, remote target. Returns the CSeq number.
    fn send_request(
        &mut self,
        now: Instant,
        method: &'static str,
        purpose: ClientPurpose,
        extra: &[(&'static str, String)],
        sdp: Option<&str>,
    ) -> u32 {
        self.local_cseq = self.local_cseq.wrapping_add(1).max(1);
        let cseq = self.local_cseq;
        let branch = format!("z9hG4bK{}-{cseq}", sanitize_token(&self.config.local_tag));
        let (request, destination) = self.build_request(method, cseq, &branch, extra, sdp);
        let (timers, reliable) = (self.config.timers, self.config.reliable);
        let machine = if method == "INVITE" {
            let (failure_ack, _) = self.build_request("ACK", cseq, &branch, &[], None);
            ClientMachine::Invite {
                machine: InviteClient::new(now, timers, reliable, request),
                failure_ack,
            }
        } else {
            ClientMachine::NonInvite(NonInviteClient::new(now, timers, reliable, request))
        };
        self.clients.push(ClientTx {
            branch,
            method,
            purpose,
            destination,
            machine,
        });
        cseq
    }

    /// Encodes an in-dialog request from the dialog state, and where it goes. An ACK carries
    /// no Contact.
    fn build_request(
        &self,
        method: &str,
        cseq: u32,
        branch: &str,
        extra: &[(&'static str, String)],
        sdp: Option<&str>,
    ) -> (Wire, Destination) {
        let (request_uri, routes, destination) = self.next_hop();
        let transport = &self.invite.top_via().transport;
        let mut text = String::with_capacity(512 + sdp.map_or(0, str::len));
        let _ = write!(text, "{method} {} SIP/2.0\r\n", request_uri.raw);
        let _ = write!(
            text,
            "Via: SIP/2.0/{transport} {};branch={branch};rport\r\n",
            self.config.via_sent_by
        );
        let _ = write!(text, "Max-Forwards: {MAX_FORWARDS}\r\n");
        let _ = write!(
            text,
            "From: {};tag={}\r\n",
            self.local_party,
            sanitize_token(&self.config.local_tag)
        );
        let _ = write!(text, "To: {}\r\n", self.remote_party);
        let _ = write!(text, "Call-ID: {}\r\n", self.call_id);
        let _ = write!(text, "CSeq: {cseq} {method}\r\n");
        for route in routes {
            let _ = write!(text, "Route: {route}\r\n");
        }
        if method != "ACK" {
            let _ = write!(text, "Contact: <{}>\r\n", self.config.contact);
        }
        if !self.config.user_agent.is_empty() {
            let _ = write!(
                text,
                "User-Agent: {}\r\n",
                sanitize(&self.config.user_agent)
            );
        }
        for (name, value) in extra {
            let _ = write!(text, "{name}: {value}\r\n");
        }
        match sdp {
            Some(body) => {
                let _ = write!(
                    text,
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            None => text.push_str("Content-Length: 0\r\n\r\n"),
        }
        (Arc::from(text.into_bytes()), destination)
    }

    /// Request-URI, Route values and destination of an in-dialog request (RFC 3261 12.2.1.1):
    /// loose routing keeps the remote target as Request-URI; strict routing puts the first
    /// route there and the remote target last in Route.
    fn next_hop(&self) -> (Uri, Vec<String>, Destination) {
        let Some(first) = self.route_set.first() else {
            return (
                self.remote_target.clone(),
                Vec::new(),
                Destination::Uri(self.remote_target.clone()),
            );
        };
        let routes: Vec<String> = self.route_set.iter().map(render_route).collect();
        let loose = first
            .uri
            .params
            .iter()
            .any(|p| p.name.eq_ignore_ascii_case("lr"));
        if loose {
            (
                self.remote_target.clone(),
                routes,
                Destination::Uri(first.uri.clone()),
            )
        } else {
            let mut rest: Vec<String> = routes.into_iter().skip(1).collect();
            rest.push(format!("<{}>", self.remote_target.raw));
            (first.uri.clone(), rest, Destination::Uri(first.uri.clone()))
        }
    }

    /// Moves what the sub-machines produced into our queues, acts on their events and drops
    /// the finished ones. Acting on an event may start a transaction (a BYE, a refresh retry),
    /// whose first transmission is collected on the next round.
    fn pump(&mut self, now: Instant) {
        // Two rounds suffice (a new transaction has transmissions but no events yet); the cap
        // only guards against a loop: anything left is collected by the next pump.
        for _ in 0..4 {
            self.pump_servers();
            let mut outcomes = Vec::new();
            for tx in &mut self.clients {
                while let Some(transmit) = tx.poll_transmit() {
                    self.transmits.push_back(Transmit {
                        payload: transmit.payload,
                        destination: tx.destination.clone(),
                        retransmission: transmit.retransmission,
                    });
                }
                while let Some(event) = tx.poll_event() {
                    outcomes.push((tx.purpose, tx.method, event));
                }
            }
            self.clients.retain(|tx| !tx.terminated());
            if outcomes.is_empty() {
                break;
            }
            for (purpose, method, event) in outcomes {
                match purpose {
                    ClientPurpose::Refresh(interval) => {
                        self.handle_refresh_outcome(now, method, interval, event);
                    }
                    // The BYE's outcome changes nothing: the call ended when it was sent.
                    ClientPurpose::Bye => {}
                    ClientPurpose::Refer if self.refer_pending => match event {
                        TxEvent::Response { status, .. } if (200..300).contains(&status) => {
                            self.refer_pending = false;
                            self.events.push_back(DialogEvent::TransferAccepted);
                        }
                        TxEvent::Response { status, .. } if status >= 300 => {
                            self.refer_pending = false;
                            self.events.push_back(DialogEvent::TransferFailed {
                                status: Some(status),
                            });
                        }
                        TxEvent::Timeout | TxEvent::TransportError => {
                            self.refer_pending = false;
                            self.events
                                .push_back(DialogEvent::TransferFailed { status: None });
                        }
                        _ => {}
                    },
                    ClientPurpose::Refer => {}
                }
            }
        }
    }

    /// After a 2xx to our refresh, the interval the peer accepted runs again (its
    /// Session-Expires, or ours when it echoes none).
    fn restart_refresh_timer(&mut self, now: Instant, response: &SipMessage, interval: u32) {
        let expires = response.session_expires();
        let interval = expires.as_ref().map_or(interval, |e| e.delta);
        let refresher = match expires.and_then(|e| e.refresher).as_deref() {
            Some("uac") => Refresher::Uac,
            _ => Refresher::Uas,
        };
        self.session_timer = schedule_session_timer(now, interval, refresher);
    }

    fn end(&mut self, by: EndedBy) {
        if self.state != CallState::Ended {
            self.state = CallState::Ended;
            self.session_timer = None;
            self.pending_ack = None;
            self.events.push_back(DialogEvent::Ended { by });
        }
    }

    fn ist_mut(&mut self) -> Option<&mut InviteServer<()>> {
        let key = &self.invite_key;
        self.servers
            .iter_mut()
            .find(|tx| &tx.key == key)
            .and_then(|tx| match &mut tx.machine {
                ServerMachine::Invite(m) => Some(m),
                ServerMachine::NonInvite(_) => None,
            })
    }

    fn require_state(&self, command: &'static str, state: CallState) -> Result<(), DialogError> {
        if self.state == state {
            Ok(())
        } else {
            Err(self.not_allowed(command))
        }
    }

    fn not_allowed(&self, command: &'static str) -> DialogError {
        DialogError::NotAllowed {
            command,
            state: self.state.name(),
        }
    }
}

/// What to do with a request that matched no call and no transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutOfDialog {
    /// Send this response (per Via).
    Reply(Wire),
    /// An initial INVITE: the router decides; create a [`UasCall`] if a route accepts it, else
    /// reply [`not_found`].
    NewCall,
    /// Nothing to send (an ACK, which is never answered).
    Ignore,
}

/// Handles a request outside any dialog: OPTIONS gets 200 with Allow/Accept/Supported, an
/// initial INVITE goes to the router, an ACK is dropped, a BYE/CANCEL/UPDATE (or an INVITE
/// with a To tag) for a dialog we do not have gets 481, anything else 501 with Allow.
/// `local_tag` is the To tag of the reply (the shell generates it).
pub fn respond_out_of_dialog(request: &SipMessage, local_tag: &str) -> OutOfDialog {
    let reply = |code: u16, reason: &str, extra: &[(&'static str, String)]| {
        OutOfDialog::Reply(with_headers(
            build_response(request, code, reason, Some(local_tag)),
            extra,
            None,
        ))
    };
    match request.method() {
        None | Some("ACK") => OutOfDialog::Ignore,
        Some(_) if let Some(refusal) = check_required_extensions(request) => {
            reply(refusal.status, refusal.reason, &refusal.headers)
        }
        Some("INVITE") if request.to().tag().is_none() => OutOfDialog::NewCall,
        Some("OPTIONS") => reply(
            200,
            "OK",
            &[
                ("Allow", ALLOW.to_owned()),
                ("Accept", ACCEPT.to_owned()),
                ("Supported", SUPPORTED.to_owned()),
            ],
        ),
        Some("INVITE" | "BYE" | "CANCEL" | "UPDATE" | "INFO") => {
            reply(481, "Call/Transaction Does Not Exist", &[])
        }
        Some(_) => reply(501, "Not Implemented", &[("Allow", ALLOW.to_owned())]),
    }
}

/// The 404 for an initial INVITE no route accepts.
pub fn not_found(request: &SipMessage, local_tag: &str) -> Wire {
    with_headers(
        build_response(request, 404, "Not Found", Some(local_tag)),
        &[],
        None,
    )
}

/// A response refusing a request before the dialog looks at it: from
/// [`check_offer_acceptable`] (415, 406) or for an extension we lack (420).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: &'static str,
    /// Headers the response must carry (`Accept` on a 415, `Unsupported` on a 420).
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    /// The response to `request`, with `local_tag` as the To tag when the request has none.
    /// For an INVITE, the shell sends it through the INVITE's server transaction (it is a final
    /// response that the caller ACKs).
    pub fn response(&self, request: &SipMessage, local_tag: &str) -> Wire {
        with_headers(
            build_response(request, self.status, self.reason, Some(local_tag)),
            &self.headers,
            None,
        )
    }
}

/// Whether the body and the `Accept` of an INVITE (initial or re-INVITE) or UPDATE are ones we
/// can work with; `None` when they are (and for every other method).
///
/// - A body whose Content-Type is not `application/sdp`, or that has a Content-Encoding
///   other than `identity`, gets 415 Unsupported Media Type with `Accept: application/sdp`
///   and `Accept-Encoding: identity` (RFC 3261 8.2.3, 21.4.13). A body without Content-Type is taken
///   as SDP, like everywhere in this module (some PBXs omit it).
/// - A request whose response must carry SDP (every INVITE: our 2xx holds an answer or an
///   offer; an UPDATE with an offer) and whose `Accept` lists neither `application/sdp`, nor
///   `application/*`, nor `*/*` (a range with `q=0` does not count, an empty Accept accepts
///   nothing) gets 406 Not Acceptable (RFC 3261 20.1, 21.4.7). No Accept at all means
///   `application/sdp`.
///
/// [`UasCall`] applies it to re-INVITEs and UPDATEs; the endpoint applies it to initial
/// INVITEs before creating the call, and sends [`Refusal::response`].
pub fn check_offer_acceptable(request: &SipMessage) -> Option<Refusal> {
    let has_body = !request.body().is_empty();
    let needs_sdp_answer = match request.method() {
        Some("INVITE") => true,
        Some("UPDATE") => has_body,
        _ => return None,
    };
    let encoded = request
        .header("Content-Encoding")
        .is_some_and(|e| !e.trim().eq_ignore_ascii_case("identity"));
    if has_body
        && (encoded
            || request
                .content_type()
                .is_some_and(|kind| kind != "application/sdp"))
    {
        return Some(Refusal {
            status: 415,
            reason: "Unsupported Media Type",
            headers: vec![
                ("Accept", ACCEPT.to_owned()),
                ("Accept-Encoding", "identity".to_owned()),
            ],
        });
    }
    let mut accepts = request.header_values("Accept").peekable();
    if needs_sdp_answer && accepts.peek().is_some() && !accepts.any(accepts_sdp) {
        return Some(Refusal {
            status: 406,
            reason: "Not Acceptable",
            headers: Vec::new(),
        });
    }
    None
}

/// Whether an initial INVITE's SDP offer can be answered with `codecs` (an audio stream with a
/// codec we take); `None` when it can, or when there is no offer (we offer in our 200).
/// Otherwise the 488 Not Acceptable Here with the Warning [`UasCall::answer`] would send:
/// decided before the call is admitted, so an INVITE that will be refused costs no RTP
/// ports and never opens an upstream session.
pub fn check_offer_answerable(invite: &SipMessage, codecs: &CodecPrefs) -> Option<Refusal> {
    let text = sdp_body(invite)?;
    let error = match sdp::parse(&text) {
        // A body that is SDP but does not parse: nothing to answer.
        Err(_) => NegotiationError::NoAudioStream,
        Ok(offer) => {
            // Our address and port do not change which stream and codec the answer takes.
            let placeholder = sdp::LocalMedia::new(std::net::IpAddr::from([0, 0, 0, 0]), 9, 0, 0);
            match sdp::answer(&offer, &placeholder, codecs) {
                Ok(_) => return None,
                Err(error) => error,
            }
        }
    };
    Some(Refusal {
        status: 488,
        reason: "Not Acceptable Here",
        headers: vec![("Warning", error.warning_header())],
    })
}

/// 420 Bad Extension, with `Unsupported`, when the request's Require lists an option tag we do
/// not support (RFC 3261 8.2.2.3). ACK and CANCEL are never refused for it.
fn check_required_extensions(request: &SipMessage) -> Option<Refusal> {
    if matches!(request.method(), None | Some("ACK" | "CANCEL")) {
        return None;
    }
    let unsupported: Vec<String> = request
        .require()
        .into_iter()
        .filter(|tag| {
            !SUPPORTED
                .split(',')
                .any(|ours| ours.trim().eq_ignore_ascii_case(tag))
        })
        .map(sanitize_token)
        .collect();
    (!unsupported.is_empty()).then(|| Refusal {
        status: 420,
        reason: "Bad Extension",
        headers: vec![("Unsupported", unsupported.join(", "))],
    })
}

/// Whether one Accept header value admits `application/sdp`.
fn accepts_sdp(value: &str) -> bool {
    value.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let matches = ["application/sdp", "application/*", "*/*"]
            .iter()
            .any(|ok| media.eq_ignore_ascii_case(ok));
        let refused = parts.any(|param| {
            param.split_once('=').is_some_and(|(name, q)| {
                let q = q.trim();
                name.trim().eq_ignore_ascii_case("q")
                    && !q.is_empty()
                    && q.chars().all(|c| c == '0' || c == '.')
            })
        });
        matches && !refused
    })
}

// ---- helpers ----

/// `now + delay`, never panicking: timer values come from configuration, and a delay too large
/// for `Instant` is capped at a year, which is "never" for a call.
fn after(now: Instant, delay: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(delay.min(YEAR)).unwrap_or(now)
}

/// The session timer after a (re)negotiation or a successful refresh: when we refresh, we do
/// it at half the interval (RFC 4028 section 10); either way the session ends with BYE
/// `min(32, SE/3)` seconds before the interval runs out, unless a refresh succeeds first.
fn schedule_session_timer(
    now: Instant,
    interval: u32,
    refresher: Refresher,
) -> Option<SessionTimer> {
    let secs = |s: u32| Duration::from_secs(u64::from(s.max(1)));
    let expires_at =
        now.checked_add(secs(interval - (interval / 3).min(EXPIRY_MARGIN_MAX_SECS)))?;
    let refresh_at = match refresher {
        Refresher::Uas => Some(now.checked_add(secs(interval / 2))?),
        Refresher::Uac => None,
    };
    Some(SessionTimer {
        interval,
        refresher,
        refresh_at,
        expires_at,
    })
}

/// The Retry-After of a 500 refusing an overlapping offer (RFC 3261 14.2, RFC 3311 5.2): RFC
/// 3261 asks for a random value from 0 to 10 seconds, so that two peers refused at the same
/// moment do not retry in lockstep. A sans-IO core draws no random numbers, so the value is
/// derived from the Call-ID instead: its 32-bit FNV-1a hash modulo 11, which spreads calls
/// evenly over 0..=10 s and is stable for one call (every refusal in a dialog names the same
/// delay).
fn retry_after_secs(call_id: &str) -> u32 {
    let hash = call_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    hash % (RETRY_AFTER_MAX_SECS + 1)
}

/// The `Server` header for `user_agent`, if any.
fn server_header(user_agent: &str) -> Vec<(&'static str, String)> {
    if user_agent.is_empty() {
        Vec::new()
    } else {
        vec![("Server", sanitize(user_agent))]
    }
}

/// Adds headers (and a body) to a response from [`build_response`], which always ends with
/// an empty-body `Content-Length`: that trailer is replaced.
pub(crate) fn with_headers(
    base: Vec<u8>,
    extra: &[(&'static str, String)],
    sdp: Option<&str>,
) -> Wire {
    const TRAILER: &[u8] = b"Content-Length: 0\r\n\r\n";
    let head = base.strip_suffix(TRAILER).unwrap_or(&base);
    let mut out = head.to_vec();
    for (name, value) in extra {
        let value: String = value.chars().filter(|c| !c.is_control()).collect();
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    match sdp {
        Some(body) => {
            out.extend_from_slice(
                format!(
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(body.as_bytes());
        }
        None => out.extend_from_slice(TRAILER),
    }
    Arc::from(out)
}

/// The body as text when it is SDP (no Content-Type with a body is taken as SDP too: some
/// PBXs omit it).
fn sdp_body(message: &SipMessage) -> Option<String> {
    if message.body().is_empty() {
        return None;
    }
    match message.content_type().as_deref() {
        None | Some("application/sdp") => {
            Some(String::from_utf8_lossy(message.body()).into_owned())
        }
        Some(_) => None,
    }
}

fn has_tag(tags: &[&str], tag: &str) -> bool {
    tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
}

fn sanitize_token(s: &str) -> String {
    s.chars()
        .filter(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    '-' | '.' | '!' | '%' | '*' | '_' | '+' | '`' | '\'' | '~'
                )
        })
        .collect()
}

fn render_route(route: &NameAddr) -> String {
    let mut out = format!("<{}>", route.uri.raw);
    for param in &route.params {
        match &param.value {
            Some(value) => {
                let _ = write!(out, ";{}={value}", param.name);
            }
            None => {
                let _ = write!(out, ";{}", param.name);
            }
        }
    }
    out
}

fn server_key(request: &SipMessage) -> TransactionKey {
    let via = request.top_via();
    let sent_by = match via.sent_by.port {
        Some(port) => format!("{}:{port}", via.sent_by.host),
        None => via.sent_by.host.clone(),
    };
    let request_uri = request
        .request_uri()
        .map(|u| u.raw.as_str())
        .unwrap_or_default();
    TransactionKey::server(&RequestFields {
        method: request.method().unwrap_or_default(),
        request_uri,
        top_via_branch: via.branch(),
        top_via_sent_by: &sent_by,
        top_via: request.header("Via").unwrap_or_default(),
        call_id: request.call_id(),
        cseq_number: request.cseq().seq,
        from_tag: request.from().tag(),
        to_tag: request.to().tag(),
    })
}
