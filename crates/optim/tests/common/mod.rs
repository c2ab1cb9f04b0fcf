//! Shared test helpers: the reference fixture and a four-parameter toy module whose parameter
//! order matches the fixture (`w`, `v`, `t3`, `z`).
#![allow(dead_code)]

use std::collections::HashMap;

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use safetensors::SafeTensors;

pub type AD = Autodiff<NdArray<f32>>;
pub type Inner = NdArray<f32>;

/// The reference fixture written by `fixtures/optim/make_trajectories.py`.
pub struct Fixture {
    pub tensors: HashMap<String, (Vec<usize>, Vec<u8>, safetensors::Dtype)>,
    pub meta: HashMap<String, String>,
}

impl Fixture {
    pub fn load() -> Self {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|dir| dir.join("fixtures"))
            .find(|dir| dir.is_dir())
            .expect("a fixtures/ folder above the crate")
            .join("optim/trajectories.safetensors");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap_or_default();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, (v.shape().to_vec(), v.data().to_vec(), v.dtype())))
            .collect();
        Self { tensors, meta }
    }

    fn raw(&self, key: &str) -> &(Vec<usize>, Vec<u8>, safetensors::Dtype) {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no `{key}`"))
    }

    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.raw(key).0.clone()
    }

    pub fn f32s(&self, key: &str) -> Vec<f32> {
        let (_, b, d) = self.raw(key);
        assert_eq!(*d, safetensors::Dtype::F32, "{key}");
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn f64s(&self, key: &str) -> Vec<f64> {
        let (_, b, d) = self.raw(key);
        assert_eq!(*d, safetensors::Dtype::F64, "{key}");
        b.chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    pub fn u8s(&self, key: &str) -> Vec<u8> {
        let (_, b, d) = self.raw(key);
        assert_eq!(*d, safetensors::Dtype::U8, "{key}");
        b.clone()
    }

    pub fn steps(&self) -> usize {
        self.meta["steps"].parse().unwrap()
    }

    pub fn snapshots(&self) -> Vec<usize> {
        self.meta["snapshots"]
            .split(',')
            .map(|s| s.parse().unwrap())
            .collect()
    }

    pub fn tensor<const D: usize, B: Backend>(&self, key: &str) -> Tensor<B, D> {
        let shape = self.shape(key);
        Tensor::from_data(TensorData::new(self.f32s(key), shape), &Default::default())
    }
}

pub const NAMES: [&str; 4] = ["w", "v", "t3", "z"];

/// Parameters in the fixture's order; ranks 2, 1, 3, 2.
#[derive(Module, Debug)]
pub struct Toy<B: Backend> {
    pub w: Param<Tensor<B, 2>>,
    pub v: Param<Tensor<B, 1>>,
    pub t3: Param<Tensor<B, 3>>,
    pub z: Param<Tensor<B, 2>>,
}

impl<B: Backend> Toy<B> {
    pub fn from_fixture(fx: &Fixture) -> Self {
        Self {
            w: Param::from_tensor(fx.tensor("init.w")),
            v: Param::from_tensor(fx.tensor("init.v")),
            t3: Param::from_tensor(fx.tensor("init.t3")),
            z: Param::from_tensor(fx.tensor("init.z")),
        }
    }

    /// Flattened values by name.
    pub fn values(&self) -> HashMap<&'static str, Vec<f32>> {
        let mut m = HashMap::new();
        m.insert("w", self.w.val().into_data().to_vec::<f32>().unwrap());
        m.insert("v", self.v.val().into_data().to_vec::<f32>().unwrap());
        m.insert("t3", self.t3.val().into_data().to_vec::<f32>().unwrap());
        m.insert("z", self.z.val().into_data().to_vec::<f32>().unwrap());
        m
    }
}

/// Gradients for step `k` from the fixture, registered under the toy's parameter ids.
pub fn fixture_grads(fx: &Fixture, toy: &Toy<AD>, k: usize) -> GradientsParams {
    let mut g = GradientsParams::new();
    g.register::<Inner, 2>(toy.w.id, fx.tensor(&format!("grad.{k}.w")));
    g.register::<Inner, 1>(toy.v.id, fx.tensor(&format!("grad.{k}.v")));
    g.register::<Inner, 3>(toy.t3.id, fx.tensor(&format!("grad.{k}.t3")));
    g.register::<Inner, 2>(toy.z.id, fx.tensor(&format!("grad.{k}.z")));
    g
}

/// Largest `|a - b| / (atol + rtol·|b|)`; ≤ 1 means within tolerance.
pub fn worst_ratio(a: &[f32], b: &[f32], atol: f64, rtol: f64) -> (f64, usize) {
    assert_eq!(a.len(), b.len());
    let mut worst = (0.0, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let r = (f64::from(*x) - f64::from(*y)).abs() / (atol + rtol * f64::from(*y).abs());
        if r > worst.0 {
            worst = (r, i);
        }
    }
    worst
}

pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
