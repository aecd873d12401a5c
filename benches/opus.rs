//! Cost of Opus per 20 ms frame at 24 kHz mono: encoding one frame of model audio (VoIP
//! application, 32 kbit/s, in-band FEC at 10% expected loss; complexity 10, the default, and
//! 5), decoding one payload, and the two loss paths (concealment, which is measured after a
//! decode so it starts from a live state, and FEC recovery from the next packet).
//!
//! Input is speech-like (a gliding harmonic series under a syllable envelope, plus a little
//! noise) so the encoder runs its speech modes rather than coding silence. The codec state
//! carries across iterations, as on a live call; output buffers are reused.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::f64::consts::PI;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sip_realtime_bridge::audio::SAMPLES_PER_FRAME_24K;
use sip_realtime_bridge::audio::opus::{EncoderConfig, OpusDecoder, OpusEncoder};

const RATE: f64 = 24_000.0;

fn speech_like(len: usize) -> Vec<i16> {
    let mut state: u32 = 0x2545_F491;
    let mut phase = 0.0;
    (0..len)
        .map(|n| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = f64::from((state >> 16) as u16 as i16) / 64.0;
            let t = n as f64 / RATE;
            phase += 2.0 * PI * (140.0 + 60.0 * (2.0 * PI * 1.7 * t).sin()) / RATE;
            let envelope = 0.75 + 0.25 * (2.0 * PI * 3.1 * t).sin();
            let voiced: f64 = (1..=12)
                .map(|h| (f64::from(h) * phase).sin() / f64::from(h))
                .sum();
            (6000.0 * envelope * voiced + noise).round() as i16
        })
        .collect()
}

fn opus(c: &mut Criterion) {
    // One second of audio, cycled through so successive frames differ.
    let pcm = speech_like(50 * SAMPLES_PER_FRAME_24K);
    let frames: Vec<&[i16]> = pcm.chunks_exact(SAMPLES_PER_FRAME_24K).collect();
    let mut encoder = OpusEncoder::new(EncoderConfig::default()).unwrap();
    let payloads: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut out = Vec::new();
            encoder.encode(f, &mut out).unwrap();
            out
        })
        .collect();

    let mut encoder = OpusEncoder::new(EncoderConfig::default()).unwrap();
    let mut payload = Vec::with_capacity(4_000);
    let mut i = 0;
    c.bench_function("opus_encode_24k_20ms", |b| {
        b.iter(|| {
            payload.clear();
            encoder
                .encode(black_box(frames[i % frames.len()]), &mut payload)
                .unwrap();
            i += 1;
            black_box(&payload);
        })
    });

    let mut encoder = OpusEncoder::new(EncoderConfig {
        complexity: 5,
        ..EncoderConfig::default()
    })
    .unwrap();
    let mut i = 0;
    c.bench_function("opus_encode_24k_20ms_complexity5", |b| {
        b.iter(|| {
            payload.clear();
            encoder
                .encode(black_box(frames[i % frames.len()]), &mut payload)
                .unwrap();
            i += 1;
            black_box(&payload);
        })
    });

    let mut decoder = OpusDecoder::new().unwrap();
    let mut out = Vec::with_capacity(SAMPLES_PER_FRAME_24K);
    let mut i = 0;
    c.bench_function("opus_decode_24k_20ms", |b| {
        b.iter(|| {
            out.clear();
            decoder
                .decode(black_box(&payloads[i % payloads.len()]), &mut out)
                .unwrap();
            i += 1;
            black_box(&out);
        })
    });

    let mut i = 0;
    c.bench_function("opus_conceal_24k_20ms", |b| {
        b.iter(|| {
            out.clear();
            // Decode, then conceal one frame: PLC from a live decoder state.
            decoder
                .decode(&payloads[i % payloads.len()], &mut out)
                .unwrap();
            i += 1;
            black_box(decoder.conceal(&mut out));
        })
    });

    let mut i = 0;
    c.bench_function("opus_fec_recover_24k_20ms", |b| {
        b.iter(|| {
            out.clear();
            let next = &payloads[(i + 1) % payloads.len()];
            black_box(decoder.recover_from_next(black_box(next), &mut out));
            i += 1;
        })
    });
}

criterion_group!(benches, opus);
criterion_main!(benches);
