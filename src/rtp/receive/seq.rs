//! Sequence-number bookkeeping: RFC 3550 appendix A.1 (`update_seq`) and A.3 (report-block
//! arithmetic) transcribed as they are, plus a 128-packet window of our own that tells
//! duplicates, reordered packets and holes apart.
//!
//! A.1 decides whether a packet belongs to the stream at all (probation, big jumps, restarts)
//! and keeps the counters an RTCP receiver report is built from. It cannot tell a duplicate
//! from a reordered packet (both are "valid" to it), and the reorder buffer needs to know which
//! sequence numbers are still missing and since when; [`SeqWindow`] answers that.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Packets in sequence before a new source is valid (RFC 3550 A.1).
pub(super) const MIN_SEQUENTIAL: u32 = 2;
/// Largest forward jump accepted as in-sequence (RFC 3550 A.1).
pub(super) const MAX_DROPOUT: u16 = 3000;
/// Largest backward distance accepted as a reordered or duplicate packet (RFC 3550 A.1).
pub(super) const MAX_MISORDER: u16 = 100;
const RTP_SEQ_MOD: u32 = 1 << 16;

/// What A.1's `update_seq` said about one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SeqVerdict {
    /// The source is still on probation: not valid yet. `restarted` when this packet broke the
    /// run and probation starts over from it.
    Probation { restarted: bool },
    /// Valid (in sequence, or a reordered/duplicate packet within `MAX_MISORDER`).
    Valid,
    /// Valid, and the second of two sequential packets after a big jump: the sequence was
    /// re-initialised from this packet (the sender restarted).
    Resync,
    /// A big jump: dropped, remembered as the possible start of a restart.
    Bad,
}

/// `struct source` of RFC 3550 A.1, minus the jitter (kept beside it).
#[derive(Clone, Debug)]
pub(super) struct SeqState {
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
}

/// Report-block numbers (RFC 3550 A.3) for one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Report {
    pub(super) fraction_lost: u8,
    pub(super) cumulative_lost: i32,
    pub(super) extended_highest_seq: u32,
}

impl SeqState {
    /// A.1's set-up for a new source, before `update` is called with the same packet.
    pub(super) fn new(seq: u16) -> Self {
        let mut state = Self {
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: 0,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
        };
        state.init_seq(seq);
        state.max_seq = seq.wrapping_sub(1);
        state.probation = MIN_SEQUENTIAL;
        state
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1; // so seq == bad_seq is false
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// A.1's `update_seq`.
    pub(super) fn update(&mut self, seq: u16) -> SeqVerdict {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            // Source is not valid until MIN_SEQUENTIAL packets in sequence have been received.
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received = self.received.wrapping_add(1);
                    return SeqVerdict::Valid;
                }
                return SeqVerdict::Probation { restarted: false };
            }
            self.probation = MIN_SEQUENTIAL - 1;
            self.max_seq = seq;
            return SeqVerdict::Probation { restarted: true };
        }
        let verdict = if udelta < MAX_DROPOUT {
            // In order, with permissible gap.
            if seq < self.max_seq {
                // Sequence number wrapped: count another 64K cycle.
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
            SeqVerdict::Valid
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // The sequence number made a very large jump.
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets: assume the other side restarted without telling us.
                self.init_seq(seq);
                SeqVerdict::Resync
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return SeqVerdict::Bad;
            }
        } else {
            // Duplicate or reordered packet.
            SeqVerdict::Valid
        };
        self.received = self.received.wrapping_add(1);
        verdict
    }

    /// A.1's `base_seq` and `received`: the raw counts an RTCP report block is built from.
    pub(super) fn raw_counts(&self) -> (u32, u32) {
        (self.base_seq, self.received)
    }

    /// Extended highest sequence number received (A.3's `extended_max`).
    pub(super) fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// Packets expected minus packets received since the (re)start, A.3's `lost` (it can be
    /// negative: duplicates count as received).
    pub(super) fn cumulative_lost(&self) -> i64 {
        let expected = i64::from(self.extended_max()) - i64::from(self.base_seq) + 1;
        expected - i64::from(self.received)
    }

    /// A.3: the numbers of a report block, and the start of the next interval.
    pub(super) fn take_report(&mut self) -> Report {
        let extended_max = self.extended_max();
        let expected = extended_max.wrapping_sub(self.base_seq).wrapping_add(1);
        // A.3: the 24-bit field is clamped, not wrapped.
        let cumulative_lost = self.cumulative_lost().clamp(-0x80_0000, 0x7f_ffff) as i32;
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            // lost_interval <= expected_interval, so the quotient fits in 8 bits.
            u8::try_from((lost_interval << 8) / i64::from(expected_interval)).unwrap_or(u8::MAX)
        };
        Report {
            fraction_lost,
            cumulative_lost,
            extended_highest_seq: extended_max,
        }
    }
}

