//! The design's test backend: one tiny LoRA forward on wgpu must equal the NdArray result.

mod common;

use burn::backend::Wgpu;
use burn::tensor::{Tensor, TensorData};
use common::*;
use fluxlora_lora::{AdapterSpec, LoraAdapter, LoraLinear};

fn build<Bk: burn::tensor::backend::Backend>(dev: &Bk::Device) -> LoraLinear<Bk> {
    let t = |seed: u64, r: usize, c: usize| Tensor::<Bk, 2>::from_data(TensorData::new(values(seed, r * c), [r, c]), dev);
    let mut lin = LoraLinear::from_weights(t(1, 6, 9), None);
    let spec = AdapterSpec::new(2, 4.0).with_rows(3, 6);
    lin.push_adapter("w", LoraAdapter::from_factors("w", t(2, 6, 2), t(3, 2, 3), &spec)).unwrap();
    lin
}

#[test]
fn wgpu_forward_matches_ndarray() {
    let wdev = Default::default();
    let x = Tensor::<Wgpu, 2>::from_data(TensorData::new(values(4, 12), [2, 6]), &wdev);
    let got = build::<Wgpu>(&wdev).forward(x).into_data().to_vec::<f32>().unwrap();
    let expected = to_vec(build::<B>(&dev()).forward(tensor2(&values(4, 12), 2, 6)));
    assert!(max_abs_diff(&got, &expected) < 1e-5);
}
