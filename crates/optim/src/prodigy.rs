//! Prodigy (Mishchenko & Defazio), operation for operation like `prodigyopt.Prodigy` 1.1.2.
//!
//! Prodigy is Adam whose step size `d` is estimated online from *all* parameters:
//! `d̂ = d_coef · Σ⟨g, p0 − p⟩-weighted numerator / Σ‖s‖₁`, so it cannot be a
//! per-tensor `SimpleOptimizer`; it runs only through [`LoraOptimizer`](crate::LoraOptimizer),
//! which hands it every parameter of a step at once. The reductions are accumulated in f64 on the
//! host in parameter order, like the Python `.item()` sums (one device sync per step).
//!
//! Learning-rate groups: prodigyopt only allows groups with the same lr or lr 0. Here `d` is
//! estimated with the largest group lr (as prodigyopt does) and a group's step is scaled by
//! `lr_scale / max lr_scale`, which equals prodigyopt whenever it accepts the groups (scales 1
//! or 0), except that a group with scale 0 does not move at all (prodigyopt would still apply its
//! stale first moment and decoupled weight decay to it).

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::rule::{
    float_bytes, host_f32, host_step, HostEntries, OptimizerRule, ParamSlot, ParamState,
};
use crate::OptimError;

/// Prodigy hyper-parameters (prodigyopt defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProdigyConfig {
    /// β1 (0.9); 0 disables the first moment.
    pub beta1: f64,
    /// β2 (0.999).
    pub beta2: f64,
    /// β3 for the `d` statistics; `None` = √β2.
    pub beta3: Option<f64>,
    /// ε (1e-8), scaled by `d` in the denominator.
    pub eps: f64,
    /// Weight decay (0).
    pub weight_decay: f64,
    /// AdamW-style decoupled decay (true) or L2 added to the gradient (false).
    pub decouple: bool,
    /// Adam bias correction folded into the step size (false).
    pub use_bias_correction: bool,
    /// Leave lr out of the `s` accumulator (false); helps with warmup.
    pub safeguard_warmup: bool,
    /// Initial `d` (1e-6).
    pub d0: f64,
    /// Multiplier of the `d` estimate (1.0).
    pub d_coef: f64,
    /// Maximum growth factor of `d` per step (∞).
    pub growth_rate: f64,
    /// Estimate `d` from every `slice_p`-th element only (1 = exact Prodigy).
    pub slice_p: usize,
}

impl Default for ProdigyConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            beta3: None,
            eps: 1e-8,
            weight_decay: 0.0,
            decouple: true,
            use_bias_correction: false,
            safeguard_warmup: false,
            d0: 1e-6,
            d_coef: 1.0,
            growth_rate: f64::INFINITY,
            slice_p: 1,
        }
    }
}

