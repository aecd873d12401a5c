//! Receive-path scenarios with simulated time and exact counters, then replays of real
//! captures from Debian's `sip-tester`.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod pcap;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const SSRC: u32 = 0x1234_5678;
const PT_PCMA: u8 = 8;
const PT_EVENT: u8 = 101;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn pcma() -> ReceiveParams {
    ReceiveParams {
        codec: Codec::Pcma,
        payload_type: PT_PCMA,
        telephone_event_pt: Some(PT_EVENT),
    }
}

fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    packet::write(
        &RtpHeader {
            marker: false,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc,
        },
        payload,
        &mut out,
    );
    out
}

/// The octet that marks packet `seq`'s audio (never PCMA silence).
fn mark(seq: u16) -> u8 {
    (seq % 200) as u8
}

/// A receiver, a clock and everything it put out so far.
struct Bench {
    rx: Receiver,
    t0: Instant,
    now: Instant,
    peer: SocketAddr,
    frames: Vec<ReceivedFrame>,
    events: Vec<ReceiveEvent>,
}

impl Bench {
    fn new(config: ReceiveConfig, params: ReceiveParams) -> Self {
        let t0 = Instant::now();
        Self {
            rx: Receiver::new(t0, config, params),
            t0,
            now: t0,
            peer: addr("192.0.2.10:4000"),
            frames: Vec::new(),
            events: Vec::new(),
        }
    }

    fn pcma() -> Self {
        Self::new(ReceiveConfig::default(), pcma())
    }

    fn drain(&mut self) {
        while let Some(frame) = self.rx.poll_frame() {
            self.frames.push(frame);
        }
        while let Some(event) = self.rx.poll_event() {
            self.events.push(event);
        }
    }

    /// Runs the timers up to `t0 + at`, as a shell would.
    fn run_until(&mut self, at: Duration) {
        let until = self.t0 + at;
        while let Some(deadline) = self.rx.poll_timeout() {
            if deadline > until {
                break;
            }
            assert!(deadline >= self.now, "a timer in the past");
            self.now = deadline;
            self.rx.handle_timeout(deadline);
            self.drain();
        }
        self.now = until;
    }

    fn datagram_from(&mut self, at: Duration, from: SocketAddr, bytes: &[u8]) {
        self.run_until(at);
        self.rx.handle_datagram(self.now, from, bytes);
        self.drain();
    }

    fn datagram(&mut self, at: Duration, bytes: &[u8]) {
        let peer = self.peer;
        self.datagram_from(at, peer, bytes);
    }

    /// A 20 ms PCMA packet `seq` with timestamp `seq * 160`, arriving at `at`.
    fn audio(&mut self, at: Duration, seq: u16) {
        let ts = u32::from(seq).wrapping_mul(160);
        self.datagram(at, &rtp(PT_PCMA, seq, ts, SSRC, &[mark(seq); 160]));
    }

    fn kinds(&self) -> Vec<(u64, FrameKind)> {
        self.frames.iter().map(|f| (f.index, f.kind)).collect()
    }

    fn concealed(&self) -> Vec<u64> {
        self.frames
            .iter()
            .filter(|f| f.kind == FrameKind::Concealed)
            .map(|f| f.index)
            .collect()
    }

    /// The mark of each received frame, `None` for concealed ones.
    fn marks(&self) -> Vec<Option<u8>> {
        self.frames
            .iter()
            .map(|f| match f.kind {
                FrameKind::Received => {
                    assert!(f.payload.iter().all(|b| *b == f.payload[0]));
                    Some(f.payload[0])
                }
                FrameKind::Concealed => None,
            })
            .collect()
    }

    fn stats(&self) -> ReceiveStats {
        self.rx.stats()
    }

    fn assert_continuous(&self) {
        for (i, frame) in self.frames.iter().enumerate() {
            assert_eq!(frame.index, i as u64, "frame indices must run without gaps");
            assert_eq!(frame.payload.len(), 160);
        }
    }
}

/// Every datagram is accounted for exactly once.
fn assert_accounted(stats: &ReceiveStats, held: u64) {
    let sum = stats.packets_accepted
        + stats.bad_header
        + stats.rtcp
        + stats.wrong_payload_type
        + stats.bad_payload
        + stats.foreign_source
        + stats.retired_ssrc
        + stats.bad_sequence
        + stats.duplicates
        + stats.probation_discarded;
    assert_eq!(stats.packets_received, sum + held, "{stats:#?}");
}

fn marks_of(seqs: impl IntoIterator<Item = u16>) -> Vec<Option<u8>> {
    seqs.into_iter().map(|s| Some(mark(s))).collect()
}

#[test]
fn an_in_order_stream_comes_out_frame_for_packet_after_probation() {
    let mut b = Bench::pcma();
    b.audio(ms(0), 10);
    // On probation (RFC 3550 A.1): held, nothing out yet, nothing latched.
    assert!(b.frames.is_empty());
    assert_eq!(b.rx.source(), None);
    assert_eq!(b.rx.take_report_block_stats(), None);
    b.audio(ms(20), 11);
    // Validated: the held packet and this one come out at once.
    assert_eq!(b.marks(), marks_of([10, 11]));
    for (i, seq) in (12..20).enumerate() {
        b.audio(ms(40 + 20 * i as u64), seq);
        assert_eq!(b.frames.len(), 3 + i, "each packet is released on arrival");
    }
    b.assert_continuous();
    assert_eq!(b.marks(), marks_of(10..20));
    assert_eq!(b.events, [ReceiveEvent::SourceLearned { source: b.peer }]);
    let s = b.stats();
    assert_eq!((s.packets_received, s.packets_accepted), (10, 10));
    assert_eq!((s.frames_received, s.frames_concealed), (10, 0));
    assert_eq!(s.jitter, 0, "perfectly paced packets have no jitter");
    assert_accounted(&s, 0);
    assert_eq!(b.rx.ssrc(), Some(SSRC));
    assert_eq!(b.rx.buffered_frames(), 0);
}

