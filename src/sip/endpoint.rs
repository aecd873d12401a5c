//! The SIP endpoint: every call's dialog behind one front door, sans-IO.
//!
//! The transport shell (`io::sip`) hands [`Endpoint`] each datagram or framed stream message
//! with where it came from ([`Incoming`]); the endpoint parses it, stamps the top Via with
//! `received`/`rport` (RFC 3261 18.2.1, RFC 3581), and
//!
//! - answers a request that does not parse with 400/505/416 when the salvaged headers allow
//!   a reply, otherwise drops it; drops every response that does not parse;
//! - passes requests and responses of a known call (by Call-ID) to its [`UasCall`];
//! - answers requests outside any call ([`respond_out_of_dialog`]): OPTIONS, 481, 501, 420;
//! - checks a new INVITE's body and `Accept` (415, 406), then asks the [`Admission`] policy
//!   (routing, capacity, media port) whether to take it: a taken INVITE becomes a
//!   [`UasCall`] and an [`EndpointEvent::IncomingCall`], a refused one gets a stateless final
//!   response (404, 503 with Retry-After...).
//!
//! Everything it sends comes out of [`Endpoint::poll_transmit`] as an [`Outgoing`] that names
//! the transport, the socket or connection to prefer, and the address: responses go where
//! the stamped Via says (RFC 3261 18.2.2: back over the connection the request came on for
//! TCP), requests we send in a dialog go to the first route or the remote target, over the
//! call's connection when it is to the same host (connection reuse).
//!
//! Calls are driven by the call logic through [`Endpoint::ring`], [`Endpoint::answer`],
//! [`Endpoint::reject`] and [`Endpoint::hang_up`], and report back as
//! [`EndpointEvent::Dialog`]. A call leaves the table once its dialog is finished (every
//! transaction and timer done), so late retransmissions are still absorbed. Deadlines are
//! kept in an ordered set, so a timer tick costs `O(log n)` in the number of calls.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::dialog::{
    Destination, DialogError, DialogEvent, OutOfDialog, SessionTimerConfig, Transmit, UasCall,
    UasConfig, check_offer_acceptable, check_offer_answerable, respond_out_of_dialog, with_headers,
};
use super::message::{
    HostPort, ParseError, SipMessage, Uri, Via, build_error_response, build_response, parse,
    sanitize, split_outside,
};
use super::register::{RegState, Registration, RegistrationEvent};
use super::sdp::{CodecPrefs, LocalMedia};
use super::transaction::{TimerConfig, Wire};

#[cfg(test)]
mod tests;

/// A transport protocol of a SIP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Datagrams.
    Udp,
    /// A byte stream with Content-Length framing.
    Tcp,
}

impl TransportKind {
    fn via_name(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }
}

/// The socket or connection a message arrived on, or the one to send on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flow {
    /// A UDP listening socket, by the shell's index.
    Udp(usize),
    /// A TCP connection, by the shell's id.
    Tcp(u64),
}

impl Flow {
    /// The transport of the flow.
    pub fn transport(self) -> TransportKind {
        match self {
            Self::Udp(_) => TransportKind::Udp,
            Self::Tcp(_) => TransportKind::Tcp,
        }
    }
}

/// One message as it arrived.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// Socket or connection.
    pub flow: Flow,
    /// Our address as the peer reached it (the socket's address, or for a wildcard socket the
    /// local address the kernel routes to the peer from).
    pub local: SocketAddr,
    /// The peer's address (source of the datagram, remote end of the connection).
    pub remote: SocketAddr,
    /// One datagram, or one message cut from a stream.
    pub bytes: &'a [u8],
}

/// Where an outgoing message goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An address.
    Addr(SocketAddr),
    /// A host name and port the shell resolves (A/AAAA).
    Host(String, u16),
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// The transport to use.
    pub transport: TransportKind,
    /// The socket (UDP) or connection (TCP) to use if it is still there; for TCP without one
    /// (or when it has gone), the shell reuses a connection to `target` or opens one.
    pub flow: Option<Flow>,
    /// Destination.
    pub target: Target,
    /// The encoded message.
    pub payload: Wire,
    /// Whether it repeats something already sent.
    pub retransmission: bool,
}

/// A call's handle, unique for the endpoint's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallHandle(pub u64);

