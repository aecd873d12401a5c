//! The media timeline: RTP timestamps mapped onto a run of 20 ms output slots.
//!
//! Positions are counted in *units*: one sample for G.711 (so one payload octet), one whole
//! 20 ms packet for Opus (whose packets cannot be cut). Slot `k` of the output covers units
//! `[k * frame_units, (k + 1) * frame_units)`. Packets are written into the slots they cover
//! whatever their packetisation (10-60 ms), so re-framing, loss and timestamp gaps are all the
//! same thing: units that are covered or not when their slot is released.
//!
//! The timeline does not decide *when* an incomplete slot is given up (that needs the sequence
//! window, see the receiver); it only releases, on request, in order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{FrameKind, ReceivedFrame};

/// How payload maps onto units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// One octet per sample (G.711); concealment is `silence` repeated.
    Sampled { silence: u8 },
    /// One packet per 20 ms frame (Opus); concealment is an empty payload (the decoder's PLC).
    Packet,
}

/// Where an accepted packet went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placed {
    /// Written; `late` when part of it fell into slots already released, `trimmed` when the
    /// gap before it was longer than the fill credit and was shortened.
    Written { late: bool, trimmed: bool },
    /// Entirely in released slots: dropped.
    Late,
    /// A reordered packet whose timestamp lies beyond the buffer: dropped.
    OutOfWindow,
    /// An in-order packet whose timestamp went backwards or leapt further than the fill cap:
    /// the caller flushes and places it again on a fresh anchor.
    Rebase,
}

/// Units per slot bitmap: enough for 160 samples.
const COVER_WORDS: usize = 3;

#[derive(Clone, Debug)]
struct Slot {
    payload: Vec<u8>,
    covered: [u64; COVER_WORDS],
    count: i64,
}

/// Output queued for the caller: single frames, or runs of whole-frame concealment kept as a
/// count so a long timestamp gap costs one entry, not hundreds of buffers.
#[derive(Clone, Debug)]
pub(super) enum Ready {
    Frame(ReceivedFrame),
    Concealed { index: u64, count: u64 },
}

/// Frames on their way out, with the counters of what was released.
#[derive(Clone, Debug)]
pub(super) struct Output {
    pub(super) ready: VecDeque<Ready>,
    pub(super) max_ready: usize,
    pub(super) frames_received: u64,
    pub(super) frames_concealed: u64,
    pub(super) frames_overflowed: u64,
    silence: Option<u8>,
}

impl Output {
    pub(super) fn new(framing: Framing, max_ready: usize) -> Self {
        Self {
            ready: VecDeque::new(),
            max_ready,
            frames_received: 0,
            frames_concealed: 0,
            frames_overflowed: 0,
            silence: match framing {
                Framing::Sampled { silence } => Some(silence),
                Framing::Packet => None,
            },
        }
    }

    fn push(&mut self, ready: Ready) {
        self.ready.push_back(ready);
        // Bounded even if the caller does not drain after every call (it should): the oldest
        // output is dropped and counted.
        while self.ready.len() > self.max_ready {
            match self.ready.pop_front() {
                Some(Ready::Frame(_)) => self.frames_overflowed += 1,
                Some(Ready::Concealed { count, .. }) => self.frames_overflowed += count,
                None => break,
            }
        }
    }

    fn push_frame(&mut self, index: u64, kind: FrameKind, payload: Vec<u8>) {
        match kind {
            FrameKind::Received => self.frames_received += 1,
            FrameKind::Concealed => self.frames_concealed += 1,
        }
        self.push(Ready::Frame(ReceivedFrame {
            index,
            kind,
            payload,
        }));
    }

    fn push_concealed(&mut self, index: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.frames_concealed += count;
        if let Some(Ready::Concealed {
            index: first,
            count: run,
        }) = self.ready.back_mut()
            && *first + *run == index
        {
            *run += count;
            return;
        }
        self.push(Ready::Concealed { index, count });
    }

    /// The next frame, expanding concealment runs.
    pub(super) fn pop(&mut self, frame_octets: usize) -> Option<ReceivedFrame> {
        match self.ready.front_mut()? {
            Ready::Frame(_) => match self.ready.pop_front() {
                Some(Ready::Frame(frame)) => Some(frame),
                _ => None,
            },
            Ready::Concealed { index, count } => {
                let frame = ReceivedFrame {
                    index: *index,
                    kind: FrameKind::Concealed,
                    payload: self
                        .silence
                        .map_or_else(Vec::new, |s| vec![s; frame_octets]),
                };
                *index += 1;
                *count -= 1;
                if *count == 0 {
                    self.ready.pop_front();
                }
                Some(frame)
            }
        }
    }

    /// Frames queued (runs expanded).
    pub(super) fn frames_queued(&self) -> u64 {
        self.ready
            .iter()
            .map(|r| match r {
                Ready::Frame(_) => 1,
                Ready::Concealed { count, .. } => *count,
            })
            .sum()
    }
}