#[test]
fn malformed_headers_and_foreign_payload_types_are_counted_and_dropped() {
    let mut b = Bench::pcma();
    let good = rtp(PT_PCMA, 1, 160, SSRC, &[1; 160]);
    b.datagram(ms(0), &good[..11]); // too short
    let mut v1 = good.clone();
    v1[0] = 0x40;
    b.datagram(ms(1), &v1); // version 1
    let mut csrc = good.clone();
    csrc[0] |= 0x0f;
    csrc.truncate(12 + 20); // 15 CSRCs announced, 5 there
    b.datagram(ms(2), &csrc);
    let mut pad = good.clone();
    pad[0] |= 0x20;
    *pad.last_mut().unwrap() = 0; // zero padding count
    b.datagram(ms(3), &pad);
    let mut rtcp = good.clone();
    rtcp[1] = 200; // a sender report on a muxed port
    b.datagram(ms(4), &rtcp);
    b.datagram(ms(5), &rtp(0, 1, 160, SSRC, &[1; 160])); // PCMU: not negotiated
    b.datagram(ms(6), &rtp(13, 1, 160, SSRC, &[1])); // comfort noise: not negotiated
    b.datagram(ms(7), &rtp(PT_PCMA, 1, 160, SSRC, &[])); // no audio
    b.datagram(ms(8), &rtp(PT_PCMA, 1, 160, SSRC, &[1; 961])); // over 120 ms
    b.datagram(ms(9), &[]);
    let s = b.stats();
    assert_eq!(s.packets_received, 10);
    assert_eq!(s.bad_header, 5);
    assert_eq!(s.rtcp, 1);
    assert_eq!(s.wrong_payload_type, 2);
    assert_eq!(s.bad_payload, 2);
    assert_eq!(s.packets_accepted, 0);
    assert_accounted(&s, 0);
    assert!(b.frames.is_empty() && b.events.is_empty());
    assert_eq!(b.rx.source(), None, "nothing invalid latches the source");
    // A valid stream still starts afterwards.
    b.audio(ms(20), 1);
    b.audio(ms(40), 2);
    assert_eq!(b.marks(), marks_of([1, 2]));
}

#[test]
fn sequence_numbers_wrap_from_65534_to_1() {
    let mut b = Bench::pcma();
    for (i, seq) in [65533u16, 65534, 65535, 0, 1].into_iter().enumerate() {
        b.audio(ms(20 * i as u64), seq);
    }
    b.assert_continuous();
    assert_eq!(b.marks(), marks_of([65533, 65534, 65535, 0, 1]));
    let s = b.stats();
    assert_eq!((s.frames_concealed, s.reordered, s.resyncs), (0, 0, 0));
    let report = b.rx.take_report_block_stats().unwrap();
    assert_eq!(report.extended_highest_seq, 65536 + 1, "one cycle counted");
    assert_eq!(report.cumulative_lost, 0);
    assert_eq!(report.fraction_lost, 0);
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut b = Bench::pcma();
    let order = [1u16, 2, 2, 3, 3, 3, 4, 2];
    for (i, seq) in order.into_iter().enumerate() {
        b.audio(ms(10 * i as u64), seq);
    }
    assert_eq!(b.marks(), marks_of(1..=4));
    let s = b.stats();
    assert_eq!(s.duplicates, 4);
    assert_eq!(s.packets_accepted, 4);
    assert_eq!((s.frames_concealed, s.late, s.reordered), (0, 0, 0));
    assert_accounted(&s, 0);
    // A.1 counts duplicates as received, so the cumulative loss goes negative (RFC 3550 6.4.1):
    // 3 expected since validation (2..=4), 7 received.
    let report = b.rx.take_report_block_stats().unwrap();
    assert_eq!(report.cumulative_lost, -4);
}

/// Packet 5 arrives after packets 6..6+depth, which come in a burst within the wait.
fn reorder(depth: u16) -> Bench {
    let mut b = Bench::pcma();
    let mut t = 0;
    for seq in 0..5 {
        b.audio(ms(t), seq);
        t += 20;
    }
    for seq in 6..6 + depth {
        b.audio(ms(t), seq);
        t += 5;
    }
    assert_eq!(b.frames.len(), 5, "frames after the missing one wait");
    assert_eq!(b.rx.buffered_frames(), usize::from(depth) + 1);
    b.audio(ms(t), 5);
    for seq in 6 + depth..12 {
        t += 20;
        b.audio(ms(t), seq);
    }
    b
}

#[test]
fn reordering_of_depth_1_2_and_3_within_the_wait_is_undone() {
    for depth in 1..=3 {
        let b = reorder(depth);
        b.assert_continuous();
        assert_eq!(b.marks(), marks_of(0..12), "depth {depth}");
        let s = b.stats();
        assert_eq!(s.reordered, 1, "depth {depth}");
        assert_eq!((s.frames_concealed, s.late, s.duplicates), (0, 0, 0));
        assert_eq!(s.packets_accepted, 12);
        assert_eq!(b.rx.buffered_frames(), 0);
    }
}

