//! Drawing a sample image from the transformer during training.
//!
//! [`generate`] follows BFL's `sampling.py`: seeded noise in latent layout `[1, z, H/f, W/f]`
//! (f = the autoencoder's downscale, 8 for Flux) → 2×2 packing ([`latents::pack`]) → the Euler
//! sampler ([`sampler::denoise`]) over [`get_schedule`] (resolution-shifted for dev, linear for
//! schnell) with the embedded guidance of the prompt → unpacking → [`Autoencoder::decode`] →
//! pixels `127.5·(clamp(x, −1, 1) + 1)`, rounded.
//!
//! The noise comes from a host SplitMix64 stream of the prompt's seed (Box–Muller normals), so
//! a seed gives the same starting noise on every backend and device. The text side arrives as a
//! cached [`TextEmbedding`] (T5 tokens + pooled CLIP), so sampling needs no text encoder in
//! memory. The prompt's embedded guidance (`--g`) goes to guidance-distilled models; with a CFG
//! scale (`--l`) other than 1, true classifier-free guidance runs against the negative prompt
//! (`--n`, empty when not given) as kohya's and diffusers' `true_cfg_scale` do, two forward
//! passes per step ([`fluxlora_flux::sampler::denoise_cfg`]). A Kontext prompt's control image
//! (`--ci`) is encoded and its clean tokens appended at every step, under both prompts
//! ([`crate::sampling::control`]). Run it on the inference module
//! (`model.valid()`), never on the autodiff one: forward passes on an autodiff model without
//! `backward()` leak the
//! graph.

use burn::tensor::{Tensor, TensorData};
use fluxlora_data::{SplitMix64, TextEmbedding, TextEncoder};
use fluxlora_flux::sampler::{denoise, denoise_cfg, Conditioning};
use fluxlora_flux::schedule::{get_schedule, BASE_SHIFT, MAX_SHIFT};
use fluxlora_flux::FluxBackend;
use fluxlora_flux::{latents, Autoencoder, Flux};
use fluxlora_io::HostTensor;
use image::RgbImage;

use crate::error::TrainError;
use crate::sampling::control::{control_image, control_tokens};
use crate::sampling::prompts::SamplePrompt;

/// Stream purpose tag of the sampling noise (keeps it apart from the training draws).
const PURPOSE_SAMPLE_NOISE: u64 = 0x5341_4d50;

