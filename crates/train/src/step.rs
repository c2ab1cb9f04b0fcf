//! One flow-matching training step.
//!
//! Given packed latents x0 `[B, L, C]`, text tokens and pooled vectors: draw σ and ε
//! ([`crate::noise`]), form x_t = (1 − σ)·x0 + σ·ε and the target ε − x0, run the
//! transformer with t = σ (and the guidance value on dev models) through
//! [`fluxlora_flux::forward_backward`] (so block checkpointing is an option), and reduce the loss
//! as kohya sd-scripts does:
//!
//! 1. prediction type: raw `p`, additive `p + x_t`, or sigma-scaled `−σ·p + x_t`;
//! 2. element loss: l2 `(p − y)²`, l1 `|p − y|`, or pseudo-Huber
//!    `2c(√((p − y)² + c²) − c)`;
//! 3. × the σ weighting (`sigma_sqrt`, `cosmap`; kohya applies it only with `sigma_scaled`,
//!    here it applies whenever it is set);
//! 4. × the loss mask (alpha mask, broadcast over channels), then the mean over tokens and
//!    channels per sample (masked elements count as zeros, as kohya's `apply_masked_loss`);
//! 5. × the per-sample weight (`prior_loss_weight` for regularisation images), mean over the
//!    batch.
//!
//! Kontext edit pairs ([`TrainBatch::control`]): x_t is formed from the target alone; the
//! control's clean latent tokens are appended with ids `(1, row, col)`, and the loss covers the
//! target tokens only (the model returns only those).
//!
//! `timestep_sampling = "sigma"` is kohya's discrete sampler: an index uniform over the 1000-entry
//! table of diffusers' `FlowMatchEulerDiscreteScheduler(shift = discrete_flow_shift, default 3.0)`
//! ([`fluxlora_flux::schedule::flow_match_sigmas`]), σ = table[index]. kohya feeds the model
//! `timesteps / 1000` (σ·1000/1000 in f32, at most an ulp from σ); this step feeds σ itself.

use burn::optim::GradientsParams;
use burn::tensor::{backend::Backend, Tensor};
use fluxlora_flux::schedule::{LossWeighting, SigmaSampler, BASE_SHIFT, MAX_SHIFT};
use fluxlora_flux::FluxAutodiffBackend;
use fluxlora_flux::FluxBackend;
use fluxlora_flux::{
    forward_backward, host, latents, Checkpointing, Flux, FluxInputs, ImageCondSeq,
};

use crate::config::{
    LossType, ModelPredictionType, TimestepSampling, TrainConfig, WeightingScheme,
};
use crate::error::TrainError;
use crate::noise::NoiseDraw;

/// One micro-batch as the step consumes it.
#[derive(Debug, Clone)]
pub struct TrainBatch<B: Backend> {
    /// Packed clean latents x0 `[B, L, C]` (see [`fluxlora_flux::latents::pack`]).
    pub latents: Tensor<B, 3>,
    /// Token grid `(h, w)` with `h·w = L`, for the image position ids.
    pub grid: (usize, usize),
    /// T5 tokens `[B, L_txt, context_dim]`.
    pub txt: Tensor<B, 3>,
    /// Pooled CLIP vectors `[B, vec_dim]`.
    pub y: Tensor<B, 2>,
    /// Loss mask `[B, L, 1]` (per token) or `[B, L, C]` (per element), values in [0, 1].
    pub mask: Option<Tensor<B, 3>>,
    /// T5 padding mask `[B, L_txt]` (1 = token, 0 = padding), from an encoder that masks
    /// padding (`apply_t5_attn_mask`): the transformer's attention then hides the padding.
    pub txt_mask: Option<Tensor<B, 2>>,
    /// Which samples are regularisation images (weighted by `prior_loss_weight`).
    pub is_reg: Vec<bool>,
    /// Kontext: each sample's control image, clean, appended after the noisy target's tokens.
    pub control: Option<ControlLatents<B>>,
}

/// The control images of a Kontext micro-batch (edit pairs: control in, target out).
#[derive(Debug, Clone)]
pub struct ControlLatents<B: Backend> {
    /// Packed clean latents `[B, L_cond, C]`.
    pub latents: Tensor<B, 3>,
    /// Token grid `(h, w)` with `h·w = L_cond`, for the control's position ids.
    pub grid: (usize, usize),
}

