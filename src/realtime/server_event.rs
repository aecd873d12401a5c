//! Server events: what the service sends, parsed into one internal set for every dialect.
//!
//! Parsing is two-step: read the frame as JSON, look at `type`, then decode the payload of the
//! variants the bridge understands. That lets one variant answer to both its GA and its
//! preview name (`response.output_audio.delta` / `response.audio.delta`, see realtime-api.md
//! section 7.1), and lets an unknown `type` keep its name for the logs instead of failing (the
//! session counts those events). Payload structs list only the fields the bridge reads: extra
//! fields are tolerated (ignored, not counted) everywhere, because the service keeps adding
//! them. Reading is lenient where the service is loose:
//! `null` in a field with a default reads as the default, and counts and times that arrive as
//! floats (`expires_at`, rate-limit `limit` / `remaining`) are read as whole numbers.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::Error;
use super::ids::{CallId, ItemId, ResponseId};

/// One server event. Variant names follow the GA protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum ServerEvent {
    SessionCreated(SessionPayload),
    SessionUpdated(SessionPayload),
    ConversationCreated,
    Error(ErrorPayload),
    SpeechStarted(SpeechStarted),
    SpeechStopped(SpeechStopped),
    InputAudioCommitted(InputAudioCommitted),
    InputAudioCleared,
    InputAudioTimeoutTriggered(InputAudioTimeoutTriggered),
    /// GA `conversation.item.added`, and the preview's `conversation.item.created`.
    ItemAdded(ItemPayload),
    /// GA only: the item is final.
    ItemDone(ItemPayload),
    TranscriptionDelta(TranscriptionDelta),
    TranscriptionCompleted(TranscriptionCompleted),
    TranscriptionFailed(TranscriptionFailed),
    ItemTruncated(ItemTruncated),
    ItemDeleted(ItemDeleted),
    ResponseCreated(ResponsePayload),
    ResponseDone(ResponsePayload),
    OutputItemAdded(OutputItem),
    OutputItemDone(OutputItem),
    ContentPartAdded(ContentPartPayload),
    ContentPartDone(ContentPartPayload),
    /// GA `response.output_audio.delta`, preview `response.audio.delta`.
    OutputAudioDelta(OutputAudioDelta),
    /// GA `response.output_audio.done`, preview `response.audio.done`.
    OutputAudioDone(ContentRef),
    /// GA `response.output_audio_transcript.delta`, preview `response.audio_transcript.delta`.
    OutputAudioTranscriptDelta(TextDelta),
    /// GA `response.output_audio_transcript.done`, preview `response.audio_transcript.done`.
    OutputAudioTranscriptDone(TranscriptDone),
    /// GA `response.output_text.delta`, preview `response.text.delta`.
    OutputTextDelta(TextDelta),
    /// GA `response.output_text.done`, preview `response.text.done`.
    OutputTextDone(TextDone),
    FunctionCallArgumentsDelta(FunctionCallArgumentsDelta),
    FunctionCallArgumentsDone(FunctionCallArgumentsDone),
    RateLimitsUpdated(RateLimitsPayload),
    /// A `type` this bridge does not know (new features keep adding some: MCP, DTMF, ...).
    Unknown {
        type_name: String,
    },
}

