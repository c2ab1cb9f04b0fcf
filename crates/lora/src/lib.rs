//! LoRA layers for Burn, shaped for Flux.
//!
//! A model built on this crate makes every linear a [`LoraLinear`]: a base weight (frozen when
//! training a LoRA) plus a stack of [`LoraAdapter`]s. Data flows
//! `x → base(x) + Σ m·(α/r)·B(A(drop(x)))`, where each adapter may cover only a row range of
//! a fused output (BFL's `qkv` or single-block `linear1`), which is how diffusers-granular LoRAs
//! (to_q / to_k / to_v / proj_mlp) are trained exactly.
//!
//! Which linears get an adapter, and with which rank, alpha and learning-rate scale, is decided by
//! a [`TargetSelector`] over BFL module paths (`double_blocks.3.img_attn.qkv`); the model crate
//! walks its linears and asks the selector. File formats are not known here: `fluxlora-io` owns
//! every key map.
//!
//! - [`adapter`]: one low-rank adapter (A, B, alpha, multiplier, dropouts) and its ΔW.
//! - [`linear`]: the base linear with stacked adapters, merge and unmerge.
//! - [`network`]: which algorithm a target gets (`network_type`: lora, lokr, loha, dora).
//! - [`lokr`], [`loha`], [`dora`]: the LyCORIS adapters — Kronecker (`kron(W1, W2)`), Hadamard
//!   (`(W1a·W1b) ⊙ (W2a·W2b)`) and weight-decomposed (`m ⊙ (W + ΔW)/‖W + ΔW‖` per output
//!   channel) — with the conventions of LyCORIS, PEFT and ComfyUI's loaders.
//! - [`lycoris`]: [`LycorisAdapter`] (one of the three), and how a stack of them adds to the
//!   output, merges into a dense weight and unmerges.
//! - [`frozen`]: frozen base weights (f32, bf16, fp8 E4M3, int8; on the device or streamed from
//!   host memory) and [`FrozenLinearBackend`], the matmul whose backward decodes the weight again
//!   instead of keeping a decoded copy in the graph.
//! - [`target`]: presets (kohya 304, ai-toolkit 494, attention-only), block lists, per-type
//!   ranks and regex rules.
//! - [`param_id`]: deterministic parameter ids derived from module paths (stable across runs,
//!   so optimizer state can be resumed).
//!
//! ```
//! use fluxlora_lora::{Preset, TargetSelector};
//!
//! // kohya's default targets: every linear inside the blocks, none outside them.
//! let select = TargetSelector::new(Preset::Kohya, 16, 16.0);
//! let qkv = select.select("double_blocks.0.img_attn.qkv", 3072, 9216).expect("a block linear");
//! assert_eq!(qkv.adapters.len(), 1);
//! assert!(select.select("img_in", 64, 3072).is_none());
//! // ai-toolkit's granularity: q, k and v get adapters of their own.
//! let split = TargetSelector::new(Preset::AiToolkit, 16, 16.0);
//! assert_eq!(split.select("double_blocks.0.img_attn.qkv", 3072, 9216).unwrap().adapters.len(), 3);
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

pub mod adapter;
pub mod dora;
pub mod error;
pub mod frozen;
pub mod linear;
pub mod loha;
pub mod lokr;
pub mod lycoris;
pub mod network;
pub mod param_id;
pub mod target;

pub use adapter::{AdapterSpec, LoraAdapter};
pub use dora::DoraAdapter;
pub use error::LoraError;
pub use frozen::{BaseDtype, FrozenFormat, FrozenLinearBackend, FrozenWeight};
pub use linear::LoraLinear;
pub use loha::LohaAdapter;
pub use lokr::{Factor, LokrAdapter};
pub use lycoris::LycorisAdapter;
pub use network::Network;
pub use param_id::stable_param_id;
pub use target::{BlockList, ModuleKind, Preset, RuleOverride, TargetSelector, TargetSpec};
