//! The playout pacer, sans-IO: the model's audio, queued as encoded frames, goes out as RTP
//! at exactly one packet per packet time, and on barge-in the queue is emptied at once with an
//! exact account of what the caller heard.
//!
//! ## Why it looks like this
//!
//! The model streams audio faster than real time, so the bridge buffers it and paces it out.
//! The pacer is the only place that knows how much of each assistant item has *actually left
//! as RTP*, which is what `conversation.item.truncate` must report on barge-in (design.md
//! section 3). So the queue is not just bytes: every frame is tagged with its [`AudioPart`]
//! (`response_id`, `item_id`, `content_index`), and per part the pacer keeps `received_ms`
//! (queued from the model) and `sent_ms` (sent as RTP).
//!
//! ## Clock
//!
//! Slot `n` (one packet time each, 20 ms for every codec we negotiate) is due at the absolute
//! deadline `start + n * ptime`, computed from `n`, never by adding 20 ms to the previous
//! wake-up, so the stream does not drift however late the shell's timer fires. Its RTP
//! timestamp is `first_timestamp + n * samples_per_frame` (mod 2^32): the timestamp advances
//! by exactly one frame per slot, whatever the slot carried (audio, silence, DTMF, or nothing
//! while on hold or skipped). The sequence number advances by one per packet actually sent,
//! so receivers see no loss where we sent nothing on purpose.
//!
//! [`Pacer::poll_timeout`] is the next slot's deadline; [`Pacer::handle_timeout`] runs every
//! slot that is due.
//!
//! ## Late wake-ups (catch-up policy)
//!
//! If the shell wakes late, the slots it missed are sent at once, in order, as long as their
//! deadline is at most `max_lateness` (default 100 ms, [`DEFAULT_MAX_LATENESS`]) before `now`:
//! a receiver's jitter buffer absorbs a short burst, and the stream stays gap-free. Slots
//! older than that are *skipped*: no packet, but their timestamps are used up, so the stream
//! re-joins real time; a long stall therefore bursts at most `max_lateness / ptime + 1` packets
//! (six), never seconds of audio. A skipped slot does not consume queued audio: the model's
//! audio was ahead of real time anyway, so the caller hears a gap rather than losing words,
//! and `sent_ms` still counts only audio that left. The first packet after a skip carries the
//! marker bit, as after any pause in sending, so jitter buffers re-synchronise.
//!
//! ## Silence and talkspurts
//!
//! With nothing queued the pacer sends the configured silence payload (PCMU `0xFF`, PCMA
//! `0xD5` per octet), so the stream stays continuous: NATs stay open and PBX media timeouts
//! do not fire. The marker bit is set on the first model frame after anything that was not
//! model audio (silence, DTMF, the start of the stream) and on the first packet after a pause
//! in sending (hold, skipped slots), as RFC 3551 section 4.1 asks.
//!
//! ## Barge-in
//!
//! [`Pacer::flush`] empties the queue immediately (not at the next slot) and returns, for
//! every part not yet fully played, `sent_ms` and `received_ms` ([`FlushedItem::action`]
//! turns that into truncate / delete / nothing). The next packet out is silence even if new
//! audio is queued before it. Late deltas of an interrupted response must be dropped by the
//! `Call` (it knows which response was interrupted); pushed here they would start a new part.
//!
//! ## Parts, completion and events
//!
//! Parts play in the order their first frame was queued. A part is *complete* when the model
//! has finished it: [`Pacer::finish_part`] says so explicitly (`response.output_audio.done`),
//! and queuing audio for a new part completes every earlier one (the model streams one audio
//! part at a time). [`PlayoutEvent::ItemStarted`] comes with a part's first frame sent,
//! [`PlayoutEvent::ItemFinished`] once it is complete and all its frames are sent (a part that
//! ran dry while the model is still producing it is not finished, and a flush reports it for
//! truncation), and [`PlayoutEvent::Drained`] when the last queued frame leaves (e.g. to hang
//! up after a goodbye). Finished parts are forgotten.
//!
//! ## Hold
//!
//! [`Pacer::set_direction`] takes our negotiated direction. When it does not send
//! (`recvonly`/`inactive`, i.e. the peer holds us) slots still pass and use up their
//! timestamps, but nothing is sent and the queue does not advance; on resume the sequence
//! continues from the last packet sent and the first packet carries the marker bit. DTMF
//! queued or in progress is dropped at hold: the peer does not want our media.
//!
//! ## DTMF
//!
//! [`Pacer::send_digit`] queues an RFC 4733 digit ([`crate::rtp::dtmf::EventSequence`]). When
//! its turn comes it takes over the slots: one telephone-event packet per slot, on the
//! timestamp of its first slot, with the pacer's SSRC and sequence numbers. Audio is paused,
//! not dropped, meanwhile. Consecutive digits are separated by [`DIGIT_GAP_SLOTS`] slots of
//! ordinary audio or silence so receivers see distinct presses.
//!
//! ## Memory
//!
//! Frame payloads live back to back in one byte ring; each frame adds an 8-octet descriptor
//! (part key, length, audio duration) and each part one [`AudioPart`]. Thirty seconds of
//! G.711 (1500 frames of 160 octets) is therefore 240 000 payload octets plus 12 000 octets
//! of descriptors, plus the rings' slack: they grow by a quarter rather than doubling, so
//! the slack stays under about 25%; [`Pacer::heap_bytes`] reports it.
//! The byte ring shrinks back when the queue empties, so an idle call does not keep the peak.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::dtmf::{self, Digit, EventSequence};
use super::packet::{self, HEADER_LEN, RtpHeader};
use crate::realtime::{ItemId, ResponseId};
use crate::sip::sdp::{Codec, Direction, Negotiated};

