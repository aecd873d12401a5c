//! The bridge on Opus calls: the same scenarios as G.711 with a 48 kHz pacer, measured on
//! decoded audio.

use super::*;
use crate::audio::opus::{EncoderConfig, OpusDecoder, OpusEncoder};
use crate::realtime::{Dialect, Session};
use crate::rtp::playout::OPUS_SILENCE;
use crate::sip::sdp::{Codec, Direction, Negotiated};

const TONE_HZ: f64 = 1000.0;
const AMPLITUDE: f64 = 8000.0;

fn opus_negotiated(ptime_ms: u32) -> Negotiated {
    Negotiated {
        codec: Codec::Opus,
        payload_type: 111,
        clock_rate: 48_000,
        channels: 2,
        ptime_ms,
        telephone_event_pt: None,
        remote_rtp: "192.0.2.1:4000".parse().unwrap(),
        remote_rtcp: None,
        rtcp_mux: false,
        direction: Direction::SendRecv,
    }
}

impl Sim {
    /// An Opus call (20 ms) whose session is not ready yet; the session is built from the
    /// profile with its format resolved for Opus, as the shell does.
    fn opus_connecting(body: &str) -> Sim {
        let t0 = Instant::now();
        let config = PacerConfig::for_negotiated(&opus_negotiated(20));
        let pacer = Pacer::new(config, rtp_start(), t0).unwrap();
        let profile = profile(body);
        let mut resolved = profile.clone();
        resolved.audio_format = profile.audio_format.for_codec(Codec::Opus);
        let session = Session::new(&resolved, Dialect::OpenAiGa, t0);
        let bridge = AudioBridge::opus(&profile, session, pacer).unwrap();
        Sim::with_bridge(bridge, t0)
    }

    fn opus_ready(body: &str) -> Sim {
        let mut sim = Sim::opus_connecting(body);
        sim.make_ready();
        sim
    }

    /// The audio of each `input_audio_buffer.append`, decoded from base64.
    fn appends(&self) -> Vec<Vec<u8>> {
        self.sent_of_type("input_audio_buffer.append")
            .iter()
            .map(|a| BASE64.decode(a["audio"].as_str().unwrap()).unwrap())
            .collect()
    }
}

/// `len` samples of a `TONE_HZ` sine of `AMPLITUDE` at `rate`, from sample `from`.
fn tone(rate: f64, from: usize, len: usize) -> Vec<i16> {
    (from..from + len)
        .map(|n| {
            let t = n as f64 / rate;
            (AMPLITUDE * (2.0 * std::f64::consts::PI * TONE_HZ * t).sin()).round() as i16
        })
        .collect()
}

/// `frames` 20 ms Opus packets of the tone, encoded at 24 kHz as a peer would.
fn opus_tone_packets(frames: usize) -> Vec<Vec<u8>> {
    let mut encoder = OpusEncoder::new(EncoderConfig::default()).unwrap();
    (0..frames)
        .map(|k| {
            let mut packet = Vec::new();
            encoder
                .encode(&tone(24_000.0, k * 480, 480), &mut packet)
                .unwrap();
            packet
        })
        .collect()
}

fn s16le(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(2)
        .map(|p| f64::from(i16::from_le_bytes([p[0], p[1]])))
        .collect()
}

fn rms(samples: &[f64]) -> f64 {
    (samples.iter().map(|s| s * s).sum::<f64>() / samples.len() as f64).sqrt()
}

/// Frequency from the rising zero crossings, interpolated between samples: the span from the
/// first crossing to the last over the periods in between.
fn measured_frequency(samples: &[f64], rate: f64) -> f64 {
    let crossings: Vec<f64> = samples
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f64 + w[0] / (w[0] - w[1]))
        .collect();
    assert!(
        crossings.len() >= 2,
        "no tone: {} crossings",
        crossings.len()
    );
    let periods = (crossings.len() - 1) as f64;
    rate * periods / (crossings[crossings.len() - 1] - crossings[0])
}

fn level_db(rms: f64) -> f64 {
    20.0 * (rms / (AMPLITUDE / std::f64::consts::SQRT_2)).log10()
}

/// Decodes the RTP payloads with a fresh decoder, as the peer would.
fn decode_all(payloads: &[&Vec<u8>]) -> Vec<f64> {
    let mut decoder = OpusDecoder::new().unwrap();
    let mut pcm = Vec::new();
    for payload in payloads {
        assert_eq!(decoder.decode(payload, &mut pcm).unwrap(), 480);
    }
    pcm.into_iter().map(f64::from).collect()
}

// ---- caller side --------------------------------------------------------------------------

