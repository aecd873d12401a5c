//! Scenario tests of the audio bridge with simulated time: the server's JSON is scripted as in
//! `realtime::tests`, RTP leaves the pacer at the slots the clock makes due.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::*;
use crate::audio::g711;
use crate::config::Config;
use crate::realtime::Dialect;
use crate::rtp::packet;
use crate::rtp::playout::{PacerConfig, RtpStart};

const MS20: Duration = Duration::from_millis(20);

fn profile(body: &str) -> ProfileConfig {
    let config = Config::from_toml(&format!(
        "[upstreams.u]\nkind = \"fake\"\n[profiles.p]\nupstream = \"u\"\n{body}\n\
         [[routes]]\nprofile = \"p\"\n"
    ))
    .unwrap();
    config.profiles.into_values().next().unwrap()
}

fn pacer_config(law: G711Law) -> PacerConfig {
    match law {
        G711Law::Ulaw => PacerConfig::pcmu(),
        G711Law::Alaw => PacerConfig {
            payload_type: 8,
            silence: vec![PCMA_SILENCE; 160],
            ..PacerConfig::pcmu()
        },
    }
}

fn rtp_start() -> RtpStart {
    RtpStart {
        ssrc: 0x1234_5678,
        sequence: 100,
        timestamp: 1000,
    }
}

struct Sim {
    bridge: AudioBridge,
    t0: Instant,
    now: Instant,
    /// RTP payloads sent, with the time they left.
    rtp: Vec<(Instant, Vec<u8>)>,
    /// RTP timestamps of the packets in `rtp`.
    timestamps: Vec<u32>,
    /// WebSocket events sent, `event_id` removed.
    ws: Vec<Value>,
    events: Vec<BridgeEvent>,
    /// Items announced to the bridge (`response.output_item.added`), as the service does
    /// before their audio.
    announced: std::collections::HashSet<String>,
}

impl Sim {
    /// A bridge whose session is not ready yet.
    fn connecting(body: &str, law: G711Law) -> Sim {
        let t0 = Instant::now();
        let pacer = Pacer::new(pacer_config(law), rtp_start(), t0).unwrap();
        let bridge = AudioBridge::new(&profile(body), Dialect::OpenAiGa, law, pacer, t0).unwrap();
        Sim::with_bridge(bridge, t0)
    }

    /// A simulation of `bridge`, whose pacer's slot 0 is due at `t0`.
    fn with_bridge(bridge: AudioBridge, t0: Instant) -> Sim {
        Sim {
            bridge,
            t0,
            now: t0,
            rtp: Vec::new(),
            timestamps: Vec::new(),
            ws: Vec::new(),
            events: Vec::new(),
            announced: std::collections::HashSet::new(),
        }
    }

    /// A bridge whose session is ready, everything drained and forgotten.
    fn ready(body: &str, law: G711Law) -> Sim {
        let mut sim = Sim::connecting(body, law);
        sim.make_ready();
        sim
    }

    fn make_ready(&mut self) {
        self.feed(json!({"type": "session.created", "event_id": "event_C1",
            "session": {"type": "realtime", "object": "realtime.session", "id": "sess_1",
                        "model": "gpt-realtime", "expires_at": 1_767_229_200_u64}}));
        self.feed(json!({"type": "session.updated", "event_id": "event_C2",
            "session": {"type": "realtime", "id": "sess_1", "expires_at": 1_767_229_200_u64}}));
        assert!(self.bridge.session().is_ready());
        assert!(
            self.events
                .iter()
                .any(|e| matches!(e, BridgeEvent::Ready { .. }))
        );
        self.ws.clear();
        self.events.clear();
    }

