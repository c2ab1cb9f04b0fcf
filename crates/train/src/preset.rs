//! Training presets (`--preset character|style|concept`) and dataset advice.
//!
//! From the common Flux LoRA guidance: characters want 15–50 images and 1000–3000 steps, styles
//! 50–200 images and 2000–5000 steps, concepts 10–30 images and steps in between; images
//! should be at least 1024 px on the short side for Flux. A preset's values sit under the user's
//! file and flags, so each one can be overridden.

use serde::{Deserialize, Serialize};

/// What the LoRA is meant to learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingPreset {
    /// A person or character: trigger word kept first, moderate rank.
    Character,
    /// An art style: more images and steps, higher rank, some caption dropout.
    Style,
    /// An object or concept: few images, trigger word, steps between the two.
    Concept,
}

/// Recommended dataset size and step range for a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresetAdvice {
    /// Fewest images recommended.
    pub min_images: usize,
    /// Most images that still help.
    pub max_images: usize,
    /// Step range.
    pub min_steps: usize,
    /// Step range.
    pub max_steps: usize,
    /// Steps per image before clamping to the range.
    pub steps_per_image: usize,
}

/// Short side (px) below which Flux training images are upscaled.
pub const MIN_IMAGE_SIDE: u32 = 1024;

impl TrainingPreset {
    /// The preset's advice table.
    pub fn advice(self) -> PresetAdvice {
        match self {
            Self::Character => PresetAdvice {
                min_images: 15,
                max_images: 50,
                min_steps: 1000,
                max_steps: 3000,
                steps_per_image: 100,
            },
            Self::Style => PresetAdvice {
                min_images: 50,
                max_images: 200,
                min_steps: 2000,
                max_steps: 5000,
                steps_per_image: 40,
            },
            Self::Concept => PresetAdvice {
                min_images: 10,
                max_images: 30,
                min_steps: 1500,
                max_steps: 4000,
                steps_per_image: 100,
            },
        }
    }

    /// Steps for a dataset of `images` (repeats included): steps-per-image, clamped to the range.
    pub fn steps_for(self, images: usize) -> usize {
        let a = self.advice();
        (images * a.steps_per_image).clamp(a.min_steps, a.max_steps)
    }

    /// Config values the preset sets (under the user's file and flags).
    pub fn defaults(self) -> toml::Table {
        let (dim, lr, dropout) = match self {
            Self::Character => (16, 1e-4, 0.0),
            Self::Style => (32, 1e-4, 0.05),
            Self::Concept => (16, 1e-4, 0.0),
        };
        let mut t = toml::Table::new();
        t.insert("network_dim".into(), toml::Value::Integer(dim));
        t.insert("network_alpha".into(), toml::Value::Float(dim as f64));
        t.insert("learning_rate".into(), toml::Value::Float(lr));
        t.insert("network_dropout".into(), toml::Value::Float(dropout));
        t
    }

    /// What to add or fix, comparing a dataset with the preset's advice; empty when it fits.
    pub fn dataset_advice(self, images: usize, smallest_side: u32) -> Vec<String> {
        let a = self.advice();
        let name = format!("{self:?}").to_lowercase();
        let mut out = Vec::new();
        if images < a.min_images {
            out.push(format!(
                "{images} images is few for a {name} LoRA: add {} more (aim for {}–{}), varied \
                 in pose, light and background",
                a.min_images - images,
                a.min_images,
                a.max_images
            ));
        } else if images > a.max_images {
            out.push(format!(
                "{images} images is more than a {name} LoRA needs ({}–{}): keep the best and \
                 most varied",
                a.min_images, a.max_images
            ));
        }
        if smallest_side < MIN_IMAGE_SIDE {
            out.push(format!(
                "the smallest image is {smallest_side} px on its short side; Flux trains best from \
                 ≥ {MIN_IMAGE_SIDE} px (smaller images are upscaled and look soft)"
            ));
        }
        out
    }
}
