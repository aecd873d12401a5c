//! The Realtime API client, sans-IO: everything the bridge says to and hears from the model,
//! without a socket, a task or a clock.
//!
//! ## What lives here
//!
//! - [`Dialect`]: which of the three wire protocols an upstream speaks. **OpenAI GA** and
//!   **Azure GA** share one event set and one nested session shape and differ only in URL and
//!   authentication; the **Azure preview** uses the older flat session fields and the old event
//!   names (`response.audio.delta`). The OpenAI beta is shut down and not supported.
//! - [`connect`]: the URL and the authentication header of each dialect ([`connect_request`],
//!   [`fake_url`]). The key is only ever held in a redacted [`AuthValue`].
//! - [`render`]: a profile rendered to each dialect's `session.update` ([`session_update`]),
//!   pinned by golden tests.
//! - [`client_event`] and [`server_event`]: the typed wire events. Server events of every
//!   dialect parse into one internal set; unknown types are kept by name, never an error.
//! - [`Session`]: the core of one connection. It runs the setup handshake (`session.created`
//!   -> our `session.update` -> `session.updated` -> [`SessionEvent::Ready`]) under a setup
//!   deadline; sequences `response.create` so the service never sees one while a response is
//!   active; assembles tool calls; keeps the **output-audio ledger** (bytes, hence
//!   milliseconds, of audio received per item and content part, which bounds any later
//!   `conversation.item.truncate`); classifies server errors as fatal or not and names the
//!   client event each one refers to.
//!
//! ## How the shell drives a [`Session`]
//!
//! The WebSocket shell connects to [`connect_request`]'s target, creates the session with the
//! current time, then loops: every text frame goes to [`Session::handle_text`], a close to
//! [`Session::handle_closed`], an expired [`Session::poll_timeout`] to
//! [`Session::handle_timeout`], and the `Call` issues commands ([`Session::append_audio`],
//! [`Session::truncate`], ...). After each of those calls the shell drains
//! [`Session::poll_transmit`] (text frames to send) and [`Session::poll_event`] (what happened)
//! until both return `None`. Time only enters as the `now` argument, so tests run the whole
//! protocol with simulated time.

pub mod client_event;
pub mod connect;
pub mod ids;
pub mod render;
pub mod server_event;
mod session;

#[cfg(test)]
mod tests;

pub use connect::{AuthValue, ConnectTarget, connect_request, fake_url};
pub use ids::{CallId, EventId, ItemId, ResponseId};
pub use render::session_update;
pub use server_event::{RateLimit, ServerEvent};
pub use session::{
    AUDIO_CHUNK, CREATE_TIMEOUT, CREATE_TIMEOUT_CODE, DEFAULT_SETUP_TIMEOUT, EncodedAudio,
    ResponseStatus, ServerError, Session, SessionEvent, SessionStats, SetupFailure,
};

use crate::config::UpstreamConfig;

/// The wire protocol an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `wss://api.openai.com/v1/realtime?model=M`, `Authorization: Bearer`.
    OpenAiGa,
    /// `{endpoint}/openai/v1/realtime?model=DEPLOYMENT`, `api-key`; events and session as OpenAI GA.
    AzureGa,
    /// `{endpoint}/openai/realtime?api-version=V&deployment=D`, `api-key`; flat session, beta
    /// event names.
    AzurePreview,
}

impl Dialect {
    /// The dialect of a configured upstream. The fake server speaks OpenAI GA.
    pub fn for_upstream(upstream: &UpstreamConfig) -> Dialect {
        match upstream {
            UpstreamConfig::Openai(_) | UpstreamConfig::Fake(_) => Self::OpenAiGa,
            UpstreamConfig::Azure(_) => Self::AzureGa,
            UpstreamConfig::AzurePreview(_) => Self::AzurePreview,
        }
    }

    /// Whether the session and event shapes are the GA ones.
    pub fn is_ga(self) -> bool {
        matches!(self, Self::OpenAiGa | Self::AzureGa)
    }
}

/// What can go wrong in this module: misuse of a [`Session`], an upstream that cannot be
/// connected to as configured, or a server frame that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the realtime session is not ready yet (session.updated has not arrived)")]
    NotReady,
    #[error("the realtime session has ended")]
    Ended,
    /// A truncate of an item (or content part) no audio was received for: the service would
    /// refuse it. An item the caller never heard is removed with `delete_item` instead.
    #[error("no audio was received for item {item_id} content part {content_index}")]
    UnknownItem { item_id: ItemId, content_index: u32 },
    #[error("the {kind} upstream needs an API key")]
    MissingApiKey { kind: &'static str },
    #[error("the fake upstream has no fixed address: build its URL with fake_url")]
    FakeUpstream,
    #[error("the upstream endpoint is not a valid URL")]
    BadEndpoint,
    #[error("malformed server event: {0}")]
    Malformed(String),
}
