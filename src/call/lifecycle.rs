//! The life of one call, sans-IO: from the admitted INVITE to the record written when it ends.
//!
//! ```text
//!  INVITE admitted (route chosen, offer answerable, ports bound; 100 sent by the dialog)
//!    |  Ring (180), Connect
//!    v
//!  Connecting --refused / setup failed / answer_timeout / CANCEL--> Refuse 503 (Retry-After)
//!    |  UpstreamOpened: session.created -> session.update
//!    v
//!  SettingUp ---------------------------------------------------> Answer (200 OK)
//!    |  the dialog's media terms: the audio bridge takes the session and a pacer
//!    v
//!  Answered  (caller frames up, model audio down, barge-in)  --ACK--> greeting response.create
//!    |  caller BYE / upstream closed, failed, expired or stalled / RTP inactivity /
//!    |  max duration / drain / stop / transfer / end_call
//!    v
//!  Ended: HangUp with a Reason where it is ours to end, UpstreamClose, RTCP BYE, Finished
//! ```
//!
//! Rules kept here:
//! - **Nothing upstream before the INVITE is accepted.** A call exists only for an INVITE the
//!   endpoint admitted (route, ACL, rate, capacity, an answerable offer): its first outputs
//!   are `Ring` and `Connect`.
//! - **200 OK only once the upstream session is ready.** The caller hears ringing meanwhile;
//!   no answer within `answer_timeout`, or an upstream that refuses, is a 503 with
//!   Retry-After (the upstream's own, 1-300 s, when its refusal carried one), so a PBX can
//!   route the call elsewhere at once. The record counts a call as answered only once the
//!   dialog says the 200 went out.
//! - **Who ends the call says why.** An upstream that closes, fails, expires or stops reading
//!   ends the call with a BYE carrying a `Reason` header (RFC 3326); so do RTP inactivity,
//!   the maximum duration and the drain. A caller's BYE closes the upstream normally (1000).
//! - **Every ending releases everything at once**: whichever way the call ends, the same
//!   input that ends it closes the WebSocket (or cancels its connect), sends RTCP's BYE,
//!   stops every timer and writes the one record; no RTP leaves after it.
//! - **Digits are words for the model.** A key press becomes a user text item from the
//!   profile's template, optionally followed by `response.create`.
//! - **The greeting** is asked for when the caller's ACK confirms the call, so its first audio
//!   is never paced into a stream the caller cannot hear yet.
//! - **The model hears a continuous clock.** Every 20 ms of the call is one append, silence
//!   included: when the caller's RTP pauses (silence suppression, or a sender that simply
//!   stops) for 200 ms, silence frames are appended at the real-time rate, so the service's
//!   VAD sees the turn end; when packets resume, the receiver's gap concealment for the time
//!   already filled is skipped, so no time is counted twice.
//! - **Tools** ([`super::tools`]): webhooks run in the shell and come back as inputs; a
//!   transfer (REFER) or `end_call` waits for the queued audio to play.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::audio::G711Law;
use crate::config::{DtmfConfig, ProfileConfig};
use crate::realtime::{CallId, Dialect, ServerError, Session, SessionEvent, SetupFailure};
use crate::rtp::receive::{FrameKind, ReceiveConfig};
use crate::rtp::rtcp::NtpTime;
use crate::sip::dialog::{DialogEvent, EndedBy};
use crate::sip::sdp::{Codec, Negotiated};

use super::bridge::{AudioBridge, BridgeError, BridgeEvent, EndReason as SessionEnd};
use super::media::{MediaLeg, MediaSeeds, Socket};
use super::record::{CallEnd, CallInfo, CallRecord, LatencyHistogram};
use super::timer::{Timer, TimerTable};
use super::tools::{self, KeyAction, ToolInvocation, WebhookOutcome};
use super::upstream::{LinkState, LinkVerdict, UpstreamLink};
use super::{
    CallEvent, CallLimits, CallSetup, Input, Output, Signalling, TransferOutcome, UpstreamRefusal,
    WebhookRequest,
};

