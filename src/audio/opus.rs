//! Opus for wideband SIP peers (RFC 6716 codec, RFC 7587 RTP payload), on the system libopus
//! through `audiopus`.
//!
//! # Why it looks like this
//!
//! - **24 kHz mono on our side, both ways.** libopus encodes from and decodes to 24 kHz
//!   natively (it is one of its internal rates), which is exactly the Realtime API's `pcm16`
//!   format, so an Opus call needs no resampler at all on the `pcm16` path. The encoder is mono:
//!   RFC 7587 always signals `opus/48000/2`, but a receiver must decode mono and stereo packets
//!   alike, and a mono decoder downmixes a stereo packet, so both ends may stay mono.
//! - **The RTP clock is 48 kHz whatever the audio rate** (RFC 7587 section 4.1): a 20 ms frame
//!   is 480 samples here but advances the RTP timestamp by 960; [`FrameDuration::rtp_ticks`]
//!   says so, and nothing else should compute it.
//! - **Loss is expected.** The encoder runs the VoIP application with in-band FEC: each packet
//!   carries a low-bitrate copy of the previous frame, which [`OpusDecoder::recover_from_next`]
//!   uses when exactly one packet is lost and its successor has arrived (`decode_fec`).
//!   [`OpusEncoder::set_expected_loss_percent`] is meant to follow the fraction lost the peer
//!   reports in RTCP, since libopus spends FEC bits in proportion to it. With nothing to recover
//!   from, [`OpusDecoder::conceal`] runs libopus' packet-loss concealment.
//! - **The network cannot crash us.** Payloads are whatever a peer sent. libopus validates them
//!   and returns an error code, which becomes [`OpusError::Decode`]; the decoder counts it, and
//!   [`OpusDecoder::decode_or_conceal`] (the media path's entry point) conceals instead, so a
//!   corrupt packet costs one frame of PLC, never the call. The decode buffer holds 120 ms, the
//!   longest Opus packet, so any frame size the peer chooses (2.5 to 120 ms) decodes, and the
//!   sample count is reported rather than assumed.
//!
//! # G.711 upstream sessions
//!
//! When the Realtime session uses `g711_ulaw`/`g711_alaw`, an Opus call transcodes through
//! 8 kHz with the existing resamplers: Opus -> 24 kHz -> [`Downsampler24To8`] -> G.711 towards
//! the model, and G.711 -> 8 kHz -> [`Upsampler8To24`] -> Opus towards the caller. Both legs
//! keep exact 20 ms framing (480 <-> 160 samples):
//!
//! ```
//! use sip_realtime_bridge::audio::opus::{EncoderConfig, OpusDecoder, OpusEncoder};
//! use sip_realtime_bridge::audio::{
//!     Downsampler24To8, G711Law, SAMPLES_PER_FRAME_8K, SAMPLES_PER_FRAME_24K, Upsampler8To24,
//! };
//!
//! // Caller -> model: Opus payload -> 24 kHz -> 8 kHz -> PCMU.
//! let mut caller = OpusEncoder::new(EncoderConfig::default())?;
//! let mut payload = Vec::new();
//! caller.encode(&[0i16; SAMPLES_PER_FRAME_24K], &mut payload)?;
//! let mut decoder = OpusDecoder::new()?;
//! let (mut pcm24k, mut pcm8k, mut ulaw) = (Vec::new(), Vec::new(), Vec::new());
//! assert_eq!(decoder.decode_or_conceal(&payload, &mut pcm24k), SAMPLES_PER_FRAME_24K);
//! Downsampler24To8::new().process(&pcm24k, &mut pcm8k);
//! G711Law::Ulaw.encode_into(&pcm8k, &mut ulaw);
//! assert_eq!(ulaw.len(), SAMPLES_PER_FRAME_8K);
//!
//! // Model -> caller: PCMU -> 8 kHz -> 24 kHz -> Opus payload.
//! let (mut back8k, mut back24k, mut out) = (Vec::new(), Vec::new(), Vec::new());
//! G711Law::Ulaw.decode_into(&ulaw, &mut back8k);
//! Upsampler8To24::new().process(&back8k, &mut back24k);
//! let mut encoder = OpusEncoder::new(EncoderConfig::default())?;
//! encoder.encode(&back24k, &mut out)?;
//! assert!(!out.is_empty());
//! # Ok::<(), sip_realtime_bridge::audio::opus::OpusError>(())
//! ```
//!
//! [`Downsampler24To8`]: super::Downsampler24To8
//! [`Upsampler8To24`]: super::Upsampler8To24