#[test]
fn a_packet_later_than_the_wait_is_concealed_then_counted_late() {
    // Steady 20 ms pace, packet 5 three places late: the hole is seen when 6 arrives at
    // 120 ms, so frame 5 is given up at exactly 160 ms.
    let mut b = Bench::pcma();
    for seq in 0..5 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    b.audio(ms(120), 6);
    assert_eq!(b.rx.poll_timeout(), Some(b.t0 + ms(160)));
    b.audio(ms(140), 7);
    b.run_until(ms(160) - Duration::from_nanos(1));
    assert_eq!(b.frames.len(), 5);
    b.run_until(ms(160));
    assert_eq!(b.frames.len(), 8, "5 concealed, 6 and 7 released");
    b.audio(ms(160), 8);
    b.audio(ms(161), 5); // too late
    b.audio(ms(180), 9);
    b.assert_continuous();
    assert_eq!(b.concealed(), [5]);
    let s = b.stats();
    assert_eq!((s.late, s.reordered, s.frames_concealed), (1, 1, 1));
    assert_eq!(s.frames_received, 9);
    assert_eq!(s.packets_accepted, 10);
    // The late packet still counts as received for RTCP: nothing lost in A.1's terms.
    assert_eq!(b.rx.take_report_block_stats().unwrap().cumulative_lost, 0);
}

#[test]
fn a_gap_of_five_becomes_exactly_five_concealed_frames_in_place() {
    let mut b = Bench::pcma();
    for seq in 0..5 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    b.audio(ms(200), 10);
    assert_eq!(b.rx.poll_timeout(), Some(b.t0 + ms(240)));
    b.audio(ms(220), 11);
    assert_eq!(b.frames.len(), 5);
    b.audio(ms(240), 12); // the wait ends as this arrives
    for seq in 13..16 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    b.assert_continuous();
    assert_eq!(b.concealed(), [5, 6, 7, 8, 9]);
    let mut expected = marks_of(0..5);
    expected.extend([None; 5]);
    expected.extend(marks_of(10..16));
    assert_eq!(b.marks(), expected);
    // G.711 A-law silence in the concealed frames.
    assert!(b.frames[5].payload.iter().all(|o| *o == 0xD5));
    let s = b.stats();
    assert_eq!((s.frames_received, s.frames_concealed), (11, 5));
    assert_eq!((s.reordered, s.late), (0, 0));
    let report = b.rx.take_report_block_stats().unwrap();
    assert_eq!(report.cumulative_lost, 5);
    assert_eq!(report.extended_highest_seq, 15);
    // A.3: 5 lost of 15 expected since validation (seq 1..=15).
    assert_eq!(report.fraction_lost, (5 * 256 / 15) as u8);
    let again = b.rx.take_report_block_stats().unwrap();
    assert_eq!((again.fraction_lost, again.cumulative_lost), (0, 5));
    // The raw counts RTCP takes say the same: 15 expected since validation, 10 received.
    let raw = b.rx.reception_stats().unwrap();
    assert_eq!((raw.base_seq, raw.extended_highest_seq), (1, 15));
    assert_eq!(
        (raw.expected(), raw.received_packets, raw.cumulative_lost()),
        (15, 10, 5)
    );
}

#[test]
fn a_sequence_jump_over_3000_resyncs_on_the_second_sequential_packet() {
    let mut b = Bench::pcma();
    for seq in 100..105 {
        b.audio(ms(20 * u64::from(seq - 100)), seq);
    }
    // The peer restarts: new sequence and timestamp bases, same SSRC.
    let restart = |seq: u16| {
        rtp(
            PT_PCMA,
            seq,
            900_000 + u32::from(seq) * 160,
            SSRC,
            &[mark(seq); 160],
        )
    };
    b.datagram(ms(100), &restart(5000));
    assert_eq!(
        b.stats().bad_sequence,
        1,
        "A.1: the first packet after the jump is bad"
    );
    assert_eq!(b.frames.len(), 5);
    b.datagram(ms(120), &restart(5001));
    b.datagram(ms(140), &restart(5002));
    b.assert_continuous();
    let mut expected = marks_of(100..105);
    expected.extend(marks_of([5001, 5002]));
    assert_eq!(
        b.marks(),
        expected,
        "5000 dropped, the timeline goes on without a gap"
    );
    let s = b.stats();
    assert_eq!((s.resyncs, s.bad_sequence, s.frames_concealed), (1, 1, 0));
    assert_accounted(&s, 0);
    assert!(b.events.contains(&ReceiveEvent::Resynced {
        ssrc: SSRC,
        reason: ResyncReason::Sequence
    }));
    // A.1 re-initialises its counters at the resync.
    let report = b.rx.take_report_block_stats().unwrap();
    assert_eq!(
        (report.extended_highest_seq, report.cumulative_lost),
        (5002, 0)
    );
}

#[test]
fn a_single_stray_jump_is_dropped_without_a_resync() {
    let mut b = Bench::pcma();
    for seq in 0..3 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    b.datagram(ms(50), &rtp(PT_PCMA, 40_000, 1, SSRC, &[9; 160]));
    for seq in 3..6 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    assert_eq!(b.marks(), marks_of(0..6));
    let s = b.stats();
    assert_eq!((s.bad_sequence, s.resyncs, s.frames_concealed), (1, 0, 0));
}

#[test]
fn a_timestamp_jump_is_filled_at_once_with_concealment() {
    // Silence suppression: sequence numbers continue, the timestamp skips 10 frames.
    let mut b = Bench::pcma();
    for seq in 0..3 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    b.datagram(ms(260), &rtp(PT_PCMA, 3, 13 * 160, SSRC, &[mark(3); 160]));
    // Nothing is missing in sequence, so there is no wait.
    assert_eq!(b.frames.len(), 14);
    assert_eq!(
        b.rx.poll_timeout(),
        Some(b.t0 + ms(260) + Duration::from_secs(30))
    );
    b.datagram(ms(280), &rtp(PT_PCMA, 4, 14 * 160, SSRC, &[mark(4); 160]));
    b.assert_continuous();
    assert_eq!(b.concealed(), (3..13).collect::<Vec<_>>());
    let s = b.stats();
    assert_eq!((s.frames_received, s.frames_concealed), (5, 10));
    assert_eq!((s.timestamp_resyncs, s.resyncs), (0, 0));
    let report = b.rx.take_report_block_stats().unwrap();
    assert_eq!(report.cumulative_lost, 0, "skipped time is not loss");
}