impl std::fmt::Display for CallHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What the endpoint tells the call logic.
#[derive(Clone, Debug, PartialEq)]
pub enum EndpointEvent {
    /// A new INVITE was admitted; 100 Trying is out. Ring, answer or reject it.
    IncomingCall {
        /// The call.
        call: CallHandle,
        /// Call-ID, for logs.
        call_id: String,
        /// Who is called: the Request-URI user, else the To user (may be empty).
        dialed: String,
        /// Who calls: the P-Asserted-Identity user, else the From user (may be empty).
        caller: String,
        /// The account it came through (its Request-URI user is that account's Contact user);
        /// `dialed` is then the To user, the number the caller dialed at the PBX.
        account: Option<String>,
        /// The peer the INVITE came from.
        remote: SocketAddr,
        /// The transport it came over.
        transport: TransportKind,
    },
    /// A registration with a PBX reported (registered, failed, unregistered).
    Registration {
        /// The account's name.
        account: String,
        /// What happened.
        event: RegistrationEvent,
    },
    /// Something happened in a call's dialog (media negotiated, confirmed, ended...).
    Dialog {
        /// The call.
        call: CallHandle,
        /// What happened.
        event: DialogEvent,
    },
}

/// The admission policy's verdict on a new INVITE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Take the call with this media address and port.
    Accept {
        /// Our side of the media session.
        media: LocalMedia,
    },
    /// Refuse it statelessly.
    Refuse {
        /// Final status (300-699).
        status: u16,
        /// Reason phrase.
        reason: &'static str,
        /// `Retry-After` seconds (for 503, 486...).
        retry_after: Option<u32>,
    },
}

/// Decides whether a new INVITE becomes a call (routing, capacity, media ports). Called
/// synchronously from [`Endpoint::handle_incoming`].
pub trait Admission {
    /// The verdict for `invite` (already stamped), which arrived at `local` from `remote`.
    fn admit(&mut self, invite: &SipMessage, local: SocketAddr, remote: SocketAddr) -> Admit;
}

/// Static parameters of the endpoint.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Host (name or address) to put in Contact and Via instead of the local address.
    pub public_host: Option<String>,
    /// Codec preference.
    pub codecs: CodecPrefs,
    /// T1, T2, T4.
    pub timers: TimerConfig,
    /// Session-timer policy.
    pub session_timer: SessionTimerConfig,
    /// The user part of our Contact.
    pub contact_user: String,
    /// `Server` / `User-Agent` header value; empty for none.
    pub user_agent: String,
}

/// Errors of the call commands.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The handle names no call (it has finished and left the table).
    #[error("no call {0}")]
    UnknownCall(CallHandle),
    /// The dialog refused the command.
    #[error(transparent)]
    Dialog(#[from] DialogError),
}

/// Counters for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Messages that did not parse.
    pub malformed: u64,
    /// Of those, requests answered with an error response.
    pub malformed_answered: u64,
    /// Responses that matched no call.
    pub stray_responses: u64,
    /// INVITEs the admission policy refused.
    pub refused: u64,
    /// Calls admitted.
    pub admitted: u64,
    /// Requests of ours not sent because their target is unreachable (`sips:`, TLS...).
    pub unreachable: u64,
}

#[derive(Debug)]
struct Slot {
    call: UasCall,
    /// The flow of the latest request from the peer (responses go back over it).
    flow: Flow,
    /// The peer's address on that flow.
    remote: SocketAddr,
    deadline: Option<Instant>,
    /// The initial INVITE's top branch, From tag and CSeq number, to match requests that
    /// come before our tag is known to the caller.
    invite_branch: Option<String>,
    invite_sent_by: HostPort,
    invite_from_tag: Option<String>,
    invite_cseq: u32,
    /// Whether an ACK has confirmed the dialog (see [`Endpoint::route_call_transmit`]).
    confirmed: bool,
}

/// Retry-After of the 503 to OPTIONS while draining.
const DRAIN_RETRY_AFTER_SECS: u32 = 30;

/// RFC 3261's branch prefix: a branch that starts with it is unique per transaction.
const MAGIC_COOKIE: &str = "z9hG4bK";

/// See the module docs.
pub struct Endpoint {
    config: EndpointConfig,
    random: Box<dyn FnMut() -> u64 + Send>,
    next_handle: u64,
    /// Calls by handle.
    slots: HashMap<CallHandle, Slot>,
    /// Handles by Call-ID: several calls can share one (a UAC that retries a refused INVITE
    /// with the same Call-ID and a new CSeq, RFC 3261 8.1.3.5, while the refused one is still
    /// absorbing retransmissions).
    calls: HashMap<String, Vec<CallHandle>>,
    deadlines: BTreeSet<(Instant, CallHandle)>,
    /// Registrations with PBXs ([`Endpoint::add_registration`]).
    registrations: Vec<RegSlot>,
    /// Shutting down: OPTIONS are answered 503 so load balancers stop sending calls.
    draining: bool,
    transmits: VecDeque<Outgoing>,
    events: VecDeque<EndpointEvent>,
    stats: EndpointStats,
}

