//! Streaming 8 kHz <-> 24 kHz resampling for the telephony <-> Realtime path.
//!
//! Both directions share one linear-phase low-pass prototype, designed for the
//! 24 kHz rate: a 97-tap Kaiser-windowed sinc (beta 8.0, cutoff 3960 Hz). It
//! keeps the telephone band 300-3400 Hz flat (within 0.02 dB by design) and
//! attenuates everything from 4600 Hz up by more than 80 dB, which is what
//! removes the images of upsampling and prevents aliasing when downsampling.
//!
//! - [`Upsampler8To24`] runs the prototype as three 33-tap polyphase branches,
//!   one per output phase, so no multiplications are spent on the zeros that
//!   zero-stuffing would insert. It computes eight neighbouring input
//!   positions side by side, which the compiler turns into SIMD.
//! - [`Downsampler24To8`] runs the full 97 taps but only at every third input
//!   position, which is the same work as a polyphase decimator with a simpler
//!   state: the history plus the phase of the next output.
//!
//! Both are stateful across calls: splitting a stream into 20 ms frames or
//! into arbitrary chunks yields bit-identical output, and every frame from the
//! first produces its full size (the filter history starts as silence).
//! Arithmetic is `f32`; output is rounded to nearest and saturated to `i16`,
//! so full-scale input clips instead of wrapping around.
//!
//! The symmetric 97-tap filter delays the signal by 48 samples at 24 kHz,
//! which is 16 samples at 8 kHz: exactly 2 ms in each direction
//! ([`ALGORITHMIC_DELAY_MICROS`]).

use std::sync::LazyLock;

/// Ratio between the two rates; also the number of polyphase branches.
const RATIO: usize = 3;

/// Length of the low-pass prototype at 24 kHz. Odd so that the group delay is
/// a whole number of samples at both rates (48 at 24 kHz, 16 at 8 kHz).
const PROTOTYPE_TAPS: usize = 97;

/// Taps per upsampler branch: the prototype padded with zeros to `3 * 33`.
const TAPS_PER_PHASE: usize = PROTOTYPE_TAPS.div_ceil(RATIO);

/// Input samples the upsampler keeps between calls.
const UPSAMPLER_HISTORY: usize = TAPS_PER_PHASE - 1;

/// Input samples the downsampler keeps between calls.
const DOWNSAMPLER_HISTORY: usize = PROTOTYPE_TAPS - 1;

/// Low-pass cutoff (the -6 dB point of the windowed sinc). Placed slightly
/// below 4 kHz so that the transition band sits between the 3400 Hz telephone
/// band edge and 4600 Hz, the lowest frequency that aliases back into it.
const CUTOFF_HZ: f64 = 3960.0;

/// Kaiser window shape: trades transition width for stopband depth. 8.0 gives
/// more than 80 dB from 4600 Hz with 97 taps while 3400 Hz stays within 0.02 dB.
const KAISER_BETA: f64 = 8.0;

const HIGH_RATE_HZ: f64 = 24_000.0;

/// Input is processed in blocks of at most this many samples so the working
/// buffer stays bounded whatever slice length a caller (or the network)
/// hands in. Chunking does not change the output.
const MAX_BLOCK: usize = 960;

/// Algorithmic delay of either resampler: the 48-sample group delay of the
/// prototype at 24 kHz, i.e. 16 samples at 8 kHz.
pub const ALGORITHMIC_DELAY_MICROS: u32 = 2_000;

/// Filter taps, computed once per process on first use.
struct Coefficients {
    /// `upsampler[j][p]` weighs window sample `j` (oldest input first) for
    /// output `3m + p`. Tap-major so one pass over the window feeds all three
    /// branches; the gain of 3 restores the level lost to zero-stuffing.
    upsampler: [[f32; RATIO]; TAPS_PER_PHASE],
    /// Prototype taps in history order (oldest input first).
    downsampler: [f32; PROTOTYPE_TAPS],
}

