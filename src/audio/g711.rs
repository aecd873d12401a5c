//! G.711 companding: mu-law and A-law, 16-bit linear PCM <-> 8-bit codes.
//!
//! The behaviour matches ITU-T G.711 as implemented by the ITU-T G.191 software
//! tools library, bit for bit, for every 16-bit sample and every code:
//!
//! - A-law quantises the top 13 bits of the sample, mu-law the top 14 bits.
//! - Negative samples are folded with a one's complement (`!x`), so `-1`
//!   encodes like `0` with the negative sign bit. This is what G.191 does; a
//!   two's complement fold would move every negative decision threshold by
//!   one LSB and lose bit-exactness with the reference.
//! - mu-law clips the 14-bit magnitude at 8158, the top of its last segment.
//! - Decoding yields the mid-point of the quantisation interval scaled back to
//!   16 bits (mu-law `0x80` -> 32124, A-law `0xAA` -> 32256).
//!
//! Decoding is a lookup in 256-entry tables built at compile time. Encoding
//! finds the segment from the position of the highest set bit. A table
//! indexed by the top 14 (mu-law) or 13 (A-law) bits would be faster in a hot
//! microbenchmark, but costs 16 KiB / 8 KiB of cache shared with the rest of
//! the media path, and the bit version already runs at about 1 ns per sample.
//!
//! The slice functions append to a caller-owned `Vec` so a call path that
//! reuses its buffers does not allocate per 20 ms frame.

/// mu-law adds this bias to the 14-bit magnitude so that every segment starts
/// at a power of two and the segment number falls out of the highest set bit.
const ULAW_BIAS: u16 = 33;

/// Largest 14-bit magnitude mu-law can represent; larger inputs clip to it.
const ULAW_MAX_MAGNITUDE: u16 = 8158;

/// A-law codes have every other bit inverted on the wire (G.711 "even bit
/// inversion") to keep enough transitions on idle lines.
const ALAW_TOGGLE_MASK: u8 = 0x55;

/// Which G.711 companding law a stream uses (PCMU = mu-law, PCMA = A-law).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum G711Law {
    /// mu-law, RTP payload type 0 (PCMU).
    Ulaw,
    /// A-law, RTP payload type 8 (PCMA).
    Alaw,
}

impl G711Law {
    /// Encodes `pcm` and appends one code byte per sample to `out`.
    pub fn encode_into(self, pcm: &[i16], out: &mut Vec<u8>) {
        match self {
            Self::Ulaw => encode_ulaw_into(pcm, out),
            Self::Alaw => encode_alaw_into(pcm, out),
        }
    }

    /// Decodes `codes` and appends one sample per byte to `out`.
    pub fn decode_into(self, codes: &[u8], out: &mut Vec<i16>) {
        match self {
            Self::Ulaw => decode_ulaw_into(codes, out),
            Self::Alaw => decode_alaw_into(codes, out),
        }
    }
}

/// Splits a sample into (sign mask, one's complement magnitude): the mask is
/// `0xFF` for negative samples and `0x00` otherwise.
///
/// XOR with the arithmetic-shift sign mask is `!sample` for negative samples
/// and `sample` otherwise. Speech crosses zero constantly, so this is written
/// branch-free rather than relying on the optimiser to remove a sign test.
/// The magnitude is in `0..=32767`, so `i16::MIN` needs no special case.
#[inline]
fn fold_sign(sample: i16) -> (u8, u16) {
    let sign_mask = sample >> 15;
    (sign_mask as u8, (sample ^ sign_mask).unsigned_abs())
}

/// Encodes one 16-bit linear sample to a mu-law code.
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    let (sign_mask, magnitude) = fold_sign(sample);
    // 33..=8191: the highest set bit is bit 5 for segment 0 up to bit 12 for
    // segment 7.
    let biased = (magnitude >> 2).min(ULAW_MAX_MAGNITUDE) + ULAW_BIAS;
    let segment = 10 - biased.leading_zeros();
    let step_index = (biased >> (segment + 1)) & 0x0F;
    // Fits in 7 bits: segment <= 7, step_index <= 15.
    let code = (sign_mask & 0x80) | (segment << 4) as u8 | step_index as u8;
    !code
}

