//! The `train` job: a config (or the embedded tiny world) → caches → training → LoRA, then
//! the tiny-world concept score when asked.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use burn::backend::Autodiff;
use fluxlora_tiny_world::{concept_check, ConceptScores, CONCEPT_SEEDS};
use fluxlora_train::{train_session, SessionOptions, SessionReport, TrainConfig};

use crate::backend;
use crate::cli::ConfigFlags;
use crate::error::Error;

/// Arguments of the `train` job (the `train` example's command line).
#[derive(clap::Parser, Debug, Clone, Default)]
#[command(
    about = "Train a Flux LoRA from a config (default: the embedded tiny world)",
    after_help = "Every config key is also a flag, e.g. --learning_rate 1e-4 --max_train_steps \
                  1500 --backend cuda (kohya names; see fluxlora_train::TrainConfig)."
)]
pub struct TrainArgs {
    /// A training config (default: the embedded tiny world, fixtures/tiny-world/train.toml).
    pub config: Option<PathBuf>,
    /// Continue from a checkpoint folder written by an earlier run.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// After training, score the tiny-world concept, base vs base + LoRA (on by default for the
    /// tiny world).
    #[arg(long)]
    pub concept_score: bool,
    /// Config keys given as flags.
    #[command(flatten)]
    pub keys: ConfigFlags,
}

/// What a `train` job did.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// The session's report (LoRA, checkpoints, logs, caches).
    pub report: SessionReport,
    /// The concept score, when asked for and the run finished.
    pub scores: Option<ConceptScores>,
    /// Seconds from the start of the job.
    pub wall_seconds: f64,
}

/// The repository's embedded default run, with its paths made absolute.
fn default_run() -> (PathBuf, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let abs = |p: &str| format!("{:?}", root.join(p).display().to_string());
    let flags = [
        (
            "pretrained_model_name_or_path",
            abs("fixtures/tiny-world/base"),
        ),
        ("train_data_dir", abs("fixtures/tiny-world/dataset")),
        ("sample_prompts", abs("fixtures/tiny-world/prompts.txt")),
    ];
    (
        root.join("fixtures/tiny-world/train.toml"),
        flags
            .into_iter()
            .flat_map(|(k, v)| [format!("--{k}"), v])
            .collect(),
    )
}

impl TrainArgs {
    /// The config file, the flags over it, and whether to score the concept.
    fn resolved(&self) -> (PathBuf, Vec<String>, bool) {
        match &self.config {
            Some(file) => (
                file.clone(),
                self.keys.overrides.clone(),
                self.concept_score,
            ),
            None => {
                let (file, mut flags) = default_run();
                flags.extend(self.keys.overrides.iter().cloned());
                (file, flags, true)
            }
        }
    }
}

/// A stop flag set by Ctrl-C (SIGINT) or SIGTERM: the run finishes its step, saves a resumable
/// checkpoint and returns. A second signal exits at once, without saving.
pub fn stop_on_interrupt() -> Result<Arc<AtomicBool>, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without saving");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupt: finishing this step and saving a resumable checkpoint (Ctrl-C again to \
             abort)"
        );
    })?;
    Ok(stop)
}

/// Runs the `train` job; `say` receives the lines to show before training (the effective
/// config, the backend) and before scoring.
pub fn train(
    args: &TrainArgs,
    stop: Option<Arc<AtomicBool>>,
    say: &mut dyn FnMut(&str),
) -> Result<TrainOutcome, Error> {
    let t0 = Instant::now();
    let (file, flags, score) = args.resolved();
    let config = TrainConfig::load(Some(&file), &flags)?;
    say(&format!(
        "effective config ({}):\n{}",
        file.display(),
        config.to_toml()
    ));
    let kind = backend::select(Some(config.backend.as_str()))?;
    say(&format!("backend: {}", kind.name()));
    let options = SessionOptions {
        progress: !args.no_progress,
        resume: args.resume.clone(),
        stop,
    };
    let scored = config.clone();
    let (report, scores) = backend::with_backend!(kind, |B, dev| {
        let report = train_session::<Autodiff<B>>(config, &dev, options)?;
        let scores = match (&report.run.lora, score && !report.run.stopped) {
            (Some(lora), true) => {
                say(&format!(
                    "scoring the concept on held-out prompts ({CONCEPT_SEEDS} seeds each), base vs \
                     base + LoRA ..."
                ));
                Some(concept_check::<B>(&scored, lora, CONCEPT_SEEDS, &dev)?)
            }
            _ => None,
        };
        Ok::<_, Error>((report, scores))
    })?;
    Ok(TrainOutcome {
        report,
        scores,
        wall_seconds: t0.elapsed().as_secs_f64(),
    })
}

impl fmt::Display for TrainOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, s) = (&self.report, &self.report.run);
        let verb = if s.stopped { "stopped" } else { "trained" };
        let per_step = s.seconds / s.steps.max(1) as f64;
        writeln!(f)?;
        writeln!(
            f,
            "{verb} after {} steps in {:.1} s ({per_step:.3} s/it); {} images",
            s.steps, s.seconds, r.images
        )?;
        writeln!(
            f,
            "caches: {} latents built, {} reused; {} captions built, {} reused",
            r.latents.built, r.latents.reused, r.texts.built, r.texts.reused
        )?;
        if let Some(l) = s.last_loss {
            writeln!(f, "last loss: {l:.5}")?;
        }
        if let Some(line) = r.best_checkpoint_line() {
            writeln!(f, "{line}")?;
        }
        writeln!(f, "files:")?;
        for file in r.files() {
            writeln!(f, "  {}", file.display())?;
        }
        if let (true, Some(dir)) = (s.stopped, &s.checkpoint) {
            writeln!(f, "resume with: --resume {}", dir.display())?;
        }
        writeln!(f, "wall time: {:.1} s", self.wall_seconds)?;
        if let Some(c) = &self.scores {
            let (base, lora) = (100.0 * c.base, 100.0 * c.lora);
            let grid = c.grid.display();
            writeln!(
                f,
                "concept score ({} held-out samples each): base {base:.0} %, base + LoRA {lora:.0} \
                 %  (grid: {grid})",
                c.samples
            )?;
        }
        Ok(())
    }
}
