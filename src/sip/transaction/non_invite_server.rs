//! The non-INVITE server transaction: RFC 3261 17.2.2.

use std::time::Instant;

use super::{Core, StatusCode, Timer, TimerConfig, TransactionError, Transmit, TxEvent, Wire};

/// States of a [`NonInviteServer`] (RFC 3261 figure 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonInviteServerState {
    /// The request has arrived; nothing sent yet.
    Trying,
    /// A provisional was sent.
    Proceeding,
    /// The final response was sent; request retransmissions get it again until Timer J.
    Completed,
    /// Over.
    Terminated,
}

impl NonInviteServerState {
    fn name(self) -> &'static str {
        match self {
            Self::Trying => "Trying",
            Self::Proceeding => "Proceeding",
            Self::Completed => "Completed",
            Self::Terminated => "Terminated",
        }
    }
}

/// The server side of one non-INVITE request (BYE, OPTIONS, CANCEL, ...).
#[derive(Debug)]
pub struct NonInviteServer<M> {
    core: Core<M>,
    state: NonInviteServerState,
    /// The latest response sent: what a request retransmission is answered with.
    last_response: Option<Wire>,
}

impl<M> NonInviteServer<M> {
    /// A transaction for a request that has just arrived.
    pub fn new(_now: Instant, config: TimerConfig, reliable: bool) -> Self {
        Self {
            core: Core::new(config, reliable),
            state: NonInviteServerState::Trying,
            last_response: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> NonInviteServerState {
        self.state
    }

    /// A retransmission of the request arrived: answered with the latest response, or
    /// absorbed in Trying, where there is nothing to resend yet (RFC 3261 17.2.2).
    pub fn handle_request(&mut self, _now: Instant) {
        match self.state {
            NonInviteServerState::Proceeding | NonInviteServerState::Completed => {
                if let Some(response) = &self.last_response {
                    self.core.send(response, true);
                }
            }
            NonInviteServerState::Trying | NonInviteServerState::Terminated => {}
        }
    }

    /// The TU sends a provisional response (100-199).
    pub fn send_provisional(
        &mut self,
        _now: Instant,
        status: StatusCode,
        response: Wire,
    ) -> Result<(), TransactionError> {
        if !(100..=199).contains(&status) {
            return Err(TransactionError::InvalidStatus { status });
        }
        match self.state {
            NonInviteServerState::Trying | NonInviteServerState::Proceeding => {
                self.core.send(&response, false);
                self.last_response = Some(response);
                self.state = NonInviteServerState::Proceeding;
                Ok(())
            }
            NonInviteServerState::Completed | NonInviteServerState::Terminated => {
                Err(self.not_allowed(status))
            }
        }
    }

    /// The TU sends the final response (200-699).
    pub fn send_final(
        &mut self,
        now: Instant,
        status: StatusCode,
        response: Wire,
    ) -> Result<(), TransactionError> {
        if !(200..=699).contains(&status) {
            return Err(TransactionError::InvalidStatus { status });
        }
        match self.state {
            NonInviteServerState::Trying | NonInviteServerState::Proceeding => {
                self.core.send(&response, false);
                if self.core.reliable {
                    // Timer J is zero: no retransmissions can arrive to be answered.
                    self.terminate();
                } else {
                    self.last_response = Some(response);
                    self.state = NonInviteServerState::Completed;
                    let timeout = self.core.config.transaction_timeout();
                    self.core.arm(Timer::J, now, timeout);
                }
                Ok(())
            }
            NonInviteServerState::Completed | NonInviteServerState::Terminated => {
                Err(self.not_allowed(status))
            }
        }
    }

    /// The transport failed to send for this transaction (RFC 3261 17.2.4).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != NonInviteServerState::Terminated {
            self.core.emit(TxEvent::TransportError);
            self.terminate();
        }
    }

    /// Runs every timer that has expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.core.timers.take_expired(now) {
            if timer == Timer::J {
                self.terminate();
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

    /// When [`NonInviteServer::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.timers.next_deadline()
    }

    fn terminate(&mut self) {
        self.state = NonInviteServerState::Terminated;
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
