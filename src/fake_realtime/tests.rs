//! Core tests of the fake server on simulated time: no sockets, no clock.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::{FakeDialect, FakeOptions, FakeReply, FakeSession, Outgoing, ToolStep};
use crate::audio::G711Law;

/// Drives one session: sends events, advances simulated time, collects what it sends.
struct Harness {
    session: FakeSession,
    t0: Instant,
    now: Instant,
    /// Every text event sent so far, with the simulated time it was produced at.
    log: Vec<(Instant, Value)>,
    closed: Option<(u16, String)>,
}

impl Harness {
    fn new(dialect: FakeDialect, options: FakeOptions) -> Self {
        let t0 = Instant::now();
        let mut harness = Self {
            session: FakeSession::new(dialect, &options, t0).with_unix_time(1_800_000_000),
            t0,
            now: t0,
            log: Vec::new(),
            closed: None,
        };
        harness.drain();
        harness
    }

    fn ga(options: FakeOptions) -> Self {
        Self::new(FakeDialect::OpenAiGa, options)
    }

    fn preview(options: FakeOptions) -> Self {
        Self::new(FakeDialect::AzurePreview, options)
    }

    fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(outgoing) = self.session.poll_transmit() {
            match outgoing {
                Outgoing::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    self.log.push((self.now, value.clone()));
                    out.push(value);
                }
                Outgoing::Close { code, reason } => self.closed = Some((code, reason)),
            }
        }
        out
    }

    fn send(&mut self, event: Value) -> Vec<Value> {
        self.send_text(&event.to_string())
    }

    fn send_text(&mut self, text: &str) -> Vec<Value> {
        self.session.handle_text(self.now, text);
        self.drain()
    }

    /// Runs timers up to `until` (inclusive), returning what was sent meanwhile.
    fn run_until(&mut self, until: Instant) -> Vec<Value> {
        let mut out = self.drain();
        while let Some(deadline) = self.session.poll_timeout() {
            if deadline > until {
                break;
            }
            self.now = self.now.max(deadline);
            self.session.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = self.now.max(until);
        out
    }

    fn run_for(&mut self, duration: Duration) -> Vec<Value> {
        let until = self.now + duration;
        self.run_until(until)
    }

    /// Streams raw input bytes in `chunk`-byte appends, advancing simulated time in step with
    /// the audio (real time), as a bridge does.
    fn stream(&mut self, bytes: &[u8], bytes_per_ms: usize, chunk: usize) -> Vec<Value> {
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            out.extend(self.send(json!({
                "type": "input_audio_buffer.append",
                "audio": BASE64.encode(piece),
            })));
            let ms = (piece.len() / bytes_per_ms) as u64;
            out.extend(self.run_for(Duration::from_millis(ms)));
        }
        out
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn find<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(events)))
}

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["type"] == kind).count()
}

/// `ms` of a sine at `rate` Hz with RMS `dbfs` (relative to a full-scale square wave).
fn sine(rate: u32, ms: u32, frequency: f64, dbfs: f64) -> Vec<i16> {
    let peak = 32768.0 * 10f64.powf(dbfs / 20.0) * std::f64::consts::SQRT_2;
    (0..rate / 1000 * ms)
        .map(|n| {
            (peak * (std::f64::consts::TAU * frequency * f64::from(n) / f64::from(rate)).sin())
                as i16
        })
        .collect()
}

/// 500 ms silence, 1 s of 300 Hz at -20 dBFS, 1 s silence, at `rate`.
fn turn_pcm(rate: u32) -> Vec<i16> {
    let mut pcm = vec![0_i16; (rate / 2) as usize];
    pcm.extend(sine(rate, 1000, 300.0, -20.0));
    pcm.extend(vec![0_i16; rate as usize]);
    pcm
}

fn pcm16_bytes(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn ulaw_bytes(pcm: &[i16]) -> Vec<u8> {
    let mut out = Vec::new();
    G711Law::Ulaw.encode_into(pcm, &mut out);
    out
}

fn ga_pcmu() -> Value {
    json!({"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcmu"}},
        "output": {"format": {"type": "audio/pcmu"}}}}})
}

fn deltas(events: &[Value]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter(|e| {
            e["type"] == "response.output_audio.delta" || e["type"] == "response.audio.delta"
        })
        .map(|e| BASE64.decode(e["delta"].as_str().unwrap()).unwrap())
        .collect()
}

fn tone(duration_ms: u32) -> FakeReply {
    FakeReply::Tone {
        frequency_hz: 440,
        duration_ms,
    }
}

// --- session.created / session.update -------------------------------------------------------