static COEFFICIENTS: LazyLock<Coefficients> = LazyLock::new(Coefficients::design);

impl Coefficients {
    fn design() -> Self {
        let dc_gain: f64 = (0..PROTOTYPE_TAPS).map(prototype_tap).sum();
        // Unity gain at DC; taps past the end of the prototype are the zero
        // padding that evens out the branches.
        let normalised = |index: usize| -> f64 {
            if index < PROTOTYPE_TAPS {
                prototype_tap(index) / dc_gain
            } else {
                0.0
            }
        };
        let upsampler = std::array::from_fn(|position| {
            let age = TAPS_PER_PHASE - 1 - position;
            std::array::from_fn(|phase| (RATIO as f64 * normalised(phase + RATIO * age)) as f32)
        });
        let downsampler =
            std::array::from_fn(|position| normalised(PROTOTYPE_TAPS - 1 - position) as f32);
        Self {
            upsampler,
            downsampler,
        }
    }
}

/// Tap `index` of the Kaiser-windowed sinc prototype, before normalisation.
fn prototype_tap(index: usize) -> f64 {
    use std::f64::consts::PI;
    let centre = (PROTOTYPE_TAPS - 1) as f64 / 2.0;
    let offset = index as f64 - centre;
    let normalised_cutoff = 2.0 * CUTOFF_HZ / HIGH_RATE_HZ;
    let sinc = if offset == 0.0 {
        normalised_cutoff
    } else {
        (PI * normalised_cutoff * offset).sin() / (PI * offset)
    };
    let ratio = offset / centre;
    let window =
        bessel_i0(KAISER_BETA * (1.0 - ratio * ratio).max(0.0).sqrt()) / bessel_i0(KAISER_BETA);
    sinc * window
}

/// Modified Bessel function of the first kind, order 0, by its power series.
/// For the arguments used here (<= 8) the terms fall below 1e-17 of the sum
/// well before 50 of them.
fn bessel_i0(x: f64) -> f64 {
    let half = x / 2.0;
    let mut term = 1.0;
    let mut sum = 1.0;
    for k in 1..50 {
        let factor = half / k as f64;
        term *= factor * factor;
        sum += term;
        if term < sum * 1e-17 {
            break;
        }
    }
    sum
}

/// Dot product for the downsampler, with eight independent partial sums. Strict `f32` semantics
/// forbid the compiler from reordering a single running sum, so the lanes are
/// what lets it use SIMD; the summation order is still fixed, which keeps the
/// output deterministic.
#[inline]
fn dot<const TAPS: usize>(samples: &[f32; TAPS], taps: &[f32; TAPS]) -> f32 {
    const LANES: usize = 8;
    let (sample_chunks, sample_tail) = samples.as_chunks::<LANES>();
    let (tap_chunks, tap_tail) = taps.as_chunks::<LANES>();
    let mut lanes = [0.0_f32; LANES];
    for (sample_chunk, tap_chunk) in sample_chunks.iter().zip(tap_chunks) {
        for ((lane, sample), tap) in lanes.iter_mut().zip(sample_chunk).zip(tap_chunk) {
            *lane += sample * tap;
        }
    }
    let tail: f32 = sample_tail
        .iter()
        .zip(tap_tail)
        .map(|(sample, tap)| sample * tap)
        .sum();
    lanes.iter().sum::<f32>() + tail
}

/// Input positions the upsampler computes side by side. Vectorising across
/// neighbouring outputs needs no horizontal sum at the end, and every output
/// still accumulates its taps in the same order as [`upsample_one`] does, so
/// where a block boundary falls cannot change a single bit.
const GROUP: usize = 8;

/// Input samples covering [`GROUP`] neighbouring windows.
const GROUP_SPAN: usize = TAPS_PER_PHASE + GROUP - 1;

