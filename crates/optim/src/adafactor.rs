//! Adafactor, operation for operation like `transformers.optimization.Adafactor`.
//!
//! Tensors of rank ≥ 2 keep a *factored* second moment: a row mean over the last dimension and a
//! column mean over the second-to-last (per leading batch index), whose outer product
//! approximates `E[g²]`. Rank-1 tensors keep a full second moment. The update is clipped to RMS
//! `clip_threshold`, scaled by the step size — relative (`min(1e-2, 1/√t)`, or `1e-6·t` with
//! `warmup_init`) or the `lr` passed in — times `max(eps2, RMS(p))` when `scale_parameter` —
//! and optionally smoothed with a first moment `beta1`. `β2ₜ = 1 − t^decay_rate`.
//!
//! With `relative_step` the `lr` given to `step` is ignored (as transformers requires `lr=None`);
//! group `lr_scale`s still multiply the computed step size.

use burn::record::Record;
use burn::tensor::{backend::Backend, DType, Tensor, TensorData};

use crate::per_tensor::{per_tensor_rule, TensorUpdate};
use crate::rule::{float_bytes, host_step, named_f32, HostEntries, ParamState};
use crate::OptimError;

/// Adafactor hyper-parameters (transformers defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdafactorConfig {
    /// Regularizer added to `g²` (1e-30).
    pub eps1: f64,
    /// Lower bound of the parameter-scale factor (1e-3).
    pub eps2: f64,
    /// RMS threshold of the update (1.0).
    pub clip_threshold: f64,
    /// Exponent of `β2ₜ = 1 − t^decay_rate` (−0.8).
    pub decay_rate: f64,
    /// First-moment decay; `None` (default) keeps no first moment.
    pub beta1: Option<f64>,
    /// Weight decay, scaled by the step size (0).
    pub weight_decay: f64,
    /// Multiply the step size by `max(eps2, RMS(p))` (true).
    pub scale_parameter: bool,
    /// Use the time-dependent relative step size instead of `lr` (true).
    pub relative_step: bool,
    /// Relative step `1e-6·t` warmup (false; needs `relative_step`).
    pub warmup_init: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        Self {
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            weight_decay: 0.0,
            scale_parameter: true,
            relative_step: true,
            warmup_init: false,
        }
    }
}

