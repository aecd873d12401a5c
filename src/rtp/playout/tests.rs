#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::rtp::dtmf::{DtmfEvent, DtmfReceiver, EndCause, EventPayload};
use crate::rtp::packet::{self, RtpHeader};

const MS20: Duration = Duration::from_millis(20);

#[derive(Debug)]
struct Sent {
    at: Instant,
    header: RtpHeader,
    payload: Vec<u8>,
}

/// A pacer under simulated time: `run_until` fires every deadline like a punctual shell.
struct Sim {
    pacer: Pacer,
    t0: Instant,
    now: Instant,
    sent: Vec<Sent>,
    events: Vec<PlayoutEvent>,
}

impl Sim {
    fn new(start: RtpStart) -> Sim {
        Sim::with_config(PacerConfig::pcmu(), start)
    }

    fn with_config(config: PacerConfig, start: RtpStart) -> Sim {
        let t0 = Instant::now();
        Sim {
            pacer: Pacer::new(config, start, t0).unwrap(),
            t0,
            now: t0,
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(bytes) = self.pacer.poll_transmit() {
            let packet = packet::parse(&bytes).unwrap();
            self.sent.push(Sent {
                at: self.now,
                header: packet.header,
                payload: packet.payload.to_vec(),
            });
        }
        while let Some(event) = self.pacer.poll_event() {
            self.events.push(event);
        }
    }

    /// Wakes at every deadline up to and including `until`.
    fn run_until(&mut self, until: Instant) {
        while let Some(deadline) = self.pacer.poll_timeout() {
            if deadline > until {
                break;
            }
            self.now = deadline;
            self.pacer.handle_timeout(deadline);
            self.drain();
        }
        self.now = until;
    }

    /// Runs `frames` slots from the next one.
    fn run_frames(&mut self, frames: u64) {
        let until = self.t0 + MS20 * (self.pacer.next_slot() + frames - 1) as u32;
        self.run_until(until);
    }

    /// One wake-up at `at` (a late shell).
    fn wake(&mut self, at: Instant) {
        self.now = at;
        self.pacer.handle_timeout(at);
        self.drain();
    }

    fn push(&mut self, part: &AudioPart, frames: usize, fill: u8) {
        for _ in 0..frames {
            self.pacer.push_frame(part, &[fill; 160]).unwrap();
        }
    }
}

fn start() -> RtpStart {
    RtpStart {
        ssrc: 0xCAFE_F00D,
        sequence: 1000,
        timestamp: 5000,
    }
}

fn part(item: &str) -> AudioPart {
    AudioPart::new("resp_1", item, 0)
}

/// Exactly 50 packets per simulated second, sequence +1 and timestamp +160 each, both
/// wrapping, each sent at its deadline.
#[test]
fn fifty_frames_a_second_with_exact_sequence_and_timestamps_across_wraps() {
    let mut sim = Sim::new(RtpStart {
        ssrc: 7,
        sequence: 65_530,
        timestamp: u32::MAX - 3 * 160 + 1,
    });
    sim.push(&part("item_1"), 30, 0x11);
    sim.run_until(sim.t0 + Duration::from_secs(1) - Duration::from_nanos(1));
    assert_eq!(sim.sent.len(), 50);
    sim.run_until(sim.t0 + Duration::from_secs(3) - Duration::from_nanos(1));
    assert_eq!(sim.sent.len(), 150);
    for (n, sent) in sim.sent.iter().enumerate() {
        assert_eq!(sent.header.sequence, 65_530u16.wrapping_add(n as u16));
        assert_eq!(
            sent.header.timestamp,
            (u32::MAX - 3 * 160 + 1).wrapping_add(160 * n as u32)
        );
        assert_eq!(sent.header.ssrc, 7);
        assert_eq!(sent.header.payload_type, 0);
        assert_eq!(sent.at, sim.t0 + MS20 * n as u32);
        let expected = if n < 30 { 0x11 } else { PCMU_SILENCE };
        assert_eq!(sent.payload, [expected; 160], "frame {n}");
    }
    assert_eq!(sim.sent[6].header.sequence, 0, "sequence wrapped");
    assert_eq!(sim.sent[3].header.timestamp, 0, "timestamp wrapped");
}

#[test]
fn silence_fills_the_gaps_with_continuous_timestamps() {
    let mut config = PacerConfig::pcmu();
    config.payload_type = 8;
    config.silence = vec![PCMA_SILENCE; 160];
    let mut sim = Sim::with_config(config, start());
    sim.run_frames(3);
    sim.push(&part("item_1"), 2, 0x22);
    sim.run_frames(4);
    let kinds: Vec<u8> = sim.sent.iter().map(|s| s.payload[0]).collect();
    assert_eq!(kinds, [0xD5, 0xD5, 0xD5, 0x22, 0x22, 0xD5, 0xD5]);
    for (n, sent) in sim.sent.iter().enumerate() {
        assert_eq!(sent.header.timestamp, 5000 + 160 * n as u32);
        assert_eq!(sent.header.sequence, 1000 + n as u16);
        assert_eq!(sent.header.payload_type, 8);
    }
    assert_eq!(sim.pacer.stats().silence_frames, 5);
    assert_eq!(sim.pacer.stats().audio_frames, 2);
}

/// Marker on the first model frame after silence, never on silence or within a talkspurt.
#[test]
fn marker_at_each_talkspurt_start() {
    let mut sim = Sim::new(start());
    sim.push(&part("item_1"), 2, 1); // talkspurt at the stream start
    sim.run_frames(4);
    sim.push(&part("item_2"), 2, 2);
    sim.run_frames(2);
    sim.push(&part("item_3"), 1, 3); // follows item_2 without silence: same talkspurt
    sim.run_frames(2);
    let markers: Vec<bool> = sim.sent.iter().map(|s| s.header.marker).collect();
    assert_eq!(
        markers,
        [true, false, false, false, true, false, false, false]
    );
    let payloads: Vec<u8> = sim.sent.iter().map(|s| s.payload[0]).collect();
    assert_eq!(payloads, [1, 1, 0xFF, 0xFF, 2, 2, 3, 0xFF]);
}

/// Barge-in mid-item: 7 of 10 frames sent -> 140 ms sent, 200 ms received, truncate at 140;
/// the queued-but-never-played item reports 0 sent and is deleted; the next packet is
/// silence even though new audio was queued right after the flush.
#[test]
fn flush_mid_item_reports_exact_sent_and_received() {
    let mut sim = Sim::new(start());
    sim.push(&part("item_1"), 10, 1);
    sim.push(&part("item_2"), 5, 2);
    sim.run_frames(7);
    assert_eq!(sim.pacer.queued_frames(), 8);
    assert_eq!(sim.pacer.queued_ms(), 160);
    let report = sim.pacer.flush();
    assert_eq!(
        report,
        [
            FlushedItem {
                part: part("item_1"),
                sent_ms: 140,
                received_ms: 200,
                complete: true,
            },
            FlushedItem {
                part: part("item_2"),
                sent_ms: 0,
                received_ms: 100,
                complete: false,
            },
        ]
    );
    assert_eq!(
        report[0].action(),
        BargeInAction::Truncate { audio_end_ms: 140 }
    );
    assert_eq!(report[1].action(), BargeInAction::Delete);
    assert_eq!(sim.pacer.queued_frames(), 0);
    assert_eq!(sim.pacer.stats().flushed_frames, 8);
    // A new response arrives before the next slot: the next packet is still silence.
    sim.push(&part("item_3"), 2, 3);
    sim.run_frames(3);
    let payloads: Vec<u8> = sim.sent.iter().map(|s| s.payload[0]).collect();
    assert_eq!(payloads, [1, 1, 1, 1, 1, 1, 1, 0xFF, 3, 3]);
    assert!(sim.sent[8].header.marker, "new talkspurt after the flush");
    assert_eq!(
        sim.events.first(),
        Some(&PlayoutEvent::ItemStarted(part("item_1")))
    );
}

#[test]
fn flush_of_queued_items_reports_zero_sent_and_skips_finished_ones() {
    let mut sim = Sim::new(start());
    assert!(
        sim.pacer.flush().is_empty(),
        "nothing queued, nothing to report"
    );
    sim.push(&part("item_1"), 2, 1);
    sim.pacer.finish_part(&part("item_1"));
    sim.run_frames(3);
    assert!(sim.events.contains(&PlayoutEvent::ItemFinished {
        part: part("item_1"),
        sent_ms: 40
    }));
    sim.push(&part("item_2"), 3, 2);
    sim.push(&part("item_3"), 3, 3);
    let report = sim.pacer.flush();
    assert_eq!(report.len(), 2, "the finished item needs nothing");
    assert!(report.iter().all(|r| r.sent_ms == 0 && r.received_ms == 60));
    assert!(report.iter().all(|r| r.action() == BargeInAction::Delete));
}

/// A part that ran dry while the model may still produce it is not finished; a flush asks
/// for a truncate at what was sent even though sent == received.
#[test]
fn part_that_ran_dry_is_truncated_not_ignored() {
    let mut sim = Sim::new(start());
    sim.push(&part("item_1"), 3, 1);
    sim.run_frames(5);
    assert!(
        !sim.events
            .iter()
            .any(|e| matches!(e, PlayoutEvent::ItemFinished { .. }))
    );
    assert_eq!(
        sim.events,
        [
            PlayoutEvent::ItemStarted(part("item_1")),
            PlayoutEvent::Drained
        ]
    );
    let report = sim.pacer.flush();
    assert_eq!((report[0].sent_ms, report[0].received_ms), (60, 60));
    assert_eq!(
        report[0].action(),
        BargeInAction::Truncate { audio_end_ms: 60 }
    );
}

#[test]
fn partial_last_frame_counts_only_model_audio() {
    let mut sim = Sim::new(start());
    sim.push(&part("item_1"), 2, 1);
    sim.pacer
        .push_partial_frame(&part("item_1"), &[1; 160], 7)
        .unwrap();
    sim.pacer.finish_part(&part("item_1"));
    sim.run_frames(3);
    assert!(sim.events.contains(&PlayoutEvent::ItemFinished {
        part: part("item_1"),
        sent_ms: 47
    }));
}

/// Durations are counted in milliseconds whatever the clock: at Opus' 48 kHz (960 ticks per
/// slot) a padded last frame still counts only its audio, before and after a flush.
#[test]
fn partial_opus_frames_count_their_audio_at_the_48_khz_clock() {
    let config = PacerConfig {
        payload_type: 111,
        clock_rate: 48_000,
        silence: OPUS_SILENCE.to_vec(),
        ..PacerConfig::pcmu()
    };
    let mut sim = Sim::with_config(config, start());
    assert_eq!(sim.pacer.samples_per_frame(), 960);
    for _ in 0..3 {
        sim.pacer.push_frame(&part("item_1"), &[0x78; 61]).unwrap();
    }
    sim.pacer
        .push_partial_frame(&part("item_1"), &[0x78; 23], 13)
        .unwrap();
    assert_eq!(sim.pacer.queued_ms(), 73);
    sim.run_frames(4);
    let report = sim.pacer.flush();
    assert_eq!(
        report,
        [FlushedItem {
            part: part("item_1"),
            sent_ms: 73,
            received_ms: 73,
            complete: false,
        }]
    );
    let lens: Vec<usize> = sim.sent.iter().map(|s| s.payload.len()).collect();
    assert_eq!(lens, [61, 61, 61, 23]);
    for (k, sent) in sim.sent.iter().enumerate() {
        assert_eq!(sent.header.timestamp, 5000 + 960 * k as u32);
    }
}

#[test]
fn events_started_finished_drained_in_order() {
    let mut sim = Sim::new(start());
    sim.push(&part("item_1"), 2, 1);
    sim.push(&part("item_2"), 1, 2); // completes item_1
    sim.pacer.finish_part(&part("item_2"));
    sim.run_frames(4);
    assert_eq!(
        sim.events,
        [
            PlayoutEvent::ItemStarted(part("item_1")),
            PlayoutEvent::ItemFinished {
                part: part("item_1"),
                sent_ms: 40
            },
            PlayoutEvent::ItemStarted(part("item_2")),
            PlayoutEvent::ItemFinished {
                part: part("item_2"),
                sent_ms: 20
            },
            PlayoutEvent::Drained,
        ]
    );
    assert!(sim.pacer.is_idle());
    assert!(sim.pacer.flush().is_empty(), "finished parts are forgotten");
    // finish_part after the last frame left also reports it.
    sim.push(&part("item_3"), 1, 3);
    sim.run_frames(2); // the slot after a flush is silence
    sim.events.clear();
    sim.pacer.finish_part(&part("item_3"));
    sim.drain();
    assert_eq!(
        sim.events,
        [PlayoutEvent::ItemFinished {
            part: part("item_3"),
            sent_ms: 20
        }]
    );
    sim.pacer.finish_part(&part("unknown"));
}

/// A shell 50 ms late sends the three due frames at once; one 1 s late skips all but the
/// last 100 ms of slots (six frames), keeps timestamps on the clock, does not lose queued
/// audio, and marks the first packet after the gap.
#[test]
fn late_wake_up_catches_up_within_the_lateness_cap() {
    let mut sim = Sim::new(start());
    sim.push(&part("item_1"), 20, 1);
    sim.wake(sim.t0 + Duration::from_millis(50));
    assert_eq!(sim.sent.len(), 3, "slots at 0, 20, 40 ms");
    assert_eq!(sim.pacer.poll_timeout(), Some(sim.t0 + MS20 * 3));
    assert_eq!(sim.pacer.stats().skipped_slots, 0);

    sim.wake(sim.t0 + Duration::from_millis(1050));
    // Due: slots 3..=52; kept: deadline >= 950 ms, i.e. slots 48..=52.
    let burst = &sim.sent[3..];
    assert_eq!(burst.len(), 5);
    assert_eq!(sim.pacer.stats().skipped_slots, 45);
    for (k, sent) in burst.iter().enumerate() {
        assert_eq!(sent.header.timestamp, 5000 + 160 * (48 + k as u32));
        assert_eq!(sent.header.sequence, 1003 + k as u16, "no sequence gap");
        assert_eq!(sent.header.marker, k == 0);
        assert_eq!(sent.payload[0], 1, "queued audio was kept, not skipped");
    }
    // Exactly on the cap: a deadline exactly max_lateness old is still sent.
    sim.wake(sim.t0 + Duration::from_millis(1060) + DEFAULT_MAX_LATENESS);
    // Due 53..=58; kept deadline >= 1060 ms: slot 53 (1060) .. 58.
    assert_eq!(sim.sent.len(), 8 + 6);
    assert_eq!(sim.pacer.stats().skipped_slots, 45);
    assert_eq!(sim.pacer.stats().audio_frames, 14);
    assert_eq!(sim.pacer.poll_timeout(), Some(sim.t0 + MS20 * 59));
    // Early or repeated wake-ups send nothing.
    sim.wake(sim.t0 + Duration::from_millis(1179));
    assert_eq!(sim.sent.len(), 14);
}

#[test]
fn a_very_long_stall_bursts_at_most_six_packets() {
    let mut sim = Sim::new(start());
    sim.push(&part("item_1"), 100, 1);
    sim.wake(sim.t0 + Duration::from_secs(3600) + Duration::from_millis(7));
    // Kept: deadlines >= 3599.907 s, i.e. 3599.920 .. 3600.000 s.
    assert_eq!(sim.sent.len(), 5);
    assert_eq!(
        sim.sent[0].header.timestamp,
        5000u32.wrapping_add(160 * (180_000 - 4))
    );
    assert!(sim.sent[0].header.marker);
    assert_eq!(sim.pacer.next_slot(), 180_001);
}

/// Hold (our direction recvonly/inactive): no packets, clock and timestamps run on, the
/// queue waits; resume continues the sequence with a marker and the right timestamp.
#[test]
fn hold_and_resume() {
    let mut sim = Sim::new(start());
    sim.push(&part("item_1"), 4, 1);
    sim.run_frames(2);
    sim.pacer.set_direction(Direction::RecvOnly);
    sim.run_frames(50);
    assert_eq!(sim.sent.len(), 2, "nothing sent on hold");
    assert_eq!(sim.pacer.queued_frames(), 2, "audio waits");
    assert_eq!(sim.pacer.stats().held_slots, 50);
    sim.pacer.set_direction(Direction::Inactive);
    sim.run_frames(10);
    sim.pacer.set_direction(Direction::SendRecv);
    sim.run_frames(3);
    let resumed = &sim.sent[2..];
    assert_eq!(resumed.len(), 3);
    assert_eq!(resumed[0].header.sequence, 1002);
    assert_eq!(resumed[0].header.timestamp, 5000 + 160 * 62);
    assert!(resumed[0].header.marker);
    assert_eq!(
        resumed.iter().map(|s| s.payload[0]).collect::<Vec<_>>(),
        [1, 1, 0xFF]
    );
    assert_eq!(resumed[2].header.timestamp, 5000 + 160 * 64);
    // SendOnly is also a sending direction.
    sim.pacer.set_direction(Direction::SendOnly);
    sim.run_frames(1);
    assert_eq!(sim.sent.len(), 6);
}

/// Ten simulated minutes: frame n leaves at exactly start + n * 20 ms with timestamp
/// first + n * 160, whatever the shell's wake-up pattern (here, deadlines +0..19 ms late).
#[test]
fn no_drift_over_ten_minutes() {
    let mut sim = Sim::new(start());
    let frames = 10 * 60 * 50;
    let mut jitter = 0u64;
    let mut sent = 0u64;
    while sent < frames {
        let deadline = sim.pacer.poll_timeout().unwrap();
        assert_eq!(deadline, sim.t0 + Duration::from_millis(20 * sent));
        jitter = (jitter * 7 + 3) % 20;
        sim.pacer
            .handle_timeout(deadline + Duration::from_millis(jitter));
        let bytes = sim.pacer.poll_transmit().unwrap();
        assert!(sim.pacer.poll_transmit().is_none());
        let header = packet::parse(&bytes).unwrap().header;
        assert_eq!(
            header.timestamp,
            5000u32.wrapping_add(160 * sent as u32),
            "frame {sent}"
        );
        assert_eq!(header.sequence, 1000u16.wrapping_add(sent as u16));
        sent += 1;
    }
    assert_eq!(
        sim.pacer.poll_timeout(),
        Some(sim.t0 + Duration::from_secs(600))
    );
    assert_eq!(sim.pacer.stats().packets, frames);
}

#[test]
fn dtmf_takes_over_the_slots_and_audio_resumes() {
    let mut config = PacerConfig::pcmu();
    config.telephone_event_pt = Some(101);
    let mut sim = Sim::with_config(config, start());
    sim.push(&part("item_1"), 3, 1);
    sim.run_frames(1);
    sim.pacer
        .send_digit(Digit::D7, Duration::from_millis(60))
        .unwrap();
    sim.pacer
        .send_digit(Digit::Pound, Duration::from_millis(20))
        .unwrap();
    assert!(!sim.pacer.is_idle());
    sim.run_frames(14);
    let shape: Vec<(u8, bool, u32, Vec<u8>)> = sim
        .sent
        .iter()
        .map(|s| {
            (
                s.header.payload_type,
                s.header.marker,
                s.header.timestamp - 5000,
                if s.header.payload_type == 101 {
                    s.payload.clone()
                } else {
                    vec![s.payload[0]]
                },
            )
        })
        .collect();
    let ev = |marker, ts, bytes: [u8; 4]| (101, marker, ts, bytes.to_vec());
    assert_eq!(
        shape,
        [
            (0, true, 0, vec![1]),
            ev(true, 160, [7, 10, 0, 160]),
            ev(false, 160, [7, 10, 1, 64]),
            ev(false, 160, [7, 0x8A, 1, 224]),
            ev(false, 160, [7, 0x8A, 1, 224]),
            ev(false, 160, [7, 0x8A, 1, 224]),
            (0, true, 960, vec![1]),
            (0, false, 1120, vec![1]),
            ev(true, 1280, [11, 0x8A, 0, 160]),
            ev(false, 1280, [11, 0x8A, 0, 160]),
            ev(false, 1280, [11, 0x8A, 0, 160]),
            (0, false, 1760, vec![0xFF]),
            (0, false, 1920, vec![0xFF]),
            (0, false, 2080, vec![0xFF]),
            (0, false, 2240, vec![0xFF]),
        ]
    );
    for (n, s) in sim.sent.iter().enumerate() {
        assert_eq!(s.header.sequence, 1000 + n as u16, "one sequence space");
        assert_eq!(s.header.ssrc, 0xCAFE_F00D);
    }
    assert!(sim.events.contains(&PlayoutEvent::DigitSent(Digit::D7)));
    assert!(sim.events.contains(&PlayoutEvent::DigitSent(Digit::Pound)));
    assert_eq!(sim.pacer.stats().dtmf_packets, 8);

    // What the pacer sent is what a receiver reads: two presses.
    let mut rx = DtmfReceiver::new(8000);
    for s in sim.sent.iter().filter(|s| s.header.payload_type == 101) {
        rx.handle_packet(s.at, &s.header, &s.payload);
    }
    let ends: Vec<_> = std::iter::from_fn(|| rx.poll_event())
        .filter_map(|e| match e {
            DtmfEvent::Ended { press, cause } => Some((press.digit, press.duration, cause)),
            DtmfEvent::Started { .. } => None,
        })
        .collect();
    assert_eq!(
        ends,
        [
            (Digit::D7, Duration::from_millis(60), EndCause::EndBit),
            (Digit::Pound, Duration::from_millis(20), EndCause::EndBit),
        ]
    );
    assert_eq!(rx.stats().repeated_ends, 4);
    assert!(EventPayload::decode(&sim.sent[1].payload).is_some());
}

#[test]
fn dtmf_needs_telephone_event_and_is_dropped_on_hold() {
    let mut sim = Sim::new(start());
    assert_eq!(
        sim.pacer.send_digit(Digit::D1, MS20),
        Err(PlayoutError::NoTelephoneEvent)
    );
    let mut config = PacerConfig::pcmu();
    config.telephone_event_pt = Some(96);
    let mut sim = Sim::with_config(config, start());
    sim.pacer.send_digit(Digit::D1, MS20 * 5).unwrap();
    sim.pacer.send_digit(Digit::D2, MS20).unwrap();
    sim.run_frames(2);
    sim.pacer.set_direction(Direction::Inactive);
    assert_eq!(sim.pacer.stats().dropped_digits, 2);
    sim.pacer.set_direction(Direction::SendRecv);
    sim.run_frames(2);
    assert!(sim.sent[2..].iter().all(|s| s.header.payload_type == 0));
}

#[test]
fn config_for_negotiated_streams_and_bad_clocks() {
    use crate::sip::sdp::Negotiated;
    let negotiated = Negotiated {
        codec: Codec::Pcma,
        payload_type: 8,
        clock_rate: 8000,
        channels: 1,
        ptime_ms: 20,
        telephone_event_pt: Some(101),
        remote_rtp: "192.0.2.1:4000".parse().unwrap(),
        remote_rtcp: None,
        rtcp_mux: false,
        direction: Direction::SendRecv,
    };
    let config = PacerConfig::for_negotiated(&negotiated);
    assert_eq!(config.silence, vec![PCMA_SILENCE; 160]);
    assert_eq!(config.telephone_event_pt, Some(101));
    let pcmu = PacerConfig::for_negotiated(&Negotiated {
        codec: Codec::Pcmu,
        payload_type: 0,
        ..negotiated.clone()
    });
    assert_eq!(pcmu.silence, vec![PCMU_SILENCE; 160]);
    let opus = PacerConfig::for_negotiated(&Negotiated {
        codec: Codec::Opus,
        payload_type: 111,
        clock_rate: 48_000,
        channels: 2,
        ..negotiated
    });
    let pacer = Pacer::new(opus, start(), Instant::now()).unwrap();
    assert_eq!(pacer.samples_per_frame(), 960);
    assert_eq!(pacer.config().silence, OPUS_SILENCE);

    let mut bad = PacerConfig::pcmu();
    bad.ptime = Duration::ZERO;
    assert!(matches!(
        Pacer::new(bad, start(), Instant::now()),
        Err(PlayoutError::BadClock { .. })
    ));
    let mut odd = PacerConfig::pcmu();
    odd.clock_rate = 8001;
    assert!(Pacer::new(odd, start(), Instant::now()).is_err());
    let mut pacer = Pacer::new(PacerConfig::pcmu(), start(), Instant::now()).unwrap();
    assert_eq!(
        pacer.push_frame(&part("x"), &[0; 2000]),
        Err(PlayoutError::FrameTooLong(2000))
    );
    assert_eq!(pacer.queued_frames(), 0);
    assert!(pacer.flush().is_empty(), "a refused frame creates no part");
}

#[test]
fn variable_length_frames_and_ring_wrap() {
    let mut sim = Sim::new(start());
    // Interleave pushes and sends so the byte ring wraps around its end.
    for round in 0..50u8 {
        for k in 0..3u8 {
            let len = 1 + usize::from(round.wrapping_mul(31).wrapping_add(k * 17)) % 300;
            let fill: Vec<u8> = (0..len).map(|i| round ^ k ^ i as u8).collect();
            sim.pacer.push_frame(&part("item_1"), &fill).unwrap();
        }
        sim.run_frames(2);
    }
    sim.run_frames(60);
    let audio: Vec<&Sent> = sim
        .sent
        .iter()
        .filter(|s| s.payload.len() != 160 || s.payload[0] != 0xFF || s.header.marker)
        .collect();
    let mut n = 0;
    for round in 0..50u8 {
        for k in 0..3u8 {
            let len = 1 + usize::from(round.wrapping_mul(31).wrapping_add(k * 17)) % 300;
            let fill: Vec<u8> = (0..len).map(|i| round ^ k ^ i as u8).collect();
            assert_eq!(audio[n].payload, fill, "frame {n}");
            n += 1;
        }
    }
    assert_eq!(sim.pacer.stats().audio_frames, 150);
}

#[test]
fn memory_of_thirty_seconds_is_compact_and_released() {
    let mut pacer = Pacer::new(PacerConfig::pcmu(), start(), Instant::now()).unwrap();
    let idle = pacer.heap_bytes();
    for _ in 0..1500 {
        pacer.push_frame(&part("item_1"), &[1; 160]).unwrap();
    }
    let full = pacer.heap_bytes();
    assert!(full >= 1500 * 160);
    assert!(
        full < 1500 * 160 * 13 / 10,
        "{full} octets for 240 000 of audio"
    );
    pacer.flush();
    assert!(pacer.heap_bytes() <= idle + 32 * 1024 + 200 * 8 + 1024);
}

proptest! {
    /// Whatever the mix of pushes, flushes, digits, direction changes and wake-up times:
    /// no panic, timestamps always slot-exact, sequence numbers consecutive, and sent_ms
    /// never above received_ms.
    #[test]
    fn invariants_hold_under_any_schedule(
        ops in proptest::collection::vec((0u8..6, 0u64..300, proptest::collection::vec(any::<u8>(), 0..200)), 1..80)
    ) {
        let mut config = PacerConfig::pcmu();
        config.telephone_event_pt = Some(101);
        let t0 = Instant::now();
        let mut pacer = Pacer::new(config, RtpStart { ssrc: 1, sequence: 65_000, timestamp: u32::MAX - 1000 }, t0).unwrap();
        let mut now = t0;
        let mut last_seq: Option<u16> = None;
        for (op, step, bytes) in ops {
            match op {
                0 => { let _ = pacer.push_frame(&part(if step % 2 == 0 { "a" } else { "b" }), &bytes); }
                1 => {
                    for item in pacer.flush() {
                        prop_assert!(item.sent_ms <= item.received_ms);
                    }
                }
                2 => { let _ = pacer.send_digit(Digit::D3, Duration::from_millis(step)); }
                3 => pacer.set_direction(if step % 3 == 0 { Direction::Inactive } else { Direction::SendRecv }),
                _ => {
                    now += Duration::from_millis(step);
                    pacer.handle_timeout(now);
                    prop_assert!(pacer.poll_timeout().unwrap() > now);
                }
            }
            while let Some(bytes) = pacer.poll_transmit() {
                let header = packet::parse(&bytes).unwrap().header;
                if let Some(prev) = last_seq {
                    prop_assert_eq!(header.sequence, prev.wrapping_add(1));
                }
                last_seq = Some(header.sequence);
                if header.payload_type == 0 {
                    let slot = header.timestamp.wrapping_sub(u32::MAX - 1000) / 160;
                    prop_assert_eq!(header.timestamp.wrapping_sub(u32::MAX - 1000) % 160, 0);
                    prop_assert!(u64::from(slot) < pacer.next_slot());
                }
            }
            while pacer.poll_event().is_some() {}
        }
    }
}
