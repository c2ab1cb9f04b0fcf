//! Watching a run train: [`Monitor`] is the [`RunObserver`] that keeps the loss history (and the
//! validation losses the trainer logs), redraws the loss-curve PNG — training loss and
//! validation points — at every checkpoint and at the end, and draws sample grids from the
//! prompts file at step 0 (`sample_at_first`), every `sample_every_n_steps` and at the end.
//!
//! Sampling never needs the text encoders during training: [`Sampler::new`] encodes every
//! prompt once before training (then drops CLIP and T5) and keeps only the autoencoder for
//! decoding. Samples run on the inference view of the model (`valid()`), so they add nothing to
//! the autodiff graph. A Kontext prompt (`--ci`) is a row `control | base | LoRA`; its base
//! sample is drawn once, on the model without its adapters.

use fluxlora_flux::FluxAutodiffBackend;
use fluxlora_flux::FluxBackend;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use fluxlora_flux::{Autoencoder, Flux};

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::layout::RunLayout;
use crate::log::{CsvHistory, StepRecord};
use crate::orchestration::base::BaseModel;
use crate::orchestration::encoders::FluxTextEncoder;
use crate::run::{RunObserver, RunSummary, ShownModel};
use crate::sampling::control::{base_of, push_control_row};
use crate::sampling::prompts::{parse_prompt_file, SampleDefaults, SamplePrompt};
use crate::sampling::sample::{generate, PromptText};
use fluxlora_render::plot::LossPlot;
use fluxlora_render::SampleGrid;
use image::RgbImage;

/// Prompts with their text embeddings, and the autoencoder that decodes samples.
pub struct Sampler<B: Backend> {
    ae: Autoencoder<B>,
    prompts: Vec<(SamplePrompt, PromptText)>,
    shift: bool,
    device: B::Device,
    /// Kontext prompts' base samples (the base never changes), drawn at the first grid.
    base_images: Vec<OnceLock<RgbImage>>,
}

impl<B: FluxBackend> Sampler<B> {
    /// Reads the config's prompts file (sizes default to the training resolution), encodes every
    /// prompt (loading and then dropping CLIP + T5) and loads the autoencoder.
    pub fn new(
        c: &TrainConfig,
        base: &BaseModel,
        device: &B::Device,
    ) -> Result<Option<Self>, TrainError> {
        let Some(file) = &c.sample_prompts else {
            return Ok(None);
        };
        let defaults = SampleDefaults {
            width: c.resolution,
            height: c.resolution,
            seed: c.seed,
            ..Default::default()
        };
        let prompts = parse_prompt_file(file, &defaults)?;
        if prompts.is_empty() {
            return Err(TrainError::Invalid {
                key: "sample_prompts".into(),
                message: format!(
                    "{} has no prompts; add one per line, or unset sample_prompts",
                    file.display()
                ),
            });
        }
        let t5_len = base.t5_max_length(c)?;
        let encoded = {
            let text = FluxTextEncoder::<B>::load(base, t5_len, c.apply_t5_attn_mask, device)?;
            prompts
                .into_iter()
                .map(|p| Ok::<_, TrainError>((PromptText::encode(&text, &p)?, p)))
                .collect::<Result<Vec<_>, _>>()?
        };
        let ae = base.load_autoencoder(None, device)?;
        let shift = base.is_dev(c)?;
        Ok(Some(Self {
            ae,
            base_images: (0..encoded.len()).map(|_| OnceLock::new()).collect(),
            prompts: encoded.into_iter().map(|(e, p)| (p, e)).collect(),
            shift,
            device: device.clone(),
        }))
    }

    /// Warnings the prompts file produced (adjusted sizes, unknown flags, ...).
    pub fn warnings(&self) -> Vec<String> {
        self.prompts
            .iter()
            .flat_map(|(p, _)| p.warnings.clone())
            .collect()
    }

    /// One grid of every prompt, drawn from `flux`.
    pub fn grid(
        &self,
        flux: &Flux<B>,
        run_name: &str,
        step: u64,
    ) -> Result<SampleGrid, TrainError> {
        let mut grid = SampleGrid::new(run_name, step);
        let kontext = self.prompts.iter().any(|(p, _)| p.control.is_some());
        if kontext {
            grid.columns = Some(3);
        }
        let mut base = None;
        for ((p, text), cached) in self.prompts.iter().zip(&self.base_images) {
            let img = generate(flux, &self.ae, text, p, self.shift, &self.device)?;
            if !kontext {
                grid.push(img, p.prompt.clone(), p.seed);
                continue;
            }
            let base_img = match (cached.get(), &p.control) {
                (Some(b), _) => b.clone(),
                (None, Some(_)) => {
                    let model = base.get_or_insert_with(|| base_of(flux));
                    let b = generate(model, &self.ae, text, p, self.shift, &self.device)?;
                    cached.get_or_init(|| b).clone()
                }
                (None, None) => img.clone(),
            };
            push_control_row(&mut grid, 3, p, base_img, Some(img))?;
        }
        Ok(grid)
    }
}

/// Loss history, loss curve and sample grids of a run.
pub struct Monitor<B: FluxAutodiffBackend> {
    layout: RunLayout,
    sampler: Option<Sampler<B::InnerBackend>>,
    sample_every: Option<u64>,
    sample_at_first: bool,
    last_sampled: Option<u64>,
    losses: Vec<(u64, f64)>,
    validation: Vec<(u64, f64)>,
    plot: LossPlot,
    /// Sample grids written so far.
    pub grids: Vec<PathBuf>,
    /// The loss curve, once drawn.
    pub loss_curve: Option<PathBuf>,
}