/// Encodes one 16-bit linear sample to an A-law code.
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    let (sign_mask, magnitude) = fold_sign(sample);
    let magnitude = magnitude >> 3; // 0..=4095
    // Segment 0 and 1 share the step size 2; above that each segment doubles
    // it. The bit length of `magnitude / 32` is exactly the segment number.
    let segment = 16 - (magnitude >> 5).leading_zeros();
    let step_index = (magnitude >> segment.max(1)) & 0x0F;
    // A-law marks positive samples with the top bit.
    let code = (!sign_mask & 0x80) | (segment << 4) as u8 | step_index as u8;
    code ^ ALAW_TOGGLE_MASK
}

/// Decodes one mu-law code to a 16-bit linear sample.
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_DECODE_TABLE
        .get(usize::from(code))
        .copied()
        .unwrap_or_default()
}

/// Decodes one A-law code to a 16-bit linear sample.
#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_DECODE_TABLE
        .get(usize::from(code))
        .copied()
        .unwrap_or_default()
}

/// Encodes `pcm` to mu-law, appending one byte per sample to `out`.
pub fn encode_ulaw_into(pcm: &[i16], out: &mut Vec<u8>) {
    out.extend(pcm.iter().map(|&sample| ulaw_encode(sample)));
}

/// Decodes mu-law `codes`, appending one sample per byte to `out`.
pub fn decode_ulaw_into(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&code| ulaw_decode(code)));
}

/// Encodes `pcm` to A-law, appending one byte per sample to `out`.
pub fn encode_alaw_into(pcm: &[i16], out: &mut Vec<u8>) {
    out.extend(pcm.iter().map(|&sample| alaw_encode(sample)));
}

/// Decodes A-law `codes`, appending one sample per byte to `out`.
pub fn decode_alaw_into(codes: &[u8], out: &mut Vec<i16>) {
    out.extend(codes.iter().map(|&code| alaw_decode(code)));
}

