//! The audio bridge of one call, sans-IO: caller frames (G.711 or Opus) go up to the Realtime
//! session, the model's audio comes down re-framed (and for Opus encoded) into the playout
//! [`Pacer`], and barge-in stops playback at once with an exact account of what the caller
//! heard.
//!
//! ## What it owns
//!
//! One realtime [`Session`] (the WebSocket protocol state) and one [`Pacer`] (the paced RTP
//! clock with the per-item account barge-in needs), for a call whose RTP codec is G.711 (PCMU
//! or PCMA: [`AudioBridge::new`], [`AudioBridge::with_session`]) or Opus
//! ([`AudioBridge::opus`]: 48 kHz RTP clock, 24 kHz mono on our side, see
//! [`crate::audio::opus`]). The WebSocket format is the profile's, resolved for the call's
//! codec ([`AudioFormat::for_codec`]: `auto` is G.711 passthrough on a G.711 call and `pcm16`
//! on an Opus call). The shell feeds it WebSocket text
//! ([`AudioBridge::handle_ws_text`]), received RTP frames
//! ([`AudioBridge::handle_caller_frame`]) and timer expiries
//! ([`AudioBridge::handle_timeout`]), then drains [`AudioBridge::poll_ws_transmit`],
//! [`AudioBridge::poll_rtp_transmit`] and [`AudioBridge::poll_event`] after every call, and
//! sleeps until [`AudioBridge::poll_timeout`]. Time is always an argument.
//!
//! ## Caller side
//!
//! Every frame from the receiver (concealment included, so the service's VAD sees a
//! continuous clock) becomes one `input_audio_buffer.append`. On a G.711 call:
//!
//! - profile format is the call's G.711 law: the octets go through untouched (no decode, no
//!   re-encode: bit-exact);
//! - profile format is `pcm16`: decode, resample 8 kHz -> 24 kHz (160 -> 480 samples), send
//!   little-endian s16;
//! - profile format is the other G.711 law: decode and re-encode.
//!
//! On an Opus call each frame is an Opus packet, or an empty payload where the receiver lost
//! one: the decoder turns it into 24 kHz samples (480 per 20 ms), concealing (PLC) an empty or
//! corrupt payload ([`BridgeStats::caller_frames_concealed`]). With `pcm16` they are sent as
//! little-endian s16 (no resampling at all); with a G.711 format they are resampled 24 kHz ->
//! 8 kHz and encoded (160 octets per 20 ms).
//!
//! Frames before the session is ready are dropped and counted (the service would read them in
//! its default format).
//!
//! ## Model side
//!
//! Audio deltas come in any size (never assume multiples of a frame; a pcm16 delta may even
//! split a sample). They are accumulated per content part `(response_id, item_id,
//! content_index)` as what the call's frames are made of, and every full packet time is
//! pushed to the pacer:
//!
//! - G.711 call: octets of the call's law (24 kHz -> 8 kHz and encode for `pcm16`, transcode
//!   for the other law, as is for the same law); a frame is 160 octets per 20 ms;
//! - Opus call: 24 kHz samples (as is for `pcm16`; decode and 8 kHz -> 24 kHz for a G.711
//!   format); a frame is 480 samples per 20 ms, encoded into one Opus packet.
//!
//! `AudioDone` (or a delta of another part: the model streams one part at a time) pads the
//! remainder with silence (G.711 silence octets, or zero samples before encoding) and pushes
//! it with its real duration, rounded down ([`Pacer::push_partial_frame`]), so a truncate
//! never claims padding, then [`Pacer::finish_part`]. The pacer counts durations in
//! milliseconds, whatever the RTP clock.
//!
//! ## Barge-in (design.md section 3)
//!
//! On `input_audio_buffer.speech_started` with the profile's `interrupt_response = true`, before
//! the call returns:
//!
//! 1. [`Pacer::flush`]: the queue is emptied and the next slot is silence;
//! 2. every response whose audio was queued, being assembled, or active is marked interrupted;
//!    its later deltas are dropped and counted (pushed to the pacer they would start a new
//!    part and play words the model has been told were never said);
//! 3. each flushed part's [`FlushedItem::action`] is applied: `Truncate` sends
//!    `conversation.item.truncate` with what was sent as RTP (the session clamps it to the
//!    audio received), `Delete` sends `conversation.item.delete` (never played; a truncate to 0
//!    can be refused), `Nothing` nothing. A part still being assembled that never reached the
//!    pacer was never heard either and is deleted.
//!
//! The reaction is measured: model frames sent after the event and before the next
//! response's audio starts are counted in [`BridgeStats::frames_after_barge_in`], and the
//! time to the last of them in [`BridgeStats::max_reaction`] (the flush makes both 0). Each
//! [`BargeIn`] event lists the truncate values next to the audio actually sent. Speech while
//! nothing plays and no response is active is not a barge-in: it is passed on as a plain
//! `SpeechStarted`. With `interrupt_response = false` nothing of this happens: playback
//! continues and nothing is truncated (the service does not cancel either).
//!
//! The bridge does not send `response.cancel`: with `interrupt_response = true` the service
//! cancels the response itself. The harmless errors that race with a barge-in (a truncate the
//! service finds "already shorter", `response_cancel_not_active`) are counted, never fatal.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::audio::opus::{self, EncoderConfig, FrameDuration, OpusDecoder, OpusEncoder, OpusError};
use crate::audio::{Downsampler24To8, G711Law, Upsampler8To24};
use crate::config::{AudioFormat, ProfileConfig};
use crate::realtime::{
    EncodedAudio, ItemId, ResponseId, ServerError, Session, SessionEvent, SetupFailure,
};
use crate::rtp::playout::{
    AudioPart, BargeInAction, FlushedItem, PCMA_SILENCE, PCMU_SILENCE, Pacer, PlayoutEvent,
};
use crate::sip::sdp::Codec;