impl<B: FluxAutodiffBackend> Monitor<B> {
    /// A monitor for the config's run; `history` is the loss log so far (on resume).
    pub fn new(
        c: &TrainConfig,
        sampler: Option<Sampler<B::InnerBackend>>,
        history: Vec<(u64, f64)>,
    ) -> Self {
        Self {
            layout: RunLayout::new(c),
            sampler,
            sample_every: c.sample_every_n_steps.filter(|&n| n > 0).map(|n| n as u64),
            sample_at_first: c.sample_at_first,
            last_sampled: None,
            losses: history,
            validation: Vec::new(),
            plot: LossPlot {
                title: format!("{} loss", c.output_name),
                ..Default::default()
            },
            grids: Vec::new(),
            loss_curve: None,
        }
    }

    /// The validation losses logged so far (on resume; see [`read_validation_history`]).
    pub fn with_validation_history(mut self, history: Vec<(u64, f64)>) -> Self {
        self.validation = history;
        self
    }

    /// The validation points collected so far.
    pub fn validation(&self) -> &[(u64, f64)] {
        &self.validation
    }

    /// `<output_dir>/<name>-loss.png`.
    pub fn loss_curve_path(&self) -> PathBuf {
        self.layout.loss_curve()
    }

    fn sample(&mut self, step: u64, model: &Flux<B>) -> Result<Vec<String>, TrainError> {
        let Some(sampler) = &self.sampler else {
            return Ok(Vec::new());
        };
        if self.last_sampled == Some(step) {
            return Ok(Vec::new());
        }
        let grid = sampler.grid(&model.valid(), &self.layout.name, step)?;
        let path = self.layout.sample_grid(step);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| TrainError::io(&path, e))?;
        grid.save(&path)?;
        self.last_sampled = Some(step);
        self.grids.push(path.clone());
        Ok(vec![format!("samples at step {step}: {}", path.display())])
    }

    fn draw_curve(&mut self) -> Result<(), TrainError> {
        let path = self.loss_curve_path();
        self.plot.save(&path, &self.losses, &self.validation)?;
        self.loss_curve = Some(path);
        Ok(())
    }
}

/// The `(step, loss)` rows of a CSV log written by [`crate::CsvLog`] (any version: the first two
/// columns); missing file → empty.
pub fn read_loss_history(csv: &Path) -> Vec<(u64, f64)> {
    CsvHistory::read(csv, u64::MAX).unwrap_or_default().losses
}

/// The `(step, validation loss)` rows of a CSV log: the `val_loss` column where its cell is not
/// empty. Logs written before that column existed, and a missing file, give none.
pub fn read_validation_history(csv: &Path) -> Vec<(u64, f64)> {
    CsvHistory::read(csv, u64::MAX)
        .unwrap_or_default()
        .validation
}

impl<B: FluxAutodiffBackend> RunObserver<B> for Monitor<B> {
    fn on_start(&mut self, step: u64, model: &ShownModel<'_, B>) -> Result<(), TrainError> {
        for w in self
            .sampler
            .as_ref()
            .map(Sampler::warnings)
            .unwrap_or_default()
        {
            eprintln!("sample prompts: {w}");
        }
        if step == 0 && self.sample_at_first {
            for line in self.sample(step, model.get()?)? {
                eprintln!("{line}");
            }
        }
        Ok(())
    }

    fn on_step(
        &mut self,
        r: &StepRecord,
        model: &ShownModel<'_, B>,
    ) -> Result<Vec<String>, TrainError> {
        self.losses.push((r.step, f64::from(r.loss)));
        if let Some(v) = r.val_loss {
            self.validation.push((r.step, f64::from(v)));
        }
        match self.sample_every {
            Some(n) if r.step.is_multiple_of(n) => self.sample(r.step, model.get()?),
            _ => Ok(Vec::new()),
        }
    }

    fn on_checkpoint(
        &mut self,
        _step: u64,
        _dir: &Path,
        _model: &ShownModel<'_, B>,
    ) -> Result<Vec<String>, TrainError> {
        self.draw_curve()?;
        Ok(Vec::new())
    }

    fn on_end(
        &mut self,
        summary: &RunSummary,
        model: &ShownModel<'_, B>,
    ) -> Result<(), TrainError> {
        self.draw_curve()?;
        if !summary.stopped {
            self.sample(summary.steps, model.get()?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_read_old_and_new_logs() {
        let d = tempfile::tempdir().unwrap();
        let old = d.path().join("old.csv");
        std::fs::write(
            &old,
            "step,loss,lr,sigma_mean,seconds\n1,0.5,0.0001,0.3,0.1000\n2,0.25,0.0001,0.3,0.1000\n",
        )
        .unwrap();
        assert_eq!(read_loss_history(&old), vec![(1, 0.5), (2, 0.25)]);
        assert!(read_validation_history(&old).is_empty());
        let new = d.path().join("new.csv");
        std::fs::write(
            &new,
            "step,loss,lr,sigma_mean,seconds,val_loss\n1,0.5,0.0001,0.3,0.1000,\n\
             2,0.25,0.0001,0.3,0.1000,0.375\n3,0.125,0.0001,0.3,0.1000,\n",
        )
        .unwrap();
        assert_eq!(
            read_loss_history(&new),
            vec![(1, 0.5), (2, 0.25), (3, 0.125)]
        );
        assert_eq!(read_validation_history(&new), vec![(2, 0.375)]);
        assert!(read_validation_history(&d.path().join("missing.csv")).is_empty());
    }
}
