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
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray;

    /// Independent host reference of the loss, written from the formulas in the module docs.
    #[allow(clippy::too_many_arguments)]
    fn host_loss(
        pred: &[f64],
        target: &[f64],
        xt: &[f64],
        sig: &[f64],
        mask: Option<&[f64]>,
        w: &[f64],
        dims: [usize; 3],
        s: &LossSettings,
    ) -> f64 {
        let [b, l, c] = dims;
        let mut total = 0.0;
        for i in 0..b {
            let mut acc = 0.0;
            for t in 0..l {
                for k in 0..c {
                    let j = (i * l + t) * c + k;
                    let p = match s.prediction {
                        ModelPredictionType::Raw => pred[j],
                        ModelPredictionType::Additive => pred[j] + xt[j],
                        ModelPredictionType::SigmaScaled => -sig[i] * pred[j] + xt[j],
                    };
                    let d = p - target[j];
                    let hc = f64::from(s.huber_c);
                    let mut e = match s.loss_type {
                        LossType::L2 => d * d,
                        LossType::L1 => d.abs(),
                        LossType::Huber => 2.0 * hc * ((d * d + hc * hc).sqrt() - hc),
                    };
                    e *= match s.weighting {
                        LossWeighting::None => 1.0,
                        LossWeighting::SigmaSqrt => sig[i].powi(-2),
                        LossWeighting::CosMap => {
                            2.0 / (std::f64::consts::PI
                                * (1.0 - 2.0 * sig[i] + 2.0 * sig[i] * sig[i]))
                        }
                    };
                    if let Some(m) = mask {
                        e *= m[i * l + t];
                    }
                    acc += e;
                }
            }
            total += acc / (l * c) as f64 * w[i];
        }
        total / b as f64
    }

    fn vals(n: usize, k: u64) -> Vec<f32> {
        let mut r = fluxlora_data::SplitMix64::new(k);
        (0..n).map(|_| (r.next_f64() * 4.0 - 2.0) as f32).collect()
    }

    #[test]
    fn loss_matches_host_reference_for_every_option() {
        let dims = [2usize, 3, 4];
        let n = 24;
        let (pred, target, xt) = (vals(n, 1), vals(n, 2), vals(n, 3));
        let sig = [0.3f32, 0.8];
        let mask = [1.0f32, 0.5, 0.0, 0.25, 1.0, 0.75];
        let w = [1.0f32, 0.4];
        let dev = Default::default();
        let t3 = |v: &Vec<f32>| host::tensor::<B, 3>(v.clone(), dims, &dev);
        let f64s = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        for loss_type in [LossType::L2, LossType::L1, LossType::Huber] {
            for prediction in [
                ModelPredictionType::Raw,
                ModelPredictionType::Additive,
                ModelPredictionType::SigmaScaled,
            ] {
                for weighting in [
                    LossWeighting::None,
                    LossWeighting::SigmaSqrt,
                    LossWeighting::CosMap,
                ] {
                    for masked in [false, true] {
                        let s = LossSettings {
                            loss_type,
                            huber_c: 0.3,
                            prediction,
                            weighting,
                            prior_loss_weight: 0.4,
                        };
                        let m =
                            masked.then(|| host::tensor::<B, 3>(mask.to_vec(), [2, 3, 1], &dev));
                        let got = flow_matching_loss(
                            t3(&pred),
                            t3(&target),
                            t3(&xt),
                            host::tensor::<B, 1>(sig.to_vec(), [2], &dev),
                            m,
                            host::tensor::<B, 1>(w.to_vec(), [2], &dev),
                            &s,
                        )
                        .into_scalar();
                        let want = host_loss(
                            &f64s(&pred),
                            &f64s(&target),
                            &f64s(&xt),
                            &f64s(&sig),
                            masked.then(|| f64s(&mask)).as_deref(),
                            &f64s(&w),
                            dims,
                            &s,
                        );
                        assert!(
                            (f64::from(got) - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "{loss_type:?} {prediction:?} {weighting:?} masked={masked}: {got} vs \
                             {want}"
                        );
                    }
                }
            }
        }
    }

    /// `fixtures/train/flow_match_sigmas.json`, written by diffusers
    /// (`fixtures/train/make_flow_match_sigmas.py`).
    fn diffusers_tables() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/train/flow_match_sigmas.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn sigma_sampling_reproduces_the_diffusers_table_bit_for_bit() {
        let fixture = diffusers_tables();
        let tables = fixture["tables"].as_array().unwrap();
        assert_eq!(tables.len(), 3);
        for t in tables {
            let shift = t["shift"].as_f64().unwrap();
            let want: Vec<f32> = t["sigmas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let got = fluxlora_flux::schedule::flow_match_sigmas(NUM_TRAIN_TIMESTEPS, shift);
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "shift {shift} index {i}: {g} vs diffusers {w}"
                );
            }
            // kohya's timesteps[indices] → get_sigmas path lands on the same entries.
            let config = TrainConfig {
                timestep_sampling: TimestepSampling::Sigma,
                discrete_flow_shift: Some(shift as f32),
                ..TrainConfig::default()
            };
            let sampler = StepSettings::from_config(&config).unwrap().sampler;
            let idx = t["kohya_indices"].as_array().unwrap();
            for (i, k) in idx.iter().zip(t["kohya_sigmas"].as_array().unwrap()) {
                let i = i.as_u64().unwrap() as usize;
                let u = (i as f64 + 0.5) / NUM_TRAIN_TIMESTEPS as f64;
                let got = sampler.sigma(u, 0.0, 4096) as f32;
                // The config stores the shift as f32, so compare at f32 precision of the shift.
                assert!(
                    (f64::from(got) - k.as_f64().unwrap()).abs() < 1e-6,
                    "index {i}: {got} vs {k}"
                );
            }
        }
    }

    #[test]
    fn sigma_sampling_defaults_to_kohyas_shift_of_three() {
        let config = TrainConfig {
            timestep_sampling: TimestepSampling::Sigma,
            ..TrainConfig::default()
        };
        let s = StepSettings::from_config(&config).unwrap().sampler;
        assert_eq!(
            s,
            SigmaSampler::Discrete {
                shift: 3.0,
                num_train_timesteps: 1000
            }
        );
        // The draws are seeded per (seed, step, micro-batch) and only take table values.
        let a = crate::noise::draw_noise(9, 4, 1, &s, 64, 1, 1);
        assert_eq!(a, crate::noise::draw_noise(9, 4, 1, &s, 64, 1, 1));
        assert_ne!(
            a.sigmas,
            crate::noise::draw_noise(9, 5, 1, &s, 64, 1, 1).sigmas
        );
        let table = fluxlora_flux::schedule::flow_match_sigmas(1000, 3.0);
        assert!(a.sigmas.iter().all(|v| table.contains(v)), "{:?}", a.sigmas);
    }

    #[test]
    fn default_shift_is_bfl_at_1024() {
        // μ = 1.15 at 4096 tokens, so the shift is e^1.15 ≈ 3.158.
        assert!((bfl_shift(1024) - 1.15f64.exp()).abs() < 1e-12);
        assert!((bfl_shift(256) - 0.5f64.exp()).abs() < 1e-12);
    }
}
