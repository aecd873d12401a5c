//! Audio for the fake server: the three wire formats, conversions between them (reusing
//! [`crate::audio`]), the reply sources (tone, file) and the PRNG that sizes reply deltas.

use std::path::Path;

use crate::audio::{Downsampler24To8, G711Law, Upsampler8To24};

use super::FakeError;

/// A wire audio format, in either dialect's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AudioFormat {
    /// 24 kHz mono s16le (`pcm16` / `audio/pcm`).
    Pcm16,
    /// 8 kHz G.711 (`g711_ulaw` / `audio/pcmu`, `g711_alaw` / `audio/pcma`).
    G711(G711Law),
}

impl AudioFormat {
    /// Parses the preview spelling (`pcm16`, `g711_ulaw`, `g711_alaw`).
    pub(crate) fn from_preview(name: &str) -> Option<Self> {
        match name {
            "pcm16" => Some(Self::Pcm16),
            "g711_ulaw" => Some(Self::G711(G711Law::Ulaw)),
            "g711_alaw" => Some(Self::G711(G711Law::Alaw)),
            _ => None,
        }
    }

    /// Parses the GA spelling (`{"type":"audio/pcmu"}` ...).
    pub(crate) fn from_ga(value: &serde_json::Value) -> Option<Self> {
        match value.get("type")?.as_str()? {
            "audio/pcm" => Some(Self::Pcm16),
            "audio/pcmu" => Some(Self::G711(G711Law::Ulaw)),
            "audio/pcma" => Some(Self::G711(G711Law::Alaw)),
            _ => None,
        }
    }

    /// The GA spelling.
    pub(crate) fn to_ga(self) -> serde_json::Value {
        match self {
            Self::Pcm16 => serde_json::json!({"type": "audio/pcm", "rate": 24000}),
            Self::G711(G711Law::Ulaw) => serde_json::json!({"type": "audio/pcmu"}),
            Self::G711(G711Law::Alaw) => serde_json::json!({"type": "audio/pcma"}),
        }
    }

    /// The preview spelling.
    pub(crate) fn to_preview(self) -> &'static str {
        match self {
            Self::Pcm16 => "pcm16",
            Self::G711(G711Law::Ulaw) => "g711_ulaw",
            Self::G711(G711Law::Alaw) => "g711_alaw",
        }
    }

    /// Bytes per millisecond of audio (48 for pcm16, 8 for G.711).
    pub(crate) fn bytes_per_ms(self) -> usize {
        match self {
            Self::Pcm16 => 48,
            Self::G711(_) => 8,
        }
    }

    /// Bytes per sample; deltas are cut on sample boundaries.
    pub(crate) fn bytes_per_sample(self) -> usize {
        match self {
            Self::Pcm16 => 2,
            Self::G711(_) => 1,
        }
    }

    /// Timeline units (1/24 ms, one 24 kHz sample) per sample, so formats share one clock.
    pub(crate) fn units_per_sample(self) -> u64 {
        match self {
            Self::Pcm16 => 1,
            Self::G711(_) => 3,
        }
    }

    /// Decodes bytes to PCM at the format's own rate (a trailing odd pcm16 byte is dropped).
    pub(crate) fn decode(self, bytes: &[u8], out: &mut Vec<i16>) {
        match self {
            Self::Pcm16 => out.extend(
                bytes
                    .chunks_exact(2)
                    .filter_map(|pair| <[u8; 2]>::try_from(pair).ok().map(i16::from_le_bytes)),
            ),
            Self::G711(law) => law.decode_into(bytes, out),
        }
    }
}

/// Converts audio from one wire format to another. Same format: copied byte for byte, so a
/// G.711 echo of G.711 input is exact. Between the two G.711 laws only the companding changes.
pub(crate) fn convert(bytes: &[u8], from: AudioFormat, to: AudioFormat) -> Vec<u8> {
    if from == to {
        return bytes.to_vec();
    }
    let mut pcm = Vec::new();
    from.decode(bytes, &mut pcm);
    match (from, to) {
        (AudioFormat::G711(_), AudioFormat::G711(law)) => {
            let mut out = Vec::with_capacity(pcm.len());
            law.encode_into(&pcm, &mut out);
            out
        }
        (AudioFormat::G711(_), AudioFormat::Pcm16) => {
            let mut wide = Vec::with_capacity(pcm.len() * 3);
            Upsampler8To24::new().process(&pcm, &mut wide);
            pcm16_bytes(&wide)
        }
        (AudioFormat::Pcm16, _) => encode_pcm24k(&pcm, to),
    }
}

/// Encodes 24 kHz PCM into a wire format.
pub(crate) fn encode_pcm24k(pcm: &[i16], to: AudioFormat) -> Vec<u8> {
    match to {
        AudioFormat::Pcm16 => pcm16_bytes(pcm),
        AudioFormat::G711(law) => {
            let mut narrow = Vec::with_capacity(pcm.len() / 3 + 1);
            Downsampler24To8::new().process(pcm, &mut narrow);
            let mut out = Vec::with_capacity(narrow.len());
            law.encode_into(&narrow, &mut out);
            out
        }
    }
}

