//! Cost of the realtime session core on the media path, per unit of audio:
//! - caller audio out: one 20 ms frame through `append_audio` + `poll_transmit` (base64 and the
//!   JSON of `input_audio_buffer.append`), G.711 (160 bytes) and pcm16 (960 bytes);
//! - model audio in: one `response.output_audio.delta` frame carrying 100 ms of audio through
//!   `handle_text` + `poll_event` (JSON parse, base64 decode, ledger), G.711 (800 bytes) and
//!   pcm16 (4800 bytes).
//!
//! A call sends 50 caller frames a second and receives the model's audio in deltas of varying
//! size; per second of model audio that is ten of the 100 ms deltas measured here.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Instant;

use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use sip_realtime_bridge::config::{Config, ProfileConfig};
use sip_realtime_bridge::realtime::{Dialect, Session, SessionEvent};

fn profile(format: &str) -> ProfileConfig {
    let config = Config::from_toml(&format!(
        "[upstreams.f]\nkind = \"fake\"\n[profiles.p]\nupstream = \"f\"\naudio_format = \"{format}\"\n\
         [[routes]]\nprofile = \"p\"\n"
    ))
    .unwrap();
    config.profiles.into_values().next().unwrap()
}

/// A session past set-up, with a response and its audio item open.
fn ready_session(format: &str, now: Instant) -> Session {
    let mut session = Session::new(&profile(format), Dialect::OpenAiGa, now);
    let feed = |s: &mut Session, v: serde_json::Value| s.handle_text(now, &v.to_string());
    feed(
        &mut session,
        json!({"type": "session.created", "event_id": "e1",
               "session": {"type": "realtime", "id": "sess_1", "expires_at": 1_767_229_200_u64}}),
    );
    feed(
        &mut session,
        json!({"type": "session.updated", "event_id": "e2",
               "session": {"type": "realtime", "id": "sess_1"}}),
    );
    feed(
        &mut session,
        json!({"type": "response.created", "event_id": "e3",
               "response": {"object": "realtime.response", "id": "resp_1",
                            "status": "in_progress", "output": []}}),
    );
    feed(
        &mut session,
        json!({"type": "response.output_item.added", "event_id": "e4", "response_id": "resp_1",
               "output_index": 0,
               "item": {"id": "item_1", "object": "realtime.item", "type": "message",
                        "role": "assistant", "status": "in_progress", "content": []}}),
    );
    while session.poll_transmit().is_some() {}
    while session.poll_event().is_some() {}
    assert!(session.is_ready());
    session
}

fn speech_like(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x2545_F491;
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

fn caller_audio_out(c: &mut Criterion) {
    for (format, bytes) in [("g711_ulaw", 160), ("pcm16", 960)] {
        let now = Instant::now();
        let mut session = ready_session(format, now);
        let frame = speech_like(bytes);
        session.append_audio(&frame);
        let text = session.poll_transmit().unwrap();
        assert!(text.contains("input_audio_buffer.append"), "{text}");
        c.bench_function(&format!("append_20ms_{format}"), |b| {
            b.iter(|| {
                session.append_audio(black_box(&frame));
                while let Some(text) = session.poll_transmit() {
                    black_box(text);
                }
            })
        });
    }
}

fn model_audio_in(c: &mut Criterion) {
    for (format, bytes) in [("g711_ulaw", 800), ("pcm16", 4800)] {
        let now = Instant::now();
        let mut session = ready_session(format, now);
        let delta = json!({
            "type": "response.output_audio.delta", "event_id": "event_D1",
            "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0,
            "delta": base64::engine::general_purpose::STANDARD.encode(speech_like(bytes)),
        })
        .to_string();
        // What is measured must be the audio path, not an error path.
        session.handle_text(now, &delta);
        assert!(matches!(
            session.poll_event(),
            Some(SessionEvent::AudioDelta { audio, .. }) if audio.len() == bytes
        ));
        c.bench_function(&format!("delta_100ms_{format}"), |b| {
            b.iter(|| {
                session.handle_text(now, black_box(&delta));
                while let Some(event) = session.poll_event() {
                    black_box(event);
                }
            })
        });
    }
}

criterion_group!(benches, caller_audio_out, model_audio_in);
criterion_main!(benches);