#[test]
fn ga_session_created_has_the_nested_shape() {
    let harness = Harness::ga(FakeOptions::default());
    let created = &harness.log[0].1;
    assert_eq!(created["type"], "session.created");
    assert!(created["event_id"].as_str().unwrap().starts_with("event_"));
    let session = &created["session"];
    assert_eq!(session["type"], "realtime");
    assert_eq!(session["object"], "realtime.session");
    assert!(session["id"].as_str().unwrap().starts_with("sess_"));
    assert_eq!(session["expires_at"], 1_800_000_000 + 3600);
    assert_eq!(
        session["audio"]["input"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    assert_eq!(session["audio"]["input"]["noise_reduction"], Value::Null);
    assert_eq!(
        session["audio"]["input"]["turn_detection"]["type"],
        "server_vad"
    );
    assert_eq!(session["audio"]["output"]["voice"], "marin");
    assert!(session.get("input_audio_format").is_none());
}

#[test]
fn preview_session_created_has_the_flat_shape_and_azure_expiry() {
    let harness = Harness::preview(FakeOptions::default());
    let session = &harness.log[0].1["session"];
    assert_eq!(session["input_audio_format"], "pcm16");
    assert_eq!(session["turn_detection"]["silence_duration_ms"], 200);
    assert_eq!(session["temperature"], 0.8);
    assert_eq!(session["expires_at"], 1_800_000_000 + 1800);
    assert!(session.get("audio").is_none());
    assert!(session.get("type").is_none());
}

#[test]
fn ga_update_merges_and_fills_turn_detection_defaults() {
    let mut harness = Harness::ga(FakeOptions::default());
    let out = harness.send(json!({"type": "session.update", "event_id": "u1", "session": {
        "type": "realtime", "instructions": "Be brief.",
        "audio": {"input": {"format": {"type": "audio/pcmu"}, "noise_reduction": {"type": "far_field"},
                            "turn_detection": {"type": "server_vad", "threshold": 0.7}},
                  "output": {"voice": "cedar"}}}}));
    assert_eq!(kinds(&out), ["session.updated"]);
    let session = &out[0]["session"];
    assert_eq!(session["instructions"], "Be brief.");
    assert_eq!(
        session["audio"]["input"]["format"],
        json!({"type": "audio/pcmu"})
    );
    assert_eq!(
        session["audio"]["input"]["noise_reduction"]["type"],
        "far_field"
    );
    let turn = &session["audio"]["input"]["turn_detection"];
    assert_eq!(turn["threshold"], 0.7);
    assert_eq!(turn["prefix_padding_ms"], 300);
    assert_eq!(turn["create_response"], true);
    // Untouched neighbours keep their values.
    assert_eq!(session["audio"]["output"]["voice"], "cedar");
    assert_eq!(session["audio"]["output"]["format"]["type"], "audio/pcm");
    assert_eq!(session["id"], harness.log[0].1["session"]["id"]);
}

#[test]
fn preview_update_is_flat() {
    let mut harness = Harness::preview(FakeOptions::default());
    let out = harness.send(json!({"type": "session.update", "session": {
        "input_audio_format": "g711_alaw", "output_audio_format": "g711_alaw",
        "input_audio_noise_reduction": {"type": "near_field"}, "voice": "verse",
        "turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}));
    assert_eq!(kinds(&out), ["session.updated"]);
    let session = &out[0]["session"];
    assert_eq!(session["input_audio_format"], "g711_alaw");
    assert_eq!(session["turn_detection"]["eagerness"], "high");
    assert_eq!(session["turn_detection"]["interrupt_response"], true);
}

// --- validation -----------------------------------------------------------------------------

fn expect_error(out: &[Value], code: &str, param: Option<&str>, event_id: Option<&str>) -> String {
    expect_error_code(out, Some(code), param, event_id)
}

/// Like [`expect_error`], for errors whose `code` may be `null`.
fn expect_error_code(
    out: &[Value],
    code: Option<&str>,
    param: Option<&str>,
    event_id: Option<&str>,
) -> String {
    assert_eq!(kinds(out), ["error"], "{out:?}");
    let error = &out[0]["error"];
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["code"].as_str(), code, "{error}");
    assert!(error.get("code").is_some(), "code is present (null or not)");
    assert!(
        error.get("event_id").is_some(),
        "event_id is present (null or not)"
    );
    assert_eq!(error["param"].as_str(), param, "{error}");
    assert_eq!(error["event_id"].as_str(), event_id, "{error}");
    error["message"].as_str().unwrap().to_owned()
}

#[test]
fn non_json_is_invalid_json() {
    let mut harness = Harness::ga(FakeOptions::default());
    let out = harness.send_text("{not json");
    expect_error(&out, "invalid_json", None, None);
}

#[test]
fn unknown_event_type_is_invalid_value_on_type() {
    let mut harness = Harness::ga(FakeOptions::default());
    let out = harness.send(json!({"type": "session.upd", "event_id": "e1"}));
    let message = expect_error(&out, "invalid_value", Some("type"), Some("e1"));
    assert!(message.contains("'session.update'"), "{message}");
}

#[test]
fn unknown_nested_field_names_its_dotted_path() {
    let mut harness = Harness::ga(FakeOptions::default());
    let out = harness.send(
        json!({"type": "session.update", "event_id": "e2", "session": {
        "type": "realtime", "audio": {"input": {"foo": 1}}}}),
    );
    let message = expect_error(
        &out,
        "unknown_parameter",
        Some("session.audio.input.foo"),
        Some("e2"),
    );
    assert_eq!(message, "Unknown parameter: 'session.audio.input.foo'.");
    // Beta-shaped fields on GA are unknown too.
    let out = harness.send(
        json!({"type": "session.update", "event_id": "e3", "session": {
        "type": "realtime", "input_audio_format": "pcm16"}}),
    );
    expect_error(
        &out,
        "unknown_parameter",
        Some("session.input_audio_format"),
        Some("e3"),
    );
    // ... and GA's temperature is gone.
    let out = harness.send(
        json!({"type": "session.update", "session": {"type": "realtime", "temperature": 0.8}}),
    );
    expect_error(&out, "unknown_parameter", Some("session.temperature"), None);
}

#[test]
fn ga_update_without_session_type_is_missing_required() {
    let mut harness = Harness::ga(FakeOptions::default());
    let out = harness.send(
        json!({"type": "session.update", "event_id": "e4", "session": {"instructions": "x"}}),
    );
    expect_error(
        &out,
        "missing_required_parameter",
        Some("session.type"),
        Some("e4"),
    );
}

#[test]
fn unknown_voices_are_invalid_values_and_known_ones_pass() {
    let mut harness = Harness::ga(FakeOptions::default());
    let out = harness.send(
        json!({"type": "session.update", "event_id": "v1", "session": {
        "type": "realtime", "audio": {"output": {"voice": "nobody"}}}}),
    );
    let message = expect_error(
        &out,
        "invalid_value",
        Some("session.audio.output.voice"),
        Some("v1"),
    );
    assert!(message.contains("nobody"), "{message}");
    let out = harness.send(json!({"type": "session.update", "session": {
        "type": "realtime", "audio": {"output": {"voice": "marin"}}}}));
    assert!(
        out.iter().any(|e| e["type"] == "session.updated"),
        "{out:?}"
    );
    // A custom voice is an object with an id.
    let out = harness.send(json!({"type": "session.update", "session": {
        "type": "realtime", "audio": {"output": {"voice": {"id": "voice_123"}}}}}));
    assert!(
        out.iter().any(|e| e["type"] == "session.updated"),
        "{out:?}"
    );

    let mut harness = Harness::preview(FakeOptions::default());
    let out = harness.send(
        json!({"type": "session.update", "event_id": "v2", "session": {
        "voice": "nobody"}}),
    );
    expect_error(&out, "invalid_value", Some("session.voice"), Some("v2"));
}

#[test]
fn boolean_noise_reduction_is_invalid_type_in_both_shapes() {
    let mut harness = Harness::ga(FakeOptions::default());
    let out = harness.send(
        json!({"type": "session.update", "event_id": "e5", "session": {
        "type": "realtime", "audio": {"input": {"noise_reduction": false}}}}),
    );
    let message = expect_error(
        &out,
        "invalid_type",
        Some("session.audio.input.noise_reduction"),
        Some("e5"),
    );
    assert!(
        message.contains("expected an object, but got a boolean"),
        "{message}"
    );

    let mut harness = Harness::preview(FakeOptions::default());
    let out = harness.send(
        json!({"type": "session.update", "event_id": "e6", "session": {
        "input_audio_noise_reduction": true}}),
    );
    expect_error(
        &out,
        "invalid_type",
        Some("session.input_audio_noise_reduction"),
        Some("e6"),
    );
    // null is fine: it turns noise reduction off.
    let out = harness
        .send(json!({"type": "session.update", "session": {"input_audio_noise_reduction": null}}));
    assert_eq!(kinds(&out), ["session.updated"]);
}

#[test]
fn enums_and_ranges_are_checked() {
    let mut harness = Harness::ga(FakeOptions::default());
    let cases = [
        (
            json!({"audio": {"input": {"turn_detection": {"type": "loud_vad"}}}}),
            "invalid_value",
            "session.audio.input.turn_detection.type",
        ),
        (
            json!({"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}}),
            "invalid_value",
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            json!({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 1.5}}}}),
            "decimal_above_max_value",
            "session.audio.input.turn_detection.threshold",
        ),
        // semantic_vad takes no threshold.
        (
            json!({"audio": {"input": {"turn_detection": {"type": "semantic_vad", "threshold": 0.5}}}}),
            "unknown_parameter",
            "session.audio.input.turn_detection.threshold",
        ),
        (
            json!({"audio": {"output": {"format": {"type": "audio/opus"}}}}),
            "invalid_value",
            "session.audio.output.format.type",
        ),
        (
            json!({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        (
            json!({"audio": {"input": {"format": {"type": "audio/pcmu", "rate": 8000}}}}),
            "unknown_parameter",
            "session.audio.input.format.rate",
        ),
        (
            json!({"audio": {"output": {"speed": 2.0}}}),
            "decimal_above_max_value",
            "session.audio.output.speed",
        ),
        (
            json!({"output_modalities": ["audio", "text"]}),
            "invalid_value",
            "session.output_modalities",
        ),
        (
            json!({"max_output_tokens": 5000}),
            "integer_above_max_value",
            "session.max_output_tokens",
        ),
        (
            json!({"instructions": 5}),
            "invalid_type",
            "session.instructions",
        ),
    ];
    for (index, (mut session, code, param)) in cases.into_iter().enumerate() {
        session["type"] = json!("realtime");
        let id = format!("case{index}");
        let out =
            harness.send(json!({"type": "session.update", "event_id": id, "session": session}));
        expect_error(&out, code, Some(param), Some(&id));
    }
    let mut harness = Harness::preview(FakeOptions::default());
    let out = harness.send(json!({"type": "session.update", "event_id": "p", "session": {"input_audio_format": "opus"}}));
    expect_error(
        &out,
        "invalid_value",
        Some("session.input_audio_format"),
        Some("p"),
    );
    let out = harness.send(json!({"type": "session.update", "session": {"temperature": 0.2}}));
    expect_error(
        &out,
        "decimal_below_min_value",
        Some("session.temperature"),
        None,
    );
}

#[test]
fn every_event_type_rejects_unknown_fields() {
    let mut harness = Harness::ga(FakeOptions::default());
    let events = [
        json!({"type": "input_audio_buffer.append", "audio": "", "foo": 1}),
        json!({"type": "input_audio_buffer.commit", "foo": 1}),
        json!({"type": "input_audio_buffer.clear", "foo": 1}),
        json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": []}, "foo": 1}),
        json!({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": 0, "foo": 1}),
        json!({"type": "conversation.item.delete", "item_id": "i", "foo": 1}),
        json!({"type": "conversation.item.retrieve", "item_id": "i", "foo": 1}),
        json!({"type": "response.create", "foo": 1}),
        json!({"type": "response.cancel", "foo": 1}),
    ];
    for event in events {
        let out = harness.send(event);
        expect_error(&out, "unknown_parameter", Some("foo"), None);
    }
    let out = harness.send(json!({"type": "conversation.item.create", "event_id": "x",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi", "lang": "en"}]}}));
    expect_error(
        &out,
        "unknown_parameter",
        Some("item.content[0].lang"),
        Some("x"),
    );
    let out = harness.send(json!({"type": "response.create", "response": {"audio": {"output": {"format": {"type": "audio/pcmu"}, "speed": 1}}}}));
    expect_error(
        &out,
        "unknown_parameter",
        Some("response.audio.output.speed"),
        None,
    );
    let out = harness
        .send(json!({"type": "conversation.item.truncate", "item_id": "i", "content_index": 0}));
    expect_error(
        &out,
        "missing_required_parameter",
        Some("audio_end_ms"),
        None,
    );
}

#[test]
fn garbage_never_panics_and_the_session_keeps_working() {
    let mut harness = Harness::ga(FakeOptions::default());
    let mut garbage: Vec<String> = vec![
        String::new(), "null".into(), "[]".into(), "42".into(), "\"x\"".into(), "{}".into(),
        r#"{"type":null}"#.into(), r#"{"type":"session.update"}"#.into(),
        r#"{"type":"session.update","session":[]}"#.into(),
        r#"{"type":"session.update","session":{"type":"realtime","audio":null}}"#.into(),
        r#"{"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":{"type":"server_vad","threshold":"x","silence_duration_ms":-5}}}}}"#.into(),
        r#"{"type":"input_audio_buffer.append","audio":"!!!not base64"}"#.into(),
        r#"{"type":"input_audio_buffer.append","audio":"AQ=="}"#.into(),
        r#"{"type":"conversation.item.truncate","item_id":"x","content_index":0,"audio_end_ms":18446744073709551615}"#.into(),
        r#"{"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"nope","output":"x"}}"#.into(),
        r#"{"type":"response.cancel","response_id":"resp_x"}"#.into(),
        r#"{"type":"session.update","event_id":5}"#.into(),
        format!(r#"{{"type":"response.cancel","event_id":"{}"}}"#, "e".repeat(600)),
        "[".repeat(10_000),
    ];
    // Deterministic byte noise.
    let mut state = 0x1234_5678_u64;
    for _ in 0..200 {
        let bytes: Vec<u8> = (0..(state % 64))
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                (state >> 33) as u8
            })
            .collect();
        garbage.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    for text in &garbage {
        let out = harness.send_text(text);
        assert!(out.iter().all(|e| e["type"] == "error"), "{text}: {out:?}");
    }
    harness.run_for(Duration::from_secs(5));
    let out = harness.send(json!({"type": "session.update", "session": {"type": "realtime"}}));
    assert_eq!(kinds(&out), ["session.updated"]);
}

// --- VAD ------------------------------------------------------------------------------------

#[test]
fn vad_turn_from_pcm16_has_exact_timestamps_and_starts_a_response() {
    let mut harness = Harness::ga(FakeOptions {
        reply: tone(200),
        speed: 1000.0,
        ..FakeOptions::default()
    });
    // 70 ms appends: not aligned to the 10 ms VAD frames.
    let out = harness.stream(&pcm16_bytes(&turn_pcm(24_000)), 48, 70 * 48);
    let started = find(&out, "input_audio_buffer.speech_started");
    // Speech begins at 500 ms; minus 300 ms prefix padding.
    assert_eq!(started["audio_start_ms"], 200);
    let stopped = find(&out, "input_audio_buffer.speech_stopped");
    // Last speech frame ends at 1500 ms; plus 500 ms silence.
    assert_eq!(stopped["audio_end_ms"], 2000);
    assert_eq!(stopped["item_id"], started["item_id"]);
    let committed = find(&out, "input_audio_buffer.committed");
    assert_eq!(committed["item_id"], started["item_id"]);
    assert_eq!(committed["previous_item_id"], Value::Null);
    let order = kinds(&out);
    let position = |kind: &str| order.iter().position(|k| *k == kind).unwrap();
    assert!(
        position("input_audio_buffer.speech_stopped") < position("input_audio_buffer.committed")
    );
    assert!(position("input_audio_buffer.committed") < position("conversation.item.added"));
    assert!(position("conversation.item.done") < position("response.created"));
    assert!(position("response.created") < position("rate_limits.updated"));
    let added = find(&out, "conversation.item.added");
    assert_eq!(added["item"]["role"], "user");
    assert_eq!(added["item"]["content"][0]["type"], "input_audio");
    assert_eq!(count(&out, "response.done"), 1);
    assert_eq!(
        find(&out, "response.done")["response"]["status"],
        "completed"
    );
}

#[test]
fn vad_turn_from_g711_in_preview() {
    let mut harness = Harness::preview(FakeOptions {
        reply: tone(100),
        speed: 1000.0,
        ..FakeOptions::default()
    });
    harness.send(json!({"type": "session.update", "session": {
        "input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"}}));
    let out = harness.stream(&ulaw_bytes(&turn_pcm(8000)), 8, 160);
    assert_eq!(
        find(&out, "input_audio_buffer.speech_started")["audio_start_ms"],
        200
    );
    // The preview default silence_duration_ms is 200.
    assert_eq!(
        find(&out, "input_audio_buffer.speech_stopped")["audio_end_ms"],
        1700
    );
    // Preview names.
    assert_eq!(
        count(&out, "conversation.item.created"),
        2,
        "user item and assistant item"
    );
    assert_eq!(count(&out, "conversation.item.added"), 0);
    assert!(count(&out, "response.audio.delta") > 0);
    assert_eq!(count(&out, "response.output_audio.delta"), 0);
}

#[test]
fn threshold_decides_what_counts_as_speech() {
    // -40 dBFS is speech at threshold 0.2 (-50 dBFS) but not at the default 0.5 (-35 dBFS).
    let quiet = |threshold: f64| {
        let mut harness = Harness::ga(FakeOptions::default());
        harness.send(json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "threshold": threshold, "create_response": false}}}}}));
        let mut pcm = sine(24_000, 500, 300.0, -40.0);
        pcm.extend(vec![0; 24_000]);
        let out = harness.stream(&pcm16_bytes(&pcm), 48, 960);
        count(&out, "input_audio_buffer.speech_started")
    };
    assert_eq!(quiet(0.2), 1);
    assert_eq!(quiet(0.5), 0);
}

#[test]
fn no_turn_detection_means_manual_commit() {
    let mut harness = Harness::ga(FakeOptions {
        speed: 1000.0,
        ..FakeOptions::default()
    });
    harness.send(
        json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"input": {"turn_detection": null}}}}),
    );
    let out = harness.stream(&pcm16_bytes(&turn_pcm(24_000)[..1200]), 48, 960);
    assert!(out.is_empty(), "no VAD events: {out:?}");
    let out = harness.send(json!({"type": "input_audio_buffer.commit", "event_id": "c"}));
    let message = expect_error(&out, "input_audio_buffer_commit_empty", None, Some("c"));
    assert!(message.contains("Expected at least 100ms"), "{message}");
    harness.stream(&pcm16_bytes(&turn_pcm(24_000)), 48, 960);
    let out = harness.send(json!({"type": "input_audio_buffer.commit"}));
    assert_eq!(
        kinds(&out),
        [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done"
        ]
    );
    let out = harness.send(json!({"type": "response.create"}));
    assert_eq!(out[0]["type"], "response.created");
    let out = harness.send(json!({"type": "input_audio_buffer.clear"}));
    assert_eq!(kinds(&out), ["input_audio_buffer.cleared"]);
}

#[test]
fn the_input_buffer_keeps_only_the_newest_audio_beyond_its_cap() {
    // The cap is 5 s under test (15 minutes otherwise).
    let mut harness = Harness::ga(FakeOptions {
        speed: 1000.0,
        ..FakeOptions::default()
    });
    harness.send(ga_pcmu());
    harness.send(
        json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"input": {"turn_detection": null}}}}),
    );
    let input: Vec<u8> = (0..8 * 8000).map(|i: usize| (i % 251) as u8).collect();
    harness.stream(&input, 8, 1600);
    harness.send(json!({"type": "input_audio_buffer.commit"}));
    let mut out = harness.send(json!({"type": "response.create"}));
    out.extend(harness.run_for(Duration::from_secs(1)));
    let echoed: Vec<u8> = deltas(&out).concat();
    assert_eq!(echoed.len(), 5 * 8000);
    assert_eq!(echoed, input[3 * 8000..]);
}

