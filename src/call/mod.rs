//! One call, sans-IO: the [`Call`] owns everything of a call and is driven through one way in
//! and one way out, like str0m's `Rtc`:
//!
//! - [`Call::handle_input`]`(now, `[`Input`]`)`: everything a call can see: a datagram on its
//!   RTP or RTCP socket, the WebSocket opened / refused / a text frame / a pong / how much the
//!   writer wrote / closed, an event of its SIP dialog, the daemon draining or stopping, a
//!   webhook's answer, and time passing ([`Input::Timeout`]).
//! - [`Call::poll_output`]` -> Option<`[`Output`]`>`: everything a call can do: send a
//!   datagram, connect / send a frame / ping / close the WebSocket, ask the dialog to ring,
//!   answer, refuse, hang up or transfer, start a webhook, report an event, write its record
//!   ([`Output::Finished`], last), and the time it wants to be woken ([`Output::Timeout`],
//!   which ends a round of polling).
//!
//! After every input the shell polls until [`Output::Timeout`] (str0m's single-mutation
//! rule: one input, then drain); `None` means the call is over and its shell may go. The call
//! never reads the clock (`now` is an argument; the wall clock RTCP needs is derived from one
//! reading given at creation), never draws randomness (the RTP start and RTCP seed come in
//! [`CallSetup`]) and never touches a socket, so a whole call runs on a simulated clock
//! (`tests/scenario.rs`).
//!
//! Inside, the parts pass events, never diffs of counters:
//!
//! | part | file | what it holds |
//! |---|---|---|
//! | the lifecycle | [`lifecycle`] | routing is done; connect while ringing, 200 only once the session is ready, 503 on failure, greeting at the ACK, digits, tools, who ends the call and why, the record |
//! | the upstream link | [`upstream`] | the WebSocket's state, keepalive pings, the stall limit, the writer's backlog |
//! | the media leg | [`media`] | the negotiated terms, the receive path, DTMF, RTCP, direction and where RTP goes |
//! | the audio bridge | `bridge` | caller frames to the model in its format, model audio to paced RTP, the queue limit, barge-in (design.md section 3) |
//! | the timer table | [`timer`] | every deadline of the call, one slot each |
//! | tools | [`tools`] | what a function call from the model does, and what a keypad key does |
//! | the record | [`record`] | why the call ended (and the `Reason` of our BYE), its counters |

mod bridge;
pub mod lifecycle;
pub mod media;
pub mod record;
pub mod timer;
pub mod tools;
pub mod upstream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use bridge::{BargeIn, DEFAULT_MAX_QUEUED_AUDIO, Truncated};
pub use lifecycle::{Call, UPSTREAM_RETRY_AFTER_SECS};
pub use media::{MediaSeeds, Socket};
pub use record::{CallEnd, CallInfo, CallRecord, LatencyHistogram, MediaSummary};
pub use timer::Timer;
pub use tools::WebhookOutcome;

use crate::config::{Config, HeaderName, HeaderValue, ProfileConfig, WebhookUrl};
use crate::realtime::{CallId, Dialect};
use crate::rtp::rtcp::NtpTime;
use crate::sip::dialog::DialogEvent;
use crate::sip::sdp::Codec;

/// What a call is made of when its INVITE is admitted.
#[derive(Clone, Debug)]
pub struct CallSetup {
    /// Who it is between.
    pub info: CallInfo,
    /// The route's profile (its `audio_format` is resolved for `codec` by the call).
    pub profile: ProfileConfig,
    /// The dialect of the profile's upstream.
    pub dialect: Dialect,
    /// The codec the answer will carry (from the offer; our first preference for an
    /// offerless INVITE).
    pub codec: Option<Codec>,
    /// The call's limits.
    pub limits: CallLimits,
    /// Our RTP stream's random start and RTCP's seed.
    pub seeds: MediaSeeds,
    /// RTCP CNAME.
    pub cname: String,
    /// The wall clock at the `now` the call is created at (RTCP's NTP timestamps are
    /// derived from it).
    pub wall_clock: NtpTime,
}

/// The limits a call runs under (from `[limits]` and `[rtp]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// No ready session within this: 503.
    pub answer_timeout: Duration,
    /// Hung up after this.
    pub max_duration: Duration,
    /// A ping unanswered this long ends the call.
    pub upstream_stall_timeout: Duration,
    /// Model audio queued for playout at most.
    pub max_queued_audio: Duration,
    /// No RTP from the caller this long ends the call.
    pub rtp_inactivity: Duration,
}

