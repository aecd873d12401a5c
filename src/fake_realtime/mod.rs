//! A protocol-faithful local stand-in for the OpenAI / Azure OpenAI Realtime WebSocket service.
//!
//! The test suite, the benchmarks and the no-API-key demo talk to this instead of the real
//! service, so it behaves like the real one where the bridge can tell the difference
//! (`/work/shared/realtime-api.md` is the reference): it speaks the GA shape (OpenAI and Azure)
//! and the Azure preview shape, rejects malformed and unknown-field client events with the
//! real error codes, runs an energy-based server VAD over the audio it receives, streams reply
//! audio faster than real time in variable-size deltas, and implements barge-in, truncate,
//! cancel, scripted function calls and session expiry.
//!
//! Layout (sans-IO core, thin shell, as everywhere in this crate):
//!
//! | file | kind | what it holds |
//! |---|---|---|
//! | [`session`] | core | [`FakeSession`]: one connection's state machine, driven by `handle_*`/`poll_*` |
//! | `validate` | core | strict checks of every client event, field by field, from the official SDK types |
//! | `vad` | core | the energy VAD over the input timeline |
//! | `media` | core | audio formats, conversions, reply sources (echo, tone, file), the delta PRNG |
//! | [`shell`] | shell | tokio: accept, route by path, authenticate, pump one [`FakeSession`] per socket |
//!
//! Start one in-process with [`start_loopback`], or as a process with [`run_cli`].

mod media;
pub mod session;
pub mod shell;
mod vad;
mod validate;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use session::{FakeSession, Outgoing};

pub use shell::{FakeHandle, run_cli, serve, start_loopback};

/// Which flavour of the Realtime protocol a connection speaks; chosen by the request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeDialect {
    /// `/v1/realtime?model=M`: GA shape, `Authorization: Bearer`, 60-minute sessions.
    OpenAiGa,
    /// `/openai/v1/realtime?model=DEPLOYMENT`: GA shape, `api-key`, 30-minute sessions.
    AzureGa,
    /// `/openai/realtime?api-version=V&deployment=D`: the flat preview shape, 30-minute sessions.
    AzurePreview,
}

impl FakeDialect {
    /// Whether this dialect uses the GA event names and nested session shape.
    pub fn is_ga(self) -> bool {
        !matches!(self, Self::AzurePreview)
    }

    /// The real service's maximum session length for this dialect (realtime-api.md section 1.6).
    pub fn max_session_duration(self) -> Duration {
        match self {
            Self::OpenAiGa => Duration::from_secs(60 * 60),
            Self::AzureGa | Self::AzurePreview => Duration::from_secs(30 * 60),
        }
    }
}