#[test]
fn a_long_conversation_keeps_only_the_newest_items() {
    // The cap is 50 items under test (1000 otherwise).
    let mut harness = Harness::ga(FakeOptions::default());
    let mut ids = Vec::new();
    for n in 0..60 {
        let out = harness.send(json!({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": format!("m{n}")}]}}));
        ids.push(find(&out, "conversation.item.added")["item"]["id"].clone());
    }
    let out = harness
        .send(json!({"type": "conversation.item.retrieve", "event_id": "r", "item_id": ids[9]}));
    expect_error(
        &out,
        "item_retrieve_invalid_item_id",
        Some("item_id"),
        Some("r"),
    );
    for id in &ids[10..] {
        let out = harness.send(json!({"type": "conversation.item.retrieve", "item_id": id}));
        assert_eq!(out[0]["item"]["id"], *id);
    }
}

// --- replies ----------------------------------------------------------------------------------

#[test]
fn echo_of_ulaw_is_byte_exact() {
    let mut harness = Harness::ga(FakeOptions {
        speed: 8.0,
        ..FakeOptions::default()
    });
    harness.send(ga_pcmu());
    let input = ulaw_bytes(&turn_pcm(8000));
    let mut out = harness.stream(&input, 8, 160);
    out.extend(harness.run_for(Duration::from_secs(5)));
    assert_eq!(
        find(&out, "response.done")["response"]["status"],
        "completed"
    );
    let echoed: Vec<u8> = deltas(&out).concat();
    // The turn runs from audio_start_ms 200 to audio_end_ms 2000.
    assert_eq!(echoed, input[200 * 8..2000 * 8]);
    let format = &find(&out, "response.done")["response"]["audio"]["output"]["format"];
    assert_eq!(format["type"], "audio/pcmu");
}

#[test]
fn echo_converts_between_formats() {
    let mut harness = Harness::ga(FakeOptions {
        speed: 1000.0,
        ..FakeOptions::default()
    });
    harness.send(
        json!({"type": "session.update", "session": {"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcmu"}}}}}),
    );
    let mut out = harness.stream(&ulaw_bytes(&turn_pcm(8000)), 8, 160);
    out.extend(harness.run_for(Duration::from_secs(1)));
    // 1800 ms of 8 kHz G.711 becomes 1800 ms of 24 kHz pcm16.
    assert_eq!(deltas(&out).concat().len(), 1800 * 48);
}

