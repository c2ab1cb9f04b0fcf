//! Safetensors element types and their conversion to and from `f32`.
//!
//! Decoding follows the formats' definitions: F16 (IEEE binary16, via `half`), BF16 (upper 16 bits
//! of an f32), F8_E4M3 as `torch.float8_e4m3fn` (bias 7, no infinities, `S.1111.111` is NaN,
//! max 448), F8_E5M2 (bias 15, IEEE-like with infinities and NaNs), F8_E8M0 (power of two,
//! 0xFF = NaN). Integers and bools convert by value (`I64`/`U64` beyond 2^24 round).

use std::fmt;

/// A safetensors element type, spelled as in the file header.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dtype {
    /// Boolean, one byte per element (0 is false); reads as `0.0` / `1.0`.
    BOOL,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, 5 exponent and 2 mantissa bits (`torch.float8_e5m2`).
    F8_E5M2,
    /// 8-bit float, 4 exponent and 3 mantissa bits, no infinities (`torch.float8_e4m3fn`).
    F8_E4M3,
    /// 8-bit exponent-only float: a power of two, `0xFF` is NaN (`torch.float8_e8m0fnu`).
    F8_E8M0,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE 754 half precision (binary16).
    F16,
    /// bfloat16: the upper 16 bits of an `f32`.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE 754 single precision.
    F32,
    /// IEEE 754 double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    /// Parses the header spelling (`"BF16"`, …).
    pub fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "BOOL" => Dtype::BOOL,
            "U8" => Dtype::U8,
            "I8" => Dtype::I8,
            "F8_E5M2" => Dtype::F8_E5M2,
            "F8_E4M3" => Dtype::F8_E4M3,
            "F8_E8M0" => Dtype::F8_E8M0,
            "I16" => Dtype::I16,
            "U16" => Dtype::U16,
            "F16" => Dtype::F16,
            "BF16" => Dtype::BF16,
            "I32" => Dtype::I32,
            "U32" => Dtype::U32,
            "F32" => Dtype::F32,
            "F64" => Dtype::F64,
            "I64" => Dtype::I64,
            "U64" => Dtype::U64,
            _ => return None,
        })
    }

    /// The header spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::F8_E5M2
            | Dtype::F8_E4M3
            | Dtype::F8_E8M0 => 1,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 4,
            Dtype::F64 | Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Dtype::F8_E5M2
                | Dtype::F8_E4M3
                | Dtype::F8_E8M0
                | Dtype::F16
                | Dtype::BF16
                | Dtype::F32
                | Dtype::F64
        )
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decodes one `float8_e4m3fn` byte.
pub fn f8_e4m3fn_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((b >> 3) & 0x0F) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0F && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        // Subnormal: m/8 · 2^(1-7).
        return sign * (man / 8.0) * 2f32.powi(-6);
    }
    sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
}

/// Decodes one `float8_e5m2` byte.
pub fn f8_e5m2_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0f32 } else { 1.0 };
    let exp = ((b >> 2) & 0x1F) as i32;
    let man = (b & 0x03) as f32;
    if exp == 0x1F {
        return if b & 0x03 == 0 {
            sign * f32::INFINITY
        } else {
            f32::NAN
        };
    }
    if exp == 0 {
        return sign * (man / 4.0) * 2f32.powi(-14);
    }
    sign * (1.0 + man / 4.0) * 2f32.powi(exp - 15)
}

/// Decodes one `float8_e8m0fnu` byte (a bare biased exponent).
pub fn f8_e8m0_to_f32(b: u8) -> f32 {
    if b == 0xFF {
        f32::NAN
    } else {
        2f32.powi(b as i32 - 127)
    }
}

/// Converts little-endian `bytes` of `dtype` to `f32`, appending to `out`.
/// `bytes.len()` must be a multiple of `dtype.size()` (the reader guarantees it).
pub(crate) fn decode_to_f32(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    out.reserve(bytes.len() / dtype.size());
    macro_rules! le {
        ($t:ty, $n:expr) => {
            out.extend(
                bytes
                    .chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().unwrap()) as f32),
            )
        };
    }
    match dtype {
        Dtype::F32 => le!(f32, 4),
        Dtype::F64 => le!(f64, 8),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
        ),
        Dtype::F8_E4M3 => out.extend(bytes.iter().map(|&b| f8_e4m3fn_to_f32(b))),
        Dtype::F8_E5M2 => out.extend(bytes.iter().map(|&b| f8_e5m2_to_f32(b))),
        Dtype::F8_E8M0 => out.extend(bytes.iter().map(|&b| f8_e8m0_to_f32(b))),
        Dtype::BOOL => out.extend(bytes.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 })),
        Dtype::U8 => out.extend(bytes.iter().map(|&b| b as f32)),
        Dtype::I8 => out.extend(bytes.iter().map(|&b| b as i8 as f32)),
        Dtype::I16 => le!(i16, 2),
        Dtype::U16 => le!(u16, 2),
        Dtype::I32 => le!(i32, 4),
        Dtype::U32 => le!(u32, 4),
        Dtype::I64 => le!(i64, 8),
        Dtype::U64 => le!(u64, 8),
    }
}

/// Encodes `values` as little-endian `dtype` (F32, F16 or BF16; round-to-nearest-even).
/// Returns `None` for other dtypes.
pub(crate) fn encode_from_f32(dtype: Dtype, values: &[f32], out: &mut Vec<u8>) -> Option<()> {
    match dtype {
        Dtype::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        Dtype::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        Dtype::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f8_known_values() {
        // Hand-derived from the format definitions.
        assert_eq!(f8_e4m3fn_to_f32(0x7E), 448.0); // 0.1111.110 = 1.75·2^8
        assert_eq!(f8_e4m3fn_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(f8_e4m3fn_to_f32(0x38), 1.0);
        assert_eq!(f8_e4m3fn_to_f32(0xB8), -1.0);
        assert!(f8_e4m3fn_to_f32(0x7F).is_nan() && f8_e4m3fn_to_f32(0xFF).is_nan());
        assert_eq!(f8_e5m2_to_f32(0x3C), 1.0);
        assert_eq!(f8_e5m2_to_f32(0x7B), 57344.0);
        assert_eq!(f8_e5m2_to_f32(0x7C), f32::INFINITY);
        assert!(f8_e5m2_to_f32(0x7D).is_nan());
        assert_eq!(f8_e8m0_to_f32(127), 1.0);
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in [
            Dtype::BOOL,
            Dtype::F8_E4M3,
            Dtype::BF16,
            Dtype::U64,
            Dtype::F64,
        ] {
            assert_eq!(Dtype::parse(d.as_str()), Some(d));
        }
        assert_eq!(Dtype::parse("F4"), None);
    }
}