/// Packet time of every stream we negotiate.
pub const DEFAULT_PTIME: Duration = Duration::from_millis(20);
/// How late a slot may be and still be sent (see the module documentation).
pub const DEFAULT_MAX_LATENESS: Duration = Duration::from_millis(100);
/// G.711 mu-law silence (positive zero).
pub const PCMU_SILENCE: u8 = 0xFF;
/// G.711 A-law silence (zero with its even bits inverted).
pub const PCMA_SILENCE: u8 = 0xD5;
/// A 20 ms Opus frame of silence (CELT, fullband, one frame), the value other RTP stacks send.
pub const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];
/// Slots of audio or silence between two queued digits.
pub const DIGIT_GAP_SLOTS: u32 = 2;
/// Byte-ring capacity kept when the queue empties (about 1.6 s of G.711).
const RETAINED_BYTES: usize = 32 * 1024;
/// Smallest growth of the byte ring (0.4 s of G.711).
const MIN_GROWTH_BYTES: usize = 8 * 1024;

/// Which audio content part a frame belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AudioPart {
    /// The response that produced it.
    pub response_id: ResponseId,
    /// The assistant item.
    pub item_id: ItemId,
    /// The content part of the item (0 for audio in practice).
    pub content_index: u32,
}

impl AudioPart {
    /// A part from its three ids.
    pub fn new(
        response_id: impl Into<ResponseId>,
        item_id: impl Into<ItemId>,
        content_index: u32,
    ) -> AudioPart {
        AudioPart {
            response_id: response_id.into(),
            item_id: item_id.into(),
            content_index,
        }
    }
}

/// How a pacer sends: payload types, clock, packet time, silence, lateness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacerConfig {
    /// Payload type of the audio codec.
    pub payload_type: u8,
    /// RTP clock rate of the codec, in Hz (8000 for G.711, 48000 for Opus).
    pub clock_rate: u32,
    /// Packet time: one frame per slot.
    pub ptime: Duration,
    /// Payload sent when no audio is queued (one packet time of silence in the codec).
    pub silence: Vec<u8>,
    /// Slots later than this are skipped rather than sent (see the module documentation).
    pub max_lateness: Duration,
    /// Payload type of `telephone-event` at the codec's clock rate, when negotiated.
    pub telephone_event_pt: Option<u8>,
}