use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Bitrate, Channels, MutSignals, SampleRate};

use super::SAMPLES_PER_FRAME_24K;

/// The PCM rate on our side of the codec, both directions.
pub const SAMPLE_RATE: u32 = 24_000;
/// The RTP clock rate of Opus, always (RFC 7587 section 4.1).
pub const RTP_CLOCK_RATE: u32 = 48_000;
/// Samples at 24 kHz in the longest Opus packet (120 ms): the decode buffer size.
pub const MAX_PACKET_SAMPLES: usize = 2_880;
/// Room for one encoded packet; libopus' documentation recommends 4000 octets.
const MAX_PAYLOAD_LEN: usize = 4_000;

/// Samples per millisecond at [`SAMPLE_RATE`].
const SAMPLES_PER_MS: usize = 24;

/// Why an Opus operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpusError {
    /// libopus refused to create an encoder or decoder.
    #[error("creating the Opus {what}: {source}")]
    Create {
        /// `"encoder"` or `"decoder"`.
        what: &'static str,
        /// libopus' reason.
        #[source]
        source: audiopus::Error,
    },
    /// libopus refused an encoder setting.
    #[error("setting the Opus encoder's {setting}: {source}")]
    Configure {
        /// The setting.
        setting: &'static str,
        /// libopus' reason.
        #[source]
        source: audiopus::Error,
    },
    /// The expected packet loss is over 100%.
    #[error("expected packet loss of {0}% is over 100%")]
    LossPercent(u8),
    /// The PCM handed to the encoder is not one frame long.
    #[error("frame of {got} samples, the encoder takes {expected}")]
    FrameLength {
        /// Samples per frame at the configured duration.
        expected: usize,
        /// Samples given.
        got: usize,
    },
    /// libopus failed to encode.
    #[error("Opus encode: {0}")]
    Encode(#[source] audiopus::Error),
    /// An RTP payload of zero octets (not an Opus packet).
    #[error("empty Opus payload")]
    EmptyPayload,
    /// libopus rejected a payload as corrupt (or a packet longer than 120 ms).
    #[error("corrupt Opus payload: {0}")]
    Decode(#[source] audiopus::Error),
}

/// Frame durations the encoder can produce (the ones RTP peers use; Opus also has 2.5, 5, 80,
/// 100 and 120 ms, which the decoder accepts as well).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FrameDuration {
    /// 10 ms.
    Ms10,
    /// 20 ms, the usual `ptime`.
    #[default]
    Ms20,
    /// 40 ms.
    Ms40,
    /// 60 ms.
    Ms60,
}

impl FrameDuration {
    /// The duration in milliseconds.
    pub fn millis(self) -> u32 {
        match self {
            Self::Ms10 => 10,
            Self::Ms20 => 20,
            Self::Ms40 => 40,
            Self::Ms60 => 60,
        }
    }

    /// Samples per frame at 24 kHz (480 for 20 ms).
    pub fn samples(self) -> usize {
        self.millis() as usize * SAMPLES_PER_MS
    }

    /// RTP timestamp increment per frame at the 48 kHz RTP clock (960 for 20 ms).
    pub fn rtp_ticks(self) -> u32 {
        self.millis() * (RTP_CLOCK_RATE / 1000)
    }
}

