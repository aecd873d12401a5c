//! The session core: one WebSocket connection's protocol state, driven by the shell.
//!
//! See the module overview in [`super`] for the drive loop. The rules this file enforces:
//!
//! - **Setup.** Nothing but the `session.update` is sent before `session.updated` confirms the
//!   profile; audio offered before that is dropped (and counted) because the service would
//!   read it in its default format. An `error` naming our `session.update` (or naming nothing
//!   while its answer is awaited) is a rejected configuration; a fatal one (bad key, quota,
//!   ...) refuses the session; any other is reported and the setup goes on.
//! - **One response at a time.** A `response.create` while a response is active (or while our
//!   previous create is still unanswered) fails with `conversation_already_has_active_response`,
//!   so creates wait in a queue for the next `response.done`. If the server still refuses one
//!   (server VAD started a response we had not heard of yet), it goes back to the queue.
//! - **Ledger.** Audio received per `(item, content part)` is counted in bytes; its duration
//!   bounds every truncate, because the service rejects a truncate past the audio it produced.
//! - **Errors.** Most are harmless (a cancel with nothing to cancel, a late truncate) and only
//!   logged; a few end the session (bad key, expired session, beta shape refused, repeated
//!   server errors). Each names the client event it answers when the server says so.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::client_event::{ClientEvent, Envelope, NewItem, ResponseParams};
use super::ids::{CallId, EventId, ItemId, ResponseId};
use super::render::session_object;
use super::server_event::{self as wire, Item, RateLimit, ServerEvent};
use super::{Dialect, Error};
use crate::config::{AudioFormat, ProfileConfig};

/// How long `session.created` and then `session.updated` may take, unless the shell says
/// otherwise.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The service accepts up to 15 MiB of base64 per append; larger input is split well below it.
const MAX_APPEND_BYTES: usize = 8 * 1024 * 1024;
/// Sent client events remembered for error correlation.
const RECENT_EVENTS: usize = 128;
/// Items whose received audio is remembered: far more than one call can still truncate.
const LEDGER_ITEMS: usize = 256;
/// Items remembered as announced by the service (audio only comes for the newest few).
const ANNOUNCED_ITEMS: usize = 64;
/// Tool calls remembered as already reported (or dropped), so a call is surfaced once only.
const REPORTED_CALLS: usize = 64;
/// Calls being assembled at once; more means a misbehaving server.
const PENDING_CALLS: usize = 32;
/// The longest tool-call arguments accepted; a longer call is dropped.
const MAX_CALL_ARGUMENTS: usize = 64 * 1024;
/// `server_error`s within [`SERVER_ERROR_WINDOW`] that make the session unusable.
const SERVER_ERRORS_FATAL: usize = 3;
const SERVER_ERROR_WINDOW: Duration = Duration::from_secs(60);
/// How long a `response.create` may go unanswered (no `response.created`, no `error`) before
/// the session stops waiting for it, so one lost create cannot block every later one.
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(15);
/// The `code` of the [`SessionEvent::Error`] the session itself reports when a
/// `response.create` went unanswered for [`CREATE_TIMEOUT`].
pub const CREATE_TIMEOUT_CODE: &str = "response_create_timeout";

/// What the session reports to the `Call`.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// The profile is in effect; audio and commands may flow. `expires_at` (Unix seconds) is
    /// when the service will end the session, for the shell to plan a reconnect.
    Ready {
        session_id: Option<String>,
        expires_at: Option<u64>,
    },
    /// The session never became ready; the shell closes the socket.
    SetupFailed(SetupFailure),
    /// The service ended the session at its maximum duration (close 1001, or an `error` with
    /// code `session_expired` once ready).
    Expired,
    /// The socket closed for another reason.
    Closed {
        code: Option<u16>,
        reason: String,
    },
    /// Server VAD heard the caller start (barge-in starts here).
    SpeechStarted {
        audio_start_ms: u64,
        item_id: ItemId,
    },
    SpeechStopped {
        audio_end_ms: u64,
        item_id: ItemId,
    },
    /// The idle timeout fired: the service is about to prompt a silent caller.
    IdleTimeout {
        item_id: ItemId,
    },
    ResponseCreated {
        response_id: ResponseId,
    },
    ResponseDone {
        response_id: ResponseId,
        status: ResponseStatus,
        /// `status_details.reason` (`turn_detected`, `client_cancelled`, ...), else the
        /// code of `status_details.error`.
        reason: Option<String>,
    },
    /// Model audio in the session's output format, as it came (checked base64, decoded by
    /// whoever takes it, in pieces: see [`EncodedAudio`]). Only for items the service has
    /// announced (`response.output_item.added`, `conversation.item.added`); deltas of others
    /// are dropped and counted ([`SessionStats::unknown_item_deltas`]).
    AudioDelta {
        response_id: ResponseId,
        item_id: ItemId,
        content_index: u32,
        audio: EncodedAudio,
    },
    /// No more audio for this content part (also sent when a response is cut off).
    AudioDone {
        response_id: ResponseId,
        item_id: ItemId,
        content_index: u32,
    },
    /// The model wants a function run; answer with [`Session::submit_tool_output`].
    ToolCall {
        call_id: CallId,
        name: String,
        arguments: String,
    },
    CallerTranscript {
        item_id: ItemId,
        text: String,
    },
    CallerTranscriptFailed {
        item_id: ItemId,
        message: String,
    },
    AssistantTranscript {
        response_id: ResponseId,
        item_id: ItemId,
        text: String,
    },
    ItemTruncated {
        item_id: ItemId,
        content_index: u32,
        audio_end_ms: u64,
    },
    ItemDeleted {
        item_id: ItemId,
    },
    RateLimits(Vec<RateLimit>),
    /// An `error` from the service after setup. When `fatal`, the session has ended and the
    /// shell should close the socket.
    Error(ServerError),
    /// A frame that could not be used (not JSON, a known type missing a field, bad base64).
    /// Counted and skipped; never fatal.
    Malformed {
        reason: String,
    },
}

