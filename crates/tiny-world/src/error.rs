//! The crate's error type.

use std::path::PathBuf;

/// Errors from building or scoring the tiny world.
#[derive(Debug, thiserror::Error)]
pub enum TinyWorldError {
    /// An option out of range or a missing setting.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The option or config key.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// Pretraining diverged.
    #[error("pretraining step {step}: the loss is {value}; lower the learning rate (now {lr:e})")]
    NonFiniteLoss {
        /// The step that produced it.
        step: u64,
        /// The loss.
        value: f32,
        /// The stage's peak learning rate.
        lr: f64,
    },
    /// A file or folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing a safetensors file failed.
    #[error(transparent)]
    File(#[from] fluxlora_io::IoError),
    /// The model rejected its inputs.
    #[error(transparent)]
    Flux(#[from] fluxlora_flux::FluxError),
    /// The optimizer could not be built.
    #[error(transparent)]
    Optim(#[from] fluxlora_optim::OptimError),
    /// A grid could not be written.
    #[error(transparent)]
    Render(#[from] fluxlora_render::RenderError),
    /// Loading, encoding, stepping or sampling through the training crate failed.
    #[error(transparent)]
    Train(#[from] fluxlora_train::TrainError),
}

impl TinyWorldError {
    /// An I/O error for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
