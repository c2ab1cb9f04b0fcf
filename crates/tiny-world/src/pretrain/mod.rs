//! Building the tiny world: pretrain a small Flux autoencoder and transformer on the procedural
//! domain ([`crate::domain`]), then write them, the text encoders and the concept
//! dataset as an ordinary model folder and dataset that every other part of fluxlora reads.
//!
//! 1. **Autoencoder** ([`Autoencoder::init`], all parameters trainable, on small images), in two
//!    stages: `ae_steps` on random colours, then `ae_refine_steps` with a fresh AdamW at half the
//!    learning rate where the random colours are saturated (near the RGB cube's corners,
//!    where the concept's magenta and yellow lie and where a small autoencoder learns last).
//!    Reconstruction loss
//!    `mean((decode(encode(x)) − x)²) + 1e-4·mean(z²)` on random-colour scenes (solid or
//!    striped, the concept's colours included) and base-domain scenes, AdamW. The latent scale and
//!    shift are then measured on base-domain images (`shift` = mean, `scale` = 1/std), as Flux's
//!    were.
//! 2. **Text encoders**: copied (CLIP-L and T5 shaped, random, from `fixtures/tiny-base`). They
//!    stay frozen; the transformer learns to read their features.
//! 3. **Transformer** ([`Flux::init`], all parameters trainable): the same flow-matching step as
//!    LoRA training ([`training_step`]) on latents of base-domain scenes and their captions,
//!    guidance values drawn in [1, 5] so that any `--g` works, AdamW, in `flux_stages` stages
//!    (warm restarts at half the previous peak learning rate). `flux_from` starts the second
//!    stage from a first-stage file, as `ae_from` does for the autoencoder.
//! 4. **Files** (BFL keys, the layout of `flux1-dev.safetensors` / `ae.safetensors`):
//!    `base/transformer/flux1-tiny.safetensors`, `base/vae/ae.safetensors` (each with a
//!    `config.json` holding what the weights do not record), `base/text_encoder*/`,
//!    `base/tokenizer*/`; `dataset/` (the concept images and captions) and `prompts.txt` (held-out
//!    sample prompts); `base/preview.png` (base samples of a few captions).
//!
//! Everything is drawn from the seed (scenes, noise, initial weights via `B::seed`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use fluxlora_data::SplitMix64;
use fluxlora_flux::autoencoder::AutoencoderConfig;
use fluxlora_flux::export::{autoencoder_tensors, transformer_tensors};
use fluxlora_flux::{Autoencoder, Flux, FluxAutodiffBackend, FluxBackend, FluxConfig};
use fluxlora_io::{write_safetensors, HostTensor, TensorRef};
use fluxlora_optim::{AdamW, AdamWConfig};
use fluxlora_render::{save_png, SampleGrid};
use fluxlora_train::orchestration::base::{load_autoencoder, BaseModel};
use fluxlora_train::orchestration::encoders::FluxTextEncoder;
use fluxlora_train::sampling::prompts::{parse_prompt_line, SampleDefaults};
use fluxlora_train::sampling::sample::{generate, PromptText};
use image::RgbImage;

use crate::domain::{image_to_chw, World, CONCEPT_BACKGROUNDS, HELD_OUT_BACKGROUNDS};
use crate::error::TinyWorldError;

mod autoencoder;
mod transformer;

use autoencoder::pretrain_autoencoder;
use transformer::{encode_flux_data, pretrain_transformer};

/// Stream tags for the seeded draws.
const AE_SCENES: u64 = 0xae;
const FLUX_SCENES: u64 = 0xf1;
const FLUX_BATCHES: u64 = 0xba;
const CONCEPT: u64 = 0xc0;
const FLUX_INIT: u64 = 0x1f;