/// Retry-After (seconds) of the 503 sent when the upstream cannot be reached and did not say
/// when to try again.
pub const UPSTREAM_RETRY_AFTER_SECS: u32 = 30;
/// The upstream's own Retry-After is passed on within these bounds.
const RETRY_AFTER_RANGE: (u64, u64) = (1, 300);
/// Transcript text kept per side in a call's record.
const TRANSCRIPT_MAX: usize = 16 * 1024;
/// Upstream errors listed in a call's record.
const ERRORS_MAX: usize = 16;
/// No caller frame for this long while audio is expected (a phone with silence suppression, a
/// sender that just stops): the model is fed silence, so its VAD hears the turn end.
const FILL_AFTER: Duration = Duration::from_millis(200);
/// One caller frame.
const FRAME: Duration = Duration::from_millis(20);
/// The longest wait for the queued audio before a deferred transfer or hang-up goes ahead.
const AFTER_PLAYOUT_LIMIT: Duration = Duration::from_secs(30);
/// When nothing at all is armed (never, while a call lives: the maximum duration always is),
/// the call still asks to be woken this far ahead.
const IDLE_WAKE: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the WebSocket.
    Connecting,
    /// Session being configured.
    SettingUp,
    /// Ready; the dialog was asked to answer.
    Answering,
    /// Answered; the bridge carries the audio.
    Answered,
    Ended,
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

/// The call's audio codec on RTP, as the bridge needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallCodec {
    G711(G711Law),
    Opus,
}

impl CallCodec {
    fn of(codec: Codec) -> CallCodec {
        match codec {
            Codec::Pcmu => Self::G711(G711Law::Ulaw),
            Codec::Pcma => Self::G711(G711Law::Alaw),
            Codec::Opus => Self::Opus,
        }
    }
}

/// One call. See the module documentation and [`super`] for its inputs and outputs.
pub struct Call {
    info: CallInfo,
    profile: ProfileConfig,
    dialect: Dialect,
    codec: Option<Codec>,
    limits: CallLimits,
    seeds: MediaSeeds,
    cname: String,
    /// The wall clock at `started` (RTCP's NTP time is derived from it).
    wall_clock: NtpTime,
    phase: Phase,
    started: Instant,
    /// The latest `now` handed in.
    now: Instant,
    answer_deadline: Instant,
    max_deadline: Option<Instant>,
    drain_deadline: Option<Instant>,
    answered_at: Option<Instant>,
    connected_at: Option<Instant>,
    first_audio_at: Option<Instant>,
    ended_at: Option<Instant>,
    end: Option<(CallEnd, String)>,
    /// The Retry-After of our 503, when the upstream named one.
    retry_after: Option<u32>,
    timers: TimerTable,
    link: UpstreamLink,
    session: Option<Session>,
    bridge: Option<AudioBridge>,
    media: Option<MediaLeg>,
    confirmed: bool,
    greeted: bool,
    outputs: VecDeque<Output>,
    finished: bool,
    upstream_errors: Vec<String>,
    digits: u64,
    caller_transcript: String,
    assistant_transcript: String,
    latency_out: LatencyHistogram,
    /// A model delta handed in while the pacer was idle: when (for the WS-in -> RTP-out
    /// latency of its first frame).
    out_pending: Option<Instant>,
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
    /// Scratch for digits decoded from RTP.
    digit_scratch: Vec<char>,
}

impl Call {
    /// A call admitted at `now`. Its first outputs ask the dialog to ring and the shell to
    /// connect the profile's upstream.
    pub fn new(now: Instant, setup: CallSetup) -> Call {
        let CallSetup {
            info,
            mut profile,
            dialect,
            codec,
            limits,
            seeds,
            cname,
            wall_clock,
        } = setup;
        if let Some(codec) = codec {
            profile.audio_format = profile.audio_format.for_codec(codec);
        }
        let mut link = UpstreamLink::new(limits.upstream_stall_timeout);
        link.connecting();
        let mut call = Call {
            info,
            profile,
            dialect,
            codec,
            limits,
            seeds,
            cname,
            wall_clock,
            phase: Phase::Connecting,
            started: now,
            now,
            answer_deadline: now.checked_add(limits.answer_timeout).unwrap_or(now),
            max_deadline: now.checked_add(limits.max_duration),
            drain_deadline: None,
            answered_at: None,
            connected_at: None,
            first_audio_at: None,
            ended_at: None,
            end: None,
            retry_after: None,
            timers: TimerTable::default(),
            link,
            session: None,
            bridge: None,
            media: None,
            confirmed: false,
            greeted: false,
            outputs: VecDeque::new(),
            finished: false,
            upstream_errors: Vec::new(),
            digits: 0,
            caller_transcript: String::new(),
            assistant_transcript: String::new(),
            latency_out: LatencyHistogram::default(),
            out_pending: None,
            caller_audio_expected: false,
            caller_clock: None,
            filled_pending: 0,
            frames_filled: 0,
            after_playout: None,
            transfer: None,
            digit_scratch: Vec::new(),
        };
        call.outputs.push_back(Output::Signalling(Signalling::Ring));
        call.outputs.push_back(Output::Connect);
        call.sync_timers();
        call
    }

