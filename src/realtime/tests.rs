//! Scenario tests of the session core with simulated time, and parsing of real-shaped server
//! events in both the GA and the preview naming.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::server_event::ServerEvent;
use super::*;
use crate::config::{Config, ProfileConfig};

fn profile(body: &str) -> ProfileConfig {
    let config = Config::from_toml(&format!(
        "[upstreams.u]\nkind = \"fake\"\n[profiles.p]\nupstream = \"u\"\n{body}\n\
         [[routes]]\nprofile = \"p\"\n"
    ))
    .unwrap();
    config.profiles.into_values().next().unwrap()
}

/// Drains every transmit, checks each `event_id` (`evt_N`, at most 512 characters) and returns
/// the events without it.
fn transmits(session: &mut Session) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(text) = session.poll_transmit() {
        let mut value: Value = serde_json::from_str(&text).unwrap();
        let id = value.as_object_mut().unwrap().remove("event_id").unwrap();
        let id = id.as_str().unwrap();
        assert!(id.starts_with("evt_") && id.len() <= 512, "{id}");
        assert!(id["evt_".len()..].parse::<u64>().is_ok(), "{id}");
        out.push(value);
    }
    out
}

/// Drains every transmit and returns the raw texts (to read event ids).
fn raw_transmits(session: &mut Session) -> Vec<Value> {
    std::iter::from_fn(|| session.poll_transmit())
        .map(|text| serde_json::from_str(&text).unwrap())
        .collect()
}

fn events(session: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| session.poll_event()).collect()
}

/// Hands `value` to the session; an audio delta's item is announced first
/// (`response.output_item.added`), as the service always does before its audio.
fn feed(session: &mut Session, now: Instant, value: Value) {
    let kind = value["type"].as_str().unwrap_or_default();
    if (kind == "response.output_audio.delta" || kind == "response.audio.delta")
        && let Some(item) = value["item_id"].as_str()
    {
        let added = json!({"type": "response.output_item.added", "event_id": "event_I",
            "response_id": value["response_id"], "output_index": 0,
            "item": {"id": item, "type": "message", "role": "assistant", "status": "in_progress",
                     "content": []}});
        session.handle_text(now, &added.to_string());
    }
    session.handle_text(now, &value.to_string());
}

fn session_created() -> Value {
    json!({
        "type": "session.created", "event_id": "event_C1",
        "session": {
            "type": "realtime", "object": "realtime.session", "id": "sess_C8abc",
            "model": "gpt-realtime", "expires_at": 1_767_229_200_u64,
            "output_modalities": ["audio"], "instructions": "Your knowledge cutoff is 2023-10.",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}},
                      "output": {"voice": "marin"}},
            "tools": [], "tool_choice": "auto", "max_output_tokens": "inf"
        }
    })
}

fn session_updated() -> Value {
    json!({"type": "session.updated", "event_id": "event_C2",
           "session": {"type": "realtime", "id": "sess_C8abc", "expires_at": 1_767_229_200_u64}})
}

/// A session for `profile` that has completed setup, with everything drained.
fn ready(profile: &ProfileConfig, dialect: Dialect) -> (Session, Instant) {
    let t0 = Instant::now();
    let mut session = Session::new(profile, dialect, t0);
    feed(&mut session, t0, session_created());
    feed(&mut session, t0, session_updated());
    transmits(&mut session);
    events(&mut session);
    assert!(session.is_ready());
    (session, t0)
}

fn response_created(id: &str) -> Value {
    json!({"type": "response.created", "event_id": "event_R1",
           "response": {"object": "realtime.response", "id": id, "status": "in_progress",
                        "status_details": null, "output": [], "conversation_id": "conv_1"}})
}

fn response_done(id: &str, status: &str, reason: Option<&str>) -> Value {
    let details = reason.map(|r| json!({"type": status, "reason": r}));
    json!({"type": "response.done", "event_id": "event_R2",
           "response": {"object": "realtime.response", "id": id, "status": status,
                        "status_details": details, "output": [],
                        "usage": {"total_tokens": 10, "input_tokens": 4, "output_tokens": 6}}})
}

fn audio_delta(name: &str, response: &str, item: &str, bytes: usize) -> Value {
    json!({"type": name, "event_id": "event_A", "response_id": response, "item_id": item,
           "output_index": 0, "content_index": 0, "delta": BASE64.encode(vec![0x55_u8; bytes])})
}

// ---- parsing ------------------------------------------------------------------------------

