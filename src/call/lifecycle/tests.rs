//! Scenario tests of a call's life with simulated time: the service's JSON is scripted, the
//! shell's part (connect, answer, media, ACK, BYE) is played by the test.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::call::TransferOutcome;
use crate::call::tools::WebhookOutcome;
use crate::config::Config;
use crate::rtp::playout::{PacerConfig, RtpStart};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn profile(body: &str) -> ProfileConfig {
    let config = Config::from_toml(&format!(
        "[upstreams.u]\nkind = \"fake\"\n[profiles.p]\nupstream = \"u\"\n{body}\n\
         [[routes]]\nprofile = \"p\"\n"
    ))
    .unwrap();
    config.profiles.into_values().next().unwrap()
}

fn info() -> CallInfo {
    CallInfo {
        call_id: "c1@example".into(),
        route: "sales".into(),
        profile: "p".into(),
        caller: "+4930111".into(),
        callee: "+4930222".into(),
    }
}

struct Sim {
    call: Call,
    t0: Instant,
    now: Instant,
    actions: Vec<CallAction>,
    ws: Vec<Value>,
    rtp: usize,
}

impl Sim {
    fn new(body: &str) -> Sim {
        let t0 = Instant::now();
        let call = Call::new(
            t0,
            info(),
            &profile(body),
            Dialect::OpenAiGa,
            Some(Codec::Pcmu),
            ANSWER_TIMEOUT,
        );
        Sim {
            call,
            t0,
            now: t0,
            actions: Vec::new(),
            ws: Vec::new(),
            rtp: 0,
        }
    }

    fn at(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
    }

    fn drain(&mut self) {
        while let Some(action) = self.call.poll_action() {
            self.actions.push(action);
        }
        while let Some(text) = self.call.poll_ws_transmit() {
            let mut value: Value = serde_json::from_str(&text).unwrap();
            value.as_object_mut().unwrap().remove("event_id");
            self.ws.push(value);
        }
        while self.call.poll_rtp_transmit(self.now).is_some() {
            self.rtp += 1;
        }
    }

    fn feed(&mut self, value: Value) -> bool {
        let barge_in = self.call.handle_ws_text(self.now, &value.to_string());
        self.drain();
        barge_in
    }

    /// Runs the core's timers up to `ms`.
    fn run_to(&mut self, ms: u64) {
        let end = self.t0 + Duration::from_millis(ms);
        while let Some(at) = self.call.poll_timeout() {
            if at > end {
                break;
            }
            self.now = at.max(self.now);
            self.call.handle_timeout(self.now);
            self.drain();
        }
        self.now = end;
    }

    fn connect(&mut self, ms: u64) {
        self.at(ms);
        self.call.handle_connected(self.now);
        self.drain();
    }

    fn session_ready(&mut self, ms: u64) {
        self.at(ms);
        self.feed(json!({"type": "session.created", "event_id": "e1",
            "session": {"type": "realtime", "id": "sess_1", "expires_at": 1_767_229_200_u64}}));
        self.feed(json!({"type": "session.updated", "event_id": "e2",
            "session": {"type": "realtime", "id": "sess_1", "expires_at": 1_767_229_200_u64}}));
    }

    /// Connected, ready, answered (media terms known), confirmed; everything forgotten.
    fn answered(body: &str) -> Sim {
        let mut sim = Sim::new(body);
        sim.connect(50);
        sim.session_ready(200);
        assert_eq!(sim.actions, vec![CallAction::Answer]);
        sim.media(210);
        sim.at(260);
        sim.call.handle_confirmed(sim.now);
        sim.drain();
        sim.actions.clear();
        sim.ws.clear();
        sim
    }

    fn media(&mut self, ms: u64) {
        self.at(ms);
        let start = RtpStart {
            ssrc: 1,
            sequence: 1,
            timestamp: 1,
        };
        let pacer = Pacer::new(PacerConfig::pcmu(), start, self.now).unwrap();
        self.call
            .handle_media(self.now, Codec::Pcmu, pacer)
            .unwrap();
        self.drain();
    }
}

