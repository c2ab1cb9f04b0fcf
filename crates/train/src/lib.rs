//! The Flux LoRA training loop and its configuration.
//!
//! A [`TrainConfig`] (TOML file + command-line overrides, kohya key names, layered over a
//! [`TrainingPreset`]) describes a run. The loop composes the other crates: `fluxlora-data`
//! yields cached latents and text embeddings, `fluxlora-flux` runs the transformer whose linears
//! carry `fluxlora-lora` adapters, `fluxlora-optim` steps them, and `fluxlora-io` writes the LoRA.
//!
//! Data flow of a run ([`Trainer::run`]): a [`BatchSource`] ([`CachedBatches`] in real runs)
//! yields packed latents + text embeddings + masks → [`noise`] draws σ and ε from
//! (seed, step, micro-batch) → [`step`] forms x_t and the target ε − x0, runs forward +
//! backward and reduces the loss → [`optimizer`] steps the adapters at the scheduled LR →
//! [`log`] writes the CSV row and the progress bar → every N steps [`resume`] writes a checkpoint
//! folder whose LoRA goes through [`lora_export`] and [`save`] (atomic write, self-check,
//! retention).
//!
//! - [`config`]: settings, layering and validation.
//! - [`preset`]: character / style / concept presets and dataset advice.
//! - [`network`]: which adapter algorithm a config trains (`network_type`, LyCORIS's
//!   `network_args`).
//! - [`noise`]: seeded σ / ε draws.
//! - [`step`]: one flow-matching training step and its loss.
//! - [`optimizer`]: optimizer and LR schedule from the config.
//! - [`ema`]: EMA of the LoRA weights (`ema_decay`), saved instead of the live weights.
//! - [`lora_export`]: model adapters ↔ canonical `LoraWeights` (LoRA, LoKr, LoHa, DoRA).
//! - [`memory`]: the memory planner (peak device / host estimate, the refusal, `auto_memory`).
//! - [`save`]: LoRA files with metadata, self-check, retention.
//! - [`resume`]: checkpoint folders and `--resume`.
//! - [`log`]: CSV log, progress bar, NaN/inf guard.
//! - [`tensorboard`]: the same per-step scalars as TensorBoard event files (`logging_dir`).
//! - [`source`]: the batch source trait and the cached-data source.
//! - [`run`]: the [`Trainer`] loop.
//! - [`observer`]: what watches a run ([`RunObserver`], [`ShownModel`]) and its [`RunSummary`].
//!
//! ```
//! use fluxlora_train::{OptimizerType, RunLayout, TrainConfig};
//!
//! // A config from a TOML file and command-line overrides (kohya's key names), and where the
//! // run's files go.
//! let dir = tempfile::tempdir()?;
//! let file = dir.path().join("train.toml");
//! std::fs::write(
//!     &file,
//!     "output_name = \"sks\"\nnetwork_dim = 16\noptimizer_type = \"Prodigy\"\n",
//! )?;
//! let flags = ["--learning_rate", "1.0", "--output_dir", "out"].map(String::from);
//! let config = TrainConfig::load(Some(file.as_path()), &flags)?;
//! assert_eq!((config.network_dim, config.optimizer_type), (16, OptimizerType::Prodigy));
//! let layout = RunLayout::new(&config);
//! assert_eq!(layout.lora(), std::path::Path::new("out/sks.safetensors"));
//! assert_eq!(layout.checkpoint(500), std::path::Path::new("out/sks-step00000500"));
//! // A name that would leave `output_dir` is refused.
//! assert!(TrainConfig::load(None, &["--output_name", "../up"].map(String::from)).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

pub mod config;
pub mod ema;
pub mod error;
pub mod layout;
pub mod log;
pub mod lora_export;
mod lycoris_export;
pub mod memory;
pub mod network;
pub mod noise;
pub mod observer;
pub mod optimizer;
pub mod orchestration;
pub mod preset;
pub mod resume;
pub mod run;
pub mod sampling;
pub mod save;
pub mod source;
pub mod step;
pub mod tensorboard;
pub mod validation;

pub use config::{
    LossType, LrScheduler, ModelPredictionType, ModelType, OptimizerType, SaveFormat,
    TimestepSampling, TrainConfig, WeightingScheme,
};
pub use ema::LoraEma;
pub use error::TrainError;
pub use layout::RunLayout;
pub use log::{CsvLog, StepRecord};
pub use lora_export::{export_lora, import_lora};
pub use optimizer::{lr_schedule, TrainOptimizer};
pub use orchestration::base::{BaseModel, ModelPaths};
pub use orchestration::encoders::{FluxLatentEncoder, FluxTextEncoder};
pub use orchestration::monitor::{Monitor, Sampler};
pub use orchestration::prepare::{
    dataset_config, images_per_epoch, prepare_data, steps_per_epoch, with_resolved_steps,
    CachePlan, PreparedData,
};
pub use orchestration::session::{train_session, SessionOptions, SessionReport};
pub use preset::{PresetAdvice, TrainingPreset};
pub use resume::{load_checkpoint, save_checkpoint, TrainState};
pub use run::{target_selector, NoObserver, RunObserver, RunSummary, ShownModel, Trainer};
pub use sampling::inference::{
    apply_loras, apply_named_loras, resolve_lora_name, sample_prompts, ApplyReport, SampleRun,
};
pub use save::{lora_format, save_lora, self_check, SelfCheck};
pub use source::{BatchSource, CachedBatches};
pub use step::{flow_matching_loss, training_step, ControlLatents, StepSettings, TrainBatch};
pub use tensorboard::EventWriter;