    fn drain(&mut self) {
        while let Some(text) = self.bridge.poll_ws_transmit() {
            let mut value: Value = serde_json::from_str(&text).unwrap();
            value.as_object_mut().unwrap().remove("event_id").unwrap();
            self.ws.push(value);
        }
        while let Some(bytes) = self.bridge.poll_rtp_transmit() {
            let packet = packet::parse(&bytes).unwrap();
            self.rtp.push((self.now, packet.payload.to_vec()));
            self.timestamps.push(packet.header.timestamp);
        }
        while let Some(event) = self.bridge.poll_event() {
            self.events.push(event);
        }
    }

    fn feed(&mut self, value: Value) {
        let kind = value["type"].as_str().unwrap_or_default();
        if kind == "response.output_audio.delta" || kind == "response.audio.delta" {
            let item = value["item_id"].as_str().unwrap_or_default().to_owned();
            if self.announced.insert(item.clone()) {
                let added = json!({"type": "response.output_item.added", "event_id": "event_I",
                    "response_id": value["response_id"], "output_index": 0,
                    "item": {"id": item, "type": "message", "role": "assistant",
                             "status": "in_progress", "content": []}});
                self.bridge.handle_ws_text(self.now, &added.to_string());
            }
        }
        self.bridge.handle_ws_text(self.now, &value.to_string());
        self.drain();
    }

    fn caller_frame(&mut self, payload: &[u8]) {
        self.bridge.handle_caller_frame(self.now, payload);
        self.drain();
    }

    /// Wakes at every deadline up to and including `until`.
    fn run_until(&mut self, until: Instant) {
        while let Some(deadline) = self.bridge.poll_timeout() {
            if deadline > until {
                break;
            }
            self.now = self.now.max(deadline);
            self.bridge.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
    }

    /// Runs the pacer up to and including slot `slot` (due at `t0 + slot * 20 ms`).
    fn run_to_slot(&mut self, slot: u32) {
        self.run_until(self.t0 + MS20 * slot);
    }

    /// The `audio` of every `input_audio_buffer.append` sent, decoded and concatenated, and
    /// how many appends there were.
    fn appended(&self) -> (Vec<u8>, usize) {
        let appends: Vec<&Value> = self
            .ws
            .iter()
            .filter(|v| v["type"] == "input_audio_buffer.append")
            .collect();
        let mut audio = Vec::new();
        for append in &appends {
            audio.extend(BASE64.decode(append["audio"].as_str().unwrap()).unwrap());
        }
        (audio, appends.len())
    }

    fn sent_of_type(&self, kind: &str) -> Vec<Value> {
        self.ws
            .iter()
            .filter(|v| v["type"] == kind)
            .cloned()
            .collect()
    }
}

fn delta(response: &str, item: &str, audio: &[u8]) -> Value {
    json!({"type": "response.output_audio.delta", "event_id": "event_A",
           "response_id": response, "item_id": item, "output_index": 0, "content_index": 0,
           "delta": BASE64.encode(audio)})
}

fn done(response: &str, item: &str) -> Value {
    json!({"type": "response.output_audio.done", "event_id": "event_D",
           "response_id": response, "item_id": item, "output_index": 0, "content_index": 0})
}

fn response_created(id: &str) -> Value {
    json!({"type": "response.created", "event_id": "event_R1",
           "response": {"object": "realtime.response", "id": id, "status": "in_progress",
                        "status_details": null, "output": []}})
}

fn response_done(id: &str, status: &str) -> Value {
    json!({"type": "response.done", "event_id": "event_R2",
           "response": {"object": "realtime.response", "id": id, "status": status,
                        "status_details": null, "output": []}})
}

fn speech_started(audio_start_ms: u64) -> Value {
    json!({"type": "input_audio_buffer.speech_started", "event_id": "event_S",
           "audio_start_ms": audio_start_ms, "item_id": "item_U1"})
}

fn error_frame(code: Option<&str>, message: &str) -> Value {
    json!({"type": "error", "event_id": "event_E",
           "error": {"type": "invalid_request_error", "code": code, "message": message,
                     "param": null, "event_id": null}})
}

/// A recognisable, non-silent byte pattern (never 0xFF nor 0xD5).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 200) as u8 + 1).collect()
}