/// Interrupted responses remembered (their late deltas are dropped).
const INTERRUPTED_RESPONSES: usize = 32;
/// Parts cut by the queue limit remembered (their later audio is dropped).
const CUT_PARTS: usize = 32;
/// The default limit of model audio queued for playout (`limits.max_queued_audio`).
pub const DEFAULT_MAX_QUEUED_AUDIO: Duration = Duration::from_secs(120);
/// Bridge events kept when the shell does not drain them; older ones are dropped.
const MAX_EVENTS: usize = 1024;

/// Why an [`AudioBridge`] cannot be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    /// The pacer's frames are not whole G.711 frames (its clock rate is not 8 kHz).
    #[error("the pacer runs at {clock_rate} Hz, not the 8 kHz of G.711")]
    NotG711 {
        /// The pacer's clock rate.
        clock_rate: u32,
    },
    /// The pacer of an Opus call does not run at the 48 kHz RTP clock of Opus.
    #[error("the pacer runs at {clock_rate} Hz, not the 48 kHz RTP clock of Opus")]
    NotOpus {
        /// The pacer's clock rate.
        clock_rate: u32,
    },
    /// The packet time of an Opus call is not one the encoder produces (10, 20, 40, 60 ms).
    #[error("no Opus frames of {ptime:?}")]
    OpusPtime {
        /// The pacer's packet time.
        ptime: Duration,
    },
    /// libopus refused to create the encoder or decoder.
    #[error(transparent)]
    Opus(#[from] OpusError),
}

/// Why the realtime session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// It never became ready.
    SetupFailed(SetupFailure),
    /// The service's maximum session duration.
    Expired,
    /// The socket closed.
    Closed {
        /// Close code, if any.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
    /// A fatal `error` (bad key, quota, repeated server errors, ...).
    Fatal(ServerError),
}

/// What one barge-in did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BargeIn {
    /// When the `speech_started` event was handled.
    pub at: Instant,
    /// `audio_start_ms` of the caller's speech.
    pub audio_start_ms: u64,
    /// The caller's (user) item.
    pub caller_item_id: ItemId,
    /// Model frames thrown away by the flush.
    pub flushed_frames: u64,
    /// Responses marked interrupted.
    pub interrupted: Vec<ResponseId>,
    /// `conversation.item.truncate`s sent.
    pub truncated: Vec<Truncated>,
    /// `conversation.item.delete`s sent.
    pub deleted: Vec<ItemId>,
}

/// One `conversation.item.truncate` of a barge-in: the truncate value next to the audio
/// actually sent (design.md section 3, measure 5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// The assistant item.
    pub item_id: ItemId,
    /// Its content part.
    pub content_index: u32,
    /// Audio of it sent as RTP, in ms.
    pub sent_ms: u64,
    /// The `audio_end_ms` on the wire: `sent_ms`, clamped to the audio the model produced.
    pub audio_end_ms: u64,
}

/// What the bridge reports to the call.
#[derive(Clone, Debug, PartialEq)]
pub enum BridgeEvent {
    /// The session is ready: caller audio flows from now on.
    Ready {
        /// The service's session id.
        session_id: Option<String>,
        /// When the service will end the session (Unix seconds).
        expires_at: Option<u64>,
    },
    /// The caller talked over the model and playback was stopped.
    BargeIn(BargeIn),
    /// The session ended; the shell closes the socket (and usually hangs up).
    SessionEnded {
        /// Why.
        reason: EndReason,
    },
    /// A playout event (item started / finished, queue drained, digit sent).
    Playout(PlayoutEvent),
    /// Any other session event (speech without barge-in, tool calls, transcripts, response
    /// lifecycle, non-fatal errors, ...). Audio deltas are never passed on.
    Session(SessionEvent),
}

/// Counters of one bridge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Caller frames handed to [`AudioBridge::handle_caller_frame`].
    pub caller_frames_in: u64,
    /// Caller frames dropped because the session was not ready (or had ended).
    pub caller_frames_dropped: u64,
    /// Caller frames appended to the session's input buffer.
    pub caller_frames_appended: u64,
    /// Opus calls: caller frames the decoder concealed (lost frames the receiver handed over
    /// empty, and corrupt packets); they are appended like any other.
    pub caller_frames_concealed: u64,
    /// Model frames queued in the pacer (a padded last frame counts as one).
    pub model_frames_queued: u64,
    /// Model frames sent as RTP.
    pub model_frames_sent: u64,
    /// Model frames the pacer or the Opus encoder refused (never expected).
    pub model_frames_rejected: u64,
    /// Audio deltas of interrupted responses, dropped.
    pub late_deltas_dropped: u64,
    /// Model audio not queued because the playout queue held `max_queued_audio`, in ms.
    pub model_audio_dropped_ms: u64,
    /// Parts cut by that limit.
    pub parts_cut: u64,
    /// `input_audio_buffer.speech_started` events.
    pub speech_started: u64,
    /// Barge-ins: speech that stopped model audio (queued, playing, being received) or an
    /// active response, with `interrupt_response = true`.
    pub barge_ins: u64,
    /// `conversation.item.truncate`s sent.
    pub truncates_sent: u64,
    /// `conversation.item.delete`s sent.
    pub deletes_sent: u64,
    /// Truncate errors from the service ("already shorter", ...), or truncates the session
    /// refused to send.
    pub truncate_errors: u64,
    /// `response_cancel_not_active` errors from the service.
    pub cancel_not_active_errors: u64,
    /// Model frames sent after a barge-in before the next response's audio started (the
    /// flush makes it 0).
    pub frames_after_barge_in: u64,
    /// The longest reaction: barge-in event to the last model frame sent after it (zero when
    /// none was; the target is at most one frame).
    pub max_reaction: Duration,
}

