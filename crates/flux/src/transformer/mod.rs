//! The Flux.1 transformer (Black Forest Labs reference architecture).
//!
//! - [`config`]: `FluxConfig`, presets and inference from checkpoint shapes.
//! - [`embed`]: timestep embedding and `MLPEmbedder`.
//! - [`rope`]: N-d rotary embedding and joint attention.
//! - [`layers`]: LayerNorm/modulate, GELU-tanh, QK RMSNorm, `Modulation`, `LastLayer`.
//! - [`double_block`], [`single_block`]: the two block types.
//! - [`model`]: `Flux` and its forward pass.
//! - [`load`]: checkpoint loading (BFL / ComfyUI / diffusers, any float dtype).
//! - [`lora`]: LoRA targets, freezing, merge/unmerge.
//! - [`swap`]: block swap (`blocks_to_swap`): frozen block weights streamed from host memory.

pub mod config;
pub mod double_block;
pub mod embed;
pub mod layers;
pub mod load;
pub mod lora;
pub mod model;
pub mod rope;
pub mod single_block;
pub mod swap;