/// See the module docs.
#[derive(Clone, Debug)]
pub(super) struct Timeline {
    framing: Framing,
    /// Units per 20 ms slot.
    frame_units: i64,
    /// RTP timestamp ticks per unit.
    unit_ticks: i64,
    max_slots: usize,
    max_gap_units: i64,
    slots: VecDeque<Slot>,
    /// Output index of `slots[0]`: the next frame to release.
    head: i64,
    /// An RTP timestamp and the unit position it maps to.
    anchor: Option<(u32, i64)>,
    /// End of the furthest unit written.
    covered_until: i64,
    /// Units per second of wall-clock time.
    units_per_second: i64,
    /// How much skipped time may still be filled: grows with wall-clock time up to the fill
    /// cap, spent by every forward gap. Without it, a sender (or a spoofer that knows the
    /// SSRC) could make each packet claim seconds of silence and turn a trickle of packets
    /// into a torrent of frames; with it, filled time never runs more than the cap ahead of
    /// the wall clock.
    credit: Duration,
    credit_cap: Duration,
    credit_at: Instant,
}

impl Timeline {
    pub(super) fn new(
        now: Instant,
        framing: Framing,
        frame_units: i64,
        unit_ticks: i64,
        units_per_second: i64,
        max_slots: usize,
        max_gap: Duration,
    ) -> Self {
        let units_per_second = units_per_second.max(1);
        let max_gap_units = i64::try_from(
            max_gap.as_nanos() * u128::from(units_per_second.unsigned_abs()) / 1_000_000_000,
        )
        .unwrap_or(i64::MAX);
        Self {
            units_per_second,
            credit: max_gap,
            credit_cap: max_gap,
            credit_at: now,
            framing,
            frame_units: frame_units.max(1),
            unit_ticks: unit_ticks.max(1),
            max_slots: max_slots.max(1),
            max_gap_units,
            slots: VecDeque::new(),
            head: 0,
            anchor: None,
            covered_until: 0,
        }
    }

    fn released_until(&self) -> i64 {
        self.head * self.frame_units
    }

    /// Units a payload covers.
    pub(super) fn units_of(&self, payload: &[u8]) -> i64 {
        match self.framing {
            Framing::Sampled { .. } => i64::try_from(payload.len()).unwrap_or(i64::MAX),
            Framing::Packet => 1,
        }
    }

    /// Octets of a concealed frame (0 for packet framing).
    pub(super) fn frame_octets(&self) -> usize {
        match self.framing {
            Framing::Sampled { .. } => usize::try_from(self.frame_units).unwrap_or(0),
            Framing::Packet => 0,
        }
    }

    /// Slots held, complete or not.
    pub(super) fn buffered(&self) -> usize {
        self.slots.len()
    }

    fn position(&self, anchor: (u32, i64), timestamp: u32) -> i64 {
        let ticks = i64::from(timestamp.wrapping_sub(anchor.0) as i32);
        // Round to the nearest unit (matters only for packet framing).
        anchor.1 + (ticks + self.unit_ticks / 2).div_euclid(self.unit_ticks)
    }

    /// Writes a packet's payload where its timestamp says. `in_order` when its sequence number
    /// is the highest so far: only those move the anchor or may ask for a rebase.
    pub(super) fn place(
        &mut self,
        now: Instant,
        timestamp: u32,
        payload: &[u8],
        in_order: bool,
        out: &mut Output,
    ) -> Placed {
        let released = self.released_until();
        let mut pos = match self.anchor {
            None => {
                self.anchor = Some((timestamp, released));
                released
            }
            Some(anchor) => self.position(anchor, timestamp),
        };
        let mut trimmed = false;
        if in_order {
            let frontier = self.covered_until.max(released);
            if pos < released || pos - frontier > self.max_gap_units {
                return Placed::Rebase;
            }
            let gap = self.duration_of(pos - frontier);
            self.accrue(now);
            if gap > self.credit {
                pos = frontier + self.units_in(self.credit);
                self.credit = Duration::ZERO;
                trimmed = true;
            } else {
                self.credit -= gap;
            }
            self.anchor = Some((timestamp, pos));
        }
        let len = self.units_of(payload);
        let end = pos.saturating_add(len);
        if end <= released {
            return Placed::Late;
        }
        let late = pos < released;
        let last_frame = (end - 1).div_euclid(self.frame_units);
        let max_slots = i64::try_from(self.max_slots).unwrap_or(i64::MAX);
        if !in_order && last_frame - self.head >= max_slots {
            // A reordered packet belongs before the newest one; one whose timestamp lands
            // beyond the buffer is nonsense and must not push frames out.
            return Placed::OutOfWindow;
        }
        if last_frame - self.head >= max_slots {
            self.release_until(last_frame - max_slots + 1, out);
        }
        let mut at = pos.max(self.released_until());
        while at < end {
            let frame = at.div_euclid(self.frame_units);
            let offset = at - frame * self.frame_units;
            let n = (self.frame_units - offset).min(end - at);
            let from = at - pos;
            let framing = self.framing;
            let frame_units = self.frame_units;
            let Some(slot) = self.slot_mut(frame) else {
                break;
            };
            match framing {
                Framing::Sampled { .. } => {
                    let (Ok(dst_start), Ok(src_start), Ok(count)) = (
                        usize::try_from(offset),
                        usize::try_from(from),
                        usize::try_from(n),
                    ) else {
                        break;
                    };
                    let dst = slot.payload.get_mut(dst_start..dst_start + count);
                    let src = payload.get(src_start..src_start + count);
                    if let (Some(dst), Some(src)) = (dst, src) {
                        dst.copy_from_slice(src);
                    }
                    for unit in offset..offset + n {
                        slot.cover(unit);
                    }
                }
                Framing::Packet => {
                    slot.payload = payload.to_vec();
                    slot.cover(0);
                }
            }
            debug_assert!(slot.count <= frame_units);
            at += n;
        }
        self.covered_until = self.covered_until.max(end);
        Placed::Written { late, trimmed }
    }