/// Encoder settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Frame duration (20 ms by default).
    pub frame: FrameDuration,
    /// Target bitrate in bits per second (32 kbit/s by default: super-wideband speech with
    /// room for FEC).
    pub bitrate_bps: u32,
    /// In-band FEC (on by default).
    pub fec: bool,
    /// Expected packet loss in percent, 0-100 (10 by default); libopus sizes FEC by it.
    pub expected_loss_percent: u8,
    /// Encoder complexity, 0-10 (10, libopus' default, by default): lower trades quality for
    /// CPU when many calls share a host (see `benches/opus.rs`).
    pub complexity: u8,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            frame: FrameDuration::Ms20,
            bitrate_bps: 32_000,
            fec: true,
            expected_loss_percent: 10,
            complexity: 10,
        }
    }
}

/// Encodes 24 kHz mono PCM (model audio) into Opus RTP payloads.
#[derive(Debug)]
pub struct OpusEncoder {
    inner: Encoder,
    frame: FrameDuration,
}

fn configure(setting: &'static str) -> impl FnOnce(audiopus::Error) -> OpusError {
    move |source| OpusError::Configure { setting, source }
}

impl OpusEncoder {
    /// An encoder for 24 kHz mono with the VoIP application and `config`'s settings.
    pub fn new(config: EncoderConfig) -> Result<Self, OpusError> {
        let mut inner = Encoder::new(SampleRate::Hz24000, Channels::Mono, Application::Voip)
            .map_err(|source| OpusError::Create {
                what: "encoder",
                source,
            })?;
        let bitrate = i32::try_from(config.bitrate_bps).unwrap_or(i32::MAX);
        inner
            .set_bitrate(Bitrate::BitsPerSecond(bitrate))
            .map_err(configure("bitrate"))?;
        inner
            .set_inband_fec(config.fec)
            .map_err(configure("in-band FEC"))?;
        inner
            .set_complexity(config.complexity)
            .map_err(configure("complexity"))?;
        let mut encoder = Self {
            inner,
            frame: config.frame,
        };
        encoder.set_expected_loss_percent(config.expected_loss_percent)?;
        Ok(encoder)
    }

    /// The frame duration this encoder takes and produces.
    pub fn frame(&self) -> FrameDuration {
        self.frame
    }

    /// Samples per call to [`Self::encode`].
    pub fn frame_samples(&self) -> usize {
        self.frame.samples()
    }

    /// The encoder's algorithmic delay (lookahead) in 24 kHz samples.
    pub fn lookahead_samples(&self) -> Result<usize, OpusError> {
        self.inner
            .lookahead()
            .map(|n| n as usize)
            .map_err(configure("lookahead"))
    }

    /// Tells the encoder how much loss to protect against (0-100%); for instance the fraction
    /// lost of the peer's latest RTCP report block.
    pub fn set_expected_loss_percent(&mut self, percent: u8) -> Result<(), OpusError> {
        if percent > 100 {
            return Err(OpusError::LossPercent(percent));
        }
        self.inner
            .set_packet_loss_perc(percent)
            .map_err(configure("expected packet loss"))
    }

    /// Encodes one frame ([`Self::frame_samples`] samples) and appends the RTP payload to
    /// `out`, returning its length.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> Result<usize, OpusError> {
        let expected = self.frame_samples();
        if pcm.len() != expected {
            return Err(OpusError::FrameLength {
                expected,
                got: pcm.len(),
            });
        }
        let start = out.len();
        out.resize(start + MAX_PAYLOAD_LEN, 0);
        let result = match out.get_mut(start..) {
            Some(buf) => self.inner.encode(pcm, buf).map_err(OpusError::Encode),
            None => Ok(0),
        };
        let len = *result.as_ref().unwrap_or(&0);
        out.truncate(start + len);
        result
    }
}

/// What the decoder has done so far, for the call's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Packets decoded.
    pub decoded: u64,
    /// Frames concealed (PLC), including those standing in for corrupt packets.
    pub concealed: u64,
    /// Frames recovered from the next packet's FEC data.
    pub recovered: u64,
    /// Payloads libopus rejected.
    pub corrupt: u64,
}

/// Decodes Opus RTP payloads straight to 24 kHz mono.
#[derive(Debug)]
pub struct OpusDecoder {
    inner: Decoder,
    scratch: Vec<i16>,
    /// Duration of the last frame decoded, in samples: the size of a concealed frame.
    last_frame_samples: usize,
    stats: DecoderStats,
}

