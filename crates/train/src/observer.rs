//! What a run hands out besides its files: the [`RunSummary`] at the end, and the
//! [`RunObserver`] hooks that watch it (samples, the loss curve, validation), each shown the
//! weights the saves hold ([`ShownModel`]: the EMA averages with `ema_decay` set).

use std::path::PathBuf;

use fluxlora_flux::{Flux, FluxAutodiffBackend};

use crate::ema::LoraEma;
use crate::error::TrainError;
use crate::log::StepRecord;
use crate::save::SelfCheck;
use crate::validation::BestCheckpoint;

/// What a finished (or stopped) run produced.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Optimizer steps completed.
    pub steps: u64,
    /// Whether the stop flag ended the run before `max_train_steps`.
    pub stopped: bool,
    /// Loss of the last step.
    pub last_loss: Option<f32>,
    /// The final LoRA (`None` when stopped early).
    pub lora: Option<PathBuf>,
    /// The last checkpoint folder written.
    pub checkpoint: Option<PathBuf>,
    /// The CSV log.
    pub csv: PathBuf,
    /// This run's TensorBoard event file (`logging_dir` set).
    pub events: Option<PathBuf>,
    /// The self-check of the last save.
    pub self_check: Option<SelfCheck>,
    /// Wall time of `run`.
    pub seconds: f64,
    /// The last validation loss, with its step (runs with a validation set).
    pub last_val_loss: Option<(u64, f32)>,
    /// The existing save with the lowest validation loss (runs with a validation set).
    pub best_checkpoint: Option<BestCheckpoint>,
}

/// The weights an observer is shown: those the saves hold. With `ema_decay` set these are the
/// EMA averages, a model clone sharing the base that is built on the first [`ShownModel::get`]
/// only, so steps on which no observer looks cost nothing; otherwise the live model.
pub struct ShownModel<'a, B: FluxAutodiffBackend> {
    live: &'a Flux<B>,
    ema: Option<&'a LoraEma>,
    averaged: std::cell::OnceCell<Flux<B>>,
}

impl<'a, B: FluxAutodiffBackend> ShownModel<'a, B> {
    /// The live weights as they are (no EMA).
    pub fn live(model: &'a Flux<B>) -> Self {
        Self::new(model, None)
    }

    /// `live`, shown through `ema`'s averages when there is one.
    pub(crate) fn new(live: &'a Flux<B>, ema: Option<&'a LoraEma>) -> Self {
        Self {
            live,
            ema,
            averaged: std::cell::OnceCell::new(),
        }
    }

    /// The model to look at (sample, score, export).
    pub fn get(&self) -> Result<&Flux<B>, TrainError> {
        let Some(ema) = self.ema else {
            return Ok(self.live);
        };
        if let Some(m) = self.averaged.get() {
            return Ok(m);
        }
        let m = ema.averaged(self.live)?;
        Ok(self.averaged.get_or_init(|| m))
    }
}

/// Watches a run: called by [`Trainer::run_observed`] before the first step, after every
/// optimizer step, after every intermediate checkpoint, and at the end. Sampling, the loss curve
/// and validation hook in here ([`crate::orchestration::monitor::Monitor`]); every method defaults
/// to nothing.
pub trait RunObserver<B: FluxAutodiffBackend> {
    /// Before the first step of this `run` (step 0, or the resumed step).
    fn on_start(&mut self, _step: u64, _model: &ShownModel<'_, B>) -> Result<(), TrainError> {
        Ok(())
    }
    /// After each optimizer step. Returns lines to print above the progress bar.
    fn on_step(
        &mut self,
        _record: &StepRecord,
        _model: &ShownModel<'_, B>,
    ) -> Result<Vec<String>, TrainError> {
        Ok(Vec::new())
    }
    /// After each checkpoint folder is written (`dir`), including the last one.
    fn on_checkpoint(
        &mut self,
        _step: u64,
        _dir: &std::path::Path,
        _model: &ShownModel<'_, B>,
    ) -> Result<Vec<String>, TrainError> {
        Ok(Vec::new())
    }
    /// At the end of the run, with its summary.
    fn on_end(
        &mut self,
        _summary: &RunSummary,
        _model: &ShownModel<'_, B>,
    ) -> Result<(), TrainError> {
        Ok(())
    }
}

/// The observer that does nothing.
pub struct NoObserver;

impl<B: FluxAutodiffBackend> RunObserver<B> for NoObserver {}