#[test]
fn ga_server_events_parse_into_the_internal_set() {
    let frames = [
        session_created(),
        json!({"type": "error", "event_id": "event_E",
               "error": {"type": "invalid_request_error", "code": "unknown_parameter",
                         "message": "Unknown parameter: 'session.temperature'.",
                         "param": "session.temperature", "event_id": "evt_1"}}),
        json!({"type": "input_audio_buffer.speech_started", "event_id": "e", "audio_start_ms": 1200,
               "item_id": "item_U1"}),
        json!({"type": "input_audio_buffer.timeout_triggered", "event_id": "e",
               "audio_start_ms": 9000, "audio_end_ms": 15000, "item_id": "item_U2"}),
        json!({"type": "conversation.item.added", "event_id": "e", "previous_item_id": null,
               "item": {"id": "item_A1", "object": "realtime.item", "type": "message",
                        "status": "in_progress", "role": "assistant", "content": []}}),
        json!({"type": "conversation.item.input_audio_transcription.completed", "event_id": "e",
               "item_id": "item_U1", "content_index": 0, "transcript": "Hello.",
               "usage": {"type": "duration", "seconds": 1.2}}),
        json!({"type": "response.output_audio.delta", "event_id": "e", "response_id": "resp_1",
               "item_id": "item_A1", "output_index": 0, "content_index": 0, "delta": "AAAA"}),
        json!({"type": "response.output_audio_transcript.done", "event_id": "e",
               "response_id": "resp_1", "item_id": "item_A1", "output_index": 0,
               "content_index": 0, "transcript": "Hi there!"}),
        json!({"type": "response.content_part.added", "event_id": "e", "response_id": "resp_1",
               "item_id": "item_A1", "output_index": 0, "content_index": 0,
               "part": {"type": "output_audio", "transcript": ""}}),
        json!({"type": "response.function_call_arguments.done", "event_id": "e",
               "response_id": "resp_1", "item_id": "item_F", "output_index": 1,
               "call_id": "call_1", "name": "lookup_order", "arguments": "{\"id\":\"7\"}"}),
        json!({"type": "rate_limits.updated", "event_id": "e", "rate_limits": [
               {"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 0.06},
               {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 1.2}]}),
    ];
    let parsed: Vec<ServerEvent> = frames
        .iter()
        .map(|f| ServerEvent::parse(&f.to_string()).unwrap())
        .collect();
    match &parsed[0] {
        ServerEvent::SessionCreated(c) => {
            assert_eq!(c.session.id.as_deref(), Some("sess_C8abc"));
            assert_eq!(c.session.expires_at, Some(1_767_229_200));
        }
        other => panic!("{other:?}"),
    }
    match &parsed[1] {
        ServerEvent::Error(e) => {
            assert_eq!(e.error.kind.as_deref(), Some("invalid_request_error"));
            assert_eq!(e.error.code.as_deref(), Some("unknown_parameter"));
            assert_eq!(e.error.param.as_deref(), Some("session.temperature"));
            assert_eq!(e.error.event_id.as_deref(), Some("evt_1"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&parsed[2], ServerEvent::SpeechStarted(s)
        if s.audio_start_ms == 1200 && s.item_id.as_str() == "item_U1"));
    assert!(
        matches!(&parsed[3], ServerEvent::InputAudioTimeoutTriggered(t)
        if t.item_id.as_str() == "item_U2")
    );
    assert!(matches!(&parsed[4], ServerEvent::ItemAdded(i)
        if i.item.id == Some(ItemId::from("item_A1")) && i.item.role.as_deref() == Some("assistant")));
    assert!(matches!(&parsed[5], ServerEvent::TranscriptionCompleted(t)
        if t.transcript == "Hello."));
    assert!(matches!(&parsed[6], ServerEvent::OutputAudioDelta(d)
        if d.at.response_id.as_str() == "resp_1" && d.delta == "AAAA"));
    assert!(
        matches!(&parsed[7], ServerEvent::OutputAudioTranscriptDone(d)
        if d.transcript == "Hi there!")
    );
    assert!(matches!(&parsed[8], ServerEvent::ContentPartAdded(p)
        if p.part.kind.as_deref() == Some("output_audio")));
    assert!(
        matches!(&parsed[9], ServerEvent::FunctionCallArgumentsDone(d)
        if d.name.as_deref() == Some("lookup_order"))
    );
    match &parsed[10] {
        ServerEvent::RateLimitsUpdated(r) => {
            assert_eq!(r.rate_limits.len(), 2);
            assert_eq!(r.rate_limits[1].name, "tokens");
            assert_eq!(r.rate_limits[1].remaining, Some(49000));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn preview_names_map_to_the_same_internal_events() {
    let pairs = [
        ("response.audio.delta", "response.output_audio.delta"),
        ("response.audio.done", "response.output_audio.done"),
        (
            "response.audio_transcript.delta",
            "response.output_audio_transcript.delta",
        ),
        (
            "response.audio_transcript.done",
            "response.output_audio_transcript.done",
        ),
        ("response.text.delta", "response.output_text.delta"),
        ("response.text.done", "response.output_text.done"),
    ];
    for (preview, ga) in pairs {
        let body = |name: &str| {
            json!({"type": name, "event_id": "event_1", "response_id": "resp_1",
                   "item_id": "item_1", "output_index": 0, "content_index": 0,
                   "delta": "AAAA", "transcript": "t", "text": "t"})
            .to_string()
        };
        assert_eq!(
            ServerEvent::parse(&body(preview)).unwrap(),
            ServerEvent::parse(&body(ga)).unwrap(),
            "{preview}"
        );
    }
    // The preview's item event (a beta-shaped item without `object`).
    let created = json!({"type": "conversation.item.created", "event_id": "event_2",
        "previous_item_id": "msg_0",
        "item": {"id": "msg_1", "type": "message", "status": "completed", "role": "user",
                 "content": [{"type": "input_audio", "transcript": null}]}});
    assert!(matches!(
        ServerEvent::parse(&created.to_string()).unwrap(),
        ServerEvent::ItemAdded(i) if i.item.id == Some(ItemId::from("msg_1"))
    ));
    // The preview's arguments.done has no `name`.
    let done = json!({"type": "response.function_call_arguments.done", "event_id": "event_3",
        "response_id": "resp_1", "item_id": "item_F", "output_index": 0, "call_id": "call_9",
        "arguments": "{}"});
    assert!(matches!(
        ServerEvent::parse(&done.to_string()).unwrap(),
        ServerEvent::FunctionCallArgumentsDone(d) if d.name.is_none()
    ));
}

#[test]
fn nulls_and_float_numbers_from_the_service_are_read_leniently() {
    let frames = [
        json!({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error",
               "code": null, "message": null, "param": null, "event_id": null}}),
        json!({"type": "conversation.item.input_audio_transcription.completed", "event_id": "e",
               "item_id": "item_U", "content_index": null, "transcript": null}),
        json!({"type": "conversation.item.input_audio_transcription.failed", "event_id": "e",
               "item_id": "item_U", "content_index": 0, "error": null}),
        json!({"type": "response.output_text.delta", "event_id": "e", "response_id": "r",
               "item_id": "i", "output_index": null, "content_index": null, "delta": null}),
        json!({"type": "response.output_audio_transcript.done", "event_id": "e",
               "response_id": "r", "item_id": "i", "output_index": 0, "content_index": 0,
               "transcript": null}),
        json!({"type": "response.content_part.added", "event_id": "e", "response_id": "r",
               "item_id": "i", "output_index": 0, "content_index": 0, "part": null}),
        json!({"type": "response.done", "event_id": "e", "response": {"id": "r",
               "status": "completed", "status_details": null, "output": null}}),
        json!({"type": "response.output_item.added", "event_id": "e", "response_id": "r",
               "output_index": 0, "item": {"id": "i", "type": null, "status": null}}),
        json!({"type": "session.updated", "event_id": "e", "session": null}),
        json!({"type": "rate_limits.updated", "event_id": "e", "rate_limits": [
               {"name": null, "limit": 1000.0, "remaining": 999.5, "reset_seconds": 1}]}),
        json!({"type": "rate_limits.updated", "event_id": "e", "rate_limits": null}),
    ];
    for frame in &frames {
        assert!(
            ServerEvent::parse(&frame.to_string()).is_ok(),
            "{frame}: {:?}",
            ServerEvent::parse(&frame.to_string())
        );
    }
    match ServerEvent::parse(&frames[9].to_string()).unwrap() {
        ServerEvent::RateLimitsUpdated(r) => assert_eq!(
            r.rate_limits,
            vec![RateLimit {
                name: String::new(),
                limit: Some(1000),
                remaining: Some(999),
                reset_seconds: Some(1.0)
            }]
        ),
        other => panic!("{other:?}"),
    }
    let mut created = session_created();
    created["session"]["expires_at"] = json!(1_767_229_200.0);
    match ServerEvent::parse(&created.to_string()).unwrap() {
        ServerEvent::SessionCreated(c) => assert_eq!(c.session.expires_at, Some(1_767_229_200)),
        other => panic!("{other:?}"),
    }

    // An error with a null message is still classified.
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    feed(
        &mut session,
        t0,
        json!({"type": "error", "event_id": "e", "error": {"type": "invalid_request_error",
               "code": "invalid_api_key", "message": null, "param": null, "event_id": null}}),
    );
    assert!(matches!(&events(&mut session)[..], [SessionEvent::Error(e)]
            if e.fatal && e.message.is_empty() && e.code.as_deref() == Some("invalid_api_key")));
    assert_eq!(session.stats().malformed, 0);
}

#[test]
fn unknown_types_are_counted_and_extra_fields_tolerated() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    feed(
        &mut session,
        t0,
        json!({"type": "input_audio_buffer.dtmf_event_received", "event": "5", "received_at": 1}),
    );
    feed(
        &mut session,
        t0,
        json!({"type": "mcp_list_tools.in_progress", "event_id": "e", "item_id": "x"}),
    );
    feed(
        &mut session,
        t0,
        json!({"type": "input_audio_buffer.speech_stopped", "event_id": "e", "audio_end_ms": 4200,
               "item_id": "item_U1", "brand_new_field": {"nested": [1, 2, 3]}}),
    );
    assert_eq!(session.stats().unknown_events, 2);
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::SpeechStopped {
            audio_end_ms: 4200,
            item_id: "item_U1".into()
        }]
    );
}

// ---- setup --------------------------------------------------------------------------------

#[test]
fn setup_sends_the_rendered_update_and_reports_ready() {
    let profile = profile("audio_format = \"g711_alaw\"");
    let t0 = Instant::now();
    let mut session = Session::new(&profile, Dialect::AzureGa, t0);
    assert_eq!(session.poll_timeout(), Some(t0 + DEFAULT_SETUP_TIMEOUT));
    assert!(session.poll_transmit().is_none());

    feed(
        &mut session,
        t0 + Duration::from_millis(200),
        session_created(),
    );
    assert_eq!(
        transmits(&mut session),
        vec![session_update(&profile, Dialect::AzureGa)]
    );
    assert!(events(&mut session).is_empty());
    assert!(!session.is_ready());

    feed(
        &mut session,
        t0 + Duration::from_millis(400),
        session_updated(),
    );
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::Ready {
            session_id: Some("sess_C8abc".into()),
            expires_at: Some(1_767_229_200)
        }]
    );
    assert_eq!(session.poll_timeout(), None);
    // The deadline no longer applies.
    session.handle_timeout(t0 + Duration::from_secs(60));
    assert!(events(&mut session).is_empty());
    assert!(session.is_ready());
}