impl ProdigyConfig {
    /// Validates and builds the optimizer with `d = d_max = d0`.
    pub fn init(self) -> Result<Prodigy, OptimError> {
        if !(self.d0 > 0.0 && self.d0.is_finite()) {
            return Err(OptimError::config("d0", self.d0, "must be finite and > 0"));
        }
        if !(self.eps > 0.0) {
            return Err(OptimError::config("eps", self.eps, "must be > 0"));
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return Err(OptimError::config("beta1", self.beta1, "must be in [0, 1)"));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return Err(OptimError::config("beta2", self.beta2, "must be in [0, 1)"));
        }
        if let Some(b3) = self.beta3 {
            if !(0.0..=1.0).contains(&b3) {
                return Err(OptimError::config("beta3", b3, "must be in [0, 1]"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(OptimError::config(
                "weight_decay",
                self.weight_decay,
                "must be finite and >= 0",
            ));
        }
        if !(self.d_coef > 0.0 && self.d_coef.is_finite()) {
            return Err(OptimError::config(
                "d_coef",
                self.d_coef,
                "must be finite and > 0",
            ));
        }
        if !(self.growth_rate >= 1.0) {
            return Err(OptimError::config(
                "growth_rate",
                self.growth_rate,
                "must be >= 1 (inf = unlimited)",
            ));
        }
        if self.slice_p == 0 {
            return Err(OptimError::config("slice_p", self.slice_p, "must be >= 1"));
        }
        Ok(Prodigy {
            config: self,
            d: self.d0,
            d_max: self.d0,
            d_numerator: 0.0,
            d_hat: self.d0,
            k: 0,
        })
    }
}

/// The Prodigy algorithm and its global step-size estimate.
#[derive(Debug, Clone)]
pub struct Prodigy {
    config: ProdigyConfig,
    d: f64,
    d_max: f64,
    d_numerator: f64,
    d_hat: f64,
    k: u64,
}

/// Prodigy per-parameter state.
#[derive(Clone, Debug)]
pub struct ProdigyState<B: Backend> {
    /// Number of updates applied.
    pub step: usize,
    /// First moment (absent when β1 = 0).
    pub exp_avg: Option<Tensor<B, 1>>,
    /// Second moment.
    pub exp_avg_sq: Tensor<B, 1>,
    /// The `s` accumulator over the sliced parameter.
    pub s: Tensor<B, 1>,
    /// Initial (sliced) parameter values; `None` when they were all zero (prodigyopt keeps a
    /// scalar 0 then, e.g. for zero-initialised LoRA B matrices).
    pub p0: Option<Tensor<B, 1>>,
}

impl Prodigy {
    /// The configuration.
    pub fn config(&self) -> &ProdigyConfig {
        &self.config
    }

    /// Current step-size estimate `d`.
    pub fn d(&self) -> f64 {
        self.d
    }

    /// Last raw estimate `d̂`.
    pub fn d_hat(&self) -> f64 {
        self.d_hat
    }

    /// Effective learning rate `d · lr` of the last step's parameters (bias correction excluded).
    pub fn effective_lr(&self, lr: f64) -> f64 {
        self.d * lr
    }

    fn sliced<B: Backend>(&self, t: Tensor<B, 1>) -> Tensor<B, 1> {
        let p = self.config.slice_p;
        if p == 1 {
            return t;
        }
        let n = t.dims()[0];
        let idx = Tensor::<B, 1, Int>::arange_step(0..n as i64, p, &t.device());
        t.select(0, idx)
    }
}

fn scalar_f64s<B: Backend>(parts: Vec<Tensor<B, 1>>) -> Vec<f64> {
    if parts.is_empty() {
        return Vec::new();
    }
    Tensor::cat(parts, 0).into_data().iter::<f64>().collect()
}

impl<B: Backend> OptimizerRule<B> for Prodigy {
    type State = ProdigyState<B>;

    fn name(&self) -> &'static str {
        "prodigy"
    }

    fn describe(&self) -> String {
        format!("{:?}", self.config)
    }

    fn step(&mut self, lr: f64, slots: &mut [ParamSlot<B, Self::State>]) {
        let c = self.config;
        let (beta1, beta2) = (c.beta1, c.beta2);
        let beta3 = c.beta3.unwrap_or_else(|| beta2.sqrt());
        let k = self.k as f64;
        let base_lr = lr;
        let max_scale = slots.iter().map(|s| s.lr_scale).fold(0.0, f64::max);
        // prodigyopt: `lr = max(group lr)`; groups with lr 0 contribute nothing this step.
        let lr = base_lr * max_scale;
        let bias_correction = if c.use_bias_correction {
            (1.0 - beta2.powf(k + 1.0)).powf(0.5) / (1.0 - beta1.powf(k + 1.0))
        } else {
            1.0
        };
        let d = self.d;
        let d0 = c.d0;
        let dlr = d * lr * bias_correction;
        let d_numerator = self.d_numerator * beta3;

        // Pass 1: moments, s, and the per-parameter reductions (kept on device until one sync).
        let mut dots = Vec::new();
        let mut s_sums = Vec::new();
        for slot in slots.iter_mut() {
            let wd = slot.weight_decay.unwrap_or(c.weight_decay);
            if wd != 0.0 && !c.decouple {
                slot.grad = slot.grad.clone() + slot.param.clone().mul_scalar(wd);
            }
            let mut state = match slot.state.take() {
                Some(s) => s,
                None => {
                    let sliced = self.sliced(slot.param.clone());
                    let max_abs = slot
                        .param
                        .clone()
                        .abs()
                        .max()
                        .into_data()
                        .iter::<f64>()
                        .next();
                    let any_nonzero = max_abs.is_some_and(|v| v != 0.0);
                    ProdigyState {
                        step: 0,
                        exp_avg: (beta1 > 0.0).then(|| slot.param.zeros_like()),
                        exp_avg_sq: slot.param.zeros_like(),
                        s: sliced.zeros_like(),
                        p0: any_nonzero.then_some(sliced),
                    }
                }
            };
            if base_lr * slot.lr_scale > 0.0 {
                let grad = slot.grad.clone();
                let sliced_grad = self.sliced(grad.clone());
                let sliced_param = self.sliced(slot.param.clone());
                let diff = match &state.p0 {
                    Some(p0) => p0.clone() - sliced_param,
                    None => sliced_param.neg(),
                };
                dots.push((sliced_grad.clone() * diff).sum());
                if let Some(m) = state.exp_avg.take() {
                    state.exp_avg =
                        Some(m.mul_scalar(beta1) + grad.clone().mul_scalar(d * (1.0 - beta1)));
                }
                state.exp_avg_sq = state.exp_avg_sq.mul_scalar(beta2)
                    + grad.clone().mul_scalar(d * d * (1.0 - beta2)) * grad;
                let alpha = if c.safeguard_warmup {
                    (d / d0) * d
                } else {
                    (d / d0) * dlr
                };
                state.s = state.s.mul_scalar(beta3) + sliced_grad.mul_scalar(alpha);
                s_sums.push(state.s.clone().abs().sum());
            }
            slot.state = Some(state);
        }

        let scale = (d / d0) * dlr;
        let delta_numerator: f64 = scalar_f64s(dots)
            .into_iter()
            .fold(0.0, |acc, dot| acc + scale * dot);
        let d_denom: f64 = scalar_f64s(s_sums).into_iter().fold(0.0, |acc, s| acc + s);

        if d_denom == 0.0 {
            // prodigyopt returns here: moments were updated, parameters and d are not.
            return;
        }
        let global_numerator = d_numerator + delta_numerator;
        let mut new_d = d;
        let mut d_max = self.d_max;
        let mut d_hat = d;
        if lr > 0.0 {
            d_hat = c.d_coef * global_numerator / d_denom;
            if d == d0 {
                new_d = d.max(d_hat);
            }
            d_max = d_max.max(d_hat);
            new_d = d_max.min(new_d * c.growth_rate);
        }
        self.d_numerator = global_numerator;
        self.d = new_d;
        self.d_max = d_max;
        self.d_hat = d_hat;

        // Pass 2: parameter updates with the new d in the denominator and the old dlr.
        for slot in slots.iter_mut() {
            let Some(mut state) = slot.state.take() else {
                continue;
            };
            state.step += 1;
            let ratio = if max_scale > 0.0 {
                slot.lr_scale / max_scale
            } else {
                0.0
            };
            let slot_dlr = dlr * ratio;
            let denom = state.exp_avg_sq.clone().sqrt().add_scalar(new_d * c.eps);
            let wd = slot.weight_decay.unwrap_or(c.weight_decay);
            let mut p = slot.param.clone();
            if wd != 0.0 && c.decouple {
                p = p.clone() + p.mul_scalar(-wd * slot_dlr);
            }
            p = match &state.exp_avg {
                Some(m) => p + m.clone().mul_scalar(-slot_dlr) / denom,
                None => p + slot.grad.clone().mul_scalar(-slot_dlr * new_d) / denom,
            };
            slot.param = p;
            slot.state = Some(state);
        }
        self.k += 1;
    }

    fn validate_state(&self, shape: &[usize], state: &Self::State) -> Result<(), OptimError> {
        let n: usize = shape.iter().product();
        let sliced = n.div_ceil(self.config.slice_p);
        if state.s.dims()[0] != sliced {
            return Err(OptimError::SliceMismatch {
                found: state.s.dims()[0],
                slice_p: self.config.slice_p,
                expected: sliced,
            });
        }
        if state.exp_avg.is_some() != (self.config.beta1 > 0.0) {
            return Err(OptimError::MomentMismatch {
                moment: "exp_avg",
                saved: state.exp_avg.is_some(),
                option: "beta1",
                value: self.config.beta1.to_string(),
            });
        }
        Ok(())
    }

    fn globals(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("d", self.d),
            ("d_max", self.d_max),
            ("d_numerator", self.d_numerator),
            ("d_hat", self.d_hat),
            ("k", self.k as f64),
        ]
    }

    fn set_globals(&mut self, get: &dyn Fn(&str) -> Option<f64>) -> Result<(), OptimError> {
        let need = |n: &str| {
            get(n).ok_or_else(|| OptimError::MissingGlobal {
                name: n.to_string(),
            })
        };
        self.d = need("d")?;
        self.d_max = need("d_max")?;
        self.d_numerator = need("d_numerator")?;
        self.d_hat = need("d_hat")?;
        let k = need("k")?;
        if !(k >= 0.0 && k.fract() == 0.0) {
            return Err(OptimError::GlobalNotStepCount {
                name: "k".into(),
                value: k,
            });
        }
        self.k = k as u64;
        Ok(())
    }
}

impl<B: Backend> ParamState<B> for ProdigyState<B> {
    fn to_host(&self) -> Vec<(&'static str, TensorData)> {
        let mut out = vec![
            ("step", host_step(self.step)),
            ("exp_avg_sq", host_f32(&self.exp_avg_sq)),
            ("s", host_f32(&self.s)),
        ];
        if let Some(m) = &self.exp_avg {
            out.push(("exp_avg", host_f32(m)));
        }
        if let Some(p0) = &self.p0 {
            out.push(("p0", host_f32(p0)));
        }
        out
    }

