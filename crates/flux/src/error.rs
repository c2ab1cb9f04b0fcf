//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running the Flux model.
///
/// Every variant names the file or tensor key involved, the problem, and (where there is one)
/// the fix.
#[derive(Debug, thiserror::Error)]
pub enum FluxError {
    /// The checkpoint could not be opened or read by the I/O layer.
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The I/O layer's error, kept whole.
        source: fluxlora_io::IoError,
    },

    /// The checkpoint's key names match none of the known Flux layouts.
    #[error(
        "{path}: not a Flux transformer checkpoint (no `double_blocks.0.img_attn.qkv.weight` in BFL \
         layout, with or without a `model.diffusion_model.` prefix, and no diffusers \
         `transformer_blocks.0.attn.to_q.weight`); point at a flux1-*.safetensors file or a \
         diffusers `transformer/` folder"
    )]
    UnknownFormat { path: PathBuf },

    /// A tensor the model needs is absent from the checkpoint.
    #[error(
        "{path}: missing tensor `{key}` (expected shape {expected:?}); the checkpoint is partial \
         or for a different model"
    )]
    MissingKey { path: PathBuf, key: String, expected: Vec<usize> },

    /// A tensor exists but has the wrong shape.
    #[error(
        "{path}: tensor `{key}` has shape {found:?}, expected {expected:?}; the checkpoint is for a \
         different model configuration"
    )]
    ShapeMismatch { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },

    /// The model configuration could not be inferred or is inconsistent.
    #[error("invalid Flux configuration: {0}")]
    Config(String),

    /// An input tensor to a forward pass, sampler or helper has the wrong shape.
    #[error("invalid input `{name}`: {message}")]
    Input { name: String, message: String },

    /// A checkpoint holds none of the keys of the model it was given to (autoencoder, CLIP, T5).
    #[error("{path}: not a {model} checkpoint (no {expected}); point at the right file or folder")]
    UnknownModelFormat { path: PathBuf, model: &'static str, expected: &'static str },

    /// A `tokenizer.json` cannot be loaded or applied.
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    /// A tensor's values could not be read back to the host.
    #[error("reading a tensor back to the host failed: {0}")]
    ReadBack(String),

    /// A LoRA adapter could not be built.
    #[error(transparent)]
    Lora(#[from] fluxlora_lora::LoraError),
}

/// Result alias for this crate.
pub type Result<T, E = FluxError> = std::result::Result<T, E>;