#[test]
fn setup_times_out_waiting_for_created_then_for_updated() {
    let t0 = Instant::now();
    let mut session = Session::new(&profile(""), Dialect::OpenAiGa, t0);
    session.handle_timeout(t0 + Duration::from_millis(9_999));
    assert!(events(&mut session).is_empty());
    session.handle_timeout(t0 + Duration::from_secs(10));
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::SetupFailed(SetupFailure::SetupTimeout {
            waiting_for: "session.created"
        })]
    );
    assert!(session.is_ended() && session.poll_timeout().is_none());
    // Late frames change nothing.
    feed(
        &mut session,
        t0 + Duration::from_secs(11),
        session_created(),
    );
    assert!(session.poll_transmit().is_none());

    let mut session = Session::new(&profile(""), Dialect::OpenAiGa, t0)
        .with_setup_timeout(Duration::from_secs(3));
    feed(&mut session, t0 + Duration::from_secs(1), session_created());
    transmits(&mut session);
    assert_eq!(session.poll_timeout(), Some(t0 + Duration::from_secs(3)));
    session.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::SetupFailed(SetupFailure::SetupTimeout {
            waiting_for: "session.updated"
        })]
    );
}

#[test]
fn a_rejected_update_fails_setup_naming_the_parameter() {
    let t0 = Instant::now();
    let mut session = Session::new(&profile(""), Dialect::AzurePreview, t0);
    feed(&mut session, t0, session_created());
    let update = raw_transmits(&mut session);
    let update_id = update[0]["event_id"].as_str().unwrap().to_owned();
    feed(
        &mut session,
        t0,
        json!({"type": "error", "event_id": "event_E1",
               "error": {"type": "invalid_request_error", "code": "invalid_value",
                         "message": "Invalid value: 'g711'. Supported values are: 'pcm16', 'g711_ulaw', and 'g711_alaw'.",
                         "param": "session.input_audio_format", "event_id": update_id}}),
    );
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::SetupFailed(SetupFailure::ConfigRejected {
            code: Some("invalid_value".into()),
            message: "Invalid value: 'g711'. Supported values are: 'pcm16', 'g711_ulaw', and \
                      'g711_alaw'."
                .into(),
            param: Some("session.input_audio_format".into()),
        })]
    );
    assert!(session.is_ended());
    assert_eq!(session.commit_audio(), Err(Error::Ended));
}

#[test]
fn only_an_error_about_the_update_rejects_the_configuration() {
    let t0 = Instant::now();
    let mut session = Session::new(&profile(""), Dialect::OpenAiGa, t0);
    // Before session.created: not about our update.
    feed(
        &mut session,
        t0,
        error_frame("invalid_request_error", Some("x"), "early", None),
    );
    feed(&mut session, t0, session_created());
    transmits(&mut session);
    // An error naming another event is not about the update either.
    feed(
        &mut session,
        t0,
        error_frame("server_error", None, "hiccup", Some("evt_99")),
    );
    let got = events(&mut session);
    assert!(
        matches!(&got[..], [SessionEvent::Error(a), SessionEvent::Error(b)]
            if !a.fatal && !b.fatal && b.client_event_id == Some(EventId::from("evt_99"))),
        "{got:?}"
    );
    assert!(!session.is_ended());
    feed(&mut session, t0, session_updated());
    assert!(matches!(
        &events(&mut session)[..],
        [SessionEvent::Ready { .. }]
    ));

    // With no event id while session.updated is awaited, it is about the update.
    let mut session = Session::new(&profile(""), Dialect::OpenAiGa, t0);
    feed(&mut session, t0, session_created());
    feed(
        &mut session,
        t0,
        error_frame("invalid_request_error", Some("invalid_value"), "bad", None),
    );
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::SetupFailed(SetupFailure::ConfigRejected {
            code: Some("invalid_value".into()),
            message: "bad".into(),
            param: None
        })]
    );
    assert!(session.is_ended());
}

#[test]
fn fatal_errors_before_ready_refuse_the_session() {
    for (kind, code) in [
        ("invalid_request_error", Some("invalid_api_key")),
        ("invalid_request_error", Some("beta_api_shape_disabled")),
        ("insufficient_quota", Some("insufficient_quota")),
        ("invalid_request_error", Some("session_expired")),
        ("authentication_error", None),
    ] {
        for after_created in [false, true] {
            let t0 = Instant::now();
            let mut session = Session::new(&profile(""), Dialect::OpenAiGa, t0);
            let mut about = None;
            if after_created {
                feed(&mut session, t0, session_created());
                about = raw_transmits(&mut session)[0]["event_id"]
                    .as_str()
                    .map(str::to_owned);
            }
            feed(
                &mut session,
                t0,
                error_frame(kind, code, "no", about.as_deref()),
            );
            assert_eq!(
                events(&mut session),
                vec![SessionEvent::SetupFailed(SetupFailure::Refused {
                    code: code.map(str::to_owned),
                    message: "no".into()
                })],
                "{code:?}"
            );
            assert!(session.is_ended());
        }
    }
}