fn is_silence(payload: &[u8]) -> bool {
    payload.len() == 160 && payload.iter().all(|&b| b == PCMU_SILENCE)
}

// ---- caller side --------------------------------------------------------------------------

#[test]
fn same_law_caller_audio_passes_through_byte_exact_and_early_frames_are_dropped() {
    let mut sim = Sim::connecting("audio_format = \"g711_ulaw\"", G711Law::Ulaw);
    // Before the session is ready: dropped and counted.
    sim.caller_frame(&[0x11; 160]);
    sim.caller_frame(&[0x22; 160]);
    assert!(
        sim.ws
            .iter()
            .all(|v| v["type"] != "input_audio_buffer.append")
    );
    sim.make_ready();

    let frames: Vec<Vec<u8>> = (0..25_u8)
        .map(|n| (0..160_u8).map(|i| i.wrapping_mul(7) ^ n).collect())
        .collect();
    for frame in &frames {
        sim.caller_frame(frame);
    }
    let (audio, appends) = sim.appended();
    assert_eq!(appends, 25);
    assert_eq!(audio, frames.concat());

    let stats = sim.bridge.stats();
    assert_eq!(stats.caller_frames_in, 27);
    assert_eq!(stats.caller_frames_dropped, 2);
    assert_eq!(stats.caller_frames_appended, 25);
    assert_eq!(
        sim.bridge.session().stats().input_audio_bytes_sent,
        25 * 160
    );
}

#[test]
fn other_law_caller_audio_is_transcoded() {
    let mut sim = Sim::ready("audio_format = \"g711_ulaw\"", G711Law::Alaw);
    let frame: Vec<u8> = (0..160_u8).map(|i| i.wrapping_mul(13)).collect();
    sim.caller_frame(&frame);
    let expected: Vec<u8> = frame
        .iter()
        .map(|&a| g711::ulaw_encode(g711::alaw_decode(a)))
        .collect();
    assert_eq!(sim.appended(), (expected, 1));
}

#[test]
fn pcm16_caller_tone_arrives_as_480_samples_at_24_khz() {
    let mut sim = Sim::ready("audio_format = \"pcm16\"", G711Law::Ulaw);
    let amplitude = 8000.0_f64;
    let samples: Vec<i16> = (0..160 * 20)
        .map(|n| {
            let t = f64::from(n) / 8000.0;
            (amplitude * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
        })
        .collect();
    let mut encoded = Vec::new();
    G711Law::Ulaw.encode_into(&samples, &mut encoded);
    for frame in encoded.chunks(160) {
        sim.caller_frame(frame);
    }
    let appends = sim.sent_of_type("input_audio_buffer.append");
    assert_eq!(appends.len(), 20);
    for (index, append) in appends.iter().enumerate() {
        let bytes = BASE64.decode(append["audio"].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), 960, "frame {index}: 480 s16 samples");
        if index < 2 {
            continue; // the resampler's 2 ms delay and settling
        }
        let pcm: Vec<f64> = bytes
            .chunks_exact(2)
            .map(|p| f64::from(i16::from_le_bytes([p[0], p[1]])))
            .collect();
        let rms = (pcm.iter().map(|s| s * s).sum::<f64>() / pcm.len() as f64).sqrt();
        let expected = amplitude / std::f64::consts::SQRT_2;
        assert!(
            (rms - expected).abs() < expected * 0.1,
            "frame {index}: rms {rms}, expected about {expected}"
        );
    }
}

// ---- model side ---------------------------------------------------------------------------