#[test]
fn delta_sizes_vary_and_pacing_follows_speed() {
    let speed = 4.0;
    let mut harness = Harness::ga(FakeOptions {
        reply: tone(3000),
        speed,
        ..FakeOptions::default()
    });
    let start = harness.now;
    harness.send(json!({"type": "response.create"}));
    let first_deadline = harness.session.poll_timeout().unwrap();
    harness.run_for(Duration::from_secs(2));
    let delta_events: Vec<(Instant, usize)> = harness
        .log
        .iter()
        .filter(|(_, e)| e["type"] == "response.output_audio.delta")
        .map(|(at, e)| {
            (
                *at,
                BASE64.decode(e["delta"].as_str().unwrap()).unwrap().len(),
            )
        })
        .collect();
    let total: usize = delta_events.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 3000 * 48);
    let sizes: Vec<usize> = delta_events.iter().map(|(_, n)| *n).collect();
    let (last, body) = sizes.split_last().unwrap();
    assert!(
        body.iter()
            .all(|n| (40 * 48..=240 * 48).contains(n) && n % 2 == 0),
        "{sizes:?}"
    );
    assert!(*last <= 240 * 48);
    assert!(
        body.windows(2).any(|w| w[0] != w[1]),
        "sizes vary: {sizes:?}"
    );
    assert!(
        body.iter().any(|n| n % 960 != 0),
        "not whole 20 ms frames: {sizes:?}"
    );
    // Delta k goes out when the audio before it, played at `speed`, would have finished.
    let mut sent = 0_usize;
    for (at, size) in &delta_events {
        let expected = start + Duration::from_secs_f64(sent as f64 / 48.0 / 1000.0 / speed);
        let error =
            at.saturating_duration_since(expected) + expected.saturating_duration_since(*at);
        assert!(
            error < Duration::from_micros(5),
            "delta at {at:?}, expected {expected:?}"
        );
        sent += size;
    }
    assert_eq!(
        first_deadline,
        start + Duration::from_secs_f64(sizes[0] as f64 / 48.0 / 1000.0 / speed)
    );
    // The whole 3 s reply took 3 s / 4.
    let done_at = harness
        .log
        .iter()
        .find(|(_, e)| e["type"] == "response.done")
        .unwrap()
        .0;
    assert_eq!(done_at, delta_events.last().unwrap().0);
    assert!(done_at - start < Duration::from_millis(750));
}