#[test]
fn the_call_is_answered_only_once_the_session_is_ready() {
    let mut sim = Sim::new("");
    // Connecting: nothing to do but wait; the answer deadline is the only timer.
    sim.drain();
    assert!(sim.actions.is_empty());
    assert_eq!(sim.call.poll_timeout(), Some(sim.t0 + ANSWER_TIMEOUT));
    sim.connect(80);
    assert!(sim.call.upstream_open());
    assert_eq!(sim.ws.len(), 0, "session.update waits for session.created");
    sim.at(150);
    sim.feed(json!({"type": "session.created", "event_id": "e1",
        "session": {"type": "realtime", "id": "sess_1"}}));
    assert_eq!(sim.ws[0]["type"], "session.update");
    // G.711 passthrough: `auto` resolved for the PCMU call.
    assert_eq!(
        sim.ws[0]["session"]["audio"]["input"]["format"]["type"],
        "audio/pcmu"
    );
    assert!(sim.actions.is_empty(), "not ready yet: no answer");
    sim.at(230);
    sim.feed(json!({"type": "session.updated", "event_id": "e2",
        "session": {"type": "realtime", "id": "sess_1"}}));
    assert_eq!(sim.actions, vec![CallAction::Answer]);
    // Ready: the answer deadline no longer runs.
    sim.run_to(20_000);
    assert_eq!(sim.actions, vec![CallAction::Answer]);
    sim.media(240);
    let record = sim.call.record(sim.now);
    assert_eq!(record.setup, Some(Duration::from_millis(230)));
    assert_eq!(record.upstream_connect, Some(Duration::from_millis(80)));
    assert_eq!(record.first_model_audio, None, "the model has not spoken");
    assert_eq!(record.audio_format, "g711_ulaw");
    assert_eq!(record.codec, Some(Codec::Pcmu));
}

#[test]
fn a_failed_connect_is_a_503_with_retry_after() {
    let mut sim = Sim::new("");
    sim.at(120);
    sim.call
        .handle_connect_failed(sim.now, "HTTP 401 Unauthorized");
    sim.drain();
    assert_eq!(
        sim.actions,
        vec![CallAction::Reject {
            status: 503,
            reason: "Service Unavailable",
            retry_after: Some(UPSTREAM_RETRY_AFTER_SECS),
        }]
    );
    assert!(sim.call.is_ended());
    let record = sim.call.record(sim.now);
    assert_eq!(record.end, CallEnd::UpstreamFailed);
    assert_eq!(record.end_detail, "HTTP 401 Unauthorized");
    assert_eq!(record.setup, None);
    assert_eq!(
        record.upstream_errors,
        vec!["connect: HTTP 401 Unauthorized"]
    );
    // The dialog's end that follows keeps the first reason.
    sim.call
        .handle_sip_ended(sim.now, CallEnd::Signalling, "Local");
    assert_eq!(sim.call.record(sim.now).end, CallEnd::UpstreamFailed);
}

#[test]
fn no_ready_session_within_the_answer_timeout_is_a_503_and_the_upstream_is_closed() {
    let mut sim = Sim::new("");
    sim.connect(100);
    sim.at(150);
    sim.feed(json!({"type": "session.created", "event_id": "e1",
        "session": {"type": "realtime", "id": "sess_1"}}));
    sim.run_to(9_999);
    assert!(sim.actions.is_empty());
    sim.run_to(10_000);
    assert_eq!(
        sim.actions[0],
        CallAction::Reject {
            status: 503,
            reason: "Service Unavailable",
            retry_after: Some(UPSTREAM_RETRY_AFTER_SECS),
        }
    );
    assert!(sim.actions.contains(&CallAction::CloseUpstream));
    assert_eq!(sim.call.record(sim.now).end, CallEnd::AnswerTimeout);
    // A late session.updated answers nothing.
    sim.feed(json!({"type": "session.updated", "event_id": "e2",
        "session": {"type": "realtime", "id": "sess_1"}}));
    assert!(!sim.actions.contains(&CallAction::Answer));
}

#[test]
fn a_connect_that_never_completes_times_out_too() {
    let mut sim = Sim::new("");
    sim.run_to(10_000);
    assert_eq!(sim.actions.len(), 1, "{:?}", sim.actions);
    assert!(matches!(
        sim.actions[0],
        CallAction::Reject { status: 503, .. }
    ));
    assert_eq!(sim.call.record(sim.now).end, CallEnd::AnswerTimeout);
}

#[test]
fn a_session_refused_before_ready_is_a_503_naming_the_code() {
    let mut sim = Sim::new("");
    sim.connect(50);
    sim.at(90);
    sim.feed(json!({"type": "error", "event_id": "e1", "error": {
        "type": "invalid_request_error", "code": "invalid_api_key", "message": "bad key"}}));
    assert!(matches!(
        sim.actions[0],
        CallAction::Reject { status: 503, .. }
    ));
    let record = sim.call.record(sim.now);
    assert_eq!(record.end, CallEnd::UpstreamFailed);
    assert!(record.end_detail.contains("invalid_api_key"), "{record:?}");
}

