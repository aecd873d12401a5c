//! One call's cores wired together.
//!
//! A call is a SIP dialog, an RTP stream and a Realtime session. Each of those has its own
//! sans-IO core elsewhere ([`crate::sip`], [`crate::rtp`], [`crate::realtime`]); this module
//! holds the cores that join them, equally sans-IO: they take `now` as an argument, are fed
//! with `handle_*` and drained with `poll_*`, and never touch a socket, a task or the clock.
//!
//! - [`bridge`]: the audio path of one call ([`AudioBridge`]): caller RTP frames to
//!   `input_audio_buffer.append`, model audio deltas to paced 20 ms RTP frames, and barge-in
//!   (design.md section 3): when the caller talks over the model, playback stops at once and
//!   the model is told exactly how much of each item the caller heard.

//! - [`lifecycle`]: the life of one call ([`Call`]): upstream connect before the answer,
//!   200 only once the session is ready, 503 on failure, greeting, digits, who ends the call
//!   and why (BYE with a Reason), and the one record every call leaves.
//! - [`tools`]: what a function call from the model does (a webhook POST, hanging up, a
//!   transfer, or a rejection the model can explain), what the model hears back, and what a
//!   keypad key does by itself.

pub mod bridge;
pub mod lifecycle;
pub mod tools;

pub use bridge::{
    AudioBridge, BargeIn, BridgeError, BridgeEvent, BridgeStats, EndReason, Truncated,
};
pub use lifecycle::{
    Call, CallAction, CallCodec, CallEnd, CallInfo, CallRecord, LatencyHistogram, TransferOutcome,
    UPSTREAM_RETRY_AFTER_SECS,
};
