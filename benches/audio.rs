//! Cost of the audio core per 20 ms frame: G.711 encode/decode of 160
//! samples and 8 kHz <-> 24 kHz resampling of one frame.
//!
//! `bridge_opus_*`: one 20 ms frame each way through the audio bridge of an Opus call with a
//! pcm16 session: an Opus caller packet decoded and appended (base64, JSON), and a model delta
//! (JSON, base64) framed, Opus-encoded and sent by the pacer at its slot.
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
use sip_realtime_bridge::audio::opus::{EncoderConfig, OpusEncoder};
use sip_realtime_bridge::audio::{
    Downsampler24To8, SAMPLES_PER_FRAME_8K, SAMPLES_PER_FRAME_24K, Upsampler8To24,
};
use sip_realtime_bridge::call::AudioBridge;
use sip_realtime_bridge::config::{AudioFormat, Config};
use sip_realtime_bridge::realtime::{Dialect, Session};
use sip_realtime_bridge::rtp::playout::{Pacer, PacerConfig, RtpStart};
use sip_realtime_bridge::sip::sdp::Codec;

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

fn bridge_opus(c: &mut Criterion) {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use std::time::{Duration, Instant};

    let config = Config::from_toml(
        "[upstreams.u]\nkind = \"fake\"\n[profiles.p]\nupstream = \"u\"\n\
         [[routes]]\nprofile = \"p\"\n",
    )
    .unwrap();
    let profile = config.profiles.into_values().next().unwrap();
    let mut resolved = profile.clone();
    resolved.audio_format = profile.audio_format.for_codec(Codec::Opus);
    let t0 = Instant::now();
    let pacer_config = PacerConfig {
        payload_type: 111,
        clock_rate: 48_000,
        silence: sip_realtime_bridge::rtp::playout::OPUS_SILENCE.to_vec(),
        ..PacerConfig::pcmu()
    };
    let start = RtpStart {
        ssrc: 1,
        sequence: 1,
        timestamp: 1,
    };
    let pacer = Pacer::new(pacer_config, start, t0).unwrap();
    let session = Session::new(&resolved, Dialect::OpenAiGa, t0);
    let mut bridge = AudioBridge::opus(&profile, session, pacer).unwrap();
    assert_eq!(bridge.audio_format(), AudioFormat::Pcm16);
    for text in [
        r#"{"type":"session.created","event_id":"e1","session":{"type":"realtime","id":"s"}}"#,
        r#"{"type":"session.updated","event_id":"e2","session":{"type":"realtime","id":"s"}}"#,
        r#"{"type":"response.created","event_id":"e3","response":{"object":"realtime.response","id":"resp_1","status":"in_progress","status_details":null,"output":[]}}"#,
    ] {
        bridge.handle_ws_text(t0, text);
    }
    while bridge.poll_ws_transmit().is_some() {}
    while bridge.poll_event().is_some() {}

    let pcm = speech_like(24_000.0, SAMPLES_PER_FRAME_24K);
    let mut packet = Vec::new();
    OpusEncoder::new(EncoderConfig::default())
        .unwrap()
        .encode(&pcm, &mut packet)
        .unwrap();
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let delta = format!(
        r#"{{"type":"response.output_audio.delta","event_id":"e4","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"{}"}}"#,
        BASE64.encode(&bytes)
    );

    let mut now = t0;
    c.bench_function("bridge_opus_caller_frame", |b| {
        b.iter(|| {
            bridge.handle_caller_frame(now, black_box(&packet));
            while let Some(text) = bridge.poll_ws_transmit() {
                black_box(text);
            }
        })
    });
    c.bench_function("bridge_opus_model_frame", |b| {
        b.iter(|| {
            bridge.handle_ws_text(now, black_box(&delta));
            now += Duration::from_millis(20);
            bridge.handle_timeout(now);
            while let Some(datagram) = bridge.poll_rtp_transmit() {
                black_box(datagram);
            }
            while bridge.poll_event().is_some() {}
        })
    });
}

criterion_group!(benches, g711, resample, bridge_opus);
criterion_main!(benches);
