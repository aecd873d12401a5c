//! Cost of the receive side of the media path per 20 ms frame: an RTP datagram through the
//! receive core (validation, source latch, A.1 sequence tracking, timeline), then what a
//! pcm16 upstream needs on top (G.711 decode and 8 kHz -> 24 kHz resampling).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use sip_realtime_bridge::audio::Upsampler8To24;
use sip_realtime_bridge::audio::g711::decode_ulaw_into;
use sip_realtime_bridge::rtp::packet::{RtpHeader, write};
use sip_realtime_bridge::rtp::receive::{ReceiveConfig, ReceiveParams, Receiver};
use sip_realtime_bridge::sip::sdp::Codec;

fn datagram(seq: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..160u32)
        .map(|i| (i * 7 + u32::from(seq)) as u8)
        .collect();
    let mut out = Vec::new();
    write(
        &RtpHeader {
            marker: false,
            payload_type: 0,
            sequence: seq,
            timestamp: u32::from(seq).wrapping_mul(160),
            ssrc: 0x1234_5678,
        },
        &payload,
        &mut out,
    );
    out
}

fn receive(c: &mut Criterion) {
    let peer: SocketAddr = "192.0.2.10:4000".parse().unwrap();
    let params = ReceiveParams {
        codec: Codec::Pcmu,
        payload_type: 0,
        telephone_event_pt: Some(101),
    };
    // One second of packets, prebuilt; the benchmark cycles through them with advancing
    // sequence numbers by rebuilding only when the cycle wraps.
    let t0 = Instant::now();
    let mut rx = Receiver::new(t0, ReceiveConfig::default(), params);
    let mut seq: u16 = 0;
    let mut now = t0;
    c.bench_function("rtp_receive_frame_pcmu", |b| {
        b.iter(|| {
            let bytes = datagram(seq);
            seq = seq.wrapping_add(1);
            now += Duration::from_millis(20);
            rx.handle_datagram(now, peer, black_box(&bytes));
            let mut n = 0;
            while let Some(frame) = rx.poll_frame() {
                n += frame.payload.len();
            }
            while rx.poll_event().is_some() {}
            black_box(n)
        })
    });

    let mut rx = Receiver::new(t0, ReceiveConfig::default(), params);
    let mut seq: u16 = 0;
    let mut now = t0;
    let mut up = Upsampler8To24::new();
    let (mut pcm8, mut pcm24) = (Vec::with_capacity(160), Vec::with_capacity(480));
    c.bench_function("rtp_receive_decode_resample_frame_pcmu", |b| {
        b.iter(|| {
            let bytes = datagram(seq);
            seq = seq.wrapping_add(1);
            now += Duration::from_millis(20);
            rx.handle_datagram(now, peer, black_box(&bytes));
            while let Some(frame) = rx.poll_frame() {
                pcm8.clear();
                pcm24.clear();
                decode_ulaw_into(&frame.payload, &mut pcm8);
                up.process(&pcm8, &mut pcm24);
            }
            while rx.poll_event().is_some() {}
            black_box(pcm24.len())
        })
    });
}

criterion_group!(benches, receive);
criterion_main!(benches);
