//! The crate's one error type.

use burn::tensor::DType;
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
    #[error(
        "parameter group `{group}`: pattern `{pattern}` is not a valid regex ({source}); fix the \
         pattern"
    )]
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
    #[error(
        "optimizer state `{path}` was written by `{found}`, but this optimizer is `{expected}`; \
         load it into a `{found}` optimizer or start fresh"
    )]
    WrongOptimizer {
        /// The file.
        path: String,
        /// Our optimizer's name.
        expected: String,
        /// The name recorded in the file.
        found: String,
    },

    /// A state tensor is missing or has the wrong shape/dtype for the parameter it belongs to.
    #[error(
        "optimizer state `{path}`, key `{key}`: {problem}; the state does not belong to this \
         model/optimizer configuration"
    )]
    StateMismatch {
        /// The file.
        path: String,
        /// The safetensors key.
        key: String,
        /// What is wrong.
        problem: String,
    },

    /// One parameter's saved state (or, with key `__optimizer__`, the optimizer-wide globals)
    /// does not fit this optimizer; `source` says how.
    #[error(
        "optimizer state `{path}`, key `{key}`: {source}; \
         the state does not belong to this model/optimizer configuration"
    )]
    InvalidState {
        /// The file (`<loaded state>` when validated lazily at the first step).
        path: String,
        /// The parameter path, or `__optimizer__` for the globals.
        key: String,
        /// What is wrong with it.
        #[source]
        source: Box<OptimError>,
    },

    /// A state tensor the optimizer needs is not in the saved state.
    #[error("state tensor `{name}` is missing")]
    MissingStateTensor {
        /// The state name, e.g. `exp_avg`.
        name: String,
    },

    /// A state tensor has the wrong dtype.
    #[error("`{name}` has dtype {found:?}, expected {expected:?}")]
    StateDtype {
        /// The state name.
        name: String,
        /// The dtype in the saved state.
        found: DType,
        /// The dtype the optimizer stores it as.
        expected: DType,
    },

    /// A state tensor has the wrong number of elements.
    #[error("`{name}` has {found} elements, expected {expected}")]
    StateLength {
        /// The state name.
        name: String,
        /// Elements in the saved state.
        found: usize,
        /// Elements the parameter needs.
        expected: usize,
    },

    /// A step counter is negative.
    #[error("`{name}` holds {value}, expected a step count >= 0")]
    BadStepCount {
        /// The state name, e.g. `step`.
        name: String,
        /// The saved value.
        value: i64,
    },

    /// An optimizer-wide scalar (Prodigy's `d`, ...) is not in the saved state.
    #[error("global `{name}` is missing")]
    MissingGlobal {
        /// The global's name.
        name: String,
    },

    /// An optimizer-wide scalar that counts steps is not a non-negative integer.
    #[error("global `{name}` = {value} is not a step count")]
    GlobalNotStepCount {
        /// The global's name.
        name: String,
        /// The saved value.
        value: f64,
    },

    /// Prodigy's sliced state was saved with a different `slice_p`.
    #[error(
        "`s` has {found} elements but slice_p = {slice_p} needs {expected}; \
         load with the slice_p it was saved with"
    )]
    SliceMismatch {
        /// Elements of the saved `s`.
        found: usize,
        /// The configured `slice_p`.
        slice_p: usize,
        /// Elements `slice_p` gives for this parameter.
        expected: usize,
    },

    /// A moment is present in the saved state where the configuration has none, or absent where
    /// it needs one.
    #[error(
        "`{moment}` is {} in the saved state but {option} = {value} {}; \
         load with the {option} setting it was saved with",
        presence(.saved),
        need(.saved)
    )]
    MomentMismatch {
        /// The state name, e.g. `exp_avg`.
        moment: &'static str,
        /// Whether the saved state has it.
        saved: bool,
        /// The setting that decides whether it exists, e.g. `beta1`.
        option: &'static str,
        /// The setting's configured value, formatted.
        value: String,
    },

    /// AdamW8bit moments were saved 8-bit where the configuration keeps them f32, or the
    /// other way round.
    #[error(
        "moments are {} but min_8bit_size = {min_8bit_size} makes a {elements}-element tensor \
         {}; load with the min_8bit_size it was saved with",
        bits(.saved_8bit),
        wanted_bits(.saved_8bit)
    )]
    QuantMismatch {
        /// Elements of the parameter.
        elements: usize,
        /// The configured `min_8bit_size`.
        min_8bit_size: usize,
        /// Whether the saved moments are 8-bit.
        saved_8bit: bool,
    },
}

fn presence(saved: &bool) -> &'static str {
    if *saved {
        "present"
    } else {
        "absent"
    }
}

fn need(saved: &bool) -> &'static str {
    if *saved {
        "keeps none"
    } else {
        "needs it"
    }
}

fn bits(eight: &bool) -> &'static str {
    if *eight {
        "8-bit"
    } else {
        "f32"
    }
}

fn wanted_bits(saved_8bit: &bool) -> &'static str {
    bits(&!*saved_8bit)
}

impl OptimError {
    pub(crate) fn config(name: &'static str, value: impl std::fmt::Display, reason: &str) -> Self {
        Self::InvalidConfig {
            name,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Wraps a state problem as [`OptimError::InvalidState`] of `key` in file `path`.
    pub(crate) fn in_state(self, path: &str, key: &str) -> Self {
        Self::InvalidState {
            path: path.to_string(),
            key: key.to_string(),
            source: Box::new(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_messages_name_the_setting() {
        let e = OptimError::QuantMismatch {
            elements: 12,
            min_8bit_size: 4,
            saved_8bit: false,
        };
        let e = e.in_state("s.safetensors", "w").to_string();
        assert!(
            e.starts_with("optimizer state `s.safetensors`, key `w`: moments are f32"),
            "{e}"
        );
        assert!(
            e.contains("min_8bit_size = 4 makes a 12-element tensor 8-bit"),
            "{e}"
        );
        let e = OptimError::MomentMismatch {
            moment: "exp_avg",
            saved: true,
            option: "beta1",
            value: "0".into(),
        };
        let e = e.to_string();
        assert!(e.starts_with("`exp_avg` is present in the saved state but beta1 = 0 keeps none"));
    }
}