#[test]
fn opus_caller_tone_arrives_as_pcm16_at_24_khz_with_its_frequency_and_level() {
    let mut sim = Sim::opus_connecting("");
    assert_eq!(sim.bridge.audio_format(), AudioFormat::Pcm16);
    let packets = opus_tone_packets(40);
    // Before the session is ready: dropped and counted.
    sim.caller_frame(&packets[0]);
    sim.make_ready();
    for packet in &packets[1..] {
        sim.caller_frame(packet);
    }
    let appends = sim.appends();
    assert_eq!(appends.len(), 39);
    assert!(
        appends.iter().all(|a| a.len() == 960),
        "480 s16 samples each"
    );
    // Past the codec's delay and settling.
    let pcm = s16le(&appends[5..].concat());
    let frequency = measured_frequency(&pcm, 24_000.0);
    assert!(
        (frequency - TONE_HZ).abs() < 5.0,
        "measured {frequency} Hz, sent {TONE_HZ} Hz"
    );
    let level = level_db(rms(&pcm));
    assert!(level.abs() < 2.0, "level {level} dB from the tone sent");
    let stats = sim.bridge.stats();
    assert_eq!(
        (
            stats.caller_frames_in,
            stats.caller_frames_dropped,
            stats.caller_frames_appended,
            stats.caller_frames_concealed
        ),
        (40, 1, 39, 0)
    );
}

#[test]
fn concealed_and_corrupt_opus_caller_frames_still_append_one_frame_each() {
    let mut sim = Sim::opus_ready("audio_format = \"pcm16\"");
    // A lost frame before anything was received conceals to silence.
    sim.caller_frame(&[]);
    let packets = opus_tone_packets(10);
    for packet in &packets {
        sim.caller_frame(packet);
    }
    for _ in 0..4 {
        sim.caller_frame(&[]);
    }
    // Corrupt packets (code 3 without its frame count byte, a count of 0) conceal too.
    sim.caller_frame(&[0x03]);
    sim.caller_frame(&[0x03, 0x00]);

    let appends = sim.appends();
    assert_eq!(appends.len(), 1 + 10 + 4 + 2);
    assert!(
        appends.iter().all(|a| a.len() == 960),
        "480 s16 samples each"
    );
    assert!(s16le(&appends[0]).iter().all(|&s| s.abs() < 1.0));
    // The first concealed frame after the tone continues it (PLC), it is not silence.
    let concealed = rms(&s16le(&appends[11]));
    assert!(
        concealed > AMPLITUDE / 20.0,
        "concealment rms {concealed}: silence instead of PLC"
    );
    let stats = sim.bridge.stats();
    assert_eq!(stats.caller_frames_appended, 17);
    assert_eq!(stats.caller_frames_concealed, 1 + 4 + 2);
    assert_eq!(
        sim.bridge.session().stats().input_audio_bytes_sent,
        17 * 960
    );
}

// ---- model side ---------------------------------------------------------------------------

#[test]
fn odd_sized_pcm16_deltas_become_exactly_the_opus_frames_they_hold() {
    let mut sim = Sim::opus_ready("");
    // 3600 samples (150 ms) of the tone and one stray byte, in odd-sized deltas that split
    // samples: 7 whole frames and 240 samples (10 ms).
    let mut bytes: Vec<u8> = tone(24_000.0, 0, 3600)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    bytes.push(0x7F);
    sim.feed(response_created("resp_1"));
    let mut offset = 0;
    for (size, frames_after) in [(1, 0), (961, 1), (4799, 6), (1, 6), (1439, 7)] {
        sim.feed(delta("resp_1", "item_A", &bytes[offset..offset + size]));
        offset += size;
        assert_eq!(
            sim.bridge.stats().model_frames_queued,
            frames_after,
            "after {offset} bytes"
        );
    }
    assert_eq!(offset, bytes.len());
    assert_eq!(sim.bridge.pacer().queued_ms(), 140);
    sim.feed(done("resp_1", "item_A"));
    // The padded last frame counts its 10 ms of audio, not the 20 ms it lasts.
    assert_eq!(sim.bridge.stats().model_frames_queued, 8);
    assert_eq!(sim.bridge.pacer().queued_ms(), 150);

    sim.run_to_slot(9);
    assert_eq!(sim.rtp.len(), 10);
    // One packet per slot at the 48 kHz clock: 960 ticks per 20 ms.
    for (k, timestamp) in sim.timestamps.iter().enumerate() {
        assert_eq!(*timestamp, 1000 + 960 * k as u32);
    }
    let payloads: Vec<&Vec<u8>> = sim.rtp.iter().map(|(_, p)| p).collect();
    assert!(payloads[..8].iter().all(|p| p.as_slice() != OPUS_SILENCE));
    assert!(payloads[8..].iter().all(|p| p.as_slice() == OPUS_SILENCE));
    assert_eq!(sim.bridge.stats().model_frames_sent, 8);
    assert!(sim.events.iter().any(|e| *e
        == BridgeEvent::Playout(PlayoutEvent::ItemFinished {
            part: AudioPart::new("resp_1", "item_A", 0),
            sent_ms: 150,
        })));

    // Samples split between deltas were put back together: the peer hears the tone.
    let decoded = decode_all(&payloads[..7]);
    let settled = &decoded[3 * 480..];
    let frequency = measured_frequency(settled, 24_000.0);
    assert!((frequency - TONE_HZ).abs() < 5.0, "measured {frequency} Hz");
    let level = level_db(rms(settled));
    assert!(level.abs() < 2.0, "level {level} dB");
}