/// How to build the tiny world.
#[derive(Debug, Clone)]
pub struct PretrainOptions {
    /// Seed of everything.
    pub seed: u64,
    /// Image side (pixels).
    pub size: u32,
    /// Autoencoder architecture (scale/shift are measured, these are ignored).
    pub autoencoder: AutoencoderConfig,
    /// Side of the autoencoder's training images (smaller than `size` is cheaper; the networks are
    /// convolutional, so what they learn carries over).
    pub ae_size: u32,
    /// Autoencoder steps (first stage), batch and learning rate.
    pub ae_steps: usize,
    /// Autoencoder steps of the second stage (saturated colours).
    pub ae_refine_steps: usize,
    /// Start the second stage from this first-stage autoencoder (an `ae.safetensors` written by
    /// an earlier build with the same options) instead of training the first stage again.
    pub ae_from: Option<PathBuf>,
    /// Skip autoencoder training altogether: use this finished `vae/` folder (an `ae.safetensors`
    /// and the `config.json` with its scale and shift, as a build writes them).
    pub ae_trained: Option<PathBuf>,
    /// Autoencoder images per step.
    pub ae_batch: usize,
    /// Autoencoder peak learning rate.
    pub ae_lr: f64,
    /// Transformer architecture (`in_channels` must be 4 × the latent channels).
    pub transformer: FluxConfig,
    /// Transformer steps per stage, batch and peak learning rate.
    pub flux_steps: usize,
    /// Transformer images per step.
    pub flux_batch: usize,
    /// Transformer peak learning rate of the first stage.
    pub flux_lr: f64,
    /// Transformer stages of `flux_steps` each. Every stage after the first is a warm restart: a
    /// fresh AdamW and the schedule again (warm-up, linear decay to 10 %) at half the previous
    /// peak; its batches and noise continue the step count, so no draw repeats.
    pub flux_stages: usize,
    /// Start from this transformer (the `flux1-tiny.safetensors` a build with the same options
    /// and `flux_stages = 1` writes) and train only the later stages.
    pub flux_from: Option<PathBuf>,
    /// Distinct base-domain images the transformer trains on.
    pub flux_images: usize,
    /// T5 tokens per caption.
    pub t5_max_length: usize,
    /// Concept images in the dataset.
    pub concept_images: usize,
    /// A model folder whose `text_encoder*/` and `tokenizer*/` are copied.
    pub text_encoders: PathBuf,
    /// Output folder (gets `base/`, `dataset/`, `prompts.txt`).
    pub out: PathBuf,
}

impl PretrainOptions {
    /// The committed tiny world: 64² images, a 3-level autoencoder (×4, 8 latent channels), a
    /// 96-wide transformer (3 heads) with 2 double and 2 single blocks trained in one stage of 3000
    /// steps, text encoders from `text_encoders`.
    pub fn tiny_world(text_encoders: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            seed: 20261129,
            size: 64,
            autoencoder: AutoencoderConfig {
                ch: 12,
                ch_mult: vec![1, 2, 2],
                num_res_blocks: 1,
                z_channels: 8,
                norm_groups: 4,
                scale_factor: 1.0,
                shift_factor: 0.0,
                ..AutoencoderConfig::flux()
            },
            ae_size: 32,
            ae_steps: 700,
            ae_refine_steps: 600,
            ae_from: None,
            ae_trained: None,
            ae_batch: 8,
            ae_lr: 2e-3,
            transformer: FluxConfig {
                in_channels: 32,
                out_channels: 32,
                vec_in_dim: 32,
                context_in_dim: 32,
                hidden_size: 96,
                mlp_hidden_dim: 384,
                num_heads: 3,
                depth: 2,
                depth_single_blocks: 2,
                axes_dim: vec![8, 12, 12],
                theta: 10_000.0,
                qkv_bias: true,
                guidance_embed: true,
            },
            flux_steps: 3000,
            flux_batch: 16,
            flux_lr: 1e-3,
            flux_stages: 1,
            flux_from: None,
            flux_images: 2000,
            t5_max_length: 32,
            concept_images: 20,
            text_encoders: text_encoders.into(),
            out: out.into(),
        }
    }

    /// Sets the transformer's width: heads of 32 (what the RoPE axes 8 + 12 + 12 cover), an MLP
    /// 4× as wide. A width that is not a positive multiple of 32 is refused.
    pub fn with_hidden(mut self, hidden: usize) -> Result<Self, TinyWorldError> {
        let head: usize = self.transformer.axes_dim.iter().sum();
        if hidden == 0 || !hidden.is_multiple_of(head) {
            let (lo, hi) = (hidden / head * head, (hidden / head + 1) * head);
            let fix = if lo == 0 {
                format!("{hi}")
            } else {
                format!("{lo} or {hi}")
            };
            return Err(TinyWorldError::Invalid {
                key: "hidden".into(),
                message: format!(
                    "{hidden} is not a positive multiple of {head}: each attention head is {head} \
                     wide (the RoPE axes {:?}); give e.g. {fix}",
                    self.transformer.axes_dim
                ),
            });
        }
        self.transformer.hidden_size = hidden;
        self.transformer.mlp_hidden_dim = 4 * hidden;
        self.transformer.num_heads = hidden / head;
        Ok(self)
    }
}