#[test]
fn cancel_while_connecting_rejects_nothing_and_closes_the_upstream() {
    let mut sim = Sim::new("");
    sim.connect(50);
    sim.at(300);
    sim.call.handle_sip_ended(sim.now, CallEnd::Cancelled, "");
    sim.drain();
    assert_eq!(sim.actions, vec![CallAction::CloseUpstream]);
    // Whatever the upstream does later changes nothing.
    sim.session_ready(400);
    sim.run_to(20_000);
    assert_eq!(sim.actions, vec![CallAction::CloseUpstream]);
    assert_eq!(sim.call.record(sim.now).end, CallEnd::Cancelled);
    // Cancelled before the WebSocket opened: the late connection is not taken.
    let mut sim = Sim::new("");
    sim.call.handle_sip_ended(sim.t0, CallEnd::Cancelled, "");
    sim.connect(100);
    assert!(!sim.call.upstream_open());
    assert!(sim.actions.is_empty());
}

#[test]
fn the_greeting_is_asked_for_at_the_ack_not_before() {
    let mut sim = Sim::new("greeting = \"Greet the caller.\"");
    sim.connect(50);
    sim.session_ready(100);
    sim.ws.clear();
    sim.media(110);
    assert!(
        sim.ws.is_empty(),
        "no response before the ACK: {:?}",
        sim.ws
    );
    sim.at(150);
    sim.call.handle_confirmed(sim.now);
    sim.drain();
    assert_eq!(
        sim.ws,
        vec![json!({"type": "response.create",
                    "response": {"instructions": "Greet the caller."}})]
    );
    // Once only.
    sim.call.handle_confirmed(sim.now);
    sim.drain();
    assert_eq!(sim.ws.len(), 1);
    // No greeting configured: nothing at the ACK.
    let sim = Sim::answered("");
    assert!(sim.ws.is_empty());
}

#[test]
fn a_digit_becomes_user_text_and_a_response() {
    let mut sim = Sim::answered("");
    sim.call.handle_digit(sim.now, '5');
    sim.drain();
    assert_eq!(
        sim.ws,
        vec![
            json!({"type": "conversation.item.create", "item": {"type": "message",
                   "role": "user", "content": [{"type": "input_text",
                   "text": "The caller pressed 5 on the telephone keypad."}]}}),
            json!({"type": "response.create"}),
        ]
    );
    let mut sim = Sim::answered("dtmf = { template = \"Taste {digit}\", create_response = false }");
    sim.call.handle_digit(sim.now, '#');
    sim.drain();
    assert_eq!(sim.ws.len(), 1);
    assert_eq!(sim.ws[0]["item"]["content"][0]["text"], "Taste #");
    let mut sim = Sim::answered("dtmf = { enabled = false }");
    sim.call.handle_digit(sim.now, '1');
    sim.drain();
    assert!(sim.ws.is_empty());
    assert_eq!(sim.call.record(sim.now).digits, 1);
}

#[test]
fn an_upstream_that_closes_mid_call_ends_it_with_a_bye_and_a_reason() {
    let mut sim = Sim::answered("");
    sim.at(5_000);
    sim.call
        .handle_ws_closed(sim.now, Some(1011), "internal error");
    sim.drain();
    assert_eq!(
        sim.actions,
        vec![CallAction::HangUp {
            reason: "Q.850;cause=38;text=\"realtime upstream closed: close 1011 internal error\""
                .into()
        }]
    );
    let record = sim.call.record(sim.now);
    assert_eq!(record.end, CallEnd::UpstreamClosed);
    assert_eq!(record.talk, Duration::from_millis(5_000 - 200));
    // The dialog's end (our BYE) does not overwrite why.
    sim.call.handle_sip_ended(sim.now, CallEnd::Signalling, "");
    assert_eq!(sim.call.record(sim.now).end, CallEnd::UpstreamClosed);
}

#[test]
fn the_service_s_session_limit_is_told_apart() {
    let mut sim = Sim::answered("");
    sim.call.handle_ws_closed(
        sim.now,
        Some(1001),
        "Your session hit the maximum duration of 60 minutes.",
    );
    sim.drain();
    let [CallAction::HangUp { reason }] = sim.actions.as_slice() else {
        panic!("{:?}", sim.actions)
    };
    assert!(
        reason.starts_with("Q.850;cause=16;text=\"realtime session reached its maximum"),
        "{reason}"
    );
    assert_eq!(sim.call.record(sim.now).end, CallEnd::UpstreamExpired);
}