/// Audio of one content part on its way to the pacer.
struct Assembly {
    part: AudioPart,
    /// G.711 calls: octets of the call's law not yet a whole frame.
    encoded: Vec<u8>,
    /// Opus calls: 24 kHz samples not yet a whole frame.
    pcm: Vec<i16>,
    /// pcm16: the first byte of a sample split between two deltas.
    odd_byte: Option<u8>,
    /// Frames of this part pushed to the pacer.
    frames_pushed: u64,
}

/// A part that reached the queue limit: the rest of its audio is dropped, so what was queued
/// of it (a prefix) is all the caller hears, and the model is told so once it has played
/// (truncate), or at once when none of it was queued (delete).
struct CutPart {
    part: AudioPart,
    /// Its audio queued before the cut, in ms.
    queued_ms: u64,
}

/// The call's RTP codec, with the conversion state of both directions.
enum CallCodec {
    /// PCMU or PCMA.
    G711(G711Path),
    /// Opus at 24 kHz on our side.
    Opus(Box<OpusPath>),
}

struct G711Path {
    law: G711Law,
    /// Caller side of a pcm16 session: 8 -> 24 kHz.
    upsampler: Upsampler8To24,
    /// Model side of a pcm16 session: 24 -> 8 kHz.
    downsampler: Downsampler24To8,
}

struct OpusPath {
    decoder: OpusDecoder,
    encoder: OpusEncoder,
    /// Caller side of a G.711 session: 24 -> 8 kHz.
    downsampler: Downsampler24To8,
    /// Model side of a G.711 session: 8 -> 24 kHz.
    upsampler: Upsampler8To24,
}

impl CallCodec {
    /// Forgets the model side's resampler history: after a flush the next audio is another
    /// response's, and must not start with the tail of the interrupted one.
    fn reset_model_side(&mut self) {
        match self {
            CallCodec::G711(path) => path.downsampler.reset(),
            CallCodec::Opus(path) => path.upsampler.reset(),
        }
    }
}

/// The audio path of one call (G.711 or Opus). See the module documentation.
pub struct AudioBridge {
    session: Session,
    pacer: Pacer,
    codec: CallCodec,
    format: AudioFormat,
    interrupt_response: bool,
    /// One packet time of model audio as it is assembled: G.711 octets, or 24 kHz samples for
    /// Opus.
    frame_len: usize,
    frame_ms: u64,

    pcm: Vec<i16>,
    pcm24: Vec<i16>,
    bytes: Vec<u8>,

    assembly: Option<Assembly>,
    interrupted: VecDeque<ResponseId>,
    /// `max_queued_audio` in ms.
    max_queued_ms: u64,
    cut: VecDeque<CutPart>,
    /// After a barge-in, until the next non-interrupted part starts playing: when it came
    /// (model frames sent meanwhile count against the reaction).
    barge_in_at: Option<Instant>,
    ended: bool,
    events: VecDeque<BridgeEvent>,
    stats: BridgeStats,
}

impl AudioBridge {
    /// A bridge for a call whose RTP uses `law`, with a new session for `profile` (connected,
    /// or connecting, at `now`) and `pacer` (configured for that law: payload type, silence).
    /// The session is configured with the profile's format resolved for the call's codec.
    #[cfg(test)]
    pub fn new(
        profile: &ProfileConfig,
        dialect: crate::realtime::Dialect,
        law: G711Law,
        pacer: Pacer,
        now: Instant,
    ) -> Result<AudioBridge, BridgeError> {
        let mut resolved = profile.clone();
        resolved.audio_format = profile.audio_format.for_codec(g711_codec(law));
        let session = Session::new(&resolved, dialect, now);
        AudioBridge::with_session(profile, session, law, pacer)
    }

    /// A bridge around an existing `session` (for a custom setup timeout, say). Build
    /// `session` from a profile whose format is resolved for the call
    /// ([`AudioFormat::for_codec`]), as [`AudioBridge::new`] does, so both agree.
    pub fn with_session(
        profile: &ProfileConfig,
        session: Session,
        law: G711Law,
        pacer: Pacer,
    ) -> Result<AudioBridge, BridgeError> {
        let clock_rate = pacer.config().clock_rate;
        if clock_rate != 8000 {
            return Err(BridgeError::NotG711 { clock_rate });
        }
        let frame_len = usize::try_from(pacer.samples_per_frame()).unwrap_or(usize::MAX);
        let path = G711Path {
            law,
            upsampler: Upsampler8To24::new(),
            downsampler: Downsampler24To8::new(),
        };
        Ok(AudioBridge::assemble(
            profile,
            session,
            pacer,
            CallCodec::G711(path),
            profile.audio_format.for_codec(g711_codec(law)),
            frame_len,
        ))
    }