/// What a build did.
#[derive(Debug, Clone, Default)]
pub struct PretrainReport {
    /// Mean autoencoder loss over the first and the last 50 steps.
    pub ae_loss: (f32, f32),
    /// Measured latent scale and shift.
    pub scale_shift: (f64, f64),
    /// Mean transformer loss over the first and the last 100 steps.
    pub flux_loss: (f32, f32),
    /// Seconds spent on the autoencoder.
    pub ae_seconds: f64,
    /// Seconds spent on the transformer.
    pub flux_seconds: f64,
    /// Every file written.
    pub files: Vec<PathBuf>,
}

pub(crate) fn images_tensor<B: Backend>(images: &[RgbImage], device: &B::Device) -> Tensor<B, 4> {
    let (w, h) = images[0].dimensions();
    let data: Vec<f32> = images.iter().flat_map(image_to_chw).collect();
    Tensor::from_data(
        TensorData::new(data, [images.len(), 3, h as usize, w as usize]),
        device,
    )
}

pub(crate) fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len().max(1) as f32
}

/// The pretraining optimizer: AdamW without weight decay, ε = 1e-5 (the value the committed
/// world was pretrained with).
pub(crate) fn adamw() -> Result<AdamW, TinyWorldError> {
    Ok(AdamWConfig {
        eps: 1e-5,
        weight_decay: 0.0,
        ..Default::default()
    }
    .init()?)
}

pub(crate) fn write_tensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
) -> Result<(), TinyWorldError> {
    let refs: Vec<(&str, TensorRef<'_>)> = tensors
        .iter()
        .map(|(k, t)| (k.as_str(), TensorRef::f32(t)))
        .collect();
    Ok(write_safetensors(path, &refs, &BTreeMap::new())?)
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), TinyWorldError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    Ok(fluxlora_io::atomic_write(path, |w| {
        w.write_all(text.as_bytes())
    })?)
}

pub(crate) fn copy_dir(from: &Path, to: &Path) -> Result<Vec<PathBuf>, TinyWorldError> {
    std::fs::create_dir_all(to).map_err(|e| TinyWorldError::io(to, e))?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(from).map_err(|e| TinyWorldError::io(from, e))? {
        let entry = entry.map_err(|e| TinyWorldError::io(from, e))?;
        if entry.path().is_file() {
            let dest = to.join(entry.file_name());
            std::fs::copy(entry.path(), &dest).map_err(|e| TinyWorldError::io(&dest, e))?;
            out.push(dest);
        }
    }
    Ok(out)
}

/// Writes `flux` as `dir/file_name` (BFL keys) with the `config.json` holding what the weights
/// do not record (the RoPE axes); returns both paths.
pub(crate) fn write_transformer<B: Backend>(
    dir: &Path,
    file_name: &str,
    world: &str,
    flux: &Flux<B>,
) -> Result<[PathBuf; 2], TinyWorldError> {
    std::fs::create_dir_all(dir).map_err(|e| TinyWorldError::io(dir, e))?;
    let (file, config) = (dir.join(file_name), dir.join("config.json"));
    write_tensors(&file, &transformer_tensors(flux)?)?;
    let t = &flux.config;
    write_json(
        &config,
        &serde_json::json!({
            "_comment": format!(
                "{world}: BFL-keyed {file_name}; RoPE axes are not in the weights"
            ),
            "axes_dims_rope": t.axes_dim,
            "guidance_embeds": t.guidance_embed,
            "num_layers": t.depth,
            "num_single_layers": t.depth_single_blocks,
            "hidden_size": t.hidden_size,
        }),
    )?;
    Ok([file, config])
}