#[test]
fn a_fatal_error_mid_call_hangs_up() {
    let mut sim = Sim::answered("");
    sim.feed(json!({"type": "error", "event_id": "e9", "error": {
        "type": "invalid_request_error", "code": "insufficient_quota", "message": "quota"}}));
    assert!(
        matches!(sim.actions.as_slice(), [CallAction::HangUp { .. }, ..]),
        "{:?}",
        sim.actions
    );
    let record = sim.call.record(sim.now);
    assert_eq!(record.end, CallEnd::UpstreamClosed);
    assert_eq!(record.end_detail, "insufficient_quota");
    assert_eq!(record.upstream_errors, vec!["insufficient_quota: quota"]);
}

#[test]
fn the_caller_s_bye_closes_the_upstream_normally() {
    let mut sim = Sim::answered("");
    sim.at(3_000);
    sim.call.handle_sip_ended(sim.now, CallEnd::CallerBye, "");
    sim.drain();
    assert_eq!(sim.actions, vec![CallAction::CloseUpstream]);
    assert!(sim.call.is_ended());
    assert!(!sim.call.upstream_open());
    let record = sim.call.record(sim.t0 + Duration::from_secs(60));
    assert_eq!(record.end, CallEnd::CallerBye);
    assert_eq!(
        record.total,
        Duration::from_millis(3_000),
        "the end is frozen"
    );
}

#[test]
fn rtp_inactivity_max_duration_and_shutdown_hang_up_with_their_reasons() {
    for (end, reason) in [
        (CallEnd::RtpTimeout, "Q.850;cause=41;text=\"RTP timeout\""),
        (
            CallEnd::MaxDuration,
            "Q.850;cause=16;text=\"maximum call duration reached\"",
        ),
        (
            CallEnd::Shutdown,
            "Q.850;cause=16;text=\"bridge shutting down\"",
        ),
    ] {
        let mut sim = Sim::answered("");
        if end == CallEnd::RtpTimeout {
            sim.call.handle_rtp_inactive(sim.now);
        } else {
            sim.call.end_call(sim.now, end);
        }
        sim.drain();
        assert_eq!(
            sim.actions,
            vec![
                CallAction::HangUp {
                    reason: reason.into()
                },
                CallAction::CloseUpstream
            ]
        );
        assert_eq!(sim.call.record(sim.now).end, end);
    }
    // Before the answer, shutting down refuses the INVITE.
    let mut sim = Sim::new("");
    sim.connect(10);
    sim.call.end_call(sim.now, CallEnd::Shutdown);
    sim.drain();
    assert!(matches!(
        sim.actions[0],
        CallAction::Reject { status: 503, .. }
    ));
}

#[test]
fn a_tool_call_is_answered_with_an_error_output() {
    let mut sim = Sim::answered("");
    sim.feed(json!({"type": "response.created", "event_id": "e1",
        "response": {"id": "resp_1", "status": "in_progress", "output": []}}));
    sim.feed(
        json!({"type": "response.output_item.done", "event_id": "e2",
        "response_id": "resp_1", "output_index": 0,
        "item": {"id": "item_F", "type": "function_call", "status": "completed",
                 "call_id": "call_7", "name": "lookup_order", "arguments": "{}"}}),
    );
    let output = sim
        .ws
        .iter()
        .find(|e| e["item"]["type"] == "function_call_output")
        .unwrap_or_else(|| panic!("{:?}", sim.ws));
    assert_eq!(output["item"]["call_id"], "call_7");
    // The profile has no such tool: an error output naming the tools there are.
    let text = output["item"]["output"].as_str().unwrap();
    assert!(
        text.contains("error") && text.contains("lookup_order"),
        "{text}"
    );
}