#[test]
fn odd_sized_g711_deltas_are_reframed_with_a_partial_last_frame() {
    let mut sim = Sim::ready("audio_format = \"g711_ulaw\"", G711Law::Ulaw);
    let audio = pattern(603);
    let mut offset = 0;
    sim.feed(response_created("resp_1"));
    for size in [1, 159, 7, 333, 100, 3] {
        sim.feed(delta("resp_1", "item_A", &audio[offset..offset + size]));
        offset += size;
    }
    assert_eq!(offset, 603);
    // Three whole frames queued; 123 octets wait for more or for the done.
    assert_eq!(sim.bridge.stats().model_frames_queued, 3);
    sim.feed(done("resp_1", "item_A"));
    assert_eq!(sim.bridge.stats().model_frames_queued, 4);
    // 123 octets = 15.375 ms.
    assert_eq!(sim.bridge.pacer().queued_ms(), 60 + 15);

    sim.run_to_slot(5);
    let payloads: Vec<&Vec<u8>> = sim.rtp.iter().map(|(_, p)| p).collect();
    assert_eq!(payloads.len(), 6);
    assert!(payloads.iter().all(|p| p.len() == 160));
    assert_eq!(payloads[0], &audio[0..160]);
    assert_eq!(payloads[1], &audio[160..320]);
    assert_eq!(payloads[2], &audio[320..480]);
    let mut last = audio[480..603].to_vec();
    last.resize(160, PCMU_SILENCE);
    assert_eq!(payloads[3], &last);
    assert!(is_silence(payloads[4]) && is_silence(payloads[5]));
    assert_eq!(sim.bridge.stats().model_frames_sent, 4);
    assert!(sim.events.iter().any(|e| *e
        == BridgeEvent::Playout(PlayoutEvent::ItemFinished {
            part: AudioPart::new("resp_1", "item_A", 0),
            sent_ms: 75,
        })));
}

#[test]
fn odd_sized_pcm16_deltas_even_splitting_a_sample_make_whole_frames() {
    let mut sim = Sim::ready("audio_format = \"pcm16\"", G711Law::Alaw);
    // 3 frames (1440 samples at 24 kHz) and 300 samples more, as s16le, in odd-sized deltas.
    let samples: Vec<i16> = (0..1440 + 300)
        .map(|n| ((n * 37) % 4000 - 2000) as i16)
        .collect();
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut offset = 0;
    for size in [1, 3, 957, 1001, 77, 481].iter().cycle() {
        let end = (offset + size).min(bytes.len());
        sim.feed(delta("resp_1", "item_A", &bytes[offset..end]));
        offset = end;
        if offset == bytes.len() {
            break;
        }
    }
    assert_eq!(sim.bridge.stats().model_frames_queued, 3);
    sim.feed(done("resp_1", "item_A"));
    // 1740 samples at 24 kHz -> 580 at 8 kHz: 3 frames and 100 samples (12 ms).
    assert_eq!(sim.bridge.stats().model_frames_queued, 4);
    assert_eq!(sim.bridge.pacer().queued_ms(), 72);
    sim.run_to_slot(3);
    assert_eq!(sim.rtp.len(), 4);
    assert!(sim.rtp.iter().all(|(_, p)| p.len() == 160));
    // The padding of the last frame is A-law silence.
    assert!(sim.rtp[3].1[100..].iter().all(|&b| b == PCMA_SILENCE));
}

// ---- barge-in -----------------------------------------------------------------------------

/// 10 s of `item_A1` and 1 s of `item_A2` of `resp_1`, all received at once, with odd-sized
/// deltas.
fn model_speaks_fast(sim: &mut Sim) -> Vec<u8> {
    sim.feed(response_created("resp_1"));
    let first = pattern(80_000);
    for chunk in first.chunks(4001) {
        sim.feed(delta("resp_1", "item_A1", chunk));
    }
    sim.feed(done("resp_1", "item_A1"));
    for chunk in pattern(8000).chunks(999) {
        sim.feed(delta("resp_1", "item_A2", chunk));
    }
    sim.feed(done("resp_1", "item_A2"));
    first
}

