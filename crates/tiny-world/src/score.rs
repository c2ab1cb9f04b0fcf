//! The concept score of a trained LoRA: the share of samples from held-out prompts in which the
//! [`crate::detector`] finds the concept, for the base alone and for base + LoRA.
//!
//! Each prompt of the prompts file is drawn with `seeds` seeds (the prompt's `--d` seed, then
//! `+1000`, `+2000`, …), first on the untouched base, then with the LoRA merged in at weight 1;
//! both sets share every seed, so the two scores differ only by the LoRA. The images go to one
//! grid (base row over LoRA row per prompt) so the numbers can be checked by eye. A Kontext
//! prompt (`--ci`) is scored on its control's object: the concept must cover the disc the
//! control shows ([`crate::detector::detect_in`] over [`crate::edits::object_region`]).

use fluxlora_flux::FluxBackend;
use std::path::{Path, PathBuf};

use fluxlora_io::read_lora;
use image::RgbImage;

use crate::detector::{concept_score, detect, detect_in};
use crate::edits::object_region;
use crate::error::TinyWorldError;
use fluxlora_render::{save_png, SampleGrid};
use fluxlora_train::config::TrainConfig;
use fluxlora_train::orchestration::base::BaseModel;
use fluxlora_train::orchestration::encoders::FluxTextEncoder;
use fluxlora_train::sampling::control::control_image;
use fluxlora_train::sampling::inference::apply_named_loras;
use fluxlora_train::sampling::prompts::{parse_prompt_file, SampleDefaults, SamplePrompt};
use fluxlora_train::sampling::sample::{generate, PromptText};

/// Seeds per held-out prompt the README's run scores with: its 4 prompts × 8 seeds = 32 samples
/// per model (16 would leave a binomial standard error of about ±11 points at a 30 % score; 32
/// leave ±8).
pub const CONCEPT_SEEDS: usize = 8;

/// Base vs LoRA concept scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ConceptScores {
    /// Share of base samples showing the concept.
    pub base: f32,
    /// Share of base + LoRA samples showing the concept.
    pub lora: f32,
    /// Samples per model.
    pub samples: usize,
    /// The grid of every sample (base, then LoRA, per prompt and seed).
    pub grid: PathBuf,
}

/// Scores `lora` on `base` with the prompts of `prompts_file` × `seeds` seeds; writes the grid as
/// `grid_path`. `shift`: the dev schedule (true) or schnell's (false); `t5_mask`: the run's
/// `apply_t5_attn_mask`.
#[allow(clippy::too_many_arguments)]
pub fn concept_scores<B: FluxBackend>(
    base: &BaseModel,
    lora: &Path,
    prompts_file: &Path,
    seeds: usize,
    t5_max_length: usize,
    t5_mask: bool,
    shift: bool,
    grid_path: &Path,
    device: &B::Device,
) -> Result<ConceptScores, TinyWorldError> {
    let prompts: Vec<SamplePrompt> = parse_prompt_file(prompts_file, &SampleDefaults::default())?
        .into_iter()
        .flat_map(|p| {
            (0..seeds as u64).map(move |k| SamplePrompt {
                seed: p.seed + 1000 * k,
                ..p.clone()
            })
        })
        .collect();
    if prompts.is_empty() {
        return Err(TinyWorldError::Invalid {
            key: "sample_prompts".into(),
            message: format!(
                "{}: no prompts to score the concept with",
                prompts_file.display()
            ),
        });
    }
    let texts = {
        let encoder = FluxTextEncoder::<B>::load(base, t5_max_length, t5_mask, device)?;
        prompts
            .iter()
            .map(|p| PromptText::encode(&encoder, p))
            .collect::<Result<Vec<_>, _>>()?
    };
    let ae = base.load_autoencoder::<B>(None, device)?;
    let mut flux = base.load_transformer::<B>(Default::default(), 0, device)?;
    let draw = |flux: &fluxlora_flux::Flux<B>| -> Result<Vec<RgbImage>, TinyWorldError> {
        let images = prompts
            .iter()
            .zip(&texts)
            .map(|(p, t)| generate(flux, &ae, t, p, shift, device));
        Ok(images.collect::<Result<Vec<_>, _>>()?)
    };
    let base_images = draw(&flux)?;
    let weights = read_lora(lora)?.0;
    apply_named_loras(&mut flux, &[(lora, &weights, 1.0)])?;
    let lora_images = draw(&flux)?;

    let mut grid = SampleGrid::new("concept check: base (upper) vs base + LoRA (lower)", 0);
    for (i, p) in prompts.iter().enumerate() {
        grid.push(
            base_images[i].clone(),
            format!("base · {}", p.prompt),
            p.seed,
        );
    }
    for (i, p) in prompts.iter().enumerate() {
        grid.push(
            lora_images[i].clone(),
            format!("LoRA · {}", p.prompt),
            p.seed,
        );
    }
    save_png(grid_path, &grid.render(), &[])?;
    let regions = prompts
        .iter()
        .map(|p| match &p.control {
            Some(c) => Ok(Some(object_region(&control_image(c, p.width, p.height)?))),
            None => Ok(None),
        })
        .collect::<Result<Vec<_>, TinyWorldError>>()?;
    Ok(ConceptScores {
        base: score(&base_images, &regions),
        lora: score(&lora_images, &regions),
        samples: prompts.len(),
        grid: grid_path.to_path_buf(),
    })
}

/// The share of `images` showing the concept: on the whole image, or, for a Kontext prompt, on
/// its control's object ([`detect_in`]).
fn score(images: &[RgbImage], regions: &[Option<Vec<bool>>]) -> f32 {
    if regions.iter().all(Option::is_none) {
        return concept_score(images);
    }
    let found = images
        .iter()
        .zip(regions)
        .filter(|(img, region)| match region {
            Some(r) => detect_in(img, r).is_some_and(|d| d.covers()),
            None => detect(img).found(),
        })
        .count();
    found as f32 / images.len().max(1) as f32
}

/// [`concept_scores`] for a finished run of `config`: its base model, its `sample_prompts`, its
/// T5 length and schedule; the grid goes to `{output_dir}/{output_name}-concept.png`.
pub fn concept_check<B: FluxBackend>(
    config: &TrainConfig,
    lora: &Path,
    seeds: usize,
    device: &B::Device,
) -> Result<ConceptScores, TinyWorldError> {
    let base = BaseModel::resolve(config)?;
    let prompts = config
        .sample_prompts
        .as_deref()
        .ok_or_else(|| TinyWorldError::Invalid {
            key: "sample_prompts".into(),
            message: "not set; the concept score samples the prompts file's held-out prompts"
                .into(),
        })?;
    let grid = fluxlora_train::layout::RunLayout::new(config).concept_grid();
    let shift = base.is_dev(config)?;
    concept_scores::<B>(
        &base,
        lora,
        prompts,
        seeds,
        base.t5_max_length(config)?,
        config.apply_t5_attn_mask,
        shift,
        &grid,
        device,
    )
}