impl<B: Backend> TrainBatch<B> {
    /// Batch size, tokens and channels, after checking the parts agree.
    pub fn dims(&self) -> Result<[usize; 3], TrainError> {
        let [b, l, c] = self.latents.dims();
        let bad = |message: String| {
            Err(TrainError::Shape {
                what: "training batch".into(),
                message,
            })
        };
        if self.grid.0 * self.grid.1 != l {
            return bad(format!(
                "grid {:?} has {} tokens but the latents have {l}",
                self.grid,
                self.grid.0 * self.grid.1
            ));
        }
        if self.txt.dims()[0] != b || self.y.dims()[0] != b || self.is_reg.len() != b {
            return bad(format!(
                "batch sizes differ: latents {b}, txt {}, y {}, is_reg {}",
                self.txt.dims()[0],
                self.y.dims()[0],
                self.is_reg.len()
            ));
        }
        if let Some(ctl) = &self.control {
            let [cb, cl, cc] = ctl.latents.dims();
            if cb != b || cc != c || ctl.grid.0 * ctl.grid.1 != cl {
                return bad(format!(
                    "control latents {:?} with grid {:?} do not fit a batch of {b} with {c} \
                     channels",
                    ctl.latents.dims(),
                    ctl.grid
                ));
            }
        }
        if let Some(m) = &self.mask {
            let [mb, ml, mc] = m.dims();
            if mb != b || ml != l || (mc != 1 && mc != c) {
                return bad(format!(
                    "mask {:?} must be [{b}, {l}, 1] or [{b}, {l}, {c}]",
                    m.dims()
                ));
            }
        }
        Ok([b, l, c])
    }
}

/// How a step turns a prediction into a loss.
#[derive(Debug, Clone, PartialEq)]
pub struct LossSettings {
    /// Element loss.
    pub loss_type: LossType,
    /// Pseudo-Huber c.
    pub huber_c: f32,
    /// What the prediction is compared as.
    pub prediction: ModelPredictionType,
    /// Per-sample σ weighting.
    pub weighting: LossWeighting,
    /// Weight of regularisation samples.
    pub prior_loss_weight: f32,
}

/// Everything a step needs besides the model and the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSettings {
    /// σ distribution.
    pub sampler: SigmaSampler,
    /// Loss reduction.
    pub loss: LossSettings,
    /// Guidance value fed to guidance-distilled models.
    pub guidance: f32,
    /// Block recomputation in backward.
    pub checkpointing: Checkpointing,
}

/// kohya's default `discrete_flow_shift` (used by `timestep_sampling = "sigma"` when unset).
pub const KOHYA_DISCRETE_FLOW_SHIFT: f64 = 3.0;
/// Length of the discrete σ table (`FlowMatchEulerDiscreteScheduler(num_train_timesteps)`).
pub const NUM_TRAIN_TIMESTEPS: usize = 1000;

/// BFL's static shift for a square image of `resolution` pixels: `exp(μ)` with μ from the
/// token count `(resolution/16)²` (3.16 at 1024², 1.0 … 3.2 from 256² up).
pub fn bfl_shift(resolution: u32) -> f64 {
    let tokens = (resolution as usize).div_ceil(16).pow(2);
    fluxlora_flux::schedule::lin_mu(tokens, BASE_SHIFT, MAX_SHIFT).exp()
}

