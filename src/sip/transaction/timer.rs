//! The timer table: one slot per named RFC 3261 / RFC 6026 timer, quinn-style.
//!
//! A machine arms and stops named timers; [`TimerTable::next_deadline`] is what the machine's
//! `poll_timeout` reports, and [`TimerTable::take_expired`] hands `handle_timeout` the expired
//! timers one at a time, earliest first, so a late `handle_timeout` still runs them in the order
//! the RFC's timeline would have.

use std::time::{Duration, Instant};

/// The RFC 3261 base timer values (section 17.1.1.1 and table 4), configurable because a
/// network with long round trips may need a larger T1 (the RFC allows it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// Round-trip estimate; the first retransmission interval. RFC default 500 ms.
    pub t1: Duration,
    /// Cap on the retransmission interval of non-INVITE requests and INVITE responses.
    /// RFC default 4 s.
    pub t2: Duration,
    /// How long a message may stay in the network. RFC default 5 s.
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// 64*T1: Timers B, F, H, J (unreliable), L and M.
    pub fn transaction_timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D on an unreliable transport: "at least 32 seconds" (RFC 3261 17.1.1.2); with a
    /// T1 larger than the default, 64*T1 is used so that D still covers the server's Timer H.
    pub fn timer_d_unreliable(&self) -> Duration {
        Duration::from_secs(32).max(self.transaction_timeout())
    }
}

/// The named timers of RFC 3261 section 17 and RFC 6026.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// INVITE client: request retransmission (Calling).
    A,
    /// INVITE client: transaction timeout (Calling).
    B,
    /// INVITE client: wait for response retransmissions (Completed).
    D,
    /// Non-INVITE client: request retransmission (Trying, Proceeding).
    E,
    /// Non-INVITE client: transaction timeout.
    F,
    /// INVITE server: final response retransmission (Completed).
    G,
    /// INVITE server: wait for ACK (Completed).
    H,
    /// INVITE server: wait for ACK retransmissions (Confirmed).
    I,
    /// Non-INVITE server: wait for request retransmissions (Completed).
    J,
    /// Non-INVITE client: wait for response retransmissions (Completed).
    K,
    /// INVITE server (RFC 6026): wait for INVITE retransmissions after a 2xx (Accepted).
    L,
    /// INVITE client (RFC 6026): wait for 2xx retransmissions (Accepted).
    M,
}

impl Timer {
    const ALL: [Timer; 12] = [
        Timer::A,
        Timer::B,
        Timer::D,
        Timer::E,
        Timer::F,
        Timer::G,
        Timer::H,
        Timer::I,
        Timer::J,
        Timer::K,
        Timer::L,
        Timer::M,
    ];
}

/// One deadline slot per [`Timer`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimerTable {
    a: Option<Instant>,
    b: Option<Instant>,
    d: Option<Instant>,
    e: Option<Instant>,
    f: Option<Instant>,
    g: Option<Instant>,
    h: Option<Instant>,
    i: Option<Instant>,
    j: Option<Instant>,
    k: Option<Instant>,
    l: Option<Instant>,
    m: Option<Instant>,
}

impl TimerTable {
    // Named fields and a match rather than an array indexed by discriminant: no indexing to
    // justify, and the compiler checks that every timer has a slot.
    fn slot(&mut self, timer: Timer) -> &mut Option<Instant> {
        match timer {
            Timer::A => &mut self.a,
            Timer::B => &mut self.b,
            Timer::D => &mut self.d,
            Timer::E => &mut self.e,
            Timer::F => &mut self.f,
            Timer::G => &mut self.g,
            Timer::H => &mut self.h,
            Timer::I => &mut self.i,
            Timer::J => &mut self.j,
            Timer::K => &mut self.k,
            Timer::L => &mut self.l,
            Timer::M => &mut self.m,
        }
    }

    /// The deadline of `timer`, if armed.
    pub fn deadline(&self, timer: Timer) -> Option<Instant> {
        match timer {
            Timer::A => self.a,
            Timer::B => self.b,
            Timer::D => self.d,
            Timer::E => self.e,
            Timer::F => self.f,
            Timer::G => self.g,
            Timer::H => self.h,
            Timer::I => self.i,
            Timer::J => self.j,
            Timer::K => self.k,
            Timer::L => self.l,
            Timer::M => self.m,
        }
    }

    /// Arms (or re-arms) `timer` to fire at `deadline`.
    pub fn set(&mut self, timer: Timer, deadline: Instant) {
        *self.slot(timer) = Some(deadline);
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        *self.slot(timer) = None;
    }

    /// Disarms every timer.
    pub fn stop_all(&mut self) {
        *self = Self::default();
    }

    /// The earliest armed deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        Timer::ALL.iter().filter_map(|t| self.deadline(*t)).min()
    }

    /// Disarms and returns the earliest timer whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Option<Timer> {
        let (timer, _) = Timer::ALL
            .iter()
            .filter_map(|t| self.deadline(*t).map(|d| (*t, d)))
            .filter(|(_, d)| *d <= now)
            .min_by_key(|(_, d)| *d)?;
        self.stop(timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_timers_come_out_earliest_first_and_once() {
        let base = Instant::now();
        let mut table = TimerTable::default();
        table.set(Timer::H, base + Duration::from_secs(32));
        table.set(Timer::G, base + Duration::from_millis(500));
        assert_eq!(
            table.next_deadline(),
            Some(base + Duration::from_millis(500))
        );
        assert_eq!(table.take_expired(base), None);
        let late = base + Duration::from_secs(40);
        assert_eq!(table.take_expired(late), Some(Timer::G));
        assert_eq!(table.take_expired(late), Some(Timer::H));
        assert_eq!(table.take_expired(late), None);
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn default_values_are_the_rfc_ones() {
        let config = TimerConfig::default();
        assert_eq!(config.transaction_timeout(), Duration::from_secs(32));
        assert_eq!(config.timer_d_unreliable(), Duration::from_secs(32));
    }
}
