//! Cost of one 20 ms frame through a whole [`Call`], as its shell drives it (one input, then
//! every output drained until the timer): the caller's way (an RTP datagram in, its
//! `input_audio_buffer.append` out) and the model's (an audio delta in, then the pacer's slot:
//! the RTP datagram out), for a G.711 call passed through, a G.711 call with a pcm16 session
//! (decode, 8 -> 24 kHz, and back), and an Opus call with a pcm16 session.
//!
//! The caller's way runs on a call that receives only (so the pacer does not run), the model's
//! on one that sends only (so no silence is filled in for a caller who says nothing); the
//! writer is reported to keep up and every ping is answered, as a healthy upstream does.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use criterion::{Criterion, criterion_group, criterion_main};
use sip_realtime_bridge::audio::opus::{EncoderConfig, OpusEncoder};
use sip_realtime_bridge::call::{
    Call, CallInfo, CallLimits, CallSetup, Input, MediaSeeds, Output, Socket,
};
use sip_realtime_bridge::config::Config;
use sip_realtime_bridge::realtime::Dialect;
use sip_realtime_bridge::rtp::packet::{self, RtpHeader};
use sip_realtime_bridge::rtp::playout::RtpStart;
use sip_realtime_bridge::rtp::rtcp::NtpTime;
use sip_realtime_bridge::sip::dialog::DialogEvent;
use sip_realtime_bridge::sip::sdp::{Codec, Direction, Negotiated};

const PEER: &str = "127.0.0.1:40000";

/// A call the shell drives: answers pings, reports every frame written.
struct Driven {
    call: Call,
    now: Instant,
    handed: u64,
    transmits: u64,
}

impl Driven {
    fn input(&mut self, input: Input<'_>) {
        self.call.handle_input(self.now, input);
        self.drain();
    }

    fn drain(&mut self) {
        let mut pong = None;
        while let Some(output) = self.call.poll_output() {
            match output {
                Output::Timeout { .. } => break,
                Output::UpstreamSend(text) => {
                    self.handed += 1;
                    black_box(text);
                }
                Output::UpstreamPing(payload) => {
                    self.handed += 1;
                    pong = Some(payload);
                }
                Output::Transmit { datagram, .. } => {
                    self.transmits += 1;
                    black_box(datagram);
                }
                other => {
                    black_box(other);
                }
            }
        }
        let handed = self.handed;
        self.call
            .handle_input(self.now, Input::UpstreamWritten(handed));
        if let Some(payload) = pong {
            self.call
                .handle_input(self.now, Input::UpstreamPong(&payload));
        }
        while let Some(output) = self.call.poll_output() {
            if matches!(output, Output::Timeout { .. }) {
                break;
            }
            black_box(output);
        }
    }
}

/// An answered, confirmed call of `codec` with `audio_format`, media in `direction`.
fn call(codec: Codec, audio_format: &str, direction: Direction) -> Driven {
    let config = Config::from_toml(&format!(
        "[upstreams.u]\nkind = \"fake\"\n[profiles.p]\nupstream = \"u\"\naudio_format = \"{audio_format}\"\n\
         [[routes]]\nprofile = \"p\"\n"
    ))
    .unwrap();
    let profile = config.profiles.into_values().next().unwrap();
    let now = Instant::now();
    let limits = CallLimits {
        max_duration: Duration::from_secs(7 * 24 * 3600),
        rtp_inactivity: Duration::from_secs(7 * 24 * 3600),
        ..CallLimits::default()
    };
    let setup = CallSetup {
        info: CallInfo {
            call_id: "bench".into(),
            route: "r".into(),
            profile: "p".into(),
            caller: "1".into(),
            callee: "2".into(),
        },
        profile,
        dialect: Dialect::OpenAiGa,
        codec: Some(codec),
        limits,
        seeds: MediaSeeds {
            rtp: RtpStart {
                ssrc: 1,
                sequence: 1,
                timestamp: 1,
            },
            rtcp: 1,
        },
        cname: "bench".into(),
        wall_clock: NtpTime(0),
    };
    let mut driven = Driven {
        call: Call::new(now, setup),
        now,
        handed: 0,
        transmits: 0,
    };
    driven.drain();
    driven.input(Input::UpstreamOpened);
    for text in [
        r#"{"type":"session.created","event_id":"e1","session":{"type":"realtime","id":"s"}}"#,
        r#"{"type":"session.updated","event_id":"e2","session":{"type":"realtime","id":"s"}}"#,
    ] {
        driven.input(Input::UpstreamText(text));
    }
    let (payload_type, clock_rate) = match codec {
        Codec::Opus => (111, 48_000),
        Codec::Pcma => (8, 8000),
        Codec::Pcmu => (0, 8000),
    };
    let negotiated = Negotiated {
        codec,
        payload_type,
        clock_rate,
        channels: if codec == Codec::Opus { 2 } else { 1 },
        ptime_ms: 20,
        telephone_event_pt: None,
        remote_rtp: PEER.parse().unwrap(),
        remote_rtcp: None,
        rtcp_mux: false,
        direction,
    };
    driven.input(Input::Dialog(DialogEvent::Answered));
    driven.input(Input::Dialog(DialogEvent::MediaNegotiated(negotiated)));
    driven.input(Input::Dialog(DialogEvent::Confirmed));
    for text in [
        r#"{"type":"response.created","event_id":"e3","response":{"object":"realtime.response","id":"resp_1","status":"in_progress","status_details":null,"output":[]}}"#,
        r#"{"type":"response.output_item.added","event_id":"e4","response_id":"resp_1","output_index":0,"item":{"id":"item_1","type":"message","role":"assistant","status":"in_progress","content":[]}}"#,
    ] {
        driven.input(Input::UpstreamText(text));
    }
    driven
}