/// Standard normal draws (Box–Muller, cosine branch) from the SplitMix64 stream of `seed`.
pub fn seeded_normals(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = SplitMix64::derive(seed, &[PURPOSE_SAMPLE_NOISE]);
    (0..n)
        .map(|_| {
            let u1 = 1.0 - rng.next_f64(); // (0, 1]: ln stays finite
            let u2 = rng.next_f64();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// The text a sample prompt needs: its own embedding and, for true CFG (`--l` ≠ 1), the
/// negative prompt's (the empty prompt's when it has no `--n`).
#[derive(Debug, Clone)]
pub struct PromptText {
    /// The prompt's embedding.
    pub positive: TextEmbedding,
    /// The negative prompt's, present when the prompt asks for true CFG.
    pub negative: Option<TextEmbedding>,
}

impl PromptText {
    /// Encodes what `prompt` needs with `encoder`.
    pub fn encode(encoder: &dyn TextEncoder, prompt: &SamplePrompt) -> Result<Self, TrainError> {
        let negative = if prompt.cfg_scale != 1.0 {
            Some(encoder.encode(&prompt.negative)?)
        } else {
            None
        };
        Ok(Self {
            positive: encoder.encode(&prompt.prompt)?,
            negative,
        })
    }
}

impl From<TextEmbedding> for PromptText {
    /// A prompt without true CFG.
    fn from(positive: TextEmbedding) -> Self {
        Self {
            positive,
            negative: None,
        }
    }
}

fn shape_err(what: &str, message: String) -> TrainError {
    TrainError::Shape {
        what: what.into(),
        message,
    }
}

/// The `[1, d]`-shaped view of a rank-1 `[d]` (or `[1, d]`) host tensor, or of a rank-2
/// `[L, d]` (or `[1, L, d]`) one for `rank = 2`.
fn squeeze_batch(t: &HostTensor, rank: usize) -> Option<Vec<usize>> {
    match t.shape.as_slice() {
        s if s.len() == rank => Some(s.to_vec()),
        [1, rest @ ..] if rest.len() == rank => Some(rest.to_vec()),
        _ => None,
    }
}

/// Maps decoded values in about [−1, 1] to bytes: `round(127.5·(clamp(x, −1, 1) + 1))`; NaN
/// → 0.
pub fn to_u8(x: f32) -> u8 {
    if x.is_nan() {
        return 0;
    }
    (127.5 * (x.clamp(-1.0, 1.0) + 1.0)).round() as u8
}

/// Checks an embedding's widths against the model; returns its T5 token count.
fn check_embedding(
    text: &TextEmbedding,
    cfg: &fluxlora_flux::FluxConfig,
) -> Result<usize, TrainError> {
    let t5_shape = squeeze_batch(&text.t5, 2)
        .filter(|s| s[1] == cfg.context_in_dim && s[0] > 0)
        .ok_or_else(|| {
            shape_err(
                "text embedding t5",
                format!(
                    "shape {:?}, the model needs [tokens, {}]; re-encode the sample prompts with \
                     this model's T5",
                    text.t5.shape, cfg.context_in_dim
                ),
            )
        })?;
    squeeze_batch(&text.clip_pooled, 1)
        .filter(|s| s[0] == cfg.vec_in_dim)
        .ok_or_else(|| {
            shape_err(
                "text embedding clip_pooled",
                format!(
                    "shape {:?}, the model needs [{}]; re-encode the sample prompts with this \
                     model's CLIP",
                    text.clip_pooled.shape, cfg.vec_in_dim
                ),
            )
        })?;
    Ok(t5_shape[0])
}

/// Draws the sample `prompt` describes (size, steps, seed, guidance, CFG scale) from `flux` and
/// `ae` with the text conditioning `text` (each embedding T5 `[L, context_in_dim]`, pooled CLIP
/// `[vec_in_dim]`; a leading batch dimension of 1 is accepted). A CFG scale other than 1 needs
/// `text.negative` ([`PromptText::encode`] provides it). `shift`: the resolution-dependent
/// schedule shift (true for dev, false for schnell). Returns an image of `prompt.width ×
/// prompt.height`.
///
/// Errors when the size is not a positive multiple of twice the autoencoder's downscale (16
/// for Flux), when the latent width of `ae` does not fit `flux` (`in_channels = 4·z_channels`),
/// or when the embedding widths do not match the model.
pub fn generate<B: FluxBackend>(
    flux: &Flux<B>,
    ae: &Autoencoder<B>,
    text: &PromptText,
    prompt: &SamplePrompt,
    shift: bool,
    device: &B::Device,
) -> Result<RgbImage, TrainError> {
    let (width, height) = (prompt.width as usize, prompt.height as usize);
    let down = ae.config().downscale();
    let unit = 2 * down;
    if width == 0 || height == 0 || width % unit != 0 || height % unit != 0 {
        return Err(shape_err(
            "sample size",
            format!(
                "{width}×{height} px: width and height must be positive multiples of {unit} (2 × \
                 the autoencoder's downscale {down}); set --w/--h to a multiple of {unit}"
            ),
        ));
    }
    let z = ae.config().z_channels;
    let cfg = &flux.config;
    if cfg.in_channels != 4 * z {
        return Err(shape_err(
            "sample models",
            format!(
                "the autoencoder has {z} latent channels, so packed tokens are {} wide, but the \
                 transformer takes {}; load the autoencoder that belongs to this model",
                4 * z,
                cfg.in_channels
            ),
        ));
    }
    let (lh, lw) = (height / down, width / down);
    let (gh, gw) = (lh / 2, lw / 2);
    let noise = seeded_normals(prompt.seed, z * lh * lw);
    let noise: Tensor<B, 4> = Tensor::from_data(TensorData::new(noise, [1, z, lh, lw]), device);
    let noise = latents::pack(noise)?;
    let control = match &prompt.control {
        Some(path) => Some(control_tokens(
            ae,
            &control_image(path, prompt.width, prompt.height)?,
            device,
        )?),
        None => None,
    };
    let condition = |text: &TextEmbedding| -> Result<Conditioning<B>, TrainError> {
        let txt_len = check_embedding(text, cfg)?;
        Ok(Conditioning {
            txt: Tensor::from_data(
                TensorData::new(text.t5.data.clone(), [1, txt_len, cfg.context_in_dim]),
                device,
            ),
            txt_ids: latents::txt_ids(1, txt_len, device),
            img_ids: latents::img_ids(1, gh, gw, device),
            y: Tensor::from_data(
                TensorData::new(text.clip_pooled.data.clone(), [1, cfg.vec_in_dim]),
                device,
            ),
            guidance: cfg.guidance_embed.then_some(prompt.guidance),
            txt_mask: match &text.t5_mask {
                Some(m) if m.numel() == txt_len => Some(Tensor::from_data(
                    TensorData::new(m.data.clone(), [1, txt_len]),
                    device,
                )),
                Some(m) => {
                    return Err(shape_err(
                        "text embedding t5_mask",
                        format!("{:?} values for {txt_len} T5 tokens", m.shape),
                    ))
                }
                None => None,
            },
            img_cond_seq: control.clone(),
        })
    };
    let cond = condition(&text.positive)?;
    let timesteps = get_schedule(
        prompt.steps.max(1) as usize,
        gh * gw,
        BASE_SHIFT,
        MAX_SHIFT,
        shift,
    );
    let tokens = if prompt.cfg_scale != 1.0 {
        let negative = text.negative.as_ref().ok_or_else(|| {
            shape_err(
                "sample prompt",
                format!(
                    "`{}` asks for CFG scale {} but no negative prompt was encoded",
                    prompt.prompt, prompt.cfg_scale
                ),
            )
        })?;
        denoise_cfg(
            flux,
            noise,
            &cond,
            &condition(negative)?,
            prompt.cfg_scale,
            &timesteps,
        )?
    } else {
        denoise(flux, noise, &cond, &timesteps)?
    };
    let decoded = ae.decode(latents::unpack(tokens, gh, gw)?)?;
    let [_, c, ih, iw] = decoded.dims();
    if c != 3 || ih != height || iw != width {
        return Err(shape_err(
            "decoded sample",
            format!("the autoencoder returned [{c}, {ih}, {iw}], expected [3, {height}, {width}]"),
        ));
    }
    let values = decoded
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| {
            shape_err(
                "decoded sample",
                format!("cannot read the pixels back: {e:?}"),
            )
        })?;
    let plane = height * width;
    let mut raw = Vec::with_capacity(plane * 3);
    for i in 0..plane {
        for ch in 0..3 {
            raw.push(to_u8(values[ch * plane + i]));
        }
    }
    RgbImage::from_raw(width as u32, height as u32, raw).ok_or_else(|| {
        shape_err(
            "decoded sample",
            "pixel buffer does not match the image size".into(),
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::backend::NdArray;
    use fluxlora_flux::{AutoencoderLoadOptions, FluxConfig};
    use std::path::PathBuf;

    type B = NdArray;

    /// hidden 32, 2 heads, 1 + 1 blocks, 16-wide tokens (the committed test autoencoder has
    /// z_channels 4), 8-wide text; shared with the inference tests.
    pub(crate) fn tiny_flux(dev: &burn::tensor::Device<B>) -> Flux<B> {
        let cfg = FluxConfig {
            in_channels: 16,
            out_channels: 16,
            vec_in_dim: 8,
            context_in_dim: 8,
            hidden_size: 32,
            mlp_hidden_dim: 64,
            num_heads: 2,
            depth: 1,
            depth_single_blocks: 1,
            axes_dim: vec![4, 6, 6],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        };
        Flux::init(&cfg, dev).unwrap()
    }

    fn tiny_ae(dev: &burn::tensor::Device<B>) -> Autoencoder<B> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/parity/ae_decode_bfl/model.safetensors");
        Autoencoder::load(
            path,
            &AutoencoderLoadOptions {
                norm_groups: 4,
                ..Default::default()
            },
            dev,
        )
        .unwrap()
    }

    fn text() -> PromptText {
        embedding().into()
    }

    fn embedding() -> TextEmbedding {
        let t5: Vec<f32> = (0..5 * 8)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
            .collect();
        let clip: Vec<f32> = (0..8).map(|i| (i as f32 - 3.5) / 4.0).collect();
        TextEmbedding {
            t5: HostTensor::new(vec![5, 8], t5).unwrap(),
            t5_mask: None,
            clip_pooled: HostTensor::new(vec![8], clip).unwrap(),
        }
    }

    fn prompt(width: u32, height: u32, seed: u64) -> SamplePrompt {
        SamplePrompt {
            prompt: "a test".into(),
            negative: String::new(),
            width,
            height,
            steps: 3,
            seed,
            guidance: 3.5,
            cfg_scale: 1.0,
            sampler: None,
            loras: Vec::new(),
            control: None,
            line: 1,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn same_seed_same_pixels_other_seed_other_pixels() {
        let dev = Default::default();
        let (flux, ae) = (tiny_flux(&dev), tiny_ae(&dev));
        assert_eq!(
            ae.config().z_channels,
            4,
            "the fixture's latent width changed; update tiny_flux"
        );
        let a = generate(&flux, &ae, &text(), &prompt(48, 32, 7), true, &dev).unwrap();
        assert_eq!(a.dimensions(), (48, 32));
        let b = generate(&flux, &ae, &text(), &prompt(48, 32, 7), true, &dev).unwrap();
        assert_eq!(a, b);
        let c = generate(&flux, &ae, &text(), &prompt(48, 32, 8), true, &dev).unwrap();
        let differing = a
            .as_raw()
            .iter()
            .zip(c.as_raw())
            .filter(|(x, y)| x != y)
            .count();
        assert!(
            differing > a.as_raw().len() / 4,
            "only {differing} of {} bytes differ",
            a.as_raw().len()
        );
        // Schnell-style linear schedule changes the result too.
        let d = generate(&flux, &ae, &text(), &prompt(48, 32, 7), false, &dev).unwrap();
        assert_ne!(a, d);
    }

    #[test]
    fn bad_sizes_and_widths_are_errors() {
        let dev = Default::default();
        let (flux, ae) = (tiny_flux(&dev), tiny_ae(&dev));
        // Downscale 2 → sizes must be multiples of 4.
        let e = generate(&flux, &ae, &text(), &prompt(30, 32, 1), true, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("30×32") && e.contains("multiple of 4"), "{e}");
        let mut t = embedding();
        t.t5 = HostTensor::new(vec![5, 4], vec![0.0; 20]).unwrap();
        let e = generate(&flux, &ae, &t.into(), &prompt(32, 32, 1), true, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("t5") && e.contains("[5, 4]"), "{e}");
        let mut t = embedding();
        t.clip_pooled = HostTensor::new(vec![1, 8], vec![0.5; 8]).unwrap();
        assert!(
            generate(&flux, &ae, &t.into(), &prompt(32, 32, 1), true, &dev).is_ok(),
            "a batch dim of 1 is accepted"
        );
    }

    #[test]
    fn true_cfg_uses_the_negative_prompt_and_needs_one() {
        let dev = Default::default();
        let (flux, ae) = (tiny_flux(&dev), tiny_ae(&dev));
        let plain = generate(&flux, &ae, &text(), &prompt(32, 32, 3), true, &dev).unwrap();
        let guided = SamplePrompt {
            cfg_scale: 3.0,
            ..prompt(32, 32, 3)
        };
        let e = generate(&flux, &ae, &text(), &guided, true, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CFG scale 3") && e.contains("negative"), "{e}");
        // The prompt as its own negative: v_neg + 3·(v_pos − v_neg) is v_pos exactly.
        let same = PromptText {
            positive: embedding(),
            negative: Some(embedding()),
        };
        assert_eq!(
            generate(&flux, &ae, &same, &guided, true, &dev).unwrap(),
            plain
        );
        let mut other = embedding();
        other.t5.data.iter_mut().for_each(|v| *v = -*v);
        let with_negative = PromptText {
            positive: embedding(),
            negative: Some(other),
        };
        assert_ne!(
            generate(&flux, &ae, &with_negative, &guided, true, &dev).unwrap(),
            plain
        );
    }

    #[test]
    fn a_control_image_conditions_the_sample_and_a_missing_one_is_named() {
        let dev = Default::default();
        let (flux, ae) = (tiny_flux(&dev), tiny_ae(&dev));
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("control.png");
        // 40×24 (5:3) becomes the nearest Kontext aspect at the sample's area, a multiple of 16.
        RgbImage::from_fn(40, 24, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 10) as u8, 90])
        })
        .save(&control)
        .unwrap();
        let plain = generate(&flux, &ae, &text(), &prompt(32, 32, 3), true, &dev).unwrap();
        let with = SamplePrompt {
            control: Some(control.clone()),
            ..prompt(32, 32, 3)
        };
        let a = generate(&flux, &ae, &text(), &with, true, &dev).unwrap();
        assert_eq!(
            a.dimensions(),
            (32, 32),
            "the target keeps the prompt's size"
        );
        assert_ne!(a, plain, "the control tokens change the sample");
        assert_eq!(a, generate(&flux, &ae, &text(), &with, true, &dev).unwrap());
        let shown = crate::sampling::control::control_image(&control, 32, 32).unwrap();
        assert_eq!(shown.dimensions(), (32, 16));
        let missing = SamplePrompt {
            control: Some(dir.path().join("nope.png")),
            ..prompt(32, 32, 3)
        };
        let e = generate(&flux, &ae, &text(), &missing, true, &dev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.png"), "{e}");
    }

    #[test]
    fn seeded_normals_are_reproducible_and_standard() {
        assert_eq!(seeded_normals(3, 10), seeded_normals(3, 10));
        assert_ne!(seeded_normals(3, 10), seeded_normals(4, 10));
        let v = seeded_normals(11, 20_000);
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
        let var = v
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / v.len() as f64;
        assert!(
            mean.abs() < 0.04 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
    }

    #[test]
    fn pixel_mapping() {
        // 127.5·(x + 1): −1 → 0, 0 → 127.5 → 128 (round half away from zero), 1 → 255.
        assert_eq!(
            [
                to_u8(-1.0),
                to_u8(0.0),
                to_u8(1.0),
                to_u8(-7.0),
                to_u8(3.0),
                to_u8(f32::NAN)
            ],
            [0, 128, 255, 0, 255, 0]
        );
        assert_eq!(to_u8(0.5), 191); // 191.25
    }
}
