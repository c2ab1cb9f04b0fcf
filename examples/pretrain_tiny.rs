//! Builds the embedded tiny world (`fixtures/tiny-world/`): pretrains a small Flux autoencoder
//! and transformer on a procedural image domain, then writes the model folder (`base/`), the
//! `sks` concept dataset (`dataset/`) and the held-out sample prompts (`prompts.txt`).
//! Deterministic from `--seed`. The job is `fluxlora::jobs::pretrain_tiny`; this file parses,
//! calls and prints.
//!
//! ```text
//! cargo run --release --example pretrain_tiny                       # rebuild the committed world
//! cargo run --release --example pretrain_tiny -- --out /tmp/world --ae-steps 50 --flux-steps 50
//! ```

use std::process::ExitCode;

use clap::Parser;
use fluxlora::jobs::{pretrain_tiny, PretrainArgs};

fn main() -> ExitCode {
    match pretrain_tiny(&PretrainArgs::parse(), &mut |line| println!("{line}")) {
        Ok(outcome) => {
            print!("{outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
