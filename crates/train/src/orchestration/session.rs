//! A whole training run from a config, as the `train` example runs it: resolve the base model →
//! open the dataset, hold out the validation split, fix the step count (the preset's for the
//! dataset's size when `max_train_steps` is unset), and build the caches (each encoder loaded
//! for its cache, then dropped) → read the held-out items and fix their σ / ε →
//! encode the sample prompts and keep only the autoencoder → load the transformer (bf16 where
//! the backend supports it and `base_bf16` is on) → train with the [`Monitor`] (loss curve with
//! validation points, sample grids) → the files it produced and the best checkpoint by
//! validation loss.

use fluxlora_flux::FluxAutodiffBackend;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use fluxlora_data::BuildStats;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::layout::RunLayout;
use crate::orchestration::base::BaseModel;
use crate::orchestration::monitor::{Monitor, Sampler};
use crate::orchestration::prepare::prepare_data;
use crate::run::{RunSummary, Trainer};
use crate::validation::BestCheckpoint;

/// How to run a session.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Progress bars on the terminal.
    pub progress: bool,
    /// Continue from this checkpoint folder.
    pub resume: Option<PathBuf>,
    /// A stop flag (e.g. set by a SIGINT handler): the run saves a resumable checkpoint and
    /// returns after the current step.
    pub stop: Option<Arc<AtomicBool>>,
}

/// What a session did and wrote.
#[derive(Debug, Clone)]
pub struct SessionReport {
    /// The training loop's summary (final LoRA, last checkpoint, CSV log, ...).
    pub run: RunSummary,
    /// Images trained on.
    pub images: usize,
    /// Images held out for the validation loss (`validation_split`).
    pub validation_images: usize,
    /// Latent cache build.
    pub latents: BuildStats,
    /// Text cache build.
    pub texts: BuildStats,
    /// Sample grids written.
    pub sample_grids: Vec<PathBuf>,
    /// The loss-curve PNG.
    pub loss_curve: Option<PathBuf>,
    /// The effective config as written to the output folder.
    pub config_file: PathBuf,
}

impl SessionReport {
    /// The save with the lowest validation loss (runs with a validation split).
    pub fn best_checkpoint(&self) -> Option<&BestCheckpoint> {
        self.run.best_checkpoint.as_ref()
    }

    /// The closing-summary line naming the best checkpoint, or `None` without validation.
    pub fn best_checkpoint_line(&self) -> Option<String> {
        let best = self.best_checkpoint()?;
        let of = self.validation_images;
        Some(format!(
            "best checkpoint by validation loss ({of} held-out image(s)): {best}"
        ))
    }

    /// Every file the run produced (for the closing summary).
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.run.lora.iter().cloned().collect();
        v.extend(self.run.checkpoint.iter().cloned());
        v.push(self.run.csv.clone());
        v.extend(self.run.events.iter().cloned());
        v.extend(self.loss_curve.iter().cloned());
        v.extend(self.sample_grids.iter().cloned());
        v.push(self.config_file.clone());
        v
    }
}

/// Runs a whole training session on backend `B` (see the module docs).
pub fn train_session<B: FluxAutodiffBackend>(
    mut config: TrainConfig,
    device: &B::Device,
    options: SessionOptions,
) -> Result<SessionReport, TrainError> {
    config.validate()?;
    let base = BaseModel::resolve(&config)?;
    let mut data = prepare_data::<B::InnerBackend>(&config, &base, device, options.progress)?;
    // The run's length in steps (from max_train_epochs or the preset when not given as steps).
    config.max_train_steps = Some(data.max_train_steps);
    config.max_train_epochs = None;
    let sampler = Sampler::<B::InnerBackend>::new(&config, &base, device)?;
    let plan = crate::memory::plan_for_run::<B>(&config, &base, device)?;
    let flux = base.load_transformer::<B>(plan.base_dtype, plan.blocks_to_swap, device)?;
    let mut trainer = Trainer::new(config.clone(), flux, device.clone())?
        .with_progress(options.progress)
        .for_kontext(base.is_kontext_as(config.model_type));
    if let Some(set) = data.validation_set::<B::InnerBackend>(&config, device)? {
        trainer = trainer.with_validation(set);
    }
    if let Some(stop) = options.stop {
        trainer = trainer.with_stop_handle(stop);
    }
    let (history, val_history) = match &options.resume {
        Some(dir) => {
            trainer.resume(dir, &mut data.source)?;
            let h = trainer.history().cloned().unwrap_or_default();
            (h.losses, h.validation)
        }
        None => (Vec::new(), Vec::new()),
    };
    let mut monitor =
        Monitor::<B>::new(&config, sampler, history).with_validation_history(val_history);
    let run = trainer.run_observed(&mut data.source, &mut monitor)?;
    Ok(SessionReport {
        images: data.dataset.items.len(),
        validation_images: data.validation.as_ref().map_or(0, |v| v.items.len()),
        latents: data.latents,
        texts: data.texts,
        sample_grids: monitor.grids.clone(),
        loss_curve: monitor.loss_curve.clone(),
        config_file: RunLayout::new(&config).config_copy(),
        run,
    })
}
