//! Helpers shared by the integration tests: an independent safetensors writer (the reference
//! `safetensors` crate) and reference linear algebra in f64.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype as StDtype, TensorView};

/// A tensor for the reference writer: dtype, shape, little-endian bytes.
pub struct Raw {
    pub dtype: StDtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// An F32 tensor from values.
pub fn f32_raw(shape: &[usize], values: &[f32]) -> Raw {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    Raw {
        dtype: StDtype::F32,
        shape: shape.to_vec(),
        bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Writes `tensors` with the reference `safetensors` crate.
pub fn write_reference(
    path: &Path,
    tensors: &[(String, Raw)],
    metadata: Option<HashMap<String, String>>,
) {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, r)| {
            (
                n.clone(),
                TensorView::new(r.dtype, r.shape.clone(), &r.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, metadata, path).unwrap();
}

/// Serialises `tensors` with the reference crate into memory.
pub fn serialize_reference(
    tensors: &[(String, Raw)],
    metadata: Option<HashMap<String, String>>,
) -> Vec<u8> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, r)| {
            (
                n.clone(),
                TensorView::new(r.dtype, r.shape.clone(), &r.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize(views, metadata).unwrap()
}

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64).
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Reference `scale · up[out×r] · down[r×in]` in f64, plus the per-entry sum of |terms|
/// (for rounding-error bounds).
pub fn ref_delta(
    up: &[f32],
    down: &[f32],
    out: usize,
    r: usize,
    inp: usize,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let mut d = vec![0.0; out * inp];
    let mut mag = vec![0.0; out * inp];
    for i in 0..out {
        for k in 0..r {
            let u = up[i * r + k] as f64;
            for j in 0..inp {
                let t = u * down[k * inp + j] as f64 * scale;
                d[i * inp + j] += t;
                mag[i * inp + j] += t.abs();
            }
        }
    }
    (d, mag)
}

/// Asserts `got` (f32) matches `want` (f64) to `rel · max(mag)`, where `mag` bounds the size
/// of the summed terms.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], mag: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = mag.iter().cloned().fold(1e-30, f64::max);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (*g as f64 - w).abs();
        assert!(
            err <= rel * scale,
            "{what}[{i}]: got {g}, want {w} (err {err:e}, bound {:e})",
            rel * scale
        );
    }
}

/// A safetensors file from a header text and a data section, with a correct length prefix
/// (how the damaged-file tests build what no writer would).
pub fn build(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}
