//! Check a dataset before training: images per bucket, missing captions, near-duplicates,
//! blurry and too-small images, captions without the trigger word, tag frequencies, and the
//! preset's advice; text on the terminal and JSON on disk. Optionally builds the latent and text
//! caches with a base model (and reports the throughput).
//!
//! ```text
//! cargo run --release --example prep -- DATASET --trigger sks --resolution 1024 --preset character
//! cargo run --release --example prep -- dataset.toml --json report.json
//! cargo run --release --example prep -- DATASET --config train.toml --build-caches
//! ```
//!
//! Exit code: 0 when the dataset can be trained, 2 when it has blocking problems (unreadable or
//! corrupt images, ...), 1 on any other error. All logic lives in `fluxlora-train` and
//! `fluxlora-data`; this file only parses arguments and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fluxlora::train::{prepare_data, report::DatasetReport, BaseModel, TrainConfig};
use fluxlora_data::QualitySettings;

#[derive(Parser, Debug)]
#[command(about = "Check a LoRA dataset (quality report + preset advice), optionally build its caches")]
struct Args {
    /// Dataset folder (images + same-stem captions, or kohya `N_name` sub-folders) or a kohya
    /// dataset TOML; default: the config's dataset.
    dataset: Option<PathBuf>,
    /// A training config (TOML) to take the dataset, model and settings from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Trigger word captions should contain.
    #[arg(long)]
    trigger: Option<String>,
    /// Training resolution (bucket area ≈ resolution²).
    #[arg(long)]
    resolution: Option<u32>,
    /// character | style | concept: compare the dataset with this preset's advice.
    #[arg(long)]
    preset: Option<String>,
    /// Caption file extension (with the dot).
    #[arg(long)]
    caption_extension: Option<String>,
    /// Variance-of-Laplacian score under which an image is reported blurry.
    #[arg(long)]
    blur_threshold: Option<f64>,
    /// Where to write the JSON report (default: `prep-report.json` in the output folder).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also build the latent and text caches with the config's base model.
    #[arg(long)]
    build_caches: bool,
    /// cuda | wgpu | ndarray | auto (for --build-caches).
    #[arg(long)]
    backend: Option<String>,
}

fn config(args: &Args) -> Result<TrainConfig, String> {
    let mut flags: Vec<String> = Vec::new();
    let mut set = |k: &str, v: String| flags.extend([format!("--{k}"), v]);
    if let Some(d) = &args.dataset {
        let key = if d.extension().is_some_and(|e| e == "toml") { "dataset_config" } else { "train_data_dir" };
        set(key, format!("{:?}", d.display().to_string()));
    }
    if let Some(t) = &args.trigger {
        set("trigger_word", format!("{t:?}"));
    }
    if let Some(r) = args.resolution {
        set("resolution", r.to_string());
    }
    if let Some(p) = &args.preset {
        set("preset", format!("{p:?}"));
    }
    if let Some(e) = &args.caption_extension {
        set("caption_extension", format!("{e:?}"));
    }
    TrainConfig::load(args.config.as_deref(), &flags).map_err(|e| e.to_string())
}

fn run(args: &Args) -> Result<bool, String> {
    let c = config(args)?;
    let mut settings = QualitySettings { progress: true, ..Default::default() };
    if let Some(t) = args.blur_threshold {
        settings.blur_threshold = t;
    }
    let report = DatasetReport::build(&c, &settings).map_err(|e| e.to_string())?;
    println!("{}", report.to_text());
    let json = args.json.clone().unwrap_or_else(|| c.output_dir.join("prep-report.json"));
    if let Some(dir) = json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let text = report.to_json();
    fluxlora_io::atomic_write(&json, |w| w.write_all(text.as_bytes())).map_err(|e| e.to_string())?;
    println!("JSON report: {}", json.display());
    if report.is_blocking() {
        return Ok(false);
    }
    if args.build_caches {
        let kind = fluxlora::backend::select(args.backend.as_deref().or(Some(c.backend.as_str()))).map_err(|e| e.to_string())?;
        let base = BaseModel::resolve(&c).map_err(|e| e.to_string())?;
        let data = fluxlora::with_backend!(kind, |B, dev| prepare_data::<B>(&c, &base, &dev, true)).map_err(|e| e.to_string())?;
        for (what, s) in [("latents", &data.latents), ("text embeddings", &data.texts)] {
            let secs = s.elapsed.as_secs_f64();
            let rate = if secs > 0.0 { s.built as f64 / secs } else { 0.0 };
            println!("{what}: {} built, {} reused in {secs:.1} s ({rate:.2}/s)", s.built, s.reused);
        }
        println!("caches: {}", fluxlora::train::prepare::cache_dir(&c).display());
    }
    Ok(true)
}

fn main() -> ExitCode {
    match run(&Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("blocking problems found (listed above); fix them, or set skip_bad_images in the dataset config");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
