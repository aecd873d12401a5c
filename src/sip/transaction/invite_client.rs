//! The INVITE client transaction: RFC 3261 17.1.1 with RFC 6026's Accepted state.

use std::time::{Duration, Instant};

use super::{Core, StatusCode, Timer, TimerConfig, Transmit, TxEvent, Wire, valid_status};

/// States of an [`InviteClient`] (RFC 3261 figure 5 as amended by RFC 6026 figure 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteClientState {
    /// The INVITE was sent; retransmitted on Timer A (doubling, no cap) until Timer B.
    Calling,
    /// A provisional arrived; no more retransmissions, no timeout (the TU may CANCEL).
    Proceeding,
    /// A 3xx-6xx arrived and was ACKed; its retransmissions are ACKed again until Timer D.
    Completed,
    /// RFC 6026: a 2xx arrived; further 2xx go to the TU until Timer M.
    Accepted,
    /// Over.
    Terminated,
}

/// The client side of one INVITE.
///
/// The ACK for a 3xx-6xx belongs to the transaction (RFC 3261 17.1.1.3) but needs the To tag
/// of the response, so the caller supplies a closure that builds it from the response; it is
/// called once, and the bytes are resent for every retransmission of the final response. The
/// ACK for a 2xx is the TU's (a new transaction-less request built by the dialog).
#[derive(Debug)]
pub struct InviteClient<M> {
    core: Core<M>,
    state: InviteClientState,
    request: Wire,
    /// The ACK sent for our 3xx-6xx, resent for each retransmission of it.
    ack: Option<Wire>,
    /// The current Timer A interval.
    retransmit_interval: Duration,
}

impl<M> InviteClient<M> {
    /// Starts the transaction: `request` is queued for sending at once, Timer B (64*T1) and,
    /// on an unreliable transport, Timer A (T1) are armed.
    pub fn new(now: Instant, config: TimerConfig, reliable: bool, request: Wire) -> Self {
        let mut core = Core::new(config, reliable);
        core.send(&request, false);
        if !reliable {
            core.arm(Timer::A, now, config.t1);
        }
        core.arm(Timer::B, now, config.transaction_timeout());
        Self {
            core,
            state: InviteClientState::Calling,
            request,
            ack: None,
            retransmit_interval: config.t1,
        }
    }

    /// The current state.
    pub fn state(&self) -> InviteClientState {
        self.state
    }

    /// A response matching this transaction arrived. `build_ack` is called only for the first
    /// 3xx-6xx, to encode the ACK that acknowledges it. Responses with a status outside
    /// 100-699 are dropped.
    pub fn handle_response<F>(&mut self, now: Instant, status: StatusCode, message: M, build_ack: F)
    where
        F: FnOnce(&M) -> Wire,
    {
        if !valid_status(status) {
            return;
        }
        match self.state {
            InviteClientState::Calling | InviteClientState::Proceeding => {
                // Whatever arrived, the INVITE got through: no retransmission, no Timer B
                // (RFC 3261 17.1.1.2 only times out the Calling state).
                self.core.timers.stop(Timer::A);
                self.core.timers.stop(Timer::B);
                if status < 200 {
                    self.state = InviteClientState::Proceeding;
                    self.core.emit(TxEvent::Response { status, message });
                } else if status < 300 {
                    self.state = InviteClientState::Accepted;
                    let timeout = self.core.config.transaction_timeout();
                    self.core.arm(Timer::M, now, timeout);
                    self.core.emit(TxEvent::Response { status, message });
                } else {
                    let ack = build_ack(&message);
                    self.core.send(&ack, false);
                    self.ack = Some(ack);
                    self.core.emit(TxEvent::Response { status, message });
                    if self.core.reliable {
                        self.terminate();
                    } else {
                        self.state = InviteClientState::Completed;
                        let wait = self.core.config.timer_d_unreliable();
                        self.core.arm(Timer::D, now, wait);
                    }
                }
            }
            InviteClientState::Completed => {
                // A retransmitted final: our ACK was lost. ACK again, do not tell the TU.
                if status >= 300
                    && let Some(ack) = &self.ack
                {
                    self.core.send(ack, true);
                }
            }
            InviteClientState::Accepted => {
                // RFC 6026 7.2: every 2xx goes to the TU, which ACKs it.
                if (200..300).contains(&status) {
                    self.core.emit(TxEvent::Response { status, message });
                }
            }
            InviteClientState::Terminated => {}
        }
    }

    /// The transport failed to send for this transaction (RFC 3261 17.1.4): the TU is told and
    /// the transaction ends. In Accepted the machine sends nothing (the ACK for a 2xx is the
    /// TU's), so an error cannot be its own; it is ignored, and the machine keeps matching 2xx
    /// retransmissions until Timer M.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        match self.state {
            InviteClientState::Terminated | InviteClientState::Accepted => {}
            InviteClientState::Calling
            | InviteClientState::Proceeding
            | InviteClientState::Completed => {
                self.core.emit(TxEvent::TransportError);
                self.terminate();
            }
        }
    }

    /// Runs every timer that has expired by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.core.timers.take_expired(now) {
            match timer {
                Timer::A => {
                    self.core.send(&self.request, true);
                    // Unlike Timer E and G, Timer A is not capped at T2 (RFC 3261 17.1.1.2).
                    self.retransmit_interval = self.retransmit_interval.saturating_mul(2);
                    self.core.arm(Timer::A, now, self.retransmit_interval);
                }
                Timer::B => {
                    self.core.emit(TxEvent::Timeout);
                    self.terminate();
                }
                Timer::D | Timer::M => self.terminate(),
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

    /// When [`InviteClient::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.timers.next_deadline()
    }

    fn terminate(&mut self) {
        self.state = InviteClientState::Terminated;
        self.ack = None;
        self.core.terminate();
    }
}
