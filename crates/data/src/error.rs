//! The crate's one error type. Every variant names the file or key, the problem, and the fix.

use std::path::PathBuf;

/// Everything that can go wrong while preparing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The dataset TOML is not valid TOML.
    #[error("{file}: not valid TOML: {message}. Fix the syntax at the position shown.")]
    TomlSyntax { file: PathBuf, message: String },

    /// A key the dataset config does not know.
    #[error("{file}: unknown key `{key}` in [{table}]{hint}. Remove it or fix the spelling.")]
    UnknownKey {
        file: PathBuf,
        table: String,
        key: String,
        /// Either empty or ` (did you mean `x`?)`.
        hint: String,
    },

    /// A key is present but its value is unusable.
    #[error("{file}: [{table}] `{key}`: {message}")]
    BadValue {
        file: PathBuf,
        table: String,
        key: String,
        message: String,
    },

    /// An image could not be decoded.
    #[error("{path}: {reason}")]
    Image { path: PathBuf, reason: String },

    /// Blocking problems were found in the dataset and skipping was not requested.
    #[error(
        "{count} blocking problem(s) in the dataset; fix them or opt in to skipping bad files \
         (skip_bad_images = true):\n{listing}"
    )]
    BadInputs { count: usize, listing: String },

    /// The dataset has no usable image.
    #[error("no usable image in the dataset ({detail}); check image_dir and the image extensions")]
    Empty { detail: String },

    /// A cache entry could not be written or is unusable.
    #[error("cache {path}: {message}")]
    Cache { path: PathBuf, message: String },

    /// An encoder failed on one item.
    #[error("encoder `{encoder}` failed on {item}: {message}")]
    Encoder {
        encoder: String,
        item: String,
        message: String,
    },

    /// `validation_split` cannot be honoured for this dataset.
    #[error("validation_split = {fraction}: {message}")]
    ValidationSplit { fraction: f64, message: String },

    /// Loader misuse, e.g. resuming from a state made for another dataset.
    #[error("loader: {0}")]
    Loader(String),

    /// Errors from safetensors I/O.
    #[error(transparent)]
    SafeTensors(#[from] fluxlora_io::IoError),
}

/// Result alias for this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    /// Wraps an `std::io::Error` with the path and what was being done.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
