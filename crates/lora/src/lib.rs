//! LoRA layers for Burn, shaped for Flux.
//!
//! A model built on this crate makes every linear a [`LoraLinear`]: a base weight (frozen when
//! training a LoRA) plus a stack of [`LoraAdapter`]s. Data flows
//! `x → base(x) + Σ m·(α/r)·B(A(drop(x)))`, where each adapter may cover only a row range of a
//! fused output (BFL's `qkv` or single-block `linear1`), which is how diffusers-granular LoRAs
//! (to_q / to_k / to_v / proj_mlp) are trained exactly.
//!
//! Which linears get an adapter, and with which rank, alpha and learning-rate scale, is decided by
//! a [`TargetSelector`] over BFL module paths (`double_blocks.3.img_attn.qkv`); the model crate
//! walks its linears and asks the selector. File formats are not known here: `fluxlora-io` owns
//! every key map.
//!
//! - [`adapter`]: one low-rank adapter (A, B, alpha, multiplier, dropouts) and its ΔW.
//! - [`linear`]: the base linear with stacked adapters, merge and unmerge.
//! - [`target`]: presets (kohya 304, ai-toolkit 494, attention-only), block lists, per-type
//!   ranks and regex rules.
//! - [`param_id`]: deterministic parameter ids derived from module paths (stable across runs,
//!   so optimizer state can be resumed).

pub mod adapter;
pub mod error;
pub mod linear;
pub mod param_id;
pub mod target;

pub use adapter::{AdapterSpec, LoraAdapter};
pub use error::LoraError;
pub use linear::LoraLinear;
pub use param_id::stable_param_id;
pub use target::{BlockList, ModuleKind, Preset, RuleOverride, TargetSelector, TargetSpec};
