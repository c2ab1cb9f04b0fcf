//! Train a Flux LoRA.
//!
//! ```text
//! cargo run --release --example train                       # the embedded tiny world (fixtures/tiny-world)
//! cargo run --release --example train -- my-run.toml         # a config file (kohya key names)
//! cargo run --release --example train -- my-run.toml --learning_rate 5e-5 --max_train_steps 2000
//! cargo run --release --example train -- my-run.toml --resume output/my-lora-step00000500
//! ```
//!
//! Every config key can be given as `--key value`; `--backend cuda|wgpu|ndarray|auto` picks the
//! device. The tiny-world run (no config) then scores the concept: the share of samples from
//! held-out prompts that show it, base alone vs base + LoRA (`--concept-score` asks for it on
//! any run whose prompts file holds tiny-world prompts). Ctrl-C (SIGINT) or SIGTERM finishes
//! the current step, saves a resumable checkpoint and exits; `--resume DIR` continues it exactly. All logic lives in `fluxlora-train`
//! (`train_session`); this file only parses arguments and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use burn::backend::Autodiff;
use fluxlora::train::tiny_world::{concept_check, CONCEPT_SEEDS};
use fluxlora::train::{train_session, SessionOptions, SessionReport, TrainConfig};

const HELP: &str = "usage: train [CONFIG.toml] [--resume CHECKPOINT_DIR] [--no-progress] [--concept-score] [--KEY VALUE ...]
  CONFIG.toml   a training config (default: the embedded tiny world, fixtures/tiny-world/train.toml)
  --resume DIR  continue from a checkpoint folder written by an earlier run
  --concept-score  after training, score the tiny-world concept, base vs base + LoRA (on by default
                for the tiny world)
  --KEY VALUE   any config key, e.g. --learning_rate 1e-4 --max_train_steps 1500 --backend cuda";

/// The repository's embedded default run, with its paths made absolute.
fn default_run() -> (PathBuf, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let abs = |p: &str| format!("{:?}", root.join(p).display().to_string());
    let flags = [
        ("pretrained_model_name_or_path", abs("fixtures/tiny-world/base")),
        ("train_data_dir", abs("fixtures/tiny-world/dataset")),
        ("sample_prompts", abs("fixtures/tiny-world/prompts.txt")),
    ];
    (root.join("fixtures/tiny-world/train.toml"), flags.into_iter().flat_map(|(k, v)| [format!("--{k}"), v]).collect())
}

struct Args {
    config: PathBuf,
    overrides: Vec<String>,
    resume: Option<PathBuf>,
    progress: bool,
    concept_score: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut raw = std::env::args().skip(1).peekable();
    let (mut config, mut overrides, mut resume, mut progress, mut concept_score) = (None, Vec::new(), None, true, false);
    while let Some(a) = raw.next() {
        match a.as_str() {
            "-h" | "--help" => return Err(HELP.into()),
            "--resume" => resume = Some(PathBuf::from(raw.next().ok_or("--resume needs a checkpoint folder")?)),
            "--no-progress" => progress = false,
            "--concept-score" => concept_score = true,
            _ if config.is_none() && overrides.is_empty() && !a.starts_with('-') => config = Some(PathBuf::from(a)),
            _ => overrides.push(a),
        }
    }
    let config = match config {
        Some(c) => c,
        None => {
            let (file, mut flags) = default_run();
            flags.append(&mut overrides);
            overrides = flags;
            concept_score = true;
            file
        }
    };
    Ok(Args { config, overrides, resume, progress, concept_score })
}

fn print_report(r: &SessionReport, wall: f64) {
    let s = &r.run;
    println!();
    println!("{} after {} steps in {:.1} s ({:.3} s/it); {} images", if s.stopped { "stopped" } else { "trained" }, s.steps, s.seconds, s.seconds / s.steps.max(1) as f64, r.images);
    println!("caches: {} latents built, {} reused; {} captions built, {} reused", r.latents.built, r.latents.reused, r.texts.built, r.texts.reused);
    if let Some(l) = s.last_loss {
        println!("last loss: {l:.5}");
    }
    if let Some(line) = r.best_checkpoint_line() {
        println!("{line}");
    }
    println!("files:");
    for f in r.files() {
        println!("  {}", f.display());
    }
    if s.stopped {
        if let Some(dir) = &s.checkpoint {
            println!("resume with: --resume {}", dir.display());
        }
    }
    println!("wall time: {wall:.1} s");
}

fn run() -> Result<(), String> {
    let t0 = std::time::Instant::now();
    let args = parse_args()?;
    let config = TrainConfig::load(Some(&args.config), &args.overrides).map_err(|e| e.to_string())?;
    println!("effective config ({}):\n{}", args.config.display(), config.to_toml());
    let kind = fluxlora::backend::select(Some(config.backend.as_str())).map_err(|e| e.to_string())?;
    println!("backend: {}", kind.name());
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: finishing this step and saving a resumable checkpoint (Ctrl-C again to abort)");
    })
    .map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;
    let options = SessionOptions { progress: args.progress, resume: args.resume, stop: Some(stop) };
    let scored = config.clone();
    let (report, scores) = fluxlora::with_backend!(kind, |B, dev| {
        let report = train_session::<Autodiff<B>>(config, &dev, options).map_err(|e| e.to_string())?;
        let scores = match (&report.run.lora, args.concept_score && !report.run.stopped) {
            (Some(lora), true) => {
                println!("scoring the concept on held-out prompts ({CONCEPT_SEEDS} seeds each), base vs base + LoRA ...");
                Some(concept_check::<B>(&scored, lora, CONCEPT_SEEDS, &dev).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        Ok::<_, String>((report, scores))
    })?;
    print_report(&report, t0.elapsed().as_secs_f64());
    if let Some(s) = scores {
        println!(
            "concept score ({} held-out samples each): base {:.0} %, base + LoRA {:.0} %  (grid: {})",
            s.samples,
            100.0 * s.base,
            100.0 * s.lora,
            s.grid.display()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