#[test]
fn before_ready_audio_is_dropped_and_counted_and_commands_refused() {
    let t0 = Instant::now();
    let mut session = Session::new(&profile(""), Dialect::OpenAiGa, t0);
    session.append_audio(&[0u8; 960]);
    assert_eq!(session.create_response(None), Err(Error::NotReady));
    assert_eq!(session.commit_audio(), Err(Error::NotReady));
    assert_eq!(session.clear_audio(), Err(Error::NotReady));
    assert_eq!(session.cancel_response(None), Err(Error::NotReady));
    assert_eq!(session.add_user_text("hi"), Err(Error::NotReady));
    assert_eq!(
        session.submit_tool_output(&"call_1".into(), "{}".into()),
        Err(Error::NotReady)
    );
    assert_eq!(session.truncate(&"i".into(), 0, 10), Err(Error::NotReady));
    assert_eq!(session.delete_item(&"i".into()), Err(Error::NotReady));
    feed(&mut session, t0, session_created());
    // Between created and updated the profile is not yet in effect either.
    session.append_audio(&[0u8; 480]);
    assert_eq!(transmits(&mut session).len(), 1, "only the session.update");
    let stats = session.stats();
    assert_eq!(
        (
            stats.input_audio_bytes_dropped,
            stats.input_audio_bytes_sent
        ),
        (1440, 0)
    );
}

// ---- commands -----------------------------------------------------------------------------

#[test]
fn commands_after_ready_send_the_documented_events() {
    let (mut session, t0) = ready(&profile("audio_format = \"g711_ulaw\""), Dialect::OpenAiGa);
    // 2 s of model audio for item_A8, so it can be truncated.
    feed(
        &mut session,
        t0,
        audio_delta("response.output_audio.delta", "resp_1", "item_A8", 16_000),
    );
    session.append_audio(&[0xFF, 0x7F, 0x00]);
    session.commit_audio().unwrap();
    session.clear_audio().unwrap();
    session.add_user_text("The caller pressed 5.").unwrap();
    session.delete_item(&"item_A9".into()).unwrap();
    session.cancel_response(None).unwrap();
    session.cancel_response(Some(&"resp_1".into())).unwrap();
    session.truncate(&"item_A8".into(), 0, 1234).unwrap();
    assert_eq!(
        transmits(&mut session),
        vec![
            json!({"type": "input_audio_buffer.append", "audio": "/38A"}),
            json!({"type": "input_audio_buffer.commit"}),
            json!({"type": "input_audio_buffer.clear"}),
            json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": "The caller pressed 5."}]}}),
            json!({"type": "conversation.item.delete", "item_id": "item_A9"}),
            json!({"type": "response.cancel"}),
            json!({"type": "response.cancel", "response_id": "resp_1"}),
            json!({"type": "conversation.item.truncate", "item_id": "item_A8",
                   "content_index": 0, "audio_end_ms": 1234}),
        ]
    );
    assert_eq!(session.stats().input_audio_bytes_sent, 3);
}

#[test]
fn event_ids_are_unique_and_increasing() {
    let (mut session, _) = ready(&profile(""), Dialect::OpenAiGa);
    session.commit_audio().unwrap();
    session.clear_audio().unwrap();
    let ids: Vec<String> = raw_transmits(&mut session)
        .iter()
        .map(|v| v["event_id"].as_str().unwrap().to_owned())
        .collect();
    // evt_1 was the session.update.
    assert_eq!(ids, vec!["evt_2", "evt_3"]);
}

// ---- response sequencing ------------------------------------------------------------------

#[test]
fn create_response_waits_for_the_active_response_to_finish() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    // Server VAD started a response on its own.
    feed(&mut session, t0, response_created("resp_VAD"));
    assert_eq!(
        session.active_response(),
        Some(&ResponseId::from("resp_VAD"))
    );
    session.create_response(Some("Say goodbye.")).unwrap();
    session.add_user_text("note").unwrap();
    assert_eq!(
        transmits(&mut session),
        vec![
            json!({"type": "conversation.item.create", "item": {"type": "message",
                    "role": "user", "content": [{"type": "input_text", "text": "note"}]}})
        ],
        "the create waits; other commands do not"
    );
    feed(
        &mut session,
        t0,
        response_done("resp_VAD", "cancelled", Some("turn_detected")),
    );
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "response.create", "response": {"instructions": "Say goodbye."}})]
    );
    assert_eq!(
        events(&mut session),
        vec![
            SessionEvent::ResponseCreated {
                response_id: "resp_VAD".into()
            },
            SessionEvent::ResponseDone {
                response_id: "resp_VAD".into(),
                status: ResponseStatus::Cancelled,
                reason: Some("turn_detected".into())
            },
        ]
    );
    assert_eq!(session.stats().responses_queued, 1);
}

#[test]
fn a_second_create_waits_while_the_first_is_unanswered() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    session.create_response(Some("Greet the caller.")).unwrap();
    session.create_response(None).unwrap();
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "response.create", "response": {"instructions": "Greet the caller."}})]
    );
    feed(&mut session, t0, response_created("resp_1"));
    assert!(transmits(&mut session).is_empty());
    feed(&mut session, t0, response_done("resp_1", "completed", None));
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "response.create"})]
    );
}

#[test]
fn a_refused_create_is_requeued_until_the_next_response_done() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    session.create_response(None).unwrap();
    let sent = raw_transmits(&mut session);
    let create_id = sent[0]["event_id"].as_str().unwrap().to_owned();
    // Server VAD's response got there first; our create is refused.
    feed(
        &mut session,
        t0,
        json!({"type": "error", "event_id": "event_E",
               "error": {"type": "invalid_request_error",
                         "code": "conversation_already_has_active_response",
                         "message": "Conversation already has an active response in progress: resp_VAD. Wait until the response is finished before creating a new one.",
                         "param": null, "event_id": create_id}}),
    );
    let reported = events(&mut session);
    assert!(
        matches!(&reported[..], [SessionEvent::Error(e)]
            if !e.fatal && e.caused_by == Some("response.create")
               && e.client_event_id == Some(EventId::new(create_id.clone()))),
        "{reported:?}"
    );
    assert!(
        transmits(&mut session).is_empty(),
        "not resent before a response.done"
    );
    feed(&mut session, t0, response_created("resp_VAD"));
    assert!(transmits(&mut session).is_empty());
    feed(
        &mut session,
        t0,
        response_done("resp_VAD", "completed", None),
    );
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "response.create"})]
    );
}

#[test]
fn a_create_refused_for_another_reason_is_dropped_and_unblocks_the_queue() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    session.create_response(Some("Bad.")).unwrap();
    session.create_response(Some("Good.")).unwrap();
    let sent = raw_transmits(&mut session);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let create_id = sent[0]["event_id"].as_str().unwrap().to_owned();
    feed(
        &mut session,
        t0,
        error_frame(
            "invalid_request_error",
            Some("invalid_value"),
            "Invalid value for 'response.instructions'.",
            Some(&create_id),
        ),
    );
    assert!(matches!(&events(&mut session)[..], [SessionEvent::Error(e)]
        if !e.fatal && e.caused_by == Some("response.create")));
    // The refused create is not resent; the queued one goes out at once.
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "response.create", "response": {"instructions": "Good."}})]
    );
    feed(&mut session, t0, response_created("resp_1"));
    feed(&mut session, t0, response_done("resp_1", "completed", None));
    assert!(transmits(&mut session).is_empty());
    // And later creates are not blocked either.
    session.create_response(None).unwrap();
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "response.create"})]
    );
}

