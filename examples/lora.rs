//! LoRA file tools: inspect, convert, resize (SVD), extract from two checkpoints, merge into a
//! base checkpoint.
//!
//! ```text
//! cargo run --release --example lora -- inspect my_lora.safetensors --norms
//! cargo run --release --example lora -- convert in.safetensors out.safetensors --to comfyui
//! cargo run --release --example lora -- resize in.safetensors out.safetensors --rank 8
//! cargo run --release --example lora -- resize in.safetensors out.safetensors --dynamic-fro 0.9 --rank 32
//! cargo run --release --example lora -- extract flux1-dev.safetensors tuned.safetensors out.safetensors --rank 32
//! cargo run --release --example lora -- merge flux1-dev.safetensors merged.safetensors --lora a.safetensors:0.8 --lora b.safetensors:0.5
//! ```
//!
//! All logic lives in `fluxlora_io::lora::ops`; this file parses arguments and prints. No
//! Burn backend is involved.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fluxlora_io::lora::ops::{convert_lora_file, merge_loras};
use fluxlora_io::{
    extract_lora_file, inspect_lora, resize_lora_file, Checkpoint, Dtype, ExtractOptions,
    LoraFormat, ResizeTarget, WeightedLora,
};

#[derive(Parser, Debug)]
#[command(about = "Inspect, convert, resize, extract and merge Flux LoRA files")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Summarise a LoRA: format, modules, ranks, alphas, parameters, metadata.
    Inspect {
        file: PathBuf,
        /// Also print ‖ΔW‖_F of every module.
        #[arg(long)]
        norms: bool,
    },
    /// Rewrite a LoRA (any readable format) as kohya, PEFT/diffusers or ComfyUI.
    Convert {
        input: PathBuf,
        output: PathBuf,
        #[arg(long, value_enum)]
        to: Format,
        /// Weight dtype (default: the input's).
        #[arg(long, value_enum)]
        dtype: Option<SaveDtype>,
    },
    /// Lower a LoRA's rank by SVD (kohya resize_lora.py).
    Resize {
        input: PathBuf,
        output: PathBuf,
        /// New rank; with --dynamic-fro, the largest rank allowed.
        #[arg(long, required_unless_present = "dynamic_fro")]
        rank: Option<usize>,
        /// Keep per module the fewest singular values holding this fraction of ‖ΔW‖_F (e.g. 0.9).
        #[arg(long)]
        dynamic_fro: Option<f64>,
        /// Output format (default: the input's when writable, else kohya).
        #[arg(long, value_enum)]
        to: Option<Format>,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: SaveDtype,
        /// Print every module's new rank and retained norm.
        #[arg(long)]
        verbose: bool,
    },
    /// Extract a LoRA from a base and a fine-tuned transformer checkpoint.
    Extract {
        base: PathBuf,
        tuned: PathBuf,
        output: PathBuf,
        #[arg(long)]
        rank: usize,
        /// Also extract img_in, txt_in, time/vector/guidance embedders and final_layer.
        #[arg(long)]
        all_linears: bool,
        /// Skip modules whose largest |ΔW| is at most this.
        #[arg(long, default_value_t = 1e-6)]
        min_diff: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value = "kohya")]
        to: Format,
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: SaveDtype,
    },
    /// Bake LoRAs into a base transformer checkpoint (keeps its layout and dtypes).
    Merge {
        base: PathBuf,
        output: PathBuf,
        /// FILE or FILE:WEIGHT (weight 1 when omitted); repeat for several LoRAs.
        #[arg(long = "lora", required = true, value_parser = parse_weighted)]
        loras: Vec<(PathBuf, f32)>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Kohya,
    Peft,
    Comfyui,
}

impl From<Format> for LoraFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Kohya => LoraFormat::Kohya,
            Format::Peft => LoraFormat::Peft,
            Format::Comfyui => LoraFormat::ComfyUi,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SaveDtype {
    F32,
    F16,
    Bf16,
}