#[test]
fn a_huge_or_backward_timestamp_jump_rebases_instead_of_filling() {
    let mut b = Bench::pcma();
    b.audio(ms(0), 0);
    b.audio(ms(20), 1);
    // One hour ahead (beyond the 10 s fill cap).
    b.datagram(
        ms(40),
        &rtp(PT_PCMA, 2, 160 + 8000 * 3600, SSRC, &[mark(2); 160]),
    );
    b.datagram(
        ms(60),
        &rtp(PT_PCMA, 3, 320 + 8000 * 3600, SSRC, &[mark(3); 160]),
    );
    // Backwards.
    b.datagram(ms(80), &rtp(PT_PCMA, 4, 5, SSRC, &[mark(4); 160]));
    b.datagram(ms(100), &rtp(PT_PCMA, 5, 165, SSRC, &[mark(5); 160]));
    b.assert_continuous();
    assert_eq!(b.marks(), marks_of(0..6));
    let s = b.stats();
    assert_eq!((s.timestamp_resyncs, s.frames_concealed), (2, 0));
    let rebases = b
        .events
        .iter()
        .filter(|e| {
            matches!(
                e,
                ReceiveEvent::Resynced {
                    reason: ResyncReason::Timestamp,
                    ..
                }
            )
        })
        .count();
    assert_eq!(rebases, 2);
}

#[test]
fn an_ssrc_change_flushes_the_old_stream_and_starts_the_new_one_in_sequence() {
    let mut b = Bench::pcma();
    const NEW: u32 = 0xBEEF;
    b.audio(ms(0), 0);
    b.audio(ms(20), 1);
    b.audio(ms(60), 3); // 2 is missing: frame 3 waits
    assert_eq!(b.frames.len(), 2);
    // The new stream: its first packet is on probation, the old one continues meanwhile.
    let new = |seq: u16| {
        rtp(
            PT_PCMA,
            seq,
            77_000 + u32::from(seq) * 160,
            NEW,
            &[mark(seq); 160],
        )
    };
    b.datagram(ms(70), &new(500));
    assert_eq!(b.frames.len(), 2);
    b.datagram(ms(90), &new(501));
    // Validated: old frame 2 concealed, 3 released, then 500 and 501.
    b.assert_continuous();
    assert_eq!(
        b.marks(),
        vec![
            Some(mark(0)),
            Some(mark(1)),
            None,
            Some(mark(3)),
            Some(mark(500)),
            Some(mark(501))
        ]
    );
    assert!(b.events.contains(&ReceiveEvent::SsrcChanged {
        from: SSRC,
        to: NEW
    }));
    // Stragglers of the old stream are not mixed in.
    b.audio(ms(95), 2);
    b.audio(ms(100), 4);
    b.datagram(ms(110), &new(502));
    assert_eq!(b.frames.len(), 7);
    let s = b.stats();
    assert_eq!(
        (s.ssrc_changes, s.retired_ssrc, s.frames_concealed),
        (1, 2, 1)
    );
    assert_accounted(&s, 0);
    assert_eq!(b.rx.ssrc(), Some(NEW));
    let report = b.rx.take_report_block_stats().unwrap();
    assert_eq!((report.ssrc, report.extended_highest_seq), (NEW, 502));
}

#[test]
fn a_single_packet_of_another_ssrc_does_not_disturb_the_stream() {
    let mut b = Bench::pcma();
    for seq in 0..3 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    b.datagram(ms(50), &rtp(PT_PCMA, 9, 9, 0xBAD, &[1; 160]));
    b.datagram(ms(55), &rtp(PT_PCMA, 90, 9, 0xBAD, &[1; 160])); // not sequential: restarts
    for seq in 3..6 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    assert_eq!(b.marks(), marks_of(0..6));
    let s = b.stats();
    assert_eq!((s.ssrc_changes, s.probation_discarded), (0, 1));
    assert_accounted(&s, 1);
}

#[test]
fn the_source_is_latched_and_relearned_only_after_reset_source() {
    let mut b = Bench::pcma();
    let other = addr("198.51.100.7:5004");
    b.audio(ms(0), 0);
    b.audio(ms(20), 1);
    assert_eq!(b.rx.source(), Some(b.peer));
    // Same SSRC and sequence from elsewhere (spoofed or a second leg): dropped.
    for seq in 2..5 {
        b.datagram_from(
            ms(30 + u64::from(seq)),
            other,
            &rtp(PT_PCMA, seq, u32::from(seq) * 160, SSRC, &[7; 160]),
        );
    }
    for seq in 2..5 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    assert_eq!(b.marks(), marks_of(0..5));
    assert_eq!(b.stats().foreign_source, 3);
    // Signalling moved the media: the next valid stream latches again.
    b.rx.reset_source(None);
    let moved = |seq: u16| {
        rtp(
            PT_PCMA,
            seq,
            u32::from(seq) * 160,
            0xCAFE,
            &[mark(seq); 160],
        )
    };
    b.datagram_from(ms(100), other, &moved(1000));
    b.datagram_from(ms(120), other, &moved(1001));
    assert_eq!(b.rx.source(), Some(other));
    b.audio(ms(125), 5); // the old address is foreign now
    assert_eq!(b.stats().foreign_source, 4);
    assert_eq!(
        b.events,
        [
            ReceiveEvent::SourceLearned { source: b.peer },
            ReceiveEvent::SsrcChanged {
                from: SSRC,
                to: 0xCAFE
            },
            ReceiveEvent::SourceLearned { source: other },
        ]
    );
    // An explicit address locks at once.
    let third = addr("203.0.113.1:7000");
    b.rx.reset_source(Some(third));
    b.datagram_from(ms(140), other, &moved(1002));
    assert_eq!(b.stats().foreign_source, 5);
    b.datagram_from(ms(160), third, &moved(1003));
    b.assert_continuous();
    assert_eq!(b.frames.len(), 7);
    // 1002 never arrived from the locked address: the stream continues with a one-packet hole
    // (1003 waits for it, then frame 7 is concealed).
    b.run_until(ms(200));
    assert_eq!(b.concealed(), [7]);
    assert_eq!(b.frames.len(), 9);
    assert_accounted(&b.stats(), 0);
}