/// Behaviour of the fake server. Embedded in the configuration as the keys of an
/// `[upstreams.NAME]` table with `kind = "fake"`; every key is optional.
///
/// ```
/// use sip_realtime_bridge::fake_realtime::{FakeOptions, FakeReply};
///
/// let options: FakeOptions = serde_json::from_value(serde_json::json!({
///     "reply": { "kind": "tone", "frequency_hz": 440, "duration_ms": 800 },
///     "speed": 8.0,
///     "session_max_duration": "5m",
/// })).expect("valid");
/// assert!(matches!(options.reply, FakeReply::Tone { frequency_hz: 440, .. }));
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FakeOptions {
    /// What the assistant "says": the caller's last turn (`echo`, the default), a tone, or a file.
    /// A table (`{ kind = "tone", frequency_hz = 440 }`), or the bare kind `"echo"` / `"tone"`.
    #[serde(deserialize_with = "reply_table_or_kind")]
    pub reply: FakeReply,
    /// Text streamed as transcript deltas alongside each audio reply. Default: none (the
    /// transcript events are then sent with an empty transcript).
    pub transcript: Option<String>,
    /// How many times faster than real time reply audio is streamed. Default 4.0; the real
    /// service is "faster than real time" by an undocumented factor.
    pub speed: f64,
    /// Smallest reply delta, in ms of audio. Default 40.
    pub delta_ms_min: u32,
    /// Largest reply delta, in ms of audio. Default 240. Sizes in between are drawn by a
    /// deterministic PRNG, in bytes, so they are not multiples of a 20 ms frame.
    pub delta_ms_max: u32,
    /// Seed of the delta-size PRNG; every connection starts from it, so runs repeat exactly.
    pub seed: u64,
    /// Barge-in latency: after a `speech_started` that cancels the response
    /// (`interrupt_response`), keep streaming this many ms of the response's audio deltas
    /// before its `response.done` (`cancelled`, `turn_detected`), as the real service's
    /// in-flight audio still arrives after the event. Default 0 (the response ends at once).
    pub late_deltas_ms: u32,
    /// When the server closes the socket (1001, "Your session hit the maximum duration of N
    /// minutes."). Default: the real service's limit, 60 minutes for OpenAI and 30 for Azure.
    #[serde(with = "humantime_serde")]
    pub session_max_duration: Option<Duration>,
    /// Scripted tool calls: on the caller's Nth turn the response is this function call
    /// instead of audio. Default: none.
    pub tool_script: Vec<ToolStep>,
    /// Append every event of every connection to this JSONL file, both ways, one line each:
    /// `{"dir": "in"|"out", "t_ms": <ms since the connection started>, "unix_us": <wall clock,
    /// microseconds since the Unix epoch>, "conn": <connection number, from 1>, "event": <the
    /// event>}`. "in" lines are client events, stamped when read; "out" lines are the fake's
    /// events, stamped as they are handed to the socket (`unix_us` is for comparison with
    /// packet captures and other processes' clocks). A close frame the fake sends is an "out"
    /// line with `"close": {"code": .., "reason": ..}` instead of `"event"`; the client's close
    /// frame is an "in" line of the same shape (`code` null when the connection ended without
    /// one). Unless
    /// `record_audio`, the `audio` of `input_audio_buffer.append` and the `delta` of audio
    /// deltas are recorded as `"<N bytes base64>"` (N the base64 text's length) to keep files
    /// small; text that is not JSON is recorded as a string. Lines of one connection are in
    /// the order they crossed the socket. Written by a task of its own, never on a
    /// connection's. Default: off.
    pub record: Option<PathBuf>,
    /// With `record`: keep the audio of appends and audio deltas in full (base64, as on the
    /// wire), so tests can compare it byte for byte. Default: false.
    pub record_audio: bool,
    /// A misbehaviour to act out, for tests of the bridge's failure paths:
    /// `{ kind = "stop_reading" | "error_every_event" | "refuse_session" | "flood_audio",
    /// after = "5s" }` (`after`: from the connection's start; default at once). See
    /// [`FaultKind`]. Default: none (the fake behaves).
    pub fault: Option<FakeFault>,
    /// Key a client must present (`Authorization: Bearer` on the OpenAI path, `api-key` on
    /// Azure paths). Not a configuration key: set by tests that exercise authentication.
    #[serde(skip)]
    pub api_key: Option<String>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        Self {
            reply: FakeReply::Echo,
            transcript: None,
            speed: 4.0,
            delta_ms_min: 40,
            delta_ms_max: 240,
            seed: 0x5EED,
            late_deltas_ms: 0,
            session_max_duration: None,
            tool_script: Vec::new(),
            record: None,
            record_audio: false,
            fault: None,
            api_key: None,
        }
    }
}

// Hand-written so the test key never reaches a log (the crate redacts secrets in `Debug`).
impl fmt::Debug for FakeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeOptions")
            .field("reply", &self.reply)
            .field("transcript", &self.transcript)
            .field("speed", &self.speed)
            .field("delta_ms_min", &self.delta_ms_min)
            .field("delta_ms_max", &self.delta_ms_max)
            .field("seed", &self.seed)
            .field("late_deltas_ms", &self.late_deltas_ms)
            .field("session_max_duration", &self.session_max_duration)
            .field("tool_script", &self.tool_script)
            .field("record", &self.record)
            .field("record_audio", &self.record_audio)
            .field("fault", &self.fault)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl FakeOptions {
    /// Checks the values serde cannot, and loads a `file` reply into memory so sessions never
    /// touch the disk. The shells call this once before accepting connections.
    pub fn prepare(&mut self) -> Result<(), FakeError> {
        if !self.speed.is_finite() || self.speed <= 0.0 {
            return Err(FakeError::Invalid {
                key: "speed",
                problem: format!("must be a positive number, not {}", self.speed),
            });
        }
        if self.delta_ms_min == 0 || self.delta_ms_min > self.delta_ms_max {
            return Err(FakeError::Invalid {
                key: "delta_ms_min",
                problem: format!(
                    "must be at least 1 and at most delta_ms_max ({})",
                    self.delta_ms_max
                ),
            });
        }
        if self.session_max_duration.is_some_and(|d| d.is_zero()) {
            return Err(FakeError::Invalid {
                key: "session_max_duration",
                problem: "must be longer than 0s".to_owned(),
            });
        }
        if let FakeReply::Tone { duration_ms, .. } = self.reply
            && duration_ms > MAX_TONE_MS
        {
            return Err(FakeError::Invalid {
                key: "reply.duration_ms",
                problem: format!("must be at most {MAX_TONE_MS} (10 minutes), not {duration_ms}"),
            });
        }
        if let FakeReply::File { path, pcm } = &mut self.reply
            && pcm.is_none()
        {
            *pcm = Some(Arc::new(media::load_reply_file(path)?));
        }
        Ok(())
    }
}