#[test]
fn an_unanswered_create_times_out_and_unblocks_the_queue() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    assert_eq!(session.poll_timeout(), None);
    session.create_response(None).unwrap();
    session.create_response(Some("Again.")).unwrap();
    let sent = raw_transmits(&mut session);
    assert_eq!(sent.len(), 1);
    let create_id = sent[0]["event_id"].as_str().unwrap().to_owned();
    // Commands carry no time: the first timeout call arms the deadline.
    let t1 = t0 + Duration::from_secs(1);
    assert!(session.poll_timeout().unwrap() <= t1);
    session.handle_timeout(t1);
    assert_eq!(session.poll_timeout(), Some(t1 + CREATE_TIMEOUT));
    session.handle_timeout(t1 + CREATE_TIMEOUT - Duration::from_millis(1));
    assert!(events(&mut session).is_empty());
    assert!(transmits(&mut session).is_empty());
    session.handle_timeout(t1 + CREATE_TIMEOUT);
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::Error(ServerError {
            fatal: false,
            kind: None,
            code: Some(CREATE_TIMEOUT_CODE.into()),
            message: "no response.created within 15 s of response.create".into(),
            param: None,
            client_event_id: Some(EventId::new(create_id)),
            caused_by: Some("response.create"),
        })]
    );
    assert!(session.is_ready());
    // The queued create goes out, with a deadline of its own.
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "response.create", "response": {"instructions": "Again."}})]
    );
    assert_eq!(
        session.poll_timeout(),
        Some(t1 + CREATE_TIMEOUT + CREATE_TIMEOUT)
    );
    // A frame also arms a fresh deadline; response.created disarms it.
    feed(
        &mut session,
        t1 + CREATE_TIMEOUT * 2,
        response_created("resp_1"),
    );
    assert_eq!(session.poll_timeout(), None);
}

// ---- tool calls ---------------------------------------------------------------------------

#[test]
fn tool_call_is_assembled_reported_once_and_answered_after_the_response() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    feed(&mut session, t0, response_created("resp_1"));
    feed(
        &mut session,
        t0,
        json!({"type": "response.output_item.added", "event_id": "e", "response_id": "resp_1",
               "output_index": 0,
               "item": {"id": "item_F", "object": "realtime.item", "type": "function_call",
                        "status": "in_progress", "call_id": "call_7", "name": "lookup_order",
                        "arguments": ""}}),
    );
    for delta in ["{\"id\"", ":\"A-", "17\"}"] {
        feed(
            &mut session,
            t0,
            json!({"type": "response.function_call_arguments.delta", "event_id": "e",
                   "response_id": "resp_1", "item_id": "item_F", "output_index": 0,
                   "call_id": "call_7", "delta": delta}),
        );
    }
    assert!(
        events(&mut session).len() == 1,
        "only ResponseCreated so far"
    );
    // The preview-style done without `arguments` or `name` falls back to what was assembled.
    feed(
        &mut session,
        t0,
        json!({"type": "response.function_call_arguments.done", "event_id": "e",
               "response_id": "resp_1", "item_id": "item_F", "output_index": 0,
               "call_id": "call_7"}),
    );
    let done_item = json!({"type": "response.output_item.done", "event_id": "e",
        "response_id": "resp_1", "output_index": 0,
        "item": {"id": "item_F", "type": "function_call", "status": "completed",
                 "call_id": "call_7", "name": "lookup_order", "arguments": "{\"id\":\"A-17\"}"}});
    feed(&mut session, t0, done_item);
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::ToolCall {
            call_id: "call_7".into(),
            name: "lookup_order".into(),
            arguments: "{\"id\":\"A-17\"}".into()
        }],
        "reported once, not again for output_item.done"
    );

    // The tool answers while the response is still active.
    session
        .submit_tool_output(&"call_7".into(), "{\"status\":\"shipped\"}".into())
        .unwrap();
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "conversation.item.create",
                    "item": {"type": "function_call_output", "call_id": "call_7",
                             "output": "{\"status\":\"shipped\"}"}})]
    );
    let mut done = response_done("resp_1", "completed", None);
    done["response"]["output"] = json!([{"id": "item_F", "type": "function_call",
        "call_id": "call_7", "name": "lookup_order", "arguments": "{\"id\":\"A-17\"}"}]);
    feed(&mut session, t0, done);
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "response.create"})]
    );
    let after = events(&mut session);
    assert!(
        !after
            .iter()
            .any(|e| matches!(e, SessionEvent::ToolCall { .. })),
        "{after:?}"
    );
}

#[test]
fn tool_output_with_no_active_response_creates_one_at_once() {
    let (mut session, t0) = ready(&profile(""), Dialect::AzurePreview);
    // Preview: arguments.done carries no name and no output_item.added was seen; the name
    // comes with output_item.done.
    feed(
        &mut session,
        t0,
        json!({"type": "response.function_call_arguments.done", "event_id": "e",
               "response_id": "resp_1", "item_id": "item_F", "output_index": 0,
               "call_id": "call_8", "arguments": "{}"}),
    );
    assert!(events(&mut session).is_empty());
    feed(
        &mut session,
        t0,
        json!({"type": "response.output_item.done", "event_id": "e", "response_id": "resp_1",
               "output_index": 0, "item": {"id": "item_F", "type": "function_call",
               "call_id": "call_8", "name": "hang_up", "arguments": "{}"}}),
    );
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::ToolCall {
            call_id: "call_8".into(),
            name: "hang_up".into(),
            arguments: "{}".into()
        }]
    );
    session
        .submit_tool_output(&"call_8".into(), "ok".into())
        .unwrap();
    session
        .submit_tool_output(&"call_9".into(), "ok".into())
        .unwrap();
    assert_eq!(
        transmits(&mut session),
        vec![
            json!({"type": "conversation.item.create",
                   "item": {"type": "function_call_output", "call_id": "call_8", "output": "ok"}}),
            json!({"type": "response.create"}),
            json!({"type": "conversation.item.create",
                   "item": {"type": "function_call_output", "call_id": "call_9", "output": "ok"}}),
        ]
    );
    // The second output went out after the first create, so that response may not have seen
    // it: it gets a create of its own, sent once the first response is done.
    feed(&mut session, t0, response_created("resp_2"));
    feed(&mut session, t0, response_done("resp_2", "completed", None));
    assert_eq!(
        transmits(&mut session),
        vec![json!({"type": "response.create"})]
    );
}