/// One account's registration and where its REGISTERs go.
struct RegSlot {
    account: String,
    contact_user: String,
    registration: Registration,
    target: Target,
    transport: TransportKind,
    flow: Option<Flow>,
    /// Removed by a reload: dropped once unregistered.
    retiring: bool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("calls", &self.slots.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint; `random` supplies the randomness for tags and SDP session ids (the shell
    /// passes the OS generator, tests a counter).
    pub fn new(config: EndpointConfig, random: Box<dyn FnMut() -> u64 + Send>) -> Self {
        Self {
            config,
            random,
            next_handle: 1,
            slots: HashMap::new(),
            calls: HashMap::new(),
            deadlines: BTreeSet::new(),
            registrations: Vec::new(),
            draining: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
        }
    }

    /// Calls in the table (including ended ones still finishing their transactions).
    pub fn call_count(&self) -> usize {
        self.slots.len()
    }

    /// Whether any call still waits for a final response to a request we sent (a BYE at
    /// shutdown, say).
    pub fn awaiting_responses(&self) -> bool {
        self.slots
            .values()
            .any(|slot| slot.call.awaiting_responses())
            || self
                .registrations
                .iter()
                .any(|r| r.registration.state() == RegState::Unregistering)
    }

    /// Keeps `registration` (of `account`, whose calls come to `contact_user`) alive: its
    /// REGISTERs go to `target` over `transport`, its responses are matched by Call-ID, and
    /// its reports come out as [`EndpointEvent::Registration`].
    pub fn add_registration(
        &mut self,
        account: String,
        contact_user: String,
        registration: Registration,
        target: Target,
        transport: TransportKind,
        flow: Option<Flow>,
    ) {
        self.registrations.push(RegSlot {
            account,
            contact_user,
            registration,
            target,
            transport,
            flow,
            retiring: false,
        });
        self.pump_registrations();
    }

    /// Draining (shutdown): out-of-dialog OPTIONS get 503 with Retry-After, so a dispatcher
    /// (Kamailio's, say) takes this node out of rotation. New INVITEs are the admission's.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Replaces the configuration new calls get (a reload); calls already in the table keep
    /// theirs.
    pub fn set_config(&mut self, config: EndpointConfig) {
        self.config = config;
    }

    /// De-registers `account` (a reload removed or changed it); its slot goes once the
    /// removal is answered.
    pub fn remove_registration(&mut self, now: Instant, account: &str) {
        for slot in self
            .registrations
            .iter_mut()
            .filter(|r| r.account == account)
        {
            slot.registration.unregister(now);
            slot.retiring = true;
        }
        self.pump_registrations();
    }

    /// De-registers every account (shutdown): `Expires: 0`.
    pub fn unregister_all(&mut self, now: Instant) {
        for slot in &mut self.registrations {
            slot.registration.unregister(now);
        }
        self.pump_registrations();
    }

    /// Each account and where its registration stands.
    pub fn registrations(&self) -> impl Iterator<Item = (&str, RegState)> {
        self.registrations
            .iter()
            .map(|r| (r.account.as_str(), r.registration.state()))
    }

    /// The account an INVITE came through: its Request-URI user is an account's Contact user.
    pub fn account_of(&self, invite: &SipMessage) -> Option<&str> {
        account_for(
            invite,
            self.registrations
                .iter()
                .map(|r| (r.contact_user.as_str(), r.account.as_str())),
        )
    }

    fn pump_registrations(&mut self) {
        for slot in &mut self.registrations {
            while let Some(transmit) = slot.registration.poll_transmit() {
                self.transmits.push_back(Outgoing {
                    transport: slot.transport,
                    flow: slot.flow,
                    target: slot.target.clone(),
                    payload: transmit.payload,
                    retransmission: transmit.retransmission,
                });
            }
            while let Some(event) = slot.registration.poll_event() {
                self.events.push_back(EndpointEvent::Registration {
                    account: slot.account.clone(),
                    event,
                });
            }
        }
        self.registrations
            .retain(|r| !(r.retiring && r.registration.state() == RegState::Unregistered));
    }

    /// Counters.
    pub fn stats(&self) -> EndpointStats {
        self.stats
    }

    /// One message from the network.
    pub fn handle_incoming(
        &mut self,
        now: Instant,
        incoming: Incoming<'_>,
        admission: &mut dyn Admission,
    ) {
        let mut message = match parse(incoming.bytes) {
            Ok(message) => message,
            Err(error) => {
                self.malformed(&incoming, error);
                return;
            }
        };
        if !message.is_request() {
            self.handle_response(now, &message);
            return;
        }
        message.stamp_received(incoming.remote);
        if let Some(handle) = self.find_for_request(&message)
            && let Some(slot) = self.slots.get_mut(&handle)
        {
            // Only the caller's own requests move where the call's messages go (a request
            // with the wrong From tag is refused by the dialog with 481).
            if message.from().tag() == slot.invite_from_tag.as_deref() {
                slot.flow = incoming.flow;
                slot.remote = incoming.remote;
            }
            let wire: Wire = Arc::from(incoming.bytes);
            slot.call.handle_request(now, &message, wire);
            self.after_call(handle);
            return;
        }
        // Stateless replies get a tag derived from the request, so a retransmission gets the
        // same answer (RFC 3261 8.2.6.2); a call gets a random one.
        let tag = stateless_tag(&message);
        if self.draining && message.method() == Some("OPTIONS") && message.to().tag().is_none() {
            let payload = with_headers(
                build_response(&message, 503, "Service Unavailable", Some(&tag)),
                &[("Retry-After", DRAIN_RETRY_AFTER_SECS.to_string())],
                None,
            );
            self.reply(&message, &incoming, payload);
            return;
        }
        match respond_out_of_dialog(&message, &tag) {
            OutOfDialog::Ignore => {}
            OutOfDialog::Reply(payload) => self.reply(&message, &incoming, payload),
            OutOfDialog::NewCall => self.new_call(now, &message, &incoming, tag, admission),
        }
    }

    /// Runs every timer due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<CallHandle> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, handle)| *handle)
            .collect();
        for handle in due {
            if let Some(slot) = self.slot_mut(handle) {
                slot.call.handle_timeout(now);
            }
            self.after_call(handle);
        }
        for slot in &mut self.registrations {
            if slot.registration.poll_timeout().is_some_and(|at| at <= now) {
                slot.registration.handle_timeout(now);
            }
        }
        self.pump_registrations();
    }

    /// When [`Endpoint::handle_timeout`] should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.deadlines.first().map(|(at, _)| *at);
        let registrations = self
            .registrations
            .iter()
            .filter_map(|r| r.registration.poll_timeout())
            .min();
        [calls, registrations].into_iter().flatten().min()
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        self.transmits.pop_front()
    }

