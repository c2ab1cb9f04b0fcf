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
}
