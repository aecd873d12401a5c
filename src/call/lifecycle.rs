//! The life of one call, sans-IO: from the admitted INVITE to the record written when it ends.
//!
//! ```text
//!  INVITE admitted (route chosen, 100 sent by the dialog)
//!    |  the shell sends 180 and connects the profile's upstream
//!    v
//!  Connecting --connect failed / setup failed / answer_timeout--> Reject 503 (Retry-After)
//!    |  WebSocket open: session.update sent
//!    v
//!  Ready --------------------------------------------------------> Answer (200 OK)
//!    |  the dialog's media terms: the AudioBridge takes the session and a pacer
//!    v
//!  Answered  (caller frames up, model audio down, barge-in)  --ACK--> greeting response.create
//!    |  caller BYE / CANCEL / upstream closed / RTP inactivity / max duration / shutdown
//!    v
//!  Ended: CloseUpstream, HangUp with a Reason where it is ours to end, then one CallRecord
//! ```
//!
//! The shell (`io::call`) owns the sockets and the clock: it feeds this core with
//! `handle_*`, drains [`Call::poll_action`], [`Call::poll_ws_transmit`] and
//! [`Call::poll_rtp_transmit`], and sleeps until [`Call::poll_timeout`].
//!
//! Rules kept here:
//! - **200 OK only once the upstream session is ready.** The caller hears ringing meanwhile;
//!   no answer within `answer_timeout`, or an upstream that refuses, is a 503 with
//!   Retry-After, so a PBX can route the call elsewhere at once.
//! - **Who ends the call says why.** An upstream that closes or fails mid-call ends the call
//!   with a BYE carrying a `Reason` header (RFC 3326); so do RTP inactivity and the maximum
//!   duration. A caller's BYE closes the upstream normally (1000).
//! - **Digits are words for the model.** A key press becomes a user text item from the
//!   profile's template, optionally followed by `response.create`.
//! - **The greeting** (`response.create` with the profile's instructions) is sent when the
//!   caller's ACK confirms the call, so its first audio is never paced into a stream the
//!   caller cannot hear yet.
//! - **The model hears a continuous clock.** Every 20 ms of the call is one append, silence
//!   included: when the caller's RTP pauses (silence suppression, or a sender that simply
//!   stops) for 200 ms, silence frames are appended at the real-time rate, so the
//!   service's VAD sees the turn end; when packets resume, the receiver's gap concealment for
//!   the time already filled is skipped, so no time is counted twice.
//! - **Tools** are issue 7's: until then a function call is answered with an error output the
//!   model can explain, never left hanging.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::audio::G711Law;
use crate::config::{DtmfConfig, HeaderName, HeaderValue, ProfileConfig, WebhookUrl};
use crate::realtime::{CallId, Dialect, ServerError, Session, SessionEvent, SetupFailure};
use crate::rtp::playout::Pacer;
use crate::sip::sdp::Codec;

use super::bridge::{AudioBridge, BridgeError, BridgeEvent, EndReason as SessionEnd};
use super::tools::{self, KeyAction, ToolInvocation, WebhookOutcome};

/// Retry-After (seconds) of the 503 sent when the upstream cannot be reached.
pub const UPSTREAM_RETRY_AFTER_SECS: u32 = 30;
/// Transcript text kept per side in a call's record.
const TRANSCRIPT_MAX: usize = 16 * 1024;
/// Upstream errors listed in a call's record.
const ERRORS_MAX: usize = 16;
/// Barge-ins whose reaction time is listed in a call's record.
const BARGE_INS_MAX: usize = 64;
/// No caller frame for this long while audio is expected (a phone with silence suppression, a
/// sender that just stops): the model is fed silence, so its VAD hears the turn end.
const FILL_AFTER: Duration = Duration::from_millis(200);
/// One caller frame.
const FRAME: Duration = Duration::from_millis(20);

/// Who the call is between, for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallInfo {
    /// The SIP Call-ID.
    pub call_id: String,
    /// The route's label.
    pub route: String,
    /// The profile's name.
    pub profile: String,
    /// P-Asserted-Identity, else From.
    pub caller: String,
    /// Request-URI user, else To.
    pub callee: String,
}

/// Why a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEnd {
    /// The caller sent BYE.
    CallerBye,
    /// The caller cancelled before the answer (while the upstream was being connected).
    Cancelled,
    /// The upstream could not be connected or refused the session before the answer (503).
    UpstreamFailed,
    /// The upstream was not ready within `answer_timeout` (503).
    AnswerTimeout,
    /// The upstream closed or failed during the call (BYE with a Reason).
    UpstreamClosed,
    /// The upstream ended the session at its maximum duration (BYE with a Reason).
    UpstreamExpired,
    /// No RTP from the caller for `rtp.inactivity_timeout` (BYE with a Reason).
    RtpTimeout,
    /// `limits.max_call_duration` (BYE with a Reason).
    MaxDuration,
    /// The daemon is shutting down (BYE with a Reason, or 503 before the answer).
    Shutdown,
    /// The media could not be set up after the answer (BYE with a Reason).
    MediaFailed,
    /// The SIP side ended it otherwise: no ACK, session timer, refused offer, transport.
    Signalling,
    /// Transferred to a human (REFER accepted and the new call answered): BYE with a Reason.
    Transferred,
    /// The assistant ended the call (`end_call`), after its last words played.
    EndedByAssistant,
}