#[test]
fn thirty_ms_packets_are_reframed_into_20_ms_frames() {
    let mut b = Bench::pcma();
    let mut sent = Vec::new();
    for seq in 0..10u16 {
        let payload: Vec<u8> = (0..240).map(|i| (u32::from(seq) * 240 + i) as u8).collect();
        sent.extend_from_slice(&payload);
        b.datagram(
            ms(30 * u64::from(seq)),
            &rtp(PT_PCMA, seq, u32::from(seq) * 240, SSRC, &payload),
        );
        // Each 30 ms packet completes one or two frames at once (the first one once the second
        // has validated the stream).
        let expected = if seq == 0 {
            0
        } else {
            (usize::from(seq) + 1) * 3 / 2
        };
        assert_eq!(b.frames.len(), expected);
    }
    b.assert_continuous();
    assert_eq!(b.frames.len(), 15);
    let received: Vec<u8> = b.frames.iter().flat_map(|f| f.payload.clone()).collect();
    assert_eq!(received, sent);
    assert_eq!(b.stats().frames_concealed, 0);
}

#[test]
fn a_lost_30_ms_packet_conceals_one_and_a_half_frames() {
    let mut b = Bench::pcma();
    for seq in [0u16, 1, 2, 4, 5, 6] {
        let ts = u32::from(seq) * 240;
        b.datagram(
            ms(30 * u64::from(seq)),
            &rtp(PT_PCMA, seq, ts, SSRC, &[mark(seq); 240]),
        );
    }
    b.run_until(ms(500));
    b.assert_continuous();
    // Packet 3 covered samples 720..960: the second half of frame 4 and all of frame 5.
    assert_eq!(b.concealed(), [4, 5]);
    // 7 packets' worth of time is 10.5 frames: the last half frame waits for more.
    assert_eq!(b.frames.len(), 10);
    assert_eq!(b.rx.buffered_frames(), 1);
    let f4 = &b.frames[4].payload;
    assert!(f4[..80].iter().all(|o| *o == mark(2)) && f4[80..].iter().all(|o| *o == 0xD5));
    assert_eq!(b.stats().frames_concealed, 2);
}

#[test]
fn ten_ms_packets_are_paired() {
    let mut b = Bench::pcma();
    for seq in 0..10u16 {
        b.datagram(
            ms(10 * u64::from(seq)),
            &rtp(PT_PCMA, seq, u32::from(seq) * 80, SSRC, &[mark(seq); 80]),
        );
    }
    b.assert_continuous();
    assert_eq!(b.frames.len(), 5);
    for (i, frame) in b.frames.iter().enumerate() {
        let (a, z) = (mark(2 * i as u16), mark(2 * i as u16 + 1));
        assert!(frame.payload[..80].iter().all(|o| *o == a));
        assert!(frame.payload[80..].iter().all(|o| *o == z));
    }
}

#[test]
fn telephone_events_bypass_the_audio_timeline() {
    let mut b = Bench::pcma();
    for seq in 0..3 {
        b.audio(ms(20 * u64::from(seq)), seq);
    }
    // Three event packets (the same event start, growing duration), one duplicate.
    let event = |seq: u16, duration: u16| {
        let mut p = vec![5, 10];
        p.extend_from_slice(&duration.to_be_bytes());
        rtp(PT_EVENT, seq, 3 * 160, SSRC, &p)
    };
    b.datagram(ms(60), &event(3, 160));
    b.datagram(ms(80), &event(4, 320));
    b.datagram(ms(80), &event(4, 320));
    b.datagram(ms(100), &event(5, 480));
    assert_eq!(b.frames.len(), 3, "events make no frames");
    // Audio resumes after the event: the time it covered is concealed, nothing is waited for.
    b.datagram(ms(120), &rtp(PT_PCMA, 6, 6 * 160, SSRC, &[mark(6); 160]));
    b.assert_continuous();
    assert_eq!(b.concealed(), [3, 4, 5]);
    let events: Vec<_> = b
        .events
        .iter()
        .filter_map(|e| match e {
            ReceiveEvent::TelephoneEvent { header, payload } => Some((header.sequence, payload[3])),
            _ => None,
        })
        .collect();
    assert_eq!(events, [(3, 160), (4, 64), (5, 224)]);
    let s = b.stats();
    assert_eq!(
        (s.telephone_events, s.duplicates, s.packets_accepted),
        (3, 1, 7)
    );
    // The duplicate event packet counts as received for A.1: one more than expected.
    assert_eq!(b.rx.take_report_block_stats().unwrap().cumulative_lost, -1);
}

