//! `LoraLinear`: a base linear plus stacked LoRA adapters, with merge and unmerge.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::adapter::{AdapterSpec, LoraAdapter};
use crate::error::LoraError;
use crate::target::TargetSpec;

/// A linear layer `y = x·W + b + Σ adapters(x)`, in Burn's `[d_in, d_out]` weight layout.
///
/// Every linear of a model built on this crate is a `LoraLinear`; with no adapters it is an
/// ordinary linear. When `merged` is set the adapters' ΔW has been folded into `weight` and the
/// forward skips them.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// `[d_in, d_out]` (PyTorch/BFL files store `[out, in]`: transpose on load).
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Stacked adapters, each with its own multiplier.
    pub adapters: Vec<LoraAdapter<B>>,
    /// Whether the adapters are currently merged into `weight`.
    pub merged: bool,
}

impl<B: Backend> LoraLinear<B> {
    /// A linear from existing weights (`weight: [d_in, d_out]`), trainable until frozen.
    pub fn from_weights(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            bias: bias.map(Param::from_tensor),
            adapters: Vec::new(),
            merged: false,
        }
    }

    /// A freshly initialised linear, as PyTorch's `nn.Linear` (U(−1/√d_in, 1/√d_in) for
    /// weight and bias).
    pub fn init(d_in: usize, d_out: usize, bias: bool, device: &B::Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        let dist = Distribution::Uniform(-bound, bound);
        Self::from_weights(
            Tensor::random([d_in, d_out], dist, device),
            bias.then(|| Tensor::random([d_out], dist, device)),
        )
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Stops gradients to the base weight and bias (they get no optimizer state either).
    pub fn freeze_base(mut self) -> Self {
        self.weight = self.weight.set_require_grad(false);
        self.bias = self.bias.map(|b| b.set_require_grad(false));
        self
    }

    /// Adds a fresh adapter (A random, B zero) built from `spec`; ids derive from `path`.
    pub fn add_adapter(
        &mut self,
        path: &str,
        spec: &AdapterSpec,
        device: &B::Device,
    ) -> Result<(), LoraError> {
        let adapter = LoraAdapter::init(path, self.d_in(), self.d_out(), spec, device)?;
        self.push_adapter(path, adapter)
    }

    /// Adds every adapter of a [`TargetSpec`] chosen by a
    /// [`TargetSelector`](crate::TargetSelector) for this linear.
    pub fn add_target(
        &mut self,
        path: &str,
        target: &TargetSpec,
        device: &B::Device,
    ) -> Result<(), LoraError> {
        target
            .adapters
            .iter()
            .try_for_each(|spec| self.add_adapter(path, spec, device))
    }

    /// Adds an existing adapter (e.g. loaded from a file) after checking it fits.
    pub fn push_adapter(&mut self, path: &str, adapter: LoraAdapter<B>) -> Result<(), LoraError> {
        let [a_in, _] = adapter.lora_a.dims();
        let [_, b_out] = adapter.lora_b.dims();
        let (s, e) = adapter.rows.unwrap_or((0, self.d_out()));
        if a_in != self.d_in() || e > self.d_out() || e - s != b_out {
            return Err(LoraError::Rows {
                path: path.to_string(),
                start: s,
                end: s + b_out,
                d_out: self.d_out(),
            });
        }
        if self.merged {
            let delta = adapter.delta_weight(self.d_out()).detach();
            self.weight = self.weight.clone().map(|w| shift(w, delta, 1.0));
        }
        self.adapters.push(adapter);
        Ok(())
    }

    /// `x·W + b + Σ m·(α/r)·B(A(drop(x)))`; x is `[..., d_in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let w = self.weight.val();
        let xin = if x.dtype() != w.dtype() {
            x.clone().cast(w.dtype())
        } else {
            x.clone()
        };
        let mut y = burn::tensor::module::linear(xin, w, self.bias.as_ref().map(|b| b.val()));
        if !self.merged {
            let d_out = self.d_out();
            for adapter in &self.adapters {
                let delta = adapter.forward(x.clone(), d_out);
                let delta = if delta.dtype() != y.dtype() {
                    delta.cast(y.dtype())
                } else {
                    delta
                };
                y = y + delta;
            }
        }
        y
    }

    /// Sum of the adapters' ΔW in `[d_in, d_out]` layout (zeros if there are none).
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        let d_out = self.d_out();
        let zero = Tensor::zeros([self.d_in(), d_out], &self.weight.device());
        self.adapters
            .iter()
            .fold(zero, |acc, a| acc + a.delta_weight(d_out))
    }

    /// Folds every adapter into `weight` (W ← W + ΣΔW); forward then skips the adapters.
    pub fn merge(&mut self) {
        if !self.merged && !self.adapters.is_empty() {
            let delta = self.delta_weight().detach();
            self.weight = self.weight.clone().map(|w| shift(w, delta, 1.0));
            self.merged = true;
        }
    }

    /// Undoes [`merge`](Self::merge) (W ← W − ΣΔW), up to floating-point rounding.
    pub fn unmerge(&mut self) {
        if self.merged {
            let delta = self.delta_weight().detach();
            self.weight = self.weight.clone().map(|w| shift(w, delta, -1.0));
            self.merged = false;
        }
    }
}

/// `w + sign·delta` as a new leaf that keeps `w`'s dtype and gradient requirement.
fn shift<B: Backend>(w: Tensor<B, 2>, delta: Tensor<B, 2>, sign: f32) -> Tensor<B, 2> {
    let require_grad = w.is_require_grad();
    let dtype = w.dtype();
    let out = w.detach() + delta.cast(dtype) * sign;
    if require_grad {
        out.require_grad()
    } else {
        out
    }
}
