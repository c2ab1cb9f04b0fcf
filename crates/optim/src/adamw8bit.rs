//! AdamW with both moments stored block-wise in 8 bits, as bitsandbytes' `AdamW8bit`
//! (block size 256, dynamic maps, `min_8bit_size` 4096).
//!
//! Per step (bitsandbytes' reference CPU kernel `_optimizer_update_8bit_blockwise_cpu`):
//! dequantize `m`, `v`; `m ← β1·m + (1 − β1)·g`; `v ← β2·v + (1 − β2)·g²`;
//! `p ← p·(1 − lr·wd)`; `p ← p − (lr/c1)·m / (√v/c2 + ε)` with `c1 = 1 − β1ᵗ`,
//! `c2 = √(1 − β2ᵗ)`; re-quantize `m` (signed map) and `v` (unsigned map) with fresh block
//! absmax values. The update uses the fresh f32 moments, not their quantized copies. Tensors with
//! fewer than `min_8bit_size` elements keep f32 moments (bitsandbytes' `optimizer_update_32bit`
//! formula).
//!
//! State memory: 2 bytes per parameter for the codes plus 2 × 4 bytes per 256-element block.

use burn::record::Record;
use burn::tensor::{backend::Backend, Int, Tensor, TensorData};

use crate::adamw::check_betas_eps_wd;
use crate::per_tensor::{per_tensor_rule, TensorUpdate};
use crate::quant8::{
    code_storage_dtype, dequantize_blockwise, dynamic_map, quantize_blockwise, Quantized,
    BLOCK_SIZE,
};
use crate::rule::{
    float_bytes, host_step, int_bytes, named_f32, named_u8, HostEntries, ParamState,
};
use crate::AdamWConfig;
use crate::OptimError;

/// AdamW8bit hyper-parameters (bitsandbytes defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamW8bitConfig {
    /// β1 (0.9).
    pub beta1: f64,
    /// β2 (0.999).
    pub beta2: f64,
    /// ε (1e-8).
    pub eps: f64,
    /// Decoupled weight decay (0.01).
    pub weight_decay: f64,
    /// Tensors with fewer elements keep f32 moments (4096).
    pub min_8bit_size: usize,
}

/// AdamW's defaults (PyTorch's, as bitsandbytes uses them) and `min_8bit_size` 4096.
impl Default for AdamW8bitConfig {
    fn default() -> Self {
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = AdamWConfig::default();
        Self {
            beta1,
            beta2,
            eps,
            weight_decay,
            min_8bit_size: 4096,
        }
    }
}

impl AdamW8bitConfig {
    /// Validates and builds the optimizer.
    pub fn init(self) -> Result<AdamW8bit, OptimError> {
        check_betas_eps_wd(self.beta1, self.beta2, self.eps, self.weight_decay)?;
        Ok(AdamW8bit {
            config: self,
            signed_map: dynamic_map(true),
            unsigned_map: dynamic_map(false),
        })
    }
}

/// The 8-bit AdamW algorithm (build with [`AdamW8bitConfig::init`]).
#[derive(Debug, Clone)]
pub struct AdamW8bit {
    config: AdamW8bitConfig,
    signed_map: [f32; 256],
    unsigned_map: [f32; 256],
}

/// AdamW8bit per-parameter state: either both moments quantized or (small tensors) both in f32.
#[derive(Record, Clone, Debug)]
pub struct AdamW8bitState<B: Backend> {
    /// Number of updates applied.
    pub step: usize,
    /// First-moment codes (signed dynamic map).
    pub exp_avg_codes: Option<Tensor<B, 1, Int>>,
    /// First-moment block absmax.
    pub exp_avg_absmax: Option<Tensor<B, 1>>,
    /// Second-moment codes (unsigned dynamic map).
    pub exp_avg_sq_codes: Option<Tensor<B, 1, Int>>,
    /// Second-moment block absmax.
    pub exp_avg_sq_absmax: Option<Tensor<B, 1>>,
    /// First moment in f32 (tensors below `min_8bit_size`).
    pub exp_avg: Option<Tensor<B, 1>>,
    /// Second moment in f32 (tensors below `min_8bit_size`).
    pub exp_avg_sq: Option<Tensor<B, 1>>,
}