impl CallLimits {
    /// The limits of `config`.
    pub fn of(config: &Config) -> CallLimits {
        CallLimits {
            answer_timeout: config.limits.answer_timeout,
            max_duration: config.limits.max_call_duration,
            upstream_stall_timeout: config.limits.upstream_stall_timeout,
            max_queued_audio: config.limits.max_queued_audio,
            rtp_inactivity: config.rtp.inactivity_timeout,
        }
    }
}

impl Default for CallLimits {
    fn default() -> Self {
        CallLimits::of(&Config::default())
    }
}

/// Everything a call can be told.
#[derive(Debug)]
pub enum Input<'a> {
    /// Time has passed: whatever is due runs ([`Output::Timeout`] said when).
    Timeout,
    /// A datagram arrived on one of the call's sockets.
    Datagram {
        socket: Socket,
        from: SocketAddr,
        bytes: &'a [u8],
    },
    /// The WebSocket asked for by [`Output::Connect`] is open.
    UpstreamOpened,
    /// It could not be opened.
    UpstreamRefused(UpstreamRefusal),
    /// A text frame from the upstream.
    UpstreamText(&'a str),
    /// A pong from the upstream, with its payload.
    UpstreamPong(&'a [u8]),
    /// The writer has written this many of the frames handed out ([`Output::UpstreamSend`]
    /// and [`Output::UpstreamPing`] together) since the WebSocket opened.
    UpstreamWritten(u64),
    /// The WebSocket closed (a close frame, an error, the connection lost).
    UpstreamClosed { code: Option<u16>, reason: &'a str },
    /// Something happened in the call's SIP dialog.
    Dialog(DialogEvent),
    /// The daemon drains: the call may go on until `until`, then it is hung up.
    Drain { until: Instant },
    /// The call is ended now for `end` (the daemon stops at once).
    Stop(CallEnd),
    /// What a webhook started by [`Output::Webhook`] came to.
    Webhook {
        call_id: CallId,
        outcome: WebhookOutcome,
        timeout: Duration,
    },
}

/// Why the WebSocket could not be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamRefusal {
    /// What happened, for the record (never the key).
    pub detail: String,
    /// The HTTP status of a refused upgrade.
    pub status: Option<u16>,
    /// The upstream's `Retry-After`, in seconds, when it sent one (a 429, a 503).
    pub retry_after: Option<u64>,
}

/// Everything a call can do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Nothing more until `at` (or the next input): arm a timer. Ends a round of polling.
    Timeout { at: Instant, timer: Timer },
    /// Send `datagram` to `to` from one of the call's sockets.
    Transmit {
        socket: Socket,
        to: SocketAddr,
        datagram: Vec<u8>,
    },
    /// Open the WebSocket to the profile's upstream (once, right after the call is created;
    /// everything before it, routing and the offer included, is decided).
    Connect,
    /// A text frame for the upstream, through the writer's queue.
    UpstreamSend(String),
    /// A ping with this payload, through the same queue.
    UpstreamPing([u8; 8]),
    /// Close the WebSocket with this code and reason and drop it (cancel the connect if it
    /// is still being opened).
    UpstreamClose { code: u16, reason: &'static str },
    /// A request for the call's SIP dialog.
    Signalling(Signalling),
    /// Run a webhook, off the media path, and hand its outcome back ([`Input::Webhook`]).
    Webhook(WebhookRequest),
    /// Something that happened, for logs and measurements.
    Event(CallEvent),
    /// The call is over: its one record. Nothing follows; the shell releases everything.
    Finished(Box<CallRecord>),
}

/// What the call asks of its dialog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signalling {
    /// 180 Ringing.
    Ring,
    /// 200 OK with our answer: the session is ready.
    Answer,
    /// Refuse the INVITE.
    Refuse {
        status: u16,
        reason: &'static str,
        retry_after: Option<u32>,
    },
    /// BYE with this `Reason` header value.
    HangUp { reason: String },
    /// Blind transfer: REFER to this SIP URI.
    Refer { uri: String },
}

/// A webhook tool's request.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookRequest {
    pub call_id: CallId,
    pub url: WebhookUrl,
    pub timeout: Duration,
    pub headers: BTreeMap<HeaderName, HeaderValue>,
    pub body: serde_json::Value,
}

/// What a call reports for logs and measurements (it changes nothing if ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    /// The caller talked over the model: playback stopped in this input.
    BargeIn(BargeIn),
}

/// What became of a REFER (from the dialog).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferOutcome {
    /// 202 Accepted: the peer is trying.
    Accepted,
    /// Refused with this status, or no answer (`None`).
    Refused(Option<u16>),
    /// A NOTIFY: the transferred call's status; `terminated` ends the subscription.
    Progress { status: u16, terminated: bool },
}