fn pcm16_bytes(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A sine at 24 kHz with peak 0.25 of full scale (RMS about -15 dBFS): loud enough to hear in
/// the demo and to trip any VAD, with headroom for the resampler.
pub(crate) fn tone_24k(frequency_hz: u32, duration_ms: u32) -> Vec<i16> {
    let samples = u64::from(duration_ms) * 24;
    let step = std::f64::consts::TAU * f64::from(frequency_hz) / 24_000.0;
    (0..samples)
        .map(|n| ((n as f64 * step).sin() * 8192.0).round() as i16)
        .collect()
}

/// Reads a reply file into 24 kHz mono PCM.
pub(crate) fn load_reply_file(path: &Path) -> Result<Vec<i16>, FakeError> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let read_raw = || {
        std::fs::read(path).map_err(|source| FakeError::ReplyFile {
            path: path.to_owned(),
            source,
        })
    };
    let raw_g711 = |law: G711Law| -> Result<Vec<i16>, FakeError> {
        let mut narrow = Vec::new();
        law.decode_into(&read_raw()?, &mut narrow);
        let mut wide = Vec::with_capacity(narrow.len() * 3);
        Upsampler8To24::new().process(&narrow, &mut wide);
        Ok(wide)
    };
    match extension.as_deref() {
        Some("ulaw") => raw_g711(G711Law::Ulaw),
        Some("alaw") => raw_g711(G711Law::Alaw),
        Some("pcm") => {
            let mut pcm = Vec::new();
            AudioFormat::Pcm16.decode(&read_raw()?, &mut pcm);
            Ok(pcm)
        }
        _ => load_wav(path),
    }
}

fn load_wav(path: &Path) -> Result<Vec<i16>, FakeError> {
    let wav_error = |source| FakeError::ReplyWav {
        path: path.to_owned(),
        source,
    };
    let reader = hound::WavReader::open(path).map_err(wav_error)?;
    let spec = reader.spec();
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(wav_error)?,
        hound::SampleFormat::Int => {
            let scale = 2f32.powi(i32::from(spec.bits_per_sample.max(1)) - 1);
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()
                .map_err(wav_error)?
        }
    };
    let channels = usize::from(spec.channels.max(1));
    let mono: Vec<f32> = samples
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / frame.len().max(1) as f32)
        .collect();
    let to_i16 = |v: f32| (v * 32767.0).round().clamp(-32768.0, 32767.0) as i16;
    Ok(match spec.sample_rate {
        24_000 => mono.into_iter().map(to_i16).collect(),
        8_000 => {
            let narrow: Vec<i16> = mono.into_iter().map(to_i16).collect();
            let mut wide = Vec::with_capacity(narrow.len() * 3);
            Upsampler8To24::new().process(&narrow, &mut wide);
            wide
        }
        rate => resample_linear(&mono, rate.max(1))
            .into_iter()
            .map(to_i16)
            .collect(),
    })
}

/// Linear interpolation to 24 kHz for rates the polyphase resampler does not cover. Good
/// enough for a canned reply; the bridge's own audio path never goes through here.
fn resample_linear(input: &[f32], rate: u32) -> Vec<f32> {
    let Some(last) = input.len().checked_sub(1) else {
        return Vec::new();
    };
    let out_len = (input.len() as u64 * 24_000 / u64::from(rate)) as usize;
    let ratio = f64::from(rate) / 24_000.0;
    (0..out_len)
        .map(|n| {
            let position = n as f64 * ratio;
            let index = (position as usize).min(last);
            let next = (index + 1).min(last);
            let fraction = (position - index as f64) as f32;
            let a = input.get(index).copied().unwrap_or(0.0);
            let b = input.get(next).copied().unwrap_or(0.0);
            a + (b - a) * fraction
        })
        .collect()
}

/// SplitMix64: tiny, fast, and the same sequence on every platform for a given seed.
#[derive(Clone, Debug)]
pub(crate) struct Prng(u64);

impl Prng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (`low` when the range is empty).
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low + 1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn wav_at_16k_stereo_becomes_24k_mono() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reply.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..16_000 {
            writer.write_sample(1000_i16).unwrap();
            writer.write_sample(3000_i16).unwrap();
        }
        writer.finalize().unwrap();
        let pcm = load_reply_file(&path).unwrap();
        assert_eq!(pcm.len(), 24_000);
        assert!(pcm.iter().all(|&s| (1999..=2001).contains(&s)));
    }

    #[test]
    fn raw_ulaw_file_is_upsampled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reply.ulaw");
        std::fs::write(&path, [0xFF_u8; 800]).unwrap();
        assert_eq!(load_reply_file(&path).unwrap().len(), 2400);
    }

    #[test]
    fn missing_file_is_an_error_not_a_panic() {
        assert!(load_reply_file(Path::new("/nonexistent/x.wav")).is_err());
    }
}
