//! `LoraLinear`: a base linear plus stacked LoRA adapters, with merge and unmerge.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Distribution, Tensor};

use crate::adapter::{AdapterSpec, LoraAdapter};
use crate::error::LoraError;
use crate::frozen::{FrozenLinearBackend, FrozenWeight};
use crate::lycoris::{self, LycorisAdapter};
use crate::target::TargetSpec;

/// A linear layer `y = x·W + b + Σ adapters(x)`.
///
/// Every linear of a model built on this crate is a `LoraLinear`; with no adapters it is an
/// ordinary linear. The base is either a dense `weight` in Burn's `[d_in, d_out]` layout
/// (trainable, or frozen by [`freeze_base`](Self::freeze_base)), or a [`FrozenWeight`] in the
/// checkpoint's `[d_out, d_in]` layout (bf16 / fp8 / int8, possibly streamed from host memory),
/// multiplied by [`FrozenLinearBackend::frozen_linear`]. When `merged` is set the adapters' ΔW
/// has been folded into a dense `weight` and the forward skips them; a frozen base is never
/// merged into (re-quantising would lose the adapters' precision), so its adapters stay
/// separate.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// Dense base weight `[d_in, d_out]` (PyTorch/BFL files store `[out, in]`: transpose on
    /// load); `None` when the base is `frozen`.
    pub weight: Option<Param<Tensor<B, 2>>>,
    /// Frozen base weight `[d_out, d_in]`; `None` when the base is the dense `weight`.
    pub frozen: Option<FrozenWeight<B>>,
    /// `[d_out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Stacked adapters, each with its own multiplier.
    pub adapters: Vec<LoraAdapter<B>>,
    /// Stacked LyCORIS adapters (LoKr, LoHa, DoRA), after the plain ones; each sees the
    /// unmerged base (see [`crate::lycoris`]).
    pub lycoris: Vec<LycorisAdapter<B>>,
    /// Whether the adapters are currently merged into `weight`.
    pub merged: bool,
}

