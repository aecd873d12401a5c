//! The fake's energy VAD: frame RMS against a threshold, on the input audio timeline.
//!
//! Rules (tests pin the exact numbers they produce):
//!
//! - Audio is cut into 10 ms frames, tiled from the start of the session's input timeline
//!   (audio time, never wall time).
//! - A frame is speech when its RMS level, in dBFS relative to a full-scale *square* wave
//!   (so a full-scale sine reads -3 dBFS), is above `-60 + 50 * threshold` dBFS: the default
//!   threshold 0.5 means -35 dBFS, 0.0 means -60 dBFS, 1.0 means -10 dBFS.
//! - The first speech frame starts speech: `audio_start_ms = frame start - prefix_padding_ms`
//!   (not below 0).
//! - Speech stops once `silence_duration_ms` have passed since the end of the last speech
//!   frame: `audio_end_ms = end of last speech frame + silence_duration_ms`, which includes the
//!   silence, as the real service's does.
//!
//! `semantic_vad` runs the same detector with threshold 0.5, 300 ms prefix padding and a
//! silence time from `eagerness` (low 1000 ms, medium/auto 500 ms, high 250 ms).

/// Length of one analysis frame in timeline units (1/24 ms).
const FRAME_UNITS: u64 = 240;

/// Timeline units per millisecond (one unit = one 24 kHz sample).
pub(crate) const UNITS_PER_MS: u64 = 24;

/// Detector settings, already resolved from `turn_detection`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct VadSettings {
    pub(crate) threshold: f64,
    pub(crate) prefix_padding_ms: u64,
    pub(crate) silence_duration_ms: u64,
}

impl VadSettings {
    /// The RMS level (dBFS) a frame must exceed to count as speech.
    pub(crate) fn threshold_dbfs(&self) -> f64 {
        -60.0 + 50.0 * self.threshold.clamp(0.0, 1.0)
    }
}

/// What the detector saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VadEvent {
    Started { audio_start_ms: u64 },
    Stopped { audio_end_ms: u64 },
}

/// Detector state between appends.
#[derive(Debug, Default)]
pub(crate) struct Vad {
    /// Samples of the frame being filled, and the timeline unit where it starts.
    pending: Vec<i16>,
    pending_start: u64,
    pending_units_per_sample: u64,
    speaking: bool,
    last_speech_end_ms: u64,
}

impl Vad {
    /// Whether speech is in progress.
    pub(crate) fn speaking(&self) -> bool {
        self.speaking
    }

    /// Forgets any speech in progress (after `input_audio_buffer.clear` or a commit).
    pub(crate) fn reset_turn(&mut self) {
        self.speaking = false;
    }

    /// Feeds PCM that starts at timeline unit `start`; `units_per_sample` is 1 for 24 kHz and
    /// 3 for 8 kHz audio. Appends what was detected to `events`.
    pub(crate) fn process(
        &mut self,
        settings: &VadSettings,
        pcm: &[i16],
        start: u64,
        units_per_sample: u64,
        events: &mut Vec<VadEvent>,
    ) {
        let units_per_sample = units_per_sample.max(1);
        let frame_samples = (FRAME_UNITS / units_per_sample) as usize;
        // A format change or a gap restarts framing at the new audio.
        if units_per_sample != self.pending_units_per_sample
            || self.pending_start + self.pending.len() as u64 * units_per_sample != start
        {
            self.pending.clear();
            self.pending_start = start;
            self.pending_units_per_sample = units_per_sample;
        }
        let threshold = settings.threshold_dbfs();
        for &sample in pcm {
            self.pending.push(sample);
            if self.pending.len() < frame_samples {
                continue;
            }
            let frame_start_ms = self.pending_start / UNITS_PER_MS;
            let frame_end_ms = (self.pending_start + FRAME_UNITS) / UNITS_PER_MS;
            let speech = rms_dbfs(&self.pending) > threshold;
            self.pending.clear();
            self.pending_start += FRAME_UNITS;
            match (self.speaking, speech) {
                (false, true) => {
                    self.speaking = true;
                    self.last_speech_end_ms = frame_end_ms;
                    events.push(VadEvent::Started {
                        audio_start_ms: frame_start_ms.saturating_sub(settings.prefix_padding_ms),
                    });
                }
                (true, true) => self.last_speech_end_ms = frame_end_ms,
                (true, false)
                    if frame_end_ms - self.last_speech_end_ms.min(frame_end_ms)
                        >= settings.silence_duration_ms =>
                {
                    self.speaking = false;
                    events.push(VadEvent::Stopped {
                        audio_end_ms: self
                            .last_speech_end_ms
                            .saturating_add(settings.silence_duration_ms),
                    });
                }
                _ => {}
            }
        }
    }
}

/// RMS level of a frame in dBFS (full-scale square wave = 0 dBFS); silence is -inf.
pub(crate) fn rms_dbfs(frame: &[i16]) -> f64 {
    if frame.is_empty() {
        return f64::NEG_INFINITY;
    }
    let energy: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / frame.len() as f64).sqrt();
    20.0 * (rms / 32768.0).log10()
}
