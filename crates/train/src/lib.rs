//! The Flux LoRA training loop and its configuration.
//!
//! A [`TrainConfig`] (TOML file + command-line overrides, kohya key names, layered over a
//! [`TrainingPreset`]) describes a run. The loop composes the other crates: `fluxlora-data`
//! yields cached latents and text embeddings, `fluxlora-flux` runs the transformer whose linears
//! carry `fluxlora-lora` adapters, `fluxlora-optim` steps them, and `fluxlora-io` writes the LoRA.
//!
//! - [`config`]: settings, layering and validation.
//! - [`preset`]: character / style / concept presets and dataset advice.

pub mod config;
pub mod error;
pub mod preset;

pub use config::{
    LossType, LrScheduler, ModelPredictionType, ModelType, OptimizerType, SaveFormat, TimestepSampling, TrainConfig,
    WeightingScheme,
};
pub use error::TrainError;
pub use preset::{PresetAdvice, TrainingPreset};