impl ServerEvent {
    /// Parses one WebSocket text frame. A frame that is not a JSON object with a string
    /// `type`, or whose known `type` lacks a field the bridge needs, is [`Error::Malformed`].
    pub fn parse(text: &str) -> Result<Self, Error> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::Malformed(format!("not JSON: {e}")))?;
        let type_name = value
            .get("type")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| Error::Malformed("no string `type`".into()))?
            .to_owned();
        let event = match type_name.as_str() {
            "session.created" => Self::SessionCreated(payload(value, &type_name)?),
            "session.updated" => Self::SessionUpdated(payload(value, &type_name)?),
            "conversation.created" => Self::ConversationCreated,
            "error" => Self::Error(payload(value, &type_name)?),
            "input_audio_buffer.speech_started" => Self::SpeechStarted(payload(value, &type_name)?),
            "input_audio_buffer.speech_stopped" => Self::SpeechStopped(payload(value, &type_name)?),
            "input_audio_buffer.committed" => {
                Self::InputAudioCommitted(payload(value, &type_name)?)
            }
            "input_audio_buffer.cleared" => Self::InputAudioCleared,
            "input_audio_buffer.timeout_triggered" => {
                Self::InputAudioTimeoutTriggered(payload(value, &type_name)?)
            }
            "conversation.item.added" | "conversation.item.created" => {
                Self::ItemAdded(payload(value, &type_name)?)
            }
            "conversation.item.done" => Self::ItemDone(payload(value, &type_name)?),
            "conversation.item.input_audio_transcription.delta" => {
                Self::TranscriptionDelta(payload(value, &type_name)?)
            }
            "conversation.item.input_audio_transcription.completed" => {
                Self::TranscriptionCompleted(payload(value, &type_name)?)
            }
            "conversation.item.input_audio_transcription.failed" => {
                Self::TranscriptionFailed(payload(value, &type_name)?)
            }
            "conversation.item.truncated" => Self::ItemTruncated(payload(value, &type_name)?),
            "conversation.item.deleted" => Self::ItemDeleted(payload(value, &type_name)?),
            "response.created" => Self::ResponseCreated(payload(value, &type_name)?),
            "response.done" => Self::ResponseDone(payload(value, &type_name)?),
            "response.output_item.added" => Self::OutputItemAdded(payload(value, &type_name)?),
            "response.output_item.done" => Self::OutputItemDone(payload(value, &type_name)?),
            "response.content_part.added" => Self::ContentPartAdded(payload(value, &type_name)?),
            "response.content_part.done" => Self::ContentPartDone(payload(value, &type_name)?),
            "response.output_audio.delta" | "response.audio.delta" => {
                Self::OutputAudioDelta(payload(value, &type_name)?)
            }
            "response.output_audio.done" | "response.audio.done" => {
                Self::OutputAudioDone(payload(value, &type_name)?)
            }
            "response.output_audio_transcript.delta" | "response.audio_transcript.delta" => {
                Self::OutputAudioTranscriptDelta(payload(value, &type_name)?)
            }
            "response.output_audio_transcript.done" | "response.audio_transcript.done" => {
                Self::OutputAudioTranscriptDone(payload(value, &type_name)?)
            }
            "response.output_text.delta" | "response.text.delta" => {
                Self::OutputTextDelta(payload(value, &type_name)?)
            }
            "response.output_text.done" | "response.text.done" => {
                Self::OutputTextDone(payload(value, &type_name)?)
            }
            "response.function_call_arguments.delta" => {
                Self::FunctionCallArgumentsDelta(payload(value, &type_name)?)
            }
            "response.function_call_arguments.done" => {
                Self::FunctionCallArgumentsDone(payload(value, &type_name)?)
            }
            "rate_limits.updated" => Self::RateLimitsUpdated(payload(value, &type_name)?),
            _ => Self::Unknown { type_name },
        };
        Ok(event)
    }
}

/// `null` reads as the field's default, like an absent field: the service sends `null` for
/// fields it has nothing for (`message`, `delta`, `transcript`, ...).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A count or a Unix time that may arrive as a float (`1000.0`): read as a whole number,
/// rounded down. `null`, a negative number or a non-number reads as `None`.
fn lenient_u64<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                // A saturating conversion: past u64::MAX it reads as u64::MAX.
                .map(|f| f as u64)
        }),
        _ => None,
    })
}

fn payload<T: DeserializeOwned>(value: serde_json::Value, type_name: &str) -> Result<T, Error> {
    serde_json::from_value(value).map_err(|e| Error::Malformed(format!("{type_name}: {e}")))
}

/// `session.created` / `session.updated`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SessionPayload {
    #[serde(default, deserialize_with = "null_as_default")]
    pub session: SessionInfo,
}

/// The parts of the effective session config the bridge reads.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct SessionInfo {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    /// When the service will end the session, in Unix seconds.
    #[serde(default, deserialize_with = "lenient_u64")]
    pub expires_at: Option<u64>,
}

/// `error`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ErrorPayload {
    pub error: ErrorDetail,
}