impl OpusDecoder {
    /// A 24 kHz mono decoder (stereo packets are downmixed by libopus).
    pub fn new() -> Result<Self, OpusError> {
        let inner = Decoder::new(SampleRate::Hz24000, Channels::Mono).map_err(|source| {
            OpusError::Create {
                what: "decoder",
                source,
            }
        })?;
        Ok(Self {
            inner,
            scratch: vec![0; MAX_PACKET_SAMPLES],
            last_frame_samples: SAMPLES_PER_FRAME_24K,
            stats: DecoderStats::default(),
        })
    }

    /// Decodes one payload and appends its samples to `out`, returning how many (480 for a
    /// 20 ms packet; whatever duration the peer chose otherwise). On error nothing is appended
    /// and the error is counted.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<usize, OpusError> {
        let result = self.run(Some(payload), MAX_PACKET_SAMPLES, false, out);
        match result {
            Ok(n) => {
                if n > 0 {
                    self.last_frame_samples = n;
                }
                self.stats.decoded += 1;
            }
            Err(_) => self.stats.corrupt += 1,
        }
        result
    }

    /// Decodes a payload from the network, concealing instead if it is corrupt: always appends
    /// a frame, and returns its sample count.
    pub fn decode_or_conceal(&mut self, payload: &[u8], out: &mut Vec<i16>) -> usize {
        match self.decode(payload, out) {
            Ok(n) => n,
            Err(_) => self.conceal(out),
        }
    }

    /// Packet-loss concealment: appends one frame as long as the last one decoded and returns
    /// its sample count.
    pub fn conceal(&mut self, out: &mut Vec<i16>) -> usize {
        self.stats.concealed += 1;
        let frame = self.last_frame_samples;
        self.run(None, frame, false, out)
            .unwrap_or_else(|_| silence(frame, out))
    }

    /// Recovers a single lost frame from the in-band FEC data of the packet after it, and
    /// appends it (the lost frame is taken to be as long as `next_payload`'s). Afterwards,
    /// decode `next_payload` itself with [`Self::decode`] as usual. Without FEC data in it
    /// libopus conceals instead; if it is corrupt, this conceals.
    pub fn recover_from_next(&mut self, next_payload: &[u8], out: &mut Vec<i16>) -> usize {
        let frame = Packet::try_from(next_payload)
            .and_then(|p| self.inner.nb_samples(p))
            .ok()
            .filter(|n| (1..=MAX_PACKET_SAMPLES).contains(n))
            .unwrap_or(self.last_frame_samples);
        match self.run(Some(next_payload), frame, true, out) {
            Ok(n) => {
                self.stats.recovered += 1;
                n
            }
            Err(_) => {
                self.stats.corrupt += 1;
                self.conceal(out)
            }
        }
    }

    /// Samples in the last frame decoded (480 until a packet says otherwise).
    pub fn last_frame_samples(&self) -> usize {
        self.last_frame_samples
    }

    /// Counters so far.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// One libopus decode call into the scratch buffer (`frame` samples of room), appending
    /// what it produced to `out`.
    fn run(
        &mut self,
        payload: Option<&[u8]>,
        frame: usize,
        fec: bool,
        out: &mut Vec<i16>,
    ) -> Result<usize, OpusError> {
        let packet = match payload {
            None => None,
            Some([]) => return Err(OpusError::EmptyPayload),
            Some(bytes) => Some(Packet::try_from(bytes).map_err(OpusError::Decode)?),
        };
        let room = self
            .scratch
            .get_mut(..frame.min(MAX_PACKET_SAMPLES))
            .unwrap_or_default();
        let signals = MutSignals::try_from(room).map_err(OpusError::Decode)?;
        let n = self
            .inner
            .decode(packet, signals, fec)
            .map_err(OpusError::Decode)?;
        out.extend_from_slice(self.scratch.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// Appends `frame` samples of silence (the last resort if libopus refuses even to conceal).
fn silence(frame: usize, out: &mut Vec<i16>) -> usize {
    out.resize(out.len() + frame, 0);
    frame
}

#[cfg(test)]
mod tests;
