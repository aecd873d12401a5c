#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::rtp::packet::RtpHeader;

const PT: u8 = 101;

fn header(sequence: u16, timestamp: u32, marker: bool) -> RtpHeader {
    RtpHeader {
        marker,
        payload_type: PT,
        sequence,
        timestamp,
        ssrc: 0x1234_5678,
    }
}

fn payload(event: u8, end: bool, duration: u16) -> [u8; 4] {
    EventPayload {
        event,
        end,
        volume: 10,
        duration,
    }
    .encode()
}

fn events(rx: &mut DtmfReceiver) -> Vec<DtmfEvent> {
    std::iter::from_fn(|| rx.poll_event()).collect()
}

fn ended(digit: Digit, ms: u64, cause: EndCause) -> DtmfEvent {
    DtmfEvent::Ended {
        press: DigitPress {
            digit,
            duration: Duration::from_millis(ms),
        },
        cause,
    }
}

/// One event as a compliant sender emits it: start with marker, `updates` packets in all
/// (the last with E), the end packet three times.
fn feed_event(
    rx: &mut DtmfReceiver,
    now: Instant,
    seq: &mut u16,
    timestamp: u32,
    event: u8,
    updates: u16,
) {
    for k in 1..=updates {
        let end = k == updates;
        let repeats = if end { 3 } else { 1 };
        for _ in 0..repeats {
            rx.handle_packet(
                now,
                &header(*seq, timestamp, k == 1),
                &payload(event, end, k * 160),
            );
            *seq = seq.wrapping_add(1);
        }
    }
}

#[test]
fn digits_map_to_events_and_characters() {
    let keys = "0123456789*#ABCD";
    for (code, key) in keys.chars().enumerate() {
        let digit = Digit::from_event(code as u8).unwrap();
        assert_eq!(digit.event(), code as u8);
        assert_eq!(digit.as_char(), key);
        assert_eq!(Digit::from_char(key), Some(digit));
        assert_eq!(digit.to_string(), key.to_string());
    }
    assert_eq!(Digit::from_char('c'), Some(Digit::C));
    assert_eq!(Digit::from_event(16), None);
    assert_eq!(Digit::from_char('E'), None);
}

#[test]
fn payload_round_trips_and_ignores_the_reserved_bit() {
    let p = EventPayload {
        event: 11,
        end: true,
        volume: 63,
        duration: 0xABCD,
    };
    assert_eq!(p.encode(), [11, 0xBF, 0xAB, 0xCD]);
    assert_eq!(EventPayload::decode(&p.encode()), Some(p));
    // R bit set by a sloppy sender: still the same event.
    assert_eq!(EventPayload::decode(&[11, 0xFF, 0xAB, 0xCD]), Some(p));
    assert_eq!(EventPayload::decode(&[1, 2, 3]), None);
}

/// Start, four updates and the end three times: one start, one end (EndBit, 100 ms at the
/// final duration), the two repeated ends counted once each as repeats.
#[test]
fn one_event_start_updates_end_and_repeated_ends() {
    let now = Instant::now();
    let mut rx = DtmfReceiver::new(8000);
    let mut seq = 1;
    feed_event(&mut rx, now, &mut seq, 16_000, 5, 5);
    assert_eq!(
        events(&mut rx),
        [
            DtmfEvent::Started {
                digit: Digit::D5,
                volume: 10
            },
            ended(Digit::D5, 100, EndCause::EndBit),
        ]
    );
    let stats = rx.stats();
    assert_eq!(stats.events, 1);
    assert_eq!(stats.updates, 3, "packets 2-4 update; 1 starts, 5 ends");
    assert_eq!(stats.repeated_ends, 2);
    assert_eq!(stats.lost_ends, 0);
    assert_eq!(rx.poll_timeout(), None, "an ended event needs no timer");
    // A late update of the ended event changes nothing.
    rx.handle_packet(now, &header(seq, 16_000, false), &payload(5, false, 480));
    assert!(events(&mut rx).is_empty());
    assert_eq!(rx.stats().repeated_ends, 3);
}

#[test]
fn same_digit_twice_is_two_events_by_timestamp() {
    let now = Instant::now();
    let mut rx = DtmfReceiver::new(8000);
    let mut seq = 65_530; // wraps during the second event
    feed_event(&mut rx, now, &mut seq, u32::MAX - 200, 1, 3);
    feed_event(&mut rx, now, &mut seq, 1_000, 1, 4); // timestamp wrapped: newer
    let got = events(&mut rx);
    assert_eq!(got.len(), 4);
    assert_eq!(got[1], ended(Digit::D1, 60, EndCause::EndBit));
    assert_eq!(got[3], ended(Digit::D1, 80, EndCause::EndBit));
    assert_eq!(rx.stats().events, 2);
    assert_eq!(rx.stats().repeated_ends, 4);
}

