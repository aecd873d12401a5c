//! Scenario tests of one call on simulated time, through its one way in and one way out: the
//! service's JSON is scripted, the dialog's events and the caller's RTP are inputs, and every
//! output is collected (whole-daemon wiring with the endpoint and the fake server is
//! `tests/scenario.rs`).

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use super::*;
use crate::call::upstream::{KEEPALIVE, MAX_AUDIO_BACKLOG};
use crate::config::Config;
use crate::rtp::packet::{self, RtpHeader};
use crate::rtp::playout::RtpStart;
use crate::sip::dialog::DialogEvent;
use crate::sip::sdp::{Direction, Negotiated};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const STALL: Duration = Duration::from_secs(30);

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

fn limits() -> CallLimits {
    CallLimits {
        answer_timeout: ANSWER_TIMEOUT,
        max_duration: Duration::from_secs(7200),
        upstream_stall_timeout: STALL,
        max_queued_audio: Duration::from_secs(120),
        rtp_inactivity: Duration::from_secs(30),
    }
}

fn setup(body: &str, codec: Codec) -> CallSetup {
    CallSetup {
        info: info(),
        profile: profile(body),
        dialect: Dialect::OpenAiGa,
        codec: Some(codec),
        limits: limits(),
        seeds: MediaSeeds {
            rtp: RtpStart {
                ssrc: 1,
                sequence: 1,
                timestamp: 1,
            },
            rtcp: 7,
        },
        cname: "bridge@test".into(),
        wall_clock: NtpTime(0),
    }
}

/// The caller's side of the media: where its RTP comes from and goes to.
fn caller_addr() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

fn negotiated(codec: Codec) -> Negotiated {
    let (payload_type, clock_rate) = match codec {
        Codec::Pcmu => (0, 8000),
        Codec::Pcma => (8, 8000),
        Codec::Opus => (111, 48_000),
    };
    Negotiated {
        codec,
        payload_type,
        clock_rate,
        channels: if codec == Codec::Opus { 2 } else { 1 },
        ptime_ms: 20,
        telephone_event_pt: Some(101),
        remote_rtp: caller_addr(),
        remote_rtcp: Some("127.0.0.1:40001".parse().unwrap()),
        rtcp_mux: false,
        direction: Direction::SendRecv,
    }
}

struct Sim {
    call: Call,
    t0: Instant,
    now: Instant,
    signalling: Vec<Signalling>,
    ws: Vec<Value>,
    pings: Vec<[u8; 8]>,
    closes: Vec<(u16, &'static str)>,
    connects: usize,
    /// RTP sent (not RTCP), with the time it left, and where it went.
    rtp: Vec<(Instant, Vec<u8>)>,
    rtp_to: Vec<SocketAddr>,
    rtcp: usize,
    webhooks: Vec<WebhookRequest>,
    events: Vec<CallEvent>,
    record: Option<CallRecord>,
    next: Option<(Instant, Timer)>,
    /// Frames the simulated writer has written.
    written: u64,
    /// The writer writes every frame at once, and the service reads it (answering pings),
    /// unless this is false.
    writer_works: bool,
    /// Pings answered so far.
    ponged: usize,
    /// The caller's RTP stream.
    seq: u16,
    ts: u32,
}

impl Sim {
    fn new(body: &str) -> Sim {
        Sim::with_codec(body, Codec::Pcmu)
    }

    fn with_codec(body: &str, codec: Codec) -> Sim {
        let t0 = Instant::now();
        let call = Call::new(t0, setup(body, codec));
        let mut sim = Sim {
            call,
            t0,
            now: t0,
            signalling: Vec::new(),
            ws: Vec::new(),
            pings: Vec::new(),
            closes: Vec::new(),
            connects: 0,
            rtp: Vec::new(),
            rtp_to: Vec::new(),
            rtcp: 0,
            webhooks: Vec::new(),
            events: Vec::new(),
            record: None,
            next: None,
            written: 0,
            writer_works: true,
            ponged: 0,
            seq: 100,
            ts: 1000,
        };
        sim.drain();
        sim
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.t0).as_millis() as u64
    }

    fn at(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
    }

    fn drain(&mut self) {
        loop {
            let Some(output) = self.call.poll_output() else {
                self.next = None;
                return;
            };
            match output {
                Output::Timeout { at, timer } => {
                    self.next = Some((at, timer));
                    break;
                }
                Output::Transmit {
                    socket,
                    to,
                    datagram,
                } => {
                    if socket == Socket::Rtp && !packet::is_rtcp(&datagram) {
                        self.rtp.push((self.now, datagram));
                        self.rtp_to.push(to);
                    } else {
                        self.rtcp += 1;
                    }
                }
                Output::Connect => self.connects += 1,
                Output::UpstreamSend(text) => {
                    let mut value: Value = serde_json::from_str(&text).unwrap();
                    value.as_object_mut().unwrap().remove("event_id");
                    self.ws.push(value);
                }
                Output::UpstreamPing(payload) => self.pings.push(payload),
                Output::UpstreamClose { code, reason } => self.closes.push((code, reason)),
                Output::Signalling(request) => self.signalling.push(request),
                Output::Webhook(request) => self.webhooks.push(request),
                Output::Event(event) => self.events.push(event),
                Output::Finished(record) => {
                    assert!(self.record.is_none(), "one record per call");
                    self.record = Some(*record);
                }
            }
        }
        // The simulated writer, and a service that reads.
        if self.writer_works {
            let handed = (self.ws.len() + self.pings.len()) as u64;
            if handed != self.written {
                self.written = handed;
                self.call
                    .handle_input(self.now, Input::UpstreamWritten(handed));
                self.drain();
            }
            while self.ponged < self.pings.len() {
                let payload = self.pings[self.ponged];
                self.ponged += 1;
                self.call
                    .handle_input(self.now, Input::UpstreamPong(&payload));
                self.drain();
            }
        }
    }

    fn input(&mut self, input: Input<'_>) {
        self.call.handle_input(self.now, input);
        self.drain();
    }