#[test]
fn tool_calls_of_a_cancelled_response_are_never_reported() {
    for dialect in [Dialect::OpenAiGa, Dialect::AzurePreview] {
        let (mut session, t0) = ready(&profile(""), dialect);
        feed(&mut session, t0, response_created("resp_1"));
        feed(
            &mut session,
            t0,
            json!({"type": "response.output_item.added", "event_id": "e", "response_id": "resp_1",
                   "output_index": 0,
                   "item": {"id": "item_F", "type": "function_call", "status": "in_progress",
                            "call_id": "call_7", "name": "transfer_call", "arguments": ""}}),
        );
        feed(
            &mut session,
            t0,
            json!({"type": "response.function_call_arguments.delta", "event_id": "e",
                   "response_id": "resp_1", "item_id": "item_F", "output_index": 0,
                   "call_id": "call_7", "delta": "{\"to\":\"+4930"}),
        );
        // Barge-in: the item ends incomplete, with the arguments cut off.
        let partial = json!({"id": "item_F", "type": "function_call", "status": "incomplete",
            "call_id": "call_7", "name": "transfer_call", "arguments": "{\"to\":\"+4930"});
        feed(
            &mut session,
            t0,
            json!({"type": "response.output_item.done", "event_id": "e", "response_id": "resp_1",
                   "output_index": 0, "item": partial}),
        );
        let mut done = response_done("resp_1", "cancelled", Some("turn_detected"));
        done["response"]["output"] = json!([partial]);
        feed(&mut session, t0, done);
        // A second call, never given an output_item.done: only response.done names it.
        feed(&mut session, t0, response_created("resp_2"));
        let mut done = response_done("resp_2", "cancelled", Some("turn_detected"));
        done["response"]["output"] = json!([{"id": "item_G", "type": "function_call",
            "status": "incomplete", "call_id": "call_8", "name": "hang_up", "arguments": "{"}]);
        feed(&mut session, t0, done);
        let got = events(&mut session);
        assert!(
            !got.iter()
                .any(|e| matches!(e, SessionEvent::ToolCall { .. })),
            "{dialect:?}: {got:?}"
        );
        assert_eq!(session.active_response(), None);
    }
}

#[test]
fn a_completed_function_call_item_alone_is_reported() {
    let (mut session, t0) = ready(&profile(""), Dialect::AzurePreview);
    feed(&mut session, t0, response_created("resp_1"));
    let mut done = response_done("resp_1", "completed", None);
    done["response"]["output"] = json!([{"id": "item_F", "type": "function_call",
        "status": "completed", "call_id": "call_1", "name": "hang_up", "arguments": "{}"}]);
    feed(&mut session, t0, done);
    assert!(events(&mut session).contains(&SessionEvent::ToolCall {
        call_id: "call_1".into(),
        name: "hang_up".into(),
        arguments: "{}".into()
    }));
}

fn args_delta(response: &str, call: &str, delta: &str) -> Value {
    json!({"type": "response.function_call_arguments.delta", "event_id": "e",
           "response_id": response, "item_id": "item_F", "output_index": 0,
           "call_id": call, "delta": delta})
}

fn args_done(response: &str, call: &str, arguments: &str) -> Value {
    json!({"type": "response.function_call_arguments.done", "event_id": "e",
           "response_id": response, "item_id": "item_F", "output_index": 0,
           "call_id": call, "arguments": arguments})
}

#[test]
fn tool_call_arguments_longer_than_64_kib_drop_the_call() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    let chunk = "x".repeat(16 * 1024);
    for _ in 0..5 {
        feed(&mut session, t0, args_delta("resp_1", "call_1", &chunk));
    }
    assert_eq!(session.pending_call_count(), 0);
    // The done (and the item) for the dropped call are ignored.
    feed(&mut session, t0, args_done("resp_1", "call_1", "{}"));
    // A done carrying too much at once.
    let mut done = args_done("resp_1", "call_2", &"y".repeat(64 * 1024 + 1));
    done["name"] = json!("lookup");
    feed(&mut session, t0, done);
    let got = events(&mut session);
    assert!(
        matches!(&got[..], [SessionEvent::Malformed { reason: a }, SessionEvent::Malformed { reason: b }]
            if a.contains("call_1") && b.contains("call_2")),
        "{got:?}"
    );
}

#[test]
fn tool_calls_in_assembly_are_bounded_and_cleared_by_response_done() {
    let (mut session, t0) = ready(&profile(""), Dialect::AzurePreview);
    for n in 0..32 {
        feed(
            &mut session,
            t0,
            args_delta("resp_1", &format!("call_{n}"), "{"),
        );
    }
    assert_eq!(session.pending_call_count(), 32);
    assert!(events(&mut session).is_empty());
    // Every way of adding one more is refused: added, delta, and a nameless done.
    feed(
        &mut session,
        t0,
        json!({"type": "response.output_item.added", "event_id": "e", "response_id": "resp_1",
               "output_index": 0, "item": {"id": "item_X", "type": "function_call",
               "status": "in_progress", "call_id": "call_a", "name": "f", "arguments": ""}}),
    );
    feed(&mut session, t0, args_delta("resp_1", "call_b", "{"));
    feed(&mut session, t0, args_done("resp_1", "call_c", "{}"));
    assert_eq!(session.pending_call_count(), 32);
    let got = events(&mut session);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(
        got.iter()
            .all(|e| matches!(e, SessionEvent::Malformed { .. })),
        "{got:?}"
    );
    // A completed response.done forgets what it left unfinished.
    feed(&mut session, t0, response_done("resp_1", "completed", None));
    assert_eq!(session.pending_call_count(), 0);
    // A nameless done waiting for its item is forgotten with its response too.
    feed(&mut session, t0, args_done("resp_2", "call_d", "{}"));
    assert_eq!(session.pending_call_count(), 1);
    feed(&mut session, t0, response_done("resp_2", "completed", None));
    assert_eq!(session.pending_call_count(), 0);
}

// ---- output audio ledger ------------------------------------------------------------------

#[test]
fn truncating_an_item_without_received_audio_is_refused_and_sends_nothing() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    assert_eq!(
        session.truncate(&"item_U".into(), 0, 500),
        Err(Error::UnknownItem {
            item_id: "item_U".into(),
            content_index: 0
        })
    );
    feed(
        &mut session,
        t0,
        audio_delta("response.output_audio.delta", "resp_1", "item_A", 4800),
    );
    // Another content part of a known item is unknown too.
    assert!(matches!(
        session.truncate(&"item_A".into(), 1, 50),
        Err(Error::UnknownItem { .. })
    ));
    assert!(transmits(&mut session).is_empty());
    session.truncate(&"item_A".into(), 0, 50).unwrap();
    assert_eq!(transmits(&mut session).len(), 1);
}

#[test]
fn ledger_counts_pcm16_at_48_bytes_per_ms() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    for bytes in [4801, 95, 1] {
        feed(
            &mut session,
            t0,
            audio_delta("response.output_audio.delta", "resp_1", "item_A", bytes),
        );
    }
    // 4897 bytes = 102.02 ms.
    assert_eq!(session.received_ms(&"item_A".into(), 0), Some(102));
    assert_eq!(session.received_ms(&"item_A".into(), 1), None);
    assert_eq!(session.received_ms(&"item_B".into(), 0), None);
    assert_eq!(
        session.response_of(&"item_A".into(), 0),
        Some(&ResponseId::from("resp_1"))
    );
    let got = events(&mut session);
    assert_eq!(got.len(), 3);
    assert!(
        matches!(&got[0], SessionEvent::AudioDelta { response_id, item_id, content_index: 0, audio }
        if response_id.as_str() == "resp_1" && item_id.as_str() == "item_A" && audio.len() == 4801)
    );
    assert_eq!(session.stats().output_audio_bytes_received, 4897);
    // A truncate past what was received is clamped to it.
    session.truncate(&"item_A".into(), 0, 5_000).unwrap();
    assert_eq!(
        transmits(&mut session),
        vec![
            json!({"type": "conversation.item.truncate", "item_id": "item_A",
                    "content_index": 0, "audio_end_ms": 102})
        ]
    );
}