#[test]
fn lost_end_packets_end_the_event_after_the_timeout() {
    let t0 = Instant::now();
    let mut rx = DtmfReceiver::new(8000);
    rx.handle_packet(t0, &header(1, 800, true), &payload(9, false, 160));
    let t1 = t0 + Duration::from_millis(20);
    rx.handle_packet(t1, &header(2, 800, false), &payload(9, false, 320));
    assert_eq!(events(&mut rx).len(), 1);
    assert_eq!(rx.poll_timeout(), Some(t1 + DEFAULT_END_TIMEOUT));
    rx.handle_timeout(t1 + DEFAULT_END_TIMEOUT - Duration::from_millis(1));
    assert!(events(&mut rx).is_empty(), "not before the timeout");
    rx.handle_timeout(t1 + DEFAULT_END_TIMEOUT);
    assert_eq!(events(&mut rx), [ended(Digit::D9, 40, EndCause::Timeout)]);
    assert_eq!(rx.poll_timeout(), None);
    // The end packets arriving after all are repeats, not a second digit.
    let late = t1 + Duration::from_secs(2);
    rx.handle_packet(late, &header(3, 800, false), &payload(9, true, 480));
    assert!(events(&mut rx).is_empty());
    assert_eq!(rx.stats().lost_ends, 1);
    assert_eq!(rx.stats().repeated_ends, 1);
}

#[test]
fn lost_end_packets_end_the_event_when_a_new_one_starts() {
    let now = Instant::now();
    let mut rx = DtmfReceiver::new(8000).with_end_timeout(Duration::from_secs(5));
    rx.handle_packet(now, &header(1, 800, true), &payload(2, false, 160));
    rx.handle_packet(now, &header(2, 2400, true), &payload(3, false, 160));
    assert_eq!(
        events(&mut rx),
        [
            DtmfEvent::Started {
                digit: Digit::D2,
                volume: 10
            },
            ended(Digit::D2, 20, EndCause::Superseded),
            DtmfEvent::Started {
                digit: Digit::D3,
                volume: 10
            },
        ]
    );
    assert_eq!(
        rx.poll_timeout(),
        Some(now + Duration::from_secs(5)),
        "custom timeout"
    );
}

#[test]
fn only_an_end_packet_reports_the_whole_press() {
    let now = Instant::now();
    let mut rx = DtmfReceiver::new(8000);
    rx.handle_packet(now, &header(7, 160, false), &payload(11, true, 1600));
    assert_eq!(
        events(&mut rx),
        [
            DtmfEvent::Started {
                digit: Digit::Pound,
                volume: 10
            },
            ended(Digit::Pound, 200, EndCause::EndBit),
        ]
    );
}

#[test]
fn stale_other_and_malformed_packets_are_counted_and_ignored() {
    let now = Instant::now();
    let mut rx = DtmfReceiver::new(8000);
    rx.handle_packet(now, &header(10, 8000, true), &payload(4, false, 160));
    rx.handle_packet(now, &header(5, 7000, false), &payload(4, true, 800)); // older event
    rx.handle_packet(now, &header(11, 9000, true), &payload(16, false, 160)); // flash
    rx.handle_packet(now, &header(12, 9000, true), &payload(255, true, 160));
    rx.handle_packet(now, &header(13, 8000, false), &[4, 10]);
    rx.handle_packet(now, &header(14, 8000, false), &[]);
    assert_eq!(events(&mut rx).len(), 1, "only the start of 4");
    let stats = rx.stats();
    assert_eq!(
        (stats.stale, stats.ignored_events, stats.malformed),
        (1, 2, 2)
    );
}

#[test]
fn a_new_ssrc_starts_a_new_event() {
    let now = Instant::now();
    let mut rx = DtmfReceiver::new(8000);
    rx.handle_packet(now, &header(1, 800, true), &payload(1, false, 160));
    let mut other = header(1, 100, true);
    other.ssrc = 99;
    rx.handle_packet(now, &other, &payload(2, false, 160));
    let got = events(&mut rx);
    assert_eq!(got[1], ended(Digit::D1, 20, EndCause::Superseded));
    assert!(matches!(
        got[2],
        DtmfEvent::Started {
            digit: Digit::D2,
            ..
        }
    ));
}

#[test]
fn wideband_clock_durations() {
    let now = Instant::now();
    let mut rx = DtmfReceiver::new(48_000);
    rx.handle_packet(now, &header(1, 0, true), &payload(0, true, 4800));
    assert_eq!(events(&mut rx)[1], ended(Digit::D0, 100, EndCause::EndBit));
}