    /// A bridge for an Opus call around `session`, with `pacer` configured by
    /// [`PacerConfig::for_negotiated`](crate::rtp::playout::PacerConfig::for_negotiated) for
    /// the negotiated Opus stream (48 kHz RTP clock,
    /// [`OPUS_SILENCE`](crate::rtp::playout::OPUS_SILENCE)). The WebSocket format
    /// is `profile.audio_format` resolved for Opus (`auto` is `pcm16`); build `session` from a
    /// profile carrying that resolved format so both agree. The packet time must be one the
    /// encoder produces (10, 20, 40 or 60 ms).
    pub fn opus(
        profile: &ProfileConfig,
        session: Session,
        pacer: Pacer,
    ) -> Result<AudioBridge, BridgeError> {
        let clock_rate = pacer.config().clock_rate;
        if clock_rate != opus::RTP_CLOCK_RATE {
            return Err(BridgeError::NotOpus { clock_rate });
        }
        let ptime = pacer.config().ptime;
        let frame = [
            FrameDuration::Ms10,
            FrameDuration::Ms20,
            FrameDuration::Ms40,
            FrameDuration::Ms60,
        ]
        .into_iter()
        .find(|frame| Duration::from_millis(u64::from(frame.millis())) == ptime)
        .ok_or(BridgeError::OpusPtime { ptime })?;
        let encoder = OpusEncoder::new(EncoderConfig {
            frame,
            ..EncoderConfig::default()
        })?;
        let frame_len = encoder.frame_samples();
        let path = OpusPath {
            decoder: OpusDecoder::new()?,
            encoder,
            downsampler: Downsampler24To8::new(),
            upsampler: Upsampler8To24::new(),
        };
        Ok(AudioBridge::assemble(
            profile,
            session,
            pacer,
            CallCodec::Opus(Box::new(path)),
            profile.audio_format.for_codec(Codec::Opus),
            frame_len,
        ))
    }

    fn assemble(
        profile: &ProfileConfig,
        session: Session,
        pacer: Pacer,
        codec: CallCodec,
        format: AudioFormat,
        frame_len: usize,
    ) -> AudioBridge {
        let frame_ms = u64::try_from(pacer.config().ptime.as_millis()).unwrap_or(u64::MAX);
        AudioBridge {
            session,
            pacer,
            codec,
            format,
            interrupt_response: profile.turn_detection.interrupt_response(),
            frame_len,
            frame_ms,
            pcm: Vec::new(),
            pcm24: Vec::new(),
            bytes: Vec::new(),
            assembly: None,
            interrupted: VecDeque::new(),
            max_queued_ms: duration_ms(DEFAULT_MAX_QUEUED_AUDIO),
            cut: VecDeque::new(),
            barge_in_at: None,
            ended: false,
            events: VecDeque::new(),
            stats: BridgeStats::default(),
        }
    }

    /// The realtime session, for commands (`create_response` for a greeting, tool outputs).
    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The realtime session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The pacer, for DTMF and hold.
    pub fn pacer_mut(&mut self) -> &mut Pacer {
        &mut self.pacer
    }

    /// The pacer.
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    /// The format on the WebSocket: the profile's, resolved for the call's codec.
    #[cfg(test)]
    pub fn audio_format(&self) -> AudioFormat {
        self.format
    }

    /// Caps the model audio queued for playout (`limits.max_queued_audio`; default
    /// [`DEFAULT_MAX_QUEUED_AUDIO`]). Audio beyond it is dropped and counted
    /// ([`BridgeStats::model_audio_dropped_ms`]); the part it belongs to is cut there (see
    /// the module documentation).
    pub fn set_max_queued_audio(&mut self, limit: Duration) {
        self.max_queued_ms = duration_ms(limit).max(self.frame_ms);
    }

    /// The counters so far.
    pub fn stats(&self) -> BridgeStats {
        BridgeStats {
            model_frames_sent: self.pacer.stats().audio_frames,
            ..self.stats
        }
    }

    // ---- caller side ------------------------------------------------------------------------

    /// One frame of caller audio: the RTP payload in the call's codec. For G.711 the receiver
    /// hands concealed frames over as payloads too; for Opus it hands over an empty payload
    /// for a lost frame, which the decoder conceals (as it does a corrupt packet). See the
    /// module documentation.
    pub fn handle_caller_frame(&mut self, _now: Instant, payload: &[u8]) {
        self.stats.caller_frames_in += 1;
        if !self.session.is_ready() {
            self.stats.caller_frames_dropped += 1;
            return;
        }
        match &mut self.codec {
            CallCodec::G711(path) => match (self.format, path.law) {
                // `Auto` was resolved at construction; on a G.711 call it is passthrough.
                (AudioFormat::G711Ulaw, G711Law::Ulaw)
                | (AudioFormat::G711Alaw, G711Law::Alaw)
                | (AudioFormat::Auto, _) => {
                    self.session.append_audio(payload);
                }
                (AudioFormat::Pcm16, law) => {
                    self.pcm.clear();
                    self.pcm24.clear();
                    self.bytes.clear();
                    law.decode_into(payload, &mut self.pcm);
                    path.upsampler.process(&self.pcm, &mut self.pcm24);
                    self.bytes
                        .extend(self.pcm24.iter().flat_map(|sample| sample.to_le_bytes()));
                    self.session.append_audio(&self.bytes);
                }
                (AudioFormat::G711Ulaw, G711Law::Alaw) | (AudioFormat::G711Alaw, G711Law::Ulaw) => {
                    self.pcm.clear();
                    self.bytes.clear();
                    path.law.decode_into(payload, &mut self.pcm);
                    other_law(path.law).encode_into(&self.pcm, &mut self.bytes);
                    self.session.append_audio(&self.bytes);
                }
            },
            CallCodec::Opus(path) => {
                self.pcm24.clear();
                let corrupt_before = path.decoder.stats().corrupt;
                if payload.is_empty() {
                    path.decoder.conceal(&mut self.pcm24);
                } else {
                    path.decoder.decode_or_conceal(payload, &mut self.pcm24);
                }
                if payload.is_empty() || path.decoder.stats().corrupt > corrupt_before {
                    self.stats.caller_frames_concealed += 1;
                }
                self.bytes.clear();
                match session_law(self.format) {
                    Some(law) => {
                        self.pcm.clear();
                        path.downsampler.process(&self.pcm24, &mut self.pcm);
                        law.encode_into(&self.pcm, &mut self.bytes);
                    }
                    None => self
                        .bytes
                        .extend(self.pcm24.iter().flat_map(|sample| sample.to_le_bytes())),
                }
                self.session.append_audio(&self.bytes);
            }
        }
        self.stats.caller_frames_appended += 1;
    }

