//! Stage 3 of the tiny world: the transformer's flow-matching pretraining on latents and captions
//! of base-domain scenes, encoded once on the host (see the parent module's docs).

use std::collections::BTreeMap;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::Optimizer;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fluxlora_data::SplitMix64;
use fluxlora_flux::schedule::SigmaSampler;
use fluxlora_flux::{
    host, latents, Autoencoder, Flux, FluxAutodiffBackend, FluxCheckpoint, LoadOptions,
};
use fluxlora_optim::AdamW;
use fluxlora_train::noise::draw_noise;
use fluxlora_train::orchestration::encoders::FluxTextEncoder;
use fluxlora_train::step::{bfl_shift, training_step, LossSettings, StepSettings, TrainBatch};
use fluxlora_train::{LossType, ModelPredictionType};
use image::RgbImage;

use super::{adamw, images_tensor, mean, PretrainOptions, PretrainReport};
use super::{FLUX_BATCHES, FLUX_INIT, FLUX_SCENES};
use crate::domain::World;
use crate::error::TinyWorldError;

/// Latents and text of the transformer's training set, on the host.
pub(super) struct FluxData {
    latents: Vec<f32>,
    captions: Vec<usize>,
    texts: Vec<(Vec<f32>, Vec<f32>)>,
    tokens: usize,
    channels: usize,
    grid: (usize, usize),
}

pub(super) fn encode_flux_data<B: Backend>(
    o: &PretrainOptions,
    world: &World,
    ae: &Autoencoder<B>,
    text: &FluxTextEncoder<B>,
    progress: &mut dyn FnMut(&str),
    device: &B::Device,
) -> Result<FluxData, TinyWorldError> {
    let mut rng = SplitMix64::derive(o.seed, &[FLUX_SCENES]);
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut data = FluxData {
        latents: Vec::new(),
        captions: Vec::new(),
        texts: Vec::new(),
        tokens: 0,
        channels: 0,
        grid: (0, 0),
    };
    let chunk = 32;
    let mut done = 0;
    while done < o.flux_images {
        let n = chunk.min(o.flux_images - done);
        let scenes: Vec<_> = (0..n).map(|_| world.base_scene(&mut rng)).collect();
        let images: Vec<RgbImage> = scenes.iter().map(|s| world.render(s)).collect();
        let z = ae.encode(images_tensor::<B>(&images, device))?;
        let [_, _, h, w] = z.dims();
        let packed = latents::pack(z)?;
        let [_, l, c] = packed.dims();
        (data.tokens, data.channels, data.grid) = (l, c, (h / 2, w / 2));
        data.latents.extend(host::values(packed)?);
        for s in &scenes {
            let next = index.len();
            let id = *index.entry(s.caption.clone()).or_insert(next);
            if id == data.texts.len() {
                let (t5, pooled) = text.encode_tensors(&s.caption)?;
                data.texts.push((host::values(t5)?, host::values(pooled)?));
            }
            data.captions.push(id);
        }
        done += n;
        progress(&format!(
            "encoded {done}/{} images, {} captions",
            o.flux_images,
            index.len()
        ));
    }
    Ok(data)
}

fn flux_batch<B: Backend>(
    d: &FluxData,
    picks: &[usize],
    o: &PretrainOptions,
    device: &B::Device,
) -> TrainBatch<B> {
    let per = d.tokens * d.channels;
    let lat: Vec<f32> = picks
        .iter()
        .flat_map(|&i| d.latents[i * per..(i + 1) * per].iter().copied())
        .collect();
    let txt: Vec<f32> = picks
        .iter()
        .flat_map(|&i| d.texts[d.captions[i]].0.iter().copied())
        .collect();
    let y: Vec<f32> = picks
        .iter()
        .flat_map(|&i| d.texts[d.captions[i]].1.iter().copied())
        .collect();
    let b = picks.len();
    let c = &o.transformer;
    TrainBatch {
        latents: Tensor::from_data(TensorData::new(lat, [b, d.tokens, d.channels]), device),
        grid: d.grid,
        txt: Tensor::from_data(
            TensorData::new(txt, [b, o.t5_max_length, c.context_in_dim]),
            device,
        ),
        y: Tensor::from_data(TensorData::new(y, [b, c.vec_in_dim]), device),
        mask: None,
        txt_mask: None,
        control: None,
        is_reg: vec![false; b],
    }
}

