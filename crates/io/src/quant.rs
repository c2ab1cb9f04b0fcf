//! Low-precision storage of frozen weights on the host: bf16, fp8 E4M3 and int8 codes with one
//! scale per output channel, and the conversions between them and `f32`.
//!
//! A [`QuantizedHost`] is a 2-D weight in the checkpoint's `[d_out, d_in]` layout: row `r` is
//! output channel `r`, and its value is `decode(code) · scale[r]`.
//! - **bf16**: the upper 16 bits of the f32 (rounded to nearest, ties to even); scales are 1.
//! - **fp8** (`float8_e4m3fn`: bias 7, no infinities, max 448): from a float source the scale of a
//!   row is `max|row| / 448`; fp8 checkpoint bytes are kept verbatim, with ComfyUI's per-tensor
//!   `scale_weight` (or 1) repeated over the rows.
//! - **int8** (symmetric): the scale of a row is `max|row| / 127` and codes are
//!   `round(w / scale)` in `[-127, 127]`.
//!
//! A row of zeros gets scale 1 (so its codes are 0 and it decodes to zeros exactly).

use rayon::prelude::*;

use crate::error::{IoError, Result};
use crate::safetensors::dtype::f8_e4m3fn_to_f32;
use crate::tensor::HostTensor;

/// The largest finite `float8_e4m3fn` value.
pub const F8_E4M3_MAX: f32 = 448.0;

/// How a frozen weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// bfloat16 bits, two little-endian bytes per element.
    Bf16,
    /// `float8_e4m3fn` bytes with a scale per output channel.
    Fp8E4M3,
    /// Signed 8-bit integers (two's complement bytes) with a scale per output channel.
    Int8,
}

impl QuantFormat {
    /// Bytes per element of the codes.
    pub fn code_bytes(self) -> usize {
        match self {
            QuantFormat::Bf16 => 2,
            QuantFormat::Fp8E4M3 | QuantFormat::Int8 => 1,
        }
    }

    /// The config spelling (`bf16`, `fp8`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Bf16 => "bf16",
            QuantFormat::Fp8E4M3 => "fp8",
            QuantFormat::Int8 => "int8",
        }
    }
}

/// A frozen 2-D weight stored as low-precision codes plus one scale per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedHost {
    /// How `codes` are encoded.
    pub format: QuantFormat,
    /// `[d_out, d_in]`.
    pub shape: [usize; 2],
    /// Row-major codes, `format.code_bytes()` bytes per element.
    pub codes: Vec<u8>,
    /// One scale per output channel (`d_out` values; all 1 for bf16).
    pub scale: Vec<f32>,
}

impl QuantizedHost {
    /// Quantizes a `[d_out, d_in]` f32 weight.
    pub fn quantize(w: &HostTensor, format: QuantFormat) -> Result<Self> {
        let (rows, cols) = w.dims2().ok_or_else(|| IoError::TensorShape {
            what: "a quantized weight must be 2-D".into(),
            shape: w.shape.clone(),
            expected: w.numel(),
            actual: w.data.len(),
        })?;
        let nb = format.code_bytes();
        let mut codes = vec![0u8; rows * cols * nb];
        let mut scale = vec![1.0f32; rows];
        if cols > 0 {
            codes
                .par_chunks_mut(cols * nb)
                .zip(scale.par_iter_mut())
                .zip(w.data.par_chunks(cols))
                .for_each(|((out, s), row)| *s = encode_row(format, row, out));
        }
        Ok(Self {
            format,
            shape: [rows, cols],
            codes,
            scale,
        })
    }

    /// Wraps fp8 E4M3 bytes from a checkpoint verbatim, with a per-tensor scale (ComfyUI's
    /// `scale_weight`, or 1) or one scale per row.
    pub fn from_fp8_bytes(shape: [usize; 2], bytes: &[u8], scale: &[f32]) -> Result<Self> {
        let [rows, cols] = shape;
        if bytes.len() != rows * cols {
            return Err(IoError::TensorShape {
                what: "fp8 weight bytes".into(),
                shape: shape.to_vec(),
                expected: rows * cols,
                actual: bytes.len(),
            });
        }
        let scale = match scale.len() {
            1 => vec![scale[0]; rows],
            n if n == rows => scale.to_vec(),
            n => {
                return Err(IoError::TensorShape {
                    what: "fp8 weight scale (one value, or one per output row)".into(),
                    shape: vec![n],
                    expected: rows,
                    actual: n,
                })
            }
        };
        Ok(Self {
            format: QuantFormat::Fp8E4M3,
            shape,
            codes: bytes.to_vec(),
            scale,
        })
    }

    /// Output channels.
    pub fn d_out(&self) -> usize {
        self.shape[0]
    }

    /// Input channels.
    pub fn d_in(&self) -> usize {
        self.shape[1]
    }

