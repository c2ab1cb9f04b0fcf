//! The 8-bit machinery against bitsandbytes: the dynamic maps bit for bit, the block-wise
//! quantizer code for code, an independent error bound, and convergence on a quadratic next to
//! f32 AdamW.

use crate::common;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::{backend::Backend, DType, Distribution, Tensor, TensorData};
use common::*;
use fluxlora_optim::quant8::{dequantize_blockwise, dynamic_map, quantize_blockwise, BLOCK_SIZE};
use fluxlora_optim::*;

#[test]
fn dynamic_maps_equal_bitsandbytes() {
    let fx = Fixture::load();
    assert_eq!(bits(&dynamic_map(true)), bits(&fx.f32s("qmap.signed")));
    assert_eq!(bits(&dynamic_map(false)), bits(&fx.f32s("qmap.unsigned")));
}

#[test]
fn blockwise_quantizer_equals_bitsandbytes() {
    let fx = Fixture::load();
    for (kind, signed) in [("signed", true), ("unsigned", false)] {
        let x = fx.f32s(&format!("quant.{kind}.x"));
        let len = x.len();
        let t = Tensor::<Inner, 1>::from_data(TensorData::new(x, [len]), &Default::default());
        let q = quantize_blockwise(t, &dynamic_map(signed), DType::U8);
        let codes: Vec<u8> = q.codes.to_data().to_vec().unwrap();
        assert_eq!(
            codes,
            fx.u8s(&format!("quant.{kind}.codes")),
            "{kind} codes"
        );
        let absmax: Vec<f32> = q.absmax.to_data().to_vec().unwrap();
        assert_eq!(
            bits(&absmax),
            bits(&fx.f32s(&format!("quant.{kind}.absmax"))),
            "{kind} absmax"
        );
    }
}

#[test]
fn quantization_error_is_within_half_a_code_gap() {
    let dev = Default::default();
    for signed in [true, false] {
        let map = dynamic_map(signed);
        let dist = if signed {
            Distribution::Normal(0.0, 1.0)
        } else {
            Distribution::Uniform(0.0, 3.0)
        };
        let x = Tensor::<Inner, 1>::random([5 * BLOCK_SIZE + 17], dist, &dev);
        let xs: Vec<f32> = x.to_data().to_vec().unwrap();
        let q = quantize_blockwise(x, &map, DType::U8);
        let absmax: Vec<f32> = q.absmax.to_data().to_vec().unwrap();
        let back: Vec<f32> = dequantize_blockwise(&q, &map).into_data().to_vec().unwrap();
        for (i, (a, b)) in xs.iter().zip(&back).enumerate() {
            let am = absmax[i / BLOCK_SIZE];
            let n = a / am;
            // Independent bound: half the distance between the two codes around n, scaled back;
            // below the smallest code (only -1: the signed map's lowest code is -0.99297) the
            // error is the distance to that code.
            let bound = if n < map[0] {
                (map[0] - n) * am + 1e-6 * am
            } else {
                let hi = map.iter().position(|c| *c >= n).unwrap_or(255);
                let lo = hi.saturating_sub(1);
                0.5 * (map[hi] - map[lo]) * am + 1e-6 * am
            };
            assert!((a - b).abs() <= bound, "x[{i}] = {a} → {b}, bound {bound}");
        }
    }
}

#[derive(Module, Debug)]
struct Quadratic<B: Backend> {
    x: Param<Tensor<B, 1>>,
}

/// Minimizes ½‖a ⊙ (x − t)‖² from the same start with AdamW and AdamW8bit.
fn minimize<R: OptimizerRule<Inner>>(rule: R, steps: usize) -> f64 {
    let dev = Default::default();
    let n = 4096;
    let a = Tensor::<Inner, 1>::random([n], Distribution::Uniform(0.5, 2.0), &dev);
    let target = Tensor::<Inner, 1>::random([n], Distribution::Normal(0.0, 1.0), &dev);
    let start = Tensor::<Inner, 1>::zeros([n], &dev);
    let mut m = Quadratic::<AD> {
        x: Param::from_tensor(Tensor::from_inner(start)),
    };
    let mut opt: LoraOptimizer<R, Quadratic<AD>, AD> = LoraOptimizer::new(rule);
    let loss = |x: Tensor<Inner, 1>| -> f64 {
        let d = (x - target.clone()) * a.clone();
        f64::from(d.clone().mul(d).sum().into_scalar()) * 0.5
    };
    let initial = loss(m.x.val().inner());
    for _ in 0..steps {
        let x = m.x.val().inner();
        let g = (x - target.clone()) * a.clone() * a.clone();
        let mut grads = GradientsParams::new();
        grads.register::<Inner, 1>(m.x.id, g);
        m = opt.step(0.05, m, grads);
    }
    loss(m.x.val().inner()) / initial
}

#[test]
fn eight_bit_converges_like_f32_adamw_on_a_quadratic() {
    let f32_ratio = minimize(
        AdamWConfig {
            weight_decay: 0.0,
            ..Default::default()
        }
        .init()
        .unwrap(),
        300,
    );
    let q_ratio = minimize(
        AdamW8bitConfig {
            weight_decay: 0.0,
            ..Default::default()
        }
        .init()
        .unwrap(),
        300,
    );
    assert!(
        f32_ratio < 1e-2,
        "AdamW reduced the loss only to {f32_ratio}"
    );
    assert!(
        q_ratio < 1e-2,
        "AdamW8bit reduced the loss only to {q_ratio}"
    );
    assert!(
        q_ratio < 3.0 * f32_ratio + 1e-4,
        "8-bit {q_ratio} vs f32 {f32_ratio}"
    );
}