#[test]
fn caller_frames_reach_the_model_and_model_audio_is_paced_out_with_its_latency() {
    let mut sim = Sim::answered("");
    for i in 0..5u64 {
        sim.at(300 + i * 20);
        sim.call.handle_caller_frame(sim.now, &[0x55; 160], false);
    }
    sim.drain();
    let appends = sim
        .ws
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.append")
        .count();
    assert_eq!(appends, 5);
    // 200 ms of model audio in one delta at 400 ms: the first frame leaves at the next slot.
    sim.at(400);
    sim.feed(json!({"type": "response.created", "event_id": "r1",
        "response": {"id": "resp_1", "status": "in_progress", "output": []}}));
    let audio = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0x11u8; 1600]);
    sim.feed(
        json!({"type": "response.output_audio.delta", "event_id": "d1",
        "response_id": "resp_1", "item_id": "item_A", "output_index": 0, "content_index": 0,
        "delta": audio}),
    );
    sim.run_to(700);
    let record = sim.call.record(sim.now);
    assert_eq!(record.frames_to_model, 5);
    assert_eq!(record.model_frames_sent, 10);
    assert_eq!(record.latency_out.count(), 1);
    // Answered at 200 ms; the first model frame left at the first slot after 400 ms.
    let first = record.first_model_audio.unwrap();
    assert!(
        (Duration::from_millis(200)..=Duration::from_millis(220)).contains(&first),
        "{first:?}"
    );
    // Slots fall every 20 ms from the pacer's start: at most 20 ms of waiting.
    assert!(
        record.latency_out.quantile_us(0.5).unwrap() <= 21_000,
        "{record:?}"
    );
}

#[test]
fn latency_histogram_quantiles_and_encoding() {
    let mut h = LatencyHistogram::default();
    assert_eq!(h.quantile_us(0.5), None);
    for us in [10u64, 20, 30, 40, 1_000] {
        h.record(Duration::from_micros(us));
    }
    assert_eq!(h.count(), 5);
    let p50 = h.quantile_us(0.5).unwrap();
    assert!((30..=33).contains(&p50), "{p50}");
    let p99 = h.quantile_us(0.99).unwrap();
    assert!((1_000..=1_091).contains(&p99), "{p99}");
    // Every bucket's bound is within about 9 % of what it holds.
    for us in [1u64, 7, 150, 20_000, 3_000_000] {
        let mut one = LatencyHistogram::default();
        one.record(Duration::from_micros(us));
        let bound = one.quantile_us(1.0).unwrap();
        assert!(
            bound >= us && bound as f64 <= us as f64 * 1.1 + 1.0,
            "{us} -> {bound}"
        );
    }
    let encoded = h.encode();
    assert_eq!(encoded.split(',').count(), 5, "{encoded}");
    let total: u64 = encoded
        .split(',')
        .map(|pair| pair.split_once(':').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 5);
}

#[test]
fn reason_text_from_the_network_cannot_break_the_header() {
    let header = CallEnd::UpstreamClosed.reason_header("bad \"quote\"\r\nX-Injected: 1\\");
    assert_eq!(
        header,
        "Q.850;cause=38;text=\"realtime upstream closed: bad quoteX-Injected: 1\""
    );
}

