//! Check a dataset before training: images per bucket, missing captions, near-duplicates,
//! blurry and too-small images, captions without the trigger word, tag frequencies, and the
//! preset's advice; text on the terminal and JSON on disk. Optionally builds the latent and text
//! caches with a base model (and reports the throughput).
//!
//! ```text
//! cargo run --release --example prep -- DATASET --trigger sks --resolution 1024 --preset character
//! cargo run --release --example prep -- dataset.toml --json report.json
//! cargo run --release --example prep -- DATASET --config train.toml --build-caches
//! cargo run --release --example prep -- DATASET --config train.toml --resume out/lora-step00000500
//! ```
//!
//! Exit code: 0 when the dataset can be trained, 2 when it has blocking problems (unreadable,
//! corrupt or over-limit images, ...), when a config value is invalid (e.g. an `output_name`
//! that would leave `output_dir`) or when the `--resume` checkpoint is damaged or holds NaN/inf;
//! 1 on any other error. The job is `fluxlora::jobs::prep`; this file
//! parses, calls and prints.

use std::process::ExitCode;

use clap::Parser;
use fluxlora::jobs::{prep, PrepArgs};

fn main() -> ExitCode {
    match prep(&PrepArgs::parse()) {
        Ok(outcome) => {
            print!("{outcome}");
            if outcome.blocking {
                eprintln!(
                    "blocking problems found (listed above); fix them (bad images: or set \
                     skip_bad_images in the dataset config)"
                );
            }
            ExitCode::from(outcome.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