/// Writes the concept dataset (`dataset/`, replacing it) and the held-out prompts
/// (`prompts.txt`) into `o.out`; part of [`build_tiny_world`], and on its own (`pretrain_tiny
/// --dataset-only`) cheap: no model is involved.
pub fn write_dataset(
    o: &PretrainOptions,
    report: &mut PretrainReport,
) -> Result<(), TinyWorldError> {
    let world = World::new(o.size);
    let dir = o.out.join("dataset");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| TinyWorldError::io(&dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| TinyWorldError::io(&dir, e))?;
    let mut rng = SplitMix64::derive(o.seed, &[CONCEPT]);
    for i in 0..o.concept_images {
        let bg = CONCEPT_BACKGROUNDS[i % CONCEPT_BACKGROUNDS.len()];
        let scene = world.concept_scene(&mut rng, bg);
        let png = dir.join(format!("sks_{i:02}.png"));
        save_png(&png, &world.render(&scene), &[])?;
        let txt = dir.join(format!("sks_{i:02}.txt"));
        let caption = format!("{}\n", scene.caption);
        fluxlora_io::atomic_write(&txt, |w| w.write_all(caption.as_bytes()))?;
        report.files.extend([png, txt]);
    }
    let mut prompts = String::from(
        "# Held-out sample prompts (backgrounds the dataset never shows), written by \
         `pretrain_tiny`.\n\
         # kohya flags: --w --h --s (steps) --d (seed) --g (guidance)\n",
    );
    for (j, bg) in HELD_OUT_BACKGROUNDS.iter().enumerate() {
        prompts.push_str(&format!(
            "a photo of a sks disc on a {bg} background --w {0} --h {0} --s 20 --d {1} --g 3.5\n",
            o.size,
            j + 1
        ));
    }
    let path = o.out.join("prompts.txt");
    fluxlora_io::atomic_write(&path, |w| w.write_all(prompts.as_bytes()))?;
    report.files.push(path);
    Ok(())
}

/// Samples a few base-domain captions with the finished base into `base/preview.png`.
fn write_preview<B: FluxBackend>(
    o: &PretrainOptions,
    flux: &Flux<B>,
    ae: &Autoencoder<B>,
    text: &FluxTextEncoder<B>,
    report: &mut PretrainReport,
    device: &B::Device,
) -> Result<(), TinyWorldError> {
    let captions = [
        "a photo of a red disc on a blue background",
        "a photo of a white square on a green background",
        "a photo of a black triangle on a orange background",
        "a photo of a teal ring on a purple background",
        "a photo of a sks disc on a navy background",
    ];
    let mut grid = SampleGrid::new("tiny-world base", (o.flux_steps * o.flux_stages) as u64);
    for (i, caption) in captions.iter().enumerate() {
        let line = format!(
            "{caption} --w {0} --h {0} --s 20 --d {1} --g 3.5",
            o.size,
            i + 1
        );
        let prompt = parse_prompt_line(&line, &SampleDefaults::default())?;
        let emb = PromptText::encode(text, &prompt)?;
        grid.push(
            generate(flux, ae, &emb, &prompt, true, device)?,
            prompt.prompt.clone(),
            prompt.seed,
        );
    }
    let path = o.out.join("base").join("preview.png");
    save_png(&path, &grid.render(), &[])?;
    report.files.push(path);
    Ok(())
}