impl PacerConfig {
    /// The configuration for a negotiated stream: its payload types, clock and ptime, and the
    /// codec's silence (160 octets of `0xFF`/`0xD5` per 20 ms for G.711, [`OPUS_SILENCE`]).
    pub fn for_negotiated(negotiated: &Negotiated) -> PacerConfig {
        let ptime = Duration::from_millis(u64::from(negotiated.ptime_ms));
        let samples = samples_per_frame(negotiated.clock_rate, ptime).unwrap_or(0);
        let silence = match negotiated.codec {
            Codec::Pcmu => vec![PCMU_SILENCE; samples as usize],
            Codec::Pcma => vec![PCMA_SILENCE; samples as usize],
            Codec::Opus => OPUS_SILENCE.to_vec(),
        };
        PacerConfig {
            payload_type: negotiated.payload_type,
            clock_rate: negotiated.clock_rate,
            ptime,
            silence,
            max_lateness: DEFAULT_MAX_LATENESS,
            telephone_event_pt: negotiated.telephone_event_pt,
        }
    }

    /// G.711 mu-law (payload type 0) at 8 kHz, 20 ms, without telephone-event.
    pub fn pcmu() -> PacerConfig {
        PacerConfig {
            payload_type: 0,
            clock_rate: 8000,
            ptime: DEFAULT_PTIME,
            silence: vec![PCMU_SILENCE; 160],
            max_lateness: DEFAULT_MAX_LATENESS,
            telephone_event_pt: None,
        }
    }
}

/// The random starting point of the stream (RFC 3550 section 5.1: SSRC, first sequence number
/// and first timestamp are random). The shell draws them; the pacer never makes randomness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpStart {
    /// Synchronisation source.
    pub ssrc: u32,
    /// Sequence number of the first packet.
    pub sequence: u16,
    /// Timestamp of the first slot.
    pub timestamp: u32,
}

/// What to tell the model about one flushed part (design.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BargeInAction {
    /// `conversation.item.truncate` with this `audio_end_ms`.
    Truncate {
        /// What the caller heard, never more than what the model produced.
        audio_end_ms: u64,
    },
    /// `conversation.item.delete`: nothing of it was heard (a truncate to 0 can be refused).
    Delete,
    /// Fully played: nothing to say.
    Nothing,
}

/// One part touched by a [`Pacer::flush`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlushedItem {
    /// Which part.
    pub part: AudioPart,
    /// Audio of it sent as RTP, in ms.
    pub sent_ms: u64,
    /// Audio of it queued from the model, in ms.
    pub received_ms: u64,
    /// Whether the model had finished it (see the module documentation).
    pub complete: bool,
}

impl FlushedItem {
    /// Truncate at `min(sent_ms, received_ms)` when some was heard and some was not (or the
    /// model may still have been producing it), delete when none was heard.
    pub fn action(&self) -> BargeInAction {
        if self.sent_ms == 0 {
            BargeInAction::Delete
        } else if self.sent_ms < self.received_ms || !self.complete {
            BargeInAction::Truncate {
                audio_end_ms: self.sent_ms.min(self.received_ms),
            }
        } else {
            BargeInAction::Nothing
        }
    }
}

/// What the pacer reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlayoutEvent {
    /// The first frame of a part was sent.
    ItemStarted(AudioPart),
    /// A complete part has been sent in full.
    ItemFinished {
        /// Which part.
        part: AudioPart,
        /// Its audio sent, in ms.
        sent_ms: u64,
    },
    /// The last queued frame was sent; silence follows.
    Drained,
    /// A digit's last packet was sent.
    DigitSent(Digit),
}