#[test]
fn response_event_sequence_with_transcript() {
    let mut harness = Harness::ga(FakeOptions {
        reply: tone(1000),
        transcript: Some("Hello there, caller.".into()),
        speed: 1000.0,
        ..FakeOptions::default()
    });
    harness.send(json!({"type": "response.create"}));
    let out = harness.run_for(Duration::from_secs(1));
    let all: Vec<Value> = harness.log.iter().skip(1).map(|(_, e)| e.clone()).collect();
    let order = kinds(&all);
    assert_eq!(
        order[..6],
        [
            "response.created",
            "rate_limits.updated",
            "response.output_item.added",
            "conversation.item.added",
            "response.content_part.added",
            "response.output_audio_transcript.delta"
        ]
    );
    assert_eq!(
        order[order.len() - 6..],
        [
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done"
        ]
    );
    let transcript: String = all
        .iter()
        .filter(|e| e["type"] == "response.output_audio_transcript.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(transcript, "Hello there, caller.");
    let done = find(&out, "response.done");
    assert_eq!(
        done["response"]["output"][0]["content"][0]["transcript"],
        "Hello there, caller."
    );
    assert_eq!(
        done["response"]["output"][0]["content"][0]["type"],
        "output_audio"
    );
    assert!(
        done["response"]["usage"]["output_token_details"]["audio_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let ids: std::collections::HashSet<&str> = harness
        .log
        .iter()
        .map(|(_, e)| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), harness.log.len(), "event ids are unique");
}

#[test]
fn idle_timeout_is_ga_only() {
    let mut harness = Harness::preview(FakeOptions::default());
    let out = harness.send(
        json!({"type": "session.update", "event_id": "i", "session": {
        "turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}}}),
    );
    expect_error(
        &out,
        "unknown_parameter",
        Some("session.turn_detection.idle_timeout_ms"),
        Some("i"),
    );
    let mut harness = Harness::ga(FakeOptions::default());
    let out = harness.send(
        json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}}}}}),
    );
    assert_eq!(kinds(&out), ["session.updated"]);
}

#[test]
fn huge_vad_durations_are_refused_without_panicking() {
    let huge = i64::MAX;
    for field in ["prefix_padding_ms", "silence_duration_ms"] {
        let mut harness = Harness::ga(FakeOptions::default());
        let out = harness.send(
            json!({"type": "session.update", "event_id": "u", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", field: huge}}}}}),
        );
        let param = format!("session.audio.input.turn_detection.{field}");
        expect_error(&out, "integer_above_max_value", Some(&param), Some("u"));
        let out = harness.send(
            json!({"type": "session.update", "event_id": "v", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", field: 10_001}}}}}),
        );
        expect_error(&out, "integer_above_max_value", Some(&param), Some("v"));
        let out = harness.send(json!({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {
            "type": "server_vad", field: 10_000}}}}}));
        assert_eq!(kinds(&out), ["session.updated"]);
        // The session still runs a turn's worth of audio on the accepted settings.
        harness.stream(&pcm16_bytes(&turn_pcm(24_000)), 48, 960);

        let mut harness = Harness::preview(FakeOptions::default());
        let out = harness.send(json!({"type": "session.update", "session": {
            "turn_detection": {"type": "server_vad", field: huge}}}));
        let param = format!("session.turn_detection.{field}");
        expect_error(&out, "integer_above_max_value", Some(&param), None);
        harness.stream(&pcm16_bytes(&turn_pcm(24_000)), 48, 960);
    }
}

// --- barge-in, cancel, truncate ------------------------------------------------------------------

/// A session whose reply is a long tone streamed at real time, with a response in flight.
fn talking(interrupt: bool) -> Harness {
    talking_with(interrupt, FakeOptions::default())
}

/// [`talking`] with other options besides the reply and the speed.
fn talking_with(interrupt: bool, options: FakeOptions) -> Harness {
    let mut harness = Harness::ga(FakeOptions {
        reply: tone(10_000),
        speed: 1.0,
        ..options
    });
    harness.send(
        json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
        "turn_detection": {"type": "server_vad", "interrupt_response": interrupt}}}}}),
    );
    harness.send(json!({"type": "response.create"}));
    harness
}

#[test]
fn barge_in_cancels_with_turn_detected() {
    let mut harness = talking(true);
    let out = harness.stream(&pcm16_bytes(&turn_pcm(24_000)[..24_000]), 48, 960);
    let order = kinds(&out);
    let started = order
        .iter()
        .position(|k| *k == "input_audio_buffer.speech_started")
        .unwrap();
    let done = order.iter().position(|k| *k == "response.done").unwrap();
    assert!(started < done);
    assert_eq!(order[started + 1], "response.output_audio.done");
    let response = &out[done]["response"];
    assert_eq!(response["status"], "cancelled");
    assert_eq!(
        response["status_details"],
        json!({"type": "cancelled", "reason": "turn_detected"})
    );
    assert_eq!(response["output"][0]["status"], "incomplete");
    assert!(
        !order[done..].contains(&"response.output_audio.delta"),
        "no deltas after the cancel"
    );
    let later = harness.run_for(Duration::from_secs(20));
    assert_eq!(count(&later, "response.output_audio.delta"), 0);
}