/// Appends the 3 * [`GROUP`] outputs of the windows starting in `span`.
#[inline]
fn upsample_group(
    span: &[f32; GROUP_SPAN],
    taps: &[[f32; RATIO]; TAPS_PER_PHASE],
    out: &mut Vec<i16>,
) {
    let mut sums = [[0.0_f32; GROUP]; RATIO];
    for (samples, tap) in span.array_windows::<GROUP>().zip(taps) {
        for (branch_sums, weight) in sums.iter_mut().zip(tap) {
            for (sum, sample) in branch_sums.iter_mut().zip(samples) {
                *sum += sample * weight;
            }
        }
    }
    let [early, middle, late] = &sums;
    for ((a, b), c) in early.iter().zip(middle).zip(late) {
        out.extend_from_slice(&[to_sample(*a), to_sample(*b), to_sample(*c)]);
    }
}

/// Appends the three outputs of one window (used for a block's last few
/// positions that do not fill a group).
#[inline]
fn upsample_one(
    history: &[f32; TAPS_PER_PHASE],
    taps: &[[f32; RATIO]; TAPS_PER_PHASE],
    out: &mut Vec<i16>,
) {
    let mut sums = [0.0_f32; RATIO];
    for (sample, tap) in history.iter().zip(taps) {
        for (sum, weight) in sums.iter_mut().zip(tap) {
            *sum += sample * weight;
        }
    }
    out.extend(sums.map(to_sample));
}

/// Rounds half away from zero and saturates, so overshoot from full-scale
/// input clips rather than wrapping to the opposite sign. Written with a cast
/// instead of `f32::round`, which is a library call on baseline x86-64.
#[inline]
fn to_sample(value: f32) -> i16 {
    let rounded = (value + 0.5_f32.copysign(value)) as i32;
    // After the clamp the value fits, so the cast is lossless.
    rounded.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

/// Streaming 8 kHz -> 24 kHz resampler: three output samples per input sample.
#[derive(Clone, Debug)]
pub struct Upsampler8To24 {
    /// The last [`UPSAMPLER_HISTORY`] input samples, followed while
    /// processing by the current block.
    window: Vec<f32>,
}

impl Upsampler8To24 {
    /// Algorithmic delay in 24 kHz output samples (2 ms): an impulse at input
    /// sample 0 peaks at output sample 48.
    pub const DELAY_SAMPLES: usize = 48;

    /// Creates an upsampler whose history is silence.
    pub fn new() -> Self {
        let mut window = Vec::with_capacity(UPSAMPLER_HISTORY + MAX_BLOCK);
        window.resize(UPSAMPLER_HISTORY, 0.0);
        Self { window }
    }

    /// Resamples `input` (8 kHz) and appends exactly `3 * input.len()`
    /// samples (24 kHz) to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let coefficients = &*COEFFICIENTS;
        out.reserve(input.len().saturating_mul(RATIO));
        for block in input.chunks(MAX_BLOCK) {
            self.window
                .extend(block.iter().map(|&sample| f32::from(sample)));
            let groups = block.len() / GROUP;
            for span in self
                .window
                .array_windows::<GROUP_SPAN>()
                .step_by(GROUP)
                .take(groups)
            {
                upsample_group(span, &coefficients.upsampler, out);
            }
            let tail = self.window.get(groups * GROUP..).unwrap_or_default();
            for history in tail.array_windows::<TAPS_PER_PHASE>() {
                upsample_one(history, &coefficients.upsampler, out);
            }
            let consumed = self.window.len().saturating_sub(UPSAMPLER_HISTORY);
            self.window.drain(..consumed);
        }
    }

    /// Forgets the history, as if freshly created (e.g. on a new call leg).
    pub fn reset(&mut self) {
        self.window.clear();
        self.window.resize(UPSAMPLER_HISTORY, 0.0);
    }
}

impl Default for Upsampler8To24 {
    fn default() -> Self {
        Self::new()
    }
}