impl CallEnd {
    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallerBye => "caller_bye",
            Self::Cancelled => "cancelled",
            Self::UpstreamFailed => "upstream_failed",
            Self::AnswerTimeout => "answer_timeout",
            Self::UpstreamClosed => "upstream_closed",
            Self::UpstreamExpired => "upstream_expired",
            Self::RtpTimeout => "rtp_timeout",
            Self::MaxDuration => "max_duration",
            Self::Shutdown => "shutdown",
            Self::MediaFailed => "media_failed",
            Self::Signalling => "signalling",
            Self::Transferred => "transferred",
            Self::EndedByAssistant => "ended_by_assistant",
        }
    }

    /// The `Reason` header (RFC 3326) of our BYE when we end an answered call for this reason.
    /// Q.850 causes as PSTN gateways map them: 16 normal clearing, 41 temporary failure, 38
    /// network out of order.
    pub fn reason_header(self, detail: &str) -> String {
        let (cause, text) = match self {
            Self::UpstreamClosed | Self::UpstreamFailed | Self::AnswerTimeout => {
                (38, "realtime upstream closed")
            }
            Self::UpstreamExpired => (16, "realtime session reached its maximum duration"),
            Self::RtpTimeout => (41, "RTP timeout"),
            Self::MaxDuration => (16, "maximum call duration reached"),
            Self::Shutdown => (16, "bridge shutting down"),
            Self::MediaFailed => (41, "media setup failed"),
            Self::Transferred => (16, "call transferred"),
            Self::EndedByAssistant => (16, "call ended by the assistant"),
            Self::CallerBye | Self::Cancelled | Self::Signalling => (16, "call ended"),
        };
        let detail: String = detail
            .chars()
            .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
            .take(120)
            .collect();
        if detail.is_empty() {
            format!("Q.850;cause={cause};text=\"{text}\"")
        } else {
            format!("Q.850;cause={cause};text=\"{text}: {detail}\"")
        }
    }
}

/// What the call asks of its shell.
#[derive(Clone, Debug, PartialEq)]
pub enum CallAction {
    /// The upstream session is ready: answer the INVITE (200 OK).
    Answer,
    /// Refuse the INVITE (before the answer).
    Reject {
        status: u16,
        reason: &'static str,
        retry_after: Option<u32>,
    },
    /// End the answered call: BYE with this `Reason` header value.
    HangUp { reason: String },
    /// Close the WebSocket normally: nothing more will be sent on it.
    CloseUpstream,
    /// Blind transfer: REFER the caller to this SIP URI.
    Transfer { uri: String },
    /// Run a webhook tool (never on the media path: the shell spawns the request) and hand
    /// the outcome to [`Call::handle_webhook_result`].
    Webhook {
        call_id: CallId,
        url: WebhookUrl,
        timeout: Duration,
        headers: BTreeMap<HeaderName, HeaderValue>,
        body: serde_json::Value,
    },
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

/// Something the call does once the model's audio now queued has played.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AfterPlayout {
    /// REFER to `uri` (after the announcement, if any).
    Transfer {
        uri: String,
        tool_call: Option<CallId>,
        /// A response was asked for (the announcement) and has not been seen yet.
        awaiting_response: bool,
    },
    /// Hang up (`end_call`).
    HangUp,
}

/// The longest wait for the queued audio before a deferred transfer or hang-up goes ahead.
const AFTER_PLAYOUT_LIMIT: Duration = Duration::from_secs(30);

/// The call's audio codec on RTP, as the bridge needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallCodec {
    G711(G711Law),
    Opus,
}

impl CallCodec {
    /// The bridge codec of an SDP codec.
    pub fn of(codec: Codec) -> CallCodec {
        match codec {
            Codec::Pcmu => Self::G711(G711Law::Ulaw),
            Codec::Pcma => Self::G711(G711Law::Alaw),
            Codec::Opus => Self::Opus,
        }
    }
}

/// A latency histogram with buckets 2^(1/8) apart (about 9 % resolution), from 1 µs to about
/// 16 s: fixed size whatever the call's length, and mergeable across calls (the load script
/// adds the buckets of every call's record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
}

const HISTOGRAM_BUCKETS: usize = 8 * 24 + 1;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            counts: vec![0; HISTOGRAM_BUCKETS],
        }
    }
}

impl LatencyHistogram {
    /// The bucket of `us` microseconds: floor(8 * log2(us + 1)), capped.
    fn bucket(us: u64) -> usize {
        let x = (us as f64 + 1.0).log2() * 8.0;
        (x.floor() as usize).min(HISTOGRAM_BUCKETS - 1)
    }

    /// The upper bound of a bucket, in microseconds.
    pub fn bucket_upper_us(bucket: usize) -> u64 {
        (2f64.powf((bucket as f64 + 1.0) / 8.0) - 1.0).ceil() as u64
    }

