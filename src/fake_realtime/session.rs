//! The sans-IO core of one fake Realtime connection.
//!
//! [`FakeSession`] takes client text frames (`handle_text`) and timer expiries
//! (`handle_timeout`) with the current time as an argument, and produces frames to send
//! (`poll_transmit`) and its next deadline (`poll_timeout`). Reply audio is paced by that
//! deadline, so a test can step through a whole call on simulated time.
//!
//! Choices the reference leaves open, made here and documented for the bridge's tests:
//! - unknown item ids are `item_truncate_invalid_item_id` / `item_delete_invalid_item_id` /
//!   `item_retrieve_invalid_item_id` (the real codes are unconfirmed);
//! - a `function_call_output` whose `call_id` matches no function call is `invalid_value` with
//!   `param: "item.call_id"`;
//! - VAD speech end while a response is still active (with `interrupt_response: false`) does
//!   not start a second response;
//! - `idle_timeout_ms` is accepted (GA only; the preview refuses it as an unknown parameter)
//!   but not acted on; `previous_item_id` on item creation is
//!   accepted, and the item goes at the end;
//! - a truncate past the end of the audio is refused with no effect (one third-party trace shows
//!   the service truncating at the real end anyway); its error has `code`, `param` and
//!   `event_id` all `null`, as observed;
//! - truncating the assistant item still being streamed stops its audio at once: no more
//!   deltas, the item ends `incomplete` with its audio length at the truncate point, and the
//!   response finishes `completed` (or `cancelled` if a barge-in already cancelled it);
//! - pcm16 appends of an odd number of bytes lose the last byte;
//! - a change of input format discards audio buffered in the old format.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value, json};

use super::media::{self, AudioFormat, Prng};
use super::vad::{UNITS_PER_MS, Vad, VadEvent, VadSettings};
use super::validate::{self, WireError};
use super::{FakeDialect, FakeOptions, FakeReply, FaultKind, ToolStep};

/// Largest decoded `input_audio_buffer.append` the service accepts (15 MiB).
const MAX_APPEND_BYTES: usize = 15 * 1024 * 1024;

/// Shortest buffer `input_audio_buffer.commit` accepts.
const MIN_COMMIT_MS: u64 = 100;

/// Most input audio the buffer holds (15 minutes, as the service's cap on one input item is
/// undocumented). Beyond it the oldest audio is dropped, so a long call with no commit cannot
/// grow memory without bound; timestamps stay on the full input timeline, and a commit then
/// holds only the newest audio.
#[cfg(not(test))]
const MAX_BUFFER_MS: u64 = 15 * 60 * 1000;
#[cfg(test)]
const MAX_BUFFER_MS: u64 = 5_000;

/// Most conversation items kept; the oldest beyond it are forgotten without an event (they
/// can no longer be retrieved, deleted or truncated), so a long call's memory stays bounded.
#[cfg(not(test))]
const MAX_ITEMS: usize = 1000;
#[cfg(test)]
const MAX_ITEMS: usize = 50;

/// Something to send to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing {
    /// A JSON text frame.
    Text(String),
    /// Close the socket with this code and reason; nothing follows it.
    Close {
        /// WebSocket close code (1001 for expiry).
        code: u16,
        /// Close reason text.
        reason: String,
    },
}

/// Turn detection as configured, resolved to what the detector needs.
#[derive(Clone, Copy, Debug)]
struct TurnDetection {
    vad: VadSettings,
    create_response: bool,
    interrupt_response: bool,
}

/// What the effective session config means for audio handling.
#[derive(Clone, Copy, Debug)]
struct Settings {
    input: AudioFormat,
    output: AudioFormat,
    turn: Option<TurnDetection>,
}

#[derive(Debug)]
enum ItemKind {
    UserAudio,
    AssistantAudio {
        produced_bytes: usize,
        format: AudioFormat,
    },
    FunctionCall {
        call_id: String,
    },
    Other,
}

#[derive(Debug)]
struct Item {
    id: String,
    kind: ItemKind,
    json: Value,
}

/// A response that is streaming audio.
#[derive(Debug)]
struct ActiveResponse {
    id: String,
    item_id: String,
    format: AudioFormat,
    audio: Vec<u8>,
    sent: usize,
    started: Instant,
    next_at: Instant,
    transcript: Vec<char>,
    transcript_sent: usize,
    /// The client truncated the item: its transcript is gone and no more audio is produced.
    truncated: bool,
    /// Why the response will end as cancelled, once its in-flight audio is sent.
    cancel_reason: Option<&'static str>,
    /// With `cancel_reason` set: the response ends once `sent` reaches this.
    cancel_at: usize,
    /// Set when the response is a scripted function call instead of audio.
    tool: Option<ToolProgress>,
}

/// Where a function call response is.
#[derive(Debug)]
struct ToolProgress {
    name: String,
    call_id: String,
    arguments: String,
    /// The argument deltas, and how many are sent.
    chunks: Vec<String>,
    chunks_sent: usize,
    previous: Option<String>,
}

/// How many argument deltas a function call is streamed in (fewer for very short arguments).
const TOOL_DELTAS: usize = 3;

/// One fake Realtime connection's state machine. See the module docs.
#[derive(Debug)]
pub struct FakeSession {
    dialect: FakeDialect,
    reply: FakeReply,
    transcript: Option<String>,
    speed: f64,
    delta_ms: (u64, u64),
    late_deltas_ms: u32,
    prng: Prng,
    tool_script: Vec<ToolStep>,
    tool_used: Vec<bool>,
    max_duration: Duration,
    expires: Option<Instant>,
    unix_time_secs: u64,
    model: String,
    connection: u64,
    created_sent: bool,
    closed: bool,
    out: VecDeque<Outgoing>,
    counter: u64,
    session_id: String,
    session: Value,
    settings: Settings,
    /// Timeline position (1/24 ms units) of the end of all audio appended so far.
    input_units: u64,
    buffer: Vec<u8>,
    buffer_format: AudioFormat,
    buffer_start_units: u64,
    vad: Vad,
    speech_item_id: Option<String>,
    speech_start_ms: u64,
    last_turn: Option<(Vec<u8>, AudioFormat)>,
    turns: u32,
    items: Vec<Item>,
    response: Option<ActiveResponse>,
    /// The fault to act out and from when.
    fault: Option<(FaultKind, Instant)>,
    /// While not reading: when the next chatter event goes out.
    chatter_at: Option<Instant>,
    /// The endless response of [`FaultKind::FloodAudio`], once started.
    flood: Option<Flood>,
    /// The latest `now` seen.
    last_now: Instant,
}