#[test]
fn ledger_counts_g711_at_8_bytes_per_ms_with_preview_names() {
    let (mut session, t0) = ready(
        &profile("audio_format = \"g711_ulaw\""),
        Dialect::AzurePreview,
    );
    for bytes in [161, 3, 7] {
        feed(
            &mut session,
            t0,
            audio_delta("response.audio.delta", "resp_1", "item_A", bytes),
        );
    }
    feed(
        &mut session,
        t0,
        json!({"type": "response.audio.done", "event_id": "e", "response_id": "resp_1",
               "item_id": "item_A", "output_index": 0, "content_index": 0}),
    );
    // 171 bytes = 21.375 ms.
    assert_eq!(session.received_ms(&"item_A".into(), 0), Some(21));
    let got = events(&mut session);
    assert_eq!(
        got.last(),
        Some(&SessionEvent::AudioDone {
            response_id: "resp_1".into(),
            item_id: "item_A".into(),
            content_index: 0
        })
    );
}

// ---- robustness ---------------------------------------------------------------------------

#[test]
fn malformed_frames_and_bad_base64_are_counted_not_fatal() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    for text in [
        "{not json",
        "",
        "[1,2,3]",
        "{\"type\": 5}",
        "{\"no_type\": true}",
        // A known type missing a field the bridge needs.
        "{\"type\": \"input_audio_buffer.speech_started\", \"item_id\": \"x\"}",
        "{\"type\": \"response.output_audio.delta\", \"response_id\": 1}",
    ] {
        session.handle_text(t0, text);
    }
    feed(
        &mut session,
        t0,
        json!({"type": "response.output_audio.delta", "event_id": "e", "response_id": "resp_1",
               "item_id": "item_A", "output_index": 0, "content_index": 0, "delta": "@@not base64@@"}),
    );
    let got = events(&mut session);
    assert_eq!(got.len(), 8);
    assert!(
        got.iter()
            .all(|e| matches!(e, SessionEvent::Malformed { .. })),
        "{got:?}"
    );
    assert_eq!(session.stats().malformed, 8);
    assert_eq!(session.received_ms(&"item_A".into(), 0), None);
    assert!(session.is_ready());
    session.commit_audio().unwrap();
}

#[test]
fn close_1001_at_maximum_duration_is_expiry() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    session.handle_closed(
        t0 + Duration::from_secs(3600),
        Some(1001),
        "Your session hit the maximum duration of 60 minutes.",
    );
    assert_eq!(events(&mut session), vec![SessionEvent::Expired]);
    assert!(session.is_ended());
    assert_eq!(session.create_response(None), Err(Error::Ended));

    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    session.handle_closed(t0, Some(4000), "beta shape disabled");
    assert_eq!(
        events(&mut session),
        vec![SessionEvent::Closed {
            code: Some(4000),
            reason: "beta shape disabled".into()
        }]
    );
    // Whatever its reason text says: 1001 is how the service ends a session at its limit.
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    session.handle_closed(t0, Some(1001), "session expired");
    assert_eq!(events(&mut session), vec![SessionEvent::Expired]);
}

#[test]
fn audio_for_an_item_never_announced_is_dropped_and_counted() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    session.handle_text(
        t0,
        &audio_delta("response.output_audio.delta", "resp_1", "item_X", 480).to_string(),
    );
    assert!(events(&mut session).is_empty());
    assert_eq!(session.stats().unknown_item_deltas, 1);
    assert_eq!(session.received_ms(&"item_X".into(), 0), None);
    // Announced by conversation.item.added (an assistant item), its audio is taken.
    session.handle_text(
        t0,
        &json!({"type": "conversation.item.added", "event_id": "e", "previous_item_id": null,
                "item": {"id": "item_X", "type": "message", "role": "assistant",
                         "status": "in_progress", "content": []}})
        .to_string(),
    );
    session.handle_text(
        t0,
        &audio_delta("response.output_audio.delta", "resp_1", "item_X", 480).to_string(),
    );
    let got = events(&mut session);
    assert!(
        matches!(&got[..], [SessionEvent::AudioDelta { audio, .. }] if audio.len() == 480
            && audio.to_vec() == vec![0x55; 480]),
        "{got:?}"
    );
    // A user item's id is no assistant's.
    session.handle_text(
        t0,
        &json!({"type": "conversation.item.added", "event_id": "e", "previous_item_id": null,
                "item": {"id": "item_U", "type": "message", "role": "user",
                         "status": "completed", "content": []}})
        .to_string(),
    );
    session.handle_text(
        t0,
        &audio_delta("response.output_audio.delta", "resp_1", "item_U", 480).to_string(),
    );
    assert_eq!(session.stats().unknown_item_deltas, 2);
}

#[test]
fn encoded_audio_is_checked_whole_and_handed_over_in_pieces() {
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let audio = EncodedAudio::new(BASE64.encode(&bytes)).unwrap();
    assert_eq!(audio.len(), 10_000);
    let mut pieces = Vec::new();
    let rest = audio.for_each_chunk(|piece| {
        pieces.push(piece.to_vec());
        true
    });
    assert_eq!(rest, 0);
    assert!(
        pieces
            .iter()
            .all(|p| p.len() <= crate::realtime::AUDIO_CHUNK)
    );
    assert_eq!(pieces.concat(), bytes);
    // The taker may stop: the rest is counted, not decoded.
    let rest = audio.for_each_chunk(|_| false);
    assert_eq!(rest, 10_000 - crate::realtime::AUDIO_CHUNK);
    // A bad quantum anywhere fails the whole delta.
    let mut text = BASE64.encode(&bytes);
    text.replace_range(9_000..9_004, "@@@@");
    assert!(EncodedAudio::new(text).is_err());
    assert_eq!(EncodedAudio::from_bytes(&bytes).to_vec(), bytes);
}

// ---- errors -------------------------------------------------------------------------------

fn error_frame(kind: &str, code: Option<&str>, message: &str, event_id: Option<&str>) -> Value {
    json!({"type": "error", "event_id": "event_E",
           "error": {"type": kind, "code": code, "message": message, "param": null,
                     "event_id": event_id}})
}

