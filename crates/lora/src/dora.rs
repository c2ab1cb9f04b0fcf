//! DoRA: `W' = W + m_u·(g ⊙ (W + ΔW) − W)` with `g = mag / ‖W + ΔW‖`, the norm taken per
//! **output channel** (over the inputs) and `ΔW = (α/r)·B·A` a plain LoRA.
//!
//! Conventions, as read in the loaders:
//! - PEFT (`tuners/lora/dora.py`): `lora_magnitude_vector [out]`, the norm of `W + s·B·A` over
//!   `dim=1` of the `[out, in]` weight (one per output channel), initialised from the
//!   unchanged weight (B = 0, so `‖W‖`), and *detached* in the forward (DoRA paper §4.3: the
//!   norm is a constant for the gradient). The forward adds
//!   `(g − 1)·(x·Wᵀ) + g·s·B(A(drop(x)))` to the base output (bias untouched).
//! - LyCORIS (`wd_on_out=True`, its default): `dora_scale [out, 1]`, the same axis, with
//!   `finfo(float32).eps` added to the norm (as here, [`NORM_EPS`]). With `wd_on_out=False` it is `[1, in]`, the norm per
//!   *input* column — read back by `fluxlora-io` but never trained here.
//! - ComfyUI (`weight_adapter/base.py::weight_decompose`): picks the axis from `dora_scale`'s
//!   shape and applies `strength` as `W + s·(W_dora − W)`, the rule `m_u` follows here.
//!
//! The multiplier `m_u` is the inner LoRA's `multiplier`; the LoRA's own ΔW inside the
//! decomposition is unscaled by it.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::adapter::{AdapterSpec, LoraAdapter};
use crate::error::LoraError;
use crate::lycoris;
use crate::param_id::stable_param_id;

/// The `eps` LyCORIS and ComfyUI add to the norm (`torch.finfo(float32).eps`).
pub const NORM_EPS: f32 = f32::EPSILON;

/// A DoRA adapter: a LoRA direction plus a trained magnitude per output channel.
#[derive(Module, Debug)]
pub struct DoraAdapter<B: Backend> {
    /// The low-rank direction (its `multiplier` is the DoRA strength).
    pub lora: LoraAdapter<B>,
    /// Magnitude `[rows]` (PEFT's `lora_magnitude_vector`, LyCORIS's `dora_scale`).
    pub magnitude: Param<Tensor<B, 1>>,
    /// The norms `‖W + ΔW‖ [rows]` at [`merge`](crate::LoraLinear::merge) time, so that
    /// `unmerge` can undo the decomposition without the unmerged weight.
    #[module(skip)]
    pub merged_norm: Option<Vec<f32>>,
}

impl<B: Backend> DoraAdapter<B> {
    /// A fresh adapter over `base` (`[d_in, d_out]`, Burn layout): LoRA as
    /// [`LoraAdapter::init`], magnitude `‖W‖` per output channel of its rows.
    pub fn init(
        path: &str,
        base: Tensor<B, 2>,
        spec: &AdapterSpec,
        device: &B::Device,
    ) -> Result<Self, LoraError> {
        let [d_in, d_out] = base.dims();
        let lora = LoraAdapter::init(path, d_in, d_out, spec, device)?;
        let (s, e) = lycoris::check_rows(path, spec.rows, d_out)?;
        let cols = base.slice([0..d_in, s..e]).detach();
        let magnitude = column_norm(cols);
        Ok(Self::from_parts(path, lora, magnitude, spec.rows))
    }

    /// An adapter from a LoRA and a magnitude `[rows]`.
    pub fn from_parts(
        path: &str,
        lora: LoraAdapter<B>,
        magnitude: Tensor<B, 1>,
        rows: Option<(usize, usize)>,
    ) -> Self {
        let tag = lycoris::tag(path, rows);
        Self {
            lora,
            magnitude: Param::initialized(
                stable_param_id(&tag, "magnitude"),
                magnitude.require_grad(),
            ),
            merged_norm: None,
        }
    }

    /// Output rows written, `None` = all.
    pub fn rows(&self) -> Option<(usize, usize)> {
        self.lora.rows
    }

    /// The strength `m_u`.
    pub fn multiplier(&self) -> f32 {
        self.lora.multiplier
    }