    /// The next event for the call logic.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// 180 Ringing.
    pub fn ring(&mut self, now: Instant, call: CallHandle) -> Result<(), EndpointError> {
        self.command(call, |c| c.ring(now))
    }

    /// 200 OK with our SDP.
    pub fn answer(&mut self, now: Instant, call: CallHandle) -> Result<(), EndpointError> {
        self.command(call, |c| c.answer(now))
    }

    /// A final non-2xx.
    pub fn reject(
        &mut self,
        now: Instant,
        call: CallHandle,
        code: u16,
        reason: &str,
    ) -> Result<(), EndpointError> {
        self.reject_with(now, call, code, reason, None)
    }

    /// BYE (or 603 before the answer).
    pub fn hang_up(&mut self, now: Instant, call: CallHandle) -> Result<(), EndpointError> {
        self.command(call, |c| c.hang_up(now))
    }

    /// Blind transfer of a confirmed call: REFER to `refer_to`.
    pub fn refer(
        &mut self,
        now: Instant,
        call: CallHandle,
        refer_to: &str,
    ) -> Result<(), EndpointError> {
        self.command(call, |c| c.refer(now, refer_to))
    }

    /// BYE with a `Reason` header (RFC 3326), or 603 before the answer.
    pub fn hang_up_with_reason(
        &mut self,
        now: Instant,
        call: CallHandle,
        reason: &str,
    ) -> Result<(), EndpointError> {
        self.command(call, |c| c.hang_up_with_reason(now, reason))
    }

    /// A final non-2xx with a `Retry-After` (seconds).
    pub fn reject_with(
        &mut self,
        now: Instant,
        call: CallHandle,
        code: u16,
        reason: &str,
        retry_after: Option<u32>,
    ) -> Result<(), EndpointError> {
        self.command(call, |c| c.reject_with(now, code, reason, retry_after))
    }