#[test]
fn barge_in_mid_item_stops_playback_at_once_and_truncates_at_what_was_sent() {
    let mut sim = Sim::ready("audio_format = \"g711_ulaw\"", G711Law::Ulaw);
    let first = model_speaks_fast(&mut sim);
    assert_eq!(sim.bridge.stats().model_frames_queued, 500 + 50);

    // Slots 0..=36 run: N = 37 frames of item_A1 have left.
    const N: u32 = 37;
    sim.run_to_slot(N - 1);
    assert_eq!(sim.rtp.len(), N as usize);
    for (index, (_, payload)) in sim.rtp.iter().enumerate() {
        assert_eq!(payload, &first[index * 160..(index + 1) * 160]);
    }
    sim.ws.clear();

    // The caller speaks 5 ms into the next slot's wait.
    sim.now = sim.t0 + MS20 * (N - 1) + Duration::from_millis(5);
    sim.feed(speech_started(2_000));
    // The flush happened inside that call: nothing is queued any more.
    assert_eq!(sim.bridge.pacer().queued_frames(), 0);
    assert_eq!(
        sim.ws,
        vec![
            json!({"type": "conversation.item.truncate", "item_id": "item_A1",
                   "content_index": 0, "audio_end_ms": u64::from(N) * 20}),
            json!({"type": "conversation.item.delete", "item_id": "item_A2"}),
        ]
    );
    let barge_in = sim
        .events
        .iter()
        .find_map(|e| match e {
            BridgeEvent::BargeIn(b) => Some(b.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(barge_in.audio_start_ms, 2_000);
    assert_eq!(barge_in.caller_item_id, ItemId::from("item_U1"));
    assert_eq!(barge_in.flushed_frames, u64::from(550 - N));
    assert_eq!(barge_in.interrupted, vec![ResponseId::from("resp_1")]);
    assert_eq!(
        barge_in.truncated,
        vec![Truncated {
            item_id: ItemId::from("item_A1"),
            content_index: 0,
            sent_ms: u64::from(N) * 20,
            audio_end_ms: u64::from(N) * 20,
        }]
    );
    assert_eq!(barge_in.deleted, vec![ItemId::from("item_A2")]);

    // Late deltas of the interrupted response are dropped, then it ends cancelled.
    sim.feed(delta("resp_1", "item_A2", &pattern(1601)));
    sim.feed(delta("resp_1", "item_A3", &pattern(320)));
    sim.feed(done("resp_1", "item_A3"));
    sim.feed(response_done("resp_1", "cancelled"));
    // The service's answers to the race: counted, not fatal.
    sim.feed(error_frame(
        None,
        "Audio content of 700ms is already shorter than 740ms",
    ));
    sim.feed(error_frame(
        Some("response_cancel_not_active"),
        "Cancellation failed: no active response found",
    ));

    // One second later: only silence has left since the event.
    let sent_before = sim.rtp.len();
    sim.run_to_slot(N - 1 + 50);
    assert_eq!(sim.rtp.len(), sent_before + 50);
    assert!(sim.rtp[sent_before..].iter().all(|(_, p)| is_silence(p)));

    let stats = sim.bridge.stats();
    assert_eq!(stats.model_frames_sent, u64::from(N));
    assert_eq!(stats.frames_after_barge_in, 0);
    assert_eq!(stats.max_reaction, Duration::ZERO);
    assert_eq!(stats.barge_ins, 1);
    assert_eq!(stats.truncates_sent, 1);
    assert_eq!(stats.deletes_sent, 1);
    assert_eq!(stats.late_deltas_dropped, 2);
    assert_eq!(stats.truncate_errors, 1);
    assert_eq!(stats.cancel_not_active_errors, 1);
    assert!(sim.bridge.session().is_ready());
    assert!(
        !sim.events
            .iter()
            .any(|e| matches!(e, BridgeEvent::SessionEnded { .. }))
    );

    // The next response plays normally.
    sim.feed(response_created("resp_2"));
    sim.feed(delta("resp_2", "item_B1", &[0x42; 320]));
    sim.feed(done("resp_2", "item_B1"));
    let sent_before = sim.rtp.len();
    sim.run_to_slot(N - 1 + 53);
    let after: Vec<&Vec<u8>> = sim.rtp[sent_before..].iter().map(|(_, p)| p).collect();
    assert_eq!(after.len(), 3);
    assert_eq!(after[0], &vec![0x42; 160]);
    assert_eq!(after[1], &vec![0x42; 160]);
    assert!(is_silence(after[2]));
    assert_eq!(sim.bridge.stats().frames_after_barge_in, 0);
    assert_eq!(sim.bridge.stats().model_frames_sent, u64::from(N) + 2);
}

#[test]
fn barge_in_before_anything_played_deletes_and_a_part_still_assembling_is_deleted() {
    let mut sim = Sim::ready("audio_format = \"g711_ulaw\"", G711Law::Ulaw);
    sim.feed(response_created("resp_1"));
    sim.feed(delta("resp_1", "item_A1", &pattern(400)));
    sim.feed(done("resp_1", "item_A1"));
    // item_A2 has 100 octets: less than a frame, never reached the pacer.
    sim.feed(delta("resp_1", "item_A2", &pattern(100)));
    sim.ws.clear();
    sim.feed(speech_started(0));
    assert_eq!(
        sim.ws,
        vec![
            json!({"type": "conversation.item.delete", "item_id": "item_A1"}),
            json!({"type": "conversation.item.delete", "item_id": "item_A2"}),
        ]
    );
    sim.run_to_slot(10);
    assert!(sim.rtp.iter().all(|(_, p)| is_silence(p)));
    assert_eq!(sim.bridge.stats().model_frames_sent, 0);
}

#[test]
fn a_fully_played_item_needs_nothing_and_one_that_ran_dry_is_truncated() {
    let mut sim = Sim::ready("audio_format = \"g711_ulaw\"", G711Law::Ulaw);
    sim.feed(response_created("resp_1"));
    sim.feed(delta("resp_1", "item_A1", &pattern(320)));
    sim.feed(done("resp_1", "item_A1"));
    // item_A2 is still being produced: 2 frames so far, both played.
    sim.feed(delta("resp_1", "item_A2", &pattern(330)));
    sim.run_to_slot(6);
    assert_eq!(sim.bridge.stats().model_frames_sent, 4);
    sim.ws.clear();
    sim.feed(speech_started(500));
    assert_eq!(
        sim.ws,
        vec![
            json!({"type": "conversation.item.truncate", "item_id": "item_A2",
                    "content_index": 0, "audio_end_ms": 40})
        ]
    );
}

#[test]
fn without_interrupt_response_playback_continues_and_nothing_is_truncated() {
    let mut sim = Sim::ready(
        "audio_format = \"g711_ulaw\"\n\
         turn_detection = { type = \"server_vad\", interrupt_response = false }",
        G711Law::Ulaw,
    );
    let first = model_speaks_fast(&mut sim);
    sim.run_to_slot(9);
    sim.ws.clear();
    sim.feed(speech_started(100));
    assert!(sim.ws.is_empty(), "{:?}", sim.ws);
    assert_eq!(sim.bridge.pacer().queued_frames(), 540);
    // Deltas keep being accepted.
    sim.feed(delta("resp_1", "item_A3", &pattern(160)));
    sim.run_to_slot(29);
    assert_eq!(sim.rtp.len(), 30);
    for (index, (_, payload)) in sim.rtp.iter().enumerate() {
        assert_eq!(payload, &first[index * 160..(index + 1) * 160]);
    }
    let stats = sim.bridge.stats();
    assert_eq!(
        (stats.barge_ins, stats.truncates_sent, stats.deletes_sent),
        (0, 0, 0)
    );
    assert_eq!(stats.speech_started, 1);
    assert_eq!(stats.late_deltas_dropped, 0);
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(e, BridgeEvent::Session(SessionEvent::SpeechStarted { .. })))
    );
}

// ---- session lifecycle --------------------------------------------------------------------

#[test]
fn the_session_ending_is_reported_once() {
    let mut sim = Sim::ready("", G711Law::Ulaw);
    sim.feed(json!({"type": "error", "event_id": "e",
        "error": {"type": "invalid_request_error", "code": "session_expired",
                  "message": "Your session hit the maximum duration of 60 minutes.",
                  "param": null, "event_id": null}}));
    sim.bridge.handle_ws_closed(sim.now, Some(1001), "bye");
    sim.drain();
    let ended: Vec<&BridgeEvent> = sim
        .events
        .iter()
        .filter(|e| matches!(e, BridgeEvent::SessionEnded { .. }))
        .collect();
    assert_eq!(ended.len(), 1);
    // Caller audio after the end is dropped.
    sim.caller_frame(&[0xFF; 160]);
    assert_eq!(sim.bridge.stats().caller_frames_dropped, 1);
}

#[test]
fn setup_timeout_ends_the_session_and_no_input_panics() {
    let mut sim = Sim::connecting("", G711Law::Ulaw);
    for text in ["", "{", "null", "{\"type\": 5}", "[1,2]"] {
        sim.bridge.handle_ws_text(sim.now, text);
    }
    sim.caller_frame(&[]);
    sim.caller_frame(&[0x00; 7]);
    sim.run_until(sim.t0 + Duration::from_secs(11));
    assert!(sim.events.iter().any(|e| matches!(
        e,
        BridgeEvent::SessionEnded {
            reason: EndReason::SetupFailed(_)
        }
    )));
    // The pacer kept its clock: 551 slots of silence.
    assert_eq!(sim.rtp.len(), 551);
}

#[test]
fn a_pacer_not_at_8_khz_is_refused() {
    let t0 = Instant::now();
    let config = PacerConfig {
        clock_rate: 48_000,
        ..PacerConfig::pcmu()
    };
    let start = RtpStart {
        ssrc: 1,
        sequence: 1,
        timestamp: 1,
    };
    let pacer = Pacer::new(config, start, t0).unwrap();
    assert!(matches!(
        AudioBridge::new(&profile(""), Dialect::OpenAiGa, G711Law::Ulaw, pacer, t0),
        Err(BridgeError::NotG711 { clock_rate: 48_000 })
    ));
}

#[test]
fn speech_while_nothing_plays_is_no_barge_in_but_an_active_response_is_interrupted() {
    let mut sim = Sim::ready("audio_format = \"g711_ulaw\"", G711Law::Ulaw);
    sim.feed(speech_started(10));
    assert!(sim.ws.is_empty());
    assert!(
        sim.events
            .iter()
            .any(|e| matches!(e, BridgeEvent::Session(SessionEvent::SpeechStarted { .. })))
    );
    assert_eq!(sim.bridge.stats().barge_ins, 0);

    // A response has started but no audio has come yet: it is interrupted, its audio dropped.
    sim.events.clear();
    sim.feed(response_created("resp_1"));
    sim.feed(speech_started(900));
    assert!(
        sim.ws.is_empty(),
        "nothing to truncate or delete: {:?}",
        sim.ws
    );
    assert!(sim.events.iter().any(|e| matches!(
        e,
        BridgeEvent::BargeIn(b) if b.interrupted == vec![ResponseId::from("resp_1")]
    )));
    sim.feed(delta("resp_1", "item_A1", &pattern(800)));
    sim.run_to_slot(10);
    assert!(sim.rtp.iter().all(|(_, p)| is_silence(p)));
    let stats = sim.bridge.stats();
    assert_eq!((stats.speech_started, stats.barge_ins), (2, 1));
    assert_eq!(stats.late_deltas_dropped, 1);
}

#[test]
fn pcm16_barge_in_truncates_at_the_frames_sent() {
    let mut sim = Sim::ready("audio_format = \"pcm16\"", G711Law::Ulaw);
    sim.feed(response_created("resp_1"));
    // 2 s at 24 kHz s16le = 96 000 octets, in odd-sized deltas.
    let bytes: Vec<u8> = (0..48_000_i32)
        .flat_map(|n| (((n * 31) % 6000 - 3000) as i16).to_le_bytes())
        .collect();
    for chunk in bytes.chunks(4321) {
        sim.feed(delta("resp_1", "item_A1", chunk));
    }
    assert_eq!(
        sim.bridge.session().received_ms(&"item_A1".into(), 0),
        Some(2000)
    );
    const N: u32 = 12;
    sim.run_to_slot(N - 1);
    assert_eq!(sim.bridge.stats().model_frames_sent, u64::from(N));
    sim.ws.clear();
    sim.feed(speech_started(300));
    assert_eq!(
        sim.ws,
        vec![
            json!({"type": "conversation.item.truncate", "item_id": "item_A1",
                    "content_index": 0, "audio_end_ms": u64::from(N) * 20})
        ]
    );
    let sent_before = sim.rtp.len();
    sim.run_to_slot(N + 20);
    assert!(sim.rtp[sent_before..].iter().all(|(_, p)| is_silence(p)));
}

#[test]
fn semantic_vad_barge_in_truncates_and_its_interrupt_response_false_is_honoured() {
    for (interrupt, truncates) in [(true, 1), (false, 0)] {
        let mut sim = Sim::ready(
            &format!(
                "audio_format = \"g711_ulaw\"\n\
                 turn_detection = {{ type = \"semantic_vad\", interrupt_response = {interrupt} }}"
            ),
            G711Law::Ulaw,
        );
        model_speaks_fast(&mut sim);
        sim.run_to_slot(9);
        sim.ws.clear();
        sim.feed(speech_started(100));
        let stats = sim.bridge.stats();
        assert_eq!(
            stats.truncates_sent, truncates,
            "interrupt_response = {interrupt}"
        );
        if interrupt {
            assert_eq!(sim.bridge.pacer().queued_frames(), 0, "flushed at once");
            assert_eq!(sim.ws[0]["type"], "conversation.item.truncate");
            assert_eq!(sim.ws[0]["audio_end_ms"], 200);
        } else {
            assert!(sim.ws.is_empty(), "{:?}", sim.ws);
            assert!(sim.bridge.pacer().queued_frames() > 0, "playback goes on");
        }
    }
}

mod opus;

#[test]
fn auto_format_on_a_g711_call_configures_the_session_for_passthrough() {
    for (law, wire) in [(G711Law::Ulaw, "audio/pcmu"), (G711Law::Alaw, "audio/pcma")] {
        let mut sim = Sim::connecting("", law);
        sim.feed(json!({"type": "session.created", "event_id": "event_C1",
            "session": {"type": "realtime", "object": "realtime.session", "id": "sess_1",
                        "model": "gpt-realtime", "expires_at": 1_767_229_200_u64}}));
        let update = sim.sent_of_type("session.update");
        assert_eq!(update.len(), 1, "{:?}", sim.ws);
        let audio = &update[0]["session"]["audio"];
        assert_eq!(audio["input"]["format"]["type"], wire, "{audio}");
        assert_eq!(audio["output"]["format"]["type"], wire, "{audio}");
        sim.feed(json!({"type": "session.updated", "event_id": "event_C2",
            "session": {"type": "realtime", "id": "sess_1"}}));
        // The model's G.711 bytes are counted at 8 per ms: a truncate clamps correctly.
        sim.feed(response_created("resp_1"));
        sim.feed(delta("resp_1", "item_A", &pattern(800)));
        assert_eq!(
            sim.bridge.session().received_ms(&"item_A".into(), 0),
            Some(100)
        );
    }
}