    /// Bytes held (codes plus scales).
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scale.len()
    }

    /// Decodes row `r` into `out` (`d_in` values).
    pub fn decode_row(&self, r: usize, out: &mut [f32]) {
        let cols = self.d_in();
        let nb = self.format.code_bytes();
        decode_row(
            self.format,
            &self.codes[r * cols * nb..(r + 1) * cols * nb],
            self.scale[r],
            out,
        );
    }

    /// The f32 weight, `[d_out, d_in]`.
    pub fn dequantize(&self) -> HostTensor {
        let [rows, cols] = self.shape;
        let mut data = vec![0.0f32; rows * cols];
        if cols > 0 {
            data.par_chunks_mut(cols)
                .enumerate()
                .for_each(|(r, out)| self.decode_row(r, out));
        }
        HostTensor {
            shape: vec![rows, cols],
            data,
        }
    }

    /// Rows `[start, end)`.
    pub fn rows(&self, start: usize, end: usize) -> Result<Self> {
        if start > end || end > self.d_out() {
            return Err(IoError::TensorShape {
                what: format!("rows {start}..{end} of a quantized weight"),
                shape: self.shape.to_vec(),
                expected: end,
                actual: self.d_out(),
            });
        }
        let w = self.d_in() * self.format.code_bytes();
        Ok(Self {
            format: self.format,
            shape: [end - start, self.d_in()],
            codes: self.codes[start * w..end * w].to_vec(),
            scale: self.scale[start..end].to_vec(),
        })
    }

    /// Stacks weights of one format and width along the output axis.
    pub fn concat_rows(parts: &[Self]) -> Result<Self> {
        let first = parts.first().ok_or_else(|| IoError::TensorShape {
            what: "concatenating no quantized weights".into(),
            shape: vec![],
            expected: 1,
            actual: 0,
        })?;
        let mut out = Self {
            format: first.format,
            shape: [0, first.d_in()],
            codes: Vec::new(),
            scale: Vec::new(),
        };
        for p in parts {
            if p.format != first.format || p.d_in() != first.d_in() {
                return Err(IoError::TensorShape {
                    what: format!(
                        "concatenating quantized weights of different formats or widths \
                         ({:?} vs {:?})",
                        p.format, first.format
                    ),
                    shape: p.shape.to_vec(),
                    expected: first.d_in(),
                    actual: p.d_in(),
                });
            }
            out.shape[0] += p.d_out();
            out.codes.extend_from_slice(&p.codes);
            out.scale.extend_from_slice(&p.scale);
        }
        Ok(out)
    }
}

/// Encodes one row into `out`, returning its scale.
fn encode_row(format: QuantFormat, row: &[f32], out: &mut [u8]) -> f32 {
    match format {
        QuantFormat::Bf16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(row) {
                o.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            }
            1.0
        }
        QuantFormat::Fp8E4M3 => {
            let s = row_scale(row, F8_E4M3_MAX);
            for (o, &v) in out.iter_mut().zip(row) {
                *o = f32_to_f8_e4m3fn(v / s);
            }
            s
        }
        QuantFormat::Int8 => {
            let s = row_scale(row, 127.0);
            for (o, &v) in out.iter_mut().zip(row) {
                *o = ((v / s).round_ties_even().clamp(-127.0, 127.0) as i8) as u8;
            }
            s
        }
    }
}

/// `max|row| / top`, or 1 for a row of zeros (or one holding non-finite values only).
fn row_scale(row: &[f32], top: f32) -> f32 {
    let m = row
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f32, |m, v| m.max(v.abs()));
    if m > 0.0 {
        m / top
    } else {
        1.0
    }
}

/// Decodes one row of codes with its scale.
pub fn decode_row(format: QuantFormat, codes: &[u8], scale: f32, out: &mut [f32]) {
    match format {
        QuantFormat::Bf16 => {
            for (o, c) in out.iter_mut().zip(codes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) * scale;
            }
        }
        QuantFormat::Fp8E4M3 => {
            let table = f8_e4m3fn_table();
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = table[c as usize] * scale;
            }
        }
        QuantFormat::Int8 => {
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = (c as i8) as f32 * scale;
            }
        }
    }
}

/// Every `float8_e4m3fn` byte's value (`0x7F` and `0xFF` are NaN).
pub fn f8_e4m3fn_table() -> &'static [f32; 256] {
    static TABLE: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|b| f8_e4m3fn_to_f32(b as u8)))
}