    /// Whether `bytes` is a BYE, CANCEL or ACK for a call the endpoint holds (by Call-ID):
    /// a source the rate limit has banned may still end, cancel or acknowledge the calls it
    /// already has, so they do not hold their slots until the RTP timeout. The dialog checks
    /// the tags as for any request; a stranger guessing a Call-ID gains nothing but a 481.
    pub fn ends_a_live_call(&self, bytes: &[u8]) -> bool {
        let method_ok = [&b"BYE "[..], b"CANCEL ", b"ACK "]
            .iter()
            .any(|m| bytes.starts_with(m));
        method_ok
            && parse(bytes).is_ok_and(|message| {
                matches!(message.method(), Some("BYE" | "CANCEL" | "ACK"))
                    && self.calls.contains_key(message.call_id())
            })
    }

    /// The dialog of a call, for inspection.
    pub fn call(&self, call: CallHandle) -> Option<&UasCall> {
        self.slots.get(&call).map(|slot| &slot.call)
    }

    // ---- internals ----

    fn command(
        &mut self,
        call: CallHandle,
        f: impl FnOnce(&mut UasCall) -> Result<(), DialogError>,
    ) -> Result<(), EndpointError> {
        let slot = self
            .slot_mut(call)
            .ok_or(EndpointError::UnknownCall(call))?;
        let result = f(&mut slot.call);
        self.after_call(call);
        result.map_err(EndpointError::from)
    }

    fn slot_mut(&mut self, call: CallHandle) -> Option<&mut Slot> {
        self.slots.get_mut(&call)
    }

    fn new_tag(&mut self) -> String {
        format!("{:016x}{:08x}", (self.random)(), (self.random)() as u32)
    }

    fn malformed(&mut self, incoming: &Incoming<'_>, mut error: ParseError) {
        self.stats.malformed += 1;
        let reason = match error.status_code() {
            505 => "Version Not Supported",
            416 => "Unsupported URI Scheme",
            _ => "Bad Request",
        };
        // Address the reply from the salvaged top Via, stamped like a parsed request's, and
        // copy the stamped value into the reply.
        let Some(salvage) = error.salvage_mut() else {
            return;
        };
        let Some(first_line) = salvage.vias.first_mut() else {
            return;
        };
        let Some(mut elements) = split_outside(first_line, ',')
            .map(|parts| parts.into_iter().map(str::to_owned).collect::<Vec<_>>())
        else {
            return;
        };
        let Some(first) = elements.first_mut() else {
            return;
        };
        let via = match Via::parse(first) {
            Some(mut via) => {
                via.stamp(incoming.remote);
                *first = via.to_string();
                via
            }
            // A Via only a lenient reading understands (another SIP version, empty
            // parameters): address the reply from it, copy it unchanged.
            None => {
                let Some(mut via) = Via::parse_lenient(first) else {
                    return;
                };
                let wanted_rport = via.rport().is_some();
                via.stamp(incoming.remote);
                // The text stays the client's own; only the facts are added at its end.
                let mut stamped = first.trim_end().to_owned();
                if let Some(received) = via.received() {
                    stamped.push_str(&format!(";received={received}"));
                }
                if wanted_rport {
                    stamped.push_str(&format!(";rport={}", incoming.remote.port()));
                }
                *first = stamped;
                via
            }
        };
        *first_line = elements.join(",");
        let Some(payload) = build_error_response(&error, error.status_code(), reason) else {
            return;
        };
        self.stats.malformed_answered += 1;
        self.send_reply(&via, incoming.flow, Arc::from(payload), false);
    }

    fn handle_response(&mut self, now: Instant, response: &SipMessage) {
        if let Some(slot) = self
            .registrations
            .iter_mut()
            .find(|r| r.registration.call_id() == response.call_id())
        {
            slot.registration.handle_response(now, response);
            self.pump_registrations();
            return;
        }
        // Responses answer our requests, whose From tag is the call's local tag.
        let found = self.calls.get(response.call_id()).and_then(|handles| {
            handles.iter().copied().find(|h| {
                self.slots
                    .get(h)
                    .is_some_and(|slot| response.from().tag() == Some(slot.call.local_tag()))
            })
        });
        let Some((handle, slot)) =
            found.and_then(|handle| self.slots.get_mut(&handle).map(|slot| (handle, slot)))
        else {
            self.stats.stray_responses += 1;
            return;
        };
        slot.call.handle_response(now, response);
        self.after_call(handle);
    }

