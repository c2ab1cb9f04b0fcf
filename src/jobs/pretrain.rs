//! The `pretrain_tiny` job: rebuilds the embedded tiny world (`fixtures/tiny-world/`), a small
//! Flux autoencoder and transformer pretrained on a procedural domain, the `sks` concept dataset
//! and the held-out prompts; deterministic from the seed.

use std::fmt;
use std::path::PathBuf;

use burn::backend::Autodiff;
use fluxlora_tiny_world::{
    build_kontext_world, build_tiny_world, write_dataset, write_kontext_dataset, KontextOptions,
    KontextReport, PretrainOptions, PretrainReport,
};

use crate::backend;
use crate::error::Error;

/// Arguments of the `pretrain_tiny` job (the `pretrain_tiny` example's command line).
#[derive(clap::Parser, Debug, Clone, Default)]
#[command(about = "Pretrain the tiny Flux world on its procedural domain and write it")]
pub struct PretrainArgs {
    /// Output folder.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A model folder whose text encoders and tokenizers are copied (default fixtures/tiny-base).
    #[arg(long)]
    pub text_encoders: Option<PathBuf>,
    /// Seed of everything.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Autoencoder training steps.
    #[arg(long)]
    pub ae_steps: Option<usize>,
    /// Autoencoder steps of the second (saturated-colour) stage.
    #[arg(long)]
    pub ae_refine_steps: Option<usize>,
    /// Skip the first autoencoder stage: start the second from this `ae.safetensors`.
    #[arg(long)]
    pub ae_from: Option<PathBuf>,
    /// Skip autoencoder training: use this finished `vae/` folder (ae.safetensors + config.json).
    #[arg(long)]
    pub ae_trained: Option<PathBuf>,
    /// Transformer width (heads of 32; MLP 4× wide).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Transformer batch size.
    #[arg(long)]
    pub flux_batch: Option<usize>,
    /// Transformer peak learning rate.
    #[arg(long)]
    pub flux_lr: Option<f64>,
    /// Transformer training steps per stage.
    #[arg(long)]
    pub flux_steps: Option<usize>,
    /// Transformer stages (each after the first a warm restart at half the peak learning rate).
    #[arg(long)]
    pub flux_stages: Option<usize>,
    /// Skip the first transformer stage: start the second from this `flux1-tiny.safetensors`.
    #[arg(long)]
    pub flux_from: Option<PathBuf>,
    /// Distinct images the transformer trains on.
    #[arg(long)]
    pub flux_images: Option<usize>,
    /// Only (re)write the concept dataset and the held-out prompts (no training).
    #[arg(long)]
    pub dataset_only: bool,
    /// Build the tiny Kontext world instead (`fixtures/tiny-world/kontext`): a Kontext base
    /// fine-tuned from the tiny world's base on edit pairs, and an edit-pair dataset. The
    /// `--flux-*` options and `--seed` / `--out` apply to it (`--flux-images`: distinct pairs).
    #[arg(long)]
    pub kontext: bool,
    /// Edit pairs in the Kontext dataset (`--kontext`; the concept edit's training pairs).
    #[arg(long)]
    pub concept_pairs: Option<usize>,
    /// cuda | wgpu | ndarray | auto.
    #[arg(long)]
    pub backend: Option<String>,
}

impl PretrainArgs {
    /// The pretraining options: the tiny world's, with these arguments over them.
    pub fn options(&self) -> Result<PretrainOptions, Error> {
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        let mut o = PretrainOptions::tiny_world(
            self.text_encoders
                .clone()
                .unwrap_or_else(|| fixtures.join("tiny-base")),
            self.out
                .clone()
                .unwrap_or_else(|| fixtures.join("tiny-world")),
        );
        o.seed = self.seed.unwrap_or(o.seed);
        o.ae_steps = self.ae_steps.unwrap_or(o.ae_steps);
        o.ae_refine_steps = self.ae_refine_steps.unwrap_or(o.ae_refine_steps);
        o.ae_from = self.ae_from.clone();
        o.ae_trained = self.ae_trained.clone();
        if let Some(h) = self.hidden {
            o = o.with_hidden(h)?;
        }
        o.flux_batch = self.flux_batch.unwrap_or(o.flux_batch);
        o.flux_lr = self.flux_lr.unwrap_or(o.flux_lr);
        o.flux_steps = self.flux_steps.unwrap_or(o.flux_steps);
        o.flux_stages = self.flux_stages.unwrap_or(o.flux_stages);
        o.flux_from = self.flux_from.clone();
        o.flux_images = self.flux_images.unwrap_or(o.flux_images);
        Ok(o)
    }
}