    /// Counts one sample.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(count) = self.counts.get_mut(Self::bucket(us)) {
            *count += 1;
        }
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The upper bound (µs) of the bucket holding the `q` quantile (0.0-1.0); `None` when
    /// empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::bucket_upper_us(bucket));
            }
        }
        None
    }

    /// The non-empty buckets as `bucket:count` pairs joined by `,` (for the call record).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (bucket, count) in self.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
            if !out.is_empty() {
                out.push(',');
            }
            let _ = write!(out, "{bucket}:{count}");
        }
        out
    }
}

/// Everything a call's record says (see [`Call::record`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CallRecord {
    pub info: CallInfo,
    pub codec: Option<Codec>,
    /// The audio format on the WebSocket (after `auto` was resolved).
    pub audio_format: String,
    pub end: CallEnd,
    /// What the upstream or the SIP side said about the end, if anything.
    pub end_detail: String,
    /// INVITE admitted -> answered (None: never answered).
    pub setup: Option<Duration>,
    /// INVITE admitted -> the upstream's WebSocket open (None: it never opened).
    pub upstream_connect: Option<Duration>,
    /// Answered -> the first model audio frame sent as RTP (None: the model never spoke).
    pub first_model_audio: Option<Duration>,
    /// Answered -> ended (zero when never answered).
    pub talk: Duration,
    /// INVITE admitted -> ended.
    pub total: Duration,
    pub barge_ins: u64,
    /// Each barge-in's reaction: the `speech_started` frame handed in -> playback flushed.
    pub barge_in_reactions: Vec<Duration>,
    pub frames_after_barge_in: u64,
    pub truncates: u64,
    pub truncate_errors: u64,
    pub deletes: u64,
    pub late_deltas_dropped: u64,
    pub upstream_errors: Vec<String>,
    pub digits: u64,
    /// Silence frames appended while the caller's RTP paused.
    pub caller_frames_filled: u64,
    /// Caller frames handed to the bridge, appended to the session, dropped before ready.
    pub caller_frames_in: u64,
    pub frames_to_model: u64,
    pub caller_frames_dropped: u64,
    pub model_frames_queued: u64,
    pub model_frames_sent: u64,
    pub latency_in: LatencyHistogram,
    pub latency_out: LatencyHistogram,
    pub caller_transcript: String,
    pub assistant_transcript: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the WebSocket.
    Connecting,
    /// Session being configured.
    SettingUp,
    /// Ready; the shell was asked to answer.
    Ready,
    /// Answered; the bridge carries the audio.
    Answered,
    Ended,
}

/// The core of one call. See the module documentation.
pub struct Call {
    info: CallInfo,
    profile: ProfileConfig,
    dialect: Dialect,
    codec: Option<Codec>,
    phase: Phase,
    started: Instant,
    answer_deadline: Instant,
    answered_at: Option<Instant>,
    connected_at: Option<Instant>,
    first_audio_at: Option<Instant>,
    ended_at: Option<Instant>,
    end: Option<(CallEnd, String)>,
    session: Option<Session>,
    bridge: Option<AudioBridge>,
    confirmed: bool,
    greeted: bool,
    upstream_open: bool,
    actions: VecDeque<CallAction>,
    barge_in_reactions: Vec<Duration>,
    upstream_errors: Vec<String>,
    digits: u64,
    caller_transcript: String,
    assistant_transcript: String,
    latency_in: LatencyHistogram,
    latency_out: LatencyHistogram,
    /// A model delta handed in while the pacer was idle: when (for the WS-in -> RTP-out
    /// latency of its first frame).
    out_pending: Option<Instant>,
    frames_sent_seen: u64,
    /// Whether caller audio is expected now (confirmed, not on hold, our side receives).
    caller_audio_expected: bool,
    /// The end of the caller audio accounted for: the last frame handed in, or filled.
    caller_clock: Option<Instant>,
    /// Silence frames filled whose gap concealment the receiver has not delivered yet.
    filled_pending: u64,
    frames_filled: u64,
    /// A transfer or hang-up waiting for the queued audio, and since when.
    after_playout: Option<(AfterPlayout, Instant)>,
    /// A REFER is out: its tool call (if the model asked), for the failure report.
    transfer: Option<(String, Option<CallId>)>,
}

impl Call {
    /// A call admitted at `now` for `profile` (whose `audio_format` is resolved here for
    /// `codec`, the codec the answer will carry), on an upstream speaking `dialect`. The
    /// shell connects the upstream next.
    pub fn new(
        now: Instant,
        info: CallInfo,
        profile: &ProfileConfig,
        dialect: Dialect,
        codec: Option<Codec>,
        answer_timeout: Duration,
    ) -> Call {
        let mut profile = profile.clone();
        if let Some(codec) = codec {
            profile.audio_format = profile.audio_format.for_codec(codec);
        }
        Call {
            info,
            profile,
            dialect,
            codec,
            phase: Phase::Connecting,
            started: now,
            answer_deadline: now.checked_add(answer_timeout).unwrap_or(now),
            answered_at: None,
            connected_at: None,
            first_audio_at: None,
            ended_at: None,
            end: None,
            session: None,
            bridge: None,
            confirmed: false,
            greeted: false,
            upstream_open: false,
            actions: VecDeque::new(),
            barge_in_reactions: Vec::new(),
            upstream_errors: Vec::new(),
            digits: 0,
            caller_transcript: String::new(),
            assistant_transcript: String::new(),
            latency_in: LatencyHistogram::default(),
            latency_out: LatencyHistogram::default(),
            out_pending: None,
            frames_sent_seen: 0,
            caller_audio_expected: false,
            caller_clock: None,
            filled_pending: 0,
            frames_filled: 0,
            after_playout: None,
            transfer: None,
        }
    }

