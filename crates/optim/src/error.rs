//! The crate's one error type.

use thiserror::Error;

/// Everything that can go wrong configuring an optimizer or saving/loading its state.
#[derive(Debug, Error)]
pub enum OptimError {
    /// A configuration value is outside its valid range.
    #[error("invalid optimizer setting `{name}` = {value}: {reason}")]
    InvalidConfig {
        /// The setting's name.
        name: &'static str,
        /// The offending value, formatted.
        value: String,
        /// What is allowed.
        reason: String,
    },

    /// A parameter-group pattern is not a valid regular expression.
    #[error("parameter group `{group}`: pattern `{pattern}` is not a valid regex ({source}); fix the pattern")]
    BadGroupPattern {
        /// Group name.
        group: String,
        /// The pattern as given.
        pattern: String,
        /// The regex crate's error.
        source: regex::Error,
    },

    /// Reading or writing the state file failed at the OS level.
    #[error("optimizer state file `{path}`: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },

    /// Writing the state file failed (the atomic writer names the file and the step).
    #[error(transparent)]
    Write(#[from] fluxlora_io::IoError),

    /// The state file is not a valid safetensors file or lacks our format marker.
    #[error("optimizer state `{path}`: {problem}; {fix}")]
    BadStateFile {
        /// The file (or `<bytes>` for in-memory records).
        path: String,
        /// What is wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },

    /// The state was written by a different optimizer.
    #[error("optimizer state `{path}` was written by `{found}`, but this optimizer is `{expected}`; load it into a `{found}` optimizer or start fresh")]
    WrongOptimizer {
        /// The file.
        path: String,
        /// Our optimizer's name.
        expected: String,
        /// The name recorded in the file.
        found: String,
    },

    /// A state tensor is missing or has the wrong shape/dtype for the parameter it belongs to.
    #[error("optimizer state `{path}`, key `{key}`: {problem}; the state does not belong to this model/optimizer configuration")]
    StateMismatch {
        /// The file.
        path: String,
        /// The safetensors key.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

impl OptimError {
    pub(crate) fn config(name: &'static str, value: impl std::fmt::Display, reason: &str) -> Self {
        Self::InvalidConfig {
            name,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}
