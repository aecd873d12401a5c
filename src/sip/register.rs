//! Registration with a PBX or registrar, client side (RFC 3261 section 10), sans-IO.
//!
//! One [`Registration`] per configured account keeps one binding alive:
//!
//! - REGISTER with `Expires`; a 401/407 is answered once per nonce with digest credentials
//!   ([`super::auth`]); a challenge with `stale=true` is retried at once without counting as a
//!   failure; a second challenge for credentials just sent is a failure (wrong password).
//! - 423 Interval Too Brief: the next REGISTER asks for the registrar's `Min-Expires`.
//! - 2xx: the granted expiry is our Contact's `expires` parameter, else the `Expires` header,
//!   else what we asked; the binding is refreshed at 85 % of it (a registrar that restarted
//!   and forgot us, or changed its nonce, is met at the next refresh, with credentials again).
//! - Any other answer, a timeout or a transport error: back-off 5 s, doubling to 10 minutes,
//!   then REGISTER again; every success resets it.
//! - [`Registration::unregister`]: REGISTER with `Expires: 0` (shutdown), then stop.
//!
//! The transaction (retransmission, Timer F) is the [`NonInviteClient`]; the clock and the
//! randomness (branch, cnonce) are inputs.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::auth::Challenge;
use super::message::{SipMessage, sanitize};
use super::transaction::{NonInviteClient, TimerConfig, Transmit, TxEvent, Wire};

/// Fraction of the granted expiry after which the binding is refreshed.
const REFRESH_AT: f64 = 0.85;
/// First back-off after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// 423s followed in a row before giving up for a back-off.
const MAX_INTERVAL_RETRIES: u32 = 3;
/// Challenges answered in a row without a final success before giving up for a back-off.
const MAX_AUTH_ROUNDS: u32 = 3;

/// What one account registers.
#[derive(Clone, Debug)]
pub struct RegisterConfig {
    /// The Request-URI: the registrar (`sip:pbx.example.com`).
    pub registrar: String,
    /// The address of record, in From and To (`sip:2001@pbx.example.com`).
    pub aor: String,
    /// The digest user name.
    pub auth_username: String,
    /// The digest password.
    pub password: String,
    /// Our Contact URI (`sip:2001@192.0.2.10:5060`).
    pub contact: String,
    /// Via transport and sent-by (`UDP 192.0.2.10:5060`).
    pub via: String,
    /// The expiry asked for, in seconds.
    pub expires: u32,
    /// User-Agent header.
    pub user_agent: String,
    /// Retransmission timers.
    pub timers: TimerConfig,
    /// Whether the transport is reliable (TCP): no retransmissions.
    pub reliable: bool,
}

/// Where a registration stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegState {
    /// A REGISTER is in flight.
    Registering,
    /// Bound until `until`; refreshed before.
    Registered { until: Instant },
    /// The last attempt failed; the next is at `retry_at`.
    Failed { retry_at: Instant },
    /// The `Expires: 0` REGISTER is in flight.
    Unregistering,
    /// Done (after [`Registration::unregister`]).
    Unregistered,
}

/// What a registration reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationEvent {
    /// The registrar accepted the binding for `expires` seconds.
    Registered { expires: u32 },
    /// An attempt failed (`status` None: no answer / transport); retried after `retry_in`.
    Failed {
        status: Option<u16>,
        reason: String,
        retry_in: Duration,
    },
    /// The binding was removed (or the removal gave up): the registration is over.
    Unregistered,
}

/// One account's registration. See the module documentation.
pub struct Registration {
    config: RegisterConfig,
    call_id: String,
    from_tag: String,
    cseq: u32,
    interval: u32,
    state: RegState,
    tx: Option<NonInviteClient<SipMessage>>,
    /// The CSeq of the request in flight (responses to older ones are ignored).
    tx_cseq: u32,
    challenge: Option<Challenge>,
    nonce_count: u32,
    /// Whether the request in flight carried credentials for the current nonce.
    sent_credentials: bool,
    /// Challenges answered since the last final non-401/407 response.
    auth_rounds: u32,
    interval_retries: u32,
    failures: u32,
    refresh_at: Option<Instant>,
    random: Box<dyn FnMut() -> u64 + Send>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<RegistrationEvent>,
}