/// Encodes `x` as `float8_e4m3fn`, rounding to the nearest value (ties to even) and saturating
/// at ±448 (PyTorch's cast would give NaN beyond it); NaN encodes as `0x7F`.
pub fn f32_to_f8_e4m3fn(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7F;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs().min(F8_E4M3_MAX);
    if a < 2f32.powi(-6) {
        // Subnormal (or zero): m · 2^-9 with m in 0..=8; m = 8 is the smallest normal, whose
        // code (exponent 1, mantissa 0) is also 8.
        let m = (a * 512.0).round_ties_even() as u8;
        return sign | m;
    }
    let bits = a.to_bits();
    let mut exp = ((bits >> 23) as i32) - 127 + 7;
    let man = bits & 0x7F_FFFF;
    let mut q = man >> 20;
    let rem = man & 0xF_FFFF;
    if rem > 0x8_0000 || (rem == 0x8_0000 && q & 1 == 1) {
        q += 1;
    }
    if q == 8 {
        q = 0;
        exp += 1;
    }
    if exp > 15 || (exp == 15 && q == 7) {
        return sign | 0x7E;
    }
    sign | ((exp as u8) << 3) | q as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The nearest finite e4m3 value by brute force over the table (ties to the even code).
    fn nearest(x: f32) -> f32 {
        let x = x.clamp(-F8_E4M3_MAX, F8_E4M3_MAX);
        let mut best = (f32::INFINITY, 0u8);
        for b in 0..=255u8 {
            let v = f8_e4m3fn_to_f32(b);
            if v.is_nan() {
                continue;
            }
            let d = (v - x).abs();
            if d < best.0 || (d == best.0 && b & 1 == 0 && best.1 & 1 == 1) {
                best = (d, b);
            }
        }
        f8_e4m3fn_to_f32(best.1)
    }

    #[test]
    fn every_finite_code_round_trips() {
        for b in 0..=255u8 {
            let v = f8_e4m3fn_to_f32(b);
            if v.is_nan() || (v == 0.0 && b == 0x80) {
                continue;
            }
            assert_eq!(f32_to_f8_e4m3fn(v), b, "code {b:#04x} = {v}");
        }
        assert_eq!(f32_to_f8_e4m3fn(1e9), 0x7E);
        assert_eq!(f32_to_f8_e4m3fn(-1e9), 0xFE);
        assert_eq!(f32_to_f8_e4m3fn(f32::NAN), 0x7F);
    }

    proptest! {
        #[test]
        fn fp8_encoding_picks_the_nearest_value(x in -500.0f32..500.0, tiny in -0.02f32..0.02) {
            for v in [x, tiny] {
                let got = f8_e4m3fn_to_f32(f32_to_f8_e4m3fn(v));
                prop_assert_eq!(got.abs(), nearest(v).abs(), "x = {}", v);
            }
        }

        #[test]
        fn quantized_rows_stay_within_half_a_step(
            rows in 1usize..5, cols in 1usize..9, seed in any::<u64>()
        ) {
            let mut s = seed;
            let data: Vec<f32> = (0..rows * cols)
                .map(|_| {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
                })
                .collect();
            let w = HostTensor::new(vec![rows, cols], data).unwrap();
            for (format, rel) in [
                (QuantFormat::Bf16, 1.0 / 256.0),
                (QuantFormat::Fp8E4M3, 1.0 / 16.0),
                (QuantFormat::Int8, 0.5 / 127.0),
            ] {
                let q = QuantizedHost::quantize(&w, format).unwrap();
                let back = q.dequantize();
                for r in 0..rows {
                    let row = &w.data[r * cols..(r + 1) * cols];
                    let m = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    for (c, &v) in row.iter().enumerate() {
                        let err = (back.data[r * cols + c] - v).abs();
                        // fp8 and bf16 errors are relative to the value, int8's to the row max.
                        let bound = match format {
                            QuantFormat::Int8 => rel * m * 1.0001,
                            _ => rel * v.abs() + 2f32.powi(-9) * m / 448.0,
                        };
                        prop_assert!(err <= bound, "{:?} r{} c{}: {} vs {}", format, r, c, v, err);
                    }
                }
            }
        }
    }

    #[test]
    fn zero_rows_decode_to_zero_and_slices_concat_back() {
        let w = HostTensor::new(vec![3, 2], vec![0.0, 0.0, 1.0, -2.0, 3.0, 0.5]).unwrap();
        let q = QuantizedHost::quantize(&w, QuantFormat::Int8).unwrap();
        assert_eq!(q.scale[0], 1.0);
        assert_eq!(&q.dequantize().data[..2], &[0.0, 0.0]);
        let parts = [q.rows(0, 1).unwrap(), q.rows(1, 3).unwrap()];
        assert_eq!(QuantizedHost::concat_rows(&parts).unwrap(), q);
        let fp8 = QuantizedHost::from_fp8_bytes([2, 2], &[0x38, 0xB8, 0x40, 0], &[0.5]).unwrap();
        assert_eq!(fp8.dequantize().data, vec![0.5, -0.5, 1.0, 0.0]);
    }
}