pub(super) fn pretrain_transformer<B: FluxAutodiffBackend>(
    o: &PretrainOptions,
    data: &FluxData,
    report: &mut PretrainReport,
    progress: &mut dyn FnMut(&str),
    device: &B::Device,
) -> Result<Flux<B::InnerBackend>, TinyWorldError> {
    let start = Instant::now();
    // Its own seed: the initial weights do not depend on whether the autoencoder was trained in
    // this process (which draws from the backend's generator) or reused.
    B::seed(device, SplitMix64::derive(o.seed, &[FLUX_INIT]).next_u64());
    let (mut model, first_stage) = match &o.flux_from {
        Some(path) => {
            let options = LoadOptions {
                axes_dim: Some(o.transformer.axes_dim.clone()),
                trainable_base: true,
                ..Default::default()
            };
            (
                Flux::<B>::from_checkpoint(
                    &FluxCheckpoint::open(path)?,
                    &o.transformer,
                    &options,
                    device,
                )?,
                1,
            )
        }
        None => (Flux::<B>::init(&o.transformer, device)?, 0),
    };
    let loss = LossSettings {
        loss_type: LossType::L2,
        huber_c: 0.1,
        prediction: ModelPredictionType::Raw,
        weighting: fluxlora_flux::schedule::LossWeighting::None,
        prior_loss_weight: 1.0,
    };
    let sampler = SigmaSampler::Shift {
        shift: bfl_shift(o.size),
        sigmoid_scale: 1.0,
    };
    let mut settings = StepSettings {
        sampler: sampler.clone(),
        loss,
        guidance: 1.0,
        checkpointing: Default::default(),
    };
    let n = data.captions.len();
    let total = o.flux_steps * o.flux_stages;
    let mut losses = Vec::with_capacity(total);
    for stage in first_stage..o.flux_stages {
        let mut optim: OptimizerAdaptor<AdamW, Flux<B>, B> = adamw()?.into();
        let peak = o.flux_lr * 0.5f64.powi(stage.min(31) as i32);
        for i in 0..o.flux_steps {
            let step = stage * o.flux_steps + i;
            let mut rng = SplitMix64::derive(o.seed, &[FLUX_BATCHES, step as u64]);
            let picks: Vec<usize> = (0..o.flux_batch)
                .map(|_| rng.below(n as u64) as usize)
                .collect();
            settings.guidance = (1.0 + 4.0 * rng.next_f64()) as f32;
            let batch = flux_batch::<B>(data, &picks, o, device);
            let draw = draw_noise(
                o.seed,
                step as u64,
                0,
                &sampler,
                picks.len(),
                data.tokens,
                data.channels,
            );
            let out = training_step(&model, &batch, &draw, &settings)?;
            if !out.loss.is_finite() {
                return Err(TinyWorldError::NonFiniteLoss {
                    step: step as u64,
                    value: out.loss,
                    lr: peak,
                });
            }
            losses.push(out.loss);
            let warm = ((i + 1) as f64 / 100.0).min(1.0);
            let lr = peak * warm * (1.0 - 0.9 * i as f64 / o.flux_steps.max(1) as f64);
            model = optim.step(lr, model, out.grads);
            if i % 100 == 0 || i + 1 == o.flux_steps {
                let recent = mean(&losses[losses.len().saturating_sub(100)..]);
                progress(&format!(
                    "transformer step {step}/{total}: loss {recent:.4} (mean of the last 100)"
                ));
            }
        }
    }
    report.flux_loss = (
        mean(&losses[..losses.len().min(100)]),
        mean(&losses[losses.len().saturating_sub(100)..]),
    );
    report.flux_seconds = start.elapsed().as_secs_f64();
    Ok(model.valid())
}