    /// A stateless reply to `request` (stamped), back where it came from, with our `Server`.
    fn reply(&mut self, request: &SipMessage, incoming: &Incoming<'_>, payload: Wire) {
        let payload = if self.config.user_agent.is_empty() {
            payload
        } else {
            with_headers(
                payload.to_vec(),
                &[("Server", self.config.user_agent.clone())],
                None,
            )
        };
        self.send_reply(request.top_via(), incoming.flow, payload, false);
    }

    fn send_reply(&mut self, via: &Via, flow: Flow, payload: Wire, retransmission: bool) {
        let transport = if via.is_reliable() {
            TransportKind::Tcp
        } else {
            TransportKind::Udp
        };
        // A reply goes over the transport the request came on; a Via that names another is
        // a confused (or hostile) peer: answer over the flow anyway, to the stamped address.
        let transport = if transport == flow.transport() {
            transport
        } else {
            flow.transport()
        };
        let mut address = via.reply_address();
        if via.rport().flatten().is_none() && via.sent_by.port.is_none() {
            // The default port is the transport's we answer over (we have no TLS), not the
            // one the Via names: a `SIP/2.0/TLS` Via that came over UDP gets 5060.
            address.port = Some(5060);
        }
        let target = host_port_target(&address);
        self.transmits.push_back(Outgoing {
            transport,
            flow: Some(flow),
            target,
            payload,
            retransmission,
        });
    }

    fn new_call(
        &mut self,
        now: Instant,
        invite: &SipMessage,
        incoming: &Incoming<'_>,
        stateless_tag: String,
        admission: &mut dyn Admission,
    ) {
        let tag = &stateless_tag;
        if let Some(refusal) = check_offer_acceptable(invite)
            .or_else(|| check_offer_answerable(invite, &self.config.codecs))
        {
            let extra = refusal.headers.clone();
            self.stateless(
                invite,
                incoming,
                tag,
                refusal.status,
                refusal.reason,
                &extra,
            );
            return;
        }
        let media = match admission.admit(invite, incoming.local, incoming.remote) {
            Admit::Accept { media } => media,
            Admit::Refuse {
                status,
                reason,
                retry_after,
            } => {
                self.stats.refused += 1;
                let extra: Vec<(&str, String)> = retry_after
                    .map(|s| ("Retry-After", s.to_string()))
                    .into_iter()
                    .collect();
                self.stateless(invite, incoming, tag, status, reason, &extra);
                return;
            }
        };
        let transport = incoming.flow.transport();
        let host = self
            .config
            .public_host
            .clone()
            .unwrap_or_else(|| host_of(incoming.local.ip()));
        let port = incoming.local.port();
        let transport_param = match transport {
            TransportKind::Udp => "",
            TransportKind::Tcp => ";transport=tcp",
        };
        let config = UasConfig {
            contact: format!(
                "sip:{}@{host}:{port}{transport_param}",
                self.config.contact_user
            ),
            local_tag: self.new_tag(),
            via_sent_by: format!("{host}:{port}"),
            media,
            codecs: self.config.codecs.clone(),
            timers: self.config.timers,
            reliable: transport == TransportKind::Tcp,
            session_timer: self.config.session_timer,
            user_agent: self.config.user_agent.clone(),
        };
        let call = match UasCall::new(now, invite, config) {
            Ok(call) => call,
            Err(_) => {
                // Not an initial INVITE after all (respond_out_of_dialog said it was): 481.
                self.stateless(
                    invite,
                    incoming,
                    tag,
                    481,
                    "Call/Transaction Does Not Exist",
                    &[],
                );
                return;
            }
        };
        self.stats.admitted += 1;
        let handle = CallHandle(self.next_handle);
        self.next_handle += 1;
        let call_id = invite.call_id().to_owned();
        let account = self.account_of(invite).map(str::to_owned);
        self.events.push_back(EndpointEvent::IncomingCall {
            call: handle,
            call_id: call_id.clone(),
            dialed: dialed_via(invite, account.is_some()),
            account,
            caller: caller(invite),
            remote: incoming.remote,
            transport,
        });
        self.calls.entry(call_id).or_default().push(handle);
        self.slots.insert(
            handle,
            Slot {
                call,
                flow: incoming.flow,
                remote: incoming.remote,
                deadline: None,
                invite_branch: invite.top_via().branch().map(str::to_owned),
                invite_sent_by: invite.top_via().sent_by.clone(),
                invite_from_tag: invite.from().tag().map(str::to_owned),
                invite_cseq: invite.cseq().seq,
                confirmed: false,
            },
        );
        self.after_call(handle);
    }

