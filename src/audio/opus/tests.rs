#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::f64::consts::PI;

use proptest::prelude::*;

use super::*;

fn tone(freq: f64, amplitude: f64, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|n| (amplitude * (2.0 * PI * freq * n as f64 / f64::from(SAMPLE_RATE)).sin()) as i16)
        .collect()
}

/// Speech-like test signal: a gliding voiced harmonic series under a syllable envelope, so
/// that every frame differs from the one before (concealment cannot just repeat it).
fn speech_like(samples: usize) -> Vec<i16> {
    let mut phase = 0.0;
    (0..samples)
        .map(|n| {
            let t = n as f64 / f64::from(SAMPLE_RATE);
            let f0 = 140.0 + 60.0 * (2.0 * PI * 1.7 * t).sin();
            phase += 2.0 * PI * f0 / f64::from(SAMPLE_RATE);
            let envelope = 0.55 + 0.45 * (2.0 * PI * 3.1 * t).sin();
            let voiced: f64 = (1..=12)
                .map(|h| (f64::from(h) * phase).sin() / f64::from(h))
                .sum();
            (6000.0 * envelope * voiced) as i16
        })
        .collect()
}

fn encode_all(config: EncoderConfig, pcm: &[i16]) -> Vec<Vec<u8>> {
    let mut encoder = OpusEncoder::new(config).unwrap();
    pcm.chunks_exact(encoder.frame_samples())
        .map(|frame| {
            let mut out = Vec::new();
            let n = encoder.encode(frame, &mut out).unwrap();
            assert_eq!(n, out.len());
            out
        })
        .collect()
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Goertzel power of `x` at `freq`.
fn goertzel(x: &[i16], freq: f64) -> f64 {
    let w = 2.0 * PI * freq / f64::from(SAMPLE_RATE);
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = f64::from(v) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2
}

fn snr_db(reference: &[i16], test: &[i16]) -> f64 {
    let signal: f64 = reference.iter().map(|&s| f64::from(s).powi(2)).sum();
    let noise: f64 = reference
        .iter()
        .zip(test)
        .map(|(&r, &t)| (f64::from(r) - f64::from(t)).powi(2))
        .sum();
    10.0 * (signal / noise.max(1e-9)).log10()
}

#[test]
fn frame_durations_and_the_48k_rtp_clock() {
    assert_eq!(FrameDuration::Ms20.samples(), SAMPLES_PER_FRAME_24K);
    assert_eq!(FrameDuration::Ms20.rtp_ticks(), 960);
    assert_eq!(
        [
            FrameDuration::Ms10,
            FrameDuration::Ms40,
            FrameDuration::Ms60
        ]
        .map(|f| (f.samples(), f.rtp_ticks())),
        [(240, 480), (960, 1920), (1440, 2880)]
    );
}

#[test]
fn a_1khz_tone_survives_at_the_right_frequency_and_level() {
    for complexity in [10, 5] {
        tone_round_trip(EncoderConfig {
            complexity,
            ..EncoderConfig::default()
        });
    }
}

fn tone_round_trip(config: EncoderConfig) {
    let input = tone(1000.0, 8000.0, SAMPLE_RATE as usize); // one second
    let packets = encode_all(config, &input);
    assert_eq!(packets.len(), 50);
    let mut decoder = OpusDecoder::new().unwrap();
    let mut output = Vec::new();
    for p in &packets {
        assert_eq!(decoder.decode(p, &mut output).unwrap(), 480);
    }
    assert_eq!(output.len(), input.len());
    let delay = OpusEncoder::new(EncoderConfig::default())
        .unwrap()
        .lookahead_samples()
        .unwrap();
    assert!(delay > 0 && delay < 480, "lookahead {delay}");
    // Skip the codec delay and the encoder's first 100 ms of settling.
    let steady = &output[delay + 2400..];
    let reference = &input[2400..input.len() - delay];
    let level_db = 20.0 * (rms(steady) / rms(reference)).log10();
    assert!(level_db.abs() < 1.0, "level off by {level_db:.2} dB");
    // Zero crossings: two per period.
    let crossings = steady
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count() as f64;
    let seconds = steady.len() as f64 / f64::from(SAMPLE_RATE);
    let freq = crossings / 2.0 / seconds;
    assert!((freq - 1000.0).abs() < 5.0, "{freq} Hz");
    // And the energy is at 1 kHz, not beside it.
    let at = goertzel(steady, 1000.0);
    for off in [700.0, 1300.0, 2000.0, 3000.0] {
        assert!(at > 1000.0 * goertzel(steady, off), "{off} Hz within 30 dB");
    }
}

#[test]
fn concealment_fills_the_last_frame_duration() {
    let packets = encode_all(EncoderConfig::default(), &speech_like(4800));
    let mut decoder = OpusDecoder::new().unwrap();
    let mut out = Vec::new();
    // Before any packet: a 20 ms frame.
    assert_eq!(decoder.conceal(&mut out), 480);
    decoder.decode(&packets[0], &mut out).unwrap();
    assert_eq!(decoder.conceal(&mut out), 480);
    assert_eq!(out.len(), 3 * 480);

    let long = encode_all(
        EncoderConfig {
            frame: FrameDuration::Ms40,
            ..EncoderConfig::default()
        },
        &speech_like(4800),
    );
    decoder.decode(&long[0], &mut out).unwrap();
    assert_eq!(decoder.last_frame_samples(), 960);
    assert_eq!(decoder.conceal(&mut out), 960);
    assert_eq!(
        decoder.stats(),
        DecoderStats {
            decoded: 2,
            concealed: 3,
            recovered: 0,
            corrupt: 0
        }
    );
}

/// Decodes `packets` with packet `lost` missing, filling the gap with `fill`, and returns
/// frame `lost` of the output.
fn lost_frame(
    packets: &[Vec<u8>],
    lost: usize,
    fill: impl Fn(&mut OpusDecoder, &[u8], &mut Vec<i16>) -> usize,
) -> Vec<i16> {
    let mut decoder = OpusDecoder::new().unwrap();
    let mut out = Vec::new();
    for (i, p) in packets.iter().enumerate().take(lost + 2) {
        if i == lost {
            assert_eq!(fill(&mut decoder, &packets[i + 1], &mut out), 480);
        } else {
            decoder.decode(p, &mut out).unwrap();
        }
    }
    out[lost * 480..(lost + 1) * 480].to_vec()
}

#[test]
fn fec_recovers_a_lost_frame_better_than_concealment() {
    let config = EncoderConfig {
        expected_loss_percent: 20,
        ..EncoderConfig::default()
    };
    let packets = encode_all(config, &speech_like(2 * SAMPLE_RATE as usize));
    let mut reference = OpusDecoder::new().unwrap();
    let mut all = Vec::new();
    for p in &packets {
        reference.decode(p, &mut all).unwrap();
    }
    // Losses spread over the signal. libopus codes FEC (SILK LBRR) only for frames its VAD
    // calls active, so in the envelope's quiet troughs (frames 27 and 75) the next packet has
    // no FEC data and recovery is exactly concealment; everywhere else it must win clearly.
    let losses = [20, 27, 33, 40, 47, 55, 61, 68, 75, 82, 90];
    let (mut fec_total, mut plc_total, mut clear_wins) = (0.0, 0.0, 0);
    for lost in losses {
        let truth = &all[lost * 480..(lost + 1) * 480];
        let plc = lost_frame(&packets, lost, |d, _, out| d.conceal(out));
        let fec = lost_frame(&packets, lost, |d, next, out| {
            d.recover_from_next(next, out)
        });
        let (plc_snr, fec_snr) = (snr_db(truth, &plc), snr_db(truth, &fec));
        eprintln!("frame {lost}: FEC {fec_snr:.1} dB, PLC {plc_snr:.1} dB");
        assert!(fec_snr >= plc_snr - 0.1, "frame {lost}: FEC worse than PLC");
        if fec_snr > plc_snr + 4.0 {
            clear_wins += 1;
        }
        fec_total += fec_snr;
        plc_total += plc_snr;
    }
    let n = losses.len() as f64;
    let (fec_mean, plc_mean) = (fec_total / n, plc_total / n);
    eprintln!("mean SNR: FEC {fec_mean:.1} dB, PLC {plc_mean:.1} dB");
    assert!(
        clear_wins >= 8,
        "FEC clearly better in only {clear_wins} frames"
    );
    assert!(fec_mean > plc_mean + 10.0);
}

#[test]
fn fec_recovery_counts_and_falls_back_on_a_corrupt_successor() {
    let packets = encode_all(EncoderConfig::default(), &speech_like(4800));
    let mut decoder = OpusDecoder::new().unwrap();
    let mut out = Vec::new();
    decoder.decode(&packets[0], &mut out).unwrap();
    assert_eq!(decoder.recover_from_next(&packets[2], &mut out), 480);
    assert_eq!(decoder.recover_from_next(&[], &mut out), 480);
    let s = decoder.stats();
    assert_eq!((s.recovered, s.corrupt, s.concealed), (1, 1, 1));
}

#[test]
fn peer_frame_sizes_are_reported() {
    for (frame, samples) in [
        (FrameDuration::Ms10, 240),
        (FrameDuration::Ms20, 480),
        (FrameDuration::Ms40, 960),
        (FrameDuration::Ms60, 1440),
    ] {
        let config = EncoderConfig {
            frame,
            ..EncoderConfig::default()
        };
        let mut encoder = OpusEncoder::new(config).unwrap();
        assert_eq!(encoder.frame_samples(), samples);
        let err = encoder.encode(&[0; 480 + 1], &mut Vec::new()).unwrap_err();
        assert_eq!(
            err,
            OpusError::FrameLength {
                expected: samples,
                got: 481
            }
        );
        let packets = encode_all(config, &speech_like(samples * 4));
        let mut decoder = OpusDecoder::new().unwrap();
        let mut out = Vec::new();
        for p in &packets {
            assert_eq!(decoder.decode(p, &mut out).unwrap(), samples, "{frame:?}");
        }
        assert_eq!(decoder.last_frame_samples(), samples);
        assert_eq!(out.len(), samples * 4);
    }
}

#[test]
fn corrupt_payloads_are_errors_and_get_concealed() {
    let mut decoder = OpusDecoder::new().unwrap();
    let mut out = Vec::new();
    assert_eq!(decoder.decode(&[], &mut out), Err(OpusError::EmptyPayload));
    // Code 3 (arbitrary frame count) without its count byte; then a count of zero frames.
    assert!(matches!(
        decoder.decode(&[0x03], &mut out),
        Err(OpusError::Decode(_))
    ));
    assert!(matches!(
        decoder.decode(&[0x03, 0x00], &mut out),
        Err(OpusError::Decode(_))
    ));
    // Code 3 claiming 48 x 20 ms = 960 ms, beyond the 120 ms limit.
    assert!(matches!(
        decoder.decode(&[0x0b, 0x30], &mut out),
        Err(OpusError::Decode(_))
    ));
    assert!(out.is_empty());
    assert_eq!(decoder.decode_or_conceal(&[0x03], &mut out), 480);
    let s = decoder.stats();
    assert_eq!((s.corrupt, s.concealed, s.decoded), (5, 1, 0));
    // The decoder still works afterwards.
    let packets = encode_all(EncoderConfig::default(), &speech_like(480));
    assert_eq!(decoder.decode(&packets[0], &mut out).unwrap(), 480);
}

#[test]
fn bad_settings_are_refused() {
    let mut encoder = OpusEncoder::new(EncoderConfig::default()).unwrap();
    assert_eq!(
        encoder.set_expected_loss_percent(101),
        Err(OpusError::LossPercent(101))
    );
    encoder.set_expected_loss_percent(35).unwrap();
    assert!(matches!(
        OpusEncoder::new(EncoderConfig {
            expected_loss_percent: 200,
            ..EncoderConfig::default()
        }),
        Err(OpusError::LossPercent(200))
    ));
    assert!(matches!(
        OpusEncoder::new(EncoderConfig {
            complexity: 11,
            ..EncoderConfig::default()
        }),
        Err(OpusError::Configure {
            setting: "complexity",
            ..
        })
    ));
}

proptest! {
    #[test]
    fn random_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let mut decoder = OpusDecoder::new().unwrap();
        let mut out = Vec::new();
        match decoder.decode(&bytes, &mut out) {
            Ok(n) => prop_assert!(n == out.len() && n <= MAX_PACKET_SAMPLES),
            Err(_) => prop_assert!(out.is_empty()),
        }
        out.clear();
        let n = decoder.decode_or_conceal(&bytes, &mut out);
        prop_assert!(n > 0 && n <= MAX_PACKET_SAMPLES && n == out.len());
        let m = decoder.recover_from_next(&bytes, &mut out);
        prop_assert!(m > 0 && m <= MAX_PACKET_SAMPLES && n + m == out.len());
    }
}