/// Answer of [`SeqWindow::insert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// First time we see this number; `reordered` when a higher one came first.
    New { reordered: bool },
    /// Seen before.
    Duplicate,
    /// Older than the window remembers (cannot happen for what A.1 accepts).
    TooOld,
}

/// Bits of history: more than `MAX_MISORDER`, so every packet A.1 accepts as reordered is
/// still inside.
const WINDOW: i64 = 128;

/// Which recent extended sequence numbers arrived, and since when each missing one is missed.
///
/// A hole is "observed" when a packet beyond it arrives; the reorder buffer waits a bounded
/// time from that moment. Holes are grouped in epochs (one per arrival that opened them), so
/// the state stays small whatever the pattern: at most one epoch per missing number, and numbers
/// more than `MAX_MISORDER` behind the highest are given up at once (A.1 would refuse them).
#[derive(Clone, Debug)]
pub(super) struct SeqWindow {
    highest: i64,
    /// Bit `i` set: `highest - i` arrived.
    seen: u128,
    /// Everything up to here arrived or was given up.
    contiguous: i64,
    /// `(first missing number, observed at)`, ascending.
    epochs: VecDeque<(i64, Instant)>,
}

impl SeqWindow {
    /// A window whose next expected number is `first` (a 16-bit number; extended numbers start
    /// one cycle up so that they never go negative in practice).
    pub(super) fn new(first: u16) -> Self {
        let highest = i64::from(first) + i64::from(RTP_SEQ_MOD) - 1;
        Self {
            highest,
            seen: 1,
            contiguous: highest,
            epochs: VecDeque::new(),
        }
    }

    /// The extended number of `seq`, taken as the one nearest to the highest seen.
    pub(super) fn extend(&self, seq: u16) -> i64 {
        let delta = seq.wrapping_sub(self.highest as u16) as i16;
        self.highest + i64::from(delta)
    }

    /// The highest extended number seen.
    pub(super) fn highest(&self) -> i64 {
        self.highest
    }

    fn is_seen(&self, ext: i64) -> bool {
        let back = self.highest - ext;
        if back < 0 {
            false
        } else if back >= WINDOW {
            true
        } else {
            self.seen >> back & 1 == 1
        }
    }

    /// Records the arrival of `ext` at `now`.
    pub(super) fn insert(&mut self, ext: i64, now: Instant) -> Arrival {
        let arrival = if ext > self.highest {
            let shift = ext - self.highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            if shift > 1 {
                self.epochs.push_back((self.highest + 1, now));
            }
            self.highest = ext;
            Arrival::New { reordered: false }
        } else {
            let back = self.highest - ext;
            if back >= WINDOW {
                return Arrival::TooOld;
            }
            if self.seen >> back & 1 == 1 {
                return Arrival::Duplicate;
            }
            self.seen |= 1 << back;
            Arrival::New { reordered: true }
        };
        self.advance();
        arrival
    }

