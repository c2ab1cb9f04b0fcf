//! LoHa (LyCORIS `hada`): `ΔW = m · (α/r) · (W1a·W1b) ⊙ (W2a·W2b)`.
//!
//! Factors in the file's layout, as LyCORIS and ComfyUI store them: `hada_w1_a [rows, r]`,
//! `hada_w1_b [r, d_in]`, `hada_w2_a [rows, r]`, `hada_w2_b [r, d_in]`; ΔW is `[rows, d_in]`.
//! The scale divides by `r = hada_w1_b.rows` (ComfyUI's `weight_adapter/loha.py`).
//! Initialised as LyCORIS's `LohaModule`: W1b, W2b ~ N(0, 1), W1a ~ N(0, 0.1), W2a = 0, so ΔW
//! starts at zero. Dropouts as for [LoKr](crate::lokr).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::adapter::AdapterSpec;
use crate::error::LoraError;
use crate::lycoris;
use crate::param_id::stable_param_id;

/// A LoHa adapter.
#[derive(Module, Debug)]
pub struct LohaAdapter<B: Backend> {
    /// `hada_w1_a [rows, r]`.
    pub w1_a: Param<Tensor<B, 2>>,
    /// `hada_w1_b [r, d_in]`.
    pub w1_b: Param<Tensor<B, 2>>,
    /// `hada_w2_a [rows, r]`.
    pub w2_a: Param<Tensor<B, 2>>,
    /// `hada_w2_b [r, d_in]`.
    pub w2_b: Param<Tensor<B, 2>>,
    /// Alpha (scale = alpha / rank).
    pub alpha: f32,
    /// Forward-time multiplier.
    pub multiplier: f32,
    /// Output dropout probability.
    pub dropout: f64,
    /// Output-channel dropout probability.
    pub rank_dropout: f64,
    /// Module dropout probability.
    pub module_dropout: f64,
    /// Output rows written, `None` = all.
    #[module(skip)]
    pub rows: Option<(usize, usize)>,
}

impl<B: Backend> LohaAdapter<B> {
    /// A fresh adapter for a linear `d_in → d_out` (LyCORIS's initialisation, ΔW = 0).
    pub fn init(
        path: &str,
        d_in: usize,
        d_out: usize,
        spec: &AdapterSpec,
        device: &B::Device,
    ) -> Result<Self, LoraError> {
        spec.validate(path)?;
        let (start, end) = lycoris::check_rows(path, spec.rows, d_out)?;
        let (rows, r) = (end - start, spec.rank);
        let normal = |shape: [usize; 2], std: f64| {
            Tensor::<B, 2>::random(shape, Distribution::Normal(0.0, std), device)
        };
        Ok(Self::from_factors(
            path,
            [
                normal([rows, r], 0.1),
                normal([r, d_in], 1.0),
                Tensor::zeros([rows, r], device),
                normal([r, d_in], 1.0),
            ],
            spec,
        ))
    }

    /// An adapter from `[w1_a, w1_b, w2_a, w2_b]` in file layout.
    pub fn from_factors(path: &str, factors: [Tensor<B, 2>; 4], spec: &AdapterSpec) -> Self {
        let tag = lycoris::tag(path, spec.rows);
        let [w1_a, w1_b, w2_a, w2_b] = factors;
        let p = |role: &str, t: Tensor<B, 2>| {
            Param::initialized(stable_param_id(&tag, role), t.require_grad())
        };
        Self {
            w1_a: p("hada_w1_a", w1_a),
            w1_b: p("hada_w1_b", w1_b),
            w2_a: p("hada_w2_a", w2_a),
            w2_b: p("hada_w2_b", w2_b),
            alpha: spec.alpha,
            multiplier: spec.multiplier,
            dropout: spec.dropout,
            rank_dropout: spec.rank_dropout,
            module_dropout: spec.module_dropout,
            rows: spec.rows,
        }
    }

    /// The rank r (rows of `hada_w1_b`).
    pub fn rank(&self) -> usize {
        self.w1_b.dims()[0]
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank() as f32
    }

    /// `m·(α/r)·(W1a·W1b) ⊙ (W2a·W2b)` in the file's `[rows, d_in]` layout.
    pub fn delta_rows(&self) -> Tensor<B, 2> {
        let m1 = self.w1_a.val().matmul(self.w1_b.val());
        let m2 = self.w2_a.val().matmul(self.w2_b.val());
        m1 * m2 * (self.multiplier * self.scale())
    }

    /// The weight change in Burn layout `[d_in, d_out]`, zero outside `rows`.
    pub fn delta_weight(&self, d_out: usize) -> Tensor<B, 2> {
        lycoris::pad_last(self.delta_rows().transpose(), self.rows, d_out)
    }

    /// The adapter's contribution `ΔW·x` to a linear output of width `d_out` (ΔW is formed:
    /// the Hadamard product has no factored form).
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, d_out: usize) -> Tensor<B, D> {
        let training = B::ad_enabled(&x.device());
        let delta = self.delta_rows();
        let x = lycoris::cast_like(x, &delta);
        let mut dims = x.dims();
        let n: usize = dims[..D - 1].iter().product();
        let [rows, d_in] = delta.dims();
        let h = x.reshape([n, d_in]).matmul(delta.transpose());
        let h = lycoris::output_dropouts(h, self.dropout, self.rank_dropout, training);
        dims[D - 1] = rows;
        let y = lycoris::module_dropout(h.reshape(dims), self.module_dropout, training);
        lycoris::pad_last(y, self.rows, d_out)
    }

    /// Number of stored values.
    pub fn num_params(&self) -> usize {
        [&self.w1_a, &self.w1_b, &self.w2_a, &self.w2_b]
            .iter()
            .map(|p| p.shape().num_elements())
            .sum()
    }
}
