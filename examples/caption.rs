//! Caption a dataset folder with the WD tagger or a vision-language server, and/or edit its
//! captions (trigger word, dedupe, sort), with a progress bar and a summary.
//!
//! ```text
//! cargo run --release --example caption -- DATASET --tagger wd-vit-tagger-v3/ --trigger sks
//! cargo run --release --example caption -- DATASET --vlm-url http://127.0.0.1:8080 \
//!     --model joycaption --threads 4
//! cargo run --release --example caption -- DATASET --trigger sks --dry-run  # show the diff only
//! cargo run --release --example caption -- DATASET --stats
//! ```
//!
//! Exit code: 0 when every image was captioned, 1 when some failed, 2 on an error. The job is
//! `fluxlora::jobs::caption`; this file parses, calls and prints.

use std::process::ExitCode;

use clap::Parser;
use fluxlora::jobs::{caption, CaptionArgs};

fn main() -> ExitCode {
    match caption(&CaptionArgs::parse()) {
        Ok(outcome) => {
            print!("{outcome}");
            ExitCode::from(if outcome.ok() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
