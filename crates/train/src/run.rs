//! [`Trainer`]: the loop. Per optimizer step: `gradient_accumulation_steps` micro-batches from a
//! [`BatchSource`], each with seeded σ/ε draws and a reseeded backend RNG (dropout), forward +
//! backward ([`training_step`]), NaN/inf guard, averaged gradients, optimizer step at the
//! scheduled LR, CSV row (and TensorBoard events with `logging_dir`) and progress bar. Saves a
//! resumable checkpoint every `save_every_n_steps`, at the end of every
//! `save_every_n_epochs`-th epoch (the step during which the source hands out that epoch's last
//! micro-batch; [`BatchSource::epochs_completed`]), keeping the last `save_last_n_saves`, and
//! at the end, where the final LoRA also goes to `<output_dir>/<output_name>.safetensors`. The
//! effective config is written to `<output_dir>/<output_name>-config.toml` at start.
//!
//! With `ema_decay` set, a [`LoraEma`] is updated after every optimizer step; every LoRA file the
//! trainer writes (checkpoints and the final one) then holds the averages, while the live
//! weights keep training and go into the checkpoint's `live.safetensors` (see [`crate::resume`]).
//! Observers (samples, the monitor) see the weights the saves hold: the averages with EMA on.
//!
//! Validation ([`Trainer::with_validation`], required when `validation_split > 0`): after every
//! `validate_every_n_steps`-th step — or, with that unset, after every step that saves — and
//! after the last step, the mean loss over the held-out items with their fixed σ and ε
//! ([`crate::validation`]) is computed forward-only on `model.valid()` (the EMA weights when
//! `ema_decay` is set, since those are what the saves hold). It goes into the step's CSV row
//! (a `val_loss` column that runs without validation do not have) and the progress bar; a
//! validation at a step that also saves pairs with that save, and
//! [`RunSummary::best_checkpoint`] names the existing save with the lowest validation loss (the
//! final LoRA for the last step of a finished run). On `--resume`, the validations logged up to
//! the checkpoint count too.
//!
//! Stopping early: [`Trainer::stop_handle`] returns a flag the caller may set (e.g. from a
//! SIGINT handler); the loop then finishes the current step, saves a resumable checkpoint and
//! returns. The crate installs no signal handler itself.

use fluxlora_flux::FluxAutodiffBackend;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::module::AutodiffModule;
use fluxlora_flux::Flux;
use fluxlora_lora::{BlockList, Preset, TargetSelector};
use fluxlora_optim::{GradientMean, LrSchedule};

use crate::config::{ModelType, TrainConfig};
use crate::ema::LoraEma;
use crate::error::TrainError;
use crate::layout::RunLayout;
use crate::log::{check_finite, CsvHistory, CsvLog, Progress, StepRecord};
use crate::noise::draw_noise;
use crate::optimizer::{lr_schedule, TrainOptimizer};
use crate::resume::{
    config_hash, load_checkpoint, lora_file_name, save_checkpoint, TrainState, STATE_FORMAT,
};
use crate::save::{
    flux_variant, lora_format, prune_checkpoints, save_lora, training_metadata, SelfCheck,
};
use crate::source::BatchSource;
use crate::step::{training_step, StepSettings};
use crate::tensorboard::{unix_seconds, EventWriter};
use crate::validation::{ValidationHistory, ValidationSet};

pub use crate::observer::{NoObserver, RunObserver, RunSummary, ShownModel};

/// The LoRA targets a config asks for (`lora_targets`, block lists, rank, alpha, dropouts).
pub fn target_selector(c: &TrainConfig) -> Result<TargetSelector, TrainError> {
    let invalid = |key: &str, e: fluxlora_lora::LoraError| TrainError::Invalid {
        key: key.into(),
        message: e.to_string(),
    };
    let preset: Preset = c
        .lora_targets
        .parse()
        .map_err(|e| invalid("lora_targets", e))?;
    let mut s = TargetSelector::new(preset, c.network_dim, c.network_alpha);
    s.network = crate::network::network(c)?;
    s.dropout = c.network_dropout;
    s.rank_dropout = c.rank_dropout;
    s.module_dropout = c.module_dropout;
    s.double_blocks = c
        .train_double_block_indices
        .parse::<BlockList>()
        .map_err(|e| invalid("train_double_block_indices", e))?;
    s.single_blocks = c
        .train_single_block_indices
        .parse::<BlockList>()
        .map_err(|e| invalid("train_single_block_indices", e))?;
    Ok(s)
}