/// The endless response of [`FaultKind::FloodAudio`].
#[derive(Debug)]
struct Flood {
    response_id: String,
    item_id: String,
    /// One second of audio in the output format, base64, sent again and again.
    delta: String,
}

/// Frames queued at most by a flood before the shell has sent them.
const FLOOD_QUEUE: usize = 4;

impl FakeSession {
    /// A new connection at `now`. `session.created` is the first frame `poll_transmit` returns.
    pub fn new(dialect: FakeDialect, options: &FakeOptions, now: Instant) -> Self {
        let max_duration = options
            .session_max_duration
            .unwrap_or_else(|| dialect.max_session_duration());
        let model = if dialect.is_ga() {
            "gpt-realtime"
        } else {
            "gpt-4o-realtime-preview"
        };
        let session = default_session(dialect);
        let settings = derive_settings(dialect, &session);
        let min = u64::from(options.delta_ms_min.max(1));
        Self {
            dialect,
            reply: options.reply.clone(),
            transcript: options.transcript.clone(),
            speed: if options.speed.is_finite() {
                options.speed.clamp(0.01, 1.0e6)
            } else {
                1.0
            },
            delta_ms: (min, u64::from(options.delta_ms_max).max(min)),
            late_deltas_ms: options.late_deltas_ms,
            prng: Prng::new(options.seed),
            tool_used: vec![false; options.tool_script.len()],
            tool_script: options.tool_script.clone(),
            max_duration,
            expires: now.checked_add(max_duration),
            unix_time_secs: 0,
            model: model.to_owned(),
            connection: 0,
            created_sent: false,
            closed: false,
            out: VecDeque::new(),
            counter: 0,
            session_id: String::new(),
            session,
            buffer_format: settings.input,
            settings,
            input_units: 0,
            buffer: Vec::new(),
            buffer_start_units: 0,
            vad: Vad::default(),
            speech_item_id: None,
            speech_start_ms: 0,
            last_turn: None,
            turns: 0,
            items: Vec::new(),
            response: None,
            fault: options
                .fault
                .map(|f| (f.kind, now.checked_add(f.after).unwrap_or(now))),
            chatter_at: None,
            flood: None,
            last_now: now,
        }
    }

    /// Whether the shell should read the socket at `now` (false once a `stop_reading` fault
    /// is in force: nothing the client sends, pings included, is read any more).
    pub fn is_reading(&self, now: Instant) -> bool {
        !self.fault_active(FaultKind::StopReading, now)
    }

    fn fault_active(&self, kind: FaultKind, now: Instant) -> bool {
        self.fault.is_some_and(|(k, at)| k == kind && now >= at)
    }

    /// The model (OpenAI) or deployment (Azure) named in the request URL.
    pub fn with_model(mut self, model: &str) -> Self {
        model.clone_into(&mut self.model);
        self
    }

    /// Wall-clock time of `now` at creation, in Unix seconds, for `expires_at`.
    pub fn with_unix_time(mut self, unix_time_secs: u64) -> Self {
        self.unix_time_secs = unix_time_secs;
        self
    }

    /// Which connection of the server this is; makes session ids unique across connections.
    pub fn with_connection_number(mut self, connection: u64) -> Self {
        self.connection = connection;
        self
    }