#[test]
fn an_opus_call_configures_pcm16_and_builds_the_opus_bridge() {
    let t0 = Instant::now();
    let mut call = Call::new(
        t0,
        info(),
        &profile(""),
        Dialect::OpenAiGa,
        Some(Codec::Opus),
        ANSWER_TIMEOUT,
    );
    call.handle_connected(t0);
    call.handle_ws_text(
        t0,
        &json!({"type": "session.created", "event_id": "e1",
                "session": {"type": "realtime", "id": "sess_1"}})
        .to_string(),
    );
    let update: Value = serde_json::from_str(&call.poll_ws_transmit().unwrap()).unwrap();
    assert_eq!(
        update["session"]["audio"]["input"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    call.handle_ws_text(
        t0,
        &json!({"type": "session.updated", "event_id": "e2",
                "session": {"type": "realtime", "id": "sess_1"}})
        .to_string(),
    );
    assert_eq!(call.poll_action(), Some(CallAction::Answer));
    let config = PacerConfig {
        payload_type: 111,
        clock_rate: 48_000,
        silence: crate::rtp::playout::OPUS_SILENCE.to_vec(),
        ..PacerConfig::pcmu()
    };
    let start = RtpStart {
        ssrc: 1,
        sequence: 1,
        timestamp: 1,
    };
    let pacer = Pacer::new(config, start, t0).unwrap();
    call.handle_media(t0, Codec::Opus, pacer).unwrap();
    // A lost caller frame (empty payload) still reaches the model as 20 ms of pcm16.
    call.handle_caller_frame(t0, &[], true);
    let append: Value = serde_json::from_str(&call.poll_ws_transmit().unwrap()).unwrap();
    assert_eq!(append["type"], "input_audio_buffer.append");
    let record = call.record(t0);
    assert_eq!(record.audio_format, "pcm16");
    assert_eq!(record.frames_to_model, 1);
}

fn appends(sim: &Sim) -> usize {
    sim.ws
        .iter()
        .filter(|e| e["type"] == "input_audio_buffer.append")
        .count()
}

#[test]
fn a_pause_in_the_caller_s_rtp_is_fed_as_silence_and_never_counted_twice() {
    let mut sim = Sim::answered("");
    sim.at(300);
    sim.call.set_caller_audio_expected(sim.now, true);
    for i in 0..5u64 {
        sim.at(300 + i * 20);
        sim.call.handle_caller_frame(sim.now, &[0x55; 160], false);
    }
    sim.drain();
    assert_eq!(appends(&sim), 5);
    // The sender goes quiet at 380 ms: from 200 ms on, silence at the real-time rate.
    sim.run_to(570);
    assert_eq!(appends(&sim), 5, "nothing before the 200 ms threshold");
    sim.run_to(1_000);
    assert_eq!(appends(&sim), 5 + 30, "380..980 ms in whole frames");
    let silence = sim.ws.last().unwrap()["audio"].as_str().unwrap().to_owned();
    assert_eq!(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, silence).unwrap(),
        vec![0xFF; 160],
        "PCMU silence"
    );
    // Packets resume: the receiver conceals the 30 frames of the gap, then the new packet.
    sim.at(1_000);
    for _ in 0..30 {
        sim.call.handle_caller_frame(sim.now, &[0xFF; 160], true);
    }
    sim.call.handle_caller_frame(sim.now, &[0x55; 160], false);
    sim.drain();
    assert_eq!(appends(&sim), 5 + 30 + 1, "the gap was not appended twice");
    // Loss after that is the receiver's to conceal, and is appended.
    sim.call.handle_caller_frame(sim.now, &[0xFF; 160], true);
    sim.drain();
    assert_eq!(appends(&sim), 37);
    assert_eq!(sim.call.record(sim.now).caller_frames_filled, 30);

    // On hold (audio not expected) nothing is filled.
    let mut sim = Sim::answered("");
    sim.call.set_caller_audio_expected(sim.now, false);
    sim.run_to(5_000);
    assert_eq!(appends(&sim), 0);
}

fn model_says(sim: &mut Sim, ms_of_audio: usize) {
    sim.feed(json!({"type": "response.created", "event_id": "rc",
        "response": {"id": "resp_9", "status": "in_progress", "output": []}}));
    let audio = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        vec![0x11u8; ms_of_audio * 8],
    );
    sim.feed(
        json!({"type": "response.output_audio.delta", "event_id": "d9",
        "response_id": "resp_9", "item_id": "item_9", "output_index": 0, "content_index": 0,
        "delta": audio}),
    );
    sim.feed(
        json!({"type": "response.output_audio.done", "event_id": "ad9",
        "response_id": "resp_9", "item_id": "item_9", "output_index": 0, "content_index": 0}),
    );
    sim.feed(json!({"type": "response.done", "event_id": "rd9",
        "response": {"id": "resp_9", "status": "completed", "output": []}}));
}

#[test]
fn a_transfer_refers_at_once_and_hangs_up_when_the_new_call_is_answered() {
    let mut sim = Sim::answered("");
    sim.at(1_000);
    sim.call
        .start_transfer(sim.now, "sip:operator@pbx", None, None);
    sim.drain();
    assert_eq!(
        sim.actions,
        vec![CallAction::Transfer {
            uri: "sip:operator@pbx".into()
        }]
    );
    sim.actions.clear();
    for outcome in [
        TransferOutcome::Accepted,
        TransferOutcome::Progress {
            status: 100,
            terminated: false,
        },
        TransferOutcome::Progress {
            status: 180,
            terminated: false,
        },
    ] {
        sim.call.handle_transfer(sim.now, outcome);
        sim.drain();
    }
    assert!(sim.actions.is_empty(), "{:?}", sim.actions);
    sim.at(4_000);
    sim.call.handle_transfer(
        sim.now,
        TransferOutcome::Progress {
            status: 200,
            terminated: true,
        },
    );
    sim.drain();
    assert_eq!(
        sim.actions[0],
        CallAction::HangUp {
            reason: "Q.850;cause=16;text=\"call transferred: sip:operator@pbx\"".into()
        }
    );
    assert_eq!(sim.call.record(sim.now).end, CallEnd::Transferred);
}