#[test]
fn inactivity_is_raised_exactly_once_at_30_s() {
    let mut b = Bench::pcma();
    b.audio(ms(0), 0);
    b.audio(ms(20), 1);
    let deadline = b.t0 + ms(20) + Duration::from_secs(30);
    assert_eq!(b.rx.poll_timeout(), Some(deadline));
    b.rx.handle_timeout(deadline - Duration::from_nanos(1));
    b.drain();
    assert_eq!(b.events.len(), 1, "only SourceLearned so far");
    b.run_until(Duration::from_secs(300));
    let inactive: Vec<_> = b
        .events
        .iter()
        .filter(|e| matches!(e, ReceiveEvent::Inactive { .. }))
        .collect();
    assert_eq!(
        inactive,
        [&ReceiveEvent::Inactive {
            last_packet: b.t0 + ms(20)
        }]
    );
    assert_eq!(b.rx.poll_timeout(), None);
    // Media comes back, then stops again: raised a second time.
    b.audio(Duration::from_secs(301), 2);
    assert_eq!(b.rx.poll_timeout(), Some(b.t0 + Duration::from_secs(331)));
    b.run_until(Duration::from_secs(400));
    let count = b
        .events
        .iter()
        .filter(|e| matches!(e, ReceiveEvent::Inactive { .. }))
        .count();
    assert_eq!(count, 2);
}

#[test]
fn a_call_that_never_receives_rtp_times_out_too() {
    let mut b = Bench::pcma();
    b.run_until(Duration::from_secs(29));
    assert!(b.events.is_empty());
    b.run_until(Duration::from_secs(30));
    assert_eq!(b.events, [ReceiveEvent::Inactive { last_packet: b.t0 }]);
}

/// xorshift64*: deterministic noise for the flood and drift tests.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn a_ten_times_rate_flood_keeps_memory_bounded() {
    let config = ReceiveConfig::default();
    let mut b = Bench::pcma();
    let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
    let foreign = addr("198.51.100.66:666");
    let mut max_buffered = 0;
    // 60 s of a genuine 20 ms stream, and nine hostile packets per genuine one from the latched
    // address and SSRC: sequence numbers near the current one, timestamps anywhere within an
    // hour, any length; plus foreign copies.
    b.audio(ms(0), 0);
    b.audio(ms(20), 1);
    for seq in 2..3000u16 {
        let at = ms(20 * u64::from(seq));
        b.audio(at, seq);
        for k in 0..9u64 {
            let at = at + Duration::from_micros(2000 * (k + 1));
            let s = seq.wrapping_add((noise.below(400) as u16).wrapping_sub(200));
            let ts = (u32::from(seq) * 160).wrapping_add(noise.below(8000 * 3600) as u32);
            let len = 1 + noise.below(960) as usize;
            let bytes = rtp(PT_PCMA, s, ts, SSRC, &vec![0x55; len]);
            if k % 3 == 0 {
                b.datagram_from(at, foreign, &bytes);
            } else {
                b.datagram(at, &bytes);
            }
            max_buffered = max_buffered.max(b.rx.buffered_frames());
            if let Some(stream) = b.rx.stream.as_ref() {
                assert!(stream.window.epochs() <= 101);
            }
        }
    }
    assert!(max_buffered <= config.max_buffered_frames, "{max_buffered}");
    assert_eq!(b.rx.queued_frames(), 0, "drained after every call");
    b.assert_continuous();
    let s = b.stats();
    assert_eq!(s.packets_received, 2 + 2998 * 10);
    assert_eq!(s.foreign_source, 2998 * 3);
    assert_eq!(s.frames_overflowed, 0);
    assert_accounted(&s, 0);
    // Output stays in proportion: received frames come from packets (at most 6 frames each),
    // concealment from wall-clock time (60 s), the fill credit (10 s) and what each flush
    // conceals (at most the buffer).
    assert!(s.frames_received <= 6 * s.packets_accepted);
    let flushes = s.timestamp_resyncs + s.resyncs + s.ssrc_changes;
    assert!(s.frames_concealed <= 3000 + 500 + 16 * flushes, "{s:#?}");
}

#[test]
fn claimed_timestamp_gaps_cannot_outrun_the_wall_clock() {
    // A latched peer (or a spoofer that knows the SSRC) sends ten packets per 20 ms, each in
    // sequence and each claiming 9 s of skipped time (under the 10 s cap): 60 s of this would
    // be 13.5 million concealment frames if every gap were filled.
    let mut b = Bench::pcma();
    b.audio(ms(0), 0);
    b.audio(ms(20), 1);
    let mut ts = 2 * 160u32;
    for i in 0..30_000u64 {
        let seq = (2 + i) as u16;
        ts = ts.wrapping_add(9 * 8000);
        b.datagram(
            ms(40) + Duration::from_micros(2000 * i),
            &rtp(PT_PCMA, seq, ts, SSRC, &[1; 160]),
        );
        ts = ts.wrapping_add(160);
        assert!(b.rx.buffered_frames() <= 16);
    }
    let s = b.stats();
    // 30 002 packets' worth of audio, plus filled time that never runs more than the cap
    // (10 s, 500 frames) ahead of the wall clock (60.04 s, 3002 frames). Most frames hold a
    // 2 ms sliver of fill (what the wall clock allowed per packet), so most count as concealed.
    let frames = s.frames_received + s.frames_concealed;
    assert!(frames <= 30_002 + 3_002 + 500, "{s:#?}");
    assert!(frames >= 30_002 + 3_002, "{s:#?}");
    assert_eq!(s.gaps_trimmed, 29_999);
    b.assert_continuous();
}