    /// Handles one text frame from the client.
    pub fn handle_text(&mut self, now: Instant, text: &str) {
        // Timers that fell due before this frame arrived act first, as they would have.
        self.handle_timeout(now);
        if self.closed {
            return;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(error) => {
                let message = format!(
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. {error})"
                );
                self.error(WireError::new("invalid_json", message, None), None);
                return;
            }
        };
        let client_event_id = value
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let event_id = client_event_id.as_deref();
        if self.fault_active(FaultKind::ErrorEveryEvent, now) {
            self.fault_error(
                "server_error",
                Some("server_error"),
                "The server had an error while processing your request. Sorry about that!",
                None,
                event_id,
            );
            return;
        }
        let kind = match validate::client_event(&value, self.dialect.is_ga()) {
            Ok(kind) => kind.to_owned(),
            Err(error) => {
                self.error(error, event_id);
                return;
            }
        };
        let result = match kind.as_str() {
            "session.update" if self.fault_active(FaultKind::RefuseSession, now) => {
                self.fault_error(
                    "invalid_request_error",
                    Some("invalid_value"),
                    "Invalid value: 'nova'. Supported values are: 'alloy', 'ash', 'ballad', 'coral', 'echo', 'sage', 'shimmer', 'verse', 'marin' and 'cedar'.",
                    Some("session.audio.output.voice"),
                    event_id,
                );
                Ok(())
            }
            "session.update" => self.session_update(&value),
            "input_audio_buffer.append" => self.append(now, &value),
            "input_audio_buffer.commit" => self.commit(),
            "input_audio_buffer.clear" => {
                self.clear_buffer();
                self.send("input_audio_buffer.cleared", Map::new());
                Ok(())
            }
            "conversation.item.create" => self.item_create(&value),
            "conversation.item.truncate" => self.item_truncate(&value),
            "conversation.item.delete" => self.item_delete(&value),
            "conversation.item.retrieve" => self.item_retrieve(&value),
            "response.create" => self.response_create(now, &value),
            "response.cancel" => self.response_cancel(&value),
            _ => Ok(()),
        };
        if let Err(error) = result {
            self.error(error, event_id);
        }
    }

    /// Acts on timers due at `now`: reply deltas and session expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.ensure_created();
        self.last_now = self.last_now.max(now);
        self.pump(now);
        self.act_out_faults(now);
        if self.expires.is_some_and(|at| now >= at) {
            self.closed = true;
            self.response = None;
            self.out.push_back(Outgoing::Close {
                code: 1001,
                reason: format!(
                    "Your session hit the maximum duration of {} minutes.",
                    minutes(self.max_duration)
                ),
            });
        }
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let delta = self.response.as_ref().map(|r| r.next_at);
        let fault = match self.fault {
            // Not yet in force: wake when it is.
            Some((_, at)) if at > self.last_now => Some(at),
            Some((FaultKind::StopReading, _)) => self.chatter_at,
            // A flood refills as soon as its frames are out.
            Some((FaultKind::FloodAudio, _)) if self.out.len() < FLOOD_QUEUE => Some(self.last_now),
            _ => None,
        };
        [delta, self.expires, fault].into_iter().flatten().min()
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Outgoing> {
        if !self.closed {
            self.ensure_created();
        }
        self.out.pop_front()
    }

    // --- outgoing events --------------------------------------------------------------

    fn ensure_created(&mut self) {
        if self.created_sent {
            return;
        }
        self.created_sent = true;
        self.session_id = self.fresh_id("sess");
        let session = self.session_object();
        self.send("session.created", fields([("session", session)]));
    }

    fn session_object(&self) -> Value {
        let mut session = self.session.clone();
        if let Some(map) = session.as_object_mut() {
            let expires_at = self
                .unix_time_secs
                .saturating_add(self.max_duration.as_secs());
            map.insert("object".into(), json!("realtime.session"));
            map.insert("id".into(), json!(self.session_id));
            map.insert("model".into(), json!(self.model));
            map.insert("expires_at".into(), json!(expires_at));
        }
        session
    }

    fn fresh_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!(
            "{prefix}_fake{:04}x{:012}",
            self.connection % 10_000,
            self.counter
        )
    }

    fn send(&mut self, kind: &str, mut body: Map<String, Value>) {
        self.counter += 1;
        let mut event = Map::new();
        event.insert("type".into(), json!(kind));
        event.insert("event_id".into(), json!(format!("event_{}", self.counter)));
        event.append(&mut body);
        self.out
            .push_back(Outgoing::Text(Value::Object(event).to_string()));
    }

    fn error(&mut self, error: WireError, client_event_id: Option<&str>) {
        self.ensure_created();
        let body = json!({
            "type": "invalid_request_error",
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event_id.filter(|_| error.echo_event_id),
        });
        self.send("error", fields([("error", body)]));
    }

    /// An `error` of `kind` (`server_error`, `invalid_request_error`), for the faults.
    fn fault_error(
        &mut self,
        kind: &str,
        code: Option<&str>,
        message: &str,
        param: Option<&str>,
        client_event_id: Option<&str>,
    ) {
        self.ensure_created();
        let body = json!({
            "type": kind, "code": code, "message": message, "param": param,
            "event_id": client_event_id,
        });
        self.send("error", fields([("error", body)]));
    }

    /// The faults that act on time: chatter while not reading, the flood.
    fn act_out_faults(&mut self, now: Instant) {
        if self.fault_active(FaultKind::StopReading, now) {
            let due = *self.chatter_at.get_or_insert(now);
            if now >= due {
                self.send(
                    "rate_limits.updated",
                    fields([(
                        "rate_limits",
                        json!([{"name": "requests", "limit": 5000, "remaining": 4999,
                                "reset_seconds": 0.012}]),
                    )]),
                );
                self.chatter_at = Some(now + Duration::from_secs(1));
            }
        }
        if self.fault_active(FaultKind::FloodAudio, now) {
            if self.flood.is_none() {
                self.start_flood();
            }
            while self.out.len() < FLOOD_QUEUE {
                let Some(flood) = &self.flood else {
                    break;
                };
                let body = fields([
                    ("response_id", json!(flood.response_id)),
                    ("item_id", json!(flood.item_id)),
                    ("output_index", json!(0)),
                    ("content_index", json!(0)),
                    ("delta", json!(flood.delta)),
                ]);
                let name = self.event_name("response.output_audio.delta", "response.audio.delta");
                self.send(name, body);
            }
        }
    }

    /// Announces the flood's endless response and item.
    fn start_flood(&mut self) {
        let format = self.settings.output;
        let response_id = self.fresh_id("resp");
        let created =
            self.response_object(&response_id, "in_progress", Value::Null, Vec::new(), format);
        self.send("response.created", fields([("response", created)]));
        let item_id = self.fresh_id("item");
        let item = self.assistant_item(&item_id, "in_progress", "");
        self.output_item_added(&response_id, &item);
        let previous = self.last_item_id();
        self.item_added(&item, previous);
        self.push_item(Item {
            id: item_id.clone(),
            kind: ItemKind::Other,
            json: item,
        });
        let second = media::encode_pcm24k(&media::tone_24k(440, 1000), format);
        self.flood = Some(Flood {
            response_id,
            item_id,
            delta: BASE64.encode(second),
        });
    }

    fn event_name(&self, ga: &'static str, preview: &'static str) -> &'static str {
        if self.dialect.is_ga() { ga } else { preview }
    }

    /// Announces a new conversation item in the dialect's way.
    fn item_added(&mut self, item: &Value, previous: Option<String>) {
        if self.dialect.is_ga() {
            self.send(
                "conversation.item.added",
                fields([
                    ("previous_item_id", json!(previous)),
                    ("item", item.clone()),
                ]),
            );
        } else {
            self.send(
                "conversation.item.created",
                fields([
                    ("previous_item_id", json!(previous)),
                    ("item", item.clone()),
                ]),
            );
        }
    }

    fn item_done(&mut self, item: &Value, previous: Option<String>) {
        if self.dialect.is_ga() {
            self.send(
                "conversation.item.done",
                fields([
                    ("previous_item_id", json!(previous)),
                    ("item", item.clone()),
                ]),
            );
        }
    }

    fn last_item_id(&self) -> Option<String> {
        self.items.last().map(|item| item.id.clone())
    }

    // --- session.update -----------------------------------------------------------------

    fn session_update(&mut self, event: &Value) -> Result<(), WireError> {
        let Some(update) = event.get("session").and_then(Value::as_object) else {
            return Ok(());
        };
        let mut session = self.session.clone();
        merge_session(self.dialect, &mut session, update);
        normalize_session(self.dialect, &mut session);
        self.session = session;
        let settings = derive_settings(self.dialect, &self.session);
        if settings.turn.is_none() {
            self.vad.reset_turn();
            self.speech_item_id = None;
        }
        if settings.input != self.buffer_format {
            self.buffer.clear();
            self.buffer_format = settings.input;
            self.buffer_start_units = self.input_units;
        }
        self.settings = settings;
        let session = self.session_object();
        self.send("session.updated", fields([("session", session)]));
        Ok(())
    }

    // --- input audio ----------------------------------------------------------------------

    fn append(&mut self, now: Instant, event: &Value) -> Result<(), WireError> {
        let audio = event.get("audio").and_then(Value::as_str).unwrap_or("");
        if audio.len() / 4 * 3 > MAX_APPEND_BYTES + 3 {
            return Err(WireError::new(
                "invalid_value",
                "Invalid 'audio': the audio is larger than the 15 MiB limit of one append.",
                Some("audio"),
            ));
        }
        let Ok(mut bytes) = BASE64.decode(audio) else {
            return Err(WireError::new(
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                Some("audio"),
            ));
        };
        let format = self.settings.input;
        bytes.truncate(bytes.len() / format.bytes_per_sample() * format.bytes_per_sample());
        let mut pcm = Vec::with_capacity(bytes.len());
        format.decode(&bytes, &mut pcm);
        let start = self.input_units;
        self.input_units += pcm.len() as u64 * format.units_per_sample();
        self.buffer.extend_from_slice(&bytes);
        let max_units = MAX_BUFFER_MS.saturating_mul(UNITS_PER_MS);
        if self.input_units.saturating_sub(self.buffer_start_units) > max_units {
            self.drop_buffer_before(self.input_units.saturating_sub(max_units));
        }
        let Some(turn) = self.settings.turn else {
            return Ok(());
        };
        let mut events = Vec::new();
        self.vad.process(
            &turn.vad,
            &pcm,
            start,
            format.units_per_sample(),
            &mut events,
        );
        for event in events {
            match event {
                VadEvent::Started { audio_start_ms } => self.speech_started(turn, audio_start_ms),
                VadEvent::Stopped { audio_end_ms } => self.speech_stopped(now, turn, audio_end_ms),
            }
        }
        if !self.vad.speaking() {
            // Between turns only the prefix padding can still become part of an item.
            let keep_ms = turn.vad.prefix_padding_ms.saturating_add(20);
            let keep_from = self
                .input_units
                .saturating_sub(keep_ms.saturating_mul(UNITS_PER_MS));
            self.drop_buffer_before(keep_from);
        }
        Ok(())
    }

    fn speech_started(&mut self, turn: TurnDetection, audio_start_ms: u64) {
        let item_id = self.fresh_id("item");
        self.speech_item_id = Some(item_id.clone());
        self.speech_start_ms = audio_start_ms;
        self.send(
            "input_audio_buffer.speech_started",
            fields([
                ("audio_start_ms", json!(audio_start_ms)),
                ("item_id", json!(item_id)),
            ]),
        );
        if !turn.interrupt_response {
            return;
        }
        let late_ms = usize::try_from(self.late_deltas_ms).unwrap_or(usize::MAX);
        match self.response.as_mut() {
            // Already cancelled by an earlier barge-in; its in-flight audio is still going.
            Some(active) if active.cancel_reason.is_some() => {}
            Some(active) if late_ms > 0 && active.tool.is_none() => {
                active.cancel_reason = Some("turn_detected");
                active.cancel_at = active
                    .sent
                    .saturating_add(late_ms.saturating_mul(active.format.bytes_per_ms()));
            }
            Some(_) => self.finish_response(Some("turn_detected")),
            None => {}
        }
    }

    fn speech_stopped(&mut self, now: Instant, turn: TurnDetection, audio_end_ms: u64) {
        let item_id = self
            .speech_item_id
            .take()
            .unwrap_or_else(|| self.fresh_id("item"));
        self.send(
            "input_audio_buffer.speech_stopped",
            fields([
                ("audio_end_ms", json!(audio_end_ms)),
                ("item_id", json!(item_id)),
            ]),
        );
        let from = self.speech_start_ms.saturating_mul(UNITS_PER_MS);
        let to = audio_end_ms.saturating_mul(UNITS_PER_MS);
        let audio = self.buffer_slice(from, to).to_vec();
        self.drop_buffer_before(to);
        self.commit_user_item(item_id, audio);
        self.flush_cancelled();
        if turn.create_response && self.response.is_none() {
            self.start_response(now, None);
        }
    }

    fn commit(&mut self) -> Result<(), WireError> {
        let format = self.buffer_format;
        let buffered_ms = (self.buffer.len() / format.bytes_per_ms()) as u64;
        if buffered_ms < MIN_COMMIT_MS {
            return Err(WireError::new(
                "input_audio_buffer_commit_empty",
                format!(
                    "Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms of audio, but buffer only has {buffered_ms}.00ms of audio."
                ),
                None,
            ));
        }
        let item_id = self
            .speech_item_id
            .take()
            .unwrap_or_else(|| self.fresh_id("item"));
        self.vad.reset_turn();
        let audio = std::mem::take(&mut self.buffer);
        self.buffer_start_units = self.input_units;
        self.commit_user_item(item_id, audio);
        Ok(())
    }

    fn clear_buffer(&mut self) {
        self.buffer.clear();
        self.buffer_start_units = self.input_units;
        self.vad.reset_turn();
        self.speech_item_id = None;
    }

    fn commit_user_item(&mut self, item_id: String, audio: Vec<u8>) {
        let previous = self.last_item_id();
        self.send(
            "input_audio_buffer.committed",
            fields([
                ("previous_item_id", json!(previous)),
                ("item_id", json!(item_id)),
            ]),
        );
        let item = json!({
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": null}],
        });
        self.item_added(&item, previous.clone());
        self.item_done(&item, previous);
        self.push_item(Item {
            id: item_id,
            kind: ItemKind::UserAudio,
            json: item,
        });
        self.turns = self.turns.saturating_add(1);
        self.last_turn = Some((audio, self.buffer_format));
    }

    /// The buffered bytes between two timeline positions, clamped to what is buffered.
    fn buffer_slice(&self, from_units: u64, to_units: u64) -> &[u8] {
        let format = self.buffer_format;
        let offset = |units: u64| {
            let samples = units.saturating_sub(self.buffer_start_units) / format.units_per_sample();
            usize::try_from(samples)
                .unwrap_or(usize::MAX)
                .saturating_mul(format.bytes_per_sample())
                .min(self.buffer.len())
        };
        self.buffer
            .get(offset(from_units)..offset(to_units))
            .unwrap_or_default()
    }

    fn drop_buffer_before(&mut self, units: u64) {
        let format = self.buffer_format;
        let samples = units.saturating_sub(self.buffer_start_units) / format.units_per_sample();
        let bytes = usize::try_from(samples)
            .unwrap_or(usize::MAX)
            .saturating_mul(format.bytes_per_sample())
            .min(self.buffer.len());
        if bytes > 0 {
            self.buffer.drain(..bytes);
            self.buffer_start_units +=
                (bytes / format.bytes_per_sample()) as u64 * format.units_per_sample();
        }
    }

    // --- conversation items ----------------------------------------------------------------

    fn item_create(&mut self, event: &Value) -> Result<(), WireError> {
        let Some(mut item) = event.get("item").cloned() else {
            return Ok(());
        };
        let kind = match item.get("type").and_then(Value::as_str) {
            Some("function_call_output") => {
                let call_id = item.get("call_id").and_then(Value::as_str).unwrap_or("");
                let known = self.items.iter().any(
                    |i| matches!(&i.kind, ItemKind::FunctionCall { call_id: c } if c == call_id),
                );
                if !known {
                    return Err(WireError::new(
                        "invalid_value",
                        format!("Tool call ID '{call_id}' not found in conversation."),
                        Some("item.call_id"),
                    ));
                }
                ItemKind::Other
            }
            Some("function_call") => ItemKind::FunctionCall {
                call_id: item
                    .get("call_id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            },
            _ => ItemKind::Other,
        };
        let id = match item.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => self.fresh_id("item"),
        };
        if let Some(map) = item.as_object_mut() {
            map.insert("id".into(), json!(id));
            map.insert("object".into(), json!("realtime.item"));
            map.entry("status").or_insert(json!("completed"));
        }
        let previous = self.last_item_id();
        self.item_added(&item, previous.clone());
        self.item_done(&item, previous);
        self.push_item(Item {
            id,
            kind,
            json: item,
        });
        Ok(())
    }

    /// Adds an item at the end, forgetting the oldest beyond [`MAX_ITEMS`].
    fn push_item(&mut self, item: Item) {
        self.items.push(item);
        let excess = self.items.len().saturating_sub(MAX_ITEMS);
        if excess > 0 {
            self.items.drain(..excess);
        }
    }

    /// Announces a new output item of a response.
    fn output_item_added(&mut self, response_id: &str, item: &Value) {
        self.send(
            "response.output_item.added",
            fields([
                ("response_id", json!(response_id)),
                ("output_index", json!(0)),
                ("item", item.clone()),
            ]),
        );
    }

    /// Stores the finished form of a response's output item and announces it.
    fn output_item_done(&mut self, response_id: &str, item_id: &str, item: &Value) {
        if let Some(stored) = self.find_item(item_id).and_then(|i| self.items.get_mut(i)) {
            stored.json = item.clone();
        }
        self.send(
            "response.output_item.done",
            fields([
                ("response_id", json!(response_id)),
                ("output_index", json!(0)),
                ("item", item.clone()),
            ]),
        );
    }

    fn find_item(&self, id: &str) -> Option<usize> {
        self.items.iter().position(|item| item.id == id)
    }

    fn item_truncate(&mut self, event: &Value) -> Result<(), WireError> {
        let item_id = event.get("item_id").and_then(Value::as_str).unwrap_or("");
        let content_index = event
            .get("content_index")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let audio_end_ms = event
            .get("audio_end_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let Some(item) = self.find_item(item_id).and_then(|i| self.items.get_mut(i)) else {
            return Err(WireError::new(
                "item_truncate_invalid_item_id",
                format!("Item with item_id '{item_id}' not found."),
                Some("item_id"),
            ));
        };
        let ItemKind::AssistantAudio {
            produced_bytes,
            format,
        } = &mut item.kind
        else {
            return Err(WireError::new(
                "unsupported_content_type",
                "Only model output audio messages can be truncated",
                Some("item_id"),
            ));
        };
        if content_index != 0 {
            return Err(WireError::new(
                "invalid_value",
                format!("Invalid 'content_index': item has no content part {content_index}."),
                Some("content_index"),
            ));
        }
        let produced_ms = (*produced_bytes / format.bytes_per_ms()) as u64;
        if audio_end_ms > produced_ms {
            // No code, param or event_id: that is how the service reports it.
            return Err(WireError::uncoded(format!(
                "Audio content of {produced_ms} ms is already shorter than {audio_end_ms} ms"
            )));
        }
        *produced_bytes = usize::try_from(audio_end_ms)
            .unwrap_or(usize::MAX)
            .saturating_mul(format.bytes_per_ms());
        // The server drops the transcript so the context holds no text the caller never heard.
        if let Some(part) = item
            .json
            .pointer_mut("/content/0")
            .and_then(Value::as_object_mut)
        {
            part.insert("transcript".into(), json!(""));
        }
        let item_id = item.id.clone();
        self.send(
            "conversation.item.truncated",
            fields([
                ("item_id", json!(item_id)),
                ("content_index", json!(content_index)),
                ("audio_end_ms", json!(audio_end_ms)),
            ]),
        );
        // Truncating the item still being streamed ends its audio there: no further deltas,
        // and the response finishes now (cancelled if a barge-in already cancelled it).
        if let Some(active) = self.response.as_mut()
            && active.item_id == item_id
        {
            active.truncated = true;
            let reason = active.cancel_reason;
            self.finish_response(reason);
        }
        Ok(())
    }

    fn item_delete(&mut self, event: &Value) -> Result<(), WireError> {
        let item_id = event.get("item_id").and_then(Value::as_str).unwrap_or("");
        let Some(index) = self.find_item(item_id) else {
            return Err(WireError::new(
                "item_delete_invalid_item_id",
                format!("Item with item_id '{item_id}' not found."),
                Some("item_id"),
            ));
        };
        let item = self.items.remove(index);
        self.send(
            "conversation.item.deleted",
            fields([("item_id", json!(item.id))]),
        );
        Ok(())
    }

    fn item_retrieve(&mut self, event: &Value) -> Result<(), WireError> {
        let item_id = event.get("item_id").and_then(Value::as_str).unwrap_or("");
        let Some(item) = self
            .find_item(item_id)
            .and_then(|i| self.items.get(i))
            .map(|item| item.json.clone())
        else {
            return Err(WireError::new(
                "item_retrieve_invalid_item_id",
                format!("Item with item_id '{item_id}' not found."),
                Some("item_id"),
            ));
        };
        self.send("conversation.item.retrieved", fields([("item", item)]));
        Ok(())
    }

    // --- responses ----------------------------------------------------------------------------

    fn response_create(&mut self, now: Instant, event: &Value) -> Result<(), WireError> {
        self.flush_cancelled();
        if let Some(active) = &self.response {
            return Err(WireError::new(
                "conversation_already_has_active_response",
                format!(
                    "Conversation already has an active response in progress: {}. Wait until the response is finished before creating a new one.",
                    active.id
                ),
                None,
            ));
        }
        self.start_response(now, event.get("response"));
        Ok(())
    }

    fn response_cancel(&mut self, event: &Value) -> Result<(), WireError> {
        // A response a barge-in cancelled is no longer active on the server.
        self.flush_cancelled();
        let wanted = event.get("response_id").and_then(Value::as_str);
        match &self.response {
            Some(active) if wanted.is_none_or(|id| id == active.id) => {
                self.finish_response(Some("client_cancelled"));
                Ok(())
            }
            _ => Err(WireError::new(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                None,
            )),
        }
    }

    fn response_object(
        &self,
        id: &str,
        status: &str,
        details: Value,
        output: Vec<Value>,
        format: AudioFormat,
    ) -> Value {
        let output_ms: u64 = output
            .iter()
            .filter_map(|item| item.get("id").and_then(Value::as_str))
            .filter_map(|id| self.find_item(id).and_then(|i| self.items.get(i)))
            .map(|item| match item.kind {
                ItemKind::AssistantAudio {
                    produced_bytes,
                    format,
                } => (produced_bytes / format.bytes_per_ms()) as u64,
                _ => 0,
            })
            .sum();
        let audio_tokens = output_ms / 50;
        let usage = if status == "in_progress" {
            Value::Null
        } else {
            json!({
                "total_tokens": 120 + audio_tokens,
                "input_tokens": 120,
                "output_tokens": audio_tokens,
                "input_token_details": {"cached_tokens": 0, "text_tokens": 100, "audio_tokens": 20, "image_tokens": 0},
                "output_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
            })
        };
        let voice = if self.dialect.is_ga() {
            self.session.pointer("/audio/output/voice").cloned()
        } else {
            self.session.get("voice").cloned()
        }
        .unwrap_or(Value::Null);
        if self.dialect.is_ga() {
            json!({
                "object": "realtime.response", "id": id, "status": status,
                "status_details": details, "output": output, "conversation_id": "conv_fake",
                "output_modalities": ["audio"], "max_output_tokens": "inf",
                "audio": {"output": {"format": format.to_ga(), "voice": voice}},
                "usage": usage, "metadata": null,
            })
        } else {
            json!({
                "object": "realtime.response", "id": id, "status": status,
                "status_details": details, "output": output, "conversation_id": "conv_fake",
                "modalities": ["text", "audio"], "voice": voice,
                "output_audio_format": format.to_preview(), "temperature": 0.8,
                "max_output_tokens": "inf", "usage": usage, "metadata": null,
            })
        }
    }

    fn start_response(&mut self, now: Instant, overrides: Option<&Value>) {
        let format = overrides
            .and_then(|r| {
                if self.dialect.is_ga() {
                    r.pointer("/audio/output/format")
                        .and_then(AudioFormat::from_ga)
                } else {
                    r.get("output_audio_format")
                        .and_then(Value::as_str)
                        .and_then(AudioFormat::from_preview)
                }
            })
            .unwrap_or(self.settings.output);
        let response_id = self.fresh_id("resp");
        let created =
            self.response_object(&response_id, "in_progress", Value::Null, Vec::new(), format);
        self.send("response.created", fields([("response", created)]));
        self.send(
            "rate_limits.updated",
            fields([(
                "rate_limits",
                json!([
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 40000, "remaining": 38_800, "reset_seconds": 1.8},
                ]),
            )]),
        );
        let step = self
            .tool_script
            .iter()
            .zip(&self.tool_used)
            .position(|(step, used)| !used && step.turn == self.turns && self.turns > 0);
        if let Some(index) = step {
            if let Some(used) = self.tool_used.get_mut(index) {
                *used = true;
            }
            if let Some(step) = self.tool_script.get(index).cloned() {
                self.function_call(now, response_id, &step, format);
            }
            return;
        }
        self.audio_response(now, response_id, format);
    }

    /// Starts a scripted function call. Like audio, it is paced on the response timer: the
    /// item is announced now, the arguments follow in [`TOOL_DELTAS`] deltas one timer step
    /// apart, and the call completes one step after the last of them.
    fn function_call(
        &mut self,
        now: Instant,
        response_id: String,
        step: &ToolStep,
        format: AudioFormat,
    ) {
        let item_id = self.fresh_id("item");
        let call_id = self.fresh_id("call");
        let arguments = match &step.arguments {
            Value::String(text) => text.clone(),
            Value::Null => "{}".to_owned(),
            other => other.to_string(),
        };
        let previous = self.last_item_id();
        let item = json!({
            "id": item_id, "object": "realtime.item", "type": "function_call",
            "status": "in_progress", "name": step.name, "call_id": call_id, "arguments": "",
        });
        self.output_item_added(&response_id, &item);
        self.item_added(&item, previous.clone());
        self.push_item(Item {
            id: item_id.clone(),
            kind: ItemKind::FunctionCall {
                call_id: call_id.clone(),
            },
            json: item,
        });
        let chars: Vec<char> = arguments.chars().collect();
        let chunk = chars.len().div_ceil(TOOL_DELTAS).max(1);
        let chunks = chars.chunks(chunk).map(|c| c.iter().collect()).collect();
        let step_time = self.tool_step();
        self.response = Some(ActiveResponse {
            id: response_id,
            item_id,
            format,
            audio: Vec::new(),
            sent: 0,
            started: now,
            next_at: now + step_time,
            transcript: Vec::new(),
            transcript_sent: 0,
            truncated: false,
            cancel_reason: None,
            cancel_at: usize::MAX,
            tool: Some(ToolProgress {
                name: step.name.clone(),
                call_id,
                arguments,
                chunks,
                chunks_sent: 0,
                previous,
            }),
        });
    }

    /// Time between two steps of a function call response: 50 ms of "generation", sped up
    /// like audio.
    fn tool_step(&self) -> Duration {
        Duration::from_secs_f64(0.05 / self.speed)
    }

    /// Sends the function call's argument deltas due by `now`, then completes the call.
    fn pump_tool(&mut self, now: Instant) {
        let step_time = self.tool_step();
        loop {
            let Some(active) = self.response.as_mut() else {
                return;
            };
            if active.next_at > now {
                return;
            }
            let Some(tool) = active.tool.as_mut() else {
                return;
            };
            let Some(piece) = tool.chunks.get(tool.chunks_sent).cloned() else {
                self.finish_response(None);
                return;
            };
            tool.chunks_sent += 1;
            active.next_at += step_time;
            let body = fields([
                ("response_id", json!(active.id)),
                ("item_id", json!(active.item_id)),
                ("output_index", json!(0)),
                ("call_id", json!(tool.call_id)),
                ("delta", json!(piece)),
            ]);
            self.send("response.function_call_arguments.delta", body);
        }
    }

    /// Ends a function call response: completed with all its arguments, or cancelled with
    /// those sent so far and the item `incomplete`.
    fn finish_tool(
        &mut self,
        active: ActiveResponse,
        tool: ToolProgress,
        cancel_reason: Option<&'static str>,
    ) {
        let arguments = if cancel_reason.is_none() {
            tool.arguments
        } else {
            tool.chunks
                .iter()
                .take(tool.chunks_sent)
                .map(String::as_str)
                .collect()
        };
        if cancel_reason.is_none() {
            let mut done = fields([
                ("response_id", json!(active.id)),
                ("item_id", json!(active.item_id)),
                ("output_index", json!(0)),
                ("call_id", json!(tool.call_id)),
                ("arguments", json!(arguments)),
            ]);
            if self.dialect.is_ga() {
                done.insert("name".into(), json!(tool.name));
            }
            self.send("response.function_call_arguments.done", done);
        }
        let status = if cancel_reason.is_some() {
            "incomplete"
        } else {
            "completed"
        };
        let item = json!({
            "id": active.item_id, "object": "realtime.item", "type": "function_call",
            "status": status, "name": tool.name, "call_id": tool.call_id,
            "arguments": arguments,
        });
        self.output_item_done(&active.id, &active.item_id, &item);
        self.item_done(&item, tool.previous);
        let (status, details) = match cancel_reason {
            None => ("completed", Value::Null),
            Some(reason) => ("cancelled", json!({"type": "cancelled", "reason": reason})),
        };
        let done = self.response_object(&active.id, status, details, vec![item], active.format);
        self.send("response.done", fields([("response", done)]));
    }

    fn reply_audio(&self, format: AudioFormat) -> Vec<u8> {
        match &self.reply {
            FakeReply::Echo => match &self.last_turn {
                Some((audio, from)) => media::convert(audio, *from, format),
                None => media::encode_pcm24k(&media::tone_24k(440, 1000), format),
            },
            FakeReply::Tone {
                frequency_hz,
                duration_ms,
            } => media::encode_pcm24k(&media::tone_24k(*frequency_hz, *duration_ms), format),
            FakeReply::File { pcm, .. } => {
                let pcm = pcm.as_deref().map(Vec::as_slice).unwrap_or_default();
                media::encode_pcm24k(pcm, format)
            }
        }
    }

    fn assistant_item(&self, id: &str, status: &str, transcript: &str) -> Value {
        let part = if self.dialect.is_ga() {
            "output_audio"
        } else {
            "audio"
        };
        json!({
            "id": id, "object": "realtime.item", "type": "message", "status": status,
            "role": "assistant", "content": [{"type": part, "transcript": transcript}],
        })
    }

    fn audio_response(&mut self, now: Instant, response_id: String, format: AudioFormat) {
        let item_id = self.fresh_id("item");
        let previous = self.last_item_id();
        let mut item = self.assistant_item(&item_id, "in_progress", "");
        if let Some(content) = item.get_mut("content") {
            *content = json!([]);
        }
        self.output_item_added(&response_id, &item);
        self.item_added(&item, previous);
        self.push_item(Item {
            id: item_id.clone(),
            kind: ItemKind::AssistantAudio {
                produced_bytes: 0,
                format,
            },
            json: item,
        });
        let part_type = if self.dialect.is_ga() {
            "output_audio"
        } else {
            "audio"
        };
        self.send(
            "response.content_part.added",
            fields([
                ("response_id", json!(response_id)),
                ("item_id", json!(item_id)),
                ("output_index", json!(0)),
                ("content_index", json!(0)),
                ("part", json!({"type": part_type, "transcript": ""})),
            ]),
        );
        self.response = Some(ActiveResponse {
            id: response_id,
            item_id,
            format,
            audio: self.reply_audio(format),
            sent: 0,
            started: now,
            next_at: now,
            transcript: self.transcript.as_deref().unwrap_or("").chars().collect(),
            transcript_sent: 0,
            truncated: false,
            cancel_reason: None,
            cancel_at: usize::MAX,
            tool: None,
        });
        self.pump(now);
    }

    /// Ends at once a response a barge-in already cancelled whose in-flight audio
    /// (`late_deltas_ms`) is still being sent: the server is done with it, so anything the
    /// client does next sees it finished.
    fn flush_cancelled(&mut self) {
        if let Some(reason) = self.response.as_ref().and_then(|r| r.cancel_reason) {
            self.finish_response(Some(reason));
        }
    }

    /// Sends every delta due by `now`, and finishes the response after the last one.
    fn pump(&mut self, now: Instant) {
        if self.response.as_ref().is_some_and(|r| r.tool.is_some()) {
            self.pump_tool(now);
            return;
        }
        loop {
            let Some(active) = self.response.as_mut() else {
                return;
            };
            let limit = active.audio.len().min(active.cancel_at);
            if active.sent >= limit {
                let reason = active.cancel_reason;
                self.finish_response(reason);
                return;
            }
            if active.next_at > now {
                return;
            }
            let per_sample = active.format.bytes_per_sample();
            let per_ms = active.format.bytes_per_ms() as u64;
            let (min_ms, max_ms) = self.delta_ms;
            let size = self.prng.range(min_ms * per_ms, max_ms * per_ms) as usize;
            let size = (size / per_sample * per_sample).max(per_sample);
            let end = active.sent.saturating_add(size).min(limit);
            let chunk = active.audio.get(active.sent..end).unwrap_or_default();
            let delta = BASE64.encode(chunk);
            let transcript_target = if active.audio.is_empty() {
                active.transcript.len()
            } else {
                (active.transcript.len() * end).div_ceil(active.audio.len())
            };
            let text: String = active
                .transcript
                .get(active.transcript_sent..transcript_target)
                .unwrap_or_default()
                .iter()
                .collect();
            active.transcript_sent = transcript_target.max(active.transcript_sent);
            active.sent = end;
            let sent_ms = end as f64 / per_ms as f64;
            active.next_at =
                active.started + Duration::from_secs_f64(sent_ms / 1000.0 / self.speed);
            let (response_id, item_id) = (active.id.clone(), active.item_id.clone());
            if let Some(Item {
                kind: ItemKind::AssistantAudio { produced_bytes, .. },
                ..
            }) = self.find_item(&item_id).and_then(|i| self.items.get_mut(i))
            {
                *produced_bytes = end;
            }
            let ids = [
                ("response_id", json!(response_id)),
                ("item_id", json!(item_id)),
                ("output_index", json!(0)),
                ("content_index", json!(0)),
            ];
            if !text.is_empty() {
                let mut body = fields(ids.clone());
                body.insert("delta".into(), json!(text));
                let name = self.event_name(
                    "response.output_audio_transcript.delta",
                    "response.audio_transcript.delta",
                );
                self.send(name, body);
            }
            let mut body = fields(ids);
            body.insert("delta".into(), json!(delta));
            let name = self.event_name("response.output_audio.delta", "response.audio.delta");
            self.send(name, body);
        }
    }

    /// Ends the active response: completed when `cancel_reason` is `None`, else cancelled.
    fn finish_response(&mut self, cancel_reason: Option<&'static str>) {
        let Some(mut active) = self.response.take() else {
            return;
        };
        if let Some(tool) = active.tool.take() {
            self.finish_tool(active, tool, cancel_reason);
            return;
        }
        let sent_text = if active.truncated {
            0
        } else {
            active.transcript_sent
        };
        let transcript: String = active
            .transcript
            .get(..sent_text)
            .unwrap_or_default()
            .iter()
            .collect();
        let ids = [
            ("response_id", json!(active.id)),
            ("item_id", json!(active.item_id)),
            ("output_index", json!(0)),
            ("content_index", json!(0)),
        ];
        let name = self.event_name("response.output_audio.done", "response.audio.done");
        self.send(name, fields(ids.clone()));
        let mut body = fields(ids.clone());
        body.insert("transcript".into(), json!(transcript));
        let name = self.event_name(
            "response.output_audio_transcript.done",
            "response.audio_transcript.done",
        );
        self.send(name, body);
        let part_type = if self.dialect.is_ga() {
            "output_audio"
        } else {
            "audio"
        };
        let mut body = fields(ids);
        body.insert(
            "part".into(),
            json!({"type": part_type, "transcript": transcript}),
        );
        self.send("response.content_part.done", body);
        let status = if cancel_reason.is_some() || active.truncated {
            "incomplete"
        } else {
            "completed"
        };
        let item = self.assistant_item(&active.item_id, status, &transcript);
        self.output_item_done(&active.id, &active.item_id, &item);
        let previous = self
            .find_item(&active.item_id)
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.items.get(i))
            .map(|item| item.id.clone());
        self.item_done(&item, previous);
        let (status, details) = match cancel_reason {
            None => ("completed", Value::Null),
            Some(reason) => ("cancelled", json!({"type": "cancelled", "reason": reason})),
        };
        let done = self.response_object(&active.id, status, details, vec![item], active.format);
        self.send("response.done", fields([("response", done)]));
    }
}

