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
//! - [`kontext`]: FLUX.1 Kontext's control-image conditioning (tokens appended after the target's,
//!   [`FluxInputs::img_cond_seq`]) and its preferred resolutions.
//! - [`schedule`]: sampling schedule, training σ samplers and loss weightings.
//! - [`sampler`]: Euler denoising.
//! - [`checkpointing`]: forward + backward with optional block-level recomputation.
//! - [`fused`]: [`FluxBackend`], the fused training ops with their own backward (attention that
//!   keeps no score matrix, adaLN modulate, QK RMSNorm, RoPE, GELU-tanh, gated residual); the
//!   model is generic over it, and the crate's `ndarray` / `cubecl` / `fusion` / `flex` features
//!   implement it for those backends.
//! - [`autoencoder`]: the KL autoencoder (image ↔ latent), plain and tiled.
//! - [`clip`], [`t5`]: the CLIP-L and T5 v1.1 text encoders; [`tokenizer`]: their tokenizers.
//! - [`frozen`]: shape-checked loading of the frozen autoencoder / text-encoder weights (and
//!   random trainable autoencoder layers).
//! - [`export`]: a model's weights back out as BFL-named tensors (for models trained from scratch).
//! - [`error`]: the crate's error type, [`FluxError`].
//!
//! ```
//! use fluxlora_flux::schedule::{get_schedule, lin_mu};
//! use fluxlora_flux::FluxConfig;
//!
//! // FLUX.1-dev's shape, and its sampling schedule for a 1024² image (64×64 latent patches).
//! let dev = FluxConfig::dev();
//! assert_eq!((dev.hidden_size, dev.depth, dev.depth_single_blocks), (3072, 19, 38));
//! dev.validate()?;
//! let seq = 64 * 64;
//! assert!((lin_mu(seq, 0.5, 1.15) - 1.15).abs() < 1e-9);
//! let t = get_schedule(28, seq, 0.5, 1.15, true);
//! assert_eq!((t.len(), t[0], t[28]), (29, 1.0, 0.0));
//! assert!(t[14] > 0.5, "the dev shift keeps more steps at high noise");
//! # Ok::<(), fluxlora_flux::FluxError>(())
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

pub mod autoencoder;
pub mod checkpointing;
pub mod clip;
pub mod error;
pub mod export;
pub mod frozen;
pub mod fused;
pub mod host;
pub mod kontext;
pub mod latents;
pub mod sampler;
pub mod schedule;
pub mod t5;
pub mod tokenizer;
pub mod transformer;

pub use autoencoder::{Autoencoder, AutoencoderConfig, AutoencoderLoadOptions, TileOptions};
pub use checkpointing::{forward_backward, Checkpointing, StepGradients};
pub use clip::{ClipLoadOptions, ClipOutput, ClipTextModel};
pub use error::{FluxError, Result};
pub use frozen::bf16_if_supported;
pub use fused::{FluxAutodiffBackend, FluxBackend};
pub use t5::{T5Encoder, T5LoadOptions};
pub use tokenizer::{TextTokenizer, Tokens};
pub use transformer::config::FluxConfig;
pub use transformer::load::{FluxCheckpoint, LoadOptions};
pub use transformer::model::{Flux, FluxInputs, ImageCondSeq};