impl Registration {
    /// Starts registering at `now`: the first REGISTER is queued. `random` supplies the
    /// Call-ID, tag, branches and client nonces.
    pub fn new(
        now: Instant,
        config: RegisterConfig,
        mut random: Box<dyn FnMut() -> u64 + Send>,
    ) -> Registration {
        let call_id = format!("{:016x}{:08x}@srb", random(), random() as u32);
        let from_tag = format!("{:016x}", random());
        let interval = config.expires.max(1);
        let mut registration = Registration {
            config,
            call_id,
            from_tag,
            cseq: 0,
            interval,
            state: RegState::Registering,
            tx: None,
            tx_cseq: 0,
            challenge: None,
            nonce_count: 0,
            sent_credentials: false,
            auth_rounds: 0,
            interval_retries: 0,
            failures: 0,
            refresh_at: None,
            random,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        registration.send(now, interval);
        registration
    }

    /// Where it stands.
    pub fn state(&self) -> RegState {
        self.state
    }

    /// The Call-ID of its REGISTERs (the shell routes responses by it).
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Removes the binding: `Expires: 0` (with credentials if the registrar asked for them).
    pub fn unregister(&mut self, now: Instant) {
        match self.state {
            RegState::Unregistering | RegState::Unregistered => {}
            RegState::Failed { .. } => {
                // Nothing is bound (or nothing we know of): done.
                self.finish();
            }
            RegState::Registering | RegState::Registered { .. } => {
                self.state = RegState::Unregistering;
                self.refresh_at = None;
                self.send(now, 0);
            }
        }
    }

    /// A response whose Call-ID is ours.
    pub fn handle_response(&mut self, now: Instant, response: &SipMessage) {
        let Some(status) = response.status_code() else {
            return;
        };
        if response.cseq().seq != self.tx_cseq
            || !response.cseq().method.eq_ignore_ascii_case("REGISTER")
        {
            return;
        }
        if let Some(tx) = &mut self.tx {
            tx.handle_response(now, status, response.clone());
        }
        self.pump(now);
    }

    /// Timers: retransmissions, Timer F, refresh, back-off.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(tx) = &mut self.tx {
            tx.handle_timeout(now);
        }
        self.pump(now);
        let due = match self.state {
            RegState::Registered { .. } => self.refresh_at.is_some_and(|at| now >= at),
            RegState::Failed { retry_at } => now >= retry_at,
            _ => false,
        };
        if due && self.tx.is_none() {
            self.state = RegState::Registering;
            self.refresh_at = None;
            self.send(now, self.interval);
        }
    }

    /// When [`Registration::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = match self.state {
            RegState::Registered { .. } => self.refresh_at,
            RegState::Failed { retry_at } => Some(retry_at),
            _ => None,
        };
        [
            own,
            self.tx.as_ref().and_then(NonInviteClient::poll_timeout),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The next REGISTER (or retransmission) to send to the registrar (or outbound proxy).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RegistrationEvent> {
        self.events.pop_front()
    }

    // ---- internals --------------------------------------------------------------------------

    fn send(&mut self, now: Instant, expires: u32) {
        self.cseq = self.cseq.wrapping_add(1).max(1);
        self.tx_cseq = self.cseq;
        let branch = format!("z9hG4bK{:016x}", (self.random)());
        let c = &self.config;
        let mut request = format!(
            "REGISTER {registrar} SIP/2.0\r\n\
             Via: SIP/2.0/{via};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{aor}>;tag={tag}\r\n\
             To: <{aor}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <{contact}>\r\n\
             Expires: {expires}\r\n\
             User-Agent: {ua}\r\n",
            registrar = sanitize(&c.registrar),
            via = sanitize(&c.via),
            aor = sanitize(&c.aor),
            tag = self.from_tag,
            call_id = self.call_id,
            cseq = self.cseq,
            contact = sanitize(&c.contact),
            ua = sanitize(&c.user_agent),
        );
        self.sent_credentials = false;
        if let Some(challenge) = &self.challenge {
            self.nonce_count += 1;
            let cnonce = format!("{:016x}", (self.random)());
            let value = challenge.answer(
                &c.auth_username,
                &c.password,
                "REGISTER",
                &c.registrar,
                self.nonce_count,
                &cnonce,
            );
            request.push_str(&format!("{}: {value}\r\n", challenge.header_name()));
            self.sent_credentials = true;
        }
        request.push_str("Content-Length: 0\r\n\r\n");
        let wire: Wire = Wire::from(request.into_bytes());
        self.tx = Some(NonInviteClient::new(
            now,
            self.config.timers,
            self.config.reliable,
            wire,
        ));
        self.pump(now);
    }

    /// Moves transmissions out of the transaction and acts on its events.
    fn pump(&mut self, now: Instant) {
        let mut finals = Vec::new();
        if let Some(tx) = &mut self.tx {
            while let Some(transmit) = tx.poll_transmit() {
                self.transmits.push_back(transmit);
            }
            while let Some(event) = tx.poll_event() {
                finals.push(event);
            }
        }
        for event in finals {
            match event {
                TxEvent::Response { status, message } if status >= 200 => {
                    self.tx = None;
                    self.final_response(now, status, &message);
                }
                TxEvent::Timeout => {
                    self.tx = None;
                    self.fail(now, None, "no response from the registrar");
                }
                TxEvent::TransportError => {
                    self.tx = None;
                    self.fail(now, None, "transport error");
                }
                _ => {}
            }
        }
    }

    fn final_response(&mut self, now: Instant, status: u16, response: &SipMessage) {
        let unregistering = self.state == RegState::Unregistering;
        match status {
            200..=299 => {
                if unregistering {
                    self.finish();
                    return;
                }
                let granted = self.granted_expiry(response).max(1);
                self.failures = 0;
                self.auth_rounds = 0;
                self.interval_retries = 0;
                let until = now + Duration::from_secs(u64::from(granted));
                let refresh = Duration::from_secs_f64(f64::from(granted) * REFRESH_AT);
                self.refresh_at = Some(now + refresh);
                self.state = RegState::Registered { until };
                self.events
                    .push_back(RegistrationEvent::Registered { expires: granted });
            }
            401 | 407 => match Challenge::from_response(response) {
                // A challenge we have not answered yet: the first, a stale nonce, or a new
                // nonce (a registrar that restarted forgot the old one). The same nonce
                // challenged again means the credentials are wrong; a registrar that draws a
                // new nonce for every attempt is given MAX_AUTH_ROUNDS of them.
                Some(challenge)
                    if self.auth_rounds < MAX_AUTH_ROUNDS
                        && (challenge.stale
                            || !self.sent_credentials
                            || self.challenge.as_ref().map(|c| &c.nonce)
                                != Some(&challenge.nonce)) =>
                {
                    self.auth_rounds += 1;
                    self.challenge = Some(challenge);
                    self.nonce_count = 0;
                    self.send(now, if unregistering { 0 } else { self.interval });
                }
                Some(_) => self.fail(now, Some(status), "credentials refused"),
                None => self.fail(now, Some(status), "no digest challenge we can answer"),
            },
            423 if !unregistering && self.interval_retries < MAX_INTERVAL_RETRIES => {
                let min = response
                    .header("Min-Expires")
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(min) if min > self.interval => {
                        self.interval_retries += 1;
                        self.interval = min;
                        self.send(now, min);
                    }
                    _ => self.fail(now, Some(423), "423 without a usable Min-Expires"),
                }
            }
            _ => {
                let reason = response.reason().unwrap_or_default().to_owned();
                self.fail(now, Some(status), &reason);
            }
        }
    }

    /// Our Contact's `expires` in a 2xx, else its `Expires` header, else what we asked for.
    fn granted_expiry(&self, response: &SipMessage) -> u32 {
        let ours = self.config.contact.to_ascii_lowercase();
        for value in response.header_values("Contact") {
            for contact in value.split(',') {
                let lower = contact.to_ascii_lowercase();
                if !lower.contains(&ours) {
                    continue;
                }
                if let Some(expires) = lower
                    .split(';')
                    .filter_map(|p| p.trim().strip_prefix("expires="))
                    .find_map(|v| v.trim().parse::<u32>().ok())
                {
                    return expires;
                }
            }
        }
        response
            .header("Expires")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(self.interval)
    }

    fn fail(&mut self, now: Instant, status: Option<u16>, reason: &str) {
        if self.state == RegState::Unregistering {
            // Removal is best effort: the binding expires on its own.
            self.finish();
            return;
        }
        let retry_in = FIRST_BACKOFF
            .saturating_mul(1u32 << self.failures.min(10))
            .min(MAX_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        self.interval_retries = 0;
        self.auth_rounds = 0;
        self.refresh_at = None;
        self.state = RegState::Failed {
            retry_at: now + retry_in,
        };
        self.events.push_back(RegistrationEvent::Failed {
            status,
            reason: reason.to_owned(),
            retry_in,
        });
    }

    fn finish(&mut self) {
        self.tx = None;
        self.refresh_at = None;
        self.state = RegState::Unregistered;
        self.events.push_back(RegistrationEvent::Unregistered);
    }
}

#[cfg(test)]
mod tests;