/// Streaming 24 kHz -> 8 kHz resampler: one output sample per three input
/// samples, keeping the decimation phase across calls of any length.
#[derive(Clone, Debug)]
pub struct Downsampler24To8 {
    /// The last [`DOWNSAMPLER_HISTORY`] input samples, followed while
    /// processing by the current block.
    window: Vec<f32>,
    /// Input samples to consume before the next output instant (0..3).
    /// Output instants are the stream positions 0, 3, 6, ...
    samples_until_output: usize,
}

impl Downsampler24To8 {
    /// Algorithmic delay in 8 kHz output samples (2 ms): an impulse at input
    /// sample 0 peaks at output sample 16.
    pub const DELAY_SAMPLES: usize = 16;

    /// Creates a downsampler whose history is silence.
    pub fn new() -> Self {
        let mut window = Vec::with_capacity(DOWNSAMPLER_HISTORY + MAX_BLOCK);
        window.resize(DOWNSAMPLER_HISTORY, 0.0);
        Self {
            window,
            samples_until_output: 0,
        }
    }

    /// Resamples `input` (24 kHz) and appends the 8 kHz output to `out`:
    /// exactly 160 samples per 480-sample frame; for other lengths, one per
    /// output instant reached, so the running total is `ceil(total_in / 3)`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let coefficients = &*COEFFICIENTS;
        out.reserve(input.len().div_ceil(RATIO));
        for block in input.chunks(MAX_BLOCK) {
            self.window
                .extend(block.iter().map(|&sample| f32::from(sample)));
            // Window `i` ends at block sample `i`; only output instants count.
            let outputs = self
                .window
                .array_windows::<PROTOTYPE_TAPS>()
                .skip(self.samples_until_output)
                .step_by(RATIO)
                .map(|history| to_sample(dot(history, &coefficients.downsampler)));
            out.extend(outputs);
            self.samples_until_output =
                (self.samples_until_output + RATIO - block.len() % RATIO) % RATIO;
            let consumed = self.window.len().saturating_sub(DOWNSAMPLER_HISTORY);
            self.window.drain(..consumed);
        }
    }

    /// Forgets the history and the decimation phase, as if freshly created.
    pub fn reset(&mut self) {
        self.window.clear();
        self.window.resize(DOWNSAMPLER_HISTORY, 0.0);
        self.samples_until_output = 0;
    }
}

