//! Train a Flux LoRA.
//!
//! ```text
//! cargo run --release --example train  # the embedded tiny world (fixtures/tiny-world)
//! cargo run --release --example train -- my-run.toml  # a config file (kohya key names)
//! cargo run --release --example train -- my-run.toml --learning_rate 5e-5 --max_train_steps 2000
//! cargo run --release --example train -- my-run.toml --resume output/my-lora-step00000500
//! ```
//!
//! Every config key can be given as `--key value`; `--backend cuda|wgpu|ndarray|auto` picks the
//! device. The tiny-world run (no config) then scores the concept: the share of samples from
//! held-out prompts that show it, base alone vs base + LoRA (`--concept-score` asks for it on
//! any run whose prompts file holds tiny-world prompts). Ctrl-C (SIGINT) or SIGTERM finishes
//! the current step, saves a resumable checkpoint and exits; `--resume DIR` continues it
//! exactly. The job is `fluxlora::jobs::train`; this file parses, calls and prints.

use std::process::ExitCode;

use clap::Parser;
use fluxlora::jobs::{stop_on_interrupt, train, TrainArgs};

fn main() -> ExitCode {
    let args = TrainArgs::parse();
    let run = stop_on_interrupt()
        .and_then(|stop| train(&args, Some(stop), &mut |line| println!("{line}")));
    match run {
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
