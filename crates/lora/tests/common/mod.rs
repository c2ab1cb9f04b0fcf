//! Shared helpers for the LoRA integration tests: host-side reference math, independent of Burn.

#![allow(dead_code)]

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};

pub type B = NdArray<f32>;

pub fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

pub fn tensor2(data: &[f32], rows: usize, cols: usize) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(data.to_vec(), [rows, cols]), &dev())
}

pub fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// Plain triple-loop matmul `[n,k]·[k,m]`, the reference the Burn results are checked against.
pub fn matmul(a: &[f32], b: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n * m];
    for i in 0..n {
        for j in 0..m {
            let mut acc = 0.0f64;
            for t in 0..k {
                acc += f64::from(a[i * k + t]) * f64::from(b[t * m + j]);
            }
            out[i * m + j] = acc as f32;
        }
    }
    out
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Deterministic pseudo-random values in [-1, 1) (splitmix64), so cases are reproducible.
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
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

/// The BFL linear paths of a Flux transformer with `depth` double and `single` single blocks,
/// with (d_in, d_out) for hidden size `h` and MLP width `4h`, written out from the BFL reference
/// module table (not from the code under test).
pub fn flux_linears(depth: usize, single: usize, h: usize) -> Vec<(String, usize, usize)> {
    let mlp = 4 * h;
    let mut v = Vec::new();
    for i in 0..depth {
        for s in ["img", "txt"] {
            v.push((format!("double_blocks.{i}.{s}_attn.qkv"), h, 3 * h));
            v.push((format!("double_blocks.{i}.{s}_attn.proj"), h, h));
            v.push((format!("double_blocks.{i}.{s}_mlp.0"), h, mlp));
            v.push((format!("double_blocks.{i}.{s}_mlp.2"), mlp, h));
            v.push((format!("double_blocks.{i}.{s}_mod.lin"), h, 6 * h));
        }
    }
    for i in 0..single {
        v.push((format!("single_blocks.{i}.linear1"), h, 3 * h + mlp));
        v.push((format!("single_blocks.{i}.linear2"), h + mlp, h));
        v.push((format!("single_blocks.{i}.modulation.lin"), h, 3 * h));
    }
    for (p, i, o) in [
        ("img_in", 64, h),
        ("txt_in", 4096, h),
        ("time_in.in_layer", 256, h),
        ("time_in.out_layer", h, h),
        ("vector_in.in_layer", 768, h),
        ("vector_in.out_layer", h, h),
        ("guidance_in.in_layer", 256, h),
        ("guidance_in.out_layer", h, h),
        ("final_layer.linear", h, 64),
        ("final_layer.adaLN_modulation.1", h, 2 * h),
    ] {
        v.push((p.to_string(), i, o));
    }
    v
}
