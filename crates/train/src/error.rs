//! The crate's error type.

use std::path::PathBuf;

/// Errors from configuring or running training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config text or a value in it could not be parsed.
    #[error("config error in {origin}: {message}")]
    Config {
        /// The config file, or `command line`.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A key that no setting has.
    #[error(
        "unknown config key `{key}` in {origin}{}",
        suggestion
            .as_ref()
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_else(|| {
                "; the valid keys are the fields of TrainConfig (crates/train/src/config.rs)".into()
            })
    )]
    UnknownKey {
        /// The config file, or `command line`.
        origin: String,
        /// The key as written.
        key: String,
        /// The closest valid key, when one is close.
        suggestion: Option<String>,
    },
    /// A value out of range or a conflicting combination.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The config key.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "step {step}: the loss is {value}; training stopped. Likely causes: learning rate too high \
         (try half of {lr:e}), bf16 overflow in the base (set base_bf16 = false), or bad data (a \
         latent or text embedding with NaN/inf; rebuild the caches)"
    )]
    NonFiniteLoss {
        /// The step whose loss it was (1-based).
        step: u64,
        /// The loss.
        value: f32,
        /// The step's learning rate.
        lr: f64,
    },
    /// The adapter weights hold NaN or ±inf, so nothing was written.
    #[error(
        "not writing {path}: LoRA module `{key}` holds {value}; training diverged (the loss may \
         still look finite). Lower the learning rate or set max_grad_norm, and resume from the \
         last good checkpoint"
    )]
    NonFiniteWeights {
        /// The file that was not written.
        path: PathBuf,
        /// The module and factor (`<bfl path>.down` / `.up` / `.bias`).
        key: String,
        /// The first non-finite value.
        value: f32,
    },
    /// A batch, tensor or model does not fit what the step needs.
    #[error("{what}: {message}")]
    Shape {
        /// What has the wrong shape.
        what: String,
        /// The shapes found and expected.
        message: String,
    },
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
    LoraMismatch {
        /// The LoRA file.
        path: PathBuf,
        /// The module.
        key: String,
        /// What does not fit.
        problem: String,
        /// What to do.
        fix: String,
    },
    /// The reloaded LoRA file differs from the adapters in memory.
    #[error(
        "self-check of {path} failed: {problem}; the file is not trustworthy, report this as a bug"
    )]
    SelfCheck {
        /// The file that was written.
        path: PathBuf,
        /// What differs.
        problem: String,
    },
    /// A checkpoint folder is missing a part or does not belong to this run.
    #[error("checkpoint {path}: {problem}; {fix}")]
    Checkpoint {
        /// The checkpoint folder.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// What to do.
        fix: String,
    },
}

impl TrainError {
    /// An I/O error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
