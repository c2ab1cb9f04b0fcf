//! AdamW with decoupled weight decay, operation for operation like `torch.optim.AdamW`
//! (single-tensor path): `p ← p·(1 − lr·wd)`, `m ← lerp(m, g, 1 − β1)`,
//! `v ← β2·v + (1 − β2)·g²`, `p ← p − (lr / bc1) · m / (√v / √bc2 + ε)`.

use burn::record::Record;
use burn::tensor::{backend::Backend, Tensor, TensorData};

use crate::per_tensor::{per_tensor_rule, TensorUpdate};
use crate::rule::{float_bytes, host_f32, host_step, HostEntries, ParamState};
use crate::OptimError;

/// AdamW hyper-parameters (PyTorch defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay β1 (0.9).
    pub beta1: f64,
    /// Second-moment decay β2 (0.999).
    pub beta2: f64,
    /// Denominator epsilon (1e-8).
    pub eps: f64,
    /// Decoupled weight decay (0.01).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    /// Checks the ranges PyTorch checks.
    pub fn validate(&self) -> Result<(), OptimError> {
        check_betas_eps_wd(self.beta1, self.beta2, self.eps, self.weight_decay)
    }

    /// Validates and builds the optimizer.
    pub fn init(self) -> Result<AdamW, OptimError> {
        self.validate()?;
        Ok(AdamW { config: self })
    }
}

pub(crate) fn check_betas_eps_wd(
    beta1: f64,
    beta2: f64,
    eps: f64,
    wd: f64,
) -> Result<(), OptimError> {
    if !(0.0..1.0).contains(&beta1) {
        return Err(OptimError::config("beta1", beta1, "must be in [0, 1)"));
    }
    if !(0.0..1.0).contains(&beta2) {
        return Err(OptimError::config("beta2", beta2, "must be in [0, 1)"));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(OptimError::config("eps", eps, "must be finite and >= 0"));
    }
    if !(wd.is_finite() && wd >= 0.0) {
        return Err(OptimError::config(
            "weight_decay",
            wd,
            "must be finite and >= 0",
        ));
    }
    Ok(())
}

/// The AdamW algorithm (build with [`AdamWConfig::init`]).
#[derive(Debug, Clone)]
pub struct AdamW {
    config: AdamWConfig,
}

/// AdamW per-parameter state: step count and both moments in f32 (8 bytes per parameter).
#[derive(Record, Clone, Debug)]
pub struct AdamWState<B: Backend> {
    /// Number of updates applied.
    pub step: usize,
    /// First moment, flattened.
    pub exp_avg: Tensor<B, 1>,
    /// Second moment, flattened.
    pub exp_avg_sq: Tensor<B, 1>,
}

impl AdamW {
    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// One AdamW update of a flattened parameter, at learning rate `lr · lr_scale`.
    pub fn update_tensor<B: Backend>(
        &self,
        update: TensorUpdate<'_, B, AdamWState<B>>,
    ) -> (Tensor<B, 1>, AdamWState<B>) {
        let TensorUpdate {
            lr,
            lr_scale,
            weight_decay,
            param,
            grad,
            state,
            ..
        } = update;
        let lr = lr * lr_scale;
        let c = &self.config;
        let (step, m, v) = match state {
            Some(s) => (s.step + 1, s.exp_avg, s.exp_avg_sq),
            None => (1, grad.zeros_like(), grad.zeros_like()),
        };
        let mut param = param;
        if weight_decay != 0.0 {
            param = param.mul_scalar(1.0 - lr * weight_decay);
        }
        // torch lerp with weight < 0.5: m + w·(g − m)
        let m = m.clone() + (grad.clone() - m).mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + grad.clone().mul_scalar(1.0 - c.beta2) * grad;
        let bc1 = 1.0 - c.beta1.powf(step as f64);
        let bc2 = 1.0 - c.beta2.powf(step as f64);
        let step_size = lr / bc1;
        let denom = v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(c.eps);
        let param = param + m.clone().mul_scalar(-step_size) / denom;
        (
            param,
            AdamWState {
                step,
                exp_avg: m,
                exp_avg_sq: v,
            },
        )
    }
}

impl<B: Backend> ParamState<B> for AdamWState<B> {
    fn to_host(&self) -> Vec<(&'static str, TensorData)> {
        vec![
            ("step", host_step(self.step)),
            ("exp_avg", host_f32(&self.exp_avg)),
            ("exp_avg_sq", host_f32(&self.exp_avg_sq)),
        ]
    }

    fn from_host(
        e: &mut HostEntries,
        shape: &[usize],
        device: &B::Device,
    ) -> Result<Self, OptimError> {
        let n = shape.iter().product();
        Ok(Self {
            step: e.take_step("step")?,
            exp_avg: e.take_f32("exp_avg", n, device)?,
            exp_avg_sq: e.take_f32("exp_avg_sq", n, device)?,
        })
    }

    fn bytes(&self) -> usize {
        float_bytes(&self.exp_avg) + float_bytes(&self.exp_avg_sq)
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            step: self.step,
            exp_avg: self.exp_avg.to_device(device),
            exp_avg_sq: self.exp_avg_sq.to_device(device),
        }
    }
}

per_tensor_rule! {
    rule: AdamW,
    state: AdamWState,
    name: "adamw",
    describe: |rule| format!("{:?}", rule.config),
}