    /// Who the call is between.
    pub fn info(&self) -> &CallInfo {
        &self.info
    }

    /// The profile in force (audio format resolved).
    pub fn profile(&self) -> &ProfileConfig {
        &self.profile
    }

    /// Whether the call has ended (its record is, or is about to be, out).
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Where the WebSocket stands.
    pub fn upstream_state(&self) -> LinkState {
        self.link.state()
    }

    /// Model audio queued for playout, in ms (0 before the answer).
    pub fn queued_audio_ms(&self) -> u64 {
        self.bridge.as_ref().map_or(0, |b| b.pacer().queued_ms())
    }

    /// Heap held by the playout queue, in bytes.
    pub fn playout_heap_bytes(&self) -> usize {
        self.bridge.as_ref().map_or(0, |b| b.pacer().heap_bytes())
    }

    // ---- the one way in ---------------------------------------------------------------------

    /// Takes one input at `now`. Poll [`Call::poll_output`] until [`Output::Timeout`] after
    /// every call. Inputs after [`Output::Finished`] are ignored.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        if self.finished {
            return;
        }
        let now = now.max(self.now);
        self.now = now;
        match input {
            Input::Timeout => self.handle_timeout(now),
            Input::Datagram {
                socket,
                from,
                bytes,
            } => {
                let ntp = self.ntp(now);
                if let Some(media) = &mut self.media {
                    media.handle_datagram(now, ntp, socket, from, bytes);
                }
            }
            Input::UpstreamOpened => self.upstream_opened(now),
            Input::UpstreamRefused(refusal) => self.upstream_refused(now, refusal),
            Input::UpstreamText(text) => self.upstream_text(now, text),
            Input::UpstreamPong(payload) => self.link.pong(now, payload),
            Input::UpstreamWritten(total) => self.link.written(total),
            Input::UpstreamClosed { code, reason } => self.upstream_closed(now, code, reason),
            Input::Dialog(event) => self.dialog(now, event),
            Input::Drain { until } => {
                if self.drain_deadline.is_none_or(|at| until < at) {
                    self.drain_deadline = Some(until);
                }
                if until <= now {
                    self.end_call(now, CallEnd::Shutdown);
                }
            }
            Input::Stop(end) => self.end_call(now, end),
            Input::Webhook {
                call_id,
                outcome,
                timeout,
            } => self.webhook_result(now, &call_id, &outcome, timeout),
        }
        self.settle(now);
    }

    /// The next thing to do; [`Output::Timeout`] when nothing is left until then, `None` once
    /// the call is over and its record out.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(output) = self.outputs.pop_front() {
            return Some(output);
        }
        if self.finished {
            return None;
        }
        let (timer, at) = self
            .timers
            .next()
            .unwrap_or((Timer::MaxDuration, self.now + IDLE_WAKE));
        Some(Output::Timeout { at, timer })
    }

    // ---- inputs -----------------------------------------------------------------------------

    fn handle_timeout(&mut self, now: Instant) {
        let due = |t: Timer, timers: &TimerTable| timers.is_due(t, now);
        if due(Timer::Answer, &self.timers)
            && matches!(self.phase, Phase::Connecting | Phase::SettingUp)
        {
            self.fail_before_answer(now, CallEnd::AnswerTimeout, "");
        }
        if due(Timer::MaxDuration, &self.timers) {
            tracing::info!(call_id = %self.info.call_id, "max_call_duration reached: hanging up");
            self.end_call(now, CallEnd::MaxDuration);
        }
        if due(Timer::Drain, &self.timers) {
            tracing::info!(call_id = %self.info.call_id, "drain timeout: hanging up");
            self.end_call(now, CallEnd::Shutdown);
        }
        if self.phase == Phase::Ended {
            return;
        }
        if due(Timer::Receiver, &self.timers)
            || due(Timer::Dtmf, &self.timers)
            || due(Timer::Rtcp, &self.timers)
        {
            let ntp = self.ntp(now);
            if let Some(media) = &mut self.media {
                media.handle_timeout(now, ntp);
            }
        }
        self.pump_media(now);
        if due(Timer::Fill, &self.timers) {
            self.fill_silence(now);
        }
        if due(Timer::Session, &self.timers) || due(Timer::Pacer, &self.timers) {
            if let Some(bridge) = &mut self.bridge {
                bridge.handle_timeout(now);
            } else if let Some(session) = &mut self.session {
                session.handle_timeout(now);
            }
        }
        if due(Timer::AfterPlayout, &self.timers) {
            self.run_after_playout(now);
        }
    }

    fn upstream_opened(&mut self, now: Instant) {
        if self.link.state() != LinkState::Connecting {
            return;
        }
        self.link.opened(now);
        if self.phase != Phase::Connecting {
            return;
        }
        let remaining = self.answer_deadline.saturating_duration_since(now);
        self.session =
            Some(Session::new(&self.profile, self.dialect, now).with_setup_timeout(remaining));
        self.connected_at = Some(now);
        self.phase = Phase::SettingUp;
    }

    fn upstream_refused(&mut self, now: Instant, refusal: UpstreamRefusal) {
        if self.link.state() != LinkState::Connecting {
            return;
        }
        self.link.gone();
        tracing::warn!(call_id = %self.info.call_id, detail = %refusal.detail, "upstream connect failed");
        self.note_error(format!("connect: {}", refusal.detail));
        self.retry_after = refusal.retry_after.map(|secs| {
            let (low, high) = RETRY_AFTER_RANGE;
            u32::try_from(secs.clamp(low, high)).unwrap_or(UPSTREAM_RETRY_AFTER_SECS)
        });
        self.fail_before_answer(now, CallEnd::UpstreamFailed, &refusal.detail);
    }

    fn upstream_text(&mut self, now: Instant, text: &str) {
        if !self.link.is_open() {
            return;
        }
        if let Some(bridge) = &mut self.bridge {
            let idle = bridge.pacer().is_idle();
            bridge.handle_ws_text(now, text);
            if idle && self.out_pending.is_none() && !bridge.pacer().is_idle() {
                self.out_pending = Some(now);
            }
        } else if let Some(session) = &mut self.session {
            session.handle_text(now, text);
        }
    }

    fn upstream_closed(&mut self, now: Instant, code: Option<u16>, reason: &str) {
        let was = self.link.state();
        self.link.gone();
        match was {
            LinkState::Open => {
                if let Some(bridge) = &mut self.bridge {
                    bridge.handle_ws_closed(now, code, reason);
                } else if let Some(session) = &mut self.session {
                    session.handle_closed(now, code, reason);
                }
            }
            LinkState::Connecting => {
                self.fail_before_answer(now, CallEnd::UpstreamFailed, reason);
            }
            LinkState::Idle | LinkState::Gone => {}
        }
    }

    fn dialog(&mut self, now: Instant, event: DialogEvent) {
        match event {
            DialogEvent::Answered => {
                if self.answered_at.is_none() && self.phase != Phase::Ended {
                    self.answered_at = Some(now);
                }
            }
            DialogEvent::MediaNegotiated(negotiated) => self.media_terms(now, negotiated),
            DialogEvent::MediaChanged(negotiated, _) => self.media_terms(now, negotiated),
            DialogEvent::Confirmed => {
                self.confirmed = true;
                self.apply_direction(now);
                self.maybe_greet();
            }
            DialogEvent::Digit(press) => self.handle_digit(now, press.digit.as_char()),
            DialogEvent::TransferAccepted => self.handle_transfer(now, TransferOutcome::Accepted),
            DialogEvent::TransferFailed { status } => {
                self.handle_transfer(now, TransferOutcome::Refused(status))
            }
            DialogEvent::TransferProgress { status, terminated } => {
                self.handle_transfer(now, TransferOutcome::Progress { status, terminated })
            }
            DialogEvent::Ended { by } => {
                let (end, detail) = match by {
                    EndedBy::Remote => (CallEnd::CallerBye, String::new()),
                    EndedBy::Cancelled => (CallEnd::Cancelled, String::new()),
                    // We ended it: the reason we gave is already recorded.
                    EndedBy::Local => (CallEnd::Signalling, String::new()),
                    other => (CallEnd::Signalling, format!("{other:?}")),
                };
                if self.end.is_none() {
                    self.end = Some((end, detail));
                }
                self.finish(now);
            }
            DialogEvent::Cancelled | DialogEvent::AckTimeout | DialogEvent::RefreshDue => {}
        }
    }

    /// The dialog's media terms (at the answer, at the ACK of an offerless INVITE, or from a
    /// re-INVITE or UPDATE).
    fn media_terms(&mut self, now: Instant, negotiated: Negotiated) {
        if self.phase == Phase::Ended {
            return;
        }
        tracing::info!(call_id = %self.info.call_id, codec = negotiated.codec.encoding(),
            remote_rtp = %negotiated.remote_rtp, direction = ?negotiated.direction, "media");
        if let Some(media) = &mut self.media {
            if let Err(error) = media.update(negotiated) {
                tracing::warn!(call_id = %self.info.call_id, %error, "hanging up");
                self.hang_up(now, CallEnd::MediaFailed, &error.to_string());
                return;
            }
            self.apply_direction(now);
            return;
        }
        let Some(session) = self.session.take() else {
            return;
        };
        let receive = ReceiveConfig {
            inactivity_timeout: self.limits.rtp_inactivity,
            ..ReceiveConfig::default()
        };
        let codec = negotiated.codec;
        let (leg, pacer) = match MediaLeg::start(now, negotiated, self.seeds, &self.cname, receive)
        {
            Ok(started) => started,
            Err(error) => {
                self.session = Some(session);
                self.hang_up(now, CallEnd::MediaFailed, &error.to_string());
                return;
            }
        };
        self.codec = Some(codec);
        let built = match CallCodec::of(codec) {
            CallCodec::G711(law) => AudioBridge::with_session(&self.profile, session, law, pacer),
            CallCodec::Opus => AudioBridge::opus(&self.profile, session, pacer),
        };
        match built {
            Ok(mut bridge) => {
                bridge.set_max_queued_audio(self.limits.max_queued_audio);
                self.bridge = Some(bridge);
                self.media = Some(leg);
                self.phase = Phase::Answered;
                self.apply_direction(now);
                self.maybe_greet();
            }
            Err(error) => self.media_failed(now, &error),
        }
    }

    fn media_failed(&mut self, now: Instant, error: &BridgeError) {
        tracing::warn!(call_id = %self.info.call_id, %error, "audio bridge not started");
        self.hang_up(now, CallEnd::MediaFailed, &error.to_string());
    }

    /// Hold, direction and whether caller audio is expected, from the terms and the ACK.
    fn apply_direction(&mut self, now: Instant) {
        let Some(media) = &mut self.media else {
            return;
        };
        let (send, expected) = media.apply_direction(now, self.confirmed);
        if let Some(bridge) = &mut self.bridge {
            bridge.pacer_mut().set_direction(send);
        }
        if expected && !self.caller_audio_expected {
            self.caller_clock = Some(now);
        }
        self.caller_audio_expected = expected;
    }

    /// A key press (RFC 4733 or SIP INFO).
    fn handle_digit(&mut self, now: Instant, digit: char) {
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
    }

    /// Ends the call from our side for `end`: BYE with a Reason, or 503 before the answer.
    fn end_call(&mut self, now: Instant, end: CallEnd) {
        match self.phase {
            Phase::Answered => self.hang_up(now, end, ""),
            Phase::Ended => {}
            _ => self.fail_before_answer(now, end, ""),
        }
    }

    fn webhook_result(
        &mut self,
        _now: Instant,
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
    }

    // ---- transfer and end_call ----------------------------------------------------------------

    /// Transfers the caller to `uri` (a blind REFER). With an `announcement` the model is
    /// first asked to say it, and the REFER leaves once that audio has played.
    fn start_transfer(
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
    }

    /// What became of the REFER.
    fn handle_transfer(&mut self, now: Instant, outcome: TransferOutcome) {
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
    }

    /// Hangs up once the model's audio now queued has played (`end_call`).
    fn end_after_playout(&mut self, now: Instant) {
        if self.phase == Phase::Answered && self.after_playout.is_none() {
            self.after_playout = Some((AfterPlayout::HangUp, now));
        }
    }

    /// Answers a tool call with `output` (the session asks for the next response itself).
    fn tool_output(&mut self, call_id: &CallId, output: String) {
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
                tracing::info!(call_id = %self.info.call_id, %uri, "transferring (REFER)");
                self.transfer = Some((uri.clone(), tool_call));
                self.outputs
                    .push_back(Output::Signalling(Signalling::Refer { uri }));
            }
        }
    }

    // ---- the caller's audio -----------------------------------------------------------------

    /// Hands the receiver's frames to the bridge and acts on what the RTP side reports.
    fn pump_media(&mut self, now: Instant) {
        let Some(media) = &mut self.media else {
            return;
        };
        while let Some(frame) = media.poll_frame() {
            let concealed = frame.kind == FrameKind::Concealed;
            self.caller_clock = Some(now);
            if concealed && self.filled_pending > 0 {
                // This stretch was already fed to the model as silence.
                self.filled_pending -= 1;
                continue;
            }
            if !concealed {
                self.filled_pending = 0;
            }
            if let Some(bridge) = &mut self.bridge
                && self.link.take_audio()
            {
                bridge.handle_caller_frame(now, &frame.payload);
            }
        }
        let mut digits = std::mem::take(&mut self.digit_scratch);
        let inactive = media.poll_happenings(now, &mut digits);
        for digit in digits.drain(..) {
            self.handle_digit(now, digit);
        }
        self.digit_scratch = digits;
        if inactive {
            tracing::info!(call_id = %self.info.call_id, "no RTP for the inactivity timeout");
            self.hang_up(now, CallEnd::RtpTimeout, "");
        }
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
            if self.link.take_audio() {
                bridge.handle_caller_frame(now, silence);
            }
            clock += FRAME;
            self.filled_pending += 1;
            self.frames_filled += 1;
        }
        self.caller_clock = Some(clock);
    }

    // ---- after every input --------------------------------------------------------------------

    /// Everything that follows from an input: events of the parts acted on, frames moved to
    /// the outputs, the stall limit checked, the end carried out, the timers re-armed.
    fn settle(&mut self, now: Instant) {
        self.pump_media(now);
        self.drain_events(now);
        if self.phase == Phase::Answered {
            self.run_after_playout(now);
        }
        self.transmit(now);
        if self.link.verdict(now) == LinkVerdict::Stalled && self.phase != Phase::Ended {
            let detail = match self.link.ping_age(now) {
                Some(age) if self.link.backlog() < super::upstream::MAX_BACKLOG => {
                    format!("no pong for {}s", age.as_secs())
                }
                _ => format!("{} frames unsent", self.link.backlog()),
            };
            tracing::warn!(call_id = %self.info.call_id, %detail, "realtime upstream not reading: ending the call");
            self.note_error(format!("upstream stalled: {detail}"));
            self.end_call(now, CallEnd::UpstreamStalled);
            if let Some((end, recorded)) = &mut self.end
                && *end == CallEnd::UpstreamStalled
            {
                *recorded = detail;
            }
        }
        if self.phase == Phase::Ended && !self.finished {
            self.wrap_up(now);
        }
        self.sync_timers();
    }

    /// What the session (before the answer) or the bridge reported.
    fn drain_events(&mut self, now: Instant) {
        loop {
            let event = if let Some(bridge) = &mut self.bridge {
                match bridge.poll_event() {
                    Some(event) => event,
                    None => break,
                }
            } else {
                match self.session.as_mut().and_then(Session::poll_event) {
                    Some(event) => BridgeEvent::Session(event),
                    None => break,
                }
            };
            match event {
                BridgeEvent::SessionEnded { reason } => self.session_ended(now, reason),
                BridgeEvent::Session(event) => self.session_event(now, event),
                BridgeEvent::BargeIn(barge_in) => {
                    self.out_pending = None;
                    self.outputs
                        .push_back(Output::Event(CallEvent::BargeIn(barge_in)));
                }
                BridgeEvent::Playout(crate::rtp::playout::PlayoutEvent::ItemStarted(_)) => {
                    self.first_audio_at.get_or_insert(now);
                    if let Some(at) = self.out_pending.take() {
                        self.latency_out.record(now.saturating_duration_since(at));
                    }
                }
                BridgeEvent::Ready { .. } | BridgeEvent::Playout(_) => {}
            }
        }
    }

    /// Moves what the parts have to send to the outputs.
    fn transmit(&mut self, now: Instant) {
        // The upstream: texts, then a ping when one is due (behind them, so its pong proves
        // they were read). Nothing once the call is over: the close follows.
        if self.link.is_open() && self.phase != Phase::Ended {
            loop {
                let text = match &mut self.bridge {
                    Some(bridge) => bridge.poll_ws_transmit(),
                    None => self.session.as_mut().and_then(Session::poll_transmit),
                };
                let Some(text) = text else {
                    break;
                };
                self.link.handed_out();
                self.outputs.push_back(Output::UpstreamSend(text));
            }
            if let Some(payload) = self.link.poll_ping(now) {
                self.outputs.push_back(Output::UpstreamPing(payload));
            }
        }
        // RTP: never after the end.
        if self.phase != Phase::Ended
            && let (Some(bridge), Some(media)) = (&mut self.bridge, &mut self.media)
        {
            while let Some(datagram) = bridge.poll_rtp_transmit() {
                media.rtp_sent(now, &datagram);
                if let Some(to) = media.rtp_target() {
                    self.outputs.push_back(Output::Transmit {
                        socket: Socket::Rtp,
                        to,
                        datagram,
                    });
                }
            }
        }
        self.transmit_rtcp();
    }

    fn transmit_rtcp(&mut self) {
        let Some(media) = &mut self.media else {
            return;
        };
        while let Some(datagram) = media.poll_rtcp() {
            if let Some((socket, to)) = media.rtcp_target() {
                self.outputs.push_back(Output::Transmit {
                    socket,
                    to,
                    datagram,
                });
            }
        }
    }

    /// Re-arms every timer from the parts' deadlines.
    fn sync_timers(&mut self) {
        if self.phase == Phase::Ended {
            self.timers.clear();
            return;
        }
        let t = &mut self.timers;
        t.set(
            Timer::Answer,
            matches!(self.phase, Phase::Connecting | Phase::SettingUp)
                .then_some(self.answer_deadline),
        );
        t.set(Timer::MaxDuration, self.max_deadline);
        t.set(Timer::Drain, self.drain_deadline);
        t.set(Timer::Keepalive, self.link.keepalive_at());
        t.set(Timer::UpstreamStall, self.link.stall_at());
        let session = match &self.bridge {
            Some(bridge) => bridge.session().poll_timeout(),
            None => self.session.as_ref().and_then(Session::poll_timeout),
        };
        t.set(Timer::Session, session);
        t.set(
            Timer::Pacer,
            self.bridge.as_ref().and_then(|b| b.pacer().poll_timeout()),
        );
        let (receiver, dtmf, rtcp) = self
            .media
            .as_ref()
            .map_or((None, None, None), MediaLeg::timeouts);
        t.set(Timer::Receiver, receiver);
        t.set(Timer::Dtmf, dtmf);
        t.set(Timer::Rtcp, rtcp);
        let fill = self.fill_due();
        let after = self
            .after_playout
            .as_ref()
            .and_then(|(_, since)| since.checked_add(AFTER_PLAYOUT_LIMIT));
        let t = &mut self.timers;
        t.set(Timer::Fill, fill);
        t.set(Timer::AfterPlayout, after);
    }

    /// The end, carried out: the WebSocket closed (or its connect cancelled), RTCP's BYE,
    /// the record.
    fn wrap_up(&mut self, now: Instant) {
        match self.link.state() {
            LinkState::Open | LinkState::Connecting => {
                let reason = match self.end.as_ref().map(|(end, _)| *end) {
                    Some(CallEnd::UpstreamStalled) => "upstream not reading",
                    _ => "call ended",
                };
                self.outputs
                    .push_back(Output::UpstreamClose { code: 1000, reason });
            }
            LinkState::Idle | LinkState::Gone => {}
        }
        self.link.gone();
        let ntp = self.ntp(now);
        if let Some(media) = &mut self.media {
            media.close(now, ntp);
        }
        self.transmit_rtcp();
        let record = self.record(now);
        self.outputs.push_back(Output::Finished(Box::new(record)));
        self.finished = true;
        self.timers.clear();
    }

    // ---- session events -----------------------------------------------------------------------

    fn session_event(&mut self, now: Instant, event: SessionEvent) {
        match event {
            SessionEvent::Ready { .. } => {
                if matches!(self.phase, Phase::SettingUp | Phase::Connecting) {
                    self.phase = Phase::Answering;
                    self.outputs
                        .push_back(Output::Signalling(Signalling::Answer));
                }
            }
            SessionEvent::SetupFailed(failure) => {
                let detail = setup_failure_text(&failure);
                self.note_error(detail.clone());
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
            } => self.tool_call(now, call_id, &name, &arguments),
            _ => {}
        }
    }

    fn tool_call(&mut self, now: Instant, call_id: CallId, name: &str, arguments: &str) {
        tracing::info!(call_id = %self.info.call_id, tool = %name, "tool call");
        match tools::invoke(&self.profile, &self.info, call_id, name, arguments) {
            ToolInvocation::Webhook {
                call_id,
                url,
                timeout,
                headers,
                body,
            } => self.outputs.push_back(Output::Webhook(WebhookRequest {
                call_id,
                url,
                timeout,
                headers,
                body,
            })),
            // No output: the call ends after the words already queued.
            ToolInvocation::EndCall { .. } => self.end_after_playout(now),
            ToolInvocation::Transfer { call_id, uri, .. } => {
                let announcement = self.profile.transfer_announcement.clone();
                self.start_transfer(now, uri.as_str(), Some(call_id), announcement.as_deref());
            }
            ToolInvocation::Reject { call_id, output } => self.tool_output(&call_id, output),
        }
    }

    fn session_ended(&mut self, now: Instant, reason: SessionEnd) {
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

    // ---- endings ------------------------------------------------------------------------------

    /// Refuses the INVITE with 503 (or, when the caller already went away, just records).
    fn fail_before_answer(&mut self, now: Instant, end: CallEnd, detail: &str) {
        if self.phase == Phase::Ended || self.phase == Phase::Answered {
            return;
        }
        if self.end.is_none() {
            self.end = Some((end, detail.to_owned()));
        }
        if self.phase == Phase::Answering {
            // The 200 was asked for: the dialog may have sent it (an offerless INVITE waits
            // for its ACK to carry media): end it as answered.
            self.outputs
                .push_back(Output::Signalling(Signalling::HangUp {
                    reason: end.reason_header(detail),
                }));
        } else {
            self.outputs
                .push_back(Output::Signalling(Signalling::Refuse {
                    status: 503,
                    reason: "Service Unavailable",
                    retry_after: Some(self.retry_after.unwrap_or(UPSTREAM_RETRY_AFTER_SECS)),
                }));
        }
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
        let reason = end.reason_header(detail);
        tracing::info!(call_id = %self.info.call_id, %reason, "hanging up");
        self.outputs
            .push_back(Output::Signalling(Signalling::HangUp { reason }));
        self.finish(now);
    }

    fn finish(&mut self, now: Instant) {
        if self.phase == Phase::Ended {
            return;
        }
        self.phase = Phase::Ended;
        self.ended_at = Some(now);
    }

    // ---- internals ------------------------------------------------------------------------------

    /// The wall clock at `now`, derived from the reading at creation.
    fn ntp(&self, now: Instant) -> NtpTime {
        let elapsed = now.saturating_duration_since(self.started);
        let secs = elapsed.as_secs() << 32;
        let frac = (u64::from(elapsed.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime(self.wall_clock.0.wrapping_add(secs | frac))
    }

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

    /// The call's record, as of `now`.
    pub(crate) fn record(&self, now: Instant) -> CallRecord {
        let ended = self.ended_at.unwrap_or(now);
        let stats = self
            .bridge
            .as_ref()
            .map(AudioBridge::stats)
            .unwrap_or_default();
        let session_stats = match &self.bridge {
            Some(bridge) => bridge.session().stats(),
            None => self
                .session
                .as_ref()
                .map(Session::stats)
                .unwrap_or_default(),
        };
        let (end, end_detail) = self
            .end
            .clone()
            .unwrap_or((CallEnd::Signalling, String::new()));
        let packets_sent = self
            .bridge
            .as_ref()
            .map_or(0, |b| b.pacer().stats().packets);
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
            barge_in_reactions: Vec::new(),
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
            latency_in: LatencyHistogram::default(),
            latency_out: self.latency_out.clone(),
            caller_transcript: self.caller_transcript.clone(),
            assistant_transcript: self.assistant_transcript.clone(),
            model_audio_dropped_ms: stats.model_audio_dropped_ms,
            unknown_item_deltas: session_stats.unknown_item_deltas,
            caller_frames_unsent: self.link.audio_unsent(),
            upstream_backlog_max: self.link.backlog_max(),
            media: self.media.as_ref().map(|m| m.summary(packets_sent)),
        }
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