impl From<SaveDtype> for Dtype {
    fn from(d: SaveDtype) -> Self {
        match d {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::F16 => Dtype::F16,
            SaveDtype::Bf16 => Dtype::BF16,
        }
    }
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

fn run(args: Args) -> fluxlora_io::Result<()> {
    match args.command {
        Command::Inspect { file, norms } => print!("{}", inspect_lora(&file, norms)?),
        Command::Convert {
            input,
            output,
            to,
            dtype,
        } => {
            let r = convert_lora_file(&input, &output, to.into(), dtype.map(Into::into))?;
            println!(
                "{}: {} modules, {} → {} ({}), wrote {}",
                input.display(),
                r.modules,
                r.from,
                r.to,
                r.dtype,
                output.display()
            );
        }
        Command::Resize {
            input,
            output,
            rank,
            dynamic_fro,
            to,
            dtype,
            verbose,
        } => {
            let target = match dynamic_fro {
                Some(fraction) => ResizeTarget::FroFraction {
                    fraction,
                    max_rank: rank,
                },
                None => ResizeTarget::Rank(rank.unwrap_or_default()),
            };
            let r = resize_lora_file(
                &input,
                &output,
                target,
                to.map(Into::into),
                Some(dtype.into()),
            )?;
            if verbose {
                for m in &r.modules {
                    println!(
                        "{:<48} rank {:>3} → {:>3}  ‖ΔW‖ retained {:>6.2}%  σmax {:.4}",
                        m.key,
                        m.old_rank,
                        m.new_rank,
                        100.0 * m.fro_retained,
                        m.sigma_max
                    );
                }
            }
            let (lo, hi) = r.modules.iter().fold((usize::MAX, 0), |(lo, hi), m| {
                (lo.min(m.new_rank), hi.max(m.new_rank))
            });
            println!(
                "resized {} modules to rank {}–{}; mean ‖ΔW‖_F retained {:.2}%; wrote {}",
                r.modules.len(),
                lo.min(hi),
                hi,
                100.0 * r.mean_fro_retained(),
                output.display()
            );
        }
        Command::Extract {
            base,
            tuned,
            output,
            rank,
            all_linears,
            min_diff,
            seed,
            to,
            dtype,
        } => {
            let opts = ExtractOptions {
                all_linears,
                min_diff,
                seed,
                ..ExtractOptions::new(rank)
            };
            let r = extract_lora_file(&base, &tuned, &output, &opts, to.into(), dtype.into())?;
            for m in &r.modules {
                println!(
                    "{:<48} rank {:>3}  ‖ΔW‖ captured {:>6.2}%  max|ΔW| {:.3e}{}",
                    m.key,
                    m.rank,
                    100.0 * m.fro_retained,
                    m.max_abs_diff,
                    if m.bias { "  +bias" } else { "" }
                );
            }
            if !r.unchanged.is_empty() {
                println!("unchanged (skipped): {}", r.unchanged.join(", "));
            }
            if !r.absent.is_empty() {
                println!("not in the base: {}", r.absent.join(", "));
            }
            println!(
                "extracted {} modules; wrote {}",
                r.modules.len(),
                output.display()
            );
        }
        Command::Merge {
            base,
            output,
            loras,
        } => {
            let loras = loras
                .into_iter()
                .map(|(p, w)| WeightedLora::open(p, w))
                .collect::<fluxlora_io::Result<Vec<_>>>()?;
            let ckpt = Checkpoint::open(&base)?;
            let r = merge_loras(&ckpt, &loras, &output)?;
            println!(
                "merged {} LoRA modules into {} tensors ({} copied unchanged){}; wrote {}",
                r.merged_modules,
                r.modified_tensors.len(),
                r.copied_tensors,
                if r.skipped_text_encoder > 0 {
                    format!("; skipped {} text-encoder modules", r.skipped_text_encoder)
                } else {
                    String::new()
                },
                output.display()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
