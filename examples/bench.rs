//! LoRA training steps on a full-size Flux transformer, with random latents and text.
//!
//! ```text
//! cargo run --release --example bench -- --model flux1-dev.safetensors --base-dtype fp8 \
//!     --resolution 256 --text-tokens 256 --steps 1
//! cargo run --release --example bench -- --random dev --base-dtype fp8   # no file needed
//! cargo run --release --example bench -- --random dev --write-random /tmp/flux-random.safetensors
//! ```
//!
//! The job is `fluxlora::jobs::bench`; this file parses, calls and prints.

use std::process::ExitCode;

use clap::Parser;
use fluxlora::jobs::{bench, BenchArgs};

fn main() -> ExitCode {
    match bench(&BenchArgs::parse()) {
        Ok(outcome) => {
            print!("{outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