    fn from_host(
        e: &mut HostEntries,
        shape: &[usize],
        device: &B::Device,
    ) -> Result<Self, OptimError> {
        let n: usize = shape.iter().product();
        let step = e.take_step("step")?;
        let exp_avg_sq = e.take_f32("exp_avg_sq", n, device)?;
        let exp_avg = e.take_f32_opt("exp_avg", n, device)?;
        // The sliced length is whatever was saved; slice_p must match the configuration in use.
        let s_len = e
            .len_of("s")
            .ok_or_else(|| OptimError::MissingStateTensor { name: "s".into() })?;
        let s = e.take_f32("s", s_len, device)?;
        let p0 = e.take_f32_opt("p0", s_len, device)?;
        Ok(Self {
            step,
            exp_avg,
            exp_avg_sq,
            s,
            p0,
        })
    }

    fn bytes(&self) -> usize {
        float_bytes(&self.exp_avg_sq)
            + float_bytes(&self.s)
            + self.exp_avg.as_ref().map_or(0, float_bytes)
            + self.p0.as_ref().map_or(0, float_bytes)
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            step: self.step,
            exp_avg: self.exp_avg.map(|t| t.to_device(device)),
            exp_avg_sq: self.exp_avg_sq.to_device(device),
            s: self.s.to_device(device),
            p0: self.p0.map(|t| t.to_device(device)),
        }
    }
}
