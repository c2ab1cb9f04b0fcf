//! The `lora` job: inspect, convert, resize (SVD; also LoKr/LoHa → LoRA), extract from two
//! checkpoints and merge (LoRA, LoKr, LoHa, DoRA) into a base checkpoint; host-side only
//! (`fluxlora_io::lora::ops`), no Burn backend involved.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use fluxlora_io::lora::ops::{convert_lora_file, merge_loras};
use fluxlora_io::{
    extract_lora_file, inspect_lora, resize_lora_file, Checkpoint, Dtype, ExtractOptions,
    LoraFormat, ResizeTarget, WeightedLora,
};

use crate::cli::parse_weighted;
use crate::error::Error;

/// Arguments of the `lora` job (the `lora` example's command line).
#[derive(Parser, Debug, Clone)]
#[command(about = "Inspect, convert, resize, extract and merge Flux LoRA files")]
pub struct LoraArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: LoraCommand,
}

/// A `lora` sub-command.
#[derive(Subcommand, Debug, Clone)]
pub enum LoraCommand {
    /// Summarise a LoRA: format, module kinds (LoRA, LoKr, LoHa, DoRA), ranks, alphas,
    /// parameters, metadata.
    Inspect {
        /// The LoRA file.
        file: PathBuf,
        /// Also print ‖ΔW‖_F of every module (LoKr/LoHa included).
        #[arg(long)]
        norms: bool,
    },
    /// Rewrite a LoRA (any readable format) as kohya, PEFT/diffusers or ComfyUI; LoKr/LoHa and
    /// DoRA modules go along (LoKr/LoHa have no PEFT layout: write kohya or ComfyUI).
    Convert {
        /// The LoRA to read (any readable format).
        input: PathBuf,
        /// Where to write the converted LoRA.
        output: PathBuf,
        /// The format to write.
        #[arg(long, value_enum)]
        to: Format,
        /// Weight dtype (default: the input's).
        #[arg(long, value_enum)]
        dtype: Option<SaveDtype>,
    },
    /// Lower a LoRA's rank by SVD (kohya resize_lora.py), or turn a LoKr/LoHa into a LoRA
    /// (truncated SVD of its ΔW). DoRA files are refused.
    Resize {
        /// The LoRA to resize.
        input: PathBuf,
        /// Where to write the resized LoRA.
        output: PathBuf,
        /// New rank (for LoKr/LoHa modules, the rank of the LoRA made from them); with
        /// --dynamic-fro, the largest rank allowed.
        #[arg(long, required_unless_present = "dynamic_fro")]
        rank: Option<usize>,
        /// Keep per module the fewest singular values holding this fraction of ‖ΔW‖_F (e.g.
        /// 0.9).
        #[arg(long)]
        dynamic_fro: Option<f64>,
        /// Output format (default: the input's when writable, else kohya).
        #[arg(long, value_enum)]
        to: Option<Format>,
        /// Weight dtype of the output.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: SaveDtype,
        /// Print every module's new rank and retained norm.
        #[arg(long)]
        verbose: bool,
    },
    /// Extract a LoRA from a base and a fine-tuned transformer checkpoint.
    Extract {
        /// The base transformer checkpoint.
        base: PathBuf,
        /// The fine-tuned transformer checkpoint.
        tuned: PathBuf,
        /// Where to write the extracted LoRA.
        output: PathBuf,
        /// Rank of every extracted module.
        #[arg(long)]
        rank: usize,
        /// Also extract img_in, txt_in, time/vector/guidance embedders and final_layer.
        #[arg(long)]
        all_linears: bool,
        /// Skip modules whose largest |ΔW| is at most this.
        #[arg(long, default_value_t = 1e-6)]
        min_diff: f32,
        /// Seed of the randomized SVD.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The format to write.
        #[arg(long, value_enum, default_value = "kohya")]
        to: Format,
        /// Weight dtype of the output.
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: SaveDtype,
    },
    /// Bake LoRAs (LoRA, LoKr, LoHa, DoRA) into a base transformer checkpoint, in the order
    /// given (keeps its layout and dtypes).
    Merge {
        /// The base transformer checkpoint (BFL or diffusers layout).
        base: PathBuf,
        /// Where to write the merged checkpoint.
        output: PathBuf,
        /// FILE or FILE:WEIGHT (weight 1 when omitted); repeat for several LoRAs, applied in
        /// order (DoRA depends on the weight it is applied to).
        #[arg(long = "lora", required = true, value_parser = parse_weighted)]
        loras: Vec<(PathBuf, f32)>,
    },
}

/// A LoRA file format to write.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// kohya sd-scripts keys (`lora_unet_…`), read by every tool.
    Kohya,
    /// PEFT / diffusers keys (`transformer.….lora_A.weight`).
    Peft,
    /// ComfyUI keys (`diffusion_model.…`).
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

/// A weight dtype to write.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SaveDtype {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
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

/// Runs the `lora` job and returns what it reports, as text.
pub fn lora(args: &LoraArgs) -> Result<String, Error> {
    let mut out = String::new();
    match args.command.clone() {
        LoraCommand::Inspect { file, norms } => {
            out.push_str(&inspect_lora(&file, norms)?.to_string())
        }
        LoraCommand::Convert {
            input,
            output,
            to,
            dtype,
        } => {
            let r = convert_lora_file(&input, &output, to.into(), dtype.map(Into::into))?;
            let _ = writeln!(
                out,
                "{}: {} modules ({} LoKr/LoHa, {} DoRA), {} → {} ({}), wrote {}",
                input.display(),
                r.modules,
                r.lycoris_modules,
                r.dora_modules,
                r.from,
                r.to,
                r.dtype,
                output.display()
            );
        }
        LoraCommand::Resize {
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
                    let _ = writeln!(
                        out,
                        "{:<48} {:<4} rank {:>3} → {:>3}  ‖ΔW‖ retained {:>6.2}%  σmax {:.4}",
                        m.key,
                        m.kind,
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
            let converted = r.modules.iter().filter(|m| m.kind != "lora").count();
            let _ = writeln!(
                out,
                "resized {} modules ({} LoKr/LoHa turned into LoRA) to rank {}–{}; mean ‖ΔW‖_F \
                 retained {:.2}%; wrote {}",
                r.modules.len(),
                converted,
                lo.min(hi),
                hi,
                100.0 * r.mean_fro_retained(),
                output.display()
            );
        }
        LoraCommand::Extract {
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
                let _ = writeln!(
                    out,
                    "{:<48} rank {:>3}  ‖ΔW‖ captured {:>6.2}%  max|ΔW| {:.3e}{}",
                    m.key,
                    m.rank,
                    100.0 * m.fro_retained,
                    m.max_abs_diff,
                    if m.bias { "  +bias" } else { "" }
                );
            }
            if !r.unchanged.is_empty() {
                let _ = writeln!(out, "unchanged (skipped): {}", r.unchanged.join(", "));
            }
            if !r.absent.is_empty() {
                let _ = writeln!(out, "not in the base: {}", r.absent.join(", "));
            }
            let _ = writeln!(
                out,
                "extracted {} modules; wrote {}",
                r.modules.len(),
                output.display()
            );
        }
        LoraCommand::Merge {
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
            let _ = writeln!(
                out,
                "merged {} modules ({} LoKr/LoHa, {} DoRA) into {} tensors ({} copied \
                 unchanged){}; wrote {}",
                r.merged_modules,
                r.lycoris_modules,
                r.dora_modules,
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
    Ok(out)
}