impl<B: Backend> LoraLinear<B> {
    /// A linear from existing weights (`weight: [d_in, d_out]`), trainable until frozen.
    pub fn from_weights(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: Some(Param::from_tensor(weight)),
            frozen: None,
            bias: bias.map(Param::from_tensor),
            adapters: Vec::new(),
            lycoris: Vec::new(),
            merged: false,
        }
    }

    /// A linear over a frozen base weight; the bias (if any) is frozen too.
    pub fn from_frozen(weight: FrozenWeight<B>, bias: Option<Tensor<B, 1>>) -> Self {
        Self {
            weight: None,
            frozen: Some(weight),
            bias: bias.map(|b| Param::from_tensor(b).set_require_grad(false)),
            adapters: Vec::new(),
            lycoris: Vec::new(),
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

    /// `[d_in, d_out]`.
    fn dims(&self) -> [usize; 2] {
        match (&self.weight, &self.frozen) {
            (Some(w), _) => w.dims(),
            (None, Some(f)) => {
                let [o, i] = f.dims();
                [i, o]
            }
            (None, None) => [0, 0],
        }
    }

    /// Input width.
    pub fn d_in(&self) -> usize {
        self.dims()[0]
    }

    /// Output width.
    pub fn d_out(&self) -> usize {
        self.dims()[1]
    }

    /// The device the base lives on (the adapters' device when the base is streamed).
    pub fn device(&self) -> B::Device {
        if let Some(w) = &self.weight {
            return w.device();
        }
        if let Some(b) = &self.bias {
            return b.device();
        }
        self.adapters
            .first()
            .map(|a| a.lora_a.device())
            .unwrap_or_default()
    }

    /// The base weight in f32, `[d_in, d_out]` (a frozen base decoded; for merges, exports and
    /// tests — never kept in a training graph).
    pub fn base_weight(&self) -> Tensor<B, 2> {
        match (&self.weight, &self.frozen) {
            (Some(w), _) => w.val().cast(DType::F32),
            (None, Some(f)) => f.dequantize(&self.device()).transpose(),
            (None, None) => Tensor::zeros([0, 0], &self.device()),
        }
    }

    /// Moves a frozen base to host memory: each use copies it to the device for that matmul
    /// only (block swap). A dense base is made a frozen one first (f32).
    pub fn stream_base_from_host(mut self) -> Self {
        if let Some(w) = self.weight.take() {
            let values = w.val().detach().transpose();
            let frozen = FrozenWeight::from_float(values, DType::F32);
            self.frozen = Some(frozen);
            self.bias = self.bias.map(|b| b.set_require_grad(false));
        }
        self.frozen = self.frozen.map(FrozenWeight::stream_from_host);
        self
    }

    /// Moves a streamed base back to the device.
    pub fn keep_base_on_device(mut self) -> Self {
        let device = self.device();
        self.frozen = self.frozen.map(|f| f.keep_on_device(&device));
        self
    }

    /// Stops gradients to the base weight and bias (they get no optimizer state either).
    pub fn freeze_base(mut self) -> Self {
        self.weight = self.weight.map(|w| w.set_require_grad(false));
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
        let (d_in, d_out) = (self.d_in(), self.d_out());
        match LycorisAdapter::init(path, spec, d_in, d_out, || self.base_weight(), device)? {
            Some(adapter) => self.push_lycoris(path, adapter),
            None => {
                let adapter = LoraAdapter::init(path, d_in, d_out, spec, device)?;
                self.push_adapter(path, adapter)
            }
        }
    }

    /// Adds an existing LyCORIS adapter after checking it fits (a merged linear is unmerged
    /// and merged again around it).
    pub fn push_lycoris(
        &mut self,
        path: &str,
        adapter: LycorisAdapter<B>,
    ) -> Result<(), LoraError> {
        adapter.check_fits(path, self.d_in(), self.d_out())?;
        let merged = self.merged;
        self.unmerge();
        self.lycoris.push(adapter);
        if merged {
            self.merge();
        }
        Ok(())
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
            self.weight = self.weight.take().map(|p| p.map(|w| shift(w, delta, 1.0)));
        }
        self.adapters.push(adapter);
        Ok(())
    }

    /// `x·W + b + Σ m·(α/r)·B(A(drop(x)))`; x is `[..., d_in]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>
    where
        B: FrozenLinearBackend,
    {
        let mut y = self.base_forward(x.clone());
        let base_y = y.clone();
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
            let base_y = || match &self.bias {
                Some(b) => {
                    let mut shape = [1usize; D];
                    shape[D - 1] = d_out;
                    base_y.clone() - b.val().cast(base_y.dtype()).reshape(shape)
                }
                None => base_y.clone(),
            };
            let base = || self.base_weight().detach();
            if let Some(delta) = lycoris::forward_all(&self.lycoris, x, base_y, base, d_out) {
                y = y.clone() + delta.cast(y.dtype());
            }
        }
        y
    }

    /// The base alone: `x·W + b`.
    pub fn base_forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>
    where
        B: FrozenLinearBackend,
    {
        match (&self.weight, &self.frozen) {
            (Some(w), _) => {
                let w = w.val();
                let xin = if x.dtype() != w.dtype() {
                    x.cast(w.dtype())
                } else {
                    x
                };
                burn::tensor::module::linear(xin, w, self.bias.as_ref().map(|b| b.val()))
            }
            (None, Some(f)) => {
                let dims = x.dims();
                let [d_out, d_in] = f.dims();
                let rows = dims[..D - 1].iter().product::<usize>();
                let y = B::frozen_linear(x.reshape([rows, d_in]), f);
                let y = match &self.bias {
                    Some(b) => y.clone() + b.val().cast(y.dtype()).unsqueeze_dim(0),
                    None => y,
                };
                let mut out = dims;
                out[D - 1] = d_out;
                y.reshape(out)
            }
            (None, None) => x,
        }
    }

    /// Sum of the adapters' ΔW in `[d_in, d_out]` layout (zeros if there are none). With
    /// LyCORIS adapters this is the whole change `W' − W` of a merge (DoRA's depends on W).
    pub fn delta_weight(&self) -> Tensor<B, 2> {
        let d_out = self.d_out();
        let zero = Tensor::zeros([self.d_in(), d_out], &self.device());
        let plain = self
            .adapters
            .iter()
            .fold(zero, |acc, a| acc + a.delta_weight(d_out));
        if self.lycoris.is_empty() {
            return plain;
        }
        let mut stack = self.lycoris.clone();
        if self.merged {
            let merged = self.base_weight().detach();
            let w = lycoris::unmerged_weight(&mut stack, merged.clone(), plain.detach());
            merged - w
        } else {
            let w = self.base_weight().detach();
            lycoris::merged_weight(&mut stack, w.clone(), plain) - w
        }
    }

    /// Folds every adapter into a dense `weight` (W ← W + ΣΔW); forward then skips the
    /// adapters. A frozen base is left as it is, with the adapters separate.
    pub fn merge(&mut self) {
        let any = !self.adapters.is_empty() || !self.lycoris.is_empty();
        if !self.merged && any && self.weight.is_some() {
            if self.lycoris.is_empty() {
                let delta = self.delta_weight().detach();
                self.weight = self.weight.take().map(|p| p.map(|w| shift(w, delta, 1.0)));
            } else {
                let plain = self.plain_delta().detach();
                let w = self.base_weight().detach();
                let merged = lycoris::merged_weight(&mut self.lycoris, w.clone(), plain);
                self.weight = self.weight.take().map(|p| p.map(|w0| replace(w0, merged)));
            }
            self.merged = true;
        }
    }

    /// Undoes [`merge`](Self::merge) (W ← W − ΣΔW), up to floating-point rounding.
    pub fn unmerge(&mut self) {
        if self.merged {
            if self.lycoris.is_empty() {
                let delta = self.delta_weight().detach();
                self.weight = self.weight.take().map(|p| p.map(|w| shift(w, delta, -1.0)));
            } else {
                let plain = self.plain_delta().detach();
                let merged = self.base_weight().detach();
                let w = lycoris::unmerged_weight(&mut self.lycoris, merged, plain);
                self.weight = self.weight.take().map(|p| p.map(|w0| replace(w0, w)));
            }
            self.merged = false;
        }
    }

    /// Sum of the plain LoRA adapters' ΔW, `[d_in, d_out]`.
    fn plain_delta(&self) -> Tensor<B, 2> {
        let d_out = self.d_out();
        let zero = Tensor::zeros([self.d_in(), d_out], &self.device());
        self.adapters
            .iter()
            .fold(zero, |acc, a| acc + a.delta_weight(d_out))
    }
}

/// `value` as a new leaf in `w`'s dtype and with its gradient requirement.
fn replace<B: Backend>(w: Tensor<B, 2>, value: Tensor<B, 2>) -> Tensor<B, 2> {
    let require_grad = w.is_require_grad();
    let out = value.detach().cast(w.dtype());
    if require_grad {
        out.require_grad()
    } else {
        out
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