impl Default for Downsampler24To8 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    const RATE_8K: f64 = 8_000.0;
    const RATE_24K: f64 = 24_000.0;
    /// -6 dBFS.
    const AMPLITUDE: f64 = 16_384.0;

    fn sine(frequency: f64, rate: f64, amplitude: f64, len: usize) -> Vec<i16> {
        (0..len)
            .map(|n| (amplitude * (2.0 * PI * frequency * n as f64 / rate).sin()).round() as i16)
            .collect()
    }

    fn add(a: &[i16], b: &[i16]) -> Vec<i16> {
        a.iter().zip(b).map(|(x, y)| x.saturating_add(*y)).collect()
    }

    /// Tones plus noise from a small LCG: broadband, deterministic.
    fn speech_like(rate: f64, len: usize) -> Vec<i16> {
        let mut state: u32 = 0x1234_5678;
        (0..len)
            .map(|n| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let noise = f64::from((state >> 16) as u16 as i16) / 8.0;
                let t = n as f64 / rate;
                let tones = 6000.0 * (2.0 * PI * 220.0 * t).sin()
                    + 4000.0 * (2.0 * PI * 1330.0 * t).sin()
                    + 2500.0 * (2.0 * PI * 3150.0 * t).sin();
                (tones + noise).round() as i16
            })
            .collect()
    }

    /// Amplitude of the `frequency` component, by correlating with a complex
    /// exponential (one DFT bin). Callers pick lengths holding whole periods
    /// of every frequency they measure, so there is no leakage between bins.
    fn amplitude_at(signal: &[i16], frequency: f64, rate: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (n, &sample) in signal.iter().enumerate() {
            let phase = 2.0 * PI * frequency * n as f64 / rate;
            re += f64::from(sample) * phase.cos();
            im -= f64::from(sample) * phase.sin();
        }
        2.0 * (re * re + im * im).sqrt() / signal.len() as f64
    }

    fn db(ratio: f64) -> f64 {
        20.0 * ratio.log10()
    }

    fn upsample(input: &[i16]) -> Vec<i16> {
        let mut out = Vec::new();
        Upsampler8To24::new().process(input, &mut out);
        out
    }

    fn downsample(input: &[i16]) -> Vec<i16> {
        let mut out = Vec::new();
        Downsampler24To8::new().process(input, &mut out);
        out
    }

    /// Steady-state part of an output: past the filter start-up, 100 ms long
    /// (whole periods of every multiple of 10 Hz).
    fn steady(output: &[i16], rate: f64) -> &[i16] {
        let settle = (rate / 50.0) as usize; // 20 ms, far beyond 97 taps
        let len = (rate / 10.0) as usize;
        &output[settle..settle + len]
    }

    /// Ragged chunk sizes that straddle the decimation phase and the internal
    /// block size in every way.
    const RAGGED: [usize; 8] = [1, 7, 333, 0, 2, 160, 1000, 5];

    fn ragged_chunks(signal: &[i16]) -> Vec<&[i16]> {
        let mut chunks = Vec::new();
        let mut rest = signal;
        for &size in RAGGED.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        chunks
    }

    #[test]
    fn upsampler_is_identical_across_frames_and_ragged_chunks() {
        let input = speech_like(RATE_8K, 8000 + 17);
        let whole = upsample(&input);
        assert_eq!(whole.len(), 3 * input.len());

        let mut upsampler = Upsampler8To24::new();
        let mut framed = Vec::new();
        for frame in input.chunks(160) {
            let before = framed.len();
            upsampler.process(frame, &mut framed);
            assert_eq!(framed.len() - before, 3 * frame.len());
        }
        assert_eq!(framed, whole);

        let mut upsampler = Upsampler8To24::new();
        let mut ragged = Vec::new();
        for chunk in ragged_chunks(&input) {
            upsampler.process(chunk, &mut ragged);
        }
        assert_eq!(ragged, whole);
    }

    #[test]
    fn downsampler_is_identical_across_frames_and_ragged_chunks() {
        let input = speech_like(RATE_24K, 24_000 + 2);
        let whole = downsample(&input);
        assert_eq!(whole.len(), input.len().div_ceil(3));

        let mut downsampler = Downsampler24To8::new();
        let mut framed = Vec::new();
        for frame in input.chunks_exact(480) {
            let before = framed.len();
            downsampler.process(frame, &mut framed);
            assert_eq!(framed.len() - before, 160);
        }
        assert_eq!(framed[..], whole[..framed.len()]);

        let mut downsampler = Downsampler24To8::new();
        let mut ragged = Vec::new();
        let mut consumed = 0;
        for chunk in ragged_chunks(&input) {
            downsampler.process(chunk, &mut ragged);
            consumed += chunk.len();
            assert_eq!(ragged.len(), consumed.div_ceil(3));
        }
        assert_eq!(ragged, whole);
    }

    #[test]
    fn passband_is_flat_within_half_a_db() {
        let frequencies = [300.0, 500.0, 1000.0, 2000.0, 3000.0, 3400.0];
        let up_gain = |f: f64| {
            let out = upsample(&sine(f, RATE_8K, AMPLITUDE, 4000));
            amplitude_at(steady(&out, RATE_24K), f, RATE_24K) / AMPLITUDE
        };
        let down_gain = |f: f64| {
            let out = downsample(&sine(f, RATE_24K, AMPLITUDE, 12_000));
            amplitude_at(steady(&out, RATE_8K), f, RATE_8K) / AMPLITUDE
        };
        let (up_reference, down_reference) = (up_gain(1000.0), down_gain(1000.0));
        for f in frequencies {
            let up = db(up_gain(f) / up_reference);
            let down = db(down_gain(f) / down_reference);
            println!("passband {f} Hz: up {up:+.4} dB, down {down:+.4} dB");
            assert!(up.abs() <= 0.5, "upsampler {f} Hz: {up} dB");
            assert!(down.abs() <= 0.5, "downsampler {f} Hz: {down} dB");
        }
    }

    #[test]
    fn upsampling_images_are_60_db_down() {
        let cases: [(f64, &[f64]); 2] = [
            (1000.0, &[7000.0, 9000.0, 15_000.0, 17_000.0]),
            (3400.0, &[4600.0, 11_400.0]),
        ];
        for (tone, images) in cases {
            let out = upsample(&sine(tone, RATE_8K, AMPLITUDE, 4000));
            let steady = steady(&out, RATE_24K);
            let wanted = amplitude_at(steady, tone, RATE_24K);
            for &image in images {
                let level = db(amplitude_at(steady, image, RATE_24K) / wanted);
                println!("image of {tone} Hz at {image} Hz: {level:.1} dB");
                assert!(level <= -60.0, "image {image} Hz of {tone} Hz: {level} dB");
            }
        }
    }

    #[test]
    fn downsampling_aliases_are_60_db_down() {
        let mixed = add(
            &sine(1000.0, RATE_24K, AMPLITUDE / 2.0, 12_000),
            &sine(6000.0, RATE_24K, AMPLITUDE / 2.0, 12_000),
        );
        let out = downsample(&mixed);
        let steady_mix = steady(&out, RATE_8K);
        let alias =
            db(amplitude_at(steady_mix, 2000.0, RATE_8K)
                / amplitude_at(steady_mix, 1000.0, RATE_8K));
        println!("1 kHz + 6 kHz: alias at 2 kHz {alias:.1} dB");
        assert!(alias <= -60.0, "6 kHz alias: {alias} dB");

        let reference_out = downsample(&sine(1000.0, RATE_24K, AMPLITUDE, 12_000));
        let reference = amplitude_at(steady(&reference_out, RATE_8K), 1000.0, RATE_8K);
        for tone in [4600.0, 5000.0, 7000.0, 9000.0, 11_000.0] {
            let folded = (tone - RATE_8K * (tone / RATE_8K).round()).abs();
            let out = downsample(&sine(tone, RATE_24K, AMPLITUDE, 12_000));
            let level = db(amplitude_at(steady(&out, RATE_8K), folded, RATE_8K) / reference);
            println!("{tone} Hz aliasing to {folded} Hz: {level:.1} dB");
            assert!(level <= -60.0, "{tone} Hz -> {folded} Hz: {level} dB");
        }
    }

    /// Largest step between neighbouring samples after start-up, and the
    /// largest deviation from the ideal sine delayed by `delay` samples.
    fn smoothness(output: &[i16], frequency: f64, rate: f64, delay: usize) -> (i32, f64) {
        let settle = 2 * PROTOTYPE_TAPS;
        let max_step = output[settle..]
            .windows(2)
            .map(|pair| (i32::from(pair[1]) - i32::from(pair[0])).abs())
            .max()
            .unwrap();
        let max_error = output
            .iter()
            .enumerate()
            .skip(settle)
            .map(|(n, &y)| {
                let ideal = AMPLITUDE * (2.0 * PI * frequency * (n - delay) as f64 / rate).sin();
                (f64::from(y) - ideal).abs()
            })
            .fold(0.0, f64::max);
        (max_step, max_error)
    }

    #[test]
    fn frame_seams_are_continuous() {
        let frequency = 1000.0;
        // A sine of amplitude A changes by at most 2 A sin(pi f / fs) per sample.
        let step_bound =
            |rate: f64| (2.0 * AMPLITUDE * (PI * frequency / rate).sin() * 1.001 + 4.0) as i32;

        let input = sine(frequency, RATE_8K, AMPLITUDE, 8000);
        let mut upsampler = Upsampler8To24::new();
        let mut out = Vec::new();
        for frame in input.chunks_exact(160) {
            upsampler.process(frame, &mut out);
        }
        let (step, error) = smoothness(&out, frequency, RATE_24K, Upsampler8To24::DELAY_SAMPLES);
        println!("upsampler: max step {step}, max error vs ideal {error:.1} LSB");
        assert!(step <= step_bound(RATE_24K), "step {step}");
        assert!(error <= 4.0, "error {error}");

        let input = sine(frequency, RATE_24K, AMPLITUDE, 24_000);
        let mut downsampler = Downsampler24To8::new();
        let mut out = Vec::new();
        for frame in input.chunks_exact(480) {
            downsampler.process(frame, &mut out);
        }
        let (step, error) = smoothness(&out, frequency, RATE_8K, Downsampler24To8::DELAY_SAMPLES);
        println!("downsampler: max step {step}, max error vs ideal {error:.1} LSB");
        assert!(step <= step_bound(RATE_8K), "step {step}");
        assert!(error <= 4.0, "error {error}");
    }

    #[test]
    fn impulse_peaks_after_the_documented_delay() {
        let mut impulse = vec![0_i16; 400];
        impulse[0] = 20_000;
        let peak = |signal: &[i16]| {
            signal
                .iter()
                .enumerate()
                .max_by_key(|(_, sample)| sample.unsigned_abs())
                .unwrap()
                .0
        };
        assert_eq!(peak(&upsample(&impulse)), Upsampler8To24::DELAY_SAMPLES);
        assert_eq!(peak(&downsample(&impulse)), Downsampler24To8::DELAY_SAMPLES);
        let up_micros = Upsampler8To24::DELAY_SAMPLES as f64 / RATE_24K * 1e6;
        let down_micros = Downsampler24To8::DELAY_SAMPLES as f64 / RATE_8K * 1e6;
        assert_eq!(up_micros, f64::from(ALGORITHMIC_DELAY_MICROS));
        assert_eq!(down_micros, f64::from(ALGORITHMIC_DELAY_MICROS));
    }

    #[test]
    fn full_scale_input_saturates_without_wrapping() {
        // 400 Hz at 8 kHz: 10 samples high, 10 low; at 24 kHz: 30 and 30.
        let square = |half_period: usize, len: usize| -> Vec<i16> {
            (0..len)
                .map(|n| {
                    if (n / half_period).is_multiple_of(2) {
                        i16::MAX
                    } else {
                        i16::MIN
                    }
                })
                .collect()
        };
        let check = |output: &[i16],
                     input_half_period: usize,
                     ratio_num: usize,
                     ratio_den: usize,
                     delay: usize| {
            let output_half_period = input_half_period * ratio_num / ratio_den;
            let mut clipped = 0;
            for (n, &y) in output.iter().enumerate().skip(2 * PROTOTYPE_TAPS) {
                let position = (n - delay) % (2 * output_half_period);
                // Mid-plateau the output must have the plateau's sign.
                let centre = output_half_period / 2;
                if position.abs_diff(centre) <= output_half_period / 4 {
                    assert!(y > 0, "sample {n}: {y}");
                }
                let centre_low = centre + output_half_period;
                if position.abs_diff(centre_low) <= output_half_period / 4 {
                    assert!(y < 0, "sample {n}: {y}");
                }
                if y == i16::MAX || y == i16::MIN {
                    clipped += 1;
                }
            }
            // Gibbs overshoot exceeds full scale, so saturation must have kicked in.
            assert!(clipped > 0);
        };
        check(
            &upsample(&square(10, 2000)),
            10,
            3,
            1,
            Upsampler8To24::DELAY_SAMPLES,
        );
        check(
            &downsample(&square(30, 6000)),
            30,
            1,
            3,
            Downsampler24To8::DELAY_SAMPLES,
        );

        for level in [i16::MAX, i16::MIN] {
            let constant = vec![level; 3000];
            for output in [upsample(&constant), downsample(&constant)] {
                for &y in &output[2 * PROTOTYPE_TAPS..] {
                    assert!((i32::from(y) - i32::from(level)).abs() <= 2, "{level}: {y}");
                }
                // The step from silence rings below zero before it rises (up to
                // ~13% of full scale at the interpolated positions next to the
                // edge); a wrap-around would land near the opposite full scale.
                let wrong_sign = output
                    .iter()
                    .filter(|&&y| y.signum() == -level.signum())
                    .map(|&y| y.unsigned_abs())
                    .max()
                    .unwrap_or(0);
                assert!(wrong_sign < 16_384, "{level}: {wrong_sign}");
            }
        }
    }

    #[test]
    fn reset_returns_to_the_initial_state() {
        let input = speech_like(RATE_24K, 1000);

        let mut upsampler = Upsampler8To24::new();
        let mut scratch = Vec::new();
        upsampler.process(&input[..77], &mut scratch);
        upsampler.reset();
        let mut out = Vec::new();
        upsampler.process(&input, &mut out);
        assert_eq!(out, upsample(&input));

        let mut downsampler = Downsampler24To8::new();
        downsampler.process(&input[..77], &mut scratch);
        downsampler.reset();
        let mut out = Vec::new();
        downsampler.process(&input, &mut out);
        assert_eq!(out, downsample(&input));
    }

    #[test]
    fn silence_in_gives_silence_out_and_empty_input_is_a_no_op() {
        let mut upsampler = Upsampler8To24::default();
        let mut downsampler = Downsampler24To8::default();
        let mut out = Vec::new();
        upsampler.process(&[], &mut out);
        downsampler.process(&[], &mut out);
        assert!(out.is_empty());
        upsampler.process(&[0; 160], &mut out);
        downsampler.process(&[0; 480], &mut out);
        assert_eq!(out.len(), 640);
        assert!(out.iter().all(|&y| y == 0));
    }

    /// The sample-based tests above bottom out at the `i16` quantisation
    /// floor (far stopband aliases round to exact silence); this checks the
    /// `f32` taps themselves on a 5 Hz grid.
    #[test]
    fn prototype_response_meets_the_design_target() {
        let response_db = |frequency: f64| {
            let omega = 2.0 * PI * frequency / RATE_24K;
            let (re, im) = COEFFICIENTS.downsampler.iter().enumerate().fold(
                (0.0, 0.0),
                |(re, im), (n, &tap)| {
                    let phase = omega * n as f64;
                    (
                        re + f64::from(tap) * phase.cos(),
                        im - f64::from(tap) * phase.sin(),
                    )
                },
            );
            db((re * re + im * im).sqrt())
        };
        let grid = |from: u32, to: u32| (from / 5..=to / 5).map(|step| f64::from(step * 5));
        let passband_deviation = grid(0, 3400)
            .map(|f| response_db(f).abs())
            .fold(0.0, f64::max);
        let stopband_peak = grid(4600, 12_000)
            .map(response_db)
            .fold(f64::NEG_INFINITY, f64::max);
        println!("prototype: passband 0-3400 Hz within {passband_deviation:.4} dB");
        println!("prototype: stopband 4600-12000 Hz peak {stopband_peak:.1} dB");
        assert!(passband_deviation < 0.05, "{passband_deviation} dB");
        assert!(stopband_peak < -80.0, "{stopband_peak} dB");
    }

    #[test]
    fn prototype_is_symmetric_with_unity_dc_gain() {
        let taps = &COEFFICIENTS.downsampler;
        let sum: f32 = taps.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        for (a, b) in taps.iter().zip(taps.iter().rev()) {
            assert_eq!(a, b);
        }
        for phase in 0..RATIO {
            let sum: f32 = COEFFICIENTS.upsampler.iter().map(|tap| tap[phase]).sum();
            assert!((sum - 1.0).abs() < 1e-3, "{sum}");
        }
    }
}
