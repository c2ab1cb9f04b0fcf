//! The `sample` job: images from a Flux base model with LoRAs applied, one PNG per prompt and
//! a grid, with kohya's prompt flags.

use std::fmt;
use std::path::PathBuf;

use fluxlora_train::sampling::prompts::{parse_prompt_file, parse_prompt_line, SampleDefaults};
use fluxlora_train::{BaseModel, ModelPaths, ModelType, SampleRun};

use crate::backend;
use crate::cli::parse_weighted;
use crate::error::Error;

/// Arguments of the `sample` job (the `sample` example's command line).
#[derive(clap::Parser, Debug, Clone)]
#[command(about = "Draw images from a Flux model with LoRAs (one PNG per prompt + a grid)")]
pub struct SampleArgs {
    /// Flux model folder (diffusers layout) or transformer .safetensors.
    #[arg(long)]
    pub model: PathBuf,
    /// Autoencoder weights (default: the model folder's `vae/`).
    #[arg(long)]
    pub ae: Option<PathBuf>,
    /// CLIP-L weights (default: the model folder's `text_encoder/`).
    #[arg(long)]
    pub clip_l: Option<PathBuf>,
    /// T5-XXL weights (default: the model folder's `text_encoder_2/`).
    #[arg(long)]
    pub t5xxl: Option<PathBuf>,
    /// A LoRA for every prompt, as FILE or FILE:WEIGHT (repeatable).
    #[arg(long = "lora", value_parser = parse_weighted)]
    pub loras: Vec<(PathBuf, f32)>,
    /// One prompt line, e.g. "a cat --w 512 --h 512 --s 20 --d 1 --g 3.5".
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    pub prompt: Option<String>,
    /// A kohya sample-prompt file (one prompt per line).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// FLUX.1 Kontext: the control image of every prompt that has no `--ci` of its own (the
    /// grid then shows control | base | LoRA).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Folder searched for `<lora:name>` tags (repeatable).
    #[arg(long = "lora-dir")]
    pub lora_dirs: Vec<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "samples")]
    pub out: PathBuf,
    /// cuda | wgpu | ndarray | auto.
    #[arg(long)]
    pub backend: Option<String>,
    /// T5 tokens per prompt (default: 512 for dev, 256 for schnell).
    #[arg(long)]
    pub t5_max_length: Option<usize>,
    /// Keep the transformer in f32 (default: bf16 where the backend supports it, as on CUDA).
    #[arg(long)]
    pub f32: bool,
}

/// What a `sample` job drew and wrote.
#[derive(Debug, Clone)]
pub struct SampleOutcome {
    /// The backend it ran on.
    pub backend: backend::BackendKind,
    /// The images, the grid, the LoRA reports and the prompts' warnings.
    pub output: fluxlora_train::sampling::inference::SampleOutput,
}

/// Runs the `sample` job; `say` receives the backend line before drawing.
pub fn sample(args: &SampleArgs, say: &mut dyn FnMut(&str)) -> Result<SampleOutcome, Error> {
    let paths = ModelPaths {
        model: Some(args.model.clone()),
        ae: args.ae.clone(),
        clip_l: args.clip_l.clone(),
        t5xxl: args.t5xxl.clone(),
    };
    let base = BaseModel::from_paths(&paths)?;
    let defaults = SampleDefaults::default();
    let mut prompts = match (&args.prompt, &args.prompts) {
        (Some(line), _) => vec![parse_prompt_line(line, &defaults)?],
        (None, Some(file)) => parse_prompt_file(file, &defaults)?,
        (None, None) => return Err(Error::Usage("give --prompt or --prompts".into())),
    };
    if let Some(control) = &args.control {
        for p in prompts.iter_mut().filter(|p| p.control.is_none()) {
            p.control = Some(control.clone());
        }
    }
    let mut run = SampleRun {
        loras: args.loras.clone(),
        prompts,
        lora_dirs: args.lora_dirs.clone(),
        t5_max_length: base.t5_tokens(args.t5_max_length, ModelType::Auto)?,
        out_dir: args.out.clone(),
        model_type: ModelType::Auto,
        base_dtype: None,
    };
    let kind = backend::select(args.backend.as_deref())?;
    say(&format!("backend: {kind}; {} prompt(s)", run.prompts.len()));
    let output = backend::with_backend!(kind, |B, dev| {
        run.base_dtype = if args.f32 {
            None
        } else {
            fluxlora_flux::bf16_if_supported::<B>(&dev)
        };
        run.run::<B>(&base, &dev)
    })?;
    Ok(SampleOutcome {
        backend: kind,
        output,
    })
}

impl fmt::Display for SampleOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.output.reports {
            write!(f, "{r}")?;
        }
        for p in self.output.paths() {
            writeln!(f, "{}", p.display())?;
        }
        Ok(())
    }
}
