//! Draw images from a Flux base model with LoRAs applied: one PNG per prompt plus a grid.
//!
//! ```text
//! cargo run --release --example sample -- --model FLUX.1-dev/ --lora my_lora.safetensors:0.8 \
//!     --prompt "sks person in a garden --w 1024 --h 1024 --s 20 --d 1 --g 3.5" --out samples/
//! cargo run --release --example sample -- --model flux1-dev.safetensors --ae ae.safetensors \
//!     --clip-l clip_l.safetensors --t5xxl t5xxl.safetensors --prompts prompts.txt --lora-dir loras/
//! ```
//!
//! Prompts use kohya's sample-prompt syntax (`--w --h --s --d --g`, see
//! `fluxlora_train::prompts`); `<lora:name:weight>` tags in a prompt add `loras/name.safetensors`
//! for that prompt only. All logic lives in `fluxlora_train::inference`; this file parses
//! arguments and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fluxlora::train::prompts::{parse_prompt_file, parse_prompt_line, SampleDefaults};
use fluxlora::train::{BaseModel, ModelType, SampleRun, TrainConfig};

#[derive(Parser, Debug)]
#[command(about = "Draw images from a Flux model with LoRAs (one PNG per prompt + a grid)")]
struct Args {
    /// Flux model folder (diffusers layout) or transformer .safetensors.
    #[arg(long)]
    model: PathBuf,
    /// Autoencoder weights (default: the model folder's `vae/`).
    #[arg(long)]
    ae: Option<PathBuf>,
    /// CLIP-L weights (default: the model folder's `text_encoder/`).
    #[arg(long)]
    clip_l: Option<PathBuf>,
    /// T5-XXL weights (default: the model folder's `text_encoder_2/`).
    #[arg(long)]
    t5xxl: Option<PathBuf>,
    /// A LoRA for every prompt, as FILE or FILE:WEIGHT (repeatable).
    #[arg(long = "lora", value_parser = parse_weighted)]
    loras: Vec<(PathBuf, f32)>,
    /// One prompt line, e.g. "a cat --w 512 --h 512 --s 20 --d 1 --g 3.5".
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    prompt: Option<String>,
    /// A kohya sample-prompt file (one prompt per line).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Folder searched for `<lora:name>` tags (repeatable).
    #[arg(long = "lora-dir")]
    lora_dirs: Vec<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "samples")]
    out: PathBuf,
    /// cuda | wgpu | ndarray | auto.
    #[arg(long)]
    backend: Option<String>,
    /// T5 tokens per prompt (default: 512 for dev, 256 for schnell).
    #[arg(long)]
    t5_max_length: Option<usize>,
    /// Keep the transformer in f32 (default: bf16 where the backend supports it, as on CUDA).
    #[arg(long)]
    f32: bool,
}

fn parse_weighted(s: &str) -> Result<(PathBuf, f32), String> {
    match s.rsplit_once(':') {
        Some((file, w)) if !file.is_empty() => match w.parse::<f32>() {
            Ok(w) if w.is_finite() => Ok((file.into(), w)),
            _ => Err(format!("`{w}` in `{s}` is not a finite weight; write FILE:WEIGHT, e.g. lora.safetensors:0.8")),
        },
        _ => Ok((s.into(), 1.0)),
    }
}

fn run(args: Args) -> Result<(), String> {
    let config = TrainConfig {
        pretrained_model_name_or_path: Some(args.model.clone()),
        ae: args.ae.clone(),
        clip_l: args.clip_l.clone(),
        t5xxl: args.t5xxl.clone(),
        t5xxl_max_token_length: args.t5_max_length,
        ..Default::default()
    };
    let base = BaseModel::resolve(&config).map_err(|e| e.to_string())?;
    let defaults = SampleDefaults::default();
    let prompts = match (&args.prompt, &args.prompts) {
        (Some(line), _) => vec![parse_prompt_line(line, &defaults).map_err(|e| e.to_string())?],
        (None, Some(file)) => parse_prompt_file(file, &defaults).map_err(|e| e.to_string())?,
        (None, None) => return Err("give --prompt or --prompts".into()),
    };
    let sample = SampleRun {
        loras: args.loras.clone(),
        prompts,
        lora_dirs: args.lora_dirs.clone(),
        t5_max_length: base.t5_max_length(&config).map_err(|e| e.to_string())?,
        out_dir: args.out.clone(),
        model_type: ModelType::Auto,
        base_dtype: None,
    };
    let kind = fluxlora::backend::select(args.backend.as_deref()).map_err(|e| e.to_string())?;
    println!("backend: {kind}; {} prompt(s)", sample.prompts.len());
    let f32 = args.f32;
    let out = fluxlora::with_backend!(kind, |B, dev| {
        let mut run = sample;
        run.base_dtype = if f32 { None } else { fluxlora::flux::bf16_if_supported::<B>(&dev) };
        run.run::<B>(&base, &dev)
    })
    .map_err(|e| e.to_string())?;
    for w in &out.warnings {
        eprintln!("warning: {w}");
    }
    for r in &out.reports {
        print!("{r}");
    }
    for p in out.paths() {
        println!("{}", p.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
