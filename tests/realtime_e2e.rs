//! The realtime client as a call uses it (connect shell, session core, session driver) against
//! the fake realtime server over a real loopback WebSocket, in every dialect.
//!
//! Every scenario also checks that the fake, which validates client events field by field
//! against the official schemas, never answered an event of ours with an error we did not
//! provoke on purpose.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use sip_realtime_bridge::audio::g711;
use sip_realtime_bridge::config::{Config, ProfileConfig, SecretSource};
use sip_realtime_bridge::fake_realtime::{self, FakeHandle, FakeOptions};
use sip_realtime_bridge::io::realtime::{Command, Ended, Finished, run};
use sip_realtime_bridge::io::ws::{ConnectError, connect};
use sip_realtime_bridge::realtime::{
    Dialect, ItemId, ResponseStatus, ServerError, Session, SessionEvent, SetupFailure,
    connect_request,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const KEY: &str = "fake-test-key";
const WAIT: Duration = Duration::from_secs(10);

/// The upstream table that reaches `fake` in `dialect`, through the real URL builder.
fn upstream_toml(dialect: Dialect, fake: &FakeHandle) -> String {
    let addr = fake.addr();
    match dialect {
        Dialect::OpenAiGa => format!(
            "kind = \"openai\"\nurl = \"ws://{addr}/v1/realtime\"\nmodel = \"gpt-realtime\""
        ),
        Dialect::AzureGa => {
            format!("kind = \"azure\"\nendpoint = \"http://{addr}\"\ndeployment = \"rt-ga\"")
        }
        Dialect::AzurePreview => format!(
            "kind = \"azure-preview\"\nendpoint = \"http://{addr}\"\ndeployment = \"rt-preview\""
        ),
    }
}

struct Client {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<SessionEvent>,
    task: JoinHandle<Finished>,
    /// Errors the service sent that the test did not ask for.
    unexpected_errors: Vec<ServerError>,
}

impl Client {
    async fn send(&self, command: Command) {
        self.commands.send(command).await.unwrap();
    }

    /// The next event, recording unrequested errors on the way.
    async fn next(&mut self) -> SessionEvent {
        let event = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("no event in time")
            .expect("session task ended");
        match &event {
            SessionEvent::Error(e) => self.unexpected_errors.push(e.clone()),
            SessionEvent::Malformed { reason } => {
                panic!("the fake sent a malformed event: {reason}")
            }
            _ => {}
        }
        event
    }

    /// Skips events until `pick` accepts one.
    async fn until<T>(&mut self, mut pick: impl FnMut(&SessionEvent) -> Option<T>) -> T {
        loop {
            let event = self.next().await;
            if let Some(found) = pick(&event) {
                return found;
            }
        }
    }

    /// An error the test provoked: taken off the unexpected list.
    async fn expected_error(&mut self) -> ServerError {
        self.until(|e| match e {
            SessionEvent::Error(e) => Some(e.clone()),
            _ => None,
        })
        .await;
        self.unexpected_errors.pop().unwrap()
    }

    fn assert_no_unexpected_errors(&self) {
        assert!(
            self.unexpected_errors.is_empty(),
            "the service refused events of ours: {:#?}",
            self.unexpected_errors
        );
    }

    /// Ends the session and checks that every server event was one the client knows, well
    /// formed, and that nothing of ours was refused.
    async fn finish(self, expected: Ended) {
        self.assert_no_unexpected_errors();
        if expected == Ended::Closed {
            self.commands.send(Command::Close).await.unwrap();
        }
        let finished = self.task.await.unwrap();
        assert_eq!(finished.ended, expected);
        assert_eq!(finished.stats.unknown_events, 0, "{:?}", finished.stats);
        assert_eq!(finished.stats.malformed, 0, "{:?}", finished.stats);
        assert!(finished.stats.frames_received > 0);
    }
}

/// Connects a session for `profile_toml` (the body of `[profiles.p]`, without `upstream`).
async fn open(
    dialect: Dialect,
    profile_toml: &str,
    fake: &FakeHandle,
    key: &str,
) -> Result<(Client, ProfileConfig), ConnectError> {
    let config = Config::from_toml(&format!(
        "[upstreams.u]\n{}\napi_key_env = \"K\"\n[profiles.p]\nupstream = \"u\"\n{profile_toml}\n\
         [[routes]]\nprofile = \"p\"\n",
        upstream_toml(dialect, fake)
    ))
    .unwrap();
    let upstream = &config.upstreams[&"u".parse().unwrap()];
    let profile = config.profiles[&"p".parse().unwrap()].clone();
    assert_eq!(Dialect::for_upstream(upstream), dialect);
    let secret = SecretSource::Env("K".into())
        .load_with(|_| Some(key.into()))
        .unwrap();
    let target = connect_request(upstream, Some(&secret)).unwrap();
    let ws = connect(&target, WAIT).await?;
    let session = Session::new(&profile, dialect, std::time::Instant::now());
    let (commands, command_rx) = mpsc::channel(256);
    let (event_tx, events) = mpsc::channel(256);
    let task = tokio::spawn(run(
        ws,
        session,
        command_rx,
        event_tx,
        Duration::from_secs(20),
    ));
    Ok((
        Client {
            commands,
            events,
            task,
            unexpected_errors: Vec::new(),
        },
        profile,
    ))
}

async fn fake(options: FakeOptions) -> FakeHandle {
    fake_realtime::start_loopback(FakeOptions {
        api_key: Some(KEY.into()),
        ..options
    })
    .await
    .unwrap()
}

async fn ready(client: &mut Client) -> (Option<String>, Option<u64>) {
    client
        .until(|e| match e {
            SessionEvent::Ready {
                session_id,
                expires_at,
            } => Some((session_id.clone(), *expires_at)),
            SessionEvent::SetupFailed(f) => panic!("setup failed: {f:?}"),
            _ => None,
        })
        .await
}

const ALL_DIALECTS: [Dialect; 3] = [Dialect::OpenAiGa, Dialect::AzureGa, Dialect::AzurePreview];

#[tokio::test]
async fn sessions_become_ready_in_every_dialect() {
    let server = fake(FakeOptions::default()).await;
    for dialect in ALL_DIALECTS {
        let (mut client, _) = open(dialect, "", &server, KEY).await.unwrap();
        let (session_id, expires_at) = ready(&mut client).await;
        assert!(
            session_id.is_some_and(|id| id.starts_with("sess_")),
            "{dialect:?}"
        );
        assert!(expires_at.is_some(), "{dialect:?}");
        client.finish(Ended::Closed).await;
    }
}

/// `ms` of a 300 Hz tone at -20 dBFS, then encoded by `law`.
fn tone(ms: usize, encode: fn(i16) -> u8) -> Vec<u8> {
    (0..ms * 8)
        .map(|n| {
            let t = n as f64 / 8000.0;
            encode((3277.0 * (2.0 * std::f64::consts::PI * 300.0 * t).sin()) as i16)
        })
        .collect()
}

fn silence(ms: usize, encode: fn(i16) -> u8) -> Vec<u8> {
    vec![encode(0); ms * 8]
}

async fn send_audio(client: &Client, audio: &[u8]) {
    for frame in audio.chunks(160) {
        client.send(Command::AppendAudio(frame.to_vec())).await;
    }
}

/// A caller turn: 500 ms silence, 1 s tone, 1.5 s silence. With 300 ms prefix padding and
/// 500 ms of closing silence the fake's VAD puts the turn at 200..2000 ms.
fn caller_turn(encode: fn(i16) -> u8) -> Vec<u8> {
    [
        silence(500, encode),
        tone(1000, encode),
        silence(1500, encode),
    ]
    .concat()
}

const VAD: &str = "turn_detection = { type = \"server_vad\", threshold = 0.5, \
                   prefix_padding_ms = 300, silence_duration_ms = 500 }";

#[tokio::test]
async fn g711_turn_is_detected_and_echoed_byte_exact() {
    let server = fake(FakeOptions::default()).await;
    for (dialect, format, encode) in [
        (
            Dialect::OpenAiGa,
            "g711_ulaw",
            g711::ulaw_encode as fn(i16) -> u8,
        ),
        (Dialect::AzureGa, "g711_alaw", g711::alaw_encode),
        (Dialect::AzurePreview, "g711_ulaw", g711::ulaw_encode),
    ] {
        let profile = format!("audio_format = \"{format}\"\n{VAD}");
        let (mut client, _) = open(dialect, &profile, &server, KEY).await.unwrap();
        ready(&mut client).await;
        let input = caller_turn(encode);
        send_audio(&client, &input).await;

        let start = client
            .until(|e| match e {
                SessionEvent::SpeechStarted { audio_start_ms, .. } => Some(*audio_start_ms),
                _ => None,
            })
            .await;
        let end = client
            .until(|e| match e {
                SessionEvent::SpeechStopped { audio_end_ms, .. } => Some(*audio_end_ms),
                _ => None,
            })
            .await;
        assert_eq!((start, end), (200, 2000), "{dialect:?}");

        let mut reply = Vec::new();
        let mut sizes = Vec::new();
        let status = loop {
            match client.next().await {
                SessionEvent::AudioDelta { audio, .. } => {
                    sizes.push(audio.len());
                    reply.extend_from_slice(&audio.to_vec());
                }
                SessionEvent::ResponseDone { status, .. } => break status,
                _ => {}
            }
        };
        assert_eq!(status, ResponseStatus::Completed, "{dialect:?}");
        let turn = &input[start as usize * 8..end as usize * 8];
        assert!(
            reply == turn,
            "{dialect:?}: echo differs from the caller's turn"
        );
        assert!(sizes.len() > 3, "{sizes:?}");
        assert!(sizes.iter().any(|s| s % 160 != 0), "{sizes:?}");
        client.finish(Ended::Closed).await;
    }
}

#[tokio::test]
async fn barge_in_cancels_the_reply_and_truncate_reports_what_was_heard() {
    // A long, slowly streamed reply, so the caller can talk over it.
    let server = fake(FakeOptions {
        reply: serde_json::from_value(
            serde_json::json!({"kind": "tone", "frequency_hz": 500, "duration_ms": 8000}),
        )
        .unwrap(),
        speed: 1.0,
        // As the real service does, audio already in flight arrives after speech_started.
        late_deltas_ms: 60,
        ..FakeOptions::default()
    })
    .await;
    for dialect in ALL_DIALECTS {
        let profile = format!("audio_format = \"g711_ulaw\"\n{VAD}");
        let (mut client, _) = open(dialect, &profile, &server, KEY).await.unwrap();
        ready(&mut client).await;
        send_audio(&client, &caller_turn(g711::ulaw_encode)).await;
        client
            .until(|e| matches!(e, SessionEvent::SpeechStarted { .. }).then_some(()))
            .await;

        // Collect some reply audio, then talk over it.
        let mut heard = 0usize;
        let (item_id, content_index) = loop {
            if let SessionEvent::AudioDelta {
                item_id,
                content_index,
                audio,
                ..
            } = client.next().await
            {
                heard += audio.len();
                if heard >= 1600 {
                    break (item_id, content_index);
                }
            }
        };
        send_audio(&client, &tone(600, g711::ulaw_encode)).await;
        let mut speech_started = false;
        let mut late = 0;
        let (status, reason) = loop {
            match client.next().await {
                SessionEvent::SpeechStarted { .. } => speech_started = true,
                SessionEvent::AudioDelta { audio, .. } => {
                    heard += audio.len();
                    if speech_started {
                        late += audio.len();
                    }
                }
                SessionEvent::ResponseDone { status, reason, .. } => break (status, reason),
                _ => {}
            }
        };
        assert!(speech_started, "{dialect:?}");
        // 60 ms of G.711 in flight when the caller spoke: the call must drop these.
        assert_eq!(late, 60 * 8, "{dialect:?}");
        assert_eq!(status, ResponseStatus::Cancelled, "{dialect:?}");
        assert_eq!(reason.as_deref(), Some("turn_detected"), "{dialect:?}");

        // Tell the model how much the caller heard (everything received, at 8 bytes per ms).
        let heard_ms = (heard / 8) as u64;
        client
            .send(Command::Truncate {
                item_id: item_id.clone(),
                content_index,
                audio_end_ms: heard_ms,
            })
            .await;
        let truncated = client
            .until(|e| match e {
                SessionEvent::ItemTruncated { audio_end_ms, .. } => Some(*audio_end_ms),
                _ => None,
            })
            .await;
        assert_eq!(truncated, heard_ms, "{dialect:?}");

        // A delete the service cannot honour is refused, named, and not fatal: the call goes on.
        client
            .send(Command::DeleteItem {
                item_id: ItemId::new("item_never_existed"),
            })
            .await;
        let refused = client.expected_error().await;
        assert!(!refused.fatal, "{refused:?}");
        assert_eq!(refused.caused_by, Some("conversation.item.delete"));
        client.finish(Ended::Closed).await;
    }
}

#[tokio::test]
async fn with_interrupt_response_off_the_reply_plays_on() {
    let server = fake(FakeOptions {
        reply: serde_json::from_value(
            serde_json::json!({"kind": "tone", "frequency_hz": 500, "duration_ms": 1500}),
        )
        .unwrap(),
        speed: 1.0,
        ..FakeOptions::default()
    })
    .await;
    let profile = "audio_format = \"g711_ulaw\"\nturn_detection = { type = \"server_vad\", \
                   interrupt_response = false, silence_duration_ms = 500 }";
    let (mut client, _) = open(Dialect::OpenAiGa, profile, &server, KEY)
        .await
        .unwrap();
    ready(&mut client).await;
    send_audio(&client, &caller_turn(g711::ulaw_encode)).await;
    let mut bytes = client
        .until(|e| match e {
            SessionEvent::AudioDelta { audio, .. } => Some(audio.len()),
            _ => None,
        })
        .await;
    send_audio(&client, &tone(600, g711::ulaw_encode)).await;
    let mut heard_caller_during_reply = false;
    let status = loop {
        match client.next().await {
            SessionEvent::AudioDelta { audio, .. } => bytes += audio.len(),
            SessionEvent::SpeechStarted { .. } => heard_caller_during_reply = true,
            SessionEvent::ResponseDone { status, .. } => break status,
            _ => {}
        }
    };
    assert!(
        heard_caller_during_reply,
        "the caller's speech was not detected"
    );
    assert_eq!(status, ResponseStatus::Completed);
    // The whole 1500 ms tone arrived (8 bytes per ms of G.711): nothing was cut.
    assert_eq!(bytes, 1500 * 8);
    client.finish(Ended::Closed).await;
}

#[tokio::test]
async fn tool_call_round_trip_is_sequenced_without_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("events.jsonl");
    let server = fake(
        serde_json::from_value::<FakeOptions>(serde_json::json!({
            "tool_script": [{"turn": 1, "name": "lookup_order", "arguments": {"order_number": "A-17"}}],
            "record": record,
        }))
        .unwrap(),
    )
    .await;
    for dialect in [Dialect::OpenAiGa, Dialect::AzurePreview] {
        let profile = format!(
            "audio_format = \"g711_ulaw\"\n{VAD}\n[[profiles.p.tools]]\nname = \"lookup_order\"\n\
             description = \"Find an order\"\nurl = \"http://127.0.0.1:9/lookup\"\n\
             parameters = {{ type = \"object\", properties = {{ order_number = {{ type = \"string\" }} }} }}"
        );
        let (mut client, _) = open(dialect, &profile, &server, KEY).await.unwrap();
        ready(&mut client).await;
        send_audio(&client, &caller_turn(g711::ulaw_encode)).await;
        let (call_id, name, arguments) = client
            .until(|e| match e {
                SessionEvent::ToolCall {
                    call_id,
                    name,
                    arguments,
                } => Some((call_id.clone(), name.clone(), arguments.clone())),
                _ => None,
            })
            .await;
        assert_eq!(name, "lookup_order");
        let arguments: serde_json::Value = serde_json::from_str(&arguments).unwrap();
        assert_eq!(arguments, serde_json::json!({"order_number": "A-17"}));

        // Answer at once, even before the function-call response is done: the client must
        // hold its response.create until then.
        client
            .send(Command::SubmitToolOutput {
                call_id,
                output: r#"{"status":"shipped"}"#.into(),
            })
            .await;
        let mut statuses = Vec::new();
        let mut audio = 0;
        while statuses.len() < 2 {
            match client.next().await {
                SessionEvent::ResponseDone { status, .. } => statuses.push(status),
                SessionEvent::AudioDelta { audio: a, .. } => audio += a.len(),
                _ => {}
            }
        }
        assert_eq!(
            statuses,
            [ResponseStatus::Completed, ResponseStatus::Completed],
            "{dialect:?}"
        );
        assert!(audio > 0, "the answer after the tool output has audio");
        client.finish(Ended::Closed).await;
    }

    // The record shows the order on the wire: the tool output, then the response.create.
    let lines = std::fs::read_to_string(&record).unwrap();
    let types: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        // A close frame's line has no event.
        .filter(|v| v["dir"] == "in" && v.get("event").is_some())
        .map(|v| v["event"]["type"].as_str().unwrap().to_owned())
        .filter(|t| t != "input_audio_buffer.append")
        .collect();
    let sequence: Vec<&str> = types.iter().map(String::as_str).collect();
    assert_eq!(
        sequence,
        [
            "session.update",
            "conversation.item.create",
            "response.create",
            "session.update",
            "conversation.item.create",
            "response.create"
        ]
    );
}

