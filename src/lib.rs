//! fluxlora: train Flux.1 LoRA adapters in Rust on Burn.
//!
//! This umbrella crate re-exports the workspace's libraries, owns the backend choice and runs
//! the jobs that the example binaries (`examples/`) are thin shells over. Data flows
//! images → [`data`] (+ [`caption`]) → [`flux`] encoders → cached latents and embeddings →
//! [`train`] (the [`flux`] transformer with [`lora`] adapters, stepped by [`optim`]) →
//! [`io`] (a `.safetensors` LoRA in kohya, PEFT/diffusers or ComfyUI format).
//!
//! - [`jobs`]: one non-generic entry point per job (train, prep, sample, caption, lora,
//!   pretrain_tiny). Each takes its arguments and the run-time backend choice and dispatches
//!   inside this crate, so every backend instantiation of the generic stack is compiled once.
//! - [`backend`]: which backends are compiled in (cargo features `cuda`, `wgpu`, `ndarray`) and
//!   which one a run uses ([`backend::select`]).
//! - [`cli`]: command-line pieces the jobs share (every config key as a flag, `FILE:WEIGHT`).
//! - [`Error`]: what a job can fail with.
//!
//! A job's arguments are a clap struct, so a program can parse them or build them:
//!
//! ```
//! use clap::Parser;
//! use fluxlora::jobs::TrainArgs;
//!
//! let args = TrainArgs::parse_from([
//!     "train",
//!     "my-run.toml",
//!     "--learning_rate",
//!     "1e-4",
//!     "--backend=ndarray",
//! ]);
//! assert_eq!(args.config.as_deref(), Some(std::path::Path::new("my-run.toml")));
//! // Config keys reach `TrainConfig::load` in declaration order.
//! assert_eq!(args.keys.overrides, ["--backend", "ndarray", "--learning_rate", "1e-4"]);
//! ```
//!
//! and run them (here the embedded tiny world, as `cargo run --release --example train` does):
//!
//! ```no_run
//! use clap::Parser;
//!
//! let args = fluxlora::jobs::TrainArgs::parse_from(["train", "--max_train_steps", "10"]);
//! let outcome = fluxlora::jobs::train(&args, None, &mut |line| println!("{line}"))?;
//! print!("{outcome}");
//! # Ok::<(), fluxlora::Error>(())
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

pub mod backend;
pub mod cli;
pub mod error;
pub mod jobs;

pub use error::Error;

pub use fluxlora_caption as caption;
pub use fluxlora_data as data;
pub use fluxlora_flux as flux;
pub use fluxlora_io as io;
pub use fluxlora_lora as lora;
pub use fluxlora_optim as optim;
pub use fluxlora_render as render;
pub use fluxlora_tiny_world as tiny_world;
pub use fluxlora_train as train;