impl AdamW8bit {
    /// The configuration.
    pub fn config(&self) -> &AdamW8bitConfig {
        &self.config
    }

    /// One update of a flattened parameter, at learning rate `lr · lr_scale`.
    pub fn update_tensor<B: Backend>(
        &self,
        update: TensorUpdate<'_, B, AdamW8bitState<B>>,
    ) -> (Tensor<B, 1>, AdamW8bitState<B>) {
        let c = &self.config;
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
        let n = param.dims()[0];
        let quantized = n >= c.min_8bit_size;
        let step = state.as_ref().map_or(0, |s| s.step) + 1;
        let (m, v) = match state {
            None => (grad.zeros_like(), grad.zeros_like()),
            Some(s) => match (
                s.exp_avg,
                s.exp_avg_sq,
                s.exp_avg_codes,
                s.exp_avg_absmax,
                s.exp_avg_sq_codes,
                s.exp_avg_sq_absmax,
            ) {
                (Some(m), Some(v), ..) => (m, v),
                (_, _, Some(mc), Some(ma), Some(vc), Some(va)) => (
                    dequantize_blockwise(
                        &Quantized {
                            codes: mc,
                            absmax: ma,
                        },
                        &self.signed_map,
                    ),
                    dequantize_blockwise(
                        &Quantized {
                            codes: vc,
                            absmax: va,
                        },
                        &self.unsigned_map,
                    ),
                ),
                _ => (grad.zeros_like(), grad.zeros_like()),
            },
        };
        let m = m.mul_scalar(c.beta1) + grad.clone().mul_scalar(1.0 - c.beta1);
        let v = v.mul_scalar(c.beta2) + grad.clone().mul_scalar(1.0 - c.beta2) * grad;
        let c1 = 1.0 - c.beta1.powf(step as f64);
        let c2 = (1.0 - c.beta2.powf(step as f64)).sqrt();
        let mut param = param;
        if weight_decay > 0.0 {
            param = param.mul_scalar(1.0 - lr * weight_decay);
        }
        if quantized {
            let denom = v.clone().sqrt().div_scalar(c2).add_scalar(c.eps);
            let param = param + m.clone().mul_scalar(-lr / c1) / denom;
            let storage = code_storage_dtype::<B>(&m.device());
            let qm = quantize_blockwise(m, &self.signed_map, storage);
            let qv = quantize_blockwise(v, &self.unsigned_map, storage);
            let state = AdamW8bitState {
                step,
                exp_avg_codes: Some(qm.codes),
                exp_avg_absmax: Some(qm.absmax),
                exp_avg_sq_codes: Some(qv.codes),
                exp_avg_sq_absmax: Some(qv.absmax),
                exp_avg: None,
                exp_avg_sq: None,
            };
            (param, state)
        } else {
            let step_size = -lr * c2 / c1;
            let update = m.clone() / v.clone().sqrt().add_scalar(c.eps * c2);
            let param = param + update.mul_scalar(step_size);
            let state = AdamW8bitState {
                step,
                exp_avg_codes: None,
                exp_avg_absmax: None,
                exp_avg_sq_codes: None,
                exp_avg_sq_absmax: None,
                exp_avg: Some(m),
                exp_avg_sq: Some(v),
            };
            (param, state)
        }
    }
}