impl AdafactorConfig {
    /// Validates and builds the optimizer.
    pub fn init(self) -> Result<Adafactor, OptimError> {
        if self.warmup_init && !self.relative_step {
            return Err(OptimError::config(
                "warmup_init",
                true,
                "requires relative_step = true",
            ));
        }
        if let Some(b1) = self.beta1 {
            if !(0.0..1.0).contains(&b1) {
                return Err(OptimError::config("beta1", b1, "must be in [0, 1)"));
            }
        }
        if !(self.clip_threshold > 0.0) {
            return Err(OptimError::config(
                "clip_threshold",
                self.clip_threshold,
                "must be > 0",
            ));
        }
        if !(self.decay_rate < 0.0) {
            return Err(OptimError::config(
                "decay_rate",
                self.decay_rate,
                "must be < 0",
            ));
        }
        if !(self.eps1 >= 0.0 && self.eps2 >= 0.0) {
            return Err(OptimError::config(
                "eps",
                format!("({}, {})", self.eps1, self.eps2),
                "must be >= 0",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(OptimError::config(
                "weight_decay",
                self.weight_decay,
                "must be finite and >= 0",
            ));
        }
        Ok(Adafactor { config: self })
    }
}

/// The Adafactor algorithm (build with [`AdafactorConfig::init`]).
#[derive(Debug, Clone)]
pub struct Adafactor {
    config: AdafactorConfig,
}

/// Adafactor per-parameter state.
#[derive(Record, Clone, Debug)]
pub struct AdafactorState<B: Backend> {
    /// Number of updates applied.
    pub step: usize,
    /// First moment (only with `beta1`).
    pub exp_avg: Option<Tensor<B, 1>>,
    /// Factored row statistics `[batch, rows]` (rank ≥ 2).
    pub exp_avg_sq_row: Option<Tensor<B, 2>>,
    /// Factored column statistics `[batch, cols]` (rank ≥ 2).
    pub exp_avg_sq_col: Option<Tensor<B, 2>>,
    /// Full second moment (rank 1).
    pub exp_avg_sq: Option<Tensor<B, 1>>,
}

/// `[batch, rows, cols]` view of a shape of rank ≥ 2.
fn factor_dims(shape: &[usize]) -> Option<(usize, usize, usize)> {
    let r = shape.len();
    (r >= 2).then(|| (shape[..r - 2].iter().product(), shape[r - 2], shape[r - 1]))
}

fn rms<B: Backend>(t: &Tensor<B, 1>) -> Tensor<B, 1> {
    let n = t.dims()[0] as f64;
    t.clone().square().sum().sqrt().div_scalar(n.sqrt())
}

impl Adafactor {
    /// The configuration.
    pub fn config(&self) -> &AdafactorConfig {
        &self.config
    }

    /// One update of a flattened parameter of `shape`; `lr` is used only without `relative_step`,
    /// `lr_scale` always multiplies the step size.
    pub fn update_tensor<B: Backend>(
        &self,
        update: TensorUpdate<'_, B, AdafactorState<B>>,
    ) -> (Tensor<B, 1>, AdafactorState<B>) {
        let TensorUpdate {
            lr,
            lr_scale,
            weight_decay,
            shape,
            param,
            grad,
            state,
        } = update;
        let c = &self.config;
        let device = param.device();
        let factored = factor_dims(shape);
        let mut state = state.unwrap_or_else(|| AdafactorState {
            step: 0,
            exp_avg: c.beta1.map(|_| grad.zeros_like()),
            exp_avg_sq_row: factored.map(|(b, r, _)| Tensor::zeros([b, r], &device)),
            exp_avg_sq_col: factored.map(|(b, _, k)| Tensor::zeros([b, k], &device)),
            exp_avg_sq: factored.is_none().then(|| grad.zeros_like()),
        });
        state.step += 1;
        let t = state.step as f64;

        let rel_step = if c.relative_step {
            let min_step = if c.warmup_init { 1e-6 * t } else { 1e-2 };
            min_step.min(1.0 / t.sqrt())
        } else {
            lr
        } * lr_scale;
        let lr_t: Tensor<B, 1> = if c.scale_parameter {
            rms(&param).clamp_min(c.eps2).mul_scalar(rel_step)
        } else {
            Tensor::from_data(
                TensorData::new(vec![rel_step as f32], [1]),
                (&device, DType::F32),
            )
        };

        let beta2t = 1.0 - t.powf(c.decay_rate);
        let sq = grad.clone().square().add_scalar(c.eps1);
        let update = match factored {
            Some((b, r, k)) => {
                let sq = sq.reshape([b, r, k]);
                let row_mean: Tensor<B, 2> = sq.clone().mean_dim(2).reshape([b, r]);
                let col_mean: Tensor<B, 2> = sq.mean_dim(1).reshape([b, k]);
                let row = state
                    .exp_avg_sq_row
                    .take()
                    .unwrap_or_else(|| Tensor::zeros([b, r], &device));
                let col = state
                    .exp_avg_sq_col
                    .take()
                    .unwrap_or_else(|| Tensor::zeros([b, k], &device));
                let row = row.mul_scalar(beta2t) + row_mean.mul_scalar(1.0 - beta2t);
                let col = col.mul_scalar(beta2t) + col_mean.mul_scalar(1.0 - beta2t);
                let r_factor = (row.clone() / row.clone().mean_dim(1))
                    .sqrt()
                    .recip()
                    .reshape([b, r, 1]);
                let c_factor = col.clone().sqrt().recip().reshape([b, 1, k]);
                state.exp_avg_sq_row = Some(row);
                state.exp_avg_sq_col = Some(col);
                ((r_factor * c_factor) * grad.reshape([b, r, k])).reshape([b * r * k])
            }
            None => {
                let v = state.exp_avg_sq.take().unwrap_or_else(|| grad.zeros_like());
                let v = v.mul_scalar(beta2t) + sq.mul_scalar(1.0 - beta2t);
                let update = v.clone().sqrt().recip() * grad;
                state.exp_avg_sq = Some(v);
                update
            }
        };
        let clip = rms(&update).div_scalar(c.clip_threshold).clamp_min(1.0);
        let mut update = (update / clip) * lr_t.clone();
        if let Some(beta1) = c.beta1 {
            let m = state.exp_avg.take().unwrap_or_else(|| update.zeros_like());
            let m = m.mul_scalar(beta1) + update.mul_scalar(1.0 - beta1);
            update = m.clone();
            state.exp_avg = Some(m);
        }
        let mut param = param;
        if weight_decay != 0.0 {
            param = param.clone() + param * lr_t.mul_scalar(-weight_decay);
        }
        (param - update, state)
    }
}

impl<B: Backend> ParamState<B> for AdafactorState<B> {
    fn to_host(&self) -> Vec<(&'static str, TensorData)> {
        let moments = [
            named_f32("exp_avg", &self.exp_avg),
            named_f32("exp_avg_sq_row", &self.exp_avg_sq_row),
            named_f32("exp_avg_sq_col", &self.exp_avg_sq_col),
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
        let exp_avg = e.take_f32_opt("exp_avg", n, device)?;
        let (row, col, full) = match factor_dims(shape) {
            Some((b, r, k)) => (
                Some(e.take_f32_2d("exp_avg_sq_row", b, r, device)?),
                Some(e.take_f32_2d("exp_avg_sq_col", b, k, device)?),
                None,
            ),
            None => (None, None, Some(e.take_f32("exp_avg_sq", n, device)?)),
        };
        Ok(Self {
            step,
            exp_avg,
            exp_avg_sq_row: row,
            exp_avg_sq_col: col,
            exp_avg_sq: full,
        })
    }

    fn bytes(&self) -> usize {
        self.exp_avg.as_ref().map_or(0, float_bytes)
            + self.exp_avg_sq_row.as_ref().map_or(0, float_bytes)
            + self.exp_avg_sq_col.as_ref().map_or(0, float_bytes)
            + self.exp_avg_sq.as_ref().map_or(0, float_bytes)
    }

    fn to_device(self, device: &B::Device) -> Self {
        Self {
            step: self.step,
            exp_avg: self.exp_avg.map(|t| t.to_device(device)),
            exp_avg_sq_row: self.exp_avg_sq_row.map(|t| t.to_device(device)),
            exp_avg_sq_col: self.exp_avg_sq_col.map(|t| t.to_device(device)),
            exp_avg_sq: self.exp_avg_sq.map(|t| t.to_device(device)),
        }
    }
}

impl Adafactor {
    /// Checks that a loaded state has a first moment exactly when `beta1` is set.
    fn check_state<B: Backend>(&self, state: &AdafactorState<B>) -> Result<(), OptimError> {
        if state.exp_avg.is_some() != self.config.beta1.is_some() {
            return Err(OptimError::MomentMismatch {
                moment: "exp_avg",
                saved: state.exp_avg.is_some(),
                option: "beta1",
                value: self
                    .config
                    .beta1
                    .map_or_else(|| "None".into(), |b| b.to_string()),
            });
        }
        Ok(())
    }
}

per_tensor_rule! {
    rule: Adafactor,
    state: AdafactorState,
    name: "adafactor",
    describe: |rule| format!("{:?}", rule.config),
    validate: |rule, _shape, state| rule.check_state(state),
}