/// 100 ms at 20 ms: five growing durations (the fifth with E), then the end twice more.
#[test]
fn send_sequence_is_byte_exact() {
    let packets: Vec<[u8; 4]> = EventSequence::new(
        Digit::Star,
        Duration::from_millis(100),
        10,
        160,
        Duration::from_millis(20),
    )
    .map(|p| {
        assert_eq!(p.marker, p.payload.duration == 160);
        p.payload.encode()
    })
    .collect();
    assert_eq!(
        packets,
        [
            [10, 0x0A, 0x00, 0xA0],
            [10, 0x0A, 0x01, 0x40],
            [10, 0x0A, 0x01, 0xE0],
            [10, 0x0A, 0x02, 0x80],
            [10, 0x8A, 0x03, 0x20],
            [10, 0x8A, 0x03, 0x20],
            [10, 0x8A, 0x03, 0x20],
        ]
    );
}

#[test]
fn send_sequence_rounds_up_and_caps() {
    let ptime = Duration::from_millis(20);
    let short = EventSequence::new(Digit::D1, Duration::ZERO, 99, 160, ptime);
    assert_eq!(short.packets(), 3, "one packet of duration, three ends");
    assert!(
        short
            .clone()
            .all(|p| p.payload.end && p.payload.volume == 63)
    );
    let odd = EventSequence::new(Digit::D1, Duration::from_millis(45), 10, 160, ptime);
    assert_eq!(odd.total_duration(), 3 * 160);
    let long = EventSequence::new(Digit::D1, Duration::from_secs(60), 10, 160, ptime);
    assert_eq!(long.total_duration(), 250 * 160, "capped at five seconds");
    let wide = EventSequence::new(Digit::D1, Duration::from_secs(5), 10, 960, ptime);
    assert_eq!(
        wide.total_duration(),
        68 * 960,
        "the 16-bit field caps it at 48 kHz"
    );
}

#[test]
fn sent_sequence_is_received_as_one_press() {
    let now = Instant::now();
    let mut rx = DtmfReceiver::new(8000);
    let sequence = EventSequence::new(
        Digit::A,
        Duration::from_millis(160),
        10,
        160,
        Duration::from_millis(20),
    );
    for (n, packet) in sequence.enumerate() {
        let at = now + Duration::from_millis(20 * n as u64);
        rx.handle_packet(
            at,
            &header(n as u16, 4242, packet.marker),
            &packet.payload.encode(),
        );
    }
    assert_eq!(
        events(&mut rx),
        [
            DtmfEvent::Started {
                digit: Digit::A,
                volume: 10
            },
            ended(Digit::A, 160, EndCause::EndBit),
        ]
    );
}

#[test]
fn info_bodies() {
    let press = |digit, ms| {
        Ok(DigitPress {
            digit,
            duration: Duration::from_millis(ms),
        })
    };
    assert_eq!(
        parse_info_body(b"Signal=5\r\nDuration=160\r\n"),
        press(Digit::D5, 160)
    );
    assert_eq!(
        parse_info_body(b"signal = *\nDURATION= 250"),
        press(Digit::Star, 250)
    );
    assert_eq!(parse_info_body(b"Signal=#\r\n"), press(Digit::Pound, 100));
    assert_eq!(
        parse_info_body(b"Signal=11\r\nDuration=80\r\n"),
        press(Digit::Pound, 80)
    );
    assert_eq!(
        parse_info_body(b"Signal=d\r\nDuration=x\r\n"),
        press(Digit::D, 100)
    );
    assert_eq!(
        parse_info_body(
            b"junk\r\n\xff\xfe=\r\nFoo=bar\r\nSignal=1\r\nSignal=2\r\nDuration=90\r\nDuration=10"
        ),
        press(Digit::D1, 90)
    );
    assert_eq!(parse_info_body(b""), Err(InfoError::NoSignal));
    assert_eq!(
        parse_info_body(b"Duration=100\r\n"),
        Err(InfoError::NoSignal)
    );
    assert_eq!(
        parse_info_body(b"Signal=16\r\n"),
        Err(InfoError::BadSignal("16".into()))
    );
    assert_eq!(
        parse_info_body(b"Signal=\r\n"),
        Err(InfoError::BadSignal(String::new()))
    );
    assert_eq!(
        parse_info_body(b"Signal=hello\r\n"),
        Err(InfoError::BadSignal("hello".into()))
    );
}

proptest! {
    #[test]
    fn no_packet_or_body_panics(
        packets in proptest::collection::vec(
            (any::<u32>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..8), 0u64..3000),
            0..40,
        ),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(8000);
        let mut starts = 0u64;
        let mut ends = 0u64;
        for (n, (timestamp, marker, payload, at)) in packets.into_iter().enumerate() {
            let now = t0 + Duration::from_millis(at);
            rx.handle_packet(now, &header(n as u16, timestamp % 4, marker), &payload);
            rx.handle_timeout(now);
            while let Some(event) = rx.poll_event() {
                match event {
                    DtmfEvent::Started { .. } => starts += 1,
                    DtmfEvent::Ended { .. } => ends += 1,
                }
                prop_assert!(ends <= starts);
            }
        }
        prop_assert!(starts - ends <= 1, "at most one event open");
        let _ = parse_info_body(&body);
    }
}
