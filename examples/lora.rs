//! LoRA file tools: inspect, convert, resize (SVD), extract from two checkpoints, merge into a
//! base checkpoint. LyCORIS files (LoKr, LoHa, DoRA) are inspected, converted between kohya and
//! ComfyUI, merged, and — LoKr / LoHa — turned into a plain LoRA by `resize` (the SVD of their
//! ΔW), for tools that read only LoRA.
//!
//! ```text
//! cargo run --release --example lora -- inspect my_lora.safetensors --norms
//! cargo run --release --example lora -- convert in.safetensors out.safetensors --to comfyui
//! cargo run --release --example lora -- resize in.safetensors out.safetensors --rank 8
//! cargo run --release --example lora -- resize lokr.safetensors as_lora.safetensors --rank 32
//! cargo run --release --example lora -- resize in.safetensors out.safetensors \
//!     --dynamic-fro 0.9 --rank 32
//! cargo run --release --example lora -- extract flux1-dev.safetensors tuned.safetensors \
//!     out.safetensors --rank 32
//! cargo run --release --example lora -- merge flux1-dev.safetensors merged.safetensors \
//!     --lora a.safetensors:0.8 --lora b.safetensors:0.5
//! ```
//!
//! No Burn backend is involved. The job is `fluxlora::jobs::lora`; this file parses, calls and
//! prints.

use std::process::ExitCode;

use clap::Parser;
use fluxlora::jobs::{lora, LoraArgs};

fn main() -> ExitCode {
    match lora(&LoraArgs::parse()) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