/// Longest tone reply: every response renders it in memory.
const MAX_TONE_MS: u32 = 10 * 60 * 1000;

/// What an audio reply contains.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum FakeReply {
    /// Replay the caller's last turn (speech start with prefix padding to speech stop). With
    /// no turn yet (a greeting), a one-second 440 Hz tone.
    #[default]
    Echo,
    /// A sine tone at -15 dBFS.
    Tone {
        /// Pitch in Hz (default 440).
        #[serde(default = "default_tone_hz")]
        frequency_hz: u32,
        /// Length in ms (default 1500).
        #[serde(default = "default_tone_ms")]
        duration_ms: u32,
    },
    /// A file: WAV (any rate, mono or stereo, integer or float samples), or raw by extension:
    /// `.ulaw` / `.alaw` (8 kHz G.711) or `.pcm` (24 kHz s16le).
    File {
        /// Where the file is.
        path: PathBuf,
        /// The file's audio at 24 kHz mono, filled in by [`FakeOptions::prepare`].
        #[serde(skip)]
        pcm: Option<Arc<Vec<i16>>>,
    },
}

/// `reply` as a table, or as the bare name of a kind that needs no other keys: `"echo"` is
/// `{ kind = "echo" }`. Anything else is an error that shows the table form.
fn reply_table_or_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<FakeReply, D::Error> {
    struct Reply;
    impl<'de> serde::de::Visitor<'de> for Reply {
        type Value = FakeReply;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "a reply: \"echo\", { kind = \"tone\", frequency_hz = 440, duration_ms = 1500 } \
                 or { kind = \"file\", path = \"/path/reply.wav\" }",
            )
        }
        fn visit_str<E: serde::de::Error>(self, kind: &str) -> Result<FakeReply, E> {
            match kind {
                "echo" => Ok(FakeReply::Echo),
                "tone" => Ok(FakeReply::Tone {
                    frequency_hz: default_tone_hz(),
                    duration_ms: default_tone_ms(),
                }),
                "file" => Err(E::custom(
                    "a file reply needs its path: reply = { kind = \"file\", path = \"/path/reply.wav\" }",
                )),
                other => Err(E::custom(format!(
                    "unknown reply `{other}`: use \"echo\", \"tone\" or \
                     {{ kind = \"file\", path = \"/path/reply.wav\" }}"
                ))),
            }
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<FakeReply, A::Error> {
            FakeReply::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Reply)
}

fn default_tone_hz() -> u32 {
    440
}

fn default_tone_ms() -> u32 {
    1500
}

/// A misbehaviour of the fake server (see [`FakeOptions::fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeFault {
    /// What goes wrong.
    pub kind: FaultKind,
    /// When, from the connection's start. Default: at once.
    #[serde(default, with = "humantime_serde")]
    pub after: Duration,
}

/// What goes wrong with a faulty fake server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// Stop reading the socket (the client's frames and pings pile up unread, so no pong is
    /// ever sent) while still sending: a `rate_limits.updated` every second, and whatever
    /// reply was streaming.
    StopReading,
    /// Answer every client event with a `server_error` `error` (the event itself is not
    /// acted on), as a service in trouble does.
    ErrorEveryEvent,
    /// Refuse the `session.update` with an `invalid_request_error` (as for a voice the
    /// service does not have) and keep the socket open, as the real service does.
    RefuseSession,
    /// Start a response whose audio never ends, one second of audio per delta, sent as fast
    /// as the socket takes it; cancels and truncates do not stop it.
    FloodAudio,
}

/// One scripted tool call.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolStep {
    /// The caller turn (1 = the first committed user audio item) that triggers the call.
    pub turn: u32,
    /// The function name the "model" calls.
    pub name: String,
    /// The arguments; sent JSON-encoded as the `arguments` string (a JSON string is sent as is).
    #[serde(default)]
    pub arguments: serde_json::Value,
}

/// What can go wrong setting up or running the fake server (never anything a client sends:
/// client mistakes become `error` events on the socket, as with the real service).
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// An option has a value the fake cannot use.
    #[error("fake realtime option {key} {problem}")]
    Invalid {
        /// The option's key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The reply file could not be read.
    #[error("cannot read reply file {path}: {source}")]
    ReplyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The reply file is not a WAV file hound can read.
    #[error("cannot decode WAV reply file {path}: {source}")]
    ReplyWav {
        /// The file.
        path: PathBuf,
        /// Why.
        source: hound::Error,
    },
    /// The listener or a socket failed.
    #[error("fake realtime server I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<FakeError> for std::io::Error {
    fn from(error: FakeError) -> Self {
        match error {
            FakeError::Io(inner) => inner,
            other => std::io::Error::new(std::io::ErrorKind::InvalidInput, other),
        }
    }
}