#[test]
fn an_announced_transfer_waits_for_the_announcement_to_play() {
    let mut sim = Sim::answered("");
    sim.run_to(1_000);
    let tool: CallId = "call_7".into();
    sim.call.start_transfer(
        sim.now,
        "sip:sales@pbx",
        Some(tool),
        Some("Tell the caller you are connecting them to sales."),
    );
    sim.drain();
    assert!(sim.actions.is_empty());
    // The announcement is a response of its own; the tool call gets an output only if the
    // transfer fails.
    assert!(sim.ws.iter().any(|e| e["type"] == "response.create"
        && e["response"]["instructions"] == "Tell the caller you are connecting them to sales."));
    assert!(
        !sim.ws
            .iter()
            .any(|e| e["item"]["type"] == "function_call_output")
    );
    // The announcement: 400 ms of audio, played from the pacer before the REFER.
    model_says(&mut sim, 400);
    sim.run_to(1_300);
    assert!(sim.actions.is_empty(), "still playing: {:?}", sim.actions);
    sim.run_to(1_500);
    assert_eq!(
        sim.actions,
        vec![CallAction::Transfer {
            uri: "sip:sales@pbx".into()
        }]
    );
    assert!(
        sim.rtp >= 20,
        "the announcement played first ({} frames)",
        sim.rtp
    );
}

#[test]
fn a_refused_transfer_is_told_to_the_model_and_the_call_goes_on() {
    let mut sim = Sim::answered("");
    sim.call
        .start_transfer(sim.now, "sip:busy@pbx", Some("call_8".into()), None);
    sim.drain();
    sim.ws.clear();
    sim.call
        .handle_transfer(sim.now, TransferOutcome::Refused(Some(486)));
    sim.drain();
    let output = sim
        .ws
        .iter()
        .find(|e| e["item"]["type"] == "function_call_output")
        .unwrap();
    assert_eq!(output["item"]["call_id"], "call_8");
    assert!(
        output["item"]["output"]
            .as_str()
            .unwrap()
            .contains("SIP status 486")
    );
    assert!(!sim.call.is_ended());
    // A final failure in a NOTIFY counts as a refusal too.
    sim.call.start_transfer(sim.now, "sip:busy@pbx", None, None);
    sim.drain();
    sim.call.handle_transfer(
        sim.now,
        TransferOutcome::Progress {
            status: 603,
            terminated: true,
        },
    );
    sim.drain();
    assert!(sim.ws.iter().any(|e| {
        e["type"] == "conversation.item.create"
            && e["item"]["content"][0]["text"]
                .as_str()
                .is_some_and(|t| t.contains("603"))
    }));
    assert!(!sim.call.is_ended());
}

#[test]
fn end_call_hangs_up_after_the_queued_audio() {
    let mut sim = Sim::answered("");
    sim.run_to(1_000);
    model_says(&mut sim, 600);
    sim.call.end_after_playout(sim.now);
    sim.drain();
    sim.run_to(1_500);
    assert!(sim.actions.is_empty(), "audio still queued");
    sim.run_to(1_700);
    assert_eq!(
        sim.actions[0],
        CallAction::HangUp {
            reason: "Q.850;cause=16;text=\"call ended by the assistant\"".into()
        }
    );
    assert!(sim.rtp >= 30, "{}", sim.rtp);
    assert_eq!(sim.call.record(sim.now).end, CallEnd::EndedByAssistant);
}

const TOOLS: &str = "end_call = true\n\
    [[tools]]\nname = \"lookup_order\"\ndescription = \"Order status\"\nurl = \"http://127.0.0.1:9/orders\"\ntimeout = \"2s\"\n\
    [[transfer_targets]]\nname = \"operator\"\ndescription = \"The front desk\"\nuri = \"sip:100@pbx.example.com\"\n\
    [dtmf.actions]\n\"0\" = { transfer = \"operator\" }\n\"#\" = { end_call = true }\n";

/// The profile TOML above, under `[profiles.p]` (its sub-tables need the full path).
fn tools_profile() -> String {
    TOOLS
        .replace("[[tools]]", "[[profiles.p.tools]]")
        .replace("[[transfer_targets]]", "[[profiles.p.transfer_targets]]")
        .replace("[dtmf.actions]", "[profiles.p.dtmf.actions]")
}

