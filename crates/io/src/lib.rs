//! Checkpoint I/O for fluxlora, on the host and without Burn (plain `f32` buffers), so every
//! other crate can depend on it cheaply.
//!
//! Data flow:
//! - **Base models in**: [`Checkpoint::open`] maps a `.safetensors` file, a diffusers sharded
//!   checkpoint (`*.safetensors.index.json`) or a folder holding one; every header is validated
//!   up front ([`SafeTensorsFile`]); the model loader then pulls one tensor at a time as a
//!   [`HostTensor`] (F8/F16/BF16/F64/integers upcast to `f32`) or as raw bytes.
//! - **LoRAs in**: [`read_lora`] detects the key format (kohya, PEFT/diffusers, ComfyUI, BFL,
//!   XLabs, OneTrainer) and returns canonical [`LoraWeights`] keyed by BFL module path, with
//!   split q/k/v/mlp pieces fused exactly.
//! - **LoRAs out**: [`write_lora`] writes kohya, PEFT/diffusers or ComfyUI keys with each
//!   format's alpha semantics and [`TrainingMetadata`] (`ss_*`, `modelspec.*`).
//! - **Any file out**: [`write_safetensors`] (deterministic, aligned) and [`atomic_write`]
//!   (temp file, fsync, rename, fsync dir) so a crash never leaves a torn checkpoint.
//!
//! Modules:
//! - [`tensor`] — [`HostTensor`].
//! - [`safetensors`] — header validation, the mmap reader, dtypes, the writer.
//! - [`sharded`] — [`Checkpoint`] over single or sharded files.
//! - [`flux_linears`] — the one table of the transformer's linears (BFL and diffusers names).
//! - [`flux_keys`] — BFL ↔ diffusers key layouts of full transformer checkpoints (for the model
//!   loader).
//! - [`ae_keys`] — BFL ↔ diffusers key layouts of autoencoder checkpoints.
//! - [`text_encoder_keys`] — how CLIP-L and T5 checkpoints are recognised (probe key, prefix).
//! - [`atomic`] — [`atomic_write`].
//! - [`lora`] — canonical LoRA, key maps per format, exact fuse/split, detection; LyCORIS
//!   modules (LoKr, LoHa) and DoRA magnitudes in ComfyUI / LyCORIS / PEFT layouts
//!   ([`lora::lycoris`]).
//! - [`lora::ops`] — LoRA tools: inspect, convert, resize by SVD (also LoKr / LoHa → LoRA),
//!   extract from two checkpoints, merge (LoRA, LoKr, LoHa, DoRA) into a base checkpoint.
//! - [`metadata`] — kohya training metadata.
//! - [`random_flux`] — a random full-size checkpoint in BFL layout (fp8 weights), streamed.
//! - [`quant`] — [`QuantizedHost`]: frozen weights as bf16 / fp8 E4M3 / int8 codes with a
//!   scale per output channel, for the low-precision base.
//! - [`error`] — [`IoError`], the crate's one error type.
//!
//! ```
//! use std::collections::BTreeMap;
//! use fluxlora_io::{read_lora, write_lora, HostTensor, LoraFormat, LoraModule, LoraWeights};
//!
//! // A rank-2 LoRA on one Flux linear (keyed by its BFL path), written with kohya's keys and
//! // read back: the format is detected from the keys.
//! let down = HostTensor::new(vec![2, 8], vec![0.1; 16])?;
//! let up = HostTensor::new(vec![8, 2], vec![0.2; 16])?;
//! let mut lora = LoraWeights::default();
//! lora.modules.insert("double_blocks.0.img_attn.proj".into(), LoraModule::new(down, up, 2.0)?);
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("lora.safetensors");
//! write_lora(&path, &lora, LoraFormat::Kohya, &BTreeMap::new())?;
//! let (back, format) = read_lora(&path)?;
//! assert_eq!(format, LoraFormat::Kohya);
//! assert_eq!(back.modules["double_blocks.0.img_attn.proj"].up.shape, [8, 2]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

pub mod ae_keys;
pub mod atomic;
pub mod error;
pub mod flux_keys;
pub mod flux_linears;
pub mod lora;
pub mod metadata;
pub mod quant;
pub mod random_flux;
pub mod safetensors;
pub mod sharded;
pub mod tensor;
pub mod text_encoder_keys;

pub use atomic::{atomic_write, sync_dir};
pub use error::{IoError, Result};
pub use lora::keys_flux::{flux_block_module_paths, flux_module_paths, FluxDims};
pub use lora::keys_te::{TE_CLIP, TE_T5};
pub use lora::ops::{
    convert_lora_file, extract_lora, extract_lora_file, inspect_lora, merge_loras, resize_lora,
    resize_lora_file, ExtractOptions, LoraInspection, ResizeTarget, WeightedLora,
};
pub use lora::{
    detect, read_lora, write_lora, write_lora_as, DoraAxis, DoraScale, KronFactor, LoraFormat,
    LoraModule, LoraWeights, LycorisModule,
};
pub use metadata::{iso8601_utc, FluxVariant, TrainingMetadata};
pub use quant::{QuantFormat, QuantizedHost};
pub use safetensors::{
    serialize_safetensors, write_safetensors, Dtype, SafeTensorsFile, TensorRef,
};
pub use sharded::Checkpoint;
pub use tensor::HostTensor;
