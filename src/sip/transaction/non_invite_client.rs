//! The non-INVITE client transaction: RFC 3261 17.1.2.

use std::time::{Duration, Instant};

use super::{Core, StatusCode, Timer, TimerConfig, Transmit, TxEvent, Wire, valid_status};

/// States of a [`NonInviteClient`] (RFC 3261 figure 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonInviteClientState {
    /// The request was sent; retransmitted on Timer E, doubling up to T2.
    Trying,
    /// A provisional arrived; retransmitted every T2.
    Proceeding,
    /// The final response arrived; its retransmissions are absorbed until Timer K.
    Completed,
    /// Over.
    Terminated,
}

/// The client side of one non-INVITE request.
#[derive(Debug)]
pub struct NonInviteClient<M> {
    core: Core<M>,
    state: NonInviteClientState,
    request: Wire,
    /// The current Timer E interval.
    retransmit_interval: Duration,
}

impl<M> NonInviteClient<M> {
    /// Starts the transaction: `request` is queued for sending at once, Timer F (64*T1) and,
    /// on an unreliable transport, Timer E (T1) are armed.
    pub fn new(now: Instant, config: TimerConfig, reliable: bool, request: Wire) -> Self {
        let mut core = Core::new(config, reliable);
        core.send(&request, false);
        if !reliable {
            core.arm(Timer::E, now, config.t1);
        }
        core.arm(Timer::F, now, config.transaction_timeout());
        Self {
            core,
            state: NonInviteClientState::Trying,
            request,
            retransmit_interval: config.t1,
        }
    }

    /// The current state.
    pub fn state(&self) -> NonInviteClientState {
        self.state
    }

    /// A response matching this transaction arrived. Responses with a status outside 100-699
    /// are dropped.
    pub fn handle_response(&mut self, now: Instant, status: StatusCode, message: M) {
        if !valid_status(status) {
            return;
        }
        match self.state {
            NonInviteClientState::Trying | NonInviteClientState::Proceeding => {
                self.core.emit(TxEvent::Response { status, message });
                if status < 200 {
                    // Timer E keeps its deadline; from its next firing on it uses T2.
                    self.state = NonInviteClientState::Proceeding;
                    return;
                }
                self.core.timers.stop(Timer::E);
                self.core.timers.stop(Timer::F);
                if self.core.reliable {
                    self.terminate();
                } else {
                    self.state = NonInviteClientState::Completed;
                    let t4 = self.core.config.t4;
                    self.core.arm(Timer::K, now, t4);
                }
            }
            NonInviteClientState::Completed | NonInviteClientState::Terminated => {}
        }
    }

    /// The transport failed to send the request (RFC 3261 17.1.4).
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.state != NonInviteClientState::Terminated {
            self.core.emit(TxEvent::TransportError);
            self.terminate();
        }
    }

    /// Runs every timer that has expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.core.timers.take_expired(now) {
            match timer {
                Timer::E => {
                    self.core.send(&self.request, true);
                    let t2 = self.core.config.t2;
                    self.retransmit_interval = match self.state {
                        NonInviteClientState::Proceeding => t2,
                        _ => self.retransmit_interval.saturating_mul(2).min(t2),
                    };
                    self.core.arm(Timer::E, now, self.retransmit_interval);
                }
                Timer::F => {
                    self.core.emit(TxEvent::Timeout);
                    self.terminate();
                }
                Timer::K => self.terminate(),
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

    /// When [`NonInviteClient::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.timers.next_deadline()
    }

    fn terminate(&mut self) {
        self.state = NonInviteClientState::Terminated;
        self.core.terminate();
    }
}