    /// `(α/r)·A·B` in Burn layout `[d_in, rows]` (no multiplier, no padding).
    pub fn lora_delta(&self) -> Tensor<B, 2> {
        self.lora.lora_a.val().matmul(self.lora.lora_b.val()) * self.lora.scale()
    }

    /// The adapter's columns `[d_in, rows]` of a `[d_in, d_out]` weight.
    pub fn columns(&self, base: Tensor<B, 2>) -> Tensor<B, 2> {
        let [d_in, d_out] = base.dims();
        let (s, e) = self.rows().unwrap_or((0, d_out));
        base.slice([0..d_in, s..e])
    }

    /// `g = mag / (‖W + ΔW‖ + eps)` per output channel, the norm detached; `base` is
    /// `[d_in, d_out]`.
    pub fn gain(&self, base: Tensor<B, 2>) -> (Tensor<B, 1>, Tensor<B, 1>) {
        let cols = self.columns(base).detach();
        let norm = column_norm(cols + self.lora_delta().detach()).detach();
        (self.magnitude.val() / (norm.clone() + NORM_EPS), norm)
    }

    /// The contribution to the output: `m_u·((g − 1)⊙(x·W) + g⊙s·B(A(drop(x))))`, where
    /// `base_y` is the base output without bias (`[..., d_out]`) and `base` the weight.
    pub fn forward<const D: usize>(
        &self,
        x: Tensor<B, D>,
        base_y: Tensor<B, D>,
        base: Tensor<B, 2>,
        d_out: usize,
    ) -> Tensor<B, D> {
        let training = B::ad_enabled(&x.device());
        let a = self.lora.lora_a.val();
        let x = lycoris::cast_like(x, &a);
        let (s, e) = self.rows().unwrap_or((0, d_out));
        let (g, _) = self.gain(base.clone());
        let dropped = training && self.lora.dropout > 0.0;
        let (xin, base_term) = if dropped {
            let xd = lycoris::dropout(x, self.lora.dropout);
            let cols = lycoris::cast_like(self.columns(base).detach(), &a);
            let term = burn::tensor::module::linear(xd.clone(), cols, None);
            (xd, term)
        } else {
            let term = lycoris::cast_like(base_y, &a).narrow(D - 1, s, e - s);
            (x, term)
        };
        let h = burn::tensor::module::linear(xin, a, None);
        let lora_y = burn::tensor::module::linear(h, self.lora.lora_b.val(), None)
            * f64::from(self.lora.scale());
        let mut shape = [1usize; D];
        shape[D - 1] = e - s;
        let g = g.reshape(shape);
        let y = (base_term * (g.clone() - 1.0) + lora_y * g) * f64::from(self.multiplier());
        let y = lycoris::module_dropout(y, self.lora.module_dropout, training);
        lycoris::pad_last(y, self.rows(), d_out)
    }

    /// The merge terms over `base` (`[d_in, d_out]`): the per-column gain minus one,
    /// `m_u·(g − 1)` `[d_out]` (zero outside the rows), and the additive part `m_u·g⊙ΔW`
    /// `[d_in, d_out]`, so that `W' = W⊙(1 + gain) + add`. Uses `norm` (e.g. the one kept at
    /// merge time) instead of `base` when given.
    pub fn merge_terms(
        &self,
        base: Option<Tensor<B, 2>>,
        norm: Option<Tensor<B, 1>>,
        d_out: usize,
    ) -> (Tensor<B, 1>, Tensor<B, 2>) {
        let norm = match (norm, base) {
            (Some(n), _) => n,
            (None, Some(w)) => self.gain(w).1,
            (None, None) => unreachable!("merge_terms needs the base or the kept norm"),
        };
        let g = self.magnitude.val().detach() / (norm + NORM_EPS);
        let m = self.multiplier();
        let gain = lycoris::pad_last((g.clone() - 1.0) * m, self.rows(), d_out);
        let rows = g.dims()[0];
        let add = self.lora_delta().detach() * g.reshape([1, rows]) * m;
        (gain, lycoris::pad_last(add, self.rows(), d_out))
    }

    /// Number of stored values.
    pub fn num_params(&self) -> usize {
        self.lora.lora_a.shape().num_elements()
            + self.lora.lora_b.shape().num_elements()
            + self.magnitude.shape().num_elements()
    }
}

/// `‖column‖₂` of a `[d_in, n]` matrix: `[n]`.
pub fn column_norm<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = w.dims()[1];
    w.powi_scalar(2).sum_dim(0).sqrt().reshape([n])
}
