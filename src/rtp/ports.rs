//! Which RTP ports a new call may take: the configured range, even ports for RTP (RTCP on the
//! odd port above), round-robin, and a quarantine after each call.
//!
//! The quarantine (30 s by default) is there because a phone keeps sending for a moment after
//! BYE, and a late or misrouted stream must not land in the next call that happens to get the
//! port. Round-robin spreads calls over the whole range for the same reason. The pool only
//! keeps the books; the shell binds the sockets and reports ports it could not bind (taken by
//! another process), which are skipped like quarantined ones for a while.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Default quarantine after a call releases its port.
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(30);

/// The RTP port pool of the daemon.
#[derive(Debug)]
pub struct PortPool {
    first: u16,
    pairs: u32,
    next: u32,
    quarantine: Duration,
    in_use: HashSet<u16>,
    /// Released (or unbindable) ports and when they become free again, oldest first.
    resting: VecDeque<(Instant, u16)>,
    resting_set: HashSet<u16>,
}

impl PortPool {
    /// A pool over `first..=last`; `first` is even (the configuration checks it), and only
    /// whole pairs are used.
    pub fn new(first: u16, last: u16, quarantine: Duration) -> Self {
        let pairs = u32::from(last).saturating_sub(u32::from(first)).div_ceil(2);
        Self {
            first,
            pairs,
            next: 0,
            quarantine,
            in_use: HashSet::new(),
            resting: VecDeque::new(),
            resting_set: HashSet::new(),
        }
    }

    /// Ports in use.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// The next free RTP port (even), round-robin, skipping ports in use or resting; `None`
    /// when the range is exhausted (the call is refused with 503). The port counts as in use
    /// until [`PortPool::release`] or [`PortPool::unbindable`].
    pub fn allocate(&mut self, now: Instant) -> Option<u16> {
        self.wake(now);
        for _ in 0..self.pairs {
            let index = self.next;
            self.next = (self.next + 1) % self.pairs.max(1);
            let port = u16::try_from(u32::from(self.first) + index * 2).ok()?;
            if !self.in_use.contains(&port) && !self.resting_set.contains(&port) {
                self.in_use.insert(port);
                return Some(port);
            }
        }
        None
    }

    /// The call using `port` has ended: the port rests for the quarantine.
    pub fn release(&mut self, now: Instant, port: u16) {
        if self.in_use.remove(&port) {
            self.rest(now, port);
        }
    }

    /// `port` (just allocated) could not be bound: someone else has it. It rests too, so the
    /// next allocation tries another.
    pub fn unbindable(&mut self, now: Instant, port: u16) {
        self.release(now, port);
    }

    fn rest(&mut self, now: Instant, port: u16) {
        let until = now.checked_add(self.quarantine).unwrap_or(now);
        self.resting.push_back((until, port));
        self.resting_set.insert(port);
    }

    fn wake(&mut self, now: Instant) {
        while let Some(&(until, port)) = self.resting.front() {
            if until > now {
                break;
            }
            self.resting.pop_front();
            self.resting_set.remove(&port);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn even_ports_round_robin_over_the_whole_range() {
        let now = Instant::now();
        let mut pool = PortPool::new(20000, 20009, DEFAULT_QUARANTINE);
        let ports: Vec<u16> = (0..5).map(|_| pool.allocate(now).unwrap()).collect();
        assert_eq!(ports, [20000, 20002, 20004, 20006, 20008]);
        assert_eq!(pool.allocate(now), None, "range exhausted");
        assert_eq!(pool.in_use(), 5);
    }

    #[test]
    fn a_released_port_rests_for_the_quarantine() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(20000, 20003, DEFAULT_QUARANTINE);
        assert_eq!(pool.allocate(t0), Some(20000));
        assert_eq!(pool.allocate(t0), Some(20002));
        pool.release(t0, 20000);
        // Not before 30 s, even though it is the only free one.
        assert_eq!(pool.allocate(t0 + Duration::from_millis(29_999)), None);
        assert_eq!(pool.allocate(t0 + DEFAULT_QUARANTINE), Some(20000));
        // Releasing twice, or a port never allocated, changes nothing.
        pool.release(t0, 20000);
        pool.release(t0, 20000);
        pool.release(t0, 31000);
        assert_eq!(pool.in_use(), 1);
    }

    #[test]
    fn round_robin_prefers_ports_not_used_recently() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(20000, 20005, Duration::ZERO);
        assert_eq!(pool.allocate(t0), Some(20000));
        pool.release(t0, 20000);
        // Free again at once (no quarantine), but the next call still gets the next port.
        assert_eq!(pool.allocate(t0), Some(20002));
        assert_eq!(pool.allocate(t0), Some(20004));
        assert_eq!(pool.allocate(t0), Some(20000));
    }

    #[test]
    fn unbindable_ports_are_skipped() {
        let t0 = Instant::now();
        let mut pool = PortPool::new(20000, 20003, DEFAULT_QUARANTINE);
        let port = pool.allocate(t0).unwrap();
        pool.unbindable(t0, port);
        assert_eq!(pool.allocate(t0), Some(20002));
        assert_eq!(pool.allocate(t0), None);
    }

    #[test]
    fn a_range_at_the_top_of_the_port_space_does_not_overflow() {
        let now = Instant::now();
        let mut pool = PortPool::new(65532, 65535, DEFAULT_QUARANTINE);
        assert_eq!(pool.allocate(now), Some(65532));
        assert_eq!(pool.allocate(now), Some(65534));
        assert_eq!(pool.allocate(now), None);
    }
}