fn fields<const N: usize>(pairs: [(&str, Value); N]) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn minutes(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs.is_multiple_of(60) {
        (secs / 60).to_string()
    } else {
        let text = format!("{:.2}", duration.as_secs_f64() / 60.0);
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

// --- session objects ------------------------------------------------------------------------

const DEFAULT_INSTRUCTIONS: &str =
    "You are a fake realtime model running locally. You echo what you hear or play canned audio.";

fn default_turn_detection(dialect: FakeDialect) -> Value {
    if dialect.is_ga() {
        json!({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
               "silence_duration_ms": 500, "idle_timeout_ms": null,
               "create_response": true, "interrupt_response": true})
    } else {
        // The Azure preview's session.created shows 200 ms (realtime-api.md section 2.3).
        json!({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
               "silence_duration_ms": 200, "create_response": true, "interrupt_response": true})
    }
}

fn default_session(dialect: FakeDialect) -> Value {
    if dialect.is_ga() {
        json!({
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": DEFAULT_INSTRUCTIONS,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": null,
            "truncation": "auto",
            "prompt": null,
            "include": null,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": null,
                    "noise_reduction": null,
                    "turn_detection": default_turn_detection(dialect),
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "voice": "marin",
                    "speed": 1.0,
                },
            },
        })
    } else {
        json!({
            "modalities": ["audio", "text"],
            "instructions": DEFAULT_INSTRUCTIONS,
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": null,
            "input_audio_noise_reduction": null,
            "turn_detection": default_turn_detection(dialect),
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
            "speed": 1.0,
            "tracing": null,
        })
    }
}