#[test]
fn undrained_output_is_bounded_too() {
    let mut rx = Receiver::new(Instant::now(), ReceiveConfig::default(), pcma());
    let t0 = Instant::now();
    let peer = addr("192.0.2.1:1");
    for seq in 0..2000u16 {
        let bytes = rtp(PT_PCMA, seq, u32::from(seq) * 160, SSRC, &[1; 160]);
        rx.handle_datagram(t0 + ms(u64::from(seq)), peer, &bytes);
    }
    assert_eq!(rx.queued_frames(), MAX_READY as u64);
    assert_eq!(rx.stats().frames_overflowed, 2000 - MAX_READY as u64);
    // Concealment runs are kept as a count, not as buffers.
    let bytes = rtp(PT_PCMA, 2000, 2000 * 160 + 8000 * 9, SSRC, &[1; 160]);
    rx.handle_datagram(t0 + ms(2000), peer, &bytes);
    assert!(rx.output.ready.len() <= MAX_READY);
}

/// 10 minutes of 20 ms packets from a sender whose clock runs `ppm` fast or slow, with up to
/// 8 ms of network jitter.
fn drift(ppm: i64) {
    let mut b = Bench::pcma();
    let mut noise = Noise(42);
    let period_ns = 20_000_000 * (1_000_000 - ppm) / 1_000_000;
    let packets = 10 * 60 * 50;
    for seq in 0..packets {
        let at = Duration::from_nanos((seq as i64 * period_ns) as u64 + noise.below(8_000_000));
        b.audio(at, seq as u16);
        // No lag builds up: every packet's frame is out as soon as it arrives (the first once
        // the second has validated the stream).
        assert_eq!(b.frames.len(), if seq == 0 { 0 } else { seq + 1 });
        assert!(b.rx.buffered_frames() <= 1);
    }
    b.assert_continuous();
    let s = b.stats();
    assert_eq!((s.frames_received, s.frames_concealed), (packets as u64, 0));
    // RFC 3550 A.8: 8 ms of uniform jitter is about 1/3 * 8 ms = 21 ticks of mean |D|.
    assert!(s.jitter > 5 && s.jitter < 64, "jitter {}", s.jitter);
}

#[test]
fn sender_clock_drift_of_one_percent_builds_no_lag_or_buffer() {
    drift(10_000);
    drift(-10_000);
}

#[test]
fn jitter_follows_rfc_3550_a8() {
    let mut b = Bench::pcma();
    // Every other packet 10 ms (80 ticks) late: |D| = 80 for every pair.
    for seq in 0..400u16 {
        let late = if seq % 2 == 1 { 10 } else { 0 };
        b.audio(ms(20 * u64::from(seq) + late), seq);
    }
    // The integer estimator settles where (J * 16 + 8) >> 4 == 80.
    let s = b.stats();
    assert!((79..=80).contains(&s.jitter), "jitter {}", s.jitter);
    assert_eq!(b.rx.take_report_block_stats().unwrap().jitter, s.jitter);
}

#[test]
fn opus_packets_are_whole_frames_and_loss_is_an_empty_payload() {
    let params = ReceiveParams {
        codec: Codec::Opus,
        payload_type: 111,
        telephone_event_pt: None,
    };
    let mut b = Bench::new(ReceiveConfig::default(), params);
    for seq in [0u16, 1, 2, 4, 5] {
        let payload = vec![0x78, seq as u8, 1, 2, 3];
        b.datagram(
            ms(20 * u64::from(seq)),
            &rtp(111, seq, u32::from(seq) * 960, SSRC, &payload),
        );
    }
    b.run_until(ms(200));
    let out: Vec<_> = b
        .frames
        .iter()
        .map(|f| (f.index, f.kind, f.payload.len()))
        .collect();
    assert_eq!(
        out,
        [
            (0, FrameKind::Received, 5),
            (1, FrameKind::Received, 5),
            (2, FrameKind::Received, 5),
            (3, FrameKind::Concealed, 0),
            (4, FrameKind::Received, 5),
            (5, FrameKind::Received, 5),
        ]
    );
    assert_eq!(b.frames[4].payload[1], 4);
}

#[test]
fn params_come_from_the_negotiated_terms() {
    use crate::sip::sdp::session::Direction;
    let negotiated = Negotiated {
        codec: Codec::Pcmu,
        payload_type: 0,
        clock_rate: 8000,
        channels: 1,
        ptime_ms: 20,
        telephone_event_pt: Some(101),
        remote_rtp: addr("192.0.2.1:4000"),
        remote_rtcp: None,
        rtcp_mux: false,
        direction: Direction::SendRecv,
    };
    let params = ReceiveParams::from(&negotiated);
    assert_eq!(
        params,
        ReceiveParams {
            codec: Codec::Pcmu,
            payload_type: 0,
            telephone_event_pt: Some(101)
        }
    );
    // PCMU concealment is mu-law silence.
    let mut b = Bench::new(ReceiveConfig::default(), params);
    b.datagram(ms(0), &rtp(0, 0, 0, SSRC, &[1; 160]));
    b.datagram(ms(20), &rtp(0, 1, 320, SSRC, &[1; 160]));
    assert_eq!(
        b.kinds(),
        [
            (0, FrameKind::Received),
            (1, FrameKind::Concealed),
            (2, FrameKind::Received)
        ]
    );
    assert!(b.frames[1].payload.iter().all(|o| *o == 0xFF));
}

// ---- replays of real captures -----------------------------------------------------------------