    fn feed(&mut self, value: Value) {
        self.input(Input::UpstreamText(&value.to_string()));
    }

    fn dialog(&mut self, event: DialogEvent) {
        self.input(Input::Dialog(event));
    }

    /// Runs the call's timers up to `ms`.
    fn run_to(&mut self, ms: u64) {
        let end = self.t0 + Duration::from_millis(ms);
        while let Some((at, _)) = self.next {
            if at > end {
                break;
            }
            self.now = at.max(self.now);
            self.input(Input::Timeout);
        }
        self.now = end;
    }

    /// Runs the timers to `ms` while the caller streams RTP with `payload` every 20 ms.
    fn talk_to(&mut self, ms: u64, payload: &[u8]) {
        let end = self.t0 + Duration::from_millis(ms);
        let mut next_packet = self.now;
        loop {
            let timer = self.next.map(|(at, _)| at);
            let step = match timer {
                Some(at) if at < next_packet => at,
                _ => next_packet,
            };
            if step > end {
                break;
            }
            self.now = step.max(self.now);
            if step == next_packet {
                self.caller_packet(payload);
                next_packet += Duration::from_millis(20);
            } else {
                self.input(Input::Timeout);
            }
        }
        self.now = end;
    }

    fn caller_packet(&mut self, payload: &[u8]) {
        let mut datagram = Vec::new();
        packet::write(
            &RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: self.seq,
                timestamp: self.ts,
                ssrc: 0xCA11,
            },
            payload,
            &mut datagram,
        );
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(160);
        self.input(Input::Datagram {
            socket: Socket::Rtp,
            from: caller_addr(),
            bytes: &datagram,
        });
    }

    fn open(&mut self, ms: u64) {
        self.at(ms);
        self.input(Input::UpstreamOpened);
    }

    fn session_ready(&mut self, ms: u64) {
        self.at(ms);
        self.feed(json!({"type": "session.created", "event_id": "e1",
            "session": {"type": "realtime", "id": "sess_1", "expires_at": 1_767_229_200_u64}}));
        self.feed(json!({"type": "session.updated", "event_id": "e2",
            "session": {"type": "realtime", "id": "sess_1", "expires_at": 1_767_229_200_u64}}));
    }

    /// The dialog answered (200 sent, media terms known) at `ms`.
    fn answer(&mut self, ms: u64, codec: Codec) {
        self.at(ms);
        self.dialog(DialogEvent::Answered);
        self.dialog(DialogEvent::MediaNegotiated(negotiated(codec)));
    }

    /// Connected, ready, answered, confirmed; everything forgotten.
    fn answered(body: &str) -> Sim {
        let mut sim = Sim::new(body);
        sim.open(50);
        sim.session_ready(200);
        assert_eq!(sim.signalling, vec![Signalling::Ring, Signalling::Answer]);
        sim.answer(210, Codec::Pcmu);
        sim.run_to(260);
        sim.dialog(DialogEvent::Confirmed);
        sim.clear();
        sim
    }

    fn clear(&mut self) {
        self.signalling.clear();
        self.ws.retain(|_| false);
        self.events.clear();
        self.webhooks.clear();
    }

    fn appends(&self) -> usize {
        self.ws
            .iter()
            .filter(|e| e["type"] == "input_audio_buffer.append")
            .count()
    }

    fn record(&self) -> CallRecord {
        self.record
            .clone()
            .unwrap_or_else(|| self.call.record(self.now))
    }

    fn hang_ups(&self) -> Vec<String> {
        self.signalling
            .iter()
            .filter_map(|s| match s {
                Signalling::HangUp { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    /// The model starts `response` with item `item` and streams `audio` in one delta.
    fn model_streams(&mut self, response: &str, item: &str, audio: &[u8]) {
        self.feed(json!({"type": "response.created", "event_id": "rc",
            "response": {"id": response, "status": "in_progress", "output": []}}));
        self.announce(response, item);
        self.delta(response, item, audio);
    }

    fn delta(&mut self, response: &str, item: &str, audio: &[u8]) {
        self.feed(
            json!({"type": "response.output_audio.delta", "event_id": "d",
            "response_id": response, "item_id": item, "output_index": 0, "content_index": 0,
            "delta": BASE64.encode(audio)}),
        );
    }

    /// The model says `ms_of_audio` ms of G.711 in one delta and finishes.
    fn model_says(&mut self, ms_of_audio: usize) {
        self.model_streams("resp_9", "item_9", &vec![0x11u8; ms_of_audio * 8]);
        self.feed(
            json!({"type": "response.output_audio.done", "event_id": "ad9",
            "response_id": "resp_9", "item_id": "item_9", "output_index": 0, "content_index": 0}),
        );
        self.feed(json!({"type": "response.done", "event_id": "rd9",
            "response": {"id": "resp_9", "status": "completed", "output": []}}));
    }

    fn announce(&mut self, response: &str, item: &str) {
        self.feed(
            json!({"type": "response.output_item.added", "event_id": "oi",
            "response_id": response, "output_index": 0,
            "item": {"id": item, "type": "message", "role": "assistant", "status": "in_progress",
                     "content": []}}),
        );
    }
}

// ---- answering -----------------------------------------------------------------------------

#[test]
fn a_new_call_rings_and_connects_and_is_answered_only_once_the_session_is_ready() {
    let mut sim = Sim::new("");
    // Ringing and connecting: the answer deadline and the maximum duration are the timers.
    assert_eq!(sim.signalling, vec![Signalling::Ring]);
    assert_eq!(sim.connects, 1);
    assert_eq!(sim.next, Some((sim.t0 + ANSWER_TIMEOUT, Timer::Answer)));
    sim.open(80);
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
    assert_eq!(sim.signalling, vec![Signalling::Ring], "not ready yet");
    sim.at(230);
    sim.feed(json!({"type": "session.updated", "event_id": "e2",
        "session": {"type": "realtime", "id": "sess_1"}}));
    assert_eq!(sim.signalling, vec![Signalling::Ring, Signalling::Answer]);
    // Asked to answer: the answer deadline no longer runs.
    sim.run_to(20_000);
    assert_eq!(sim.signalling.len(), 2);
    assert_eq!(
        sim.record().setup,
        None,
        "answered only once the 200 is out"
    );
    sim.answer(20_010, Codec::Pcmu);
    let record = sim.record();
    assert_eq!(record.setup, Some(Duration::from_millis(20_010)));
    assert_eq!(record.upstream_connect, Some(Duration::from_millis(80)));
    assert_eq!(record.first_model_audio, None, "the model has not spoken");
    assert_eq!(record.audio_format, "g711_ulaw");
    assert_eq!(record.codec, Some(Codec::Pcmu));
}

#[test]
fn a_refused_connect_is_a_503_with_retry_after_and_everything_ends() {
    let mut sim = Sim::new("");
    sim.at(120);
    sim.input(Input::UpstreamRefused(UpstreamRefusal {
        detail: "HTTP 401 Unauthorized".into(),
        status: Some(401),
        retry_after: None,
    }));
    assert_eq!(
        sim.signalling[1],
        Signalling::Refuse {
            status: 503,
            reason: "Service Unavailable",
            retry_after: Some(UPSTREAM_RETRY_AFTER_SECS),
        }
    );
    // No WebSocket to close, no timer left: the record is out, nothing follows.
    assert!(sim.closes.is_empty());
    assert_eq!(sim.next, None);
    let record = sim.record.clone().unwrap();
    assert_eq!(record.end, CallEnd::UpstreamFailed);
    assert_eq!(record.end_detail, "HTTP 401 Unauthorized");
    assert_eq!(record.setup, None);
    assert_eq!(
        record.upstream_errors,
        vec!["connect: HTTP 401 Unauthorized"]
    );
    // Later inputs change nothing.
    sim.dialog(DialogEvent::Ended {
        by: crate::sip::dialog::EndedBy::Local,
    });
    assert!(sim.call.poll_output().is_none());
}

#[test]
fn an_upstream_429_passes_its_retry_after_on_within_bounds() {
    for (upstream, ours) in [
        (Some(17), 17),
        (Some(0), 1),
        (Some(86_400), 300),
        (None, 30),
    ] {
        let mut sim = Sim::new("");
        sim.input(Input::UpstreamRefused(UpstreamRefusal {
            detail: "the service answered HTTP 429: slow down".into(),
            status: Some(429),
            retry_after: upstream,
        }));
        assert!(
            matches!(sim.signalling[1], Signalling::Refuse { status: 503, retry_after: Some(s), .. } if s == ours),
            "{upstream:?}: {:?}",
            sim.signalling
        );
    }
}

#[test]
fn no_ready_session_within_the_answer_timeout_is_a_503_and_the_upstream_is_closed() {
    let mut sim = Sim::new("");
    sim.open(100);
    sim.at(150);
    sim.feed(json!({"type": "session.created", "event_id": "e1",
        "session": {"type": "realtime", "id": "sess_1"}}));
    sim.run_to(9_999);
    assert_eq!(sim.signalling, vec![Signalling::Ring]);
    sim.run_to(10_000);
    assert!(matches!(
        sim.signalling[1],
        Signalling::Refuse { status: 503, .. }
    ));
    assert_eq!(sim.closes, vec![(1000, "call ended")]);
    assert_eq!(sim.record().end, CallEnd::AnswerTimeout);
    // A late session.updated answers nothing.
    sim.feed(json!({"type": "session.updated", "event_id": "e2",
        "session": {"type": "realtime", "id": "sess_1"}}));
    assert!(!sim.signalling.contains(&Signalling::Answer));
}

#[test]
fn a_connect_that_never_completes_times_out_and_is_cancelled() {
    let mut sim = Sim::new("");
    sim.run_to(10_000);
    assert!(matches!(
        sim.signalling[1],
        Signalling::Refuse { status: 503, .. }
    ));
    // The connect is still under way: the shell is told to drop it.
    assert_eq!(sim.closes, vec![(1000, "call ended")]);
    assert_eq!(sim.record().end, CallEnd::AnswerTimeout);
    // A connection that opens late is not taken.
    sim.open(10_500);
    assert!(sim.ws.is_empty());
}

#[test]
fn a_session_refused_before_ready_is_a_503_naming_the_code_and_the_socket_is_closed() {
    // The service refuses the session itself...
    let mut sim = Sim::new("");
    sim.open(50);
    sim.at(90);
    sim.feed(json!({"type": "error", "event_id": "e1", "error": {
        "type": "invalid_request_error", "code": "invalid_api_key", "message": "bad key"}}));
    assert!(matches!(
        sim.signalling[1],
        Signalling::Refuse { status: 503, .. }
    ));
    let record = sim.record();
    assert_eq!(record.end, CallEnd::UpstreamFailed);
    assert!(record.end_detail.contains("invalid_api_key"), "{record:?}");
    assert_eq!(sim.closes, vec![(1000, "call ended")]);
    // ...or our session.update, keeping the socket open as the real service does: the call
    // closes it itself, and nothing is left running.
    let mut sim = Sim::new("");
    sim.open(50);
    sim.feed(json!({"type": "session.created", "event_id": "e1",
        "session": {"type": "realtime", "id": "sess_1"}}));
    sim.feed(json!({"type": "error", "event_id": "e2", "error": {
        "type": "invalid_request_error", "code": "invalid_value", "param": "session.audio.output.voice",
        "message": "Invalid value: 'nova'.", "event_id": "evt_1"}}));
    assert!(matches!(
        sim.signalling[1],
        Signalling::Refuse { status: 503, .. }
    ));
    assert_eq!(sim.closes, vec![(1000, "call ended")]);
    assert!(sim.record.is_some());
    assert_eq!(sim.next, None, "no timer left");
}

#[test]
fn cancel_while_connecting_refuses_nothing_and_drops_the_connect() {
    let mut sim = Sim::new("");
    sim.open(50);
    sim.at(300);
    sim.dialog(DialogEvent::Cancelled);
    sim.dialog(DialogEvent::Ended {
        by: crate::sip::dialog::EndedBy::Cancelled,
    });
    assert_eq!(sim.signalling, vec![Signalling::Ring]);
    assert_eq!(sim.closes, vec![(1000, "call ended")]);
    assert_eq!(sim.record().end, CallEnd::Cancelled);
    // Whatever the upstream does later changes nothing.
    sim.session_ready(400);
    sim.run_to(20_000);
    assert_eq!(sim.signalling, vec![Signalling::Ring]);
    // Cancelled before the WebSocket opened: the connect is cancelled, a late open ignored.
    let mut sim = Sim::new("");
    sim.dialog(DialogEvent::Ended {
        by: crate::sip::dialog::EndedBy::Cancelled,
    });
    assert_eq!(sim.closes, vec![(1000, "call ended")]);
    sim.open(100);
    assert!(sim.ws.is_empty());
    assert_eq!(sim.call.upstream_state(), LinkState::Gone);
}

#[test]
fn the_greeting_is_asked_for_at_the_ack_not_before() {
    let mut sim = Sim::new("greeting = \"Greet the caller.\"");
    sim.open(50);
    sim.session_ready(100);
    sim.ws.clear();
    sim.answer(110, Codec::Pcmu);
    assert!(
        sim.ws.is_empty(),
        "no response before the ACK: {:?}",
        sim.ws
    );
    sim.at(150);
    sim.dialog(DialogEvent::Confirmed);
    assert_eq!(
        sim.ws,
        vec![json!({"type": "response.create",
                    "response": {"instructions": "Greet the caller."}})]
    );
    // Once only.
    sim.dialog(DialogEvent::Confirmed);
    assert_eq!(sim.ws.len(), 1);
    // No greeting configured: nothing at the ACK.
    let sim = Sim::answered("");
    assert!(sim.ws.is_empty());
}

#[test]
fn nothing_is_sent_to_the_caller_before_the_ack_nor_on_hold() {
    let mut sim = Sim::new("");
    sim.open(50);
    sim.session_ready(100);
    sim.answer(110, Codec::Pcmu);
    sim.run_to(2_000);
    assert!(sim.rtp.is_empty(), "no RTP before the ACK");
    sim.dialog(DialogEvent::Confirmed);
    sim.run_to(3_000);
    assert_eq!(sim.rtp.len(), 50, "a packet per 20 ms once confirmed");
    // The caller holds us (sendonly from its side: we receive only).
    let mut held = negotiated(Codec::Pcmu);
    held.direction = Direction::RecvOnly;
    let change = held.changes_since(&negotiated(Codec::Pcmu));
    sim.dialog(DialogEvent::MediaChanged(held, change));
    sim.run_to(4_000);
    assert_eq!(sim.rtp.len(), 50, "nothing while held");
    // A codec change cannot be followed: the call ends with media_failed.
    let mut other = negotiated(Codec::Pcmu);
    other.codec = Codec::Pcma;
    other.payload_type = 8;
    let change = other.changes_since(&negotiated(Codec::Pcmu));
    sim.dialog(DialogEvent::MediaChanged(other, change));
    assert_eq!(sim.record().end, CallEnd::MediaFailed);
    assert!(
        sim.hang_ups()[0].contains("cause=41"),
        "{:?}",
        sim.hang_ups()
    );
}

#[test]
fn our_rtp_follows_the_caller_s_source_symmetric_rtp() {
    let mut sim = Sim::answered("");
    sim.run_to(300);
    assert!(
        sim.rtp_to.iter().all(|to| *to == caller_addr()),
        "the SDP address first"
    );
    // The caller's RTP comes from behind a NAT: once latched, ours goes there.
    let natted: SocketAddr = "127.0.0.9:5555".parse().unwrap();
    for i in 0..3u16 {
        let mut datagram = Vec::new();
        packet::write(
            &RtpHeader {
                marker: false,
                payload_type: 0,
                sequence: 10 + i,
                timestamp: 160 * u32::from(i),
                ssrc: 0xCA11,
            },
            &[0x55; 160],
            &mut datagram,
        );
        sim.input(Input::Datagram {
            socket: Socket::Rtp,
            from: natted,
            bytes: &datagram,
        });
    }
    let latched = sim.rtp_to.len();
    sim.run_to(600);
    assert!(sim.rtp_to.len() > latched + 10);
    assert!(
        sim.rtp_to[latched..].iter().all(|to| *to == natted),
        "{:?}",
        &sim.rtp_to[latched..]
    );
}

#[test]
fn a_digit_becomes_user_text_and_a_response() {
    let mut sim = Sim::answered("");
    sim.dialog(DialogEvent::Digit(crate::rtp::dtmf::DigitPress {
        digit: crate::rtp::dtmf::Digit::from_char('5').unwrap(),
        duration: Duration::from_millis(100),
    }));
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
    assert_eq!(sim.record().digits, 1);
}

// ---- endings ---------------------------------------------------------------------------------

#[test]
fn an_upstream_that_closes_mid_call_ends_it_with_a_bye_a_reason_and_its_record() {
    let mut sim = Sim::answered("");
    sim.run_to(5_000);
    let before = sim.rtp.len();
    assert!(before > 200);
    sim.input(Input::UpstreamClosed {
        code: Some(1011),
        reason: "internal error",
    });
    assert_eq!(
        sim.hang_ups(),
        vec!["Q.850;cause=38;text=\"realtime upstream closed: close 1011 internal error\""]
    );
    // Closed by the peer: nothing to close; RTCP says BYE; no RTP after the BYE.
    assert!(sim.closes.is_empty());
    assert!(sim.rtcp >= 1);
    sim.run_to(10_000);
    assert_eq!(sim.rtp.len(), before);
    let record = sim.record.clone().unwrap();
    assert_eq!(record.end, CallEnd::UpstreamClosed);
    assert_eq!(record.talk, Duration::from_millis(5_000 - 210));
    assert!(record.media.is_some());
}

#[test]
fn a_close_1001_is_the_session_limit_whatever_its_reason_says() {
    for reason in [
        "Your session hit the maximum duration of 60 minutes.",
        "session expired",
        "",
    ] {
        let mut sim = Sim::answered("");
        sim.input(Input::UpstreamClosed {
            code: Some(1001),
            reason,
        });
        let [hang_up] = sim.hang_ups().try_into().unwrap();
        assert!(
            hang_up.starts_with("Q.850;cause=16;text=\"realtime session reached its maximum"),
            "{hang_up}"
        );
        assert_eq!(sim.record().end, CallEnd::UpstreamExpired, "{reason:?}");
    }
    // So is an `error` of code session_expired.
    let mut sim = Sim::answered("");
    sim.feed(json!({"type": "error", "event_id": "e9", "error": {
        "type": "invalid_request_error", "code": "session_expired", "message": "expired"}}));
    assert_eq!(sim.record().end, CallEnd::UpstreamExpired);
}

#[test]
fn a_fatal_error_mid_call_hangs_up_closes_the_socket_and_stops_the_rtp() {
    let mut sim = Sim::answered("");
    sim.run_to(1_000);
    sim.feed(json!({"type": "error", "event_id": "e9", "error": {
        "type": "invalid_request_error", "code": "insufficient_quota", "message": "quota"}}));
    assert_eq!(sim.hang_ups().len(), 1);
    assert_eq!(sim.closes, vec![(1000, "call ended")]);
    let sent = sim.rtp.len();
    sim.run_to(60_000);
    assert_eq!(sim.rtp.len(), sent, "no RTP after the BYE");
    let record = sim.record();
    assert_eq!(record.end, CallEnd::UpstreamClosed);
    assert_eq!(record.end_detail, "insufficient_quota");
    assert_eq!(record.upstream_errors, vec!["insufficient_quota: quota"]);
    // Three server errors within a minute are fatal too.
    let mut sim = Sim::answered("");
    for i in 0..3 {
        sim.at(1_000 + i * 100);
        sim.feed(json!({"type": "error", "event_id": "e", "error": {
            "type": "server_error", "code": "server_error", "message": "oops"}}));
    }
    assert_eq!(sim.hang_ups().len(), 1);
    assert_eq!(sim.closes.len(), 1);
    assert!(sim.record.is_some());
}

#[test]
fn the_caller_s_bye_closes_the_upstream_normally() {
    let mut sim = Sim::answered("");
    sim.run_to(3_000);
    sim.dialog(DialogEvent::Ended {
        by: crate::sip::dialog::EndedBy::Remote,
    });
    assert!(sim.signalling.is_empty(), "the caller ended it: no BYE");
    assert_eq!(sim.closes, vec![(1000, "call ended")]);
    assert!(sim.call.is_ended());
    let record = sim.record.clone().unwrap();
    assert_eq!(record.end, CallEnd::CallerBye);
    assert_eq!(record.total, Duration::from_millis(3_000));
    assert_eq!(sim.call.poll_output(), None);
}

#[test]
fn rtp_inactivity_max_duration_drain_and_stop_hang_up_with_their_reasons() {
    // RTP inactivity: the receiver's limit, from the last packet.
    let mut sim = Sim::answered("");
    sim.talk_to(1_000, &[0x55; 160]);
    sim.run_to(30_990);
    assert!(sim.hang_ups().is_empty());
    sim.run_to(31_100);
    assert_eq!(sim.hang_ups(), vec!["Q.850;cause=41;text=\"RTP timeout\""]);
    assert_eq!(sim.record().end, CallEnd::RtpTimeout);
    // The maximum duration is the call's own timer.
    let mut sim_long = Sim::new("");
    sim_long.open(10);
    sim_long.session_ready(20);
    sim_long.answer(30, Codec::Pcmu);
    sim_long.dialog(DialogEvent::Confirmed);
    sim_long.at(7_200_000);
    sim_long.input(Input::Timeout);
    assert!(
        sim_long
            .hang_ups()
            .contains(&"Q.850;cause=16;text=\"maximum call duration reached\"".to_owned()),
        "{:?}",
        sim_long.signalling
    );
    assert_eq!(sim_long.record().end, CallEnd::MaxDuration);
    let mut sim = Sim::answered("");
    sim.talk_to(1_000, &[0x55; 160]);
    // A drain: the call goes on until the deadline, then is hung up.
    sim.input(Input::Drain {
        until: sim.t0 + Duration::from_secs(5),
    });
    sim.talk_to(4_900, &[0x55; 160]);
    assert!(sim.hang_ups().is_empty());
    sim.talk_to(5_100, &[0x55; 160]);
    assert_eq!(
        sim.hang_ups(),
        vec!["Q.850;cause=16;text=\"bridge shutting down\""]
    );
    assert_eq!(sim.record().end, CallEnd::Shutdown);
    assert_eq!(sim.closes.len(), 1);
    // Stop: at once.
    let mut sim = Sim::answered("");
    sim.input(Input::Stop(CallEnd::Shutdown));
    assert_eq!(sim.hang_ups().len(), 1);
    assert!(sim.record.is_some());
    // Before the answer, stopping refuses the INVITE.
    let mut sim = Sim::new("");
    sim.open(10);
    sim.input(Input::Stop(CallEnd::Shutdown));
    assert!(matches!(
        sim.signalling[1],
        Signalling::Refuse { status: 503, .. }
    ));
}

// ---- the upstream stops reading --------------------------------------------------------------

#[test]
fn pings_keep_going_while_pongs_come_back() {
    let mut sim = Sim::answered("");
    sim.talk_to(120_000, &[0x55; 160]);
    assert_eq!(
        sim.pings.len(),
        7,
        "one every 15 s, from 15 s after the open"
    );
    assert_eq!(KEEPALIVE, Duration::from_secs(15));
    assert!(sim.record.is_none(), "the call goes on");
    // Without pongs the same call is over at the first ping's limit.
    let mut sim = Sim::answered("");
    sim.ponged = usize::MAX;
    sim.talk_to(120_000, &[0x55; 160]);
    assert_eq!(sim.record().end, CallEnd::UpstreamStalled);
    assert_eq!(sim.pings.len(), 1);
}

#[test]
fn an_upstream_that_stops_reading_is_hung_up_at_the_stall_limit_while_rtp_keeps_its_pace() {
    let mut sim = Sim::answered("");
    // The writer stops making progress and no pong comes back, while the upstream keeps
    // sending harmless events.
    sim.writer_works = false;
    let opened = sim.t0 + Duration::from_millis(50);
    let first_ping = opened + KEEPALIVE;
    let limit = sim.ms(first_ping + STALL);
    let mut t = 1_000;
    while t < limit - 20 {
        sim.talk_to(t, &[0x55; 160]);
        sim.feed(json!({"type": "rate_limits.updated", "event_id": "rl",
            "rate_limits": [{"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 1}]}));
        t += 1_000;
    }
    sim.talk_to(limit - 20, &[0x55; 160]);
    assert_eq!(sim.pings.len(), 1, "one ping in flight, no second one");
    assert!(sim.hang_ups().is_empty(), "not before the limit");
    // The caller heard a packet every 20 ms all along.
    let slots: Vec<u64> = sim.rtp.iter().map(|(at, _)| sim.ms(*at)).collect();
    let odd: Vec<&[u64]> = slots
        .windows(2)
        .filter(|w| w[1] - w[0] != 20)
        .take(5)
        .collect();
    assert!(
        odd.is_empty(),
        "RTP kept its pace: {odd:?} of {}",
        slots.len()
    );
    // Caller audio beyond the backlog limit was not queued.
    let appends = sim.appends();
    assert!(
        appends as u64 <= MAX_AUDIO_BACKLOG + 2,
        "{appends} appends handed out"
    );
    sim.talk_to(limit + 20, &[0x55; 160]);
    assert_eq!(
        sim.hang_ups(),
        vec!["Q.850;cause=38;text=\"realtime upstream not reading\""]
    );
    assert_eq!(sim.closes, vec![(1000, "upstream not reading")]);
    let record = sim.record.clone().unwrap();
    assert_eq!(record.end, CallEnd::UpstreamStalled);
    assert_eq!(record.end_detail, "no pong for 30s");
    assert!(record.caller_frames_unsent > 1_000, "{record:?}");
    assert!(record.upstream_backlog_max >= MAX_AUDIO_BACKLOG);
    // No RTP after the BYE.
    let sent = sim.rtp.len();
    sim.run_to(limit + 10_000);
    assert_eq!(sim.rtp.len(), sent);
}

#[test]
fn a_stall_shorter_than_the_limit_is_survived_and_the_backlog_drains() {
    let mut sim = Sim::answered("");
    sim.writer_works = false;
    sim.talk_to(25_000, &[0x55; 160]);
    // 25 s in: the ping of 15 s is unanswered, audio backs up.
    assert_eq!(sim.pings.len(), 1);
    assert!(sim.record().caller_frames_unsent > 0);
    // The writer catches up and the pong arrives before the limit.
    sim.writer_works = true;
    sim.drain();
    let ping = sim.pings[0];
    sim.input(Input::UpstreamPong(&ping));
    let before = sim.appends();
    sim.talk_to(60_000, &[0x55; 160]);
    assert!(sim.record.is_none(), "survived");
    assert!(sim.appends() > before + 1_500, "audio flows again");
}

// ---- model audio ---------------------------------------------------------------------------------

#[test]
fn caller_frames_reach_the_model_and_model_audio_is_paced_out_with_its_latency() {
    let mut sim = Sim::answered("");
    sim.at(300);
    sim.talk_to(400, &[0x55; 160]);
    assert!(
        (5..=6).contains(&sim.appends()),
        "{} appends",
        sim.appends()
    );
    // 200 ms of model audio in one delta at 400 ms: the first frame leaves at the next slot.
    sim.model_streams("resp_1", "item_A", &[0x11u8; 1600]);
    sim.run_to(700);
    let record = sim.record();
    assert_eq!(record.model_frames_sent, 10);
    assert_eq!(record.latency_out.count(), 1);
    let model: Vec<_> = sim
        .rtp
        .iter()
        .filter(|(_, d)| packet::parse(d).unwrap().payload == [0x11; 160])
        .collect();
    assert_eq!(model.len(), 10);
    // Answered at 210 ms; the first model frame left at the first slot after 400 ms.
    let first = record.first_model_audio.unwrap();
    assert!(
        (Duration::from_millis(190)..=Duration::from_millis(215)).contains(&first),
        "{first:?}"
    );
    assert!(
        record.latency_out.quantile_us(0.5).unwrap() <= 21_000,
        "{record:?}"
    );
}

#[test]
fn deltas_for_items_never_announced_are_dropped_and_counted() {
    let mut sim = Sim::answered("");
    sim.feed(json!({"type": "response.created", "event_id": "r1",
        "response": {"id": "resp_1", "status": "in_progress", "output": []}}));
    sim.delta("resp_1", "item_ghost", &[0x11u8; 1600]);
    sim.run_to(1_000);
    let record = sim.record();
    assert_eq!(record.unknown_item_deltas, 1);
    assert_eq!(record.model_frames_queued, 0);
    assert!(
        sim.rtp
            .iter()
            .all(|(_, d)| packet::parse(d).unwrap().payload != [0x11; 160])
    );
}

#[test]
fn queued_model_audio_is_capped_and_the_cut_item_is_truncated_at_what_was_played() {
    let mut sim = Sim::answered("");
    // A flood: 200 one-second deltas at once, far past the 120 s limit.
    sim.model_streams("resp_1", "item_A", &[0x11u8; 8_000]);
    for _ in 1..200 {
        sim.delta("resp_1", "item_A", &[0x11u8; 8_000]);
    }
    assert_eq!(sim.call.queued_audio_ms(), 120_000);
    assert!(
        sim.call.playout_heap_bytes() < 1_300_000,
        "{} bytes",
        sim.call.playout_heap_bytes()
    );
    // One delta of 15 MB decodes no further than the cap allows.
    sim.delta("resp_1", "item_A", &vec![0x11u8; 11 * 1024 * 1024]);
    assert_eq!(sim.call.queued_audio_ms(), 120_000);
    let record = sim.record();
    assert_eq!(record.model_audio_dropped_ms, 80_000 + 11 * 1024 * 1024 / 8);
    // The model finishes the item; once what was queued has played, the item is truncated
    // there, since the caller heard no more of it.
    sim.feed(
        json!({"type": "response.output_audio.done", "event_id": "ad",
        "response_id": "resp_1", "item_id": "item_A", "output_index": 0, "content_index": 0}),
    );
    sim.feed(json!({"type": "response.done", "event_id": "rd",
        "response": {"id": "resp_1", "status": "completed", "output": []}}));
    sim.ws.clear();
    // The caller listens (its RTP keeps the call up).
    sim.talk_to(125_000, &[0x55; 160]);
    let truncates: Vec<&Value> = sim
        .ws
        .iter()
        .filter(|e| e["type"] == "conversation.item.truncate")
        .collect();
    let kinds: Vec<&str> = sim
        .ws
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| *t != "input_audio_buffer.append")
        .collect();
    assert_eq!(truncates.len(), 1, "{kinds:?}");
    assert_eq!(truncates[0]["item_id"], "item_A");
    assert_eq!(truncates[0]["audio_end_ms"], 120_000);
    let model_frames = sim
        .rtp
        .iter()
        .filter(|(_, d)| packet::parse(d).unwrap().payload == [0x11; 160])
        .count();
    assert_eq!(model_frames, 6_000, "what was queued played whole");
}

#[test]
fn a_barge_in_is_reported_as_an_event_with_its_truncate() {
    let mut sim = Sim::answered("");
    sim.run_to(1_000);
    sim.model_streams("resp_1", "item_A", &[0x11u8; 16_000]);
    sim.run_to(1_410);
    let sent = sim
        .rtp
        .iter()
        .filter(|(_, d)| packet::parse(d).unwrap().payload == [0x11; 160])
        .count();
    sim.feed(
        json!({"type": "input_audio_buffer.speech_started", "event_id": "s",
        "audio_start_ms": 1200, "item_id": "item_U"}),
    );
    let [CallEvent::BargeIn(barge_in)] = sim.events.as_slice() else {
        panic!("{:?}", sim.events)
    };
    assert_eq!(barge_in.truncated[0].sent_ms, sent as u64 * 20);
    assert_eq!(barge_in.truncated[0].audio_end_ms, sent as u64 * 20);
    let truncate = sim
        .ws
        .iter()
        .find(|e| e["type"] == "conversation.item.truncate")
        .unwrap();
    assert_eq!(truncate["audio_end_ms"], sent as u64 * 20);
    // The next packet is silence.
    let before = sim.rtp.len();
    sim.run_to(1_440);
    assert!(
        sim.rtp[before..]
            .iter()
            .all(|(_, d)| packet::parse(d).unwrap().payload == [0xFF; 160])
    );
}

#[test]
fn an_opus_call_configures_pcm16_and_builds_the_opus_bridge() {
    let mut sim = Sim::with_codec("", Codec::Opus);
    sim.open(10);
    sim.at(20);
    sim.feed(json!({"type": "session.created", "event_id": "e1",
        "session": {"type": "realtime", "id": "sess_1"}}));
    assert_eq!(
        sim.ws[0]["session"]["audio"]["input"]["format"],
        json!({"type": "audio/pcm", "rate": 24000})
    );
    sim.feed(json!({"type": "session.updated", "event_id": "e2",
        "session": {"type": "realtime", "id": "sess_1"}}));
    assert_eq!(sim.signalling.last(), Some(&Signalling::Answer));
    sim.answer(30, Codec::Opus);
    sim.dialog(DialogEvent::Confirmed);
    assert_eq!(sim.record().audio_format, "pcm16");
    // Our stream is Opus at 48 kHz.
    sim.run_to(100);
    let (_, first) = sim.rtp.first().unwrap();
    let rtp = packet::parse(first).unwrap();
    assert_eq!(rtp.header.payload_type, 111);
    assert_eq!(rtp.payload, crate::rtp::playout::OPUS_SILENCE);
}

#[test]
fn a_pause_in_the_caller_s_rtp_is_fed_as_silence_and_never_counted_twice() {
    let mut sim = Sim::answered("");
    sim.at(300);
    sim.talk_to(400, &[0x55; 160]);
    let talked = sim.appends();
    // The sender goes quiet: from 200 ms on, silence at the real-time rate.
    sim.run_to(570);
    assert_eq!(sim.appends(), talked, "nothing before the 200 ms threshold");
    sim.run_to(1_000);
    let filled = sim.appends() - talked;
    assert!((29..=31).contains(&filled), "{filled} frames of silence");
    let silence = sim.ws.last().unwrap()["audio"].as_str().unwrap().to_owned();
    assert_eq!(
        BASE64.decode(silence).unwrap(),
        vec![0xFF; 160],
        "PCMU silence"
    );
    // Packets resume after the gap: the receiver's concealment of the gap is not appended
    // again, the new packets are.
    sim.ts = sim.ts.wrapping_add(filled as u32 * 160);
    sim.talk_to(1_100, &[0x55; 160]);
    let resumed = sim.appends() - talked - filled;
    assert!(
        (4..=6).contains(&resumed),
        "{resumed} frames after the pause"
    );
    assert_eq!(sim.record().caller_frames_filled as usize, filled);

    // On hold (audio not expected) nothing is filled.
    let mut sim = Sim::answered("");
    let mut held = negotiated(Codec::Pcmu);
    held.direction = Direction::SendOnly;
    let change = held.changes_since(&negotiated(Codec::Pcmu));
    sim.dialog(DialogEvent::MediaChanged(held, change));
    sim.run_to(5_000);
    assert_eq!(sim.appends(), 0);
}

// ---- transfer and tools --------------------------------------------------------------------------

#[test]
fn a_transfer_refers_at_once_and_hangs_up_when_the_new_call_is_answered() {
    let mut sim = Sim::answered("");
    sim.at(1_000);
    sim.call
        .start_transfer(sim.now, "sip:operator@pbx", None, None);
    sim.input(Input::Timeout);
    assert_eq!(
        sim.signalling,
        vec![Signalling::Refer {
            uri: "sip:operator@pbx".into()
        }]
    );
    sim.signalling.clear();
    sim.dialog(DialogEvent::TransferAccepted);
    sim.dialog(DialogEvent::TransferProgress {
        status: 100,
        terminated: false,
    });
    sim.dialog(DialogEvent::TransferProgress {
        status: 180,
        terminated: false,
    });
    assert!(sim.signalling.is_empty(), "{:?}", sim.signalling);
    sim.at(4_000);
    sim.dialog(DialogEvent::TransferProgress {
        status: 200,
        terminated: true,
    });
    assert_eq!(
        sim.hang_ups(),
        vec!["Q.850;cause=16;text=\"call transferred: sip:operator@pbx\""]
    );
    assert_eq!(sim.record().end, CallEnd::Transferred);
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
    sim.input(Input::Timeout);
    assert!(sim.signalling.is_empty());
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
    sim.model_says(400);
    let before = sim.rtp.len();
    sim.run_to(1_300);
    assert!(sim.signalling.is_empty(), "still playing");
    sim.run_to(1_500);
    assert_eq!(
        sim.signalling,
        vec![Signalling::Refer {
            uri: "sip:sales@pbx".into()
        }]
    );
    assert!(
        sim.rtp.len() - before >= 20,
        "the announcement played first"
    );
}

#[test]
fn a_refused_transfer_is_told_to_the_model_and_the_call_goes_on() {
    let mut sim = Sim::answered("");
    sim.call
        .start_transfer(sim.now, "sip:busy@pbx", Some("call_8".into()), None);
    sim.input(Input::Timeout);
    sim.ws.clear();
    sim.dialog(DialogEvent::TransferFailed { status: Some(486) });
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
    sim.input(Input::Timeout);
    sim.dialog(DialogEvent::TransferProgress {
        status: 603,
        terminated: true,
    });
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
    sim.model_says(600);
    sim.call.end_after_playout(sim.now);
    sim.input(Input::Timeout);
    sim.run_to(1_500);
    assert!(sim.hang_ups().is_empty(), "audio still queued");
    sim.run_to(1_700);
    assert_eq!(
        sim.hang_ups(),
        vec!["Q.850;cause=16;text=\"call ended by the assistant\""]
    );
    assert_eq!(sim.record().end, CallEnd::EndedByAssistant);
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
fn a_tool_call_of_an_unknown_tool_is_answered_with_an_error_output() {
    let mut sim = Sim::answered("");
    tool_call(&mut sim, "call_7", "lookup_order", "{}");
    let output = sim
        .ws
        .iter()
        .find(|e| e["item"]["type"] == "function_call_output")
        .unwrap_or_else(|| panic!("{:?}", sim.ws));
    assert_eq!(output["item"]["call_id"], "call_7");
    let text = output["item"]["output"].as_str().unwrap();
    assert!(
        text.contains("error") && text.contains("lookup_order"),
        "{text}"
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
    let [request] = sim.webhooks.as_slice() else {
        panic!("{:?}", sim.webhooks)
    };
    let request = request.clone();
    assert_eq!(request.call_id.as_str(), "call_w");
    assert_eq!(request.url.url().as_str(), "http://127.0.0.1:9/orders");
    assert_eq!(request.timeout, Duration::from_secs(2));
    assert_eq!(request.body["call_id"], "c1@example");
    assert_eq!(request.body["caller"], "+4930111");
    assert_eq!(request.body["arguments"]["order_number"], "A-17");
    sim.ws.clear();
    sim.input(Input::Webhook {
        call_id: request.call_id.clone(),
        outcome: WebhookOutcome::Response {
            status: 200,
            body: br#"{"status":"shipped"}"#.to_vec(),
        },
        timeout: request.timeout,
    });
    let output = sim
        .ws
        .iter()
        .find(|e| e["item"]["type"] == "function_call_output")
        .unwrap_or_else(|| panic!("{:?}", sim.ws));
    assert_eq!(output["item"]["output"], r#"{"status":"shipped"}"#);
    // A timeout becomes an output the model can explain.
    sim.ws.clear();
    sim.input(Input::Webhook {
        call_id: request.call_id.clone(),
        outcome: WebhookOutcome::Timeout,
        timeout: request.timeout,
    });
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
        sim.hang_ups()
            .first()
            .is_some_and(|r| r.contains("ended by the assistant")),
        "{:?}",
        sim.signalling
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
        sim.signalling,
        vec![Signalling::Refer {
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
    assert!(sim.signalling.is_empty());
    assert!(sim.ws.iter().any(|e| {
        e["item"]["call_id"] == "call_x"
            && e["item"]["output"]
                .as_str()
                .is_some_and(|o| o.contains("operator"))
    }));
    // Key 0 transfers, key # hangs up; neither is told to the model.
    let mut sim = Sim::answered(&tools_profile());
    sim.call.handle_digit(sim.now, '0');
    sim.input(Input::Timeout);
    assert_eq!(
        sim.signalling,
        vec![Signalling::Refer {
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
    sim.input(Input::Timeout);
    assert_eq!(sim.hang_ups().len(), 1);
}

// ---- the record ---------------------------------------------------------------------------------

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
fn rtcp_reports_go_to_the_peer_and_say_bye_at_the_end() {
    let mut sim = Sim::answered("");
    sim.talk_to(12_000, &[0x55; 160]);
    assert!(sim.rtcp >= 1, "a report within 12 s");
    let reports = sim.rtcp;
    sim.dialog(DialogEvent::Ended {
        by: crate::sip::dialog::EndedBy::Remote,
    });
    assert_eq!(sim.rtcp, reports + 1, "RTCP BYE");
    let media = sim.record().media.unwrap();
    assert!(media.received.packets_accepted > 500);
    assert_eq!(media.packets_lost, 0);
    assert!(media.packets_sent > 500);
}