/// The training loop over a LoRA-wrapped [`Flux`].
pub struct Trainer<B: FluxAutodiffBackend> {
    config: TrainConfig,
    model: Option<Flux<B>>,
    optimizer: TrainOptimizer<B>,
    schedule: LrSchedule,
    settings: StepSettings,
    device: B::Device,
    step: u64,
    total_steps: u64,
    started_at: f64,
    stop: Arc<AtomicBool>,
    show_progress: bool,
    kontext: bool,
    last_check: Option<SelfCheck>,
    ema: Option<LoraEma>,
    validation: Option<ValidationSet>,
    val_history: ValidationHistory,
    /// The CSV log read back by [`Trainer::resume`], with the step it was read for.
    history: Option<(u64, CsvHistory)>,
}

fn mix(seed: u64, step: u64, micro: u64) -> u64 {
    let mut r = fluxlora_data::SplitMix64::derive(seed, &[0x4452_4f50, step, micro]);
    r.next_u64()
}

impl<B: FluxAutodiffBackend> Trainer<B> {
    /// Validates the config, freezes `model`'s base and adds the configured adapters, and builds
    /// the optimizer and schedule. `max_train_steps` must be set.
    pub fn new(
        config: TrainConfig,
        mut model: Flux<B>,
        device: B::Device,
    ) -> Result<Self, TrainError> {
        config.validate()?;
        let total = config.max_train_steps.ok_or_else(|| TrainError::Invalid {
            key: "max_train_steps".into(),
            message: "not set; give it, or derive it from the preset and dataset size \
                      (TrainingPreset::steps_for) before building the trainer"
                .into(),
        })? as u64;
        let ema = config.ema_decay.map(LoraEma::new).transpose()?;
        // Adapter init draws from the backend RNG: seed it so a run is reproducible from `seed`.
        B::seed(&device, mix(config.seed, u64::MAX, 0));
        let chosen = model.apply_lora(&target_selector(&config)?, &device)?;
        if chosen.is_empty() {
            return Err(TrainError::Invalid {
                key: "lora_targets".into(),
                message:
                    "no linear of the model was selected; check lora_targets and the block lists"
                        .into(),
            });
        }
        let settings = StepSettings::from_config(&config)?;
        let optimizer = TrainOptimizer::from_config(&config)?;
        let schedule = lr_schedule(&config, total)?;
        let started_at = unix_seconds();
        Ok(Self {
            config,
            model: Some(model),
            optimizer,
            schedule,
            settings,
            device,
            step: 0,
            total_steps: total,
            started_at,
            stop: Arc::new(AtomicBool::new(false)),
            show_progress: true,
            kontext: false,
            last_check: None,
            ema,
            validation: None,
            val_history: ValidationHistory::default(),
            history: None,
        })
    }

    /// Hides (false) or shows the progress bar.
    pub fn with_progress(mut self, show: bool) -> Self {
        self.show_progress = show;
        self
    }

    /// Marks the base as FLUX.1 Kontext (its weights are dev's), so saves name Kontext's
    /// architecture. `model_type = "kontext"` marks it too.
    pub fn for_kontext(mut self, kontext: bool) -> Self {
        self.kontext = kontext;
        self
    }

    /// Scores `set` (the held-out items with their fixed draws) during the run; see the module
    /// docs for when.
    pub fn with_validation(mut self, set: ValidationSet) -> Self {
        self.validation = Some(set);
        self
    }

    /// The validation set, if any.
    pub fn validation(&self) -> Option<&ValidationSet> {
        self.validation.as_ref()
    }

    /// The validation loss of the current weights (the EMA weights with `ema_decay`), forward
    /// only on the inner backend.
    pub fn validation_loss(&self) -> Result<f32, TrainError> {
        let set = self
            .validation
            .as_ref()
            .ok_or_else(|| TrainError::Invalid {
                key: "validation_split".into(),
                message: "no validation set was given to the trainer (Trainer::with_validation)"
                    .into(),
            })?;
        let model = self.model_ref();
        let valid = match &self.ema {
            Some(ema) => ema.averaged(model)?.valid(),
            None => model.valid(),
        };
        set.loss(&valid, &self.settings, &self.device)
    }