impl<B: Backend> ParamState<B> for AdamW8bitState<B> {
    fn to_host(&self) -> Vec<(&'static str, TensorData)> {
        let moments = [
            named_u8("exp_avg_codes", &self.exp_avg_codes),
            named_f32("exp_avg_absmax", &self.exp_avg_absmax),
            named_u8("exp_avg_sq_codes", &self.exp_avg_sq_codes),
            named_f32("exp_avg_sq_absmax", &self.exp_avg_sq_absmax),
            named_f32("exp_avg", &self.exp_avg),
            named_f32("exp_avg_sq", &self.exp_avg_sq),
        ];
        std::iter::once(("step", host_step(self.step)))
            .chain(moments.into_iter().flatten())
            .collect()
    }

    fn from_host(
        e: &mut HostEntries,
        shape: &[usize],
        device: &B::Device,
    ) -> Result<Self, OptimError> {
        let n: usize = shape.iter().product();
        let step = e.take_step("step")?;
        if e.contains("exp_avg_codes") {
            let blocks = n.div_ceil(BLOCK_SIZE);
            let storage = code_storage_dtype::<B>(device);
            Ok(Self {
                step,
                exp_avg_codes: Some(e.take_u8("exp_avg_codes", n, storage, device)?),
                exp_avg_absmax: Some(e.take_f32("exp_avg_absmax", blocks, device)?),
                exp_avg_sq_codes: Some(e.take_u8("exp_avg_sq_codes", n, storage, device)?),
                exp_avg_sq_absmax: Some(e.take_f32("exp_avg_sq_absmax", blocks, device)?),
                exp_avg: None,
                exp_avg_sq: None,
            })
        } else {
            Ok(Self {
                step,
                exp_avg_codes: None,
                exp_avg_absmax: None,
                exp_avg_sq_codes: None,
                exp_avg_sq_absmax: None,
                exp_avg: Some(e.take_f32("exp_avg", n, device)?),
                exp_avg_sq: Some(e.take_f32("exp_avg_sq", n, device)?),
            })
        }
    }

    fn bytes(&self) -> usize {
        let f = |t: &Option<Tensor<B, 1>>| t.as_ref().map_or(0, float_bytes);
        let i = |t: &Option<Tensor<B, 1, Int>>| t.as_ref().map_or(0, int_bytes);
        i(&self.exp_avg_codes)
            + i(&self.exp_avg_sq_codes)
            + f(&self.exp_avg_absmax)
            + f(&self.exp_avg_sq_absmax)
            + f(&self.exp_avg)
            + f(&self.exp_avg_sq)
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            step: self.step,
            exp_avg_codes: self.exp_avg_codes.map(|t| t.to_device(device)),
            exp_avg_absmax: self.exp_avg_absmax.map(|t| t.to_device(device)),
            exp_avg_sq_codes: self.exp_avg_sq_codes.map(|t| t.to_device(device)),
            exp_avg_sq_absmax: self.exp_avg_sq_absmax.map(|t| t.to_device(device)),
            exp_avg: self.exp_avg.map(|t| t.to_device(device)),
            exp_avg_sq: self.exp_avg_sq.map(|t| t.to_device(device)),
        }
    }
}

impl AdamW8bit {
    /// Checks that loaded moments are 8-bit exactly where `min_8bit_size` makes them so.
    fn check_state<B: Backend>(
        &self,
        shape: &[usize],
        state: &AdamW8bitState<B>,
    ) -> Result<(), OptimError> {
        let n: usize = shape.iter().product();
        let want_q = n >= self.config.min_8bit_size;
        if state.exp_avg_codes.is_some() != want_q {
            return Err(OptimError::QuantMismatch {
                elements: n,
                min_8bit_size: self.config.min_8bit_size,
                saved_8bit: !want_q,
            });
        }
        Ok(())
    }
}

per_tensor_rule! {
    rule: AdamW8bit,
    state: AdamW8bitState,
    name: "adamw8bit",
    describe: |rule| format!("{:?}, block_size: {BLOCK_SIZE}", rule.config),
    validate: |rule, shape, state| rule.check_state(shape, state),
}