    fn accrue(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.credit_at);
        self.credit = (self.credit + elapsed).min(self.credit_cap);
        self.credit_at = self.credit_at.max(now);
    }

    fn duration_of(&self, units: i64) -> Duration {
        let nanos = i128::from(units.max(0)) * 1_000_000_000 / i128::from(self.units_per_second);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn units_in(&self, duration: Duration) -> i64 {
        let units =
            duration.as_nanos() * u128::from(self.units_per_second.unsigned_abs()) / 1_000_000_000;
        i64::try_from(units).unwrap_or(i64::MAX)
    }

    fn empty_slot(&self) -> Slot {
        Slot {
            payload: match self.framing {
                Framing::Sampled { silence } => {
                    vec![silence; usize::try_from(self.frame_units).unwrap_or(0)]
                }
                Framing::Packet => Vec::new(),
            },
            covered: [0; COVER_WORDS],
            count: 0,
        }
    }

    /// The slot of output frame `frame`, created (with those before it) if needed; `None` for
    /// released frames or beyond the bound (the caller made room first).
    fn slot_mut(&mut self, frame: i64) -> Option<&mut Slot> {
        let at = usize::try_from(frame - self.head).ok()?;
        if at >= self.max_slots {
            return None;
        }
        while self.slots.len() <= at {
            let slot = self.empty_slot();
            self.slots.push_back(slot);
        }
        self.slots.get_mut(at)
    }

    /// Whether the next frame to release has all its units.
    pub(super) fn head_complete(&self) -> bool {
        self.slots
            .front()
            .is_some_and(|slot| slot.count >= self.frame_units)
    }

    /// Whether something was written at or beyond the end of the next frame, i.e. the head is
    /// incomplete because units are missing, not because they are still to come.
    pub(super) fn head_has_data_after(&self) -> bool {
        !self.slots.is_empty() && self.covered_until >= (self.head + 1) * self.frame_units
    }

    /// Releases the next frame: received when complete, else concealed.
    pub(super) fn release_head(&mut self, out: &mut Output) {
        let index = u64::try_from(self.head).unwrap_or(0);
        self.head += 1;
        match self.slots.pop_front() {
            Some(slot) if slot.count >= self.frame_units => {
                out.push_frame(index, FrameKind::Received, slot.payload);
            }
            Some(slot) if slot.count > 0 => {
                out.push_frame(index, FrameKind::Concealed, slot.payload);
            }
            _ => out.push_concealed(index, 1),
        }
    }

    /// Releases every frame before `new_head`, concealing what is missing.
    fn release_until(&mut self, new_head: i64, out: &mut Output) {
        while self.head < new_head && !self.slots.is_empty() {
            self.release_head(out);
        }
        if self.head < new_head {
            let first = u64::try_from(self.head).unwrap_or(0);
            out.push_concealed(first, u64::try_from(new_head - self.head).unwrap_or(0));
            self.head = new_head;
        }
    }

    /// Releases everything held (the stream ended, restarted or was replaced) and forgets the
    /// timestamp mapping: the next packet starts at the next frame boundary.
    pub(super) fn flush(&mut self, out: &mut Output) {
        while !self.slots.is_empty() {
            self.release_head(out);
        }
        self.anchor = None;
        self.covered_until = self.released_until();
    }
}

impl Slot {
    fn cover(&mut self, unit: i64) {
        let Ok(unit) = usize::try_from(unit) else {
            return;
        };
        if let Some(word) = self.covered.get_mut(unit / 64) {
            let bit = 1u64 << (unit % 64);
            if *word & bit == 0 {
                *word |= bit;
                self.count += 1;
            }
        }
    }
}