/// Model audio as the service sent it: base64 text whose decoding was checked but not kept,
/// so a delta of any size costs no more memory than its frame already did; the taker decodes
/// it in pieces ([`EncodedAudio::for_each_chunk`]) and may stop early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedAudio {
    base64: String,
    len: usize,
}

/// Decoded bytes per piece of [`EncodedAudio::for_each_chunk`] (a multiple of 3, so pieces
/// start on base64 quanta).
pub const AUDIO_CHUNK: usize = 3 * 1024;

impl EncodedAudio {
    /// Checks `base64` (standard alphabet, padded) without keeping the decoded bytes.
    pub fn new(base64: String) -> Result<EncodedAudio, base64::DecodeSliceError> {
        let mut buf = [0u8; AUDIO_CHUNK];
        let mut len = 0;
        for piece in base64.as_bytes().chunks(AUDIO_CHUNK / 3 * 4) {
            len += BASE64.decode_slice(piece, &mut buf)?;
        }
        Ok(EncodedAudio { base64, len })
    }

    /// Audio bytes from raw bytes (tests, the fake).
    pub fn from_bytes(audio: &[u8]) -> EncodedAudio {
        EncodedAudio {
            base64: BASE64.encode(audio),
            len: audio.len(),
        }
    }

    /// Decoded length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no audio.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands the decoded audio to `take` in pieces of at most [`AUDIO_CHUNK`] bytes, in order,
    /// until `take` returns false. Returns the bytes not handed over.
    pub fn for_each_chunk(&self, mut take: impl FnMut(&[u8]) -> bool) -> usize {
        let mut buf = [0u8; AUDIO_CHUNK];
        let mut handed = 0;
        for piece in self.base64.as_bytes().chunks(AUDIO_CHUNK / 3 * 4) {
            // Checked in `new`: a piece that fails now cannot happen; it is skipped.
            let Ok(n) = BASE64.decode_slice(piece, &mut buf) else {
                continue;
            };
            handed += n;
            if !take(buf.get(..n).unwrap_or_default()) {
                break;
            }
        }
        self.len.saturating_sub(handed)
    }

    /// The whole audio, decoded (tests and tools; calls use [`EncodedAudio::for_each_chunk`]).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len);
        self.for_each_chunk(|piece| {
            out.extend_from_slice(piece);
            true
        });
        out
    }
}

/// Why setup failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetupFailure {
    /// `waiting_for` (`session.created` or `session.updated`) did not arrive in time.
    SetupTimeout { waiting_for: &'static str },
    /// The service answered our `session.update` with an error (one naming its `event_id`,
    /// or naming none while `session.updated` is awaited); `param` names the field it refused
    /// (for example `session.audio.input.format`).
    ConfigRejected {
        code: Option<String>,
        message: String,
        param: Option<String>,
    },
    /// The service refused the session itself before it was ready, whatever we sent: `code`
    /// is `invalid_api_key`, `beta_api_shape_disabled`, `insufficient_quota`,
    /// `session_expired`, or `None` for an `authentication_error` without one.
    Refused {
        code: Option<String>,
        message: String,
    },
}

/// An `error` event, classified. The session also reports a `response.create` that went
/// unanswered for [`CREATE_TIMEOUT`] as one (`kind: None`, `code:` [`CREATE_TIMEOUT_CODE`],
/// not fatal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub fatal: bool,
    /// `error.type`: `invalid_request_error`, `server_error`, ...
    pub kind: Option<String>,
    pub code: Option<String>,
    pub message: String,
    pub param: Option<String>,
    /// `error.event_id`: the client event the error answers, when the server says.
    pub client_event_id: Option<EventId>,
    /// The `type` of that client event, if it was one of the recent ones.
    pub caused_by: Option<&'static str>,
}

/// How a response ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseStatus {
    Completed,
    Cancelled,
    Incomplete,
    Failed,
    InProgress,
    Other(String),
}

impl ResponseStatus {
    fn from_wire(status: Option<&str>) -> Self {
        match status {
            Some("completed") => Self::Completed,
            Some("cancelled") => Self::Cancelled,
            Some("incomplete") => Self::Incomplete,
            Some("failed") => Self::Failed,
            Some("in_progress") => Self::InProgress,
            other => Self::Other(other.unwrap_or_default().to_owned()),
        }
    }
}

/// Counters for metrics and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Text frames handed to [`Session::handle_text`].
    pub frames_received: u64,
    /// Client events queued for sending.
    pub events_sent: u64,
    /// Server events with a `type` this bridge does not know.
    pub unknown_events: u64,
    /// Frames that were not JSON, lacked a needed field, or carried bad base64.
    pub malformed: u64,
    /// `error` events from the service.
    pub errors: u64,
    /// Caller audio sent upstream (bytes in the input format).
    pub input_audio_bytes_sent: u64,
    /// Caller audio dropped because the session was not ready (or had ended).
    pub input_audio_bytes_dropped: u64,
    /// Model audio received (decoded bytes in the output format).
    pub output_audio_bytes_received: u64,
    /// `response.create`s that had to wait for an active response to finish.
    pub responses_queued: u64,
    /// Audio deltas for items the service never announced, dropped.
    pub unknown_item_deltas: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    AwaitingCreated,
    AwaitingUpdated { update_id: EventId },
    Ready,
    Ended,
}

/// A `response.create` not yet accepted by the service.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PendingCreate {
    instructions: Option<String>,
    /// Created to speak tool results; several of those waiting together need only one.
    after_tool_output: bool,
}

struct LedgerEntry {
    response_id: ResponseId,
    bytes: u64,
}