// ---- barge-in -----------------------------------------------------------------------------

#[test]
fn opus_barge_in_truncates_at_the_frames_sent_and_only_silence_follows() {
    let mut sim = Sim::opus_ready("");
    sim.feed(response_created("resp_1"));
    // 2 s of item_A1 and 0.5 s of item_A2 at 24 kHz s16le, in odd-sized deltas.
    let bytes: Vec<u8> = tone(24_000.0, 0, 48_000)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    for chunk in bytes.chunks(4321) {
        sim.feed(delta("resp_1", "item_A1", chunk));
    }
    sim.feed(done("resp_1", "item_A1"));
    for chunk in bytes[..24_000].chunks(999) {
        sim.feed(delta("resp_1", "item_A2", chunk));
    }
    assert_eq!(sim.bridge.stats().model_frames_queued, 100 + 25);

    const N: u32 = 12;
    sim.run_to_slot(N - 1);
    assert_eq!(sim.bridge.stats().model_frames_sent, u64::from(N));
    sim.ws.clear();
    sim.now = sim.t0 + MS20 * (N - 1) + Duration::from_millis(7);
    sim.feed(speech_started(300));
    assert_eq!(sim.bridge.pacer().queued_frames(), 0);
    assert_eq!(
        sim.ws,
        vec![
            json!({"type": "conversation.item.truncate", "item_id": "item_A1",
                    "content_index": 0, "audio_end_ms": u64::from(N) * 20}),
            json!({"type": "conversation.item.delete", "item_id": "item_A2"}),
        ]
    );
    let barge_in = sim
        .events
        .iter()
        .find_map(|e| match e {
            BridgeEvent::BargeIn(b) => Some(b.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(barge_in.flushed_frames, u64::from(125 - N));
    assert_eq!(barge_in.truncated[0].sent_ms, u64::from(N) * 20);

    // Late deltas are dropped; only Opus silence leaves, on a continuous clock.
    sim.feed(delta("resp_1", "item_A2", &bytes[..9601]));
    sim.feed(done("resp_1", "item_A2"));
    let sent_before = sim.rtp.len();
    sim.run_to_slot(N + 20);
    assert_eq!(sim.rtp.len(), sent_before + 21);
    assert!(
        sim.rtp[sent_before..]
            .iter()
            .all(|(_, p)| p.as_slice() == OPUS_SILENCE)
    );
    for (k, timestamp) in sim.timestamps.iter().enumerate() {
        assert_eq!(*timestamp, 1000 + 960 * k as u32);
    }
    let stats = sim.bridge.stats();
    assert_eq!(stats.model_frames_sent, u64::from(N));
    assert_eq!(stats.frames_after_barge_in, 0);
    assert_eq!(stats.max_reaction, Duration::ZERO);
    assert_eq!(stats.late_deltas_dropped, 1);
    assert_eq!(
        (stats.barge_ins, stats.truncates_sent, stats.deletes_sent),
        (1, 1, 1)
    );

    // The next response plays.
    sim.feed(response_created("resp_2"));
    sim.feed(delta("resp_2", "item_B1", &bytes[..1920]));
    sim.feed(done("resp_2", "item_B1"));
    let sent_before = sim.rtp.len();
    sim.run_to_slot(N + 23);
    let after: Vec<&[u8]> = sim.rtp[sent_before..]
        .iter()
        .map(|(_, p)| p.as_slice())
        .collect();
    assert_eq!(after.len(), 3);
    assert!(after[0] != OPUS_SILENCE && after[1] != OPUS_SILENCE);
    assert_eq!(after[2], OPUS_SILENCE);
}

#[test]
fn opus_without_interrupt_response_keeps_playing() {
    let mut sim =
        Sim::opus_ready("turn_detection = { type = \"server_vad\", interrupt_response = false }");
    sim.feed(response_created("resp_1"));
    let bytes: Vec<u8> = tone(24_000.0, 0, 9600)
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    sim.feed(delta("resp_1", "item_A1", &bytes));
    sim.run_to_slot(4);
    sim.ws.clear();
    sim.feed(speech_started(100));
    assert!(sim.ws.is_empty(), "{:?}", sim.ws);
    assert_eq!(sim.bridge.pacer().queued_frames(), 15);
    sim.run_to_slot(19);
    assert_eq!(sim.bridge.stats().model_frames_sent, 20);
    assert_eq!(sim.bridge.stats().barge_ins, 0);
}

// ---- G.711 session on an Opus call --------------------------------------------------------

#[test]
fn g711_ulaw_profile_on_an_opus_call_transcodes_both_ways() {
    let mut sim = Sim::opus_ready("audio_format = \"g711_ulaw\"");
    assert_eq!(sim.bridge.audio_format(), AudioFormat::G711Ulaw);

    // Caller: Opus packets -> 160 mu-law octets per 20 ms, still the tone.
    for packet in &opus_tone_packets(30) {
        sim.caller_frame(packet);
    }
    let appends = sim.appends();
    assert_eq!(appends.len(), 30);
    assert!(appends.iter().all(|a| a.len() == 160));
    let mut pcm8k = Vec::new();
    G711Law::Ulaw.decode_into(&appends[5..].concat(), &mut pcm8k);
    let pcm8k: Vec<f64> = pcm8k.into_iter().map(f64::from).collect();
    let frequency = measured_frequency(&pcm8k, 8000.0);
    assert!((frequency - TONE_HZ).abs() < 5.0, "measured {frequency} Hz");
    let level = level_db(rms(&pcm8k));
    assert!(level.abs() < 2.0, "level {level} dB");

    // Model: mu-law deltas (850 octets = 106.25 ms) -> 5 whole Opus frames and a last one of
    // 6.25 ms, counted as 6.
    let mut ulaw = Vec::new();
    G711Law::Ulaw.encode_into(&tone(8000.0, 0, 850), &mut ulaw);
    sim.feed(response_created("resp_1"));
    let mut offset = 0;
    for (size, frames_after) in [(1, 0), (333, 2), (516, 5)] {
        sim.feed(delta("resp_1", "item_A", &ulaw[offset..offset + size]));
        offset += size;
        assert_eq!(sim.bridge.stats().model_frames_queued, frames_after);
    }
    sim.feed(done("resp_1", "item_A"));
    assert_eq!(sim.bridge.stats().model_frames_queued, 6);
    assert_eq!(sim.bridge.pacer().queued_ms(), 106);
    assert_eq!(
        sim.bridge.session().received_ms(&"item_A".into(), 0),
        Some(106)
    );
    sim.run_to_slot(6);
    let payloads: Vec<&Vec<u8>> = sim.rtp.iter().map(|(_, p)| p).collect();
    assert_eq!(payloads.len(), 7);
    assert_eq!(payloads[6].as_slice(), OPUS_SILENCE);
    let decoded = decode_all(&payloads[..5]);
    let settled = &decoded[2 * 480..];
    let frequency = measured_frequency(settled, 24_000.0);
    assert!((frequency - TONE_HZ).abs() < 5.0, "measured {frequency} Hz");
    let level = level_db(rms(settled));
    assert!(level.abs() < 2.0, "level {level} dB");
}

// ---- construction -------------------------------------------------------------------------

#[test]
fn an_opus_bridge_needs_a_48_khz_pacer_with_an_encodable_ptime() {
    let t0 = Instant::now();
    let session = || Session::new(&profile(""), Dialect::OpenAiGa, t0);
    let pcmu = Pacer::new(PacerConfig::pcmu(), rtp_start(), t0).unwrap();
    assert!(matches!(
        AudioBridge::opus(&profile(""), session(), pcmu),
        Err(BridgeError::NotOpus { clock_rate: 8000 })
    ));
    let odd_ptime = PacerConfig::for_negotiated(&opus_negotiated(30));
    let pacer = Pacer::new(odd_ptime, rtp_start(), t0).unwrap();
    assert!(matches!(
        AudioBridge::opus(&profile(""), session(), pacer),
        Err(BridgeError::OpusPtime { ptime }) if ptime == Duration::from_millis(30)
    ));
    // 40 ms packets: 960 samples per frame at 24 kHz, 1920 ticks.
    let pacer = Pacer::new(
        PacerConfig::for_negotiated(&opus_negotiated(40)),
        rtp_start(),
        t0,
    )
    .unwrap();
    let mut sim = Sim::with_bridge(
        AudioBridge::opus(&profile(""), session(), pacer).unwrap(),
        t0,
    );
    sim.make_ready();
    sim.feed(response_created("resp_1"));
    sim.feed(delta("resp_1", "item_A", &[0x10; 960 * 2 + 480 * 2]));
    sim.feed(done("resp_1", "item_A"));
    assert_eq!(sim.bridge.stats().model_frames_queued, 2);
    assert_eq!(sim.bridge.pacer().queued_ms(), 60);
}
