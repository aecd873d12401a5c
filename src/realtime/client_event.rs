//! Client events: what the bridge sends to the service.
//!
//! Only the events the bridge needs are modelled. Their shapes are the same in the GA and the
//! preview protocol (only `session.update`'s `session` object differs, and that is rendered by
//! [`super::render`]). Every event goes out wrapped in an [`Envelope`] carrying an `event_id`,
//! because that id is the only way to learn which event an `error` refers to.

use serde::Serialize;

use super::ids::{CallId, EventId, ItemId, ResponseId};

/// A client event, without its `event_id`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum ClientEvent {
    #[serde(rename = "session.update")]
    SessionUpdate { session: serde_json::Value },
    #[serde(rename = "input_audio_buffer.append")]
    InputAudioAppend {
        /// Base64 of raw audio in the session's input format.
        audio: String,
    },
    #[serde(rename = "input_audio_buffer.commit")]
    InputAudioCommit,
    #[serde(rename = "input_audio_buffer.clear")]
    InputAudioClear,
    #[serde(rename = "conversation.item.create")]
    ItemCreate { item: NewItem },
    #[serde(rename = "conversation.item.truncate")]
    ItemTruncate {
        item_id: ItemId,
        content_index: u32,
        audio_end_ms: u64,
    },
    #[serde(rename = "conversation.item.delete")]
    ItemDelete { item_id: ItemId },
    #[serde(rename = "response.create")]
    ResponseCreate {
        #[serde(skip_serializing_if = "Option::is_none")]
        response: Option<ResponseParams>,
    },
    /// Without `response_id` the service cancels whatever response is in progress; with it,
    /// only that one (a late cancel cannot hit a newer response).
    #[serde(rename = "response.cancel")]
    ResponseCancel {
        #[serde(skip_serializing_if = "Option::is_none")]
        response_id: Option<ResponseId>,
    },
}

impl ClientEvent {
    /// The wire `type`, kept beside each sent `event_id` so errors can name their cause.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SessionUpdate { .. } => "session.update",
            Self::InputAudioAppend { .. } => "input_audio_buffer.append",
            Self::InputAudioCommit => "input_audio_buffer.commit",
            Self::InputAudioClear => "input_audio_buffer.clear",
            Self::ItemCreate { .. } => "conversation.item.create",
            Self::ItemTruncate { .. } => "conversation.item.truncate",
            Self::ItemDelete { .. } => "conversation.item.delete",
            Self::ResponseCreate { .. } => "response.create",
            Self::ResponseCancel { .. } => "response.cancel",
        }
    }
}

/// An item the bridge adds to the conversation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NewItem {
    /// A user message: text the caller did not speak (DTMF digits, a note from the bridge).
    Message {
        role: &'static str,
        content: Vec<InputText>,
    },
    /// The result of a tool call; `output` is a string (free text or JSON), as the API wants.
    FunctionCallOutput { call_id: CallId, output: String },
}

impl NewItem {
    pub fn user_text(text: &str) -> Self {
        Self::Message {
            role: "user",
            content: vec![InputText {
                kind: "input_text",
                text: text.to_owned(),
            }],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InputText {
    #[serde(rename = "type")]
    kind: &'static str,
    text: String,
}

/// Per-response overrides; the bridge only ever overrides the instructions (a greeting).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResponseParams {
    pub instructions: String,
}

/// A client event with its id, as it goes on the wire.
#[derive(Clone, Debug, Serialize)]
pub struct Envelope<'a> {
    pub event_id: &'a EventId,
    #[serde(flatten)]
    pub event: &'a ClientEvent,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(event: &ClientEvent) -> serde_json::Value {
        let id = EventId::new("evt_1");
        serde_json::to_value(Envelope {
            event_id: &id,
            event,
        })
        .unwrap()
    }

    #[test]
    fn client_events_have_the_documented_shapes() {
        assert_eq!(
            wire(&ClientEvent::InputAudioCommit),
            json!({"type": "input_audio_buffer.commit", "event_id": "evt_1"})
        );
        assert_eq!(
            wire(&ClientEvent::ItemTruncate {
                item_id: "item_1".into(),
                content_index: 0,
                audio_end_ms: 1500
            }),
            json!({"type": "conversation.item.truncate", "event_id": "evt_1",
                   "item_id": "item_1", "content_index": 0, "audio_end_ms": 1500})
        );
        assert_eq!(
            wire(&ClientEvent::ItemCreate {
                item: NewItem::user_text("hi")
            }),
            json!({"type": "conversation.item.create", "event_id": "evt_1",
                   "item": {"type": "message", "role": "user",
                            "content": [{"type": "input_text", "text": "hi"}]}})
        );
        assert_eq!(
            wire(&ClientEvent::ResponseCreate { response: None }),
            json!({"type": "response.create", "event_id": "evt_1"})
        );
        assert_eq!(
            wire(&ClientEvent::ResponseCancel { response_id: None }),
            json!({"type": "response.cancel", "event_id": "evt_1"})
        );
        assert_eq!(
            wire(&ClientEvent::ResponseCancel {
                response_id: Some("resp_1".into())
            }),
            json!({"type": "response.cancel", "event_id": "evt_1", "response_id": "resp_1"})
        );
    }
}