    /// Who the call is between.
    pub fn info(&self) -> &CallInfo {
        &self.info
    }

    /// The profile in force (audio format resolved).
    pub fn profile(&self) -> &ProfileConfig {
        &self.profile
    }

    /// Whether the call has ended (its record is final once the upstream is closed).
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Whether the WebSocket is still to be driven.
    pub fn upstream_open(&self) -> bool {
        self.upstream_open
    }

    /// The bridge, once answered (for the pacer: hold, direction, DTMF out).
    pub fn bridge_mut(&mut self) -> Option<&mut AudioBridge> {
        self.bridge.as_mut()
    }

    // ---- inputs -----------------------------------------------------------------------------

    /// The WebSocket is open: the session starts (its `session.update` is queued).
    pub fn handle_connected(&mut self, now: Instant) {
        if self.phase != Phase::Connecting {
            return;
        }
        let remaining = self.answer_deadline.saturating_duration_since(now);
        self.session =
            Some(Session::new(&self.profile, self.dialect, now).with_setup_timeout(remaining));
        self.upstream_open = true;
        self.connected_at = Some(now);
        self.phase = Phase::SettingUp;
    }

    /// The WebSocket could not be opened (`detail` says why: HTTP status, timeout, TLS).
    pub fn handle_connect_failed(&mut self, now: Instant, detail: &str) {
        self.note_error(format!("connect: {detail}"));
        self.fail_before_answer(now, CallEnd::UpstreamFailed, detail);
    }

    /// A text frame from the upstream. Returns whether it was a barge-in that stopped
    /// playback (the shell times this call for the record's reaction times).
    pub fn handle_ws_text(&mut self, now: Instant, text: &str) -> bool {
        let mut barge_in = false;
        if let Some(bridge) = &mut self.bridge {
            let idle = bridge.pacer().queued_frames() == 0;
            let before = bridge.stats();
            bridge.handle_ws_text(now, text);
            let after = bridge.stats();
            if idle
                && self.out_pending.is_none()
                && after.model_frames_queued > before.model_frames_queued
            {
                self.out_pending = Some(now);
            }
            barge_in = after.barge_ins > before.barge_ins;
            if barge_in {
                self.out_pending = None;
            }
        } else if let Some(session) = &mut self.session {
            session.handle_text(now, text);
        }
        self.drain(now);
        barge_in
    }

    /// The WebSocket closed (close frame, error, or lost).
    pub fn handle_ws_closed(&mut self, now: Instant, code: Option<u16>, reason: &str) {
        self.upstream_open = false;
        if let Some(bridge) = &mut self.bridge {
            bridge.handle_ws_closed(now, code, reason);
        } else if let Some(session) = &mut self.session {
            session.handle_closed(now, code, reason);
        } else if self.phase != Phase::Ended {
            self.fail_before_answer(now, CallEnd::UpstreamFailed, reason);
        }
        self.drain(now);
    }

    /// The dialog's media terms are known (at the answer, or at the ACK of an offerless
    /// INVITE): the bridge takes over the session with `pacer`. An error is a call that
    /// cannot carry audio: it is hung up.
    pub fn handle_media(
        &mut self,
        now: Instant,
        codec: Codec,
        pacer: Pacer,
    ) -> Result<(), BridgeError> {
        if self.bridge.is_some() || self.phase == Phase::Ended {
            return Ok(());
        }
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        self.codec = Some(codec);
        let built = match CallCodec::of(codec) {
            CallCodec::G711(law) => AudioBridge::with_session(&self.profile, session, law, pacer),
            CallCodec::Opus => AudioBridge::opus(&self.profile, session, pacer),
        };
        match built {
            Ok(bridge) => {
                self.bridge = Some(bridge);
                self.phase = Phase::Answered;
                self.maybe_greet();
                self.drain(now);
                Ok(())
            }
            Err(error) => {
                self.hang_up(now, CallEnd::MediaFailed, &error.to_string());
                Err(error)
            }
        }
    }

    /// The caller's ACK confirmed the call: the greeting, if the profile has one.
    pub fn handle_confirmed(&mut self, now: Instant) {
        self.confirmed = true;
        self.maybe_greet();
        self.drain(now);
    }

    /// One 20 ms caller frame from the receiver (`concealed`: filled by the receiver for
    /// lost or skipped time).
    pub fn handle_caller_frame(&mut self, now: Instant, payload: &[u8], concealed: bool) {
        self.caller_clock = Some(now);
        if concealed && self.filled_pending > 0 {
            // This stretch was already fed to the model as silence.
            self.filled_pending -= 1;
            return;
        }
        if !concealed {
            self.filled_pending = 0;
        }
        if let Some(bridge) = &mut self.bridge {
            bridge.handle_caller_frame(now, payload);
        }
    }

