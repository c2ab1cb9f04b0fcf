//! The Flux.1 model in Burn: transformer, autoencoder, text encoders, schedule and sampler.
//!
//! Data flows: a checkpoint ([`FluxCheckpoint`], BFL / ComfyUI / diffusers layout) is loaded
//! tensor by tensor into [`Flux`], whose every linear is a [`fluxlora_lora::LoraLinear`];
//! [`Flux::apply_lora`] freezes the base and adds adapters. Latents from the autoencoder are
//! packed into tokens ([`latents`]); training draws noise levels ([`schedule::SigmaSampler`]),
//! runs [`checkpointing::forward_backward`] (optionally recomputing blocks in backward) and
//! weights the loss ([`schedule::LossWeighting`]); sampling walks [`schedule::get_schedule`] with
//! the Euler sampler ([`sampler::denoise`]).
//!
//! - [`transformer`]: the architecture, loading and LoRA application.
//! - [`latents`]: 2×2 packing and position ids.
//! - [`schedule`]: sampling schedule, training σ samplers and loss weightings.
//! - [`sampler`]: Euler denoising.
//! - [`checkpointing`]: forward + backward with optional block-level recomputation.
//! - [`autoencoder`]: the KL autoencoder (image ↔ latent), plain and tiled.
//! - [`clip`], [`t5`]: the CLIP-L and T5 v1.1 text encoders; [`tokenizer`]: their tokenizers.
//! - [`frozen`]: shape-checked loading of the frozen autoencoder / text-encoder weights (and
//!   random trainable autoencoder layers).
//! - [`export`]: a model's weights back out as BFL-named tensors (for models trained from scratch).
//! - [`error`]: [`FluxError`].

pub mod autoencoder;
pub mod checkpointing;
pub mod clip;
pub mod error;
pub mod export;
pub mod frozen;
pub mod host;
pub mod latents;
pub mod sampler;
pub mod schedule;
pub mod t5;
pub mod tokenizer;
pub mod transformer;

pub use checkpointing::{forward_backward, Checkpointing, StepGradients};
pub use error::{FluxError, Result};
pub use transformer::config::FluxConfig;
pub use transformer::load::{FluxCheckpoint, LoadOptions};
pub use transformer::model::{Flux, FluxInputs};
pub use autoencoder::{Autoencoder, AutoencoderConfig, AutoencoderLoadOptions, TileOptions};
pub use clip::{ClipLoadOptions, ClipOutput, ClipTextModel};
pub use frozen::bf16_if_supported;
pub use t5::{T5Encoder, T5LoadOptions};
pub use tokenizer::{TextTokenizer, Tokens};
