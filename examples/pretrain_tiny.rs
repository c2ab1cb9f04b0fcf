//! Builds the embedded tiny world (`fixtures/tiny-world/`): pretrains a small Flux autoencoder
//! and transformer on a procedural image domain, then writes the model folder (`base/`), the
//! `sks` concept dataset (`dataset/`) and the held-out sample prompts (`prompts.txt`).
//! Deterministic from `--seed`. All logic lives in `fluxlora::train::tiny_world`.
//!
//! ```text
//! cargo run --release --example pretrain_tiny                       # rebuild the committed world
//! cargo run --release --example pretrain_tiny -- --out /tmp/world --ae-steps 50 --flux-steps 50
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use burn::backend::Autodiff;
use clap::Parser;
use fluxlora::train::tiny_world::{build_tiny_world, write_dataset, PretrainOptions, PretrainReport};

#[derive(Parser, Debug)]
#[command(about = "Pretrain the tiny Flux world on its procedural domain and write it")]
struct Args {
    /// Output folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A model folder whose text encoders and tokenizers are copied (default fixtures/tiny-base).
    #[arg(long)]
    text_encoders: Option<PathBuf>,
    /// Seed of everything.
    #[arg(long)]
    seed: Option<u64>,
    /// Autoencoder training steps.
    #[arg(long)]
    ae_steps: Option<usize>,
    /// Autoencoder steps of the second (saturated-colour) stage.
    #[arg(long)]
    ae_refine_steps: Option<usize>,
    /// Skip the first autoencoder stage: start the second from this `ae.safetensors`.
    #[arg(long)]
    ae_from: Option<PathBuf>,
    /// Skip autoencoder training: use this finished `vae/` folder (ae.safetensors + config.json).
    #[arg(long)]
    ae_trained: Option<PathBuf>,
    /// Transformer width (heads of 32; MLP 4× wide).
    #[arg(long)]
    hidden: Option<usize>,
    /// Transformer batch size.
    #[arg(long)]
    flux_batch: Option<usize>,
    /// Transformer peak learning rate.
    #[arg(long)]
    flux_lr: Option<f64>,
    /// Transformer training steps per stage.
    #[arg(long)]
    flux_steps: Option<usize>,
    /// Transformer stages (each after the first a warm restart at half the peak learning rate).
    #[arg(long)]
    flux_stages: Option<usize>,
    /// Skip the first transformer stage: start the second from this `flux1-tiny.safetensors`.
    #[arg(long)]
    flux_from: Option<PathBuf>,
    /// Distinct images the transformer trains on.
    #[arg(long)]
    flux_images: Option<usize>,
    /// Only (re)write the concept dataset and the held-out prompts (no training).
    #[arg(long)]
    dataset_only: bool,
    /// cuda | wgpu | ndarray | auto.
    #[arg(long)]
    backend: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut o = PretrainOptions::tiny_world(
        args.text_encoders.unwrap_or_else(|| fixtures.join("tiny-base")),
        args.out.unwrap_or_else(|| fixtures.join("tiny-world")),
    );
    o.seed = args.seed.unwrap_or(o.seed);
    o.ae_steps = args.ae_steps.unwrap_or(o.ae_steps);
    o.ae_refine_steps = args.ae_refine_steps.unwrap_or(o.ae_refine_steps);
    o.ae_from = args.ae_from;
    o.ae_trained = args.ae_trained;
    if let Some(h) = args.hidden {
        o = match o.with_hidden(h) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
    }
    o.flux_batch = args.flux_batch.unwrap_or(o.flux_batch);
    o.flux_lr = args.flux_lr.unwrap_or(o.flux_lr);
    o.flux_steps = args.flux_steps.unwrap_or(o.flux_steps);
    o.flux_stages = args.flux_stages.unwrap_or(o.flux_stages);
    o.flux_from = args.flux_from;
    o.flux_images = args.flux_images.unwrap_or(o.flux_images);
    if args.dataset_only {
        let mut report = PretrainReport::default();
        return match write_dataset(&o, &mut report) {
            Ok(()) => {
                println!("wrote {} files into {}", report.files.len(), o.out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let kind = match fluxlora::backend::select(args.backend.as_deref()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("building the tiny world in {} on {kind} (seed {})", o.out.display(), o.seed);
    let mut progress = |line: &str| println!("  {line}");
    match fluxlora::with_backend!(kind, |B, dev| build_tiny_world::<Autodiff<B>>(&o, &mut progress, &dev)) {
        Ok(r) => {
            println!("autoencoder: loss {:.4} → {:.4} in {:.0} s; latent scale {:.4}, shift {:.4}", r.ae_loss.0, r.ae_loss.1, r.ae_seconds, r.scale_shift.0, r.scale_shift.1);
            println!("transformer: loss {:.4} → {:.4} in {:.0} s", r.flux_loss.0, r.flux_loss.1, r.flux_seconds);
            println!("wrote {} files, e.g. {}", r.files.len(), o.out.join("base").join("preview.png").display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