    fn advance(&mut self) {
        let oldest_possible = self.highest - i64::from(MAX_MISORDER) - 1;
        if self.contiguous < oldest_possible {
            self.contiguous = oldest_possible;
        }
        while self.contiguous < self.highest && self.is_seen(self.contiguous + 1) {
            self.contiguous += 1;
        }
        if self.contiguous == self.highest {
            self.epochs.clear();
            return;
        }
        while self
            .epochs
            .get(1)
            .is_some_and(|next| next.0 <= self.contiguous + 1)
        {
            self.epochs.pop_front();
        }
    }

    /// When the oldest missing packet stops being worth waiting for, if one is missing.
    pub(super) fn hole_deadline(&self, wait: Duration) -> Option<Instant> {
        if self.contiguous < self.highest {
            self.epochs.front().map(|(_, observed)| *observed + wait)
        } else {
            None
        }
    }

    /// Gives up the holes opened together with the oldest one.
    pub(super) fn abandon_oldest(&mut self) {
        let end = self.epochs.get(1).map_or(self.highest, |next| next.0 - 1);
        self.contiguous = self.contiguous.max(end);
        self.epochs.pop_front();
        self.advance();
    }

    /// Epochs held (for the memory bound in tests).
    #[cfg(test)]
    pub(super) fn epochs(&self) -> usize {
        self.epochs.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn a1_probation_wrap_and_restart() {
        let mut s = SeqState::new(65534);
        assert_eq!(s.update(65534), SeqVerdict::Probation { restarted: false });
        assert_eq!(s.update(65535), SeqVerdict::Valid);
        assert_eq!(s.update(0), SeqVerdict::Valid);
        assert_eq!(s.update(1), SeqVerdict::Valid);
        assert_eq!(s.extended_max(), 65536 + 1);
        // Big jump: the first packet is bad, the next sequential one restarts.
        assert_eq!(s.update(20_000), SeqVerdict::Bad);
        assert_eq!(s.update(20_001), SeqVerdict::Resync);
        assert_eq!(s.extended_max(), 20_001);
        assert_eq!(s.cumulative_lost(), 0);
        // Reordered within MAX_MISORDER is valid; beyond it is a jump.
        assert_eq!(s.update(19_950), SeqVerdict::Valid);
        assert_eq!(s.update(19_800), SeqVerdict::Bad);
    }

    #[test]
    fn a3_fraction_and_cumulative_lost() {
        let mut s = SeqState::new(10);
        s.update(10);
        s.update(11); // valid from here: base 11
        for seq in [12, 13, 15, 16] {
            s.update(seq);
        }
        let r = s.take_report();
        // Expected 11..=16 = 6, received 5.
        assert_eq!(r.cumulative_lost, 1);
        assert_eq!(r.extended_highest_seq, 16);
        assert_eq!(r.fraction_lost, (256 / 6) as u8);
        s.update(17);
        s.update(17); // a duplicate counts as received
        let r = s.take_report();
        assert_eq!((r.fraction_lost, r.cumulative_lost), (0, 0));
    }

    #[test]
    fn window_tracks_holes_and_duplicates() {
        let t0 = Instant::now();
        let mut w = SeqWindow::new(100);
        let e = |w: &SeqWindow, s| w.extend(s);
        let x = e(&w, 100);
        assert_eq!(w.insert(x, t0), Arrival::New { reordered: false });
        assert_eq!(w.hole_deadline(Duration::from_millis(40)), None);
        let x = e(&w, 103);
        w.insert(x, t0);
        assert_eq!(
            w.hole_deadline(Duration::from_millis(40)),
            Some(t0 + Duration::from_millis(40))
        );
        let x = e(&w, 101);
        assert_eq!(w.insert(x, t0), Arrival::New { reordered: true });
        assert_eq!(w.insert(x, t0), Arrival::Duplicate);
        w.abandon_oldest();
        assert_eq!(w.hole_deadline(Duration::from_millis(40)), None);
        assert_eq!(w.epochs(), 0);
    }
}