    /// Whether the step just completed is scored: every `validate_every_n_steps`, else at
    /// every save; and the last step of the run.
    fn validates_at(&self, step: u64, saves: bool, last: bool) -> bool {
        self.validation.is_some()
            && (last
                || match self.config.validate_every_n_steps.filter(|&n| n > 0) {
                    Some(n) => step.is_multiple_of(n as u64),
                    None => saves,
                })
    }

    /// A flag that, once set, makes [`run`](Self::run) save a checkpoint and return after the
    /// current step.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Uses `stop` as the stop flag (e.g. one a signal handler already sets).
    pub fn with_stop_handle(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = stop;
        self
    }

    /// Optimizer steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The config.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &TrainOptimizer<B> {
        &self.optimizer
    }

    /// The EMA of the adapter weights (`ema_decay` set).
    pub fn ema(&self) -> Option<&LoraEma> {
        self.ema.as_ref()
    }

    /// The model (with its adapters).
    pub fn model_mut(&mut self) -> &mut Flux<B> {
        self.model
            .as_mut()
            .expect("the model is only taken during an optimizer step")
    }

    /// Ends training and returns the model.
    pub fn into_model(mut self) -> Flux<B> {
        self.model
            .take()
            .expect("the model is only taken during an optimizer step")
    }

    /// Restores a checkpoint folder (LoRA, optimizer state, step, RNG counter, source position).
    pub fn resume(
        &mut self,
        dir: &std::path::Path,
        source: &mut dyn BatchSource<B>,
    ) -> Result<TrainState, TrainError> {
        let model = self.model.as_mut().expect("model present between steps");
        let state = load_checkpoint(
            dir,
            model,
            &mut self.optimizer,
            &self.config,
            self.ema.as_mut(),
        )?;
        source.restore(&state.source)?;
        self.step = state.step;
        self.history = Some((
            state.step,
            CsvHistory::read(&RunLayout::new(&self.config).csv(), state.step)?,
        ));
        Ok(state)
    }

    /// The CSV log up to the resumed step, read once by [`resume`](Self::resume) (the monitor's
    /// loss curve starts from it); `None` before a resume.
    pub fn history(&self) -> Option<&CsvHistory> {
        self.history.as_ref().map(|(_, h)| h)
    }

    /// One optimizer step (all micro-batches); returns its record.
    pub fn step_once(&mut self, source: &mut dyn BatchSource<B>) -> Result<StepRecord, TrainError> {
        let t0 = Instant::now();
        let lr = self.schedule.lr(self.step);
        let micro = self.config.gradient_accumulation_steps.max(1);
        let model = self.model.take().expect("model present between steps");
        let result = (|| {
            let mut mean = GradientMean::new();
            let mut single = None;
            let (mut loss_sum, mut sigma_sum) = (0.0f64, 0.0f64);
            for m in 0..micro as u64 {
                let batch = source.next_batch(&self.device)?;
                let [b, l, c] = batch.dims()?;
                let draw = draw_noise(
                    self.config.seed,
                    self.step,
                    m,
                    &self.settings.sampler,
                    b,
                    l,
                    c,
                );
                B::seed(&self.device, mix(self.config.seed, self.step, m));
                let out = training_step(&model, &batch, &draw, &self.settings)?;
                check_finite(self.step + 1, out.loss, lr)?;
                loss_sum += f64::from(out.loss);
                sigma_sum += f64::from(out.sigma_mean);
                if micro == 1 {
                    single = Some(out.grads);
                } else {
                    mean.accumulate::<B, Flux<B>>(&model, out.grads);
                }
            }
            let grads = match single {
                Some(g) => g,
                None => mean.finish::<B, Flux<B>>(&model),
            };
            Ok((grads, loss_sum / micro as f64, sigma_sum / micro as f64))
        })();
        let (grads, loss, sigma) = match result {
            Ok(v) => v,
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        self.model = Some(self.optimizer.step(lr, model, grads));
        self.step += 1;
        if let Some(ema) = self.ema.as_mut() {
            ema.update(self.model.as_mut().expect("model put back just above"))?;
        }
        Ok(StepRecord {
            step: self.step,
            loss: loss as f32,
            lr: self.optimizer.effective_lr(lr),
            sigma_mean: sigma as f32,
            seconds: t0.elapsed().as_secs_f64(),
            val_loss: None,
        })
    }

    fn state(&self, source: &dyn BatchSource<B>) -> TrainState {
        TrainState {
            format: STATE_FORMAT.into(),
            step: self.step,
            epoch: source.epochs_completed(),
            source: source.position(),
            seed: self.config.seed,
            rng_counter: self.step,
            lr_step: self.step,
            optimizer: self.optimizer.name().into(),
            config_hash: config_hash(&self.config),
            lora_file: lora_file_name(&self.config),
        }
    }

    /// Writes a resumable checkpoint `<output_dir>/<name>-step<N>/` for the current step.
    pub fn save_checkpoint(&mut self, source: &dyn BatchSource<B>) -> Result<PathBuf, TrainError> {
        let state = self.state(source);
        let dir = RunLayout::new(&self.config).checkpoint(self.step);
        let meta = self.metadata(state.epoch);
        let model = self.model.as_mut().expect("model present between steps");
        let path = save_checkpoint(
            &dir,
            model,
            &self.optimizer,
            &state,
            &self.config,
            &meta,
            self.ema.as_ref(),
        )?;
        Ok(path)
    }

    fn metadata(&self, epoch: u64) -> fluxlora_io::TrainingMetadata {
        let guidance = self.model.as_ref().is_some_and(|m| m.config.guidance_embed);
        let kontext = self.kontext || self.config.model_type == ModelType::Kontext;
        let variant = flux_variant(kontext, guidance);
        let mut meta = training_metadata(&self.config, variant, self.step, epoch, self.started_at);
        meta.optimizer = Some(self.optimizer.name().into());
        meta
    }

    /// Trains until `max_train_steps` (or the stop flag), saving as configured.
    pub fn run(&mut self, source: &mut dyn BatchSource<B>) -> Result<RunSummary, TrainError> {
        self.run_observed(source, &mut NoObserver)
    }

    /// [`run`](Self::run), calling `observer` along the way.
    pub fn run_observed(
        &mut self,
        source: &mut dyn BatchSource<B>,
        observer: &mut dyn RunObserver<B>,
    ) -> Result<RunSummary, TrainError> {
        let t0 = Instant::now();
        let c = self.config.clone();
        std::fs::create_dir_all(&c.output_dir).map_err(|e| TrainError::io(&c.output_dir, e))?;
        let layout = RunLayout::new(&c);
        let cfg_path = layout.config_copy();
        let toml = c.to_toml();
        fluxlora_io::atomic_write(&cfg_path, |w| w.write_all(toml.as_bytes()))?;
        let csv_path = layout.csv();
        if c.validation_split > 0.0 && self.validation.is_none() {
            return Err(TrainError::Invalid {
                key: "validation_split".into(),
                message: format!(
                    "{} is set but the trainer has no validation set; build it with \
                     PreparedData::validation_set and pass it to Trainer::with_validation",
                    c.validation_split
                ),
            });
        }
        self.val_history = ValidationHistory::default();
        let history = match self.history.take() {
            Some((step, h)) if step == self.step => h,
            _ if self.step > 0 => CsvHistory::read(&csv_path, self.step)?,
            _ => CsvHistory::default(),
        };
        if self.step > 0 && self.validation.is_some() {
            // Validations logged before the checkpoint, paired with the saves still on disk.
            for &(step, loss) in &history.validation {
                self.val_history.push(step, loss as f32);
                self.val_history.pair(step, layout.checkpoint(step));
            }
        }
        let with_val = self.validation.is_some();
        let mut csv = if self.step == 0 {
            CsvLog::create_for(&csv_path, with_val)?
        } else {
            CsvLog::resume_with(&csv_path, &history, with_val)?
        };
        let mut events = match &c.logging_dir {
            Some(dir) => {
                let mut w = EventWriter::create(&layout.events(dir))?;
                if self.step > 0 {
                    // Resumed: TensorBoard drops what earlier files logged from here on.
                    w.session_start(self.step + 1, unix_seconds())?;
                }
                Some(w)
            }
            None => None,
        };
        let mut progress = Progress::new(self.total_steps, self.step, self.show_progress);
        let mut last_loss = None;
        observer.on_start(self.step, &self.shown())?;
        while self.step < self.total_steps && !self.stop.load(Ordering::Relaxed) {
            let epochs_before = source.epochs_completed();
            let mut rec = self.step_once(source)?;
            let epochs = source.epochs_completed();
            let by_steps = c
                .save_every_n_steps
                .is_some_and(|n| self.step.is_multiple_of(n as u64));
            let by_epochs = c
                .save_every_n_epochs
                .is_some_and(|n| epochs / n as u64 > epochs_before / n as u64);
            let saves = (by_steps || by_epochs) && self.step < self.total_steps;
            let last = self.step >= self.total_steps || self.stop.load(Ordering::Relaxed);
            if self.validates_at(self.step, saves, last) {
                let v = self.validation_loss()?;
                self.val_history.push(self.step, v);
                rec.val_loss = Some(v);
            }
            csv.write(&rec)?;
            if let Some(w) = events.as_mut() {
                w.step_record(&rec)?;
            }
            progress.update(&rec);
            last_loss = Some(rec.loss);
            for line in observer.on_step(&rec, &self.shown())? {
                progress.println(&line);
            }
            if saves {
                let dir = self.save_checkpoint(source)?;
                self.val_history.pair(self.step, dir.clone());
                self.prune()?;
                let at = if by_epochs {
                    format!("step {} (end of epoch {epochs})", self.step)
                } else {
                    format!("step {}", self.step)
                };
                progress.println(&format!("saved {at} to {}", dir.display()));
                for line in observer.on_checkpoint(self.step, &dir, &self.shown())? {
                    progress.println(&line);
                }
            }
        }
        let stopped = self.step < self.total_steps;
        let last_dir = self.save_checkpoint(source)?;
        self.val_history.pair(self.step, last_dir.clone());
        self.prune()?;
        for line in observer.on_checkpoint(self.step, &last_dir, &self.shown())? {
            progress.println(&line);
        }
        let checkpoint = Some(last_dir);
        let mut lora = None;
        if !stopped {
            let path = layout.lora();
            let meta = self.metadata(source.epochs_completed());
            let model = self.model.as_mut().expect("model present between steps");
            self.last_check = Some(match &self.ema {
                Some(ema) => save_lora(
                    &mut ema.averaged(model)?,
                    &path,
                    lora_format(c.save_format),
                    &meta,
                )?,
                None => save_lora(model, &path, lora_format(c.save_format), &meta)?,
            });
            self.val_history.pair(self.step, path.clone());
            lora = Some(path);
        }
        progress.finish(if stopped {
            "stopped; resumable checkpoint saved"
        } else {
            "done"
        });
        let summary = RunSummary {
            steps: self.step,
            stopped,
            last_loss,
            lora,
            checkpoint,
            csv: csv_path,
            events: events.map(|w| w.path().to_path_buf()),
            self_check: self.last_check.clone(),
            seconds: t0.elapsed().as_secs_f64(),
            last_val_loss: self.val_history.last(),
            best_checkpoint: self.val_history.best(),
        };
        observer.on_end(&summary, &self.shown())?;
        Ok(summary)
    }

    /// Retention: keeps the newest `save_last_n_saves` checkpoints and the one with the lowest
    /// validation loss so far.
    fn prune(&self) -> Result<(), TrainError> {
        if let Some(keep) = self.config.save_last_n_saves {
            let best: Vec<PathBuf> = self
                .val_history
                .best()
                .map(|b| b.path)
                .into_iter()
                .collect();
            prune_checkpoints(
                &self.config.output_dir,
                &self.config.output_name,
                keep.max(1),
                &best,
            )?;
        }
        Ok(())
    }

    fn model_ref(&self) -> &Flux<B> {
        self.model.as_ref().expect("model present between steps")
    }

    /// The weights observers see (see [`ShownModel`]).
    fn shown(&self) -> ShownModel<'_, B> {
        ShownModel::new(self.model_ref(), self.ema.as_ref())
    }
}