/// Applies a validated update: only the fields present change; `audio.input` and
/// `audio.output` merge key by key; everything else (turn detection included) is replaced.
fn merge_session(dialect: FakeDialect, session: &mut Value, update: &Map<String, Value>) {
    let Some(target) = session.as_object_mut() else {
        return;
    };
    for (key, value) in update {
        // The model is fixed by the URL; the real service does not switch models mid-session.
        if key == "model" {
            continue;
        }
        if dialect.is_ga() && key == "audio" {
            let audio = target.entry("audio").or_insert_with(|| json!({}));
            for direction in ["input", "output"] {
                let Some(changes) = value.get(direction).and_then(Value::as_object) else {
                    continue;
                };
                if let Some(slot) = audio.as_object_mut() {
                    let dir = slot.entry(direction).or_insert_with(|| json!({}));
                    if let Some(dir) = dir.as_object_mut() {
                        for (k, v) in changes {
                            dir.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            continue;
        }
        target.insert(key.clone(), value.clone());
    }
}

/// Fills defaults the client left out, as the server echoes them in `session.updated`.
fn normalize_session(dialect: FakeDialect, session: &mut Value) {
    let turn_pointer = if dialect.is_ga() {
        "/audio/input/turn_detection"
    } else {
        "/turn_detection"
    };
    if let Some(turn) = session.pointer_mut(turn_pointer)
        && let Some(map) = turn.as_object_mut()
    {
        let semantic = map.get("type").and_then(Value::as_str) == Some("semantic_vad");
        let defaults = if semantic {
            json!({"type": "semantic_vad", "eagerness": "auto", "create_response": true, "interrupt_response": true})
        } else {
            default_turn_detection(dialect)
        };
        if let Some(defaults) = defaults.as_object() {
            for (k, v) in defaults {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    if dialect.is_ga() {
        for pointer in ["/audio/input/format", "/audio/output/format"] {
            if let Some(format) = session.pointer_mut(pointer).and_then(Value::as_object_mut)
                && format.get("type").and_then(Value::as_str) == Some("audio/pcm")
            {
                format.insert("rate".into(), json!(24000));
            }
        }
    }
}

fn derive_settings(dialect: FakeDialect, session: &Value) -> Settings {
    let (input, output, turn) = if dialect.is_ga() {
        (
            session
                .pointer("/audio/input/format")
                .and_then(AudioFormat::from_ga),
            session
                .pointer("/audio/output/format")
                .and_then(AudioFormat::from_ga),
            session.pointer("/audio/input/turn_detection"),
        )
    } else {
        let format = |key: &str| {
            session
                .get(key)
                .and_then(Value::as_str)
                .and_then(AudioFormat::from_preview)
        };
        (
            format("input_audio_format"),
            format("output_audio_format"),
            session.get("turn_detection"),
        )
    };
    let turn = turn.filter(|t| t.is_object()).map(|t| {
        let number =
            |key: &str, default: f64| t.get(key).and_then(Value::as_f64).unwrap_or(default);
        let flag = |key: &str| t.get(key).and_then(Value::as_bool).unwrap_or(true);
        let vad = if t.get("type").and_then(Value::as_str) == Some("semantic_vad") {
            let silence = match t.get("eagerness").and_then(Value::as_str) {
                Some("low") => 1000,
                Some("high") => 250,
                _ => 500,
            };
            VadSettings {
                threshold: 0.5,
                prefix_padding_ms: 300,
                silence_duration_ms: silence,
            }
        } else {
            VadSettings {
                threshold: number("threshold", 0.5),
                prefix_padding_ms: number("prefix_padding_ms", 300.0) as u64,
                silence_duration_ms: number("silence_duration_ms", 500.0) as u64,
            }
        };
        TurnDetection {
            vad,
            create_response: flag("create_response"),
            interrupt_response: flag("interrupt_response"),
        }
    });
    Settings {
        input: input.unwrap_or(AudioFormat::Pcm16),
        output: output.unwrap_or(AudioFormat::Pcm16),
        turn,
    }
}
