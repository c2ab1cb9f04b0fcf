//! Optimizers and learning-rate schedules for LoRA training on Burn 0.21.
//!
//! Burn ships none of the optimizers Flux LoRA users know, so this crate provides them with the
//! reference implementations' arithmetic:
//! - [`AdamW`] (torch), [`AdamW8bit`] (bitsandbytes, block-wise dynamic 8-bit moments),
//!   [`Prodigy`] (prodigyopt), [`Adafactor`] (transformers);
//! - [`LrSchedule`]: diffusers/transformers `get_scheduler` schedules, each with warmup.
//!
//! Data flow of one training step:
//! `loss.backward()` → `GradientsParams` (only parameters that require grad have one)
//! → optionally [`GradientMean`] over micro-batches (averages, unlike Burn's accumulator)
//! → [`LoraOptimizer::step`] (Burn's `Optimizer` trait): walks the module, names each
//! parameter by its stable path ([`paths`]), clips all gradients by their global norm
//! ([`clip`]), resolves per-path learning-rate groups ([`ParamGroups`], LoRA+), runs the
//! algorithm ([`OptimizerRule`]) on every parameter at once (Prodigy needs global sums), and
//! writes the parameters back. State is keyed by path and saved/loaded as safetensors
//! ([`state_file`]) for bit-exact resume.
//!
//! AdamW, AdamW8bit and Adafactor also implement Burn's per-tensor `SimpleOptimizer`, so
//! `OptimizerAdaptor::from(AdamWConfig::default().init()?)` works too (without groups, global
//! clipping or path-keyed state). Prodigy does not: its step size depends on all parameters.
//!
//! ```
//! use fluxlora_optim::{LrSchedule, ScheduleKind};
//!
//! // Cosine decay after 10 warm-up steps, as diffusers' `get_scheduler("cosine", ...)`.
//! let lr = LrSchedule::new(ScheduleKind::Cosine, 1e-4, 10, 110)?;
//! assert!((lr.lr(5) - 0.5e-4).abs() < 1e-12);
//! assert!((lr.lr(10) - 1e-4).abs() < 1e-12);
//! assert!((lr.lr(60) - 0.5e-4).abs() < 1e-9);
//! assert!(lr.lr(110) < 1e-12);
//! # Ok::<(), fluxlora_optim::OptimError>(())
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

mod accumulate;
mod adafactor;
mod adamw;
mod adamw8bit;
pub mod clip;
mod error;
mod groups;
mod optimizer;
pub mod paths;
mod per_tensor;
mod prodigy;
pub mod quant8;
mod rule;
mod schedule;
pub mod state_file;

pub use accumulate::GradientMean;
pub use adafactor::{Adafactor, AdafactorConfig, AdafactorState};
pub use adamw::{AdamW, AdamWConfig, AdamWState};
pub use adamw8bit::{AdamW8bit, AdamW8bitConfig, AdamW8bitState};
pub use error::OptimError;
pub use groups::{GroupSettings, ParamGroups, LORA_B_PATTERN};
pub use optimizer::{LoraOptimizer, StateMemory};
pub use paths::param_paths;
pub use per_tensor::TensorUpdate;
pub use prodigy::{Prodigy, ProdigyConfig, ProdigyState};
pub use rule::{HostEntries, OptimizerRule, ParamSlot, ParamState};
pub use schedule::{LrSchedule, ScheduleKind};
