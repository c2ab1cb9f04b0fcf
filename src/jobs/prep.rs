//! The `prep` job: the dataset quality report (text + JSON) and, optionally, the latent and
//! text caches built with the config's base model.

use std::fmt;
use std::path::PathBuf;

use fluxlora_data::QualitySettings;
use fluxlora_train::orchestration::prepare;
use fluxlora_train::orchestration::report::DatasetReport;
use fluxlora_train::{prepare_data, BaseModel, TrainConfig, TrainError};

use crate::backend;
use crate::error::Error;

/// Arguments of the `prep` job (the `prep` example's command line).
#[derive(clap::Parser, Debug, Clone, Default)]
#[command(
    about = "Check a LoRA dataset (quality report + preset advice), optionally build its caches"
)]
pub struct PrepArgs {
    /// Dataset folder (images + same-stem captions, or kohya `N_name` sub-folders) or a kohya
    /// dataset TOML; default: the config's dataset.
    pub dataset: Option<PathBuf>,
    /// A training config (TOML) to take the dataset, model and settings from.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Trigger word captions should contain.
    #[arg(long)]
    pub trigger: Option<String>,
    /// Training resolution (bucket area ≈ resolution²).
    #[arg(long)]
    pub resolution: Option<u32>,
    /// character | style | concept: compare the dataset with this preset's advice.
    #[arg(long)]
    pub preset: Option<String>,
    /// Caption file extension (with the dot).
    #[arg(long)]
    pub caption_extension: Option<String>,
    /// FLUX.1 Kontext edit pairs: the folder of control images (same names as the targets);
    /// the report names missing, unreadable and mismatched controls.
    #[arg(long)]
    pub control_directory: Option<PathBuf>,
    /// Variance-of-Laplacian score under which an image is reported blurry.
    #[arg(long)]
    pub blur_threshold: Option<f64>,
    /// Where to write the JSON report (default: `prep-report.json` in the output folder).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also build the latent and text caches with the config's base model.
    #[arg(long)]
    pub build_caches: bool,
    /// cuda | wgpu | ndarray | auto (for --build-caches).
    #[arg(long)]
    pub backend: Option<String>,
    /// A checkpoint folder to check before resuming from it: its layout, its state and that
    /// every tensor in it is finite.
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

/// What a `prep` job found and wrote.
#[derive(Debug, Clone)]
pub struct PrepOutcome {
    /// The report as text.
    pub report: String,
    /// Where the JSON report was written.
    pub json: PathBuf,
    /// Whether the report has blocking problems, or `problems` is not empty (then no caches
    /// were built).
    pub blocking: bool,
    /// What would stop training besides the dataset: an invalid config value, a damaged or
    /// poisoned `--resume` checkpoint. Each names its file or key.
    pub problems: Vec<String>,
    /// The `--resume` checkpoint's summary, when it passed the checks.
    pub checkpoint: Option<String>,
    /// The cache summary lines, when caches were built.
    pub caches: Vec<String>,
}

impl PrepOutcome {
    /// The documented exit code: 0 when the dataset can be trained, 2 when the dataset, the
    /// config or the `--resume` checkpoint has blocking problems (other errors exit with 1).
    pub fn exit_code(&self) -> u8 {
        if self.blocking {
            2
        } else {
            0
        }
    }
}

impl PrepArgs {
    /// The training config these arguments describe (the flags over `--config`).
    pub fn train_config(&self) -> Result<TrainConfig, Error> {
        Ok(TrainConfig::load(self.config.as_deref(), &self.flags())?)
    }

    /// The command-line settings as `TrainConfig` flags.
    fn flags(&self) -> Vec<String> {
        let mut flags: Vec<String> = Vec::new();
        let mut set = |k: &str, v: String| flags.extend([format!("--{k}"), v]);
        if let Some(d) = &self.dataset {
            let key = if d.extension().is_some_and(|e| e == "toml") {
                "dataset_config"
            } else {
                "train_data_dir"
            };
            set(key, format!("{:?}", d.display().to_string()));
        }
        if let Some(t) = &self.trigger {
            set("trigger_word", format!("{t:?}"));
        }
        if let Some(r) = self.resolution {
            set("resolution", r.to_string());
        }
        if let Some(p) = &self.preset {
            set("preset", format!("{p:?}"));
        }
        if let Some(e) = &self.caption_extension {
            set("caption_extension", format!("{e:?}"));
        }
        if let Some(d) = &self.control_directory {
            set(
                "control_directory",
                format!("{:?}", d.display().to_string()),
            );
        }
        flags
    }
}

/// Runs the `prep` job.
pub fn prep(args: &PrepArgs) -> Result<PrepOutcome, Error> {
    let mut problems = Vec::new();
    let c = match args.train_config() {
        Ok(c) => c,
        // A bad value in the config is reported with the dataset's problems, not instead of
        // them, when the command line alone names the dataset.
        Err(Error::Train(e @ TrainError::Invalid { .. })) if args.dataset.is_some() => {
            let origin = args.config.as_ref().map(|p| p.display().to_string());
            problems.push(format!(
                "{}: {e}",
                origin.unwrap_or_else(|| "command line".into())
            ));
            TrainConfig::load(None, &args.flags())?
        }
        Err(e) => return Err(e),
    };
    let mut checkpoint = None;
    if let Some(dir) = &args.resume {
        match fluxlora_train::resume::verify_checkpoint(dir) {
            Ok(state) => {
                checkpoint = Some(format!(
                    "checkpoint {}: step {}, {}, every tensor finite",
                    dir.display(),
                    state.step,
                    state.optimizer
                ))
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    let mut settings = QualitySettings {
        progress: true,
        ..Default::default()
    };
    if let Some(t) = args.blur_threshold {
        settings.blur_threshold = t;
    }
    let report = DatasetReport::build(&c, &settings)?;
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| c.output_dir.join("prep-report.json"));
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| Error::File {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let text = report.to_json();
    fluxlora_io::atomic_write(&json, |w| w.write_all(text.as_bytes()))?;
    let blocking = report.is_blocking() || !problems.is_empty();
    let mut outcome = PrepOutcome {
        report: report.to_text(),
        json,
        blocking,
        problems,
        checkpoint,
        caches: Vec::new(),
    };
    if outcome.blocking || !args.build_caches {
        return Ok(outcome);
    }
    let kind = backend::select(args.backend.as_deref().or(Some(c.backend.as_str())))?;
    let base = BaseModel::resolve(&c)?;
    let data = backend::with_backend!(kind, |B, dev| prepare_data::<B>(&c, &base, &dev, true))?;
    for (what, s) in [("latents", &data.latents), ("text embeddings", &data.texts)] {
        let secs = s.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            s.built as f64 / secs
        } else {
            0.0
        };
        let line = format!(
            "{what}: {} built, {} reused in {secs:.1} s ({rate:.2}/s)",
            s.built, s.reused
        );
        outcome.caches.push(line);
    }
    outcome
        .caches
        .push(format!("caches: {}", prepare::cache_dir(&c).display()));
    Ok(outcome)
}

impl fmt::Display for PrepOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.report)?;
        for p in &self.problems {
            writeln!(f, "blocking: {p}")?;
        }
        if let Some(c) = &self.checkpoint {
            writeln!(f, "{c}")?;
        }
        writeln!(f, "JSON report: {}", self.json.display())?;
        for line in &self.caches {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}
