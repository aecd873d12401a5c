//! Every deadline of one call in one table, after quinn-proto's `TimerTable`: one slot per
//! named timer, set and stopped by the call's parts, and the earliest of them is what the call
//! asks its shell to wake it for ([`crate::call::Output::Timeout`]).
//!
//! Some slots are the call's own (the answer deadline, the maximum duration, the upstream's
//! keepalive and stall limit, the drain); others mirror the deadline a part keeps for itself
//! (the pacer's next slot, the receiver's reorder wait and inactivity limit, RTCP's next
//! report, the DTMF end timeout, the realtime session's setup and create deadlines): the call
//! copies them into the table after every input, so one comparison finds the next wake-up and
//! a test can name which timer fired.

use std::time::Instant;

/// A named deadline of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// `limits.answer_timeout`: no ready session by then is a 503.
    Answer,
    /// `limits.max_call_duration`: the call is hung up.
    MaxDuration,
    /// The draining daemon's deadline: the call is hung up.
    Drain,
    /// The next WebSocket ping.
    Keepalive,
    /// A ping unanswered this long (`limits.upstream_stall_timeout`): the upstream is not
    /// reading what we send, and the call ends.
    UpstreamStall,
    /// The caller's RTP has paused long enough to feed the model silence.
    Fill,
    /// The longest wait for queued audio before a deferred transfer or hang-up goes ahead.
    AfterPlayout,
    /// The realtime session's setup or `response.create` deadline.
    Session,
    /// The pacer's next 20 ms slot.
    Pacer,
    /// The receiver's reorder wait or RTP inactivity limit.
    Receiver,
    /// The next RTCP report.
    Rtcp,
    /// The end of an RFC 4733 event whose end packets were lost.
    Dtmf,
}

impl Timer {
    /// Every timer, in the order expired ones are run.
    pub const ALL: [Timer; 12] = [
        Timer::Answer,
        Timer::MaxDuration,
        Timer::Drain,
        Timer::UpstreamStall,
        Timer::Keepalive,
        Timer::Session,
        Timer::Receiver,
        Timer::Dtmf,
        Timer::Fill,
        Timer::Pacer,
        Timer::Rtcp,
        Timer::AfterPlayout,
    ];

    fn index(self) -> usize {
        match self {
            Timer::Answer => 0,
            Timer::MaxDuration => 1,
            Timer::Drain => 2,
            Timer::UpstreamStall => 3,
            Timer::Keepalive => 4,
            Timer::Session => 5,
            Timer::Receiver => 6,
            Timer::Dtmf => 7,
            Timer::Fill => 8,
            Timer::Pacer => 9,
            Timer::Rtcp => 10,
            Timer::AfterPlayout => 11,
        }
    }
}

/// One optional deadline per [`Timer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimerTable {
    slots: [Option<Instant>; 12],
}

impl TimerTable {
    /// Arms (or moves) `timer` to `at`; `None` stops it.
    pub fn set(&mut self, timer: Timer, at: Option<Instant>) {
        if let Some(slot) = self.slots.get_mut(timer.index()) {
            *slot = at;
        }
    }

    /// Stops `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.set(timer, None);
    }

    /// When `timer` fires, if armed.
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.slots.get(timer.index()).copied().flatten()
    }

    /// Whether `timer` is armed and due at `now`.
    pub fn is_due(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    /// The earliest armed timer (the first in [`Timer::ALL`] order among equals).
    pub fn next(&self) -> Option<(Timer, Instant)> {
        Timer::ALL
            .into_iter()
            .filter_map(|timer| self.get(timer).map(|at| (timer, at)))
            .min_by_key(|(_, at)| *at)
    }

    /// Stops every timer.
    pub fn clear(&mut self) {
        self.slots = [None; 12];
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_earliest_armed_timer_is_next_and_stopped_ones_are_not() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.next(), None);
        table.set(Timer::MaxDuration, Some(t0 + Duration::from_secs(7200)));
        table.set(Timer::Pacer, Some(t0 + Duration::from_millis(20)));
        table.set(Timer::Keepalive, Some(t0 + Duration::from_secs(15)));
        assert_eq!(
            table.next(),
            Some((Timer::Pacer, t0 + Duration::from_millis(20)))
        );
        assert!(table.is_due(Timer::Pacer, t0 + Duration::from_millis(20)));
        assert!(!table.is_due(Timer::Keepalive, t0 + Duration::from_secs(14)));
        table.stop(Timer::Pacer);
        assert_eq!(table.next().unwrap().0, Timer::Keepalive);
        table.clear();
        assert_eq!(table.next(), None);
    }

    #[test]
    fn equal_deadlines_come_in_run_order() {
        let t0 = Instant::now();
        let mut table = TimerTable::default();
        table.set(Timer::Pacer, Some(t0));
        table.set(Timer::Answer, Some(t0));
        assert_eq!(table.next(), Some((Timer::Answer, t0)));
        // Every timer has its own slot.
        for timer in Timer::ALL {
            table.set(timer, Some(t0));
            assert_eq!(table.get(timer), Some(t0));
        }
    }
}
