//! The umbrella crate's error: the jobs' errors, each kept with its source.

use std::path::PathBuf;

use crate::backend::BackendError;

/// Everything a job can fail with. Each library error keeps its own text (which names the
/// file, the problem and the fix).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend choice cannot be honoured.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Training, its config, the base model or sampling.
    #[error(transparent)]
    Train(#[from] fluxlora_train::TrainError),
    /// Building or scoring the tiny world failed.
    #[error(transparent)]
    TinyWorld(#[from] fluxlora_tiny_world::TinyWorldError),
    /// Checkpoint and LoRA file I/O.
    #[error(transparent)]
    Io(#[from] fluxlora_io::IoError),
    /// Captioning.
    #[error(transparent)]
    Caption(#[from] fluxlora_caption::CaptionError),
    /// A file or folder the job itself touches.
    #[error("{}: {source}", path.display())]
    File {
        /// The path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The Ctrl-C handler could not be installed.
    #[error("installing the Ctrl-C handler: {0}")]
    Signal(#[from] ctrlc::Error),
    /// The arguments do not describe a job.
    #[error("{0}")]
    Usage(String),
}