    // ---- model side -------------------------------------------------------------------------

    /// One WebSocket text frame from the service.
    pub fn handle_ws_text(&mut self, now: Instant, text: &str) {
        self.session.handle_text(now, text);
        self.drain_session(now);
        self.drain_pacer_events();
    }

    /// The WebSocket closed.
    pub fn handle_ws_closed(&mut self, now: Instant, code: Option<u16>, reason: &str) {
        self.session.handle_closed(now, code, reason);
        self.drain_session(now);
    }

    /// When [`AudioBridge::handle_timeout`] must run next: the earlier of the pacer's next
    /// slot and the session's deadline.
    #[cfg(test)]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.pacer.poll_timeout(), self.session.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs the session's deadlines and every pacer slot due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now);
        self.drain_session(now);
        let before = self.pacer.stats().audio_frames;
        self.pacer.handle_timeout(now);
        let after = self.pacer.stats().audio_frames;
        self.drain_pacer_events_measuring(Some(now), after.saturating_sub(before));
    }

    /// The next WebSocket text frame to send.
    pub fn poll_ws_transmit(&mut self) -> Option<String> {
        self.session.poll_transmit()
    }

    /// The next RTP datagram to send.
    pub fn poll_rtp_transmit(&mut self) -> Option<Vec<u8>> {
        self.pacer.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.events.pop_front()
    }

    fn emit(&mut self, event: BridgeEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn end(&mut self, reason: EndReason) {
        if !self.ended {
            self.ended = true;
            self.emit(BridgeEvent::SessionEnded { reason });
        }
    }

    fn drain_session(&mut self, now: Instant) {
        while let Some(event) = self.session.poll_event() {
            self.handle_session_event(now, event);
        }
    }

    fn handle_session_event(&mut self, now: Instant, event: SessionEvent) {
        match event {
            SessionEvent::Ready {
                session_id,
                expires_at,
            } => self.emit(BridgeEvent::Ready {
                session_id,
                expires_at,
            }),
            SessionEvent::SetupFailed(failure) => self.end(EndReason::SetupFailed(failure)),
            SessionEvent::Expired => self.end(EndReason::Expired),
            SessionEvent::Closed { code, reason } => self.end(EndReason::Closed { code, reason }),
            SessionEvent::AudioDelta {
                response_id,
                item_id,
                content_index,
                audio,
            } => self.handle_audio_delta(
                AudioPart {
                    response_id,
                    item_id,
                    content_index,
                },
                &audio,
            ),
            SessionEvent::AudioDone {
                response_id,
                item_id,
                content_index,
            } => self.handle_audio_done(AudioPart {
                response_id,
                item_id,
                content_index,
            }),
            SessionEvent::SpeechStarted {
                audio_start_ms,
                item_id,
            } => {
                self.stats.speech_started += 1;
                if !(self.interrupt_response && self.barge_in(now, audio_start_ms, &item_id)) {
                    self.emit(BridgeEvent::Session(SessionEvent::SpeechStarted {
                        audio_start_ms,
                        item_id,
                    }));
                }
            }
            SessionEvent::Error(error) if error.fatal => self.end(EndReason::Fatal(error)),
            SessionEvent::Error(error) => {
                if is_truncate_error(&error) {
                    self.stats.truncate_errors += 1;
                    tracing::debug!(message = %error.message, "truncate refused by the service");
                } else if error.code.as_deref() == Some("response_cancel_not_active") {
                    self.stats.cancel_not_active_errors += 1;
                    tracing::debug!("no active response to cancel");
                }
                self.emit(BridgeEvent::Session(SessionEvent::Error(error)));
            }
            other => self.emit(BridgeEvent::Session(other)),
        }
    }

    fn is_interrupted(&self, response_id: &ResponseId) -> bool {
        self.interrupted.contains(response_id)
    }

    fn mark_interrupted(&mut self, response_id: &ResponseId, marked: &mut Vec<ResponseId>) {
        if self.is_interrupted(response_id) {
            return;
        }
        if self.interrupted.len() >= INTERRUPTED_RESPONSES {
            self.interrupted.pop_front();
        }
        self.interrupted.push_back(response_id.clone());
        marked.push(response_id.clone());
    }

    fn handle_audio_delta(&mut self, part: AudioPart, audio: &EncodedAudio) {
        if self.is_interrupted(&part.response_id) {
            self.stats.late_deltas_dropped += 1;
            return;
        }
        if self.is_cut(&part) {
            self.drop_model_bytes(audio.len());
            return;
        }
        if self.assembly.as_ref().is_some_and(|a| a.part != part) {
            self.finish_assembly();
        }
        let mut assembly = self.assembly.take().unwrap_or_else(|| Assembly {
            part,
            encoded: Vec::new(),
            pcm: Vec::new(),
            odd_byte: None,
            frames_pushed: 0,
        });
        // Piece by piece, so a delta of any size never holds more than the queue limit.
        let rest = audio.for_each_chunk(|piece| {
            self.convert_model_audio(&mut assembly, piece);
            self.push_whole_frames(&mut assembly);
            !self.is_cut(&assembly.part)
        });
        self.drop_model_bytes(rest);
        self.assembly = Some(assembly);
    }

    /// Counts `bytes` of model audio (in the session's format) as dropped.
    fn drop_model_bytes(&mut self, bytes: usize) {
        let per_ms: u64 = match session_law(self.format) {
            Some(_) => 8,
            None => 48,
        };
        let ms = u64::try_from(bytes).unwrap_or(u64::MAX) / per_ms;
        self.stats.model_audio_dropped_ms = self.stats.model_audio_dropped_ms.saturating_add(ms);
    }

    fn is_cut(&self, part: &AudioPart) -> bool {
        self.cut.iter().any(|c| &c.part == part)
    }

    /// Whether one more frame fits under the queue limit; when not, `assembly`'s part is cut
    /// there and its unqueued remainder dropped.
    fn room_for_frame(&mut self, assembly: &mut Assembly) -> bool {
        if self.pacer.queued_ms().saturating_add(self.frame_ms) <= self.max_queued_ms {
            return true;
        }
        if !self.is_cut(&assembly.part) {
            if self.cut.len() >= CUT_PARTS {
                self.cut.pop_front();
            }
            self.stats.parts_cut += 1;
            tracing::warn!(item = %assembly.part.item_id, limit_ms = self.max_queued_ms,
                "model audio beyond limits.max_queued_audio: the rest of this item is dropped");
            self.cut.push_back(CutPart {
                part: assembly.part.clone(),
                queued_ms: assembly.frames_pushed.saturating_mul(self.frame_ms),
            });
        }
        let held = match self.codec {
            CallCodec::G711(_) => assembly.encoded.len(),
            CallCodec::Opus(_) => assembly.pcm.len(),
        };
        let frame_len = u64::try_from(self.frame_len.max(1)).unwrap_or(u64::MAX);
        let held_ms = u64::try_from(held).unwrap_or(u64::MAX) * self.frame_ms / frame_len;
        self.stats.model_audio_dropped_ms =
            self.stats.model_audio_dropped_ms.saturating_add(held_ms);
        assembly.encoded.clear();
        assembly.pcm.clear();
        assembly.odd_byte = None;
        false
    }

    /// Converts model audio in the profile's format to what the call's frames are made of,
    /// appending to the assembly: octets of the call's law (G.711), 24 kHz samples (Opus).
    fn convert_model_audio(&mut self, assembly: &mut Assembly, audio: &[u8]) {
        match &mut self.codec {
            CallCodec::G711(path) => match (self.format, path.law) {
                // `Auto` was resolved at construction; on a G.711 call it is passthrough.
                (AudioFormat::G711Ulaw, G711Law::Ulaw)
                | (AudioFormat::G711Alaw, G711Law::Alaw)
                | (AudioFormat::Auto, _) => {
                    assembly.encoded.extend_from_slice(audio);
                }
                (AudioFormat::G711Ulaw, G711Law::Alaw) | (AudioFormat::G711Alaw, G711Law::Ulaw) => {
                    self.pcm.clear();
                    other_law(path.law).decode_into(audio, &mut self.pcm);
                    path.law.encode_into(&self.pcm, &mut assembly.encoded);
                }
                (AudioFormat::Pcm16, law) => {
                    self.pcm24.clear();
                    pcm16_samples(&mut assembly.odd_byte, audio, &mut self.pcm24);
                    self.pcm.clear();
                    path.downsampler.process(&self.pcm24, &mut self.pcm);
                    law.encode_into(&self.pcm, &mut assembly.encoded);
                }
            },
            CallCodec::Opus(path) => match session_law(self.format) {
                Some(law) => {
                    self.pcm.clear();
                    law.decode_into(audio, &mut self.pcm);
                    path.upsampler.process(&self.pcm, &mut assembly.pcm);
                }
                // `Auto` was resolved at construction; on an Opus call it is pcm16.
                None => pcm16_samples(&mut assembly.odd_byte, audio, &mut assembly.pcm),
            },
        }
    }

    /// Pushes every whole frame of the assembly to the pacer (encoded, for Opus) and keeps the
    /// remainder.
    fn push_whole_frames(&mut self, assembly: &mut Assembly) {
        if self.frame_len == 0 {
            return;
        }
        match &mut self.codec {
            CallCodec::G711(_) => {
                let mut pushed = 0;
                while assembly.encoded.len().saturating_sub(pushed) >= self.frame_len {
                    if self.pacer.queued_ms().saturating_add(self.frame_ms) > self.max_queued_ms {
                        assembly.encoded.drain(..pushed);
                        self.room_for_frame(assembly);
                        return;
                    }
                    let frame = assembly
                        .encoded
                        .get(pushed..pushed + self.frame_len)
                        .unwrap_or_default();
                    if queue_frame(
                        &mut self.pacer,
                        &mut self.stats,
                        &assembly.part,
                        frame,
                        None,
                    ) {
                        assembly.frames_pushed += 1;
                    }
                    pushed += self.frame_len;
                }
                assembly.encoded.drain(..pushed);
            }
            CallCodec::Opus(path) => {
                if assembly.pcm.len() >= self.frame_len
                    && self.pacer.queued_ms().saturating_add(self.frame_ms) > self.max_queued_ms
                {
                    self.room_for_frame(assembly);
                    return;
                }
                let room = self.max_queued_ms.saturating_sub(self.pacer.queued_ms())
                    / self.frame_ms.max(1);
                let fits = usize::try_from(room)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(self.frame_len);
                let take = assembly.pcm.len().min(fits);
                let mut frames = assembly
                    .pcm
                    .get(..take)
                    .unwrap_or_default()
                    .chunks_exact(self.frame_len);
                for frame in &mut frames {
                    self.bytes.clear();
                    if let Err(error) = path.encoder.encode(frame, &mut self.bytes) {
                        self.stats.model_frames_rejected += 1;
                        tracing::warn!(%error, "model frame refused by the Opus encoder");
                        continue;
                    }
                    if queue_frame(
                        &mut self.pacer,
                        &mut self.stats,
                        &assembly.part,
                        &self.bytes,
                        None,
                    ) {
                        assembly.frames_pushed += 1;
                    }
                }
                let whole = take.saturating_sub(frames.remainder().len());
                assembly.pcm.drain(..whole);
                if assembly.pcm.len() >= self.frame_len {
                    self.room_for_frame(assembly);
                }
            }
        }
    }

    fn handle_audio_done(&mut self, part: AudioPart) {
        if self.is_interrupted(&part.response_id) {
            return;
        }
        if self.assembly.as_ref().is_some_and(|a| a.part == part) {
            self.finish_assembly();
        } else {
            self.pacer.finish_part(&part);
        }
    }

    /// Pushes the assembly's remainder as a padded last frame carrying its real duration, and
    /// tells the pacer the part is complete.
    fn finish_assembly(&mut self) {
        let Some(mut assembly) = self.assembly.take() else {
            return;
        };
        if let Some(cut) = self.cut.iter().find(|c| c.part == assembly.part) {
            // Nothing of it queued: the caller hears none of it, so the model must not think
            // it said it. Else it is truncated once what was queued has played.
            if cut.queued_ms == 0 {
                let item = assembly.part.item_id.clone();
                self.delete(&item, &mut Vec::new());
            }
            self.pacer.finish_part(&assembly.part);
            return;
        }
        let frame_len = self.frame_len;
        let rest = match self.codec {
            CallCodec::G711(_) => assembly.encoded.len(),
            CallCodec::Opus(_) => assembly.pcm.len(),
        };
        if rest > 0 && frame_len > 0 {
            // The real duration, rounded down: a truncate never claims padding.
            let audio_ms = u64::try_from(rest)
                .unwrap_or(u64::MAX)
                .saturating_mul(self.frame_ms)
                / u64::try_from(frame_len).unwrap_or(u64::MAX);
            let audio_ms = Some(u16::try_from(audio_ms).unwrap_or(u16::MAX));
            match &mut self.codec {
                CallCodec::G711(path) => {
                    let silence = match path.law {
                        G711Law::Ulaw => PCMU_SILENCE,
                        G711Law::Alaw => PCMA_SILENCE,
                    };
                    assembly.encoded.resize(frame_len, silence);
                    queue_frame(
                        &mut self.pacer,
                        &mut self.stats,
                        &assembly.part,
                        &assembly.encoded,
                        audio_ms,
                    );
                }
                CallCodec::Opus(path) => {
                    assembly.pcm.resize(frame_len, 0);
                    self.bytes.clear();
                    match path.encoder.encode(&assembly.pcm, &mut self.bytes) {
                        Ok(_) => {
                            queue_frame(
                                &mut self.pacer,
                                &mut self.stats,
                                &assembly.part,
                                &self.bytes,
                                audio_ms,
                            );
                        }
                        Err(error) => {
                            self.stats.model_frames_rejected += 1;
                            tracing::warn!(%error, "model frame refused by the Opus encoder");
                        }
                    }
                }
            }
        }
        self.pacer.finish_part(&assembly.part);
    }

    // ---- barge-in ---------------------------------------------------------------------------

    /// Stops playback (see the module documentation). Returns whether anything was
    /// interrupted; speech while nothing plays and no response is active is no barge-in.
    fn barge_in(&mut self, now: Instant, audio_start_ms: u64, caller_item_id: &ItemId) -> bool {
        let flushed_before = self.pacer.stats().flushed_frames;
        let flushed = self.pacer.flush();
        let flushed_frames = self
            .pacer
            .stats()
            .flushed_frames
            .saturating_sub(flushed_before);
        self.codec.reset_model_side();

        let mut marked = Vec::new();
        for item in &flushed {
            self.mark_interrupted(&item.part.response_id, &mut marked);
        }
        // A part still assembling that never reached the pacer was never heard.
        let mut unheard: Vec<AudioPart> = Vec::new();
        if let Some(assembly) = self.assembly.take() {
            self.mark_interrupted(&assembly.part.response_id, &mut marked);
            if assembly.frames_pushed == 0 && !flushed.iter().any(|f| f.part == assembly.part) {
                unheard.push(assembly.part);
            }
        }
        if let Some(active) = self.session.active_response().cloned() {
            self.mark_interrupted(&active, &mut marked);
        }

        if flushed.is_empty() && marked.is_empty() {
            self.drain_pacer_events();
            return false;
        }
        self.stats.barge_ins += 1;
        self.barge_in_at = Some(now);

        let mut truncated = Vec::new();
        let mut deleted: Vec<ItemId> = Vec::new();
        for item in &flushed {
            self.apply(item, &mut truncated, &mut deleted);
        }
        for part in unheard {
            self.delete(&part.item_id, &mut deleted);
        }
        tracing::debug!(
            flushed_frames,
            truncates = truncated.len(),
            deletes = deleted.len(),
            "barge-in"
        );
        self.emit(BridgeEvent::BargeIn(BargeIn {
            at: now,
            audio_start_ms,
            caller_item_id: caller_item_id.clone(),
            flushed_frames,
            interrupted: marked,
            truncated,
            deleted,
        }));
        self.drain_pacer_events();
        true
    }

    fn apply(
        &mut self,
        item: &FlushedItem,
        truncated: &mut Vec<Truncated>,
        deleted: &mut Vec<ItemId>,
    ) {
        match item.action() {
            BargeInAction::Truncate { audio_end_ms } => {
                let part = &item.part;
                let wire_ms = self
                    .session
                    .received_ms(&part.item_id, part.content_index)
                    .map_or(audio_end_ms, |received| audio_end_ms.min(received));
                match self
                    .session
                    .truncate(&part.item_id, part.content_index, audio_end_ms)
                {
                    Ok(()) => {
                        self.stats.truncates_sent += 1;
                        truncated.push(Truncated {
                            item_id: part.item_id.clone(),
                            content_index: part.content_index,
                            sent_ms: item.sent_ms,
                            audio_end_ms: wire_ms,
                        });
                    }
                    Err(error) => {
                        self.stats.truncate_errors += 1;
                        tracing::debug!(%error, item = %part.item_id, "truncate not sent");
                    }
                }
            }
            BargeInAction::Delete => self.delete(&item.part.item_id, deleted),
            BargeInAction::Nothing => {}
        }
    }

    fn delete(&mut self, item_id: &ItemId, deleted: &mut Vec<ItemId>) {
        if deleted.contains(item_id) {
            return;
        }
        match self.session.delete_item(item_id) {
            Ok(()) => {
                self.stats.deletes_sent += 1;
                deleted.push(item_id.clone());
            }
            Err(error) => tracing::debug!(%error, item = %item_id, "delete not sent"),
        }
    }

    fn drain_pacer_events(&mut self) {
        self.drain_pacer_events_measuring(None, 0);
    }

    /// Passes pacer events on; `sent` model frames just left. While a barge-in's reaction is
    /// measured, frames sent before a new (not interrupted) part starts count against it.
    fn drain_pacer_events_measuring(&mut self, now: Option<Instant>, sent: u64) {
        let mut new_part_started = false;
        while let Some(event) = self.pacer.poll_event() {
            if let PlayoutEvent::ItemStarted(part) = &event
                && !self.is_interrupted(&part.response_id)
            {
                new_part_started = true;
            }
            if let PlayoutEvent::ItemFinished { part, sent_ms } = &event
                && let Some(at) = self.cut.iter().position(|c| &c.part == part)
            {
                // Played as far as it was queued: that is where the caller's hearing ends.
                self.cut.remove(at);
                match self
                    .session
                    .truncate(&part.item_id, part.content_index, *sent_ms)
                {
                    Ok(()) => self.stats.truncates_sent += 1,
                    Err(error) => {
                        self.stats.truncate_errors += 1;
                        tracing::debug!(%error, item = %part.item_id, "truncate not sent");
                    }
                }
            }
            self.emit(BridgeEvent::Playout(event));
        }
        if let Some(at) = self.barge_in_at {
            if new_part_started {
                self.barge_in_at = None;
            } else if sent > 0 {
                self.stats.frames_after_barge_in =
                    self.stats.frames_after_barge_in.saturating_add(sent);
                if let Some(now) = now {
                    let reaction = now.saturating_duration_since(at);
                    self.stats.max_reaction = self.stats.max_reaction.max(reaction);
                }
            }
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Queues one encoded frame of `part`: a whole packet time, or a padded last frame carrying
/// `audio_ms` of the model's audio. Returns whether the pacer took it.
fn queue_frame(
    pacer: &mut Pacer,
    stats: &mut BridgeStats,
    part: &AudioPart,
    payload: &[u8],
    audio_ms: Option<u16>,
) -> bool {
    let result = match audio_ms {
        None => pacer.push_frame(part, payload),
        Some(ms) => pacer.push_partial_frame(part, payload, ms),
    };
    match result {
        Ok(()) => {
            stats.model_frames_queued += 1;
            true
        }
        Err(error) => {
            stats.model_frames_rejected += 1;
            tracing::warn!(%error, "model frame refused by the pacer");
            false
        }
    }
}

/// Appends the s16le samples of `audio` to `out`; a byte left over (a sample split between
/// two deltas) waits in `odd_byte` for the next delta.
fn pcm16_samples(odd_byte: &mut Option<u8>, audio: &[u8], out: &mut Vec<i16>) {
    let mut rest = audio;
    if let Some(low) = odd_byte.take() {
        match rest.split_first() {
            Some((&high, tail)) => {
                out.push(i16::from_le_bytes([low, high]));
                rest = tail;
            }
            None => *odd_byte = Some(low),
        }
    }
    let mut samples = rest.chunks_exact(2);
    out.extend((&mut samples).map(|pair| match pair {
        [low, high] => i16::from_le_bytes([*low, *high]),
        _ => 0,
    }));
    if let Some(&last) = samples.remainder().first() {
        *odd_byte = Some(last);
    }
}

/// The G.711 law of a session format, `None` for pcm16 (and an unresolved `Auto`, which
/// means pcm16 where no call decides).
fn session_law(format: AudioFormat) -> Option<G711Law> {
    match format {
        AudioFormat::G711Ulaw => Some(G711Law::Ulaw),
        AudioFormat::G711Alaw => Some(G711Law::Alaw),
        AudioFormat::Pcm16 | AudioFormat::Auto => None,
    }
}

fn g711_codec(law: G711Law) -> Codec {
    match law {
        G711Law::Ulaw => Codec::Pcmu,
        G711Law::Alaw => Codec::Pcma,
    }
}

fn other_law(law: G711Law) -> G711Law {
    match law {
        G711Law::Ulaw => G711Law::Alaw,
        G711Law::Alaw => G711Law::Ulaw,
    }
}

/// The service refused a truncate: it names our `conversation.item.truncate`, or (as it does
/// for "already shorter") names nothing but says so.
fn is_truncate_error(error: &ServerError) -> bool {
    error.caused_by == Some("conversation.item.truncate")
        || error.message.contains("already shorter")
}

#[cfg(test)]
mod tests;