#[tokio::test]
async fn session_expiry_is_its_own_event() {
    let server = fake(
        serde_json::from_value::<FakeOptions>(serde_json::json!({"session_max_duration": "1s"}))
            .unwrap(),
    )
    .await;
    let (mut client, _) = open(Dialect::OpenAiGa, "", &server, KEY).await.unwrap();
    ready(&mut client).await;
    client
        .until(|e| matches!(e, SessionEvent::Expired).then_some(()))
        .await;
    client.finish(Ended::Remote).await;
}

#[tokio::test]
async fn a_wrong_key_fails_the_handshake_with_401_in_every_dialect() {
    let server = fake(FakeOptions::default()).await;
    for dialect in ALL_DIALECTS {
        let Err(error) = open(dialect, "", &server, "wrong-key").await else {
            panic!("{dialect:?}: a wrong key was accepted");
        };
        assert_eq!(error.http_status(), Some(401), "{dialect:?}: {error}");
        assert!(error.to_string().contains("invalid_api_key"), "{error}");
        assert!(!error.to_string().contains("wrong-key"), "{error}");
    }
}

#[tokio::test]
async fn a_refused_session_update_names_the_field() {
    let server = fake(FakeOptions::default()).await;
    for (dialect, param) in [
        (Dialect::OpenAiGa, "session.audio.output.voice"),
        (Dialect::AzurePreview, "session.voice"),
    ] {
        let (mut client, _) = open(dialect, "voice = \"nobody\"", &server, KEY)
            .await
            .unwrap();
        let failure = client
            .until(|e| match e {
                SessionEvent::SetupFailed(f) => Some(f.clone()),
                SessionEvent::Ready { .. } => panic!("{dialect:?}: accepted"),
                _ => None,
            })
            .await;
        let SetupFailure::ConfigRejected { code, param: p, .. } = failure else {
            panic!("{failure:?}");
        };
        assert_eq!(code.as_deref(), Some("invalid_value"));
        assert_eq!(p.as_deref(), Some(param), "{dialect:?}");
        client.finish(Ended::Remote).await;
    }
}