impl StepSettings {
    /// The step settings a config describes.
    pub fn from_config(c: &TrainConfig) -> Result<Self, TrainError> {
        let scale = f64::from(c.sigmoid_scale);
        let sampler = match c.timestep_sampling {
            TimestepSampling::Uniform => SigmaSampler::Uniform,
            TimestepSampling::Sigmoid => SigmaSampler::Sigmoid { scale },
            TimestepSampling::LogitNormal => SigmaSampler::LogitNormal {
                mean: f64::from(c.logit_mean),
                std: f64::from(c.logit_std),
            },
            TimestepSampling::Shift => SigmaSampler::Shift {
                shift: c
                    .discrete_flow_shift
                    .map(f64::from)
                    .unwrap_or_else(|| bfl_shift(c.resolution)),
                sigmoid_scale: scale,
            },
            TimestepSampling::FluxShift => SigmaSampler::FluxShift {
                sigmoid_scale: scale,
                base_shift: BASE_SHIFT,
                max_shift: MAX_SHIFT,
            },
            TimestepSampling::Sigma => SigmaSampler::Discrete {
                shift: c
                    .discrete_flow_shift
                    .map_or(KOHYA_DISCRETE_FLOW_SHIFT, f64::from),
                num_train_timesteps: NUM_TRAIN_TIMESTEPS,
            },
        };
        let weighting = match c.weighting_scheme {
            WeightingScheme::None => LossWeighting::None,
            WeightingScheme::SigmaSqrt => LossWeighting::SigmaSqrt,
            WeightingScheme::Cosmap => LossWeighting::CosMap,
        };
        Ok(Self {
            sampler,
            loss: LossSettings {
                loss_type: c.loss_type,
                huber_c: c.huber_c,
                prediction: c.model_prediction_type,
                weighting,
                prior_loss_weight: c.prior_loss_weight,
            },
            guidance: c.guidance_scale,
            checkpointing: if c.gradient_checkpointing {
                Checkpointing::Blocks
            } else {
                Checkpointing::Off
            },
        })
    }
}

/// The loss of a prediction `pred` `[B, L, C]` against `target`, as described in the module
/// docs. `x_t` is the noisy input (for the additive / sigma-scaled predictions), `sigmas` `[B]`,
/// `sample_weights` `[B]`. Returns a `[1]` tensor.
pub fn flow_matching_loss<B: Backend>(
    pred: Tensor<B, 3>,
    target: Tensor<B, 3>,
    x_t: Tensor<B, 3>,
    sigmas: Tensor<B, 1>,
    mask: Option<Tensor<B, 3>>,
    sample_weights: Tensor<B, 1>,
    s: &LossSettings,
) -> Tensor<B, 1> {
    let [b, l, c] = pred.dims();
    let sig3 = sigmas.clone().reshape([b, 1, 1]);
    let pred = match s.prediction {
        ModelPredictionType::Raw => pred,
        ModelPredictionType::Additive => pred + x_t,
        ModelPredictionType::SigmaScaled => pred * sig3.neg() + x_t,
    };
    let diff = pred - target;
    let mut elem = match s.loss_type {
        LossType::L2 => diff.clone() * diff,
        LossType::L1 => diff.abs(),
        LossType::Huber => {
            let hc = f64::from(s.huber_c);
            ((diff.clone() * diff) + hc * hc)
                .sqrt()
                .sub_scalar(hc)
                .mul_scalar(2.0 * hc)
        }
    };
    if s.weighting != LossWeighting::None {
        elem = elem * s.weighting.weights(sigmas).reshape([b, 1, 1]);
    }
    if let Some(m) = mask {
        elem = elem * m.expand([b, l, c]);
    }
    let per_sample: Tensor<B, 1> = elem.reshape([b, l * c]).mean_dim(1).reshape([b]);
    (per_sample * sample_weights).mean()
}

/// What one step produced.
#[derive(Debug)]
pub struct StepOutput {
    /// The loss value.
    pub loss: f32,
    /// Mean σ of the batch.
    pub sigma_mean: f32,
    /// Gradients of the trainable (LoRA) parameters.
    pub grads: GradientsParams,
}

/// The model inputs and loss terms of one micro-batch under its draws.
struct Prepared<B: Backend> {
    inputs: FluxInputs<B>,
    target: Tensor<B, 3>,
    x_t: Tensor<B, 3>,
    sigmas: Tensor<B, 1>,
    weights: Tensor<B, 1>,
    mask: Option<Tensor<B, 3>>,
}