    /// Whether the caller's audio is expected (the ACK arrived, the call is not on hold and
    /// our side receives): only then are pauses filled with silence.
    pub fn set_caller_audio_expected(&mut self, now: Instant, expected: bool) {
        if expected && !self.caller_audio_expected {
            self.caller_clock = Some(now);
        }
        self.caller_audio_expected = expected;
    }

    fn fill_due(&self) -> Option<Instant> {
        if !self.caller_audio_expected || self.bridge.is_none() || self.phase == Phase::Ended {
            return None;
        }
        self.caller_clock.and_then(|at| at.checked_add(FILL_AFTER))
    }

    /// Appends silence for the time since the last caller frame, in whole frames.
    fn fill_silence(&mut self, now: Instant) {
        let (Some(due), Some(mut clock)) = (self.fill_due(), self.caller_clock) else {
            return;
        };
        if now < due {
            return;
        }
        let Some(bridge) = &mut self.bridge else {
            return;
        };
        let silence: &[u8] = match self.codec.map(CallCodec::of) {
            Some(CallCodec::G711(G711Law::Ulaw)) => &[0xFF; 160],
            Some(CallCodec::G711(G711Law::Alaw)) => &[0xD5; 160],
            // An empty Opus frame is concealed by the decoder (it fades to silence).
            Some(CallCodec::Opus) | None => &[],
        };
        while clock + FRAME <= now {
            bridge.handle_caller_frame(now, silence);
            clock += FRAME;
            self.filled_pending += 1;
            self.frames_filled += 1;
        }
        self.caller_clock = Some(clock);
    }

    /// A key press (RFC 4733 or SIP INFO).
    pub fn handle_digit(&mut self, now: Instant, digit: char) {
        self.digits += 1;
        // A key with an action acts, whether or not digits are told to the model.
        match tools::digit_action(&self.profile, digit) {
            Some(KeyAction::Transfer { uri, .. }) => {
                let announcement = self.profile.transfer_announcement.clone();
                self.start_transfer(now, uri.as_str(), None, announcement.as_deref());
                return;
            }
            Some(KeyAction::EndCall) => {
                self.end_after_playout(now);
                return;
            }
            None => {}
        }
        let DtmfConfig {
            enabled,
            create_response,
            ..
        } = self.profile.dtmf;
        let text = self.profile.dtmf.text(digit);
        let Some(bridge) = &mut self.bridge else {
            return;
        };
        if !enabled || !bridge.session().is_ready() {
            return;
        }
        let session = bridge.session_mut();
        let mut result = session.add_user_text(&text);
        if result.is_ok() && create_response {
            result = session.create_response(None);
        }
        if let Err(error) = result {
            self.note_error(format!("digit: {error}"));
        }
        self.drain(now);
    }

    /// No RTP for the inactivity timeout.
    pub fn handle_rtp_inactive(&mut self, now: Instant) {
        self.hang_up(now, CallEnd::RtpTimeout, "");
    }

    /// The shell ends the call for `end` (max duration, shutdown): BYE with a Reason, or 503
    /// before the answer.
    pub fn end_call(&mut self, now: Instant, end: CallEnd) {
        match self.phase {
            Phase::Answered => self.hang_up(now, end, ""),
            Phase::Ended => {}
            _ => self.fail_before_answer(now, end, ""),
        }
    }

    /// The dialog ended (`end` as the shell classified it: caller BYE, CANCEL, ...). The
    /// first reason recorded stays.
    pub fn handle_sip_ended(&mut self, now: Instant, end: CallEnd, detail: &str) {
        if self.end.is_none() {
            self.end = Some((end, detail.to_owned()));
        }
        self.finish(now);
    }