#[test]
fn barge_in_late_deltas_arrive_after_speech_started() {
    let mut harness = talking_with(
        true,
        FakeOptions {
            late_deltas_ms: 60,
            ..FakeOptions::default()
        },
    );
    let out = harness.stream(&pcm16_bytes(&turn_pcm(24_000)[..24_000]), 48, 960);
    let order = kinds(&out);
    let started = order
        .iter()
        .position(|k| *k == "input_audio_buffer.speech_started")
        .unwrap();
    let done = order.iter().position(|k| *k == "response.done").unwrap();
    assert!(started < done);
    let late = deltas(&out[started..done]);
    assert!(!late.is_empty(), "deltas after speech_started: {order:?}");
    assert_eq!(
        late.iter().map(Vec::len).sum::<usize>(),
        60 * 48,
        "exactly 60 ms"
    );
    let response_id = out[done]["response"]["id"].clone();
    for event in &out[started..done] {
        if event["type"] == "response.output_audio.delta" {
            assert_eq!(event["response_id"], response_id);
        }
    }
    let audio_done = order
        .iter()
        .position(|k| *k == "response.output_audio.done")
        .unwrap();
    let last_delta = order
        .iter()
        .rposition(|k| *k == "response.output_audio.delta")
        .unwrap();
    assert!(
        started < last_delta && last_delta < audio_done && audio_done < done,
        "{order:?}"
    );
    let response = &out[done]["response"];
    assert_eq!(response["status"], "cancelled");
    assert_eq!(
        response["status_details"],
        json!({"type": "cancelled", "reason": "turn_detected"})
    );
    let later = harness.run_for(Duration::from_secs(20));
    assert_eq!(count(&later, "response.output_audio.delta"), 0);
}

#[test]
fn a_response_create_during_late_deltas_finds_the_old_one_cancelled() {
    let mut harness = talking_with(
        true,
        FakeOptions {
            late_deltas_ms: 5_000,
            ..FakeOptions::default()
        },
    );
    let out = harness.stream(&pcm16_bytes(&turn_pcm(24_000)[..18_000]), 48, 960);
    assert_eq!(count(&out, "input_audio_buffer.speech_started"), 1);
    assert_eq!(
        count(&out, "response.done"),
        0,
        "still sending in-flight audio"
    );
    let out = harness.send(json!({"type": "response.create"}));
    let order = kinds(&out);
    let done = order.iter().position(|k| *k == "response.done").unwrap();
    assert_eq!(
        out[done]["response"]["status_details"]["reason"],
        "turn_detected"
    );
    assert_eq!(order[done + 1], "response.created");
}

#[test]
fn interrupt_response_false_keeps_talking() {
    let mut harness = talking(false);
    let out = harness.stream(&pcm16_bytes(&turn_pcm(24_000)), 48, 960);
    assert_eq!(count(&out, "input_audio_buffer.speech_started"), 1);
    assert_eq!(count(&out, "input_audio_buffer.speech_stopped"), 1);
    assert_eq!(count(&out, "response.done"), 0, "still talking");
    assert_eq!(
        count(&out, "response.created"),
        0,
        "no second response while one is active"
    );
    let later = harness.run_for(Duration::from_secs(10));
    assert_eq!(
        find(&later, "response.done")["response"]["status"],
        "completed"
    );
}