/// mu-law reconstruction: the interval mid-point on the 14-bit scale is
/// `(2 * step_index + 33) << segment` minus the encoder bias, times 4 for 16 bits.
const fn ulaw_decode_formula(code: u8) -> i16 {
    let bits = !code;
    let segment = (bits >> 4) & 0x07;
    let step_index = (bits & 0x0F) as i32;
    let magnitude = (((2 * step_index + ULAW_BIAS as i32) << segment) - ULAW_BIAS as i32) * 4;
    // Largest magnitude is 32124, so the cast is lossless.
    let magnitude = magnitude as i16;
    if code & 0x80 == 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// A-law reconstruction: segment 0 has its mid-points at odd values, the
/// others at `(2 * step_index + 33) << (segment - 1)`, all on the 13-bit scale
/// and times 8 for 16 bits.
const fn alaw_decode_formula(code: u8) -> i16 {
    let bits = code ^ ALAW_TOGGLE_MASK;
    let segment = (bits >> 4) & 0x07;
    let step_index = (bits & 0x0F) as i32;
    let magnitude = if segment == 0 {
        2 * step_index + 1
    } else {
        (2 * step_index + 33) << (segment - 1)
    };
    // Largest magnitude is 4032 * 8 = 32256, so the cast is lossless.
    let magnitude = (magnitude * 8) as i16;
    if bits & 0x80 == 0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Tables are filled in a `const fn`, where iterators are not available; the
/// index is a `u8` widened to `usize`, always inside the 256 entries.
#[allow(clippy::indexing_slicing)]
const fn build_decode_table(law: G711Law) -> [i16; 256] {
    let mut table = [0_i16; 256];
    let mut code: u8 = 0;
    loop {
        table[code as usize] = match law {
            G711Law::Ulaw => ulaw_decode_formula(code),
            G711Law::Alaw => alaw_decode_formula(code),
        };
        if code == u8::MAX {
            break;
        }
        code += 1;
    }
    table
}

static ULAW_DECODE_TABLE: [i16; 256] = build_decode_table(G711Law::Ulaw);
static ALAW_DECODE_TABLE: [i16; 256] = build_decode_table(G711Law::Alaw);

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    //! The reference here is built from the G.711 tables themselves
    //! (segment end points, 16 equal steps per segment, output at the interval
    //! mid-point) and encodes by searching for the interval that holds the
    //! input. It shares no code or bit tricks with the implementation above.

    use super::*;

    /// One quantisation interval on the law's native scale.
    struct Level {
        lower_decision: i32,
        output: i32,
    }

    /// Builds the 128 magnitude levels from the segment end points: each
    /// segment is split into 16 equal intervals and the decoder output is the
    /// interval mid-point.
    fn levels_from_segments(segment_ends: &[i32; 9]) -> Vec<Level> {
        let mut levels = Vec::new();
        for pair in segment_ends.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            let step = (end - start) / 16;
            assert_eq!(step * 16, end - start);
            for k in 0..16 {
                let lower = start + k * step;
                levels.push(Level {
                    lower_decision: lower,
                    output: lower + step / 2,
                });
            }
        }
        levels
    }

    /// G.711 Table 1a (A-law), 13-bit scale: segments 0..32 and 32..64 have
    /// step 2, then the step doubles per segment up to 2048..4096.
    fn alaw_levels() -> Vec<Level> {
        levels_from_segments(&[0, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    }

    /// G.711 Table 2a (mu-law), 14-bit scale: segment end points 0, 31, 95,
    /// 223, ..., 8159. The first interval of the first segment is half width
    /// (0..1, output 0), which is modelled by starting that segment at -1.
    fn ulaw_levels() -> Vec<Level> {
        let mut levels = levels_from_segments(&[-1, 31, 95, 223, 479, 991, 2015, 4063, 8159]);
        levels[0].lower_decision = 0;
        levels
    }

    /// One's complement fold onto the law's scale, as G.191 does it.
    fn reference_magnitude(sample: i16, scale_shift: u32) -> (bool, i32) {
        let value = i32::from(sample);
        if value < 0 {
            (true, (-value - 1) >> scale_shift)
        } else {
            (false, value >> scale_shift)
        }
    }

    /// Index of the interval containing `magnitude`; above the top decision
    /// value the quantiser saturates in the last interval.
    fn search_level(levels: &[Level], magnitude: i32) -> usize {
        levels
            .iter()
            .rposition(|level| level.lower_decision <= magnitude)
            .unwrap()
    }

    fn reference_ulaw_encode(levels: &[Level], sample: i16) -> u8 {
        let (negative, magnitude) = reference_magnitude(sample, 2);
        let level = search_level(levels, magnitude) as u8;
        let sign = if negative { 0x80 } else { 0 };
        !(sign | level)
    }

    fn reference_alaw_encode(levels: &[Level], sample: i16) -> u8 {
        let (negative, magnitude) = reference_magnitude(sample, 3);
        let level = search_level(levels, magnitude) as u8;
        let sign = if negative { 0 } else { 0x80 };
        (sign | level) ^ 0x55
    }

    fn reference_ulaw_decode(code: u8) -> i16 {
        let bits = !code;
        let output = ulaw_levels()[usize::from(bits & 0x7F)].output * 4;
        let signed = if bits & 0x80 != 0 { -output } else { output };
        i16::try_from(signed).unwrap()
    }

    fn reference_alaw_decode(code: u8) -> i16 {
        let bits = code ^ 0x55;
        let output = alaw_levels()[usize::from(bits & 0x7F)].output * 8;
        let signed = if bits & 0x80 != 0 { output } else { -output };
        i16::try_from(signed).unwrap()
    }

    fn all_samples() -> impl Iterator<Item = i16> {
        i16::MIN..=i16::MAX
    }

    #[test]
    fn reference_tables_have_the_g711_shape() {
        let ulaw = ulaw_levels();
        let alaw = alaw_levels();
        assert_eq!(ulaw.len(), 128);
        assert_eq!(alaw.len(), 128);
        assert_eq!(ulaw[127].output, 8031);
        assert_eq!(ulaw[16].lower_decision, 31);
        assert_eq!(ulaw[16].output, 33);
        assert_eq!(alaw[0].output, 1);
        assert_eq!(alaw[127].output, 4032);
    }

    #[test]
    fn ulaw_encode_matches_reference_for_every_sample() {
        let levels = ulaw_levels();
        for sample in all_samples() {
            let expected = reference_ulaw_encode(&levels, sample);
            assert_eq!(ulaw_encode(sample), expected, "sample {sample}");
        }
    }

    #[test]
    fn alaw_encode_matches_reference_for_every_sample() {
        let levels = alaw_levels();
        for sample in all_samples() {
            let expected = reference_alaw_encode(&levels, sample);
            assert_eq!(alaw_encode(sample), expected, "sample {sample}");
        }
    }

    #[test]
    fn decode_matches_reference_for_every_code() {
        for code in 0..=u8::MAX {
            assert_eq!(
                ulaw_decode(code),
                reference_ulaw_decode(code),
                "ulaw {code:#04x}"
            );
            assert_eq!(
                alaw_decode(code),
                reference_alaw_decode(code),
                "alaw {code:#04x}"
            );
        }
    }

    #[test]
    fn known_anchor_values() {
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0x80), 32124);
        assert_eq!(ulaw_decode(0x00), -32124);
        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32256);
        assert_eq!(alaw_decode(0x2A), -32256);

        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(-1), 0x7F);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn decoded_values_are_fixed_points_of_the_round_trip() {
        for code in 0..=u8::MAX {
            let u = ulaw_decode(code);
            assert_eq!(ulaw_decode(ulaw_encode(u)), u, "ulaw {code:#04x}");
            let a = alaw_decode(code);
            assert_eq!(alaw_decode(alaw_encode(a)), a, "alaw {code:#04x}");
        }
    }

    #[test]
    fn codes_other_than_negative_zero_round_trip_exactly() {
        for code in 0..=u8::MAX {
            // mu-law 0x7F is "-0" and decodes to 0, which encodes as +0 (0xFF).
            if code != 0x7F {
                assert_eq!(ulaw_encode(ulaw_decode(code)), code, "ulaw {code:#04x}");
            }
            assert_eq!(alaw_encode(alaw_decode(code)), code, "alaw {code:#04x}");
        }
    }

    #[test]
    fn slice_functions_append_and_dispatch() {
        let pcm: Vec<i16> = all_samples().step_by(97).collect();
        for law in [G711Law::Ulaw, G711Law::Alaw] {
            let mut codes = vec![0xAB];
            law.encode_into(&pcm, &mut codes);
            assert_eq!(codes.len(), pcm.len() + 1);
            assert_eq!(codes[0], 0xAB);

            let mut decoded = vec![7];
            law.decode_into(&codes[1..], &mut decoded);
            assert_eq!(decoded.len(), pcm.len() + 1);
            assert_eq!(decoded[0], 7);

            for ((&sample, &code), &value) in pcm.iter().zip(&codes[1..]).zip(&decoded[1..]) {
                let (single_code, single_value) = match law {
                    G711Law::Ulaw => (ulaw_encode(sample), ulaw_decode(code)),
                    G711Law::Alaw => (alaw_encode(sample), alaw_decode(code)),
                };
                assert_eq!(code, single_code);
                assert_eq!(value, single_value);
            }
        }
    }

    #[test]
    fn empty_slices_are_fine() {
        let mut codes = Vec::new();
        encode_ulaw_into(&[], &mut codes);
        encode_alaw_into(&[], &mut codes);
        assert!(codes.is_empty());
        let mut pcm = Vec::new();
        decode_ulaw_into(&[], &mut pcm);
        decode_alaw_into(&[], &mut pcm);
        assert!(pcm.is_empty());
    }
}