/// Why the pacer refused something.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlayoutError {
    /// The packet time or clock rate give no whole number of samples per frame.
    #[error("packet time {ptime:?} at {clock_rate} Hz is not a whole, non-zero number of samples")]
    BadClock {
        /// The configured packet time.
        ptime: Duration,
        /// The configured clock rate.
        clock_rate: u32,
    },
    /// A frame longer than an RTP packet can sensibly carry.
    #[error("frame of {0} octets is too long")]
    FrameTooLong(usize),
    /// DTMF was asked for but no telephone-event payload type was negotiated.
    #[error("telephone-event was not negotiated")]
    NoTelephoneEvent,
}

/// Counters of a [`Pacer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacerStats {
    /// Packets sent (all kinds).
    pub packets: u64,
    /// Model audio frames sent.
    pub audio_frames: u64,
    /// Silence frames sent.
    pub silence_frames: u64,
    /// telephone-event packets sent.
    pub dtmf_packets: u64,
    /// Slots skipped because the shell woke more than `max_lateness` late.
    pub skipped_slots: u64,
    /// Slots that passed without a packet because we do not send (hold).
    pub held_slots: u64,
    /// Frames thrown away by flushes.
    pub flushed_frames: u64,
    /// Digits dropped because sending stopped (hold).
    pub dropped_digits: u64,
}

/// Longest frame accepted: the descriptor stores its length in 16 bits, and no 20 ms frame of
/// any codec comes near this.
const MAX_FRAME_LEN: usize = 1500 - HEADER_LEN;

/// One queued frame: its payload is the next `len` octets of the byte ring.
#[derive(Clone, Copy, Debug)]
struct Frame {
    /// Key of its part in `parts`.
    part: u32,
    len: u16,
    /// Audio it carries, in ms (a packet time, or less for a padded last frame).
    audio_ms: u16,
}

#[derive(Clone, Debug)]
struct Part {
    key: u32,
    part: AudioPart,
    received_ms: u64,
    sent_ms: u64,
    queued: u32,
    started: bool,
    complete: bool,
    finished: bool,
}

#[derive(Clone, Debug)]
struct ActiveDigit {
    sequence: EventSequence,
    timestamp: u32,
}

/// The playout pacer of one call. See the module documentation.
#[derive(Debug)]
pub struct Pacer {
    config: PacerConfig,
    samples_per_frame: u32,
    ptime_nanos: u128,
    ssrc: u32,
    first_timestamp: u32,
    start: Instant,
    /// The next slot to run.
    next_slot: u64,
    /// Sequence number of the next packet.
    sequence: u16,
    sending: bool,
    /// The last packet sent carried model audio.
    last_was_audio: bool,
    /// Slots passed without a packet since the last packet sent.
    paused: bool,
    /// The next slot sends silence whatever is queued (set by a flush).
    silence_next: bool,
    bytes: VecDeque<u8>,
    frames: VecDeque<Frame>,
    /// The audio of `frames`, in ms (kept as they come and go: asked for every frame).
    frames_ms: u64,
    /// Parts not yet finished (and finished ones behind an unfinished one), in play order.
    parts: VecDeque<Part>,
    next_part_key: u32,
    digits: VecDeque<(Digit, Duration)>,
    digit: Option<ActiveDigit>,
    /// Slots still to pass before the next digit may start.
    digit_gap: u32,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<PlayoutEvent>,
    stats: PacerStats,
}

/// Makes room for `additional` more elements, growing by a quarter (at least `min_growth`
/// elements) instead of doubling: a 30 s queue then holds at most ~25% slack rather than up
/// to 100%, and the extra copies (about four times the data over a whole reply) are cheap
/// next to the 20 ms budget.
fn reserve_gently<T>(ring: &mut VecDeque<T>, additional: usize, min_growth: usize) {
    let needed = ring.len().saturating_add(additional);
    if needed > ring.capacity() {
        let growth = (ring.capacity() / 4).max(min_growth).max(additional);
        ring.reserve_exact(ring.capacity().saturating_add(growth) - ring.len());
    }
}

