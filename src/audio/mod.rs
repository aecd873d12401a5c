//! Audio processing for the bridge: everything between RTP payload bytes on
//! the SIP side and the 24 kHz PCM the OpenAI Realtime API speaks.
//!
//! - [`g711`]: mu-law (PCMU) and A-law (PCMA) companding, bit-exact with the
//!   ITU-T G.191 reference behaviour.
//! - [`resample`]: streaming 8 kHz <-> 24 kHz conversion with a polyphase
//!   Kaiser-windowed FIR, 2 ms algorithmic delay each way.
//!
//! The audio path works in 20 ms frames: [`SAMPLES_PER_FRAME_8K`] samples on
//! the telephony side, [`SAMPLES_PER_FRAME_24K`] on the Realtime side. All code
//! here is sans-IO and allocation-free per frame when callers reuse their
//! output buffers: functions append to a `Vec` the caller owns.
//!
//! One frame of caller audio on its way to a `pcm16` session, and back:
//!
//! ```
//! use sip_realtime_bridge::audio::{
//!     Downsampler24To8, G711Law, SAMPLES_PER_FRAME_8K, SAMPLES_PER_FRAME_24K, Upsampler8To24,
//! };
//!
//! let rtp_payload = [0xFF_u8; SAMPLES_PER_FRAME_8K]; // 20 ms of PCMU silence
//! let (mut pcm8k, mut pcm24k) = (Vec::new(), Vec::new());
//! G711Law::Ulaw.decode_into(&rtp_payload, &mut pcm8k);
//! Upsampler8To24::new().process(&pcm8k, &mut pcm24k);
//! assert_eq!(pcm24k.len(), SAMPLES_PER_FRAME_24K);
//!
//! let (mut back8k, mut payload) = (Vec::new(), Vec::new());
//! Downsampler24To8::new().process(&pcm24k, &mut back8k);
//! G711Law::Ulaw.encode_into(&back8k, &mut payload);
//! assert_eq!(payload, rtp_payload);
//! ```
//!
//! [`opus`] (system libopus) encodes and decodes Opus at 24 kHz mono, the model's rate, so an
//! Opus call with a pcm16 upstream needs no resampling; with a G.711 upstream it transcodes
//! through 8 kHz with the resamplers above.

pub mod g711;
pub mod opus;
pub mod resample;

pub use g711::G711Law;
pub use resample::{ALGORITHMIC_DELAY_MICROS, Downsampler24To8, Upsampler8To24};

/// Duration of one audio frame, matching the usual RTP packetisation.
pub const FRAME_MS: u32 = 20;

/// Samples in one 20 ms frame at 8 kHz (G.711 side).
pub const SAMPLES_PER_FRAME_8K: usize = 160;

/// Samples in one 20 ms frame at 24 kHz (OpenAI Realtime side).
pub const SAMPLES_PER_FRAME_24K: usize = 480;
