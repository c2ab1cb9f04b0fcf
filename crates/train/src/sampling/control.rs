//! Kontext control images for sampling: read, resized as BFL's `prepare_kontext` resizes them
//! (Lanczos, to the preferred Kontext resolution of the nearest aspect ratio, scaled to the
//! sample's area: [`fluxlora_flux::kontext::control_size`]), and encoded into the clean tokens
//! appended after the noisy ones ([`fluxlora_flux::ImageCondSeq`]). Grids show each Kontext
//! prompt as a row `control | base | LoRA` ([`push_control_row`]).

use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use fluxlora_data::ImageLimits;
use fluxlora_flux::kontext::control_size;
use fluxlora_flux::{latents, Autoencoder, Flux, FluxBackend, ImageCondSeq};
use fluxlora_render::SampleGrid;
use image::imageops::FilterType;
use image::RgbImage;

use crate::error::TrainError;
use crate::sampling::prompts::SamplePrompt;

fn bad(path: &Path, message: String) -> TrainError {
    TrainError::Invalid {
        key: "control image".into(),
        message: format!("{}: {message}", path.display()),
    }
}

/// The control image at `path`, as RGB, resized for a sample of `width × height` pixels.
pub fn control_image(path: &Path, width: u32, height: u32) -> Result<RgbImage, TrainError> {
    let decoded =
        fluxlora_data::decode::decode_file_with(path, &ImageLimits::default()).map_err(|f| {
            bad(
                path,
                format!("{}; give a readable PNG/JPEG/WebP/BMP file", f.reason),
            )
        })?;
    let rgb = decoded.image.to_rgb8();
    let (cw, ch) = control_size(
        rgb.width(),
        rgb.height(),
        u64::from(width) * u64::from(height),
    );
    Ok(if rgb.dimensions() == (cw, ch) {
        rgb
    } else {
        image::imageops::resize(&rgb, cw, ch, FilterType::Lanczos3)
    })
}

/// The control's clean latent tokens `[1, L_cond, 4·z]` and ids `(1, row, col)`: pixels
/// `x / 127.5 − 1`, the autoencoder's latent, 2×2 packing.
pub fn control_tokens<B: FluxBackend>(
    ae: &Autoencoder<B>,
    image: &RgbImage,
    device: &B::Device,
) -> Result<ImageCondSeq<B>, TrainError> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let unit = 2 * ae.config().downscale();
    if w % unit != 0 || h % unit != 0 {
        return Err(TrainError::Shape {
            what: "control image".into(),
            message: format!(
                "{w}×{h} px is not a multiple of {unit} (2 × the autoencoder's downscale)"
            ),
        });
    }
    let plane = w * h;
    let mut data = vec![0.0f32; 3 * plane];
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            data[c * plane + i] = f32::from(px.0[c]) / 127.5 - 1.0;
        }
    }
    let x: Tensor<B, 4> = Tensor::from_data(TensorData::new(data, [1, 3, h, w]), device);
    let z = ae.encode(x)?;
    let [_, _, lh, lw] = z.dims();
    Ok(ImageCondSeq {
        img: latents::pack(z)?,
        ids: latents::control_ids(1, lh / 2, lw / 2, device),
    })
}

/// The base alone: `flux` without its LoRA / LyCORIS adapters (unmerged ones; the weights are
/// shared, not copied). Kontext grids draw it beside the LoRA's sample.
pub fn base_of<B: FluxBackend>(flux: &Flux<B>) -> Flux<B> {
    let mut base = flux.clone();
    for (_, lin) in base.linears_mut() {
        lin.adapters.clear();
        lin.lycoris.clear();
    }
    base
}

/// One Kontext row of a sample grid: the control image (as the model saw it), the base's
/// sample and, when a LoRA was applied, the LoRA's: `control | base | LoRA`. `columns` (2 or 3)
/// is the grid's; a row without a LoRA sample gets a blank third cell.
pub fn push_control_row(
    grid: &mut SampleGrid,
    columns: usize,
    prompt: &SamplePrompt,
    base: RgbImage,
    lora: Option<RgbImage>,
) -> Result<(), TrainError> {
    let Some(path) = &prompt.control else {
        grid.push(lora.unwrap_or(base), prompt.prompt.clone(), prompt.seed);
        for _ in 1..columns {
            push_blank(grid, prompt);
        }
        return Ok(());
    };
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    grid.push(
        control_image(path, prompt.width, prompt.height)?,
        format!("control: {name}"),
        prompt.seed,
    );
    grid.push(base, format!("base: {}", prompt.prompt), prompt.seed);
    match lora {
        Some(img) if columns > 2 => grid.push(img, format!("LoRA: {}", prompt.prompt), prompt.seed),
        _ if columns > 2 => push_blank(grid, prompt),
        _ => {}
    }
    Ok(())
}

fn push_blank(grid: &mut SampleGrid, prompt: &SamplePrompt) {
    grid.push(
        RgbImage::new(prompt.width.max(1), prompt.height.max(1)),
        "(no control image)",
        prompt.seed,
    );
}