/// What a `pretrain_tiny` job did.
#[derive(Debug, Clone)]
pub struct PretrainOutcome {
    /// The options it ran with (the output folder among them).
    pub options: PretrainOptions,
    /// Losses, timings and the files written.
    pub report: PretrainReport,
    /// Whether only the dataset and prompts were written (`--dataset-only`).
    pub dataset_only: bool,
    /// Whether the tiny Kontext world was built (`--kontext`; only the transformer line of the
    /// report applies).
    pub kontext: bool,
}

impl PretrainArgs {
    /// The tiny Kontext world's options, with these arguments over them.
    pub fn kontext_options(&self) -> KontextOptions {
        let world = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-world");
        let mut o = KontextOptions::tiny_world(
            world.join("base"),
            self.out.clone().unwrap_or_else(|| world.join("kontext")),
        );
        o.seed = self.seed.unwrap_or(o.seed);
        o.steps = self.flux_steps.unwrap_or(o.steps);
        o.batch = self.flux_batch.unwrap_or(o.batch);
        o.lr = self.flux_lr.unwrap_or(o.lr);
        o.pairs = self.flux_images.unwrap_or(o.pairs);
        o.concept_pairs = self.concept_pairs.unwrap_or(o.concept_pairs);
        o
    }
}

/// The `--kontext` build: its report in the shape of the tiny world's.
fn pretrain_kontext(
    args: &PretrainArgs,
    say: &mut dyn FnMut(&str),
) -> Result<PretrainOutcome, Error> {
    let o = args.kontext_options();
    let mut report = KontextReport::default();
    if !args.dataset_only {
        let kind = backend::select(args.backend.as_deref())?;
        say(&format!(
            "building the tiny Kontext world in {} on {kind} (seed {})",
            o.out.display(),
            o.seed
        ));
        let mut progress = |line: &str| say(&format!("  {line}"));
        report = backend::with_backend!(kind, |B, dev| build_kontext_world::<Autodiff<B>>(
            &o,
            &mut progress,
            &dev
        ))?;
    } else {
        write_kontext_dataset(&o, &mut report)?;
    }
    let mut options = args.options()?;
    options.out = o.out;
    Ok(PretrainOutcome {
        options,
        report: PretrainReport {
            flux_loss: report.loss,
            flux_seconds: report.seconds,
            files: report.files,
            ..Default::default()
        },
        dataset_only: args.dataset_only,
        kontext: true,
    })
}

/// Runs the `pretrain_tiny` job; `say` receives the progress lines.
pub fn pretrain_tiny(
    args: &PretrainArgs,
    say: &mut dyn FnMut(&str),
) -> Result<PretrainOutcome, Error> {
    if args.kontext {
        return pretrain_kontext(args, say);
    }
    let options = args.options()?;
    if args.dataset_only {
        let mut report = PretrainReport::default();
        write_dataset(&options, &mut report)?;
        return Ok(PretrainOutcome {
            options,
            report,
            dataset_only: true,
            kontext: false,
        });
    }
    let kind = backend::select(args.backend.as_deref())?;
    say(&format!(
        "building the tiny world in {} on {kind} (seed {})",
        options.out.display(),
        options.seed
    ));
    let mut progress = |line: &str| say(&format!("  {line}"));
    let report = backend::with_backend!(kind, |B, dev| build_tiny_world::<Autodiff<B>>(
        &options,
        &mut progress,
        &dev
    ))?;
    Ok(PretrainOutcome {
        options,
        report,
        dataset_only: false,
        kontext: false,
    })
}

impl fmt::Display for PretrainOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (r, out) = (&self.report, &self.options.out);
        if self.dataset_only {
            return writeln!(f, "wrote {} files into {}", r.files.len(), out.display());
        }
        if self.kontext {
            return writeln!(
                f,
                "kontext base: loss {:.4} → {:.4} in {:.0} s; wrote {} files, e.g. {}",
                r.flux_loss.0,
                r.flux_loss.1,
                r.flux_seconds,
                r.files.len(),
                out.join("base").join("preview.png").display()
            );
        }
        let (ae, flux, (scale, shift)) = (r.ae_loss, r.flux_loss, r.scale_shift);
        writeln!(
            f,
            "autoencoder: loss {:.4} → {:.4} in {:.0} s; latent scale {scale:.4}, shift \
             {shift:.4}",
            ae.0, ae.1, r.ae_seconds
        )?;
        writeln!(
            f,
            "transformer: loss {:.4} → {:.4} in {:.0} s",
            flux.0, flux.1, r.flux_seconds
        )?;
        writeln!(
            f,
            "wrote {} files, e.g. {}",
            r.files.len(),
            out.join("base").join("preview.png").display()
        )
    }
}