#[test]
fn truncate_checks_the_produced_length() {
    let mut harness = talking(true);
    let out = harness.run_for(Duration::from_millis(500));
    let item_id = find(
        &harness
            .log
            .iter()
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>(),
        "response.output_item.added",
    )["item"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(out);
    let out = harness.send(json!({"type": "response.cancel", "event_id": "stop"}));
    let done = find(&out, "response.done");
    assert_eq!(
        done["response"]["status_details"]["reason"],
        "client_cancelled"
    );
    let produced_bytes: usize = deltas(
        &harness
            .log
            .iter()
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>(),
    )
    .iter()
    .map(Vec::len)
    .sum();
    let produced_ms = produced_bytes / 48;
    assert!(produced_ms > 500, "{produced_ms}");
    let too_long = produced_ms as u64 + 85;
    let out = harness.send(
        json!({"type": "conversation.item.truncate", "event_id": "t1",
        "item_id": item_id, "content_index": 0, "audio_end_ms": too_long}),
    );
    // As the service sends it: code and event_id null, even though the client sent one.
    let message = expect_error_code(&out, None, None, None);
    assert_eq!(
        message,
        format!("Audio content of {produced_ms} ms is already shorter than {too_long} ms")
    );
    let out = harness.send(json!({"type": "conversation.item.truncate",
        "item_id": item_id, "content_index": 0, "audio_end_ms": 300}));
    assert_eq!(kinds(&out), ["conversation.item.truncated"]);
    assert_eq!(out[0]["audio_end_ms"], 300);
    assert_eq!(out[0]["item_id"], item_id);
    let out = harness.send(
        json!({"type": "conversation.item.truncate", "event_id": "t2",
        "item_id": "item_nope", "content_index": 0, "audio_end_ms": 0}),
    );
    expect_error(
        &out,
        "item_truncate_invalid_item_id",
        Some("item_id"),
        Some("t2"),
    );
    let out = harness.send(json!({"type": "conversation.item.retrieve", "item_id": item_id}));
    assert_eq!(out[0]["item"]["content"][0]["transcript"], "");
    // Only assistant audio can be truncated: a user message cannot.
    let out = harness.send(json!({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}));
    let user_id = find(&out, "conversation.item.added")["item"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = harness.send(
        json!({"type": "conversation.item.truncate", "event_id": "t3",
        "item_id": user_id, "content_index": 0, "audio_end_ms": 0}),
    );
    let message = expect_error(
        &out,
        "unsupported_content_type",
        Some("item_id"),
        Some("t3"),
    );
    assert_eq!(message, "Only model output audio messages can be truncated");
    let out = harness.send(json!({"type": "conversation.item.delete", "item_id": item_id}));
    assert_eq!(kinds(&out), ["conversation.item.deleted"]);
    let out = harness
        .send(json!({"type": "conversation.item.delete", "item_id": item_id, "event_id": "d"}));
    expect_error(
        &out,
        "item_delete_invalid_item_id",
        Some("item_id"),
        Some("d"),
    );
}

#[test]
fn truncate_while_streaming_stops_the_item_there() {
    let mut harness = talking(true);
    let out = harness.run_for(Duration::from_millis(500));
    let item_id = find(
        &harness
            .log
            .iter()
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>(),
        "response.output_item.added",
    )["item"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(deltas(&out).iter().map(Vec::len).sum::<usize>() / 48 > 300);
    let out = harness.send(json!({"type": "conversation.item.truncate",
        "item_id": item_id, "content_index": 0, "audio_end_ms": 300}));
    assert_eq!(out[0]["type"], "conversation.item.truncated");
    assert_eq!(count(&out, "response.output_audio.delta"), 0);
    let done = find(&out, "response.done");
    assert_eq!(done["response"]["output"][0]["status"], "incomplete");
    assert_eq!(
        done["response"]["output"][0]["content"][0]["transcript"],
        ""
    );
    assert_eq!(
        done["response"]["usage"]["output_token_details"]["audio_tokens"],
        300 / 50
    );
    let later = harness.run_for(Duration::from_secs(3));
    assert_eq!(
        count(&later, "response.output_audio.delta"),
        0,
        "no deltas after the truncate"
    );
    // The item's audio stays 300 ms long: the streaming did not grow it back.
    let out = harness.send(json!({"type": "conversation.item.truncate",
        "item_id": item_id, "content_index": 0, "audio_end_ms": 400}));
    let message = expect_error_code(&out, None, None, None);
    assert_eq!(
        message,
        "Audio content of 300 ms is already shorter than 400 ms"
    );
    // And the session is free for the next response.
    let out = harness.send(json!({"type": "response.create"}));
    assert_eq!(out[0]["type"], "response.created");
}

#[test]
fn cancel_when_idle_is_an_error() {
    let mut harness = Harness::ga(FakeOptions::default());
    let out = harness.send(json!({"type": "response.cancel", "event_id": "c9"}));
    expect_error(&out, "response_cancel_not_active", None, Some("c9"));
}

#[test]
fn create_while_active_is_an_error() {
    let mut harness = talking(true);
    let out = harness.send(json!({"type": "response.create", "event_id": "again"}));
    let message = expect_error(
        &out,
        "conversation_already_has_active_response",
        None,
        Some("again"),
    );
    assert!(
        message.contains("Wait until the response is finished"),
        "{message}"
    );
}

// --- tool calls, expiry ----------------------------------------------------------------------------

#[test]
fn tool_script_round_trip() {
    let mut harness = Harness::ga(FakeOptions {
        speed: 1000.0,
        tool_script: vec![ToolStep {
            turn: 1,
            name: "lookup_order".into(),
            arguments: json!({"order": 42}),
        }],
        ..FakeOptions::default()
    });
    let out = harness.stream(&pcm16_bytes(&turn_pcm(24_000)), 48, 960);
    let added = find(&out, "response.output_item.added");
    assert_eq!(added["item"]["type"], "function_call");
    assert_eq!(added["item"]["arguments"], "");
    assert_eq!(added["item"]["status"], "in_progress");
    let call_id = added["item"]["call_id"].as_str().unwrap().to_owned();
    assert!(count(&out, "response.function_call_arguments.delta") >= 2);
    let args: String = out
        .iter()
        .filter(|e| e["type"] == "response.function_call_arguments.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(args, r#"{"order":42}"#);
    let done = find(&out, "response.function_call_arguments.done");
    assert_eq!(done["name"], "lookup_order");
    assert_eq!(done["arguments"], args);
    assert_eq!(done["call_id"], call_id);
    let response = &find(&out, "response.done")["response"];
    assert_eq!(response["status"], "completed");
    assert_eq!(response["output"][0]["type"], "function_call");
    assert_eq!(count(&out, "response.output_audio.delta"), 0);

    let out = harness.send(
        json!({"type": "conversation.item.create", "event_id": "bad",
        "item": {"type": "function_call_output", "call_id": "call_unknown", "output": "{}"}}),
    );
    expect_error(&out, "invalid_value", Some("item.call_id"), Some("bad"));
    let out = harness.send(json!({"type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": "{\"status\":\"shipped\"}"}}));
    assert_eq!(
        kinds(&out),
        ["conversation.item.added", "conversation.item.done"]
    );
    let mut out = harness.send(json!({"type": "response.create"}));
    out.extend(harness.run_for(Duration::from_secs(1)));
    assert_eq!(
        find(&out, "response.output_item.added")["item"]["type"],
        "message"
    );
    assert!(count(&out, "response.output_audio.delta") > 0);
    assert_eq!(
        find(&out, "response.done")["response"]["status"],
        "completed"
    );
}

#[test]
fn function_calls_are_paced_so_an_early_response_create_is_refused() {
    let mut harness = Harness::ga(FakeOptions {
        speed: 1.0,
        tool_script: vec![ToolStep {
            turn: 1,
            name: "lookup_order".into(),
            arguments: json!({"order": 42}),
        }],
        ..FakeOptions::default()
    });
    let mut out = Vec::new();
    for piece in pcm16_bytes(&turn_pcm(24_000)).chunks(960) {
        out.extend(harness.send(json!({
            "type": "input_audio_buffer.append",
            "audio": BASE64.encode(piece),
        })));
        // Step the timer until the first argument delta, then act on it at once.
        out.extend(harness.run_for(Duration::from_millis(20)));
        if count(&out, "response.function_call_arguments.delta") > 0 {
            break;
        }
    }
    assert_eq!(
        count(&out, "response.function_call_arguments.delta"),
        1,
        "{:?}",
        kinds(&out)
    );
    assert_eq!(count(&out, "response.done"), 0, "{:?}", kinds(&out));
    let at_first_delta = harness
        .log
        .iter()
        .find(|(_, e)| e["type"] == "response.function_call_arguments.delta")
        .unwrap()
        .0;
    let created_at = harness
        .log
        .iter()
        .find(|(_, e)| e["type"] == "response.created")
        .unwrap()
        .0;
    assert!(
        at_first_delta > created_at,
        "the deltas follow the response timer"
    );
    let early = harness.send(json!({"type": "response.create", "event_id": "early"}));
    expect_error(
        &early,
        "conversation_already_has_active_response",
        None,
        Some("early"),
    );
    let rest = harness.run_for(Duration::from_secs(1));
    let order = kinds(&rest);
    let pos = |kind: &str| order.iter().position(|k| *k == kind).unwrap();
    assert_eq!(count(&rest, "response.function_call_arguments.delta"), 2);
    assert!(pos("response.function_call_arguments.done") < pos("response.output_item.done"));
    assert!(pos("response.output_item.done") < pos("response.done"));
    let done_at = harness
        .log
        .iter()
        .find(|(_, e)| e["type"] == "response.done")
        .unwrap()
        .0;
    assert!(done_at > at_first_delta);
    let args: String = harness
        .log
        .iter()
        .filter(|(_, e)| e["type"] == "response.function_call_arguments.delta")
        .map(|(_, e)| e["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(args, r#"{"order":42}"#);
    assert_eq!(
        find(&rest, "response.done")["response"]["output"][0]["arguments"],
        args
    );
}

#[test]
fn a_cancelled_function_call_ends_incomplete() {
    let mut harness = Harness::ga(FakeOptions {
        speed: 1.0,
        tool_script: vec![ToolStep {
            turn: 1,
            name: "f".into(),
            arguments: json!({"a": 1}),
        }],
        ..FakeOptions::default()
    });
    harness.send(
        json!({"type": "session.update", "session": {"type": "realtime",
        "audio": {"input": {"turn_detection": null}}}}),
    );
    harness.send(json!({"type": "input_audio_buffer.append",
        "audio": BASE64.encode(vec![0_u8; 9600])}));
    harness.send(json!({"type": "input_audio_buffer.commit"}));
    let out = harness.send(json!({"type": "response.create"}));
    assert_eq!(count(&out, "response.output_item.added"), 1);
    assert_eq!(count(&out, "response.function_call_arguments.delta"), 0);
    let out = harness.send(json!({"type": "response.cancel"}));
    assert_eq!(count(&out, "response.function_call_arguments.done"), 0);
    let response = &find(&out, "response.done")["response"];
    assert_eq!(response["status"], "cancelled");
    assert_eq!(response["output"][0]["status"], "incomplete");
    assert_eq!(response["output"][0]["arguments"], "");
    assert!(harness.run_for(Duration::from_secs(1)).is_empty());
}

#[test]
fn session_expires_with_1001_at_the_configured_time() {
    let mut harness = Harness::ga(FakeOptions {
        session_max_duration: Some(Duration::from_secs(120)),
        ..FakeOptions::default()
    });
    assert_eq!(
        harness.log[0].1["session"]["expires_at"],
        1_800_000_000 + 120
    );
    assert_eq!(
        harness.session.poll_timeout(),
        Some(harness.t0 + Duration::from_secs(120))
    );
    harness.run_until(harness.t0 + Duration::from_millis(119_999));
    assert!(harness.closed.is_none());
    harness.run_until(harness.t0 + Duration::from_secs(120));
    assert_eq!(
        harness.closed,
        Some((
            1001,
            "Your session hit the maximum duration of 2 minutes.".to_owned()
        ))
    );
    assert_eq!(harness.session.poll_timeout(), None);
    assert!(
        harness.send(json!({"type": "response.create"})).is_empty(),
        "nothing after the close"
    );
}

// --- options ---------------------------------------------------------------------------------

#[test]
fn options_deserialize_strictly_and_prepare_checks_values() {
    let options: FakeOptions = serde_json::from_value(json!({
        "reply": {"kind": "file", "path": "/nonexistent/reply.wav"},
        "transcript": "hi", "speed": 2.5, "delta_ms_min": 20, "delta_ms_max": 60, "seed": 7,
        "session_max_duration": "90s",
        "tool_script": [{"turn": 2, "name": "transfer", "arguments": {"to": "sales"}}],
        "record": "/tmp/x.jsonl", "record_audio": true,
    }))
    .unwrap();
    assert_eq!(options.session_max_duration, Some(Duration::from_secs(90)));
    assert!(options.record_audio);
    assert!(!FakeOptions::default().record_audio);
    assert!(options.clone().prepare().is_err(), "missing reply file");
    assert!(serde_json::from_value::<FakeOptions>(json!({"sped": 2})).is_err());
    assert!(
        serde_json::from_value::<FakeOptions>(json!({"api_key": "k"})).is_err(),
        "not a config key"
    );
    let bad = |options: FakeOptions| options.clone().prepare().is_err();
    assert!(bad(FakeOptions {
        speed: 0.0,
        ..FakeOptions::default()
    }));
    assert!(bad(FakeOptions {
        delta_ms_min: 300,
        ..FakeOptions::default()
    }));
    assert!(bad(FakeOptions {
        reply: tone(u32::MAX),
        ..FakeOptions::default()
    }));
    assert!(FakeOptions::default().prepare().is_ok());
    let shown = format!(
        "{:?}",
        FakeOptions {
            api_key: Some("sk-secret".into()),
            ..FakeOptions::default()
        }
    );
    assert!(!shown.contains("sk-secret"), "{shown}");
}

// ---- fault modes -----------------------------------------------------------------------------

fn faulty(kind: &str, after_ms: u64) -> FakeOptions {
    serde_json::from_value(json!({
        "fault": {"kind": kind, "after": format!("{after_ms}ms")}
    }))
    .unwrap()
}

#[test]
fn stop_reading_stops_reading_at_its_time_and_keeps_talking() {
    let mut h = Harness::ga(faulty("stop_reading", 5_000));
    assert!(h.session.is_reading(h.t0));
    h.send(ga_pcmu());
    let out = h.run_until(h.t0 + Duration::from_millis(4_999));
    assert_eq!(count(&out, "rate_limits.updated"), 0);
    assert!(h.session.is_reading(h.now));
    // From 5 s on the shell must leave the socket unread, and the fake still sends.
    let out = h.run_until(h.t0 + Duration::from_millis(9_500));
    assert!(!h.session.is_reading(h.now));
    assert_eq!(count(&out, "rate_limits.updated"), 5, "{:?}", kinds(&out));
}

#[test]
fn error_every_event_answers_each_client_event_with_a_server_error() {
    let mut h = Harness::ga(faulty("error_every_event", 1_000));
    let out = h.send(ga_pcmu());
    assert_eq!(
        count(&out, "session.updated"),
        1,
        "before the fault: normal"
    );
    h.run_until(h.t0 + Duration::from_millis(1_000));
    for n in 0..3 {
        let out = h.send(
            json!({"type": "input_audio_buffer.append", "event_id": format!("a{n}"),
            "audio": BASE64.encode([0xFFu8; 160])}),
        );
        let error = find(&out, "error");
        assert_eq!(error["error"]["type"], "server_error");
        assert_eq!(error["error"]["event_id"], format!("a{n}"));
    }
    assert!(h.closed.is_none(), "the socket stays open");
}

#[test]
fn refuse_session_refuses_the_update_and_keeps_the_socket_open() {
    let mut h = Harness::ga(faulty("refuse_session", 0));
    let out = h.send(ga_pcmu());
    assert_eq!(count(&out, "session.updated"), 0);
    let error = find(&out, "error");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    assert_eq!(error["error"]["param"], "session.audio.output.voice");
    h.run_until(h.t0 + Duration::from_secs(60));
    assert!(h.closed.is_none());
}

#[test]
fn flood_audio_streams_one_second_deltas_without_end_and_a_bounded_queue() {
    let mut h = Harness::ga(faulty("flood_audio", 2_000));
    h.send(ga_pcmu());
    h.run_until(h.t0 + Duration::from_millis(1_990));
    assert!(h.drain().is_empty());
    // At 2 s: a response and its item announced, then deltas, never more than a few queued.
    h.now = h.t0 + Duration::from_millis(2_000);
    h.session.handle_timeout(h.now);
    let first = h.drain();
    assert_eq!(
        kinds(&first)[..2],
        ["response.created", "response.output_item.added"]
    );
    let mut seconds = count(&first, "response.output_audio.delta");
    assert!((1..=4).contains(&seconds));
    for _ in 0..50 {
        // The shell sent them; the timer is due at once again.
        assert!(h.session.poll_timeout().is_some_and(|at| at <= h.now));
        h.session.handle_timeout(h.now);
        let out = h.drain();
        let n = count(&out, "response.output_audio.delta");
        assert!((1..=4).contains(&n), "{n}");
        seconds += n;
        let delta = find(&out, "response.output_audio.delta");
        assert_eq!(
            BASE64
                .decode(delta["delta"].as_str().unwrap())
                .unwrap()
                .len(),
            8_000
        );
    }
    assert!(seconds > 50);
    // A cancel does not stop it.
    h.send(json!({"type": "response.cancel", "event_id": "c"}));
    h.session.handle_timeout(h.now);
    assert!(count(&h.drain(), "response.output_audio.delta") > 0);
}

#[test]
fn fault_options_are_checked() {
    let bad: Result<FakeOptions, _> = serde_json::from_value(json!({"fault": {"kind": "explode"}}));
    assert!(bad.is_err());
    let bad: Result<FakeOptions, _> =
        serde_json::from_value(json!({"fault": {"kind": "stop_reading", "after": "soon"}}));
    assert!(bad.is_err());
    let ok: FakeOptions =
        serde_json::from_value(json!({"fault": {"kind": "flood_audio"}})).unwrap();
    assert_eq!(ok.fault.unwrap().after, Duration::ZERO);
}