/// A tool call being assembled.
struct PendingCall {
    response_id: ResponseId,
    name: Option<String>,
    arguments: String,
    /// `response.function_call_arguments.done` (or a `completed` item) made the arguments
    /// final.
    arguments_done: bool,
}

impl PendingCall {
    fn new(response_id: ResponseId) -> Self {
        PendingCall {
            response_id,
            name: None,
            arguments: String::new(),
            arguments_done: false,
        }
    }
}

/// Which event says a tool call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallSource {
    ArgumentsDone,
    /// An output item with status `completed`.
    ItemCompleted,
    /// An output item with another status (`incomplete` after a barge-in) or none.
    ItemNotCompleted,
}

/// One Realtime API session (one WebSocket connection), sans-IO.
pub struct Session {
    dialect: Dialect,
    output_format: AudioFormat,
    session: serde_json::Value,
    state: State,
    setup_started: Instant,
    setup_timeout: Duration,
    session_id: Option<String>,
    expires_at: Option<u64>,

    next_event_number: u64,
    recent_sent: VecDeque<(EventId, &'static str)>,
    transmits: VecDeque<String>,
    events: VecDeque<SessionEvent>,

    active_response: Option<ResponseId>,
    /// The `response.create` sent and not yet answered by `response.created` or an `error`.
    create_in_flight: Option<EventId>,
    /// When [`CREATE_TIMEOUT`] expires for it. Commands carry no time, so the deadline is armed
    /// by the first `handle_*` call after the create was sent.
    create_deadline: Option<Instant>,
    /// The latest `now` the shell passed in.
    last_now: Instant,
    /// Set when the service refused a create because of a response we have not seen start;
    /// nothing is sent until the next `response.done`.
    wait_for_response_done: bool,
    pending_creates: VecDeque<PendingCreate>,
    sent_creates: VecDeque<(EventId, PendingCreate)>,

    ledger: HashMap<(ItemId, u32), LedgerEntry>,
    ledger_order: VecDeque<(ItemId, u32)>,
    /// Items the service announced (the newest [`ANNOUNCED_ITEMS`]): audio may come for them.
    announced: VecDeque<ItemId>,
    pending_calls: HashMap<CallId, PendingCall>,
    reported_calls: VecDeque<CallId>,
    rate_limits: Vec<RateLimit>,
    server_errors: VecDeque<Instant>,
    stats: SessionStats,
}

impl Session {
    /// A session for `profile`, connected (or connecting) at `now`. The setup deadline runs
    /// from `now`.
    pub fn new(profile: &ProfileConfig, dialect: Dialect, now: Instant) -> Session {
        Session {
            dialect,
            output_format: profile.audio_format,
            session: session_object(profile, dialect),
            state: State::AwaitingCreated,
            setup_started: now,
            setup_timeout: DEFAULT_SETUP_TIMEOUT,
            session_id: None,
            expires_at: None,
            next_event_number: 0,
            recent_sent: VecDeque::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            active_response: None,
            create_in_flight: None,
            create_deadline: None,
            last_now: now,
            wait_for_response_done: false,
            pending_creates: VecDeque::new(),
            sent_creates: VecDeque::new(),
            ledger: HashMap::new(),
            ledger_order: VecDeque::new(),
            announced: VecDeque::new(),
            pending_calls: HashMap::new(),
            reported_calls: VecDeque::new(),
            rate_limits: Vec::new(),
            server_errors: VecDeque::new(),
            stats: SessionStats::default(),
        }
    }

