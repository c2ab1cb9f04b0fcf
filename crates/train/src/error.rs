//! The crate's error type.

use std::path::PathBuf;

/// Errors from configuring or running training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config text or a value in it could not be parsed.
    #[error("config error in {origin}: {message}")]
    Config { origin: String, message: String },
    /// A key that no setting has.
    #[error("unknown config key `{key}` in {origin}{}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_else(|| "; the valid keys are the fields of TrainConfig (crates/train/src/config.rs)".into()))]
    UnknownKey { origin: String, key: String, suggestion: Option<String> },
    /// A value out of range or a conflicting combination.
    #[error("invalid `{key}`: {message}")]
    Invalid { key: String, message: String },
    /// The loss became NaN or infinite.
    #[error("step {step}: the loss is {value}; training stopped. Likely causes: learning rate too high \
             (try half of {lr:e}), bf16 overflow in the base (set base_bf16 = false), or bad data (a latent or \
             text embedding with NaN/inf; rebuild the caches)")]
    NonFiniteLoss { step: u64, value: f32, lr: f64 },
    /// The adapter weights hold NaN or ±inf, so nothing was written.
    #[error("not writing {path}: LoRA module `{key}` holds {value}; training diverged (the loss may still \
             look finite). Lower the learning rate or set max_grad_norm, and resume from the last good checkpoint")]
    NonFiniteWeights { path: PathBuf, key: String, value: f32 },
    /// A batch, tensor or model does not fit what the step needs.
    #[error("{what}: {message}")]
    Shape { what: String, message: String },
    /// The transformer rejected its inputs or could not apply LoRA.
    #[error(transparent)]
    Flux(#[from] fluxlora_flux::FluxError),
    /// Building or stepping the optimizer, or its state file, failed.
    #[error(transparent)]
    Optim(#[from] fluxlora_optim::OptimError),
    /// Reading or writing a LoRA file failed.
    #[error(transparent)]
    LoraFile(#[from] fluxlora_io::IoError),
    /// Drawing or writing a sample grid or the loss curve failed.
    #[error(transparent)]
    Render(#[from] fluxlora_render::RenderError),
    /// The data pipeline failed.
    #[error(transparent)]
    Data(#[from] fluxlora_data::DataError),
    /// A LoRA file does not fit the model's adapters.
    #[error("{path}: module `{key}`: {problem}; {fix}")]
    LoraMismatch { path: PathBuf, key: String, problem: String, fix: String },
    /// The reloaded LoRA file differs from the adapters in memory.
    #[error("self-check of {path} failed: {problem}; the file is not trustworthy, report this as a bug")]
    SelfCheck { path: PathBuf, problem: String },
    /// A checkpoint folder is missing a part or does not belong to this run.
    #[error("checkpoint {path}: {problem}; {fix}")]
    Checkpoint { path: PathBuf, problem: String, fix: String },
}

impl TrainError {
    /// An I/O error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}