#[test]
fn replay_of_sipp_g711a_capture_is_reframed_exactly() {
    let capture = pcap::sip_tester_capture("g711a.pcap");
    assert_eq!(capture.len(), 236);
    let mut b = Bench::pcma();
    let mut payloads = Vec::new();
    let mut media_ms = 0;
    for d in &capture {
        let p = packet::parse(&d.payload).unwrap();
        payloads.extend_from_slice(p.payload);
        media_ms += p.payload.len() / 8; // 8 samples per ms
        b.datagram_from(d.at, d.source, &d.payload);
    }
    assert_eq!(media_ms, 7080, "236 packets of 30 ms");
    b.run_until(capture.last().unwrap().at + Duration::from_secs(1));
    b.assert_continuous();
    assert_eq!(b.frames.len(), media_ms / 20);
    let s = b.stats();
    assert_eq!((s.frames_received, s.frames_concealed), (354, 0));
    assert_eq!(
        (s.packets_accepted, s.reordered, s.duplicates, s.late),
        (236, 0, 0, 0)
    );
    let received: Vec<u8> = b.frames.iter().flat_map(|f| f.payload.clone()).collect();
    assert_eq!(received, payloads);
    assert_eq!(b.rx.source(), Some(addr("10.1.3.143:5000")));
    let report = b.rx.take_report_block_stats().unwrap();
    assert_eq!(report.cumulative_lost, 0);
    assert_eq!(report.extended_highest_seq, 59368);
}

#[test]
fn replay_of_sipp_rfc2833_captures_surfaces_every_event_packet() {
    let names = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "star", "pound",
    ];
    for (digit, name) in names.into_iter().enumerate() {
        let capture = pcap::sip_tester_capture(&format!("dtmf_2833_{name}.pcap"));
        assert_eq!(capture.len(), 10, "{name}");
        let mut b = Bench::new(
            ReceiveConfig::default(),
            ReceiveParams {
                codec: Codec::Pcmu,
                payload_type: 0,
                telephone_event_pt: Some(101),
            },
        );
        for d in &capture {
            b.datagram_from(d.at, d.source, &d.payload);
        }
        let events: Vec<_> = b
            .events
            .iter()
            .filter_map(|e| match e {
                ReceiveEvent::TelephoneEvent { header, payload } => {
                    Some((*header, payload.clone()))
                }
                _ => None,
            })
            .collect();
        // SIPp sends seven updates and the end packet three times with the same sequence
        // number: eight distinct packets, two duplicates.
        assert_eq!(events.len(), 8, "{name}");
        for (i, (header, payload)) in events.iter().enumerate() {
            assert_eq!(payload.len(), 4);
            assert_eq!(usize::from(payload[0]), digit, "{name}: event code");
            assert_eq!(
                payload[1] & 0x80 != 0,
                i == 7,
                "{name}: E bit on the last only"
            );
            assert_eq!(u16::from_be_bytes([payload[2], payload[3]]), 320 * i as u16);
            assert_eq!(header.sequence, events[0].0.sequence.wrapping_add(i as u16));
        }
        let s = b.stats();
        assert_eq!(
            (s.telephone_events, s.duplicates, s.packets_accepted),
            (8, 2, 8),
            "{name}"
        );
        assert!(b.frames.is_empty());
        assert_accounted(&s, 0);
    }
}

// ---- no input panics --------------------------------------------------------------------------

proptest! {
    #[test]
    fn arbitrary_datagrams_never_panic_and_keep_the_invariants(
        packets in proptest::collection::vec(
            (0u64..100, any::<bool>(), any::<u16>(), 0u16..8, any::<u32>(), 0u8..3, 0usize..400, any::<bool>()),
            1..200,
        )
    ) {
        let mut b = Bench::pcma();
        let other = addr("198.51.100.1:1");
        let mut at = Duration::ZERO;
        let mut last_seq = 0u16;
        for (gap_ms, near, seq, step, ts, pt, len, foreign) in packets {
            at += ms(gap_ms);
            let seq = if near { last_seq.wrapping_add(step) } else { seq };
            last_seq = seq;
            let pt = [PT_PCMA, PT_EVENT, 0][usize::from(pt)];
            let ts = if near { u32::from(seq) * 160 } else { ts };
            let mut bytes = rtp(pt, seq, ts, SSRC, &vec![3; len]);
            if len % 7 == 0 {
                bytes.truncate(len % 15);
            }
            let from = if foreign { other } else { b.peer };
            b.datagram_from(at, from, &bytes);
            prop_assert!(b.rx.buffered_frames() <= ReceiveConfig::default().max_buffered_frames);
        }
        b.run_until(at + Duration::from_secs(60));
        b.assert_continuous();
        let s = b.stats();
        let held = b.rx.candidate.as_ref().map_or(0, |c| c.held.len() as u64);
        assert_accounted(&s, held);
        prop_assert_eq!(s.frames_received + s.frames_concealed, b.frames.len() as u64);
    }
}

#[test]
fn no_inactivity_while_media_is_not_expected_and_a_fresh_timeout_after() {
    let mut b = Bench::pcma();
    b.audio(ms(0), 0);
    b.audio(ms(20), 1);
    // On hold from 1 s to 101 s: no packets and no Inactive event.
    b.run_until(ms(1000));
    b.rx.set_expect_media(false, b.now);
    b.run_until(ms(101_000));
    assert!(
        !b.events
            .iter()
            .any(|e| matches!(e, ReceiveEvent::Inactive { .. }))
    );
    // Resumed at 101 s: the 30 s count starts then, not at the last packet.
    b.rx.set_expect_media(true, b.now);
    b.run_until(ms(130_999));
    assert!(
        !b.events
            .iter()
            .any(|e| matches!(e, ReceiveEvent::Inactive { .. }))
    );
    b.run_until(ms(131_000));
    let inactive = b
        .events
        .iter()
        .filter(|e| matches!(e, ReceiveEvent::Inactive { .. }))
        .count();
    assert_eq!(inactive, 1);
}
