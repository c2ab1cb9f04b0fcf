//! Draw images from a Flux base model with LoRAs applied: one PNG per prompt plus a grid.
//!
//! ```text
//! cargo run --release --example sample -- --model FLUX.1-dev/ --lora my_lora.safetensors:0.8 \
//!     --prompt "sks person in a garden --w 1024 --h 1024 --s 20 --d 1 --g 3.5" --out samples/
//! cargo run --release --example sample -- --model flux1-dev.safetensors --ae ae.safetensors \
//!     --clip-l clip_l.safetensors --t5xxl t5xxl.safetensors --prompts prompts.txt \
//!     --lora-dir loras/
//! ```
//!
//! Prompts use kohya's sample-prompt syntax (`--w --h --s --d --g`, see
//! `fluxlora_train::sampling::prompts`); `<lora:name:weight>` tags in a prompt add
//! `loras/name.safetensors`
//! for that prompt only. The job is `fluxlora::jobs::sample`; this file parses, calls and prints.

use std::process::ExitCode;

use clap::Parser;
use fluxlora::jobs::{sample, SampleArgs};

fn main() -> ExitCode {
    match sample(&SampleArgs::parse(), &mut |line| println!("{line}")) {
        Ok(outcome) => {
            for w in &outcome.output.warnings {
                eprintln!("warning: {w}");
            }
            print!("{outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