#[test]
fn harmless_errors_are_reported_non_fatal_with_their_cause() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    session.cancel_response(None).unwrap();
    let cancel_id = raw_transmits(&mut session)[0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    feed(
        &mut session,
        t0,
        error_frame(
            "invalid_request_error",
            Some("response_cancel_not_active"),
            "Cancellation failed: no active response found",
            Some(&cancel_id),
        ),
    );
    // The truncate "already shorter" error arrives with no code and no event id.
    feed(
        &mut session,
        t0,
        error_frame(
            "invalid_request_error",
            None,
            "Audio content of 3700ms is already shorter than 3760ms",
            None,
        ),
    );
    feed(
        &mut session,
        t0,
        error_frame(
            "invalid_request_error",
            Some("input_audio_buffer_commit_empty"),
            "buffer too small",
            Some("evt_unknown"),
        ),
    );
    let got = events(&mut session);
    assert_eq!(
        got[0],
        SessionEvent::Error(ServerError {
            fatal: false,
            kind: Some("invalid_request_error".into()),
            code: Some("response_cancel_not_active".into()),
            message: "Cancellation failed: no active response found".into(),
            param: None,
            client_event_id: Some(EventId::new(cancel_id)),
            caused_by: Some("response.cancel"),
        })
    );
    assert!(matches!(&got[1], SessionEvent::Error(e) if !e.fatal && e.caused_by.is_none()));
    assert!(matches!(&got[2], SessionEvent::Error(e)
        if !e.fatal && e.caused_by.is_none() && e.client_event_id == Some(EventId::from("evt_unknown"))));
    assert_eq!(session.stats().errors, 3);
    assert!(session.is_ready());
}

#[test]
fn an_error_names_its_cause_even_after_many_audio_appends() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    feed(
        &mut session,
        t0,
        audio_delta("response.output_audio.delta", "resp_1", "item_A", 4800),
    );
    session.truncate(&"item_A".into(), 0, 60).unwrap();
    let truncate_id = raw_transmits(&mut session)[0]["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..200 {
        session.append_audio(&[0u8; 960]);
    }
    assert_eq!(transmits(&mut session).len(), 200);
    feed(
        &mut session,
        t0,
        error_frame(
            "invalid_request_error",
            None,
            "Audio content of 50ms is already shorter than 60ms",
            Some(&truncate_id),
        ),
    );
    assert!(
        matches!(&events(&mut session)[..], [.., SessionEvent::Error(e)]
            if e.caused_by == Some("conversation.item.truncate")),
    );
}

#[test]
fn key_and_expiry_errors_are_fatal() {
    for (kind, code) in [
        ("invalid_request_error", Some("invalid_api_key")),
        ("invalid_request_error", Some("beta_api_shape_disabled")),
        ("authentication_error", None),
    ] {
        let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
        feed(&mut session, t0, error_frame(kind, code, "no", None));
        assert!(
            matches!(&events(&mut session)[..], [SessionEvent::Error(e)] if e.fatal),
            "{code:?}"
        );
        assert!(session.is_ended());
        session.append_audio(&[1, 2, 3]);
        assert!(session.poll_transmit().is_none());
        assert_eq!(session.stats().input_audio_bytes_dropped, 3);
    }
}

#[test]
fn a_session_expired_error_is_expiry() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    feed(
        &mut session,
        t0 + Duration::from_secs(900),
        error_frame(
            "invalid_request_error",
            Some("session_expired"),
            "Your session hit the maximum duration of 15 minutes.",
            None,
        ),
    );
    assert_eq!(events(&mut session), vec![SessionEvent::Expired]);
    assert!(session.is_ended());
    assert_eq!(session.stats().errors, 1);
}

#[test]
fn server_errors_become_fatal_when_three_come_within_a_minute() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    let fatal_after = |session: &mut Session, at: Instant| {
        feed(session, at, error_frame("server_error", None, "oops", None));
        match &events(session)[..] {
            [SessionEvent::Error(e)] => e.fatal,
            other => panic!("{other:?}"),
        }
    };
    assert!(!fatal_after(&mut session, t0));
    assert!(!fatal_after(&mut session, t0 + Duration::from_secs(30)));
    // The first one has aged out of the window.
    assert!(!fatal_after(&mut session, t0 + Duration::from_secs(61)));
    assert!(fatal_after(&mut session, t0 + Duration::from_secs(62)));
    assert!(session.is_ended());
}

// ---- transcripts, VAD, rate limits --------------------------------------------------------

#[test]
fn transcripts_vad_truncation_and_rate_limits_are_surfaced() {
    let (mut session, t0) = ready(&profile(""), Dialect::OpenAiGa);
    let frames = [
        json!({"type": "input_audio_buffer.speech_started", "event_id": "e",
               "audio_start_ms": 1000, "item_id": "item_U"}),
        json!({"type": "input_audio_buffer.speech_stopped", "event_id": "e",
               "audio_end_ms": 2500, "item_id": "item_U"}),
        json!({"type": "input_audio_buffer.committed", "event_id": "e",
               "previous_item_id": null, "item_id": "item_U"}),
        json!({"type": "conversation.item.input_audio_transcription.delta", "event_id": "e",
               "item_id": "item_U", "content_index": 0, "delta": "Where is"}),
        json!({"type": "conversation.item.input_audio_transcription.completed", "event_id": "e",
               "item_id": "item_U", "content_index": 0, "transcript": "Where is my order?"}),
        json!({"type": "response.output_audio_transcript.done", "event_id": "e",
               "response_id": "resp_1", "item_id": "item_A", "output_index": 0,
               "content_index": 0, "transcript": "Let me check."}),
        json!({"type": "conversation.item.truncated", "event_id": "e", "item_id": "item_A",
               "content_index": 0, "audio_end_ms": 640}),
        json!({"type": "conversation.item.deleted", "event_id": "e", "item_id": "item_B"}),
        json!({"type": "input_audio_buffer.timeout_triggered", "event_id": "e",
               "audio_start_ms": 9000, "audio_end_ms": 15000, "item_id": "item_U2"}),
        json!({"type": "conversation.item.input_audio_transcription.failed", "event_id": "e",
               "item_id": "item_U2", "content_index": 0,
               "error": {"type": "transcription_error", "code": "audio_unintelligible",
                         "message": "unintelligible", "param": null}}),
        json!({"type": "rate_limits.updated", "event_id": "e", "rate_limits": [
               {"name": "tokens", "limit": 40000, "remaining": 39000, "reset_seconds": 1.5}]}),
    ];
    for frame in frames {
        feed(&mut session, t0, frame);
    }
    let limit = RateLimit {
        name: "tokens".into(),
        limit: Some(40000),
        remaining: Some(39000),
        reset_seconds: Some(1.5),
    };
    assert_eq!(
        events(&mut session),
        vec![
            SessionEvent::SpeechStarted {
                audio_start_ms: 1000,
                item_id: "item_U".into()
            },
            SessionEvent::SpeechStopped {
                audio_end_ms: 2500,
                item_id: "item_U".into()
            },
            SessionEvent::CallerTranscript {
                item_id: "item_U".into(),
                text: "Where is my order?".into()
            },
            SessionEvent::AssistantTranscript {
                response_id: "resp_1".into(),
                item_id: "item_A".into(),
                text: "Let me check.".into()
            },
            SessionEvent::ItemTruncated {
                item_id: "item_A".into(),
                content_index: 0,
                audio_end_ms: 640
            },
            SessionEvent::ItemDeleted {
                item_id: "item_B".into()
            },
            SessionEvent::IdleTimeout {
                item_id: "item_U2".into()
            },
            SessionEvent::CallerTranscriptFailed {
                item_id: "item_U2".into(),
                message: "unintelligible".into()
            },
            SessionEvent::RateLimits(vec![limit.clone()]),
        ]
    );
    assert_eq!(session.rate_limits(), &[limit]);
    assert_eq!(session.stats().unknown_events, 0);
}