fn caller_way(c: &mut Criterion, name: &str, codec: Codec, format: &str, payload: &[u8]) {
    let mut driven = call(codec, format, Direction::RecvOnly);
    let (pt, step) = match codec {
        Codec::Opus => (111, 960),
        _ => (0, 160),
    };
    let mut seq: u16 = 1;
    let mut ts: u32 = 0;
    let mut datagram = Vec::with_capacity(1500);
    let from = PEER.parse().unwrap();
    let mut step_once = |driven: &mut Driven| {
        datagram.clear();
        let header = RtpHeader {
            marker: false,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc: 0xCA11,
        };
        packet::write(&header, payload, &mut datagram);
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(step);
        driven.now += Duration::from_millis(20);
        driven.input(Input::Datagram {
            socket: Socket::Rtp,
            from,
            bytes: black_box(&datagram),
        });
    };
    // The path is the one measured: frames become appends.
    let before = driven.handed;
    for _ in 0..10 {
        step_once(&mut driven);
    }
    assert!(
        driven.handed >= before + 8,
        "{name}: caller frames reach the model"
    );
    c.bench_function(name, |b| b.iter(|| step_once(&mut driven)));
}

fn model_way(c: &mut Criterion, name: &str, codec: Codec, format: &str, audio: &[u8]) {
    let mut driven = call(codec, format, Direction::SendOnly);
    let delta = format!(
        r#"{{"type":"response.output_audio.delta","event_id":"e5","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"{}"}}"#,
        BASE64.encode(audio)
    );
    let step_once = |driven: &mut Driven| {
        driven.input(Input::UpstreamText(black_box(&delta)));
        driven.now += Duration::from_millis(20);
        driven.input(Input::Timeout);
    };
    let before = driven.transmits;
    for _ in 0..10 {
        step_once(&mut driven);
    }
    assert!(
        driven.transmits >= before + 8,
        "{name}: model frames leave as RTP"
    );
    c.bench_function(name, |b| b.iter(|| step_once(&mut driven)));
}

fn calls(c: &mut Criterion) {
    let ulaw: Vec<u8> = (0..160u32).map(|i| (i * 37 % 256) as u8).collect();
    let pcm24: Vec<i16> = (0..480)
        .map(|i| ((f64::from(i) * 0.13).sin() * 8000.0) as i16)
        .collect();
    let pcm16: Vec<u8> = pcm24.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut opus = Vec::new();
    OpusEncoder::new(EncoderConfig::default())
        .unwrap()
        .encode(&pcm24, &mut opus)
        .unwrap();

    caller_way(
        c,
        "call_g711_passthrough_caller_frame",
        Codec::Pcmu,
        "g711_ulaw",
        &ulaw,
    );
    model_way(
        c,
        "call_g711_passthrough_model_frame",
        Codec::Pcmu,
        "g711_ulaw",
        &ulaw,
    );
    caller_way(
        c,
        "call_g711_pcm16_caller_frame",
        Codec::Pcmu,
        "pcm16",
        &ulaw,
    );
    model_way(
        c,
        "call_g711_pcm16_model_frame",
        Codec::Pcmu,
        "pcm16",
        &pcm16,
    );
    caller_way(
        c,
        "call_opus_pcm16_caller_frame",
        Codec::Opus,
        "pcm16",
        &opus,
    );
    model_way(
        c,
        "call_opus_pcm16_model_frame",
        Codec::Opus,
        "pcm16",
        &pcm16,
    );
}

criterion_group!(benches, calls);
criterion_main!(benches);