    /// Timers: the answer deadline, the session's, the pacer's.
    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Connecting | Phase::SettingUp) && now >= self.answer_deadline
        {
            self.fail_before_answer(now, CallEnd::AnswerTimeout, "");
        }
        self.fill_silence(now);
        if let Some(bridge) = &mut self.bridge {
            bridge.handle_timeout(now);
        } else if let Some(session) = &mut self.session {
            session.handle_timeout(now);
        }
        self.drain(now);
    }

    /// Time taken from an RTP datagram's arrival to the send of the appends it produced
    /// (measured by the shell, `frames` of them).
    pub fn record_latency_in(&mut self, latency: Duration, frames: u64) {
        for _ in 0..frames.min(16) {
            self.latency_in.record(latency);
        }
    }

    /// Time the shell spent handing a frame holding `speech_started` to the bridge (the
    /// flush happens inside; see [`Call::handle_ws_text`]).
    pub fn record_barge_in_reaction(&mut self, reaction: Duration) {
        if self.barge_in_reactions.len() < BARGE_INS_MAX {
            self.barge_in_reactions.push(reaction);
        }
    }

    /// Transfers the caller to `uri` (a blind REFER). With an `announcement` the model is
    /// first asked to say it (as the response to `tool_call`, when the model asked for the
    /// transfer) and the REFER leaves once that audio has played.
    pub fn start_transfer(
        &mut self,
        now: Instant,
        uri: &str,
        tool_call: Option<CallId>,
        announcement: Option<&str>,
    ) {
        if self.phase != Phase::Answered || self.transfer.is_some() {
            if let Some(call_id) = tool_call {
                self.tool_output(
                    &call_id,
                    r#"{"error":"a transfer is not possible right now"}"#.to_owned(),
                );
            }
            self.drain(now);
            return;
        }
        let mut awaiting_response = false;
        if let Some(text) = announcement
            && let Some(bridge) = &mut self.bridge
        {
            // The tool call gets its output only if the transfer fails (the model then
            // explains); the announcement is a response of its own.
            match bridge.session_mut().create_response(Some(text)) {
                Ok(()) => awaiting_response = true,
                Err(error) => self.note_error(format!("transfer announcement: {error}")),
            }
        }
        self.after_playout = Some((
            AfterPlayout::Transfer {
                uri: uri.to_owned(),
                tool_call,
                awaiting_response,
            },
            now,
        ));
        self.drain(now);
    }

    /// What became of the REFER.
    pub fn handle_transfer(&mut self, now: Instant, outcome: TransferOutcome) {
        let Some((uri, tool_call)) = self.transfer.clone() else {
            return;
        };
        let failed = match outcome {
            TransferOutcome::Accepted => return,
            TransferOutcome::Progress { status, .. } if (200..300).contains(&status) => {
                self.transfer = None;
                self.hang_up(now, CallEnd::Transferred, &uri);
                return;
            }
            TransferOutcome::Progress { status, terminated } => {
                if status < 300 && !terminated {
                    return;
                }
                Some(status)
            }
            TransferOutcome::Refused(status) => status,
        };
        self.transfer = None;
        let reason = match failed {
            Some(status) if status < 300 => "the transfer ended without an answer".to_owned(),
            Some(status) => format!("the transfer failed with SIP status {status}"),
            None => "the transfer got no answer".to_owned(),
        };
        self.note_error(format!("transfer to {uri}: {reason}"));
        let output = serde_json::json!({ "error": reason }).to_string();
        match tool_call {
            Some(call_id) => self.tool_output(&call_id, output),
            None => {
                if let Some(bridge) = &mut self.bridge {
                    let session = bridge.session_mut();
                    let text = format!("The transfer did not work: {reason}. Tell the caller.");
                    if let Err(error) = session
                        .add_user_text(&text)
                        .and_then(|()| session.create_response(None))
                    {
                        self.note_error(format!("transfer report: {error}"));
                    }
                }
            }
        }
        self.drain(now);
    }

    /// A webhook tool's outcome (from the shell).
    pub fn handle_webhook_result(
        &mut self,
        now: Instant,
        call_id: &CallId,
        outcome: &WebhookOutcome,
        timeout: Duration,
    ) {
        if let WebhookOutcome::Timeout | WebhookOutcome::Error(_) = outcome {
            self.note_error(format!("webhook {call_id}: {outcome:?}"));
        }
        if self.phase == Phase::Answered {
            self.tool_output(call_id, tools::webhook_output(outcome, timeout));
        }
        self.drain(now);
    }

    /// Hangs up once the model's audio now queued has played (`end_call`).
    pub fn end_after_playout(&mut self, now: Instant) {
        if self.phase == Phase::Answered && self.after_playout.is_none() {
            self.after_playout = Some((AfterPlayout::HangUp, now));
        }
        self.drain(now);
    }

    /// Answers a tool call with `output` (the session asks for the next response itself).
    pub fn tool_output(&mut self, call_id: &CallId, output: String) {
        let Some(bridge) = &mut self.bridge else {
            return;
        };
        if let Err(error) = bridge.session_mut().submit_tool_output(call_id, output) {
            self.note_error(format!("tool output: {error}"));
        }
    }

    /// Runs a deferred transfer or hang-up once the queued audio has played and no response
    /// is under way (or after [`AFTER_PLAYOUT_LIMIT`]).
    fn run_after_playout(&mut self, now: Instant) {
        let Some((pending, since)) = &self.after_playout else {
            return;
        };
        let Some(bridge) = &self.bridge else {
            return;
        };
        let waiting_for_response = matches!(
            pending,
            AfterPlayout::Transfer {
                awaiting_response: true,
                ..
            }
        );
        let quiet = bridge.pacer().is_idle()
            && bridge.session().active_response().is_none()
            && !waiting_for_response;
        let overdue = now.saturating_duration_since(*since) >= AFTER_PLAYOUT_LIMIT;
        if !(quiet || overdue) {
            return;
        }
        let Some((pending, _)) = self.after_playout.take() else {
            return;
        };
        match pending {
            AfterPlayout::HangUp => self.hang_up(now, CallEnd::EndedByAssistant, ""),
            AfterPlayout::Transfer { uri, tool_call, .. } => {
                self.transfer = Some((uri.clone(), tool_call));
                self.actions.push_back(CallAction::Transfer { uri });
            }
        }
    }

    // ---- outputs ----------------------------------------------------------------------------

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<CallAction> {
        self.actions.pop_front()
    }

    /// The next text frame for the upstream.
    pub fn poll_ws_transmit(&mut self) -> Option<String> {
        if let Some(bridge) = &mut self.bridge {
            bridge.poll_ws_transmit()
        } else {
            self.session.as_mut().and_then(Session::poll_transmit)
        }
    }

    /// The next RTP datagram, at `now` (the pacer's slot that was just handled).
    pub fn poll_rtp_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        let bridge = self.bridge.as_mut()?;
        let datagram = bridge.poll_rtp_transmit()?;
        let sent = bridge.pacer().stats().audio_frames;
        if sent > self.frames_sent_seen {
            self.frames_sent_seen = sent;
            self.first_audio_at.get_or_insert(now);
            if let Some(at) = self.out_pending.take() {
                self.latency_out.record(now.saturating_duration_since(at));
            }
        }
        Some(datagram)
    }

    /// When [`Call::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let answer = matches!(self.phase, Phase::Connecting | Phase::SettingUp)
            .then_some(self.answer_deadline);
        let core = match &self.bridge {
            Some(bridge) => bridge.poll_timeout(),
            None => self.session.as_ref().and_then(Session::poll_timeout),
        };
        let after = self
            .after_playout
            .as_ref()
            .and_then(|(_, since)| since.checked_add(AFTER_PLAYOUT_LIMIT));
        [answer, core, self.fill_due(), after]
            .into_iter()
            .flatten()
            .min()
    }

    /// The call's record, as of `now` (final once [`Call::is_ended`]).
    pub fn record(&self, now: Instant) -> CallRecord {
        let ended = self.ended_at.unwrap_or(now);
        let stats = self
            .bridge
            .as_ref()
            .map(AudioBridge::stats)
            .unwrap_or_default();
        let (end, end_detail) = self
            .end
            .clone()
            .unwrap_or((CallEnd::Signalling, String::new()));
        CallRecord {
            info: self.info.clone(),
            codec: self.codec,
            audio_format: self.profile.audio_format.to_string(),
            end,
            end_detail,
            setup: self
                .answered_at
                .map(|at| at.saturating_duration_since(self.started)),
            upstream_connect: self
                .connected_at
                .map(|at| at.saturating_duration_since(self.started)),
            first_model_audio: self
                .first_audio_at
                .zip(self.answered_at)
                .map(|(first, answered)| first.saturating_duration_since(answered)),
            talk: self
                .answered_at
                .map_or(Duration::ZERO, |at| ended.saturating_duration_since(at)),
            total: ended.saturating_duration_since(self.started),
            barge_ins: stats.barge_ins,
            barge_in_reactions: self.barge_in_reactions.clone(),
            frames_after_barge_in: stats.frames_after_barge_in,
            truncates: stats.truncates_sent,
            truncate_errors: stats.truncate_errors,
            deletes: stats.deletes_sent,
            late_deltas_dropped: stats.late_deltas_dropped,
            upstream_errors: self.upstream_errors.clone(),
            digits: self.digits,
            caller_frames_filled: self.frames_filled,
            caller_frames_in: stats.caller_frames_in,
            frames_to_model: stats.caller_frames_appended,
            caller_frames_dropped: stats.caller_frames_dropped,
            model_frames_queued: stats.model_frames_queued,
            model_frames_sent: stats.model_frames_sent,
            latency_in: self.latency_in.clone(),
            latency_out: self.latency_out.clone(),
            caller_transcript: self.caller_transcript.clone(),
            assistant_transcript: self.assistant_transcript.clone(),
        }
    }

    // ---- internals --------------------------------------------------------------------------

    fn maybe_greet(&mut self) {
        if self.greeted || !self.confirmed {
            return;
        }
        let Some(bridge) = &mut self.bridge else {
            return;
        };
        self.greeted = true;
        if let Some(greeting) = self.profile.greeting.clone()
            && let Err(error) = bridge.session_mut().create_response(Some(&greeting))
        {
            self.note_error(format!("greeting: {error}"));
        }
    }

    fn note_error(&mut self, error: String) {
        if self.upstream_errors.len() < ERRORS_MAX {
            self.upstream_errors.push(error);
        }
    }

    /// Refuses the INVITE with 503 (or, when the caller already went away, just records).
    fn fail_before_answer(&mut self, now: Instant, end: CallEnd, detail: &str) {
        if self.phase == Phase::Ended || self.phase == Phase::Answered {
            return;
        }
        if self.end.is_none() {
            self.end = Some((end, detail.to_owned()));
        }
        self.actions.push_back(CallAction::Reject {
            status: 503,
            reason: "Service Unavailable",
            retry_after: Some(UPSTREAM_RETRY_AFTER_SECS),
        });
        self.finish(now);
    }

    /// Ends an answered call from our side: BYE with a Reason.
    fn hang_up(&mut self, now: Instant, end: CallEnd, detail: &str) {
        if self.phase == Phase::Ended {
            return;
        }
        if self.phase != Phase::Answered {
            self.fail_before_answer(now, end, detail);
            return;
        }
        if self.end.is_none() {
            self.end = Some((end, detail.to_owned()));
        }
        self.actions.push_back(CallAction::HangUp {
            reason: end.reason_header(detail),
        });
        self.finish(now);
    }

    fn finish(&mut self, now: Instant) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        self.ended_at = Some(now);
        if self.upstream_open {
            self.upstream_open = false;
            self.actions.push_back(CallAction::CloseUpstream);
        }
    }

    /// Handles what the session (before the answer) or the bridge reported.
    fn drain(&mut self, now: Instant) {
        if self.bridge.is_none() {
            while let Some(event) = self.session.as_mut().and_then(Session::poll_event) {
                self.session_event(now, event);
            }
            return;
        }
        while let Some(event) = self.bridge.as_mut().and_then(AudioBridge::poll_event) {
            match event {
                BridgeEvent::SessionEnded { reason } => self.session_ended(now, reason),
                BridgeEvent::Session(event) => self.session_event(now, event),
                BridgeEvent::Ready { .. } | BridgeEvent::BargeIn(_) | BridgeEvent::Playout(_) => {}
            }
        }
        if self.phase == Phase::Answered {
            self.run_after_playout(now);
        }
    }

    fn session_event(&mut self, now: Instant, event: SessionEvent) {
        match event {
            SessionEvent::Ready { .. } => {
                if matches!(self.phase, Phase::SettingUp | Phase::Connecting) {
                    self.phase = Phase::Ready;
                    self.answered_at = Some(now);
                    self.actions.push_back(CallAction::Answer);
                }
            }
            SessionEvent::SetupFailed(failure) => {
                let detail = setup_failure_text(&failure);
                self.note_error(detail.clone());
                self.upstream_open = false;
                self.fail_before_answer(now, CallEnd::UpstreamFailed, &detail);
            }
            SessionEvent::Expired => self.session_ended(now, SessionEnd::Expired),
            SessionEvent::Closed { code, reason } => {
                self.session_ended(now, SessionEnd::Closed { code, reason })
            }
            SessionEvent::Error(error) => {
                if error.fatal {
                    self.session_ended(now, SessionEnd::Fatal(error));
                } else {
                    self.note_error(error_text(&error));
                }
            }
            SessionEvent::ResponseCreated { .. } => {
                if let Some((
                    AfterPlayout::Transfer {
                        awaiting_response, ..
                    },
                    _,
                )) = &mut self.after_playout
                {
                    *awaiting_response = false;
                }
            }
            SessionEvent::CallerTranscript { text, .. } => {
                append_transcript(&mut self.caller_transcript, &text)
            }
            SessionEvent::AssistantTranscript { text, .. } => {
                append_transcript(&mut self.assistant_transcript, &text)
            }
            SessionEvent::ToolCall {
                call_id,
                name,
                arguments,
            } => {
                tracing::info!(call_id = %self.info.call_id, tool = %name, "tool call");
                match tools::invoke(&self.profile, &self.info, call_id, &name, &arguments) {
                    ToolInvocation::Webhook {
                        call_id,
                        url,
                        timeout,
                        headers,
                        body,
                    } => self.actions.push_back(CallAction::Webhook {
                        call_id,
                        url,
                        timeout,
                        headers,
                        body,
                    }),
                    // No output: the call ends after the words already queued.
                    ToolInvocation::EndCall { .. } => {
                        if self.phase == Phase::Answered && self.after_playout.is_none() {
                            self.after_playout = Some((AfterPlayout::HangUp, now));
                        }
                    }
                    ToolInvocation::Transfer { call_id, uri, .. } => {
                        let announcement = self.profile.transfer_announcement.clone();
                        self.start_transfer(
                            now,
                            uri.as_str(),
                            Some(call_id),
                            announcement.as_deref(),
                        );
                    }
                    ToolInvocation::Reject { call_id, output } => {
                        self.tool_output(&call_id, output);
                    }
                }
            }
            _ => {}
        }
    }

    fn session_ended(&mut self, now: Instant, reason: SessionEnd) {
        self.upstream_open = false;
        let (end, detail) = match reason {
            SessionEnd::Expired => (CallEnd::UpstreamExpired, String::new()),
            SessionEnd::SetupFailed(failure) => {
                (CallEnd::UpstreamFailed, setup_failure_text(&failure))
            }
            SessionEnd::Closed { code, reason } => (
                CallEnd::UpstreamClosed,
                match code {
                    Some(code) => format!("close {code} {reason}"),
                    None => reason,
                },
            ),
            SessionEnd::Fatal(error) => {
                self.note_error(error_text(&error));
                (
                    CallEnd::UpstreamClosed,
                    error.code.unwrap_or_else(|| error.message.clone()),
                )
            }
        };
        self.hang_up(now, end, detail.trim());
    }
}

fn error_text(error: &ServerError) -> String {
    match &error.code {
        Some(code) => format!("{code}: {}", error.message),
        None => error.message.clone(),
    }
}

fn setup_failure_text(failure: &SetupFailure) -> String {
    match failure {
        SetupFailure::SetupTimeout { waiting_for } => format!("no {waiting_for} in time"),
        SetupFailure::ConfigRejected { code, message, .. }
        | SetupFailure::Refused { code, message } => match code {
            Some(code) => format!("{code}: {message}"),
            None => message.clone(),
        },
    }
}

fn append_transcript(all: &mut String, text: &str) {
    let text = text.trim();
    if text.is_empty() || all.len() >= TRANSCRIPT_MAX {
        return;
    }
    if !all.is_empty() {
        all.push_str(" | ");
    }
    for c in text.chars() {
        if all.len() >= TRANSCRIPT_MAX {
            break;
        }
        all.push(c);
    }
}

#[cfg(test)]
mod tests;
