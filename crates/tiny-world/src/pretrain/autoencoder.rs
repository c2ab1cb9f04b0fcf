//! Stage 1 of the tiny world: the autoencoder's reconstruction pretraining, then its latent
//! scale and shift measured on base-domain images (see the parent module's docs).

use std::time::Instant;

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use fluxlora_data::SplitMix64;
use fluxlora_flux::{host, Autoencoder, AutoencoderLoadOptions, FluxAutodiffBackend};
use fluxlora_optim::AdamW;
use fluxlora_train::step::scalar;
use image::RgbImage;

use super::{adamw, images_tensor, mean, PretrainOptions, PretrainReport, AE_SCENES};
use crate::domain::World;
use crate::error::TinyWorldError;

/// Makes every parameter trainable (a loaded autoencoder is frozen).
struct Trainable;

impl<B: Backend> ModuleMapper<B> for Trainable {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.set_require_grad(true)
    }
}

/// Trains the autoencoder; returns it (inner backend) with its measured scale/shift.
pub(super) fn pretrain_autoencoder<B: FluxAutodiffBackend>(
    o: &PretrainOptions,
    world: &World,
    report: &mut PretrainReport,
    progress: &mut dyn FnMut(&str),
    device: &B::Device,
) -> Result<Autoencoder<B::InnerBackend>, TinyWorldError> {
    let start = Instant::now();
    let (mut ae, first_stage) = match &o.ae_from {
        Some(path) => {
            let options = AutoencoderLoadOptions {
                norm_groups: o.autoencoder.norm_groups,
                scale_factor: 1.0,
                shift_factor: 0.0,
                ..Default::default()
            };
            (
                Autoencoder::<B>::load(path, &options, device)?.map(&mut Trainable),
                false,
            )
        }
        None => (Autoencoder::<B>::init(o.autoencoder.clone(), device)?, true),
    };
    let crops = World::new(o.ae_size);
    let mut losses = Vec::with_capacity(o.ae_steps + o.ae_refine_steps);
    let stages = [
        (first_stage, 0, o.ae_steps, o.ae_lr, false),
        (true, o.ae_steps, o.ae_refine_steps, o.ae_lr / 2.0, true),
    ];
    for (run, offset, steps, lr0, saturated) in stages {
        if !run {
            continue;
        }
        let mut optim: OptimizerAdaptor<AdamW, Autoencoder<B>, B> = adamw()?.into();
        for i in 0..steps {
            let step = offset + i;
            let mut rng = SplitMix64::derive(o.seed, &[AE_SCENES, step as u64]);
            let images: Vec<RgbImage> = (0..o.ae_batch)
                .map(|k| {
                    let scene = if k % 2 == 0 {
                        crops.autoencoder_scene(&mut rng, saturated)
                    } else {
                        crops.base_scene(&mut rng)
                    };
                    crops.render(&scene)
                })
                .collect();
            let x = images_tensor::<B>(&images, device);
            let z = ae.encode(x.clone())?;
            let recon = ae.decode(z.clone())?;
            let loss = (recon - x).powi_scalar(2).mean() + z.powi_scalar(2).mean() * 1e-4;
            let value = scalar(loss.clone())?;
            if !value.is_finite() {
                return Err(TinyWorldError::NonFiniteLoss {
                    step: step as u64,
                    value,
                    lr: lr0,
                });
            }
            losses.push(value);
            let grads = GradientsParams::from_grads(loss.backward(), &ae);
            // Linear decay to 10 % over the stage.
            let lr = lr0 * (1.0 - 0.9 * i as f64 / steps.max(1) as f64);
            ae = optim.step(lr, ae, grads);
            if step % 100 == 0 || i + 1 == steps {
                progress(&format!(
                    "autoencoder step {step}/{}: loss {value:.4}",
                    o.ae_steps + o.ae_refine_steps
                ));
            }
        }
    }
    report.ae_loss = (
        mean(&losses[..losses.len().min(50)]),
        mean(&losses[losses.len().saturating_sub(50)..]),
    );
    let mut ae = ae.valid();
    // Latent statistics of the base domain.
    let mut rng = SplitMix64::derive(o.seed, &[AE_SCENES, u64::MAX]);
    let images: Vec<RgbImage> = (0..64)
        .map(|_| world.render(&world.base_scene(&mut rng)))
        .collect();
    let z = ae.encode(images_tensor::<B::InnerBackend>(&images, device))?;
    let v = host::values(z)?;
    let m = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64;
    let var = v.iter().map(|&x| (f64::from(x) - m).powi(2)).sum::<f64>() / v.len().max(1) as f64;
    ae.config.shift_factor = m;
    ae.config.scale_factor = 1.0 / var.sqrt().max(1e-6);
    report.scale_shift = (ae.config.scale_factor, ae.config.shift_factor);
    report.ae_seconds = start.elapsed().as_secs_f64();
    Ok(ae)
}
