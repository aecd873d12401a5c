//! Cost of the audio core per 20 ms frame: G.711 encode/decode of 160
//! samples and 8 kHz <-> 24 kHz resampling of one frame. A whole call's frame (the bridge
//! around these kernels) is `benches/call.rs`.
//!
//! Input is speech-like (a few tones plus noise from a small LCG) so the
//! codecs see every segment rather than a constant. Output buffers are reused
//! and cleared each iteration, as the media path does.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::f64::consts::PI;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use sip_realtime_bridge::audio::g711::{
    decode_alaw_into, decode_ulaw_into, encode_alaw_into, encode_ulaw_into,
};
use sip_realtime_bridge::audio::{
    Downsampler24To8, SAMPLES_PER_FRAME_8K, SAMPLES_PER_FRAME_24K, Upsampler8To24,
};

fn speech_like(rate: f64, len: usize) -> Vec<i16> {
    let mut state: u32 = 0x2545_F491;
    (0..len)
        .map(|n| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = f64::from((state >> 16) as u16 as i16) / 16.0;
            let t = n as f64 / rate;
            let tones = 7000.0 * (2.0 * PI * 180.0 * t).sin()
                + 5000.0 * (2.0 * PI * 730.0 * t).sin()
                + 2500.0 * (2.0 * PI * 2450.0 * t).sin();
            (tones + noise).round() as i16
        })
        .collect()
}

fn g711(c: &mut Criterion) {
    let pcm = speech_like(8000.0, SAMPLES_PER_FRAME_8K);
    let mut ulaw = Vec::new();
    encode_ulaw_into(&pcm, &mut ulaw);
    let mut alaw = Vec::new();
    encode_alaw_into(&pcm, &mut alaw);

    let mut codes = Vec::with_capacity(SAMPLES_PER_FRAME_8K);
    let mut samples = Vec::with_capacity(SAMPLES_PER_FRAME_8K);

    c.bench_function("ulaw_decode_160", |b| {
        b.iter(|| {
            samples.clear();
            decode_ulaw_into(black_box(&ulaw), &mut samples);
            black_box(&samples);
        })
    });
    c.bench_function("ulaw_encode_160", |b| {
        b.iter(|| {
            codes.clear();
            encode_ulaw_into(black_box(&pcm), &mut codes);
            black_box(&codes);
        })
    });
    c.bench_function("alaw_decode_160", |b| {
        b.iter(|| {
            samples.clear();
            decode_alaw_into(black_box(&alaw), &mut samples);
            black_box(&samples);
        })
    });
    c.bench_function("alaw_encode_160", |b| {
        b.iter(|| {
            codes.clear();
            encode_alaw_into(black_box(&pcm), &mut codes);
            black_box(&codes);
        })
    });
}

fn resample(c: &mut Criterion) {
    let narrow = speech_like(8000.0, SAMPLES_PER_FRAME_8K);
    let wide = speech_like(24_000.0, SAMPLES_PER_FRAME_24K);
    let mut out = Vec::with_capacity(SAMPLES_PER_FRAME_24K);

    // The resamplers keep their state across iterations, like a live stream.
    let mut upsampler = Upsampler8To24::new();
    c.bench_function("upsample_8k_to_24k_160", |b| {
        b.iter(|| {
            out.clear();
            upsampler.process(black_box(&narrow), &mut out);
            black_box(&out);
        })
    });
    let mut downsampler = Downsampler24To8::new();
    c.bench_function("downsample_24k_to_8k_480", |b| {
        b.iter(|| {
            out.clear();
            downsampler.process(black_box(&wide), &mut out);
            black_box(&out);
        })
    });
}

criterion_group!(benches, g711, resample);
criterion_main!(benches);
