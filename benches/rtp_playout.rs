//! Cost of the playout pacer (`rtp::playout::Pacer`) per 20 ms frame, and the memory of a
//! queue holding 30 s of model audio.
//!
//! Time is simulated: every iteration advances a private `Instant` by one packet time, so the
//! pacer sends exactly one packet per `handle_timeout`, as in a live call. Memory is computed,
//! not sampled: `Pacer::heap_bytes` sums the capacities the queue holds (a counting global
//! allocator would need `unsafe`, which the crate forbids), printed once before the timings.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use sip_realtime_bridge::audio::g711::encode_ulaw_into;
use sip_realtime_bridge::rtp::playout::{AudioPart, Pacer, PacerConfig, RtpStart};

const PTIME: Duration = Duration::from_millis(20);
const FRAMES_30S: usize = 1500;

fn pacer(now: Instant) -> Pacer {
    let start = RtpStart {
        ssrc: 0x1234_5678,
        sequence: 4321,
        timestamp: 99,
    };
    Pacer::new(PacerConfig::pcmu(), start, now).unwrap()
}

fn part() -> AudioPart {
    AudioPart::new("resp_0123456789abcdef", "item_0123456789abcdef", 0)
}

fn speech_like(len: usize) -> Vec<i16> {
    let mut state: u32 = 0x2545_F491;
    (0..len)
        .map(|n| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = i32::from((state >> 16) as u16 as i16) / 16;
            let tone = (7000.0 * (n as f64 * 0.14).sin()) as i32;
            (tone + noise) as i16
        })
        .collect()
}

fn memory() {
    let now = Instant::now();
    let mut pacer = pacer(now);
    let idle = pacer.heap_bytes();
    let payload = [0x55u8; 160];
    let part = part();
    for _ in 0..FRAMES_30S {
        pacer.push_frame(&part, &payload).unwrap();
    }
    let full = pacer.heap_bytes();
    let audio = FRAMES_30S * payload.len();
    println!(
        "playout_memory_30s: {FRAMES_30S} frames x 160 octets = {audio} octets of audio; \
         pacer heap {full} octets ({:.1}% over the audio; {idle} octets when idle)",
        (full - audio) as f64 * 100.0 / audio as f64
    );
    pacer.flush();
    println!("playout_memory_after_flush: {} octets", pacer.heap_bytes());
}

fn per_frame(c: &mut Criterion) {
    memory();
    let payload = [0x55u8; 160];
    let part = part();

    // Queue one frame and send one: the steady state of a model reply.
    let mut now = Instant::now();
    let mut p = pacer(now);
    let mut sink = 0usize;
    c.bench_function("playout_push_emit_160", |b| {
        b.iter(|| {
            p.push_frame(&part, black_box(&payload)).unwrap();
            p.handle_timeout(now);
            now += PTIME;
            let packet = p.poll_transmit().unwrap();
            sink = sink.wrapping_add(packet.len());
            while p.poll_event().is_some() {}
        })
    });

    // The pcm16 path: mu-law encode 160 samples, queue, send.
    let pcm = speech_like(160);
    let mut codes = Vec::with_capacity(160);
    let mut now = Instant::now();
    let mut p = pacer(now);
    c.bench_function("playout_encode_push_emit_160", |b| {
        b.iter(|| {
            codes.clear();
            encode_ulaw_into(black_box(&pcm), &mut codes);
            p.push_frame(&part, &codes).unwrap();
            p.handle_timeout(now);
            now += PTIME;
            let packet = p.poll_transmit().unwrap();
            sink = sink.wrapping_add(packet.len());
            while p.poll_event().is_some() {}
        })
    });

    // Nothing queued: one silence packet per slot.
    let mut now = Instant::now();
    let mut p = pacer(now);
    c.bench_function("playout_silence_emit", |b| {
        b.iter(|| {
            p.handle_timeout(now);
            now += PTIME;
            sink = sink.wrapping_add(p.poll_transmit().unwrap().len());
        })
    });

    // Barge-in with 30 s queued (the refill is setup, not measured).
    let now = Instant::now();
    c.bench_function("playout_flush_1500", |b| {
        b.iter_batched(
            || {
                let mut p = pacer(now);
                for _ in 0..FRAMES_30S {
                    p.push_frame(&part, &payload).unwrap();
                }
                p
            },
            |mut p| black_box(p.flush()),
            BatchSize::LargeInput,
        )
    });
    black_box(sink);
}

criterion_group!(benches, per_frame);
criterion_main!(benches);