/// Builds the tiny world into `o.out` (see the module docs). `progress` gets a line now and then.
pub fn build_tiny_world<B: FluxAutodiffBackend>(
    o: &PretrainOptions,
    progress: &mut dyn FnMut(&str),
    device: &B::Device,
) -> Result<PretrainReport, TinyWorldError> {
    if o.transformer.in_channels != 4 * o.autoencoder.z_channels {
        return Err(TinyWorldError::Invalid {
            key: "transformer.in_channels".into(),
            message: format!(
                "{} but the autoencoder has {} latent channels (need 4 × that)",
                o.transformer.in_channels, o.autoencoder.z_channels
            ),
        });
    }
    if let (Some(from), Some(trained)) = (&o.ae_from, &o.ae_trained) {
        return Err(TinyWorldError::Invalid {
            key: "ae_from".into(),
            message: format!(
                "{} was given together with ae_trained {}: ae_trained skips autoencoder training, \
                 so ae_from would be ignored; give only one of them",
                from.display(),
                trained.display()
            ),
        });
    }
    if o.flux_from.is_some() && o.flux_stages < 2 {
        return Err(TinyWorldError::Invalid {
            key: "flux_stages".into(),
            message: format!(
                "{} with flux_from: the file holds the first stage's weights, so nothing would be \
                 trained; set flux_stages to 2 or more, or leave flux_from out",
                o.flux_stages
            ),
        });
    }
    B::seed(device, o.seed);
    let world = World::new(o.size);
    let mut report = PretrainReport::default();
    let base = o.out.join("base");
    for sub in ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"] {
        report
            .files
            .extend(copy_dir(&o.text_encoders.join(sub), &base.join(sub))?);
    }

    let ae = match &o.ae_trained {
        Some(dir) => {
            let ae = load_autoencoder::<B::InnerBackend>(dir, None, device)?;
            report.scale_shift = (ae.config().scale_factor, ae.config().shift_factor);
            ae
        }
        None => pretrain_autoencoder::<B>(o, &world, &mut report, progress, device)?,
    };
    let vae = base.join("vae");
    std::fs::create_dir_all(&vae).map_err(|e| TinyWorldError::io(&vae, e))?;
    write_tensors(&vae.join("ae.safetensors"), &autoencoder_tensors(&ae)?)?;
    let c = ae.config();
    write_json(
        &vae.join("config.json"),
        &serde_json::json!({
            "_comment": "fluxlora tiny world: BFL-keyed ae.safetensors; what the weights do not \
                         record",
            "norm_num_groups": c.norm_groups,
            "scaling_factor": c.scale_factor,
            "shift_factor": c.shift_factor,
            "latent_channels": c.z_channels,
            "block_out_channels": c.ch_mult.iter().map(|m| m * c.ch).collect::<Vec<_>>(),
        }),
    )?;
    report
        .files
        .extend([vae.join("ae.safetensors"), vae.join("config.json")]);

    let parts = BaseModel {
        transformer: base.clone(),
        ae: vae.clone(),
        clip: base.join("text_encoder"),
        t5: base.join("text_encoder_2"),
        clip_tokenizer: base.join("tokenizer").join("tokenizer.json"),
        t5_tokenizer: base.join("tokenizer_2").join("tokenizer.json"),
    };
    let text = FluxTextEncoder::<B::InnerBackend>::load(&parts, o.t5_max_length, false, device)?;
    let data = encode_flux_data(o, &world, &ae, &text, progress, device)?;
    let flux = pretrain_transformer::<B>(o, &data, &mut report, progress, device)?;
    report.files.extend(write_transformer(
        &base.join("transformer"),
        "flux1-tiny.safetensors",
        "fluxlora tiny world",
        &flux,
    )?);
    write_dataset(o, &mut report)?;
    write_preview(o, &flux, &ae, &text, &mut report, device)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};

    #[test]
    fn with_hidden_takes_multiples_of_the_head_width_and_names_the_fix_otherwise() {
        let o = PretrainOptions::tiny_world("te", "out")
            .with_hidden(128)
            .unwrap();
        assert_eq!(
            (
                o.transformer.hidden_size,
                o.transformer.num_heads,
                o.transformer.mlp_hidden_dim
            ),
            (128, 4, 512)
        );
        for (bad, fix) in [(80, "64 or 96"), (16, "e.g. 32"), (0, "e.g. 32")] {
            let e = PretrainOptions::tiny_world("te", "out")
                .with_hidden(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains("`hidden`") && e.contains(fix), "{e}");
        }
    }

    #[test]
    fn contradictory_starting_points_are_refused_before_any_work() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = PretrainOptions::tiny_world(tmp.path().join("te"), tmp.path().join("out"));
        (o.ae_from, o.ae_trained) = (Some("stage1.safetensors".into()), Some("vae".into()));
        let e = build_tiny_world::<Autodiff<NdArray>>(&o, &mut |_: &str| {}, &Default::default())
            .unwrap_err();
        assert!(
            e.to_string().contains("`ae_from`") && e.to_string().contains("only one"),
            "{e}"
        );
        (o.ae_from, o.flux_from) = (None, Some("flux1-tiny.safetensors".into()));
        let e = build_tiny_world::<Autodiff<NdArray>>(&o, &mut |_: &str| {}, &Default::default())
            .unwrap_err();
        assert!(
            e.to_string().contains("`flux_stages`") && e.to_string().contains("2 or more"),
            "{e}"
        );
        assert!(!tmp.path().join("out").exists(), "nothing is written");
    }
}