fn samples_per_frame(clock_rate: u32, ptime: Duration) -> Option<u32> {
    let product = u128::from(clock_rate) * ptime.as_nanos();
    let samples = product / 1_000_000_000;
    (product.is_multiple_of(1_000_000_000) && samples > 0)
        .then(|| u32::try_from(samples).ok())
        .flatten()
}

impl Pacer {
    /// A pacer whose slot 0 is due at `now`, sending with `start`'s SSRC, first sequence
    /// number and first timestamp, in the direction `sendrecv` until told otherwise.
    pub fn new(config: PacerConfig, start: RtpStart, now: Instant) -> Result<Pacer, PlayoutError> {
        let samples_per_frame =
            samples_per_frame(config.clock_rate, config.ptime).ok_or(PlayoutError::BadClock {
                ptime: config.ptime,
                clock_rate: config.clock_rate,
            })?;
        if config.silence.len() > MAX_FRAME_LEN {
            return Err(PlayoutError::FrameTooLong(config.silence.len()));
        }
        Ok(Pacer {
            ptime_nanos: config.ptime.as_nanos(),
            config,
            samples_per_frame,
            ssrc: start.ssrc,
            first_timestamp: start.timestamp,
            start: now,
            next_slot: 0,
            sequence: start.sequence,
            sending: true,
            last_was_audio: false,
            paused: false,
            silence_next: false,
            bytes: VecDeque::new(),
            frames: VecDeque::new(),
            frames_ms: 0,
            parts: VecDeque::new(),
            next_part_key: 0,
            digits: VecDeque::new(),
            digit: None,
            digit_gap: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: PacerStats::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PacerConfig {
        &self.config
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Timestamp units per frame (160 for 20 ms at 8 kHz).
    pub fn samples_per_frame(&self) -> u32 {
        self.samples_per_frame
    }

    /// Sequence number the next packet will carry.
    pub fn next_sequence(&self) -> u16 {
        self.sequence
    }

    /// Index of the next slot (slot `n` is due at `start + n * ptime`).
    pub fn next_slot(&self) -> u64 {
        self.next_slot
    }

    /// The counters so far.
    pub fn stats(&self) -> PacerStats {
        self.stats
    }

    /// Frames of model audio waiting.
    pub fn queued_frames(&self) -> usize {
        self.frames.len()
    }

    /// Milliseconds of model audio waiting.
    pub fn queued_ms(&self) -> u64 {
        self.frames_ms
    }

    /// Whether nothing is waiting to be played: no audio and no digit.
    pub fn is_idle(&self) -> bool {
        self.frames.is_empty() && self.digit.is_none() && self.digits.is_empty()
    }

    /// Heap memory held by the queue and its bookkeeping, in octets (sum of capacities).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let ids: usize = self
            .parts
            .iter()
            .map(|p| p.part.response_id.as_str().len() + p.part.item_id.as_str().len())
            .sum();
        self.bytes.capacity()
            + self.frames.capacity() * size_of::<Frame>()
            + self.parts.capacity() * size_of::<Part>()
            + ids
            + self.config.silence.capacity()
            + self.digits.capacity() * size_of::<(Digit, Duration)>()
            + self.transmits.capacity() * size_of::<Vec<u8>>()
            + self.transmits.iter().map(Vec::capacity).sum::<usize>()
            + self.events.capacity() * size_of::<PlayoutEvent>()
    }

    /// Queues one encoded frame (one packet time) of `part`. See [`Pacer::push_partial_frame`]
    /// for a last frame that was padded.
    pub fn push_frame(&mut self, part: &AudioPart, payload: &[u8]) -> Result<(), PlayoutError> {
        let ms = self.ptime_ms();
        self.push_partial_frame(part, payload, ms)
    }

    /// Queues one encoded frame of `part` that carries only `audio_ms` of the model's audio
    /// (its last frame, padded to a packet time by the encoder); `received_ms` and `sent_ms`
    /// count `audio_ms` for it, so a truncate never claims the padding. Values above the
    /// packet time count as the packet time.
    pub fn push_partial_frame(
        &mut self,
        part: &AudioPart,
        payload: &[u8],
        audio_ms: u16,
    ) -> Result<(), PlayoutError> {
        if payload.len() > MAX_FRAME_LEN {
            return Err(PlayoutError::FrameTooLong(payload.len()));
        }
        let audio_ms = audio_ms.min(self.ptime_ms());
        let key = self.part_key(part);
        if let Some(entry) = self.part_mut(key) {
            entry.received_ms += u64::from(audio_ms);
            entry.queued += 1;
        }
        reserve_gently(&mut self.bytes, payload.len(), MIN_GROWTH_BYTES);
        self.bytes.extend(payload);
        reserve_gently(&mut self.frames, 1, MIN_GROWTH_BYTES / 160);
        self.frames_ms += u64::from(audio_ms);
        self.frames.push_back(Frame {
            part: key,
            // MAX_FRAME_LEN fits in 16 bits.
            len: u16::try_from(payload.len()).unwrap_or(u16::MAX),
            audio_ms,
        });
        Ok(())
    }

    /// The model has finished `part` (`response.output_audio.done`): once its queued frames
    /// are sent it is reported as finished. Unknown parts are ignored.
    pub fn finish_part(&mut self, part: &AudioPart) {
        let Some(entry) = self.parts.iter_mut().find(|p| p.part == *part) else {
            return;
        };
        entry.complete = true;
        let key = entry.key;
        self.maybe_finish(key);
    }

    /// Barge-in: empties the audio queue now and reports every part not fully played, in play
    /// order. The next packet is silence. A digit being sent is not cut (it would leave the
    /// far end with a stuck key); queued digits stay queued.
    pub fn flush(&mut self) -> Vec<FlushedItem> {
        self.stats.flushed_frames += self.frames.len() as u64;
        self.frames.clear();
        self.frames_ms = 0;
        self.bytes.clear();
        self.shrink();
        self.silence_next = true;
        self.parts
            .drain(..)
            .filter(|p| !p.finished)
            .map(|p| FlushedItem {
                part: p.part,
                sent_ms: p.sent_ms,
                received_ms: p.received_ms,
                complete: p.complete,
            })
            .collect()
    }

    /// Queues a DTMF digit (RFC 4733), sent in place of audio when its turn comes; `duration`
    /// is rounded up to whole packet times and capped at [`dtmf::MAX_SEND_DURATION`].
    pub fn send_digit(&mut self, digit: Digit, duration: Duration) -> Result<(), PlayoutError> {
        if self.config.telephone_event_pt.is_none() {
            return Err(PlayoutError::NoTelephoneEvent);
        }
        self.digits.push_back((digit, duration));
        Ok(())
    }

    /// Our media direction (from [`Negotiated::direction`]; pass [`Direction::Inactive`] when
    /// [`Negotiated::is_hold`] says there is nowhere to send). When it does not send, slots
    /// pass without packets; see the module documentation.
    pub fn set_direction(&mut self, direction: Direction) {
        self.sending = direction.sends();
        if !self.sending {
            let dropped = self.digits.len() + usize::from(self.digit.is_some());
            self.stats.dropped_digits += dropped as u64;
            self.digits.clear();
            self.digit = None;
        }
    }

    /// The deadline of the next slot.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline(self.next_slot)
    }

    /// Runs every slot due at `now`: sends those no more than `max_lateness` late, skips the
    /// older ones (see the module documentation).
    pub fn handle_timeout(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        if now < self.start {
            return;
        }
        // Slots 0..=due are due.
        let due = u64::try_from(elapsed / self.ptime_nanos).unwrap_or(u64::MAX);
        if due < self.next_slot {
            return;
        }
        // Slots before `keep` are more than max_lateness late.
        let lateness = self.config.max_lateness.as_nanos();
        let keep = if elapsed > lateness {
            u64::try_from((elapsed - lateness).div_ceil(self.ptime_nanos)).unwrap_or(u64::MAX)
        } else {
            0
        };
        if keep > self.next_slot {
            let skipped = keep.min(due.saturating_add(1)) - self.next_slot;
            self.stats.skipped_slots += skipped;
            self.next_slot += skipped;
            self.paused = true;
        }
        while self.next_slot <= due {
            self.run_slot(self.next_slot);
            self.next_slot += 1;
        }
    }

    /// The next RTP datagram to send (complete, header included).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<PlayoutEvent> {
        self.events.pop_front()
    }

    fn ptime_ms(&self) -> u16 {
        u16::try_from(self.config.ptime.as_millis()).unwrap_or(u16::MAX)
    }

    fn deadline(&self, slot: u64) -> Option<Instant> {
        let nanos = self.ptime_nanos.checked_mul(u128::from(slot))?;
        let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
        // The remainder is below 10^9 and fits.
        let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
        self.start.checked_add(Duration::new(secs, sub))
    }

    fn timestamp(&self, slot: u64) -> u32 {
        // (n mod 2^32) * spf mod 2^32 == n * spf mod 2^32.
        self.first_timestamp
            .wrapping_add((slot as u32).wrapping_mul(self.samples_per_frame))
    }

    /// The key of `part`, creating it (and completing every earlier part) when new.
    fn part_key(&mut self, part: &AudioPart) -> u32 {
        if let Some(existing) = self.parts.iter().rev().find(|p| p.part == *part) {
            return existing.key;
        }
        let earlier: Vec<u32> = self
            .parts
            .iter_mut()
            .filter(|p| !p.complete)
            .map(|p| {
                p.complete = true;
                p.key
            })
            .collect();
        for key in earlier {
            self.maybe_finish(key);
        }
        let key = self.next_part_key;
        self.next_part_key = self.next_part_key.wrapping_add(1);
        self.parts.push_back(Part {
            key,
            part: part.clone(),
            received_ms: 0,
            sent_ms: 0,
            queued: 0,
            started: false,
            complete: false,
            finished: false,
        });
        key
    }

    fn part_mut(&mut self, key: u32) -> Option<&mut Part> {
        // Keys are consecutive from the front; fall back to a search if that ever breaks.
        let front = self.parts.front()?.key;
        let index = key.wrapping_sub(front) as usize;
        match self.parts.get(index) {
            Some(p) if p.key == key => self.parts.get_mut(index),
            _ => self.parts.iter_mut().find(|p| p.key == key),
        }
    }

    /// Reports `key` finished if it is complete and fully sent, then forgets finished parts
    /// at the front.
    fn maybe_finish(&mut self, key: u32) {
        let Some(entry) = self.part_mut(key) else {
            return;
        };
        if entry.finished || !entry.complete || entry.queued > 0 || !entry.started {
            return;
        }
        entry.finished = true;
        let event = PlayoutEvent::ItemFinished {
            part: entry.part.clone(),
            sent_ms: entry.sent_ms,
        };
        self.events.push_back(event);
        while self.parts.front().is_some_and(|p| p.finished) {
            self.parts.pop_front();
        }
    }

    fn shrink(&mut self) {
        if self.bytes.capacity() > RETAINED_BYTES {
            self.bytes.shrink_to(RETAINED_BYTES);
        }
        if self.frames.capacity() > RETAINED_BYTES / 160 {
            self.frames.shrink_to(RETAINED_BYTES / 160);
        }
    }

    fn run_slot(&mut self, slot: u64) {
        if !self.sending {
            self.stats.held_slots += 1;
            self.paused = true;
            return;
        }
        let timestamp = self.timestamp(slot);
        if self.digit.is_none() && self.digit_gap == 0 {
            self.start_digit(timestamp);
        }
        if let Some(active) = self.digit.as_mut() {
            if let Some(event) = active.sequence.next() {
                let digit_timestamp = active.timestamp;
                let pt = self.config.telephone_event_pt.unwrap_or(101);
                let last = active.sequence.remaining() == 0;
                let digit = active.sequence.digit();
                self.send(pt, event.marker, digit_timestamp, &event.payload.encode());
                self.stats.dtmf_packets += 1;
                self.last_was_audio = false;
                if last {
                    self.digit = None;
                    self.digit_gap = DIGIT_GAP_SLOTS;
                    self.events.push_back(PlayoutEvent::DigitSent(digit));
                }
                return;
            }
            self.digit = None;
        }
        self.digit_gap = self.digit_gap.saturating_sub(1);
        let frame = if self.silence_next {
            self.silence_next = false;
            None
        } else {
            self.frames.pop_front()
        };
        if let Some(frame) = &frame {
            self.frames_ms = self.frames_ms.saturating_sub(u64::from(frame.audio_ms));
        }
        let Some(frame) = frame else {
            let silence = std::mem::take(&mut self.config.silence);
            let pt = self.config.payload_type;
            let marker = self.paused;
            self.send(pt, marker, timestamp, &silence);
            self.config.silence = silence;
            self.stats.silence_frames += 1;
            self.last_was_audio = false;
            return;
        };
        let marker = !self.last_was_audio || self.paused;
        let header = RtpHeader {
            marker,
            payload_type: self.config.payload_type,
            sequence: self.sequence,
            timestamp,
            ssrc: self.ssrc,
        };
        let len = usize::from(frame.len);
        let mut out = Vec::with_capacity(HEADER_LEN + len);
        packet::write(&header, &[], &mut out);
        let (a, b) = self.bytes.as_slices();
        let from_a = len.min(a.len());
        out.extend_from_slice(a.get(..from_a).unwrap_or_default());
        out.extend_from_slice(b.get(..len - from_a).unwrap_or_default());
        self.bytes.drain(..len.min(self.bytes.len()));
        self.transmits.push_back(out);
        self.sequence = self.sequence.wrapping_add(1);
        self.stats.packets += 1;
        self.stats.audio_frames += 1;
        self.paused = false;
        self.last_was_audio = true;

        let mut started = None;
        if let Some(entry) = self.part_mut(frame.part) {
            entry.sent_ms += u64::from(frame.audio_ms);
            entry.queued = entry.queued.saturating_sub(1);
            if !entry.started {
                entry.started = true;
                started = Some(entry.part.clone());
            }
        }
        if let Some(part) = started {
            self.events.push_back(PlayoutEvent::ItemStarted(part));
        }
        self.maybe_finish(frame.part);
        if self.frames.is_empty() {
            self.shrink();
            self.events.push_back(PlayoutEvent::Drained);
        }
    }

    fn start_digit(&mut self, timestamp: u32) {
        let Some((digit, duration)) = self.digits.pop_front() else {
            return;
        };
        self.digit = Some(ActiveDigit {
            sequence: EventSequence::new(
                digit,
                duration,
                dtmf::DEFAULT_VOLUME,
                self.samples_per_frame,
                self.config.ptime,
            ),
            timestamp,
        });
    }

    fn send(&mut self, payload_type: u8, marker: bool, timestamp: u32, payload: &[u8]) {
        let header = RtpHeader {
            marker,
            payload_type,
            sequence: self.sequence,
            timestamp,
            ssrc: self.ssrc,
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        packet::write(&header, payload, &mut out);
        self.transmits.push_back(out);
        self.sequence = self.sequence.wrapping_add(1);
        self.stats.packets += 1;
        self.paused = false;
    }
}

#[cfg(test)]
mod tests;