/// x_t = (1 − σ)·x0 + σ·ε, the target ε − x0, the per-sample weights and the model inputs
/// (t = σ, the guidance value when the model has a guidance embedder).
fn prepare<B: Backend>(
    guidance_embed: bool,
    batch: &TrainBatch<B>,
    draw: &NoiseDraw,
    s: &StepSettings,
) -> Result<Prepared<B>, TrainError> {
    let [b, l, c] = batch.dims()?;
    if draw.sigmas.len() != b || draw.noise.len() != b * l * c {
        return Err(TrainError::Shape {
            what: "noise draw".into(),
            message: format!(
                "{} σ and {} ε values do not fit a [{b}, {l}, {c}] batch",
                draw.sigmas.len(),
                draw.noise.len()
            ),
        });
    }
    let device = batch.latents.device();
    let sigmas: Tensor<B, 1> = host::tensor(draw.sigmas.clone(), [b], &device);
    let noise: Tensor<B, 3> = host::tensor(draw.noise.clone(), [b, l, c], &device);
    let x0 = batch.latents.clone().detach();
    let sig3 = sigmas.clone().reshape([b, 1, 1]);
    let x_t = x0.clone() * (sig3.clone().neg() + 1.0) + noise.clone() * sig3;
    let target = noise - x0;
    let weights: Vec<f32> = batch
        .is_reg
        .iter()
        .map(|&r| if r { s.loss.prior_loss_weight } else { 1.0 })
        .collect();
    let weights: Tensor<B, 1> = host::tensor(weights, [b], &device);
    let txt_len = batch.txt.dims()[1];
    let inputs = FluxInputs {
        img: x_t.clone(),
        img_ids: latents::img_ids(b, batch.grid.0, batch.grid.1, &device),
        txt: batch.txt.clone().detach(),
        txt_ids: latents::txt_ids(b, txt_len, &device),
        timesteps: sigmas.clone(),
        y: batch.y.clone().detach(),
        guidance: guidance_embed.then(|| Tensor::full([b], s.guidance, &device)),
        txt_mask: batch.txt_mask.clone(),
        img_cond_seq: batch.control.as_ref().map(|ctl| ImageCondSeq {
            img: ctl.latents.clone().detach(),
            ids: latents::control_ids(b, ctl.grid.0, ctl.grid.1, &device),
        }),
    };
    Ok(Prepared {
        inputs,
        target,
        x_t,
        sigmas,
        weights,
        mask: batch.mask.clone(),
    })
}

/// The first value of a loss tensor, on the host.
pub fn scalar<B: Backend>(loss: Tensor<B, 1>) -> Result<f32, TrainError> {
    let loss = loss
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied());
    loss.ok_or_else(|| TrainError::Shape {
        what: "loss".into(),
        message: "the loss tensor is empty".into(),
    })
}

/// Runs one training forward + backward on `batch` with the draws `draw`.
pub fn training_step<B: FluxAutodiffBackend>(
    model: &Flux<B>,
    batch: &TrainBatch<B>,
    draw: &NoiseDraw,
    s: &StepSettings,
) -> Result<StepOutput, TrainError> {
    let b = batch.dims()?[0];
    let p = prepare(model.config.guidance_embed, batch, draw, s)?;
    let out = forward_backward(model, &p.inputs, s.checkpointing, |pred| {
        flow_matching_loss(
            pred,
            p.target.clone(),
            p.x_t.clone(),
            p.sigmas.clone(),
            p.mask.clone(),
            p.weights.clone(),
            &s.loss,
        )
    })?;
    let loss = scalar(out.loss)?;
    let sigma_mean = draw.sigmas.iter().sum::<f32>() / b as f32;
    Ok(StepOutput {
        loss,
        sigma_mean,
        grads: out.grads,
    })
}

/// The loss [`training_step`] would report for `batch` under `draw`, forward only: for a model
/// on a plain backend (e.g. `model.valid()`), so no autodiff graph is built and no dropout
/// applies. Same inputs, prediction type, element loss, σ weighting, mask and sample weights.
pub fn evaluation_loss<B: FluxBackend>(
    model: &Flux<B>,
    batch: &TrainBatch<B>,
    draw: &NoiseDraw,
    s: &StepSettings,
) -> Result<f32, TrainError> {
    let p = prepare(model.config.guidance_embed, batch, draw, s)?;
    let pred = model.forward(&p.inputs)?;
    scalar(flow_matching_loss(
        pred, p.target, p.x_t, p.sigmas, p.mask, p.weights, &s.loss,
    ))
}

#[cfg(test)]
mod tests;