/// `error.error`, also the `error` of a failed transcription.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ErrorDetail {
    /// `invalid_request_error`, `server_error`, ...
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub message: String,
    /// The offending parameter, for example `session.audio.input.format`.
    #[serde(default)]
    pub param: Option<String>,
    /// The `event_id` of the client event that caused the error, when the server knows it.
    #[serde(default)]
    pub event_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SpeechStarted {
    /// Offset into all audio appended this session, including the prefix padding.
    pub audio_start_ms: u64,
    pub item_id: ItemId,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SpeechStopped {
    pub audio_end_ms: u64,
    pub item_id: ItemId,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct InputAudioCommitted {
    pub item_id: ItemId,
    #[serde(default)]
    pub previous_item_id: Option<ItemId>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct InputAudioTimeoutTriggered {
    #[serde(default)]
    pub audio_start_ms: Option<u64>,
    #[serde(default)]
    pub audio_end_ms: Option<u64>,
    pub item_id: ItemId,
}

/// A conversation item as the server describes it (no audio: the bridge never needs it here).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Item {
    #[serde(default)]
    pub id: Option<ItemId>,
    /// `message`, `function_call`, `function_call_output`, ...
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub kind: String,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub call_id: Option<CallId>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

impl Item {
    pub fn is_function_call(&self) -> bool {
        self.kind == "function_call"
    }
}

/// `conversation.item.added` / `.created` / `.done`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ItemPayload {
    pub item: Item,
    #[serde(default)]
    pub previous_item_id: Option<ItemId>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TranscriptionDelta {
    pub item_id: ItemId,
    #[serde(default)]
    pub content_index: Option<u32>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub delta: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TranscriptionCompleted {
    pub item_id: ItemId,
    #[serde(default)]
    pub content_index: Option<u32>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub transcript: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TranscriptionFailed {
    pub item_id: ItemId,
    #[serde(default)]
    pub content_index: Option<u32>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ItemTruncated {
    pub item_id: ItemId,
    #[serde(default, deserialize_with = "null_as_default")]
    pub content_index: u32,
    pub audio_end_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ItemDeleted {
    pub item_id: ItemId,
}

/// `response.created` / `response.done`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ResponsePayload {
    pub response: ResponseInfo,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ResponseInfo {
    pub id: ResponseId,
    /// `in_progress`, `completed`, `cancelled`, `incomplete`, `failed`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub status_details: Option<StatusDetails>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub output: Vec<Item>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct StatusDetails {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// `turn_detected`, `client_cancelled`, `max_output_tokens`, `content_filter`.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub error: Option<ErrorDetail>,
}

/// `response.output_item.added` / `.done`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct OutputItem {
    pub response_id: ResponseId,
    #[serde(default)]
    pub output_index: Option<u32>,
    pub item: Item,
}

/// `response.content_part.added` / `.done`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ContentPartPayload {
    pub response_id: ResponseId,
    pub item_id: ItemId,
    #[serde(default, deserialize_with = "null_as_default")]
    pub content_index: u32,
    #[serde(default, deserialize_with = "null_as_default")]
    pub part: ContentPart,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ContentPart {
    /// `audio` / `text` per the spec; GA servers are seen sending `output_audio` / `output_text`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub transcript: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
}

/// Which content part of which item of which response an event is about.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ContentRef {
    pub response_id: ResponseId,
    pub item_id: ItemId,
    #[serde(default)]
    pub output_index: Option<u32>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub content_index: u32,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct OutputAudioDelta {
    #[serde(flatten)]
    pub at: ContentRef,
    /// Base64 audio in the session's output format.
    pub delta: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TextDelta {
    #[serde(flatten)]
    pub at: ContentRef,
    #[serde(default, deserialize_with = "null_as_default")]
    pub delta: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TranscriptDone {
    #[serde(flatten)]
    pub at: ContentRef,
    #[serde(default, deserialize_with = "null_as_default")]
    pub transcript: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct TextDone {
    #[serde(flatten)]
    pub at: ContentRef,
    #[serde(default, deserialize_with = "null_as_default")]
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FunctionCallArgumentsDelta {
    pub response_id: ResponseId,
    #[serde(default)]
    pub item_id: Option<ItemId>,
    pub call_id: CallId,
    #[serde(default, deserialize_with = "null_as_default")]
    pub delta: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct FunctionCallArgumentsDone {
    pub response_id: ResponseId,
    #[serde(default)]
    pub item_id: Option<ItemId>,
    pub call_id: CallId,
    #[serde(default)]
    pub arguments: Option<String>,
    /// GA only; the preview names the function only in the output item.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RateLimitsPayload {
    #[serde(default, deserialize_with = "null_as_default")]
    pub rate_limits: Vec<RateLimit>,
}

/// One entry of `rate_limits.updated`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct RateLimit {
    /// `requests` or `tokens`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub limit: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    pub remaining: Option<u64>,
    #[serde(default)]
    pub reset_seconds: Option<f64>,
}
