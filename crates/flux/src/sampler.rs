//! Euler sampling (BFL `denoise`): `img ← img + (t_prev − t_curr)·v(img, t_curr)` over a
//! schedule from 1 to 0, with a constant guidance value for guidance-distilled models, and
//! optionally true classifier-free guidance against a negative prompt ([`denoise_cfg`]).

use burn::tensor::{backend::Backend, Tensor};

use crate::error::{FluxError, Result};
use crate::fused::FluxBackend;
use crate::transformer::model::{Flux, FluxInputs, ImageCondSeq};

/// The conditioning that stays fixed across sampling steps.
#[derive(Debug, Clone)]
pub struct Conditioning<B: Backend> {
    /// Text tokens `[B, L_txt, context_in_dim]`.
    pub txt: Tensor<B, 3>,
    /// `[B, L_txt, 3]`.
    pub txt_ids: Tensor<B, 3>,
    /// `[B, L_img, 3]`.
    pub img_ids: Tensor<B, 3>,
    /// Pooled vector `[B, vec_in_dim]`.
    pub y: Tensor<B, 2>,
    /// Guidance strength (dev: BFL default 4.0 in `denoise`, 3.5 in diffusers); ignored by
    /// schnell-like models.
    pub guidance: Option<f32>,
    /// T5 padding mask `[B, L_txt]` (see [`FluxInputs::txt_mask`]).
    pub txt_mask: Option<Tensor<B, 2>>,
    /// Kontext: the control image's clean tokens and ids, appended after the noisy tokens at
    /// every step (BFL `denoise`'s `img_cond_seq`); its size may differ from the target's.
    pub img_cond_seq: Option<ImageCondSeq<B>>,
}

/// Runs the Euler sampler from `noise` (packed tokens `[B, L_img, in_channels]`) through
/// `timesteps` (e.g. from [`crate::schedule::get_schedule`], first value 1.0 for pure noise) and
/// returns the final tokens.
pub fn denoise<B: FluxBackend>(
    model: &Flux<B>,
    noise: Tensor<B, 3>,
    cond: &Conditioning<B>,
    timesteps: &[f64],
) -> Result<Tensor<B, 3>> {
    euler(noise, timesteps, |img, t| velocity(model, img, cond, t))
}

/// [`denoise`] with true classifier-free guidance: each step's velocity is
/// `v_neg + scale·(v_pos − v_neg)`, `v_pos` under `cond` and `v_neg` under `negative` (the
/// negative prompt's, or the empty prompt's, text). Two forward passes per step; `scale` 1 is
/// [`denoise`] under `cond`.
pub fn denoise_cfg<B: FluxBackend>(
    model: &Flux<B>,
    noise: Tensor<B, 3>,
    cond: &Conditioning<B>,
    negative: &Conditioning<B>,
    scale: f32,
    timesteps: &[f64],
) -> Result<Tensor<B, 3>> {
    euler(noise, timesteps, |img, t| {
        let pos = velocity(model, img.clone(), cond, t)?;
        let neg = velocity(model, img, negative, t)?;
        Ok(neg.clone() + (pos - neg).mul_scalar(scale))
    })
}

/// The model's velocity at `img`, time `t`.
fn velocity<B: FluxBackend>(
    model: &Flux<B>,
    img: Tensor<B, 3>,
    cond: &Conditioning<B>,
    t: f64,
) -> Result<Tensor<B, 3>> {
    let device = img.device();
    let batch = img.dims()[0];
    let inputs = FluxInputs {
        img,
        img_ids: cond.img_ids.clone(),
        txt: cond.txt.clone(),
        txt_ids: cond.txt_ids.clone(),
        timesteps: Tensor::full([batch], t as f32, &device),
        y: cond.y.clone(),
        guidance: cond
            .guidance
            .map(|g| Tensor::<B, 1>::full([batch], g, &device)),
        txt_mask: cond.txt_mask.clone(),
        img_cond_seq: cond.img_cond_seq.clone(),
    };
    model.forward(&inputs)
}

/// The Euler steps over `timesteps` with velocity `v(img, t_curr)`.
fn euler<B: FluxBackend>(
    noise: Tensor<B, 3>,
    timesteps: &[f64],
    mut v: impl FnMut(Tensor<B, 3>, f64) -> Result<Tensor<B, 3>>,
) -> Result<Tensor<B, 3>> {
    if timesteps.len() < 2 {
        return Err(FluxError::Input {
            name: "timesteps".into(),
            message: format!(
                "{} value(s); need at least 2 (start and end)",
                timesteps.len()
            ),
        });
    }
    let mut img = noise;
    for w in timesteps.windows(2) {
        let (t_curr, t_prev) = (w[0], w[1]);
        let pred = v(img.clone(), t_curr)?;
        img = img + pred.mul_scalar((t_prev - t_curr) as f32);
    }
    Ok(img)
}
