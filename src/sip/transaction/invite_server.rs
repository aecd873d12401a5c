//! The INVITE server transaction: RFC 3261 17.2.1 with RFC 6026's Accepted state.

use std::time::Instant;

use super::{Core, StatusCode, Timer, TimerConfig, TransactionError, Transmit, TxEvent, Wire};

/// States of an [`InviteServer`] (RFC 3261 figure 7 as amended by RFC 6026 figure 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteServerState {
    /// The INVITE has arrived; provisional responses may be sent.
    Proceeding,
    /// A 3xx-6xx was sent; it is retransmitted (Timer G) until the ACK or Timer H.
    Completed,
    /// The ACK arrived; stray ACK retransmissions are absorbed until Timer I.
    Confirmed,
    /// RFC 6026: a 2xx was sent; INVITE retransmissions are absorbed until Timer L.
    Accepted,
    /// Over.
    Terminated,
}

impl InviteServerState {
    fn name(self) -> &'static str {
        match self {
            Self::Proceeding => "Proceeding",
            Self::Completed => "Completed",
            Self::Confirmed => "Confirmed",
            Self::Accepted => "Accepted",
            Self::Terminated => "Terminated",
        }
    }
}

/// The server side of one INVITE.
///
/// The machine does not invent a 100 Trying (it cannot build messages): the TU sends one at
/// once with [`InviteServer::send_provisional`], which RFC 3261 17.2.1 allows in place of the
/// 200 ms rule. The 2xx is retransmitted by the TU, not here (RFC 3261 13.3.1.4): each
/// retransmission goes through [`InviteServer::send_final`] in Accepted.
#[derive(Debug)]
pub struct InviteServer<M> {
    core: Core<M>,
    state: InviteServerState,
    /// The response to resend when the INVITE is retransmitted (the latest provisional in
    /// Proceeding, the final in Completed).
    last_response: Option<Wire>,
    /// The current Timer G interval; doubles up to T2.
    retransmit_interval: std::time::Duration,
}

impl<M> InviteServer<M> {
    /// A transaction for an INVITE that has just arrived.
    pub fn new(_now: Instant, config: TimerConfig, reliable: bool) -> Self {
        Self {
            core: Core::new(config, reliable),
            state: InviteServerState::Proceeding,
            last_response: None,
            retransmit_interval: config.t1,
        }
    }

    /// The current state.
    pub fn state(&self) -> InviteServerState {
        self.state
    }

    /// A retransmission of the INVITE arrived.
    pub fn handle_request(&mut self, _now: Instant) {
        match self.state {
            // Proceeding: the peer may have missed our provisional; Completed: our final.
            InviteServerState::Proceeding | InviteServerState::Completed => {
                if let Some(response) = &self.last_response {
                    self.core.send(response, true);
                }
            }
            // Confirmed absorbs; Accepted absorbs too (RFC 6026 7.1): the 2xx is the TU's to
            // retransmit, and passing the INVITE up would make it look like a new call.
            InviteServerState::Confirmed
            | InviteServerState::Accepted
            | InviteServerState::Terminated => {}
        }
    }

    /// An ACK matching this transaction arrived. In Completed it acknowledges our non-2xx
    /// final; in Accepted it is the ACK for our 2xx and goes to the TU (RFC 6026 7.1).
    pub fn handle_ack(&mut self, now: Instant, message: M) {
        match self.state {
            InviteServerState::Completed => {
                self.core.timers.stop(Timer::G);
                self.core.timers.stop(Timer::H);
                if self.core.reliable {
                    self.terminate();
                } else {
                    self.state = InviteServerState::Confirmed;
                    let t4 = self.core.config.t4;
                    self.core.arm(Timer::I, now, t4);
                }
            }
            InviteServerState::Accepted => self.core.emit(TxEvent::AckReceived(message)),
            InviteServerState::Proceeding
            | InviteServerState::Confirmed
            | InviteServerState::Terminated => {}
        }
    }

    /// The TU sends a provisional response (100-199), encoded as `response`.
    pub fn send_provisional(
        &mut self,
        _now: Instant,
        status: StatusCode,
        response: Wire,
    ) -> Result<(), TransactionError> {
        if !(100..=199).contains(&status) {
            return Err(TransactionError::InvalidStatus { status });
        }
        if self.state != InviteServerState::Proceeding {
            return Err(self.not_allowed(status));
        }
        self.core.send(&response, false);
        self.last_response = Some(response);
        Ok(())
    }

    /// The TU sends a final response (200-699), encoded as `response`. In Accepted only 2xx
    /// are allowed: they are the TU's retransmissions of its 2xx (RFC 6026 8.5).
    pub fn send_final(
        &mut self,
        now: Instant,
        status: StatusCode,
        response: Wire,
    ) -> Result<(), TransactionError> {
        if !(200..=699).contains(&status) {
            return Err(TransactionError::InvalidStatus { status });
        }
        let success = status < 300;
        match self.state {
            InviteServerState::Proceeding if success => {
                self.core.send(&response, false);
                self.state = InviteServerState::Accepted;
                self.last_response = None;
                let timeout = self.core.config.transaction_timeout();
                self.core.arm(Timer::L, now, timeout);
            }
            InviteServerState::Proceeding => {
                self.core.send(&response, false);
                self.state = InviteServerState::Completed;
                self.last_response = Some(response);
                if !self.core.reliable {
                    self.retransmit_interval = self.core.config.t1;
                    self.core.arm(Timer::G, now, self.retransmit_interval);
                }
                let timeout = self.core.config.transaction_timeout();
                self.core.arm(Timer::H, now, timeout);
            }
            InviteServerState::Accepted if success => self.core.send(&response, true),
            _ => return Err(self.not_allowed(status)),
        }
        Ok(())
    }

    /// The transport failed to send for this transaction (RFC 3261 17.2.4). The TU is told;
    /// the transaction ends, except in Accepted: RFC 6026 keeps it there until Timer L, so
    /// that INVITE retransmissions are still absorbed rather than taken for a new call.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            InviteServerState::Terminated => {}
            InviteServerState::Accepted => self.core.emit(TxEvent::TransportError),
            InviteServerState::Proceeding
            | InviteServerState::Completed
            | InviteServerState::Confirmed => {
                self.core.emit(TxEvent::TransportError);
                self.terminate();
            }
        }
    }

    /// Runs every timer that has expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.core.timers.take_expired(now) {
            match timer {
                Timer::G => {
                    if let Some(response) = &self.last_response {
                        self.core.send(response, true);
                    }
                    self.retransmit_interval = self
                        .retransmit_interval
                        .saturating_mul(2)
                        .min(self.core.config.t2);
                    self.core.arm(Timer::G, now, self.retransmit_interval);
                }
                Timer::H => {
                    // No ACK: the TU learns the call failed (RFC 3261 17.2.1).
                    self.core.emit(TxEvent::Timeout);
                    self.terminate();
                }
                Timer::I | Timer::L => self.terminate(),
                _ => {}
            }
        }
    }

    /// The next transmission, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.core.transmits.pop_front()
    }

    /// The next event for the TU, if any.
    pub fn poll_event(&mut self) -> Option<TxEvent<M>> {
        self.core.events.pop_front()
    }

    /// When [`InviteServer::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.timers.next_deadline()
    }

    fn terminate(&mut self) {
        self.state = InviteServerState::Terminated;
        self.last_response = None;
        self.core.terminate();
    }

    fn not_allowed(&self, status: StatusCode) -> TransactionError {
        TransactionError::ResponseNotAllowed {
            status,
            state: self.state.name(),
        }
    }
}
