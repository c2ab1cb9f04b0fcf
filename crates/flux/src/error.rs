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
        "{path}: not a Flux transformer checkpoint (no `double_blocks.0.img_attn.qkv.weight` in \
         BFL layout, with or without a `model.diffusion_model.` prefix, and no diffusers \
         `transformer_blocks.0.attn.to_q.weight`); point at a flux1-*.safetensors file or a \
         diffusers `transformer/` folder"
    )]
    UnknownFormat {
        /// The checkpoint (file or folder) that was probed.
        path: PathBuf,
    },

    /// A tensor the model needs is absent from the checkpoint.
    #[error(
        "{path}: missing tensor `{key}` (expected shape {expected:?}); the checkpoint is partial \
         or for a different model"
    )]
    MissingKey {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The absent tensor's key, as looked up in the checkpoint.
        key: String,
        /// The shape the model needs for it.
        expected: Vec<usize>,
    },

    /// A tensor exists but has the wrong shape.
    #[error(
        "{path}: tensor `{key}` has shape {found:?}, expected {expected:?}; the checkpoint is for \
         a different model configuration"
    )]
    ShapeMismatch {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The tensor's key in the checkpoint (for a tensor assembled from several, a
        /// description naming its sources).
        key: String,
        /// The shape the model's configuration needs.
        expected: Vec<usize>,
        /// The shape the checkpoint holds.
        found: Vec<usize>,
    },

    /// The model configuration could not be inferred or is inconsistent.
    #[error("invalid Flux configuration: {0}")]
    Config(String),

    /// An input tensor to a forward pass, sampler or helper has the wrong shape.
    #[error("invalid input `{name}`: {message}")]
    Input {
        /// The argument's name (e.g. `img`, `input_ids`, `latent`).
        name: String,
        /// What is wrong with it and what was expected.
        message: String,
    },

    /// A checkpoint holds none of the keys of the model it was given to (autoencoder, CLIP, T5).
    #[error("{path}: not a {model} checkpoint (no {expected}); point at the right file or folder")]
    UnknownModelFormat {
        /// The checkpoint (file or folder).
        path: PathBuf,
        /// The model it was loaded as (e.g. `"Flux autoencoder"`, `"CLIP text model"`,
        /// `"T5 encoder"`).
        model: &'static str,
        /// The key(s) whose presence identifies that model, for the message.
        expected: &'static str,
    },

    /// A `tokenizer.json` cannot be loaded or applied.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The `tokenizer.json` file.
        path: PathBuf,
        /// What failed (the tokenizers library's error, or the text that could not be encoded).
        message: String,
    },

    /// A tensor's values could not be read back to the host.
    #[error("reading a tensor back to the host failed: {0}")]
    ReadBack(String),

    /// A LoRA adapter could not be built.
    #[error(transparent)]
    Lora(#[from] fluxlora_lora::LoraError),
}

/// Result alias for this crate.
pub type Result<T, E = FluxError> = std::result::Result<T, E>;