    fn stateless(
        &mut self,
        request: &SipMessage,
        incoming: &Incoming<'_>,
        tag: &str,
        code: u16,
        reason: &str,
        extra: &[(&'static str, String)],
    ) {
        let tag = (!tag.is_empty()).then_some(tag);
        let bytes = with_headers(build_response(request, code, reason, tag), extra, None);
        self.reply(request, incoming, bytes);
    }

    /// Drains a call after anything touched it: transmits, events, its deadline, and removes
    /// it once finished.
    fn after_call(&mut self, handle: CallHandle) {
        let Some(mut slot) = self.slots.remove(&handle) else {
            return;
        };
        while let Some(transmit) = slot.call.poll_transmit() {
            self.route_call_transmit(&slot, transmit);
        }
        while let Some(event) = slot.call.poll_event() {
            if event == DialogEvent::Confirmed {
                slot.confirmed = true;
            }
            self.events.push_back(EndpointEvent::Dialog {
                call: handle,
                event,
            });
        }
        if let Some(old) = slot.deadline.take() {
            self.deadlines.remove(&(old, handle));
        }
        if slot.call.is_finished() {
            let call_id = slot.call.call_id();
            if let Some(handles) = self.calls.get_mut(call_id) {
                handles.retain(|h| *h != handle);
                if handles.is_empty() {
                    self.calls.remove(call_id);
                }
            }
            return;
        }
        slot.deadline = slot.call.poll_timeout();
        if let Some(at) = slot.deadline {
            self.deadlines.insert((at, handle));
        }
        self.slots.insert(handle, slot);
    }

    /// The call a request belongs to: by our To tag once it has one; before that by the
    /// INVITE's transaction (RFC 3261 17.2.3: the branch with the magic cookie, else the
    /// RFC 2543 fields), which catches retransmissions, CANCEL and the ACK of a non-2xx.
    /// `None` for a new INVITE that merely reuses a Call-ID.
    fn find_for_request(&self, request: &SipMessage) -> Option<CallHandle> {
        let handles = self.calls.get(request.call_id())?;
        let to_tag = request.to().tag();
        handles.iter().copied().find(|h| {
            let Some(slot) = self.slots.get(h) else {
                return false;
            };
            match to_tag {
                Some(tag) => tag == slot.call.local_tag(),
                None => match (request.top_via().branch(), slot.invite_branch.as_deref()) {
                    (Some(ours), Some(theirs))
                        if ours.starts_with(MAGIC_COOKIE) && theirs.starts_with(MAGIC_COOKIE) =>
                    {
                        // Branch and sent-by (17.2.3); the CSeq number too, which INVITE,
                        // its CANCEL and its non-2xx ACK share, so a client that reuses a
                        // branch for a new INVITE still gets a new call.
                        ours.eq_ignore_ascii_case(theirs)
                            && request.top_via().sent_by == slot.invite_sent_by
                            && request.cseq().seq == slot.invite_cseq
                    }
                    _ => {
                        request.from().tag() == slot.invite_from_tag.as_deref()
                            && request.cseq().seq == slot.invite_cseq
                    }
                },
            }
        })
    }

    fn route_call_transmit(&mut self, slot: &Slot, transmit: Transmit) {
        match transmit.destination {
            Destination::ReplyPerVia => {
                // Our own response: its top Via is the stamped one of the request.
                let Some(via) = parse(&transmit.payload).ok().map(|m| m.top_via().clone()) else {
                    return;
                };
                self.send_reply(&via, slot.flow, transmit.payload, transmit.retransmission);
            }
            Destination::Uri(_) if !slot.confirmed => {
                // Until an ACK has confirmed the dialog, the caller may be a spoofed source:
                // a BYE for a 2xx never acknowledged (RFC 3261 13.3.1.4) goes back where the
                // INVITE came from, never to the Contact or Record-Route it named, so a forged
                // INVITE cannot aim our requests (or DNS lookups) at a third party.
                self.transmits.push_back(Outgoing {
                    transport: slot.flow.transport(),
                    flow: Some(slot.flow),
                    target: Target::Addr(slot.remote),
                    payload: transmit.payload,
                    retransmission: transmit.retransmission,
                });
            }
            Destination::Uri(uri) => {
                let Some((transport, target)) = request_target(&uri, slot.flow.transport()) else {
                    self.stats.unreachable += 1;
                    return;
                };
                // Connection reuse: the call's own connection when the target is the host
                // it comes from (or a name we cannot compare), else whatever the shell has.
                let flow = match (slot.flow, &target) {
                    (Flow::Udp(_), _) if transport == TransportKind::Udp => Some(slot.flow),
                    (Flow::Tcp(_), Target::Addr(addr))
                        if transport == TransportKind::Tcp
                            && addr.ip().to_canonical() == slot.remote.ip().to_canonical() =>
                    {
                        Some(slot.flow)
                    }
                    (Flow::Tcp(_), Target::Host(..)) if transport == TransportKind::Tcp => {
                        Some(slot.flow)
                    }
                    _ => None,
                };
                self.transmits.push_back(Outgoing {
                    transport,
                    flow,
                    target,
                    payload: transmit.payload,
                    retransmission: transmit.retransmission,
                });
            }
        }
    }
}

/// Where a request to `uri` goes: `transport=` decides, else the call's transport; the port
/// defaults to 5060. SRV/NAPTR (RFC 3263) are not looked up: a host name is resolved to
/// A/AAAA by the shell. `None` when we cannot reach it: a `sips:` URI or a transport other than UDP and TCP (we
/// have no TLS, WebSocket or SCTP), or no host.
fn request_target(uri: &Uri, call_transport: TransportKind) -> Option<(TransportKind, Target)> {
    if !uri.scheme.eq_ignore_ascii_case("sip") {
        return None;
    }
    let transport = match uri
        .params
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case("transport"))
        .and_then(|p| p.value.as_deref())
    {
        None => call_transport,
        Some(t) if t.eq_ignore_ascii_case("udp") => TransportKind::Udp,
        Some(t) if t.eq_ignore_ascii_case("tcp") => TransportKind::Tcp,
        Some(_) => return None,
    };
    let host_port = uri.host_port.clone().filter(|hp| !hp.host.is_empty())?;
    Some((transport, host_port_target(&host_port)))
}

/// A To tag for a stateless reply: a hash of Call-ID, From tag and top branch (FNV-1a), so
/// retransmissions of one request get the same tag and different requests different ones.
fn stateless_tag(request: &SipMessage) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [
        request.call_id(),
        request.from().tag().unwrap_or_default(),
        request.top_via().branch().unwrap_or_default(),
    ] {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("s{hash:016x}")
}

fn host_port_target(hp: &HostPort) -> Target {
    let port = hp.port.unwrap_or(5060);
    let bare = hp.host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<IpAddr>() {
        Ok(ip) => Target::Addr(SocketAddr::new(ip, port)),
        Err(_) => Target::Host(hp.host.clone(), port),
    }
}

fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

fn unescape_user(user: &str) -> String {
    // %-escapes in the user part (RFC 3261 19.1.2); invalid ones kept as they are.
    let bytes = user.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(decoded) = hex {
                out.push(decoded);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    sanitize(&String::from_utf8_lossy(&out))
}

/// The dialed number: the Request-URI user, else the To user.
pub fn dialed(invite: &SipMessage) -> String {
    let user = invite
        .request_uri()
        .and_then(|u| u.user.clone())
        .or_else(|| invite.to().uri.user.clone())
        .unwrap_or_default();
    unescape_user(&user)
}

/// The account of `accounts` (`(contact user, account)` pairs) whose Contact user is the
/// INVITE's Request-URI user.
pub fn account_for<'a>(
    invite: &SipMessage,
    accounts: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<&'a str> {
    let user = unescape_user(invite.request_uri()?.user.as_deref()?);
    accounts
        .into_iter()
        .find(|(contact_user, _)| *contact_user == user)
        .map(|(_, account)| account)
}

/// The dialed number of a call that came through an account (`via_account`: the To user, as
/// the Request-URI is our Contact) or directly ([`dialed`]).
pub fn dialed_via(invite: &SipMessage, via_account: bool) -> String {
    if via_account {
        let to = invite.to().uri.user.clone().unwrap_or_default();
        unescape_user(&to)
    } else {
        dialed(invite)
    }
}

/// The caller: the first P-Asserted-Identity user, else the From user.
pub fn caller(invite: &SipMessage) -> String {
    let user = invite
        .p_asserted_identity()
        .into_iter()
        .find_map(|na| na.uri.user)
        .or_else(|| invite.from().uri.user.clone())
        .unwrap_or_default();
    unescape_user(&user)
}

impl TransportKind {
    /// The transport's name in a Via.
    pub fn name(self) -> &'static str {
        self.via_name()
    }
}
