//! The LoRA tools on LyCORIS files: merging LoKr / LoHa / DoRA into a base (BFL and diffusers
//! layouts) equals base + ΔW written out in plain f64 loops here (and the LyCORIS / PEFT
//! fixtures' own merged weights); inspect counts and lists them; resize turns LoKr / LoHa into
//! the best LoRA of the rank asked for and refuses DoRA; convert keeps them between kohya and
//! ComfyUI and refuses PEFT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fluxlora_io::lora::ops::linalg::{svd, Mat};
use fluxlora_io::lora::ops::{convert_lora_file, inspect_lora, merge_loras, resize_lora_file};
use fluxlora_io::{
    read_lora, write_lora, write_safetensors, Checkpoint, DoraAxis, DoraScale, HostTensor,
    KronFactor, LoraFormat, LoraModule, LoraWeights, LycorisModule, ResizeTarget, SafeTensorsFile,
    TensorRef, WeightedLora,
};

use crate::common::values;

mod merge;
mod tools;

fn t(shape: &[usize], seed: u64) -> HostTensor {
    let n = shape.iter().product();
    HostTensor::new(shape.to_vec(), values(seed, n)).unwrap()
}

/// Positive DoRA magnitudes.
fn mags(n: usize, seed: u64) -> HostTensor {
    HostTensor::new(
        vec![n],
        values(seed, n).iter().map(|v| 1.0 + v.abs()).collect(),
    )
    .unwrap()
}

fn f64s(t: &HostTensor) -> Vec<f64> {
    t.data.iter().map(|v| f64::from(*v)).collect()
}

/// `a [n, k] · b [k, c]` in f64 loops.
fn mm(a: &HostTensor, b: &HostTensor) -> Vec<f64> {
    let (n, k) = (a.shape[0], a.shape[1]);
    let c = b.shape[1];
    let mut out = vec![0.0; n * c];
    for i in 0..n {
        for j in 0..c {
            for p in 0..k {
                out[i * c + j] += f64::from(a.data[i * k + p]) * f64::from(b.data[p * c + j]);
            }
        }
    }
    out
}

/// `(values, rows, cols)` of a Kronecker factor.
fn factor(f: &KronFactor) -> (Vec<f64>, usize, usize) {
    match f {
        KronFactor::Full(w) => (f64s(w), w.shape[0], w.shape[1]),
        KronFactor::LowRank { a, b } => (mm(a, b), a.shape[0], b.shape[1]),
    }
}

/// `scale·kron(W1, W2)` or `scale·(W1a·W1b) ⊙ (W2a·W2b)`, the scale as the LyCORIS docs give
/// it (alpha over the decomposed factor's inner dimension, 1 without alpha or decomposition).
pub(crate) fn ref_delta(m: &LycorisModule) -> Vec<f64> {
    match m {
        LycorisModule::Lokr { w1, w2, alpha } => {
            let ((a, p, q), (b, r, s)) = (factor(w1), factor(w2));
            let inner = match (w1, w2) {
                (_, KronFactor::LowRank { b, .. }) | (KronFactor::LowRank { b, .. }, _) => {
                    Some(b.shape[0])
                }
                _ => None,
            };
            let scale = match (alpha, inner) {
                (Some(al), Some(r)) => f64::from(*al) / r as f64,
                _ => 1.0,
            };
            let mut out = vec![0.0; p * r * q * s];
            for i in 0..p {
                for j in 0..q {
                    for k in 0..r {
                        for l in 0..s {
                            out[(i * r + k) * q * s + j * s + l] =
                                scale * a[i * q + j] * b[k * s + l];
                        }
                    }
                }
            }
            out
        }
        LycorisModule::Loha {
            w1_a,
            w1_b,
            w2_a,
            w2_b,
            alpha,
        } => {
            let scale = alpha.map_or(1.0, |a| f64::from(a) / w1_b.shape[0] as f64);
            let (m1, m2) = (mm(w1_a, w1_b), mm(w2_a, w2_b));
            m1.iter().zip(&m2).map(|(x, y)| scale * x * y).collect()
        }
    }
}

/// `(alpha/r)·up·down`.
fn lora_delta(m: &LoraModule) -> Vec<f64> {
    let s = f64::from(m.alpha) / m.rank() as f64;
    mm(&m.up, &m.down).iter().map(|v| s * v).collect()
}

/// `W + w·(mag ⊙ (W + ΔW)/(‖W + ΔW‖ + eps) − W)`, the norm per output row (`per_out`) or per
/// input column, `eps = f32::EPSILON` (LyCORIS, PEFT).
fn dora(w: &[f64], d: &[f64], cols: usize, mag: &[f32], per_out: bool, strength: f64) -> Vec<f64> {
    let rows = w.len() / cols;
    let wc: Vec<f64> = w.iter().zip(d).map(|(a, b)| a + b).collect();
    let mut norm = vec![0.0; if per_out { rows } else { cols }];
    for r in 0..rows {
        for c in 0..cols {
            norm[if per_out { r } else { c }] += wc[r * cols + c].powi(2);
        }
    }
    let mut out = w.to_vec();
    for r in 0..rows {
        for c in 0..cols {
            let k = if per_out { r } else { c };
            let g = f64::from(mag[k]) / (norm[k].sqrt() + f64::from(f32::EPSILON));
            let i = r * cols + c;
            out[i] = w[i] + strength * (wc[i] * g - w[i]);
        }
    }
    out
}

fn add(w: &[f64], d: &[f64], s: f64) -> Vec<f64> {
    w.iter().zip(d).map(|(a, b)| a + s * b).collect()
}

fn assert_close(what: &str, got: &HostTensor, want: &[f64], rel: f64) {
    assert_eq!(got.data.len(), want.len(), "{what}");
    let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
    for (i, (g, w)) in got.data.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*g) - w).abs() <= rel * scale,
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

fn write_base(path: &Path, tensors: &[(String, HostTensor)]) -> Checkpoint {
    let refs: Vec<(&str, TensorRef)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), TensorRef::f32(t)))
        .collect();
    write_safetensors(path, &refs, &BTreeMap::new()).unwrap();
    Checkpoint::open(path).unwrap()
}

fn save(dir: &Path, name: &str, lora: &LoraWeights, format: LoraFormat) -> PathBuf {
    let p = dir.join(name);
    write_lora(&p, lora, format, &BTreeMap::new()).unwrap();
    p
}

fn lokr_low(seed: u64) -> LycorisModule {
    // [2, 2] ⊗ ([3, 1]·[1, 2]) = [6, 4], scale 0.5 / 1.
    LycorisModule::Lokr {
        w1: KronFactor::Full(t(&[2, 2], seed)),
        w2: KronFactor::LowRank {
            a: t(&[3, 1], seed + 1),
            b: t(&[1, 2], seed + 2),
        },
        alpha: Some(0.5),
    }
}

fn loha(seed: u64, out: usize, inp: usize, r: usize, alpha: f32) -> LycorisModule {
    LycorisModule::Loha {
        w1_a: t(&[out, r], seed),
        w1_b: t(&[r, inp], seed + 1),
        w2_a: t(&[out, r], seed + 2),
        w2_b: t(&[r, inp], seed + 3),
        alpha: Some(alpha),
    }
}

fn lora_module(out: usize, inp: usize, r: usize, alpha: f32, seed: u64) -> LoraModule {
    LoraModule::new(t(&[r, inp], seed), t(&[out, r], seed + 1), alpha).unwrap()
}