    /// Replaces the [`DEFAULT_SETUP_TIMEOUT`] (still measured from the `now` given to `new`).
    pub fn with_setup_timeout(mut self, timeout: Duration) -> Session {
        self.setup_timeout = timeout;
        self
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether the profile is in effect and commands are accepted.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether the session has ended (setup failed, fatal error, closed).
    pub fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// The response the service is generating, if any.
    pub fn active_response(&self) -> Option<&ResponseId> {
        self.active_response.as_ref()
    }

    /// The latest `rate_limits.updated` entries.
    pub fn rate_limits(&self) -> &[RateLimit] {
        &self.rate_limits
    }

    pub fn stats(&self) -> SessionStats {
        self.stats.clone()
    }

    /// Milliseconds of audio received for this item's content part (G.711: bytes / 8,
    /// pcm16 at 24 kHz: bytes / 48, rounded down): the most a truncate may keep.
    pub fn received_ms(&self, item_id: &ItemId, content_index: u32) -> Option<u64> {
        self.ledger
            .get(&(item_id.clone(), content_index))
            .map(|entry| entry.bytes / self.bytes_per_ms())
    }

    /// The response an item's audio came in, from the ledger.
    pub fn response_of(&self, item_id: &ItemId, content_index: u32) -> Option<&ResponseId> {
        self.ledger
            .get(&(item_id.clone(), content_index))
            .map(|entry| &entry.response_id)
    }

    /// Tool calls in assembly (for tests of the bound).
    #[cfg(test)]
    pub(super) fn pending_call_count(&self) -> usize {
        self.pending_calls.len()
    }

    fn bytes_per_ms(&self) -> u64 {
        match self.output_format {
            AudioFormat::Pcm16 | AudioFormat::Auto => 48,
            AudioFormat::G711Ulaw | AudioFormat::G711Alaw => 8,
        }
    }

    // ---- output -----------------------------------------------------------------------------

    /// The next client event to send, as a WebSocket text frame.
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next: the setup deadline until ready,
    /// then the [`CREATE_TIMEOUT`] of an unanswered `response.create`. Right after a create was
    /// sent this is a past instant, meaning "now": that call arms the create's deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingCreated | State::AwaitingUpdated { .. } => {
                Some(self.setup_started + self.setup_timeout)
            }
            State::Ready => self
                .create_in_flight
                .as_ref()
                .map(|_| self.create_deadline.unwrap_or(self.last_now)),
            State::Ended => None,
        }
    }

    // ---- input ------------------------------------------------------------------------------

    pub fn handle_timeout(&mut self, now: Instant) {
        self.observe_time(now);
        let waiting_for = match self.state {
            State::AwaitingCreated => "session.created",
            State::AwaitingUpdated { .. } => "session.updated",
            State::Ready => {
                if self.create_deadline.is_some_and(|deadline| now >= deadline) {
                    self.create_timed_out();
                    self.observe_time(now);
                }
                return;
            }
            State::Ended => return,
        };
        if now >= self.setup_started + self.setup_timeout {
            tracing::warn!(waiting_for, "realtime session setup timed out");
            self.state = State::Ended;
            self.events
                .push_back(SessionEvent::SetupFailed(SetupFailure::SetupTimeout {
                    waiting_for,
                }));
        }
    }

    /// The socket closed (reported even after a failure already ended the session, so the
    /// shell learns the close code). Close 1001 ("going away") is how the service ends a
    /// session at its maximum duration, whatever its reason text says ("Your session hit the
    /// maximum duration...", "session expired").
    pub fn handle_closed(&mut self, _now: Instant, code: Option<u16>, reason: &str) {
        self.state = State::Ended;
        if code == Some(1001) {
            tracing::info!(reason, "realtime session reached its maximum duration");
            self.events.push_back(SessionEvent::Expired);
        } else {
            tracing::info!(?code, reason, "realtime session closed");
            self.events.push_back(SessionEvent::Closed {
                code,
                reason: reason.to_owned(),
            });
        }
    }

    /// One WebSocket text frame from the service.
    pub fn handle_text(&mut self, now: Instant, text: &str) {
        self.stats.frames_received += 1;
        if self.state == State::Ended {
            return;
        }
        self.observe_time(now);
        match ServerEvent::parse(text) {
            Ok(event) => self.handle_event(now, event),
            Err(error) => self.malformed(error.to_string()),
        }
        self.observe_time(now);
    }

    fn malformed(&mut self, reason: String) {
        self.stats.malformed += 1;
        tracing::debug!(%reason, "skipping malformed realtime frame");
        self.events.push_back(SessionEvent::Malformed { reason });
    }

    fn handle_event(&mut self, now: Instant, event: ServerEvent) {
        match event {
            ServerEvent::SessionCreated(created) => self.handle_session_created(created.session),
            ServerEvent::SessionUpdated(updated) => self.handle_session_updated(updated.session),
            ServerEvent::Error(payload) => self.handle_error(now, payload.error),
            ServerEvent::SpeechStarted(e) => self.events.push_back(SessionEvent::SpeechStarted {
                audio_start_ms: e.audio_start_ms,
                item_id: e.item_id,
            }),
            ServerEvent::SpeechStopped(e) => self.events.push_back(SessionEvent::SpeechStopped {
                audio_end_ms: e.audio_end_ms,
                item_id: e.item_id,
            }),
            ServerEvent::InputAudioTimeoutTriggered(e) => self
                .events
                .push_back(SessionEvent::IdleTimeout { item_id: e.item_id }),
            ServerEvent::TranscriptionCompleted(e) => {
                self.events.push_back(SessionEvent::CallerTranscript {
                    item_id: e.item_id,
                    text: e.transcript,
                })
            }
            ServerEvent::TranscriptionFailed(e) => {
                self.events.push_back(SessionEvent::CallerTranscriptFailed {
                    item_id: e.item_id,
                    message: e.error.message,
                })
            }
            ServerEvent::ItemTruncated(e) => self.events.push_back(SessionEvent::ItemTruncated {
                item_id: e.item_id,
                content_index: e.content_index,
                audio_end_ms: e.audio_end_ms,
            }),
            ServerEvent::ItemDeleted(e) => self
                .events
                .push_back(SessionEvent::ItemDeleted { item_id: e.item_id }),
            ServerEvent::ResponseCreated(e) => self.handle_response_created(e.response),
            ServerEvent::ResponseDone(e) => self.handle_response_done(e.response),
            ServerEvent::OutputItemAdded(e) => {
                if let Some(id) = &e.item.id {
                    self.announce(id);
                }
                if e.item.is_function_call()
                    && let Some(call_id) = e.item.call_id.clone()
                    && let Some(pending) = self.pending_call(call_id, e.response_id)
                    && e.item.name.is_some()
                {
                    pending.name = e.item.name;
                }
            }
            ServerEvent::OutputItemDone(e) => {
                self.handle_function_call_item(&e.response_id, &e.item)
            }
            ServerEvent::OutputAudioDelta(e) => self.handle_audio_delta(e),
            ServerEvent::OutputAudioDone(e) => self.events.push_back(SessionEvent::AudioDone {
                response_id: e.response_id,
                item_id: e.item_id,
                content_index: e.content_index,
            }),
            ServerEvent::OutputAudioTranscriptDone(e) => {
                self.events.push_back(SessionEvent::AssistantTranscript {
                    response_id: e.at.response_id,
                    item_id: e.at.item_id,
                    text: e.transcript,
                })
            }
            ServerEvent::FunctionCallArgumentsDelta(e) => self.handle_arguments_delta(e),
            ServerEvent::FunctionCallArgumentsDone(e) => self.handle_arguments_done(e),
            ServerEvent::RateLimitsUpdated(e) => {
                self.rate_limits = e.rate_limits;
                self.events
                    .push_back(SessionEvent::RateLimits(self.rate_limits.clone()));
            }
            ServerEvent::Unknown { type_name } => {
                self.stats.unknown_events += 1;
                tracing::debug!(%type_name, "ignoring unknown realtime event");
            }
            ServerEvent::ItemAdded(e) | ServerEvent::ItemDone(e) => {
                if let Some(id) = &e.item.id
                    && e.item.role.as_deref() != Some("user")
                {
                    self.announce(id);
                }
            }
            // Known, and nothing to do: the bridge learns what it needs from other events.
            ServerEvent::ConversationCreated
            | ServerEvent::InputAudioCommitted(_)
            | ServerEvent::InputAudioCleared
            | ServerEvent::TranscriptionDelta(_)
            | ServerEvent::ContentPartAdded(_)
            | ServerEvent::ContentPartDone(_)
            | ServerEvent::OutputAudioTranscriptDelta(_)
            | ServerEvent::OutputTextDelta(_)
            | ServerEvent::OutputTextDone(_) => {}
        }
    }

    fn handle_session_created(&mut self, session: wire::SessionInfo) {
        if self.state != State::AwaitingCreated {
            tracing::debug!("ignoring a repeated session.created");
            return;
        }
        self.session_id = session.id;
        self.expires_at = session.expires_at;
        let update_id = self.send(ClientEvent::SessionUpdate {
            session: self.session.clone(),
        });
        self.state = State::AwaitingUpdated { update_id };
    }

    fn handle_session_updated(&mut self, session: wire::SessionInfo) {
        if !matches!(self.state, State::AwaitingUpdated { .. }) {
            // Before our update it is not our config; after Ready it changes nothing we track.
            return;
        }
        if session.id.is_some() {
            self.session_id = session.id;
        }
        if session.expires_at.is_some() {
            self.expires_at = session.expires_at;
        }
        self.state = State::Ready;
        tracing::debug!(session_id = ?self.session_id, "realtime session ready");
        self.events.push_back(SessionEvent::Ready {
            session_id: self.session_id.clone(),
            expires_at: self.expires_at,
        });
    }

    fn handle_error(&mut self, now: Instant, error: wire::ErrorDetail) {
        self.stats.errors += 1;
        let client_event_id = error.event_id.map(EventId::new);
        let caused_by = client_event_id.as_ref().and_then(|id| {
            self.recent_sent
                .iter()
                .rev()
                .find(|(sent, _)| sent == id)
                .map(|(_, kind)| *kind)
        });
        let code = error.code.as_deref().unwrap_or_default();
        if self.state != State::Ready {
            if is_fatal_code(error.kind.as_deref(), code) {
                tracing::warn!(code, message = %error.message,
                    "realtime service refused the session during setup");
                self.state = State::Ended;
                self.events
                    .push_back(SessionEvent::SetupFailed(SetupFailure::Refused {
                        code: error.code,
                        message: error.message,
                    }));
                return;
            }
            // Our session.update is refused when the error names it, or names nothing while
            // its answer is awaited (the service does not always echo the id).
            let about_update = match (&self.state, client_event_id.as_ref()) {
                (State::AwaitingUpdated { update_id }, Some(id)) => id == update_id,
                (State::AwaitingUpdated { .. }, None) => true,
                _ => false,
            };
            if about_update {
                tracing::warn!(code, param = ?error.param, message = %error.message,
                    "realtime service rejected the session configuration");
                self.state = State::Ended;
                self.events
                    .push_back(SessionEvent::SetupFailed(SetupFailure::ConfigRejected {
                        code: error.code,
                        message: error.message,
                        param: error.param,
                    }));
                return;
            }
            // Anything else (about nothing of ours) does not stop the setup.
            tracing::debug!(code, message = %error.message, "realtime error during setup");
            self.events.push_back(SessionEvent::Error(ServerError {
                fatal: false,
                kind: error.kind,
                code: error.code,
                message: error.message,
                param: error.param,
                client_event_id,
                caused_by,
            }));
            return;
        }
        if code == "session_expired" {
            // The service's session limit, said with an error rather than close 1001.
            tracing::info!(message = %error.message, "realtime session reached its maximum duration");
            self.state = State::Ended;
            self.events.push_back(SessionEvent::Expired);
            return;
        }
        let mut create_dropped = false;
        if code == "conversation_already_has_active_response" {
            self.requeue_refused_create(client_event_id.as_ref());
        } else if let Some(id) = client_event_id.as_ref() {
            create_dropped = self.drop_refused_create(id);
        }
        let fatal = self.is_fatal(now, error.kind.as_deref(), code);
        if fatal {
            tracing::warn!(code, message = %error.message, "fatal realtime error");
            self.state = State::Ended;
        } else {
            tracing::debug!(code, caused_by, message = %error.message, "realtime error");
        }
        self.events.push_back(SessionEvent::Error(ServerError {
            fatal,
            kind: error.kind,
            code: error.code,
            message: error.message,
            param: error.param,
            client_event_id,
            caused_by,
        }));
        if create_dropped {
            self.send_next_create();
        }
    }

    /// Fatal: the key is refused, the session is over, the service refuses our protocol, the
    /// account cannot pay, or `server_error`s keep coming (three within a minute: one is a
    /// blip the service says it recovers from; a stream of them is a broken session).
    /// Everything else (empty commits, late truncates, cancels of nothing, unknown items, rate
    /// limiting, one server error) leaves the session usable.
    fn is_fatal(&mut self, now: Instant, kind: Option<&str>, code: &str) -> bool {
        if is_fatal_code(kind, code) {
            return true;
        }
        if kind == Some("server_error") || code == "server_error" {
            self.server_errors.push_back(now);
            while self
                .server_errors
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > SERVER_ERROR_WINDOW)
            {
                self.server_errors.pop_front();
            }
            return self.server_errors.len() >= SERVER_ERRORS_FATAL;
        }
        false
    }

    fn requeue_refused_create(&mut self, client_event_id: Option<&EventId>) {
        let index = match client_event_id {
            Some(id) => self.sent_creates.iter().position(|(sent, _)| sent == id),
            // Without an id, the refusal can only be about our latest create.
            None if self.create_in_flight.is_some() => self.sent_creates.len().checked_sub(1),
            None => None,
        };
        if let Some((id, create)) = index.and_then(|i| self.sent_creates.remove(i)) {
            tracing::debug!("response.create refused while a response is active; re-queued");
            self.create_answered(&id);
            self.wait_for_response_done = true;
            self.stats.responses_queued += 1;
            self.pending_creates.push_front(create);
        }
    }

    /// A create the service refused for another reason than an active response: it is dropped
    /// (resending would fail the same way) and no longer blocks the queue.
    fn drop_refused_create(&mut self, id: &EventId) -> bool {
        let Some(index) = self.sent_creates.iter().position(|(sent, _)| sent == id) else {
            return false;
        };
        self.sent_creates.remove(index);
        self.create_answered(id);
        tracing::debug!(%id, "response.create refused; dropped");
        true
    }

    /// `id`'s create has had its answer: if it was the one in flight, nothing is in flight now.
    fn create_answered(&mut self, id: &EventId) {
        if self.create_in_flight.as_ref() == Some(id) {
            self.create_in_flight = None;
            self.create_deadline = None;
        }
    }

    /// Arms [`CREATE_TIMEOUT`] for a create sent since the last `handle_*` call.
    fn observe_time(&mut self, now: Instant) {
        self.last_now = self.last_now.max(now);
        if self.create_in_flight.is_some() && self.create_deadline.is_none() {
            self.create_deadline = Some(now + CREATE_TIMEOUT);
        }
    }

    fn create_timed_out(&mut self) {
        let Some(id) = self.create_in_flight.take() else {
            return;
        };
        self.create_deadline = None;
        self.sent_creates.retain(|(sent, _)| *sent != id);
        tracing::warn!(%id, "response.create unanswered; no longer waiting for it");
        self.events.push_back(SessionEvent::Error(ServerError {
            fatal: false,
            kind: None,
            code: Some(CREATE_TIMEOUT_CODE.to_owned()),
            message: format!(
                "no response.created within {} s of response.create",
                CREATE_TIMEOUT.as_secs()
            ),
            param: None,
            client_event_id: Some(id),
            caused_by: Some("response.create"),
        }));
        self.send_next_create();
    }

    fn handle_response_created(&mut self, response: wire::ResponseInfo) {
        // Whether it answers our create or server VAD started it, a response is now active and
        // our create is no longer unanswered (if it was refused, its error re-queues it).
        self.create_in_flight = None;
        self.create_deadline = None;
        self.active_response = Some(response.id.clone());
        self.events.push_back(SessionEvent::ResponseCreated {
            response_id: response.id,
        });
    }

    fn handle_response_done(&mut self, response: wire::ResponseInfo) {
        let status = ResponseStatus::from_wire(response.status.as_deref());
        let cut_short = matches!(
            status,
            ResponseStatus::Cancelled | ResponseStatus::Failed | ResponseStatus::Incomplete
        );
        // A cut-short response's calls may have truncated arguments: none is reported now.
        if !cut_short {
            for item in &response.output {
                self.handle_function_call_item(&response.id, item);
            }
        }
        // Whatever of this response is still in assembly will never be finished.
        self.pending_calls
            .retain(|_, pending| pending.response_id != response.id);
        // The bridge only uses the default conversation, where one response runs at a time: any
        // done (even for a response whose `created` we missed) means none is active now.
        if let Some(active) = self.active_response.take()
            && active != response.id
        {
            tracing::debug!(%active, done = %response.id, "response.done for another response");
        }
        self.wait_for_response_done = false;
        let details = response.status_details.unwrap_or_default();
        let reason = details
            .reason
            .or_else(|| details.error.and_then(|error| error.code));
        self.events.push_back(SessionEvent::ResponseDone {
            response_id: response.id,
            status,
            reason,
        });
        self.send_next_create();
    }

    /// Remembers that the service announced `item_id` (the newest [`ANNOUNCED_ITEMS`]).
    fn announce(&mut self, item_id: &ItemId) {
        if self.announced.contains(item_id) {
            return;
        }
        if self.announced.len() >= ANNOUNCED_ITEMS {
            self.announced.pop_front();
        }
        self.announced.push_back(item_id.clone());
    }

    fn handle_audio_delta(&mut self, delta: wire::OutputAudioDelta) {
        if !self.announced.contains(&delta.at.item_id) {
            self.stats.unknown_item_deltas += 1;
            tracing::debug!(item = %delta.at.item_id, "audio delta for an item never announced: dropped");
            return;
        }
        let audio = match EncodedAudio::new(delta.delta) {
            Ok(audio) => audio,
            Err(error) => {
                self.malformed(format!(
                    "audio delta for {}: bad base64: {error}",
                    delta.at.item_id
                ));
                return;
            }
        };
        let bytes = u64::try_from(audio.len()).unwrap_or(u64::MAX);
        self.stats.output_audio_bytes_received =
            self.stats.output_audio_bytes_received.saturating_add(bytes);
        let key = (delta.at.item_id.clone(), delta.at.content_index);
        match self.ledger.get_mut(&key) {
            Some(entry) => entry.bytes = entry.bytes.saturating_add(bytes),
            None => {
                if self.ledger_order.len() >= LEDGER_ITEMS
                    && let Some(oldest) = self.ledger_order.pop_front()
                {
                    self.ledger.remove(&oldest);
                }
                self.ledger_order.push_back(key.clone());
                self.ledger.insert(
                    key,
                    LedgerEntry {
                        response_id: delta.at.response_id.clone(),
                        bytes,
                    },
                );
            }
        }
        self.events.push_back(SessionEvent::AudioDelta {
            response_id: delta.at.response_id,
            item_id: delta.at.item_id,
            content_index: delta.at.content_index,
            audio,
        });
    }

    fn already_reported(&self, call_id: &CallId) -> bool {
        self.reported_calls.contains(call_id)
    }

    /// The call being assembled under `call_id`, added if new. `None` when the call was
    /// already reported (or dropped), or when [`PENDING_CALLS`] are in assembly already: the
    /// new call is then dropped (once, with a [`SessionEvent::Malformed`]).
    fn pending_call(
        &mut self,
        call_id: CallId,
        response_id: ResponseId,
    ) -> Option<&mut PendingCall> {
        if self.already_reported(&call_id) {
            return None;
        }
        if self.pending_calls.len() >= PENDING_CALLS && !self.pending_calls.contains_key(&call_id) {
            self.drop_call(call_id, "too many tool calls in assembly");
            return None;
        }
        Some(
            self.pending_calls
                .entry(call_id)
                .or_insert_with(|| PendingCall::new(response_id)),
        )
    }

    /// Forgets a call for good: later events about it are ignored.
    fn drop_call(&mut self, call_id: CallId, why: &str) {
        self.pending_calls.remove(&call_id);
        self.remember_reported(call_id.clone());
        self.malformed(format!("function call {call_id} dropped: {why}"));
    }

    fn handle_arguments_delta(&mut self, delta: wire::FunctionCallArgumentsDelta) {
        let call_id = delta.call_id.clone();
        let Some(pending) = self.pending_call(delta.call_id, delta.response_id) else {
            return;
        };
        if pending.arguments.len().saturating_add(delta.delta.len()) > MAX_CALL_ARGUMENTS {
            self.drop_call(call_id, "arguments longer than 64 KiB");
            return;
        }
        pending.arguments.push_str(&delta.delta);
    }

    /// `response.function_call_arguments.done`: the arguments are final.
    fn handle_arguments_done(&mut self, done: wire::FunctionCallArgumentsDone) {
        self.settle_call(
            done.call_id,
            done.response_id,
            done.name,
            done.arguments,
            CallSource::ArgumentsDone,
        );
    }

    /// `response.output_item.done`, or an item of `response.done`: a function call ends.
    fn handle_function_call_item(&mut self, response_id: &ResponseId, item: &Item) {
        let Some(call_id) = item.call_id.as_ref().filter(|_| item.is_function_call()) else {
            return;
        };
        let completed = item.status.as_deref() == Some("completed");
        self.settle_call(
            call_id.clone(),
            response_id.clone(),
            item.name.clone(),
            item.arguments.clone(),
            if completed {
                CallSource::ItemCompleted
            } else {
                CallSource::ItemNotCompleted
            },
        );
    }

    /// The one path by which a tool call is reported: merges what `source` says about the call
    /// with what was assembled, and reports it once its arguments are final (arguments.done,
    /// or an item `completed`) and its name is known. A call whose item ends otherwise (a
    /// barge-in cancelled the response: `incomplete`, with truncated arguments) is dropped.
    fn settle_call(
        &mut self,
        call_id: CallId,
        response_id: ResponseId,
        name: Option<String>,
        arguments: Option<String>,
        source: CallSource,
    ) {
        if self.already_reported(&call_id) {
            return;
        }
        let mut pending = self
            .pending_calls
            .remove(&call_id)
            .unwrap_or_else(|| PendingCall::new(response_id));
        if name.is_some() {
            pending.name = name;
        }
        match source {
            CallSource::ArgumentsDone | CallSource::ItemCompleted => {
                if let Some(arguments) = arguments {
                    pending.arguments = arguments;
                }
                pending.arguments_done = true;
            }
            CallSource::ItemNotCompleted if pending.arguments_done => {}
            CallSource::ItemNotCompleted => {
                tracing::debug!(%call_id, "dropping a tool call whose item did not complete");
                return;
            }
        }
        if pending.arguments.len() > MAX_CALL_ARGUMENTS {
            self.drop_call(call_id, "arguments longer than 64 KiB");
            return;
        }
        match pending.name.take() {
            Some(name) => self.report_tool_call(call_id, name, pending.arguments),
            // The preview names the function only in the output item: wait for it.
            None if source == CallSource::ArgumentsDone => {
                let response_id = pending.response_id.clone();
                if let Some(slot) = self.pending_call(call_id, response_id) {
                    *slot = pending;
                }
            }
            None => {
                self.remember_reported(call_id.clone());
                self.malformed(format!("function call {call_id} has no name"));
            }
        }
    }

    fn report_tool_call(&mut self, call_id: CallId, name: String, arguments: String) {
        self.remember_reported(call_id.clone());
        self.events.push_back(SessionEvent::ToolCall {
            call_id,
            name,
            arguments,
        });
    }

    fn remember_reported(&mut self, call_id: CallId) {
        if self.reported_calls.len() >= REPORTED_CALLS {
            self.reported_calls.pop_front();
        }
        self.reported_calls.push_back(call_id);
    }

    // ---- commands ---------------------------------------------------------------------------

    fn ensure_ready(&self) -> Result<(), Error> {
        match self.state {
            State::Ready => Ok(()),
            State::Ended => Err(Error::Ended),
            State::AwaitingCreated | State::AwaitingUpdated { .. } => Err(Error::NotReady),
        }
    }

    /// Caller audio, in the profile's wire format. Before the session is ready (or after it
    /// ended) the audio is dropped and counted: the service would misread it.
    pub fn append_audio(&mut self, audio: &[u8]) {
        let bytes = u64::try_from(audio.len()).unwrap_or(u64::MAX);
        if self.ensure_ready().is_err() {
            self.stats.input_audio_bytes_dropped =
                self.stats.input_audio_bytes_dropped.saturating_add(bytes);
            return;
        }
        for chunk in audio.chunks(MAX_APPEND_BYTES) {
            self.send(ClientEvent::InputAudioAppend {
                audio: BASE64.encode(chunk),
            });
        }
        self.stats.input_audio_bytes_sent = self.stats.input_audio_bytes_sent.saturating_add(bytes);
    }

    /// Ends the caller's turn by hand (no turn detection). Does not create a response.
    pub fn commit_audio(&mut self) -> Result<(), Error> {
        self.ensure_ready()?;
        self.send(ClientEvent::InputAudioCommit);
        Ok(())
    }

    pub fn clear_audio(&mut self) -> Result<(), Error> {
        self.ensure_ready()?;
        self.send(ClientEvent::InputAudioClear);
        Ok(())
    }

    /// Asks the model to speak, optionally with instructions for this response only (a
    /// greeting). Sent at once when no response is active, else after the next
    /// `response.done`.
    pub fn create_response(&mut self, instructions: Option<&str>) -> Result<(), Error> {
        self.ensure_ready()?;
        self.queue_create(PendingCreate {
            instructions: instructions.map(str::to_owned),
            after_tool_output: false,
        });
        Ok(())
    }

    /// Cancels `response_id`, or with `None` whatever response is in progress. Naming the
    /// response keeps a late cancel from killing a newer one. The service answers
    /// `response_cancel_not_active` if there is nothing (or not that) to cancel; that error is
    /// harmless.
    pub fn cancel_response(&mut self, response_id: Option<&ResponseId>) -> Result<(), Error> {
        self.ensure_ready()?;
        self.send(ClientEvent::ResponseCancel {
            response_id: response_id.cloned(),
        });
        Ok(())
    }

    /// Cuts an assistant item's audio at `audio_end_ms` (what the caller heard). The value is
    /// clamped to the audio received for the item, because the service rejects more. An item
    /// with no audio in the ledger is [`Error::UnknownItem`] and nothing is sent (the service
    /// would refuse it; an item never played is removed with [`Session::delete_item`]).
    pub fn truncate(
        &mut self,
        item_id: &ItemId,
        content_index: u32,
        audio_end_ms: u64,
    ) -> Result<(), Error> {
        self.ensure_ready()?;
        let Some(received) = self.received_ms(item_id, content_index) else {
            return Err(Error::UnknownItem {
                item_id: item_id.clone(),
                content_index,
            });
        };
        let audio_end_ms = audio_end_ms.min(received);
        self.send(ClientEvent::ItemTruncate {
            item_id: item_id.clone(),
            content_index,
            audio_end_ms,
        });
        Ok(())
    }

    pub fn delete_item(&mut self, item_id: &ItemId) -> Result<(), Error> {
        self.ensure_ready()?;
        self.send(ClientEvent::ItemDelete {
            item_id: item_id.clone(),
        });
        Ok(())
    }

    /// Adds a user text message to the conversation (no response is created).
    pub fn add_user_text(&mut self, text: &str) -> Result<(), Error> {
        self.ensure_ready()?;
        self.send(ClientEvent::ItemCreate {
            item: NewItem::user_text(text),
        });
        Ok(())
    }

    /// Answers a [`SessionEvent::ToolCall`] and asks the model to speak the result (now, or
    /// after the active response; several outputs waiting together share one response).
    pub fn submit_tool_output(&mut self, call_id: &CallId, output: String) -> Result<(), Error> {
        self.ensure_ready()?;
        self.send(ClientEvent::ItemCreate {
            item: NewItem::FunctionCallOutput {
                call_id: call_id.clone(),
                output,
            },
        });
        let already_waiting = self.pending_creates.iter().any(|c| c.after_tool_output);
        if !already_waiting {
            self.queue_create(PendingCreate {
                instructions: None,
                after_tool_output: true,
            });
        }
        Ok(())
    }

    fn queue_create(&mut self, create: PendingCreate) {
        if self.can_send_create() {
            self.send_create(create);
        } else {
            self.stats.responses_queued += 1;
            self.pending_creates.push_back(create);
        }
    }

    fn can_send_create(&self) -> bool {
        self.state == State::Ready
            && self.active_response.is_none()
            && self.create_in_flight.is_none()
            && !self.wait_for_response_done
    }

    fn send_next_create(&mut self) {
        if self.can_send_create()
            && let Some(create) = self.pending_creates.pop_front()
        {
            self.send_create(create);
        }
    }

    fn send_create(&mut self, create: PendingCreate) {
        let id = self.send(ClientEvent::ResponseCreate {
            response: create
                .instructions
                .clone()
                .map(|instructions| ResponseParams { instructions }),
        });
        self.create_in_flight = Some(id.clone());
        self.create_deadline = None;
        if self.sent_creates.len() >= RECENT_EVENTS {
            self.sent_creates.pop_front();
        }
        self.sent_creates.push_back((id, create));
    }

    /// Queues `event` for sending under a fresh `event_id` and remembers its type (except for
    /// audio appends).
    fn send(&mut self, event: ClientEvent) -> EventId {
        self.next_event_number += 1;
        let id = EventId::new(format!("evt_{}", self.next_event_number));
        match serde_json::to_string(&Envelope {
            event_id: &id,
            event: &event,
        }) {
            Ok(text) => {
                self.transmits.push_back(text);
                self.stats.events_sent += 1;
            }
            // Unreachable with these types (string keys only), but never worth a panic.
            Err(error) => {
                tracing::error!(%error, kind = event.kind(), "cannot encode client event")
            }
        }
        // Appends go out 50 times a second and would flush everything else out; the service
        // does not answer a good one, and a bad one is named by no other event anyway.
        if !matches!(event, ClientEvent::InputAudioAppend { .. }) {
            if self.recent_sent.len() >= RECENT_EVENTS {
                self.recent_sent.pop_front();
            }
            self.recent_sent.push_back((id.clone(), event.kind()));
        }
        id
    }
}

/// Errors that end a session whenever they come: the key is refused, the session is over, the
/// service refuses our protocol, or the account cannot pay.
fn is_fatal_code(kind: Option<&str>, code: &str) -> bool {
    matches!(
        code,
        "invalid_api_key" | "session_expired" | "beta_api_shape_disabled" | "insufficient_quota"
    ) || kind == Some("authentication_error")
}