fn tool_call(sim: &mut Sim, call_id: &str, name: &str, arguments: &str) {
    sim.feed(json!({"type": "response.created", "event_id": "tc1",
        "response": {"id": "resp_t", "status": "in_progress", "output": []}}));
    sim.feed(
        json!({"type": "response.output_item.done", "event_id": "tc2",
        "response_id": "resp_t", "output_index": 0,
        "item": {"id": "item_t", "type": "function_call", "status": "completed",
                 "call_id": call_id, "name": name, "arguments": arguments}}),
    );
}

#[test]
fn a_webhook_tool_call_goes_to_the_shell_and_its_answer_to_the_model() {
    let mut sim = Sim::answered(&tools_profile());
    tool_call(
        &mut sim,
        "call_w",
        "lookup_order",
        r#"{"order_number":"A-17"}"#,
    );
    let Some(CallAction::Webhook {
        call_id,
        url,
        timeout,
        body,
        ..
    }) = sim.actions.first().cloned()
    else {
        panic!("{:?}", sim.actions)
    };
    assert_eq!(call_id.as_str(), "call_w");
    assert_eq!(url.url().as_str(), "http://127.0.0.1:9/orders");
    assert_eq!(timeout, Duration::from_secs(2));
    assert_eq!(body["call_id"], "c1@example");
    assert_eq!(body["caller"], "+4930111");
    assert_eq!(body["arguments"]["order_number"], "A-17");
    sim.ws.clear();
    let outcome = WebhookOutcome::Response {
        status: 200,
        body: br#"{"status":"shipped"}"#.to_vec(),
    };
    sim.call
        .handle_webhook_result(sim.now, &call_id, &outcome, timeout);
    sim.drain();
    let output = sim
        .ws
        .iter()
        .find(|e| e["item"]["type"] == "function_call_output")
        .unwrap_or_else(|| panic!("{:?}", sim.ws));
    assert_eq!(output["item"]["output"], r#"{"status":"shipped"}"#);
    // A timeout becomes an output the model can explain.
    sim.ws.clear();
    sim.call
        .handle_webhook_result(sim.now, &call_id, &WebhookOutcome::Timeout, timeout);
    sim.drain();
    assert!(sim.ws.iter().any(|e| {
        e["item"]["output"]
            .as_str()
            .is_some_and(|o| o.contains("did not answer within 2 s"))
    }));
}

#[test]
fn end_call_and_transfer_call_tools_and_digit_actions_act() {
    // end_call: hang up once the queued audio has played (none here).
    let mut sim = Sim::answered(&tools_profile());
    tool_call(&mut sim, "call_e", "end_call", "{}");
    sim.feed(json!({"type": "response.done", "event_id": "td",
        "response": {"id": "resp_t", "status": "completed", "output": []}}));
    assert!(
        matches!(sim.actions.first(), Some(CallAction::HangUp { reason }) if reason.contains("ended by the assistant")),
        "{:?}",
        sim.actions
    );
    // transfer_call: REFER to the target's URI.
    let mut sim = Sim::answered(&tools_profile());
    tool_call(
        &mut sim,
        "call_t",
        "transfer_call",
        r#"{"target":"operator"}"#,
    );
    sim.feed(json!({"type": "response.done", "event_id": "td",
        "response": {"id": "resp_t", "status": "completed", "output": []}}));
    assert_eq!(
        sim.actions,
        vec![CallAction::Transfer {
            uri: "sip:100@pbx.example.com".into()
        }]
    );
    // An unknown target is refused with an output listing the real ones.
    let mut sim = Sim::answered(&tools_profile());
    tool_call(
        &mut sim,
        "call_x",
        "transfer_call",
        r#"{"target":"nobody"}"#,
    );
    assert!(sim.actions.is_empty());
    assert!(sim.ws.iter().any(|e| {
        e["item"]["call_id"] == "call_x"
            && e["item"]["output"]
                .as_str()
                .is_some_and(|o| o.contains("operator"))
    }));
    // Key 0 transfers, key # hangs up; neither is told to the model.
    let mut sim = Sim::answered(&tools_profile());
    sim.call.handle_digit(sim.now, '0');
    sim.drain();
    assert_eq!(
        sim.actions,
        vec![CallAction::Transfer {
            uri: "sip:100@pbx.example.com".into()
        }]
    );
    assert!(
        !sim.ws
            .iter()
            .any(|e| e["type"] == "conversation.item.create")
    );
    let mut sim = Sim::answered(&tools_profile());
    sim.call.handle_digit(sim.now, '#');
    sim.drain();
    assert!(matches!(
        sim.actions.first(),
        Some(CallAction::HangUp { .. })
    ));
}
