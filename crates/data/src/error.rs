//! The crate's one error type. Every variant names the file or key, the problem, and the fix.

use std::path::PathBuf;

/// Everything that can go wrong while preparing a dataset.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("{path}: {action} failed: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// What was being done, e.g. `reading the dataset config` or `listing the cache folder`.
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The dataset TOML is not valid TOML.
    #[error("{file}: not valid TOML: {message}. Fix the syntax at the position shown.")]
    TomlSyntax {
        /// The dataset TOML file.
        file: PathBuf,
        /// The TOML parser's message, with the line and column of the error.
        message: String,
    },

    /// A key the dataset config does not know.
    #[error("{file}: unknown key `{key}` in [{table}]{hint}. Remove it or fix the spelling.")]
    UnknownKey {
        /// The dataset TOML file.
        file: PathBuf,
        /// Where the key is: `top level`, `general`, `datasets.N` or `datasets.N.subsets.M`.
        table: String,
        /// The unknown key as written.
        key: String,
        /// Either empty or ` (did you mean `x`?)`.
        hint: String,
    },

    /// A key is present but its value is unusable.
    #[error("{file}: [{table}] `{key}`: {message}")]
    BadValue {
        /// The dataset TOML file (or the dataset folder, for a folder-style dataset).
        file: PathBuf,
        /// Where the key is: `top level`, `general`, `datasets.N` or `datasets.N.subsets.M`.
        table: String,
        /// The key whose value is unusable.
        key: String,
        /// What is wrong with the value and what to write instead.
        message: String,
    },

    /// An image could not be decoded.
    #[error("{path}: {reason}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// Why it failed (the decoder's reason, or that the file changed since it was checked).
        reason: String,
    },

    /// Blocking problems were found in the dataset and skipping was not requested.
    #[error(
        "{count} blocking problem(s) in the dataset; fix them or opt in to skipping bad files \
         (skip_bad_images = true):\n{listing}"
    )]
    BadInputs {
        /// How many blocking problems were found.
        count: usize,
        /// One `  - path: message` line per blocking problem.
        listing: String,
    },

    /// The dataset has no usable image.
    #[error("no usable image in the dataset ({detail}); check image_dir and the image extensions")]
    Empty {
        /// What was looked at, e.g. how many image files were listed and none usable.
        detail: String,
    },

    /// A cache entry could not be written or is unusable.
    #[error("cache {path}: {message}")]
    Cache {
        /// The cache folder or entry (`<mask>` for a mask that does not fit its latent).
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// An encoder failed on one item.
    #[error("encoder `{encoder}` failed on {item}: {message}")]
    Encoder {
        /// The encoder's identity, as given to the cache.
        encoder: String,
        /// What was being encoded: an image path, or `caption "…"`.
        item: String,
        /// The encoder's error message.
        message: String,
    },

    /// `validation_split` cannot be honoured for this dataset.
    #[error("validation_split = {fraction}: {message}")]
    ValidationSplit {
        /// The requested fraction of training items to hold out.
        fraction: f64,
        /// Why it cannot be honoured (out of [0, 1), or too few items).
        message: String,
    },

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
