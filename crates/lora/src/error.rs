//! The crate's error type.

/// Errors from building adapters or target selectors.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A block list such as `"0,1,8-12"` could not be parsed.
    #[error("invalid block list {spec:?}: {reason}; write indices and ranges like \"0,1,8-12\"")]
    BlockList {
        /// The block list as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A regex rule did not compile.
    #[error("invalid target regex {pattern:?}: {source}")]
    Regex {
        /// The regex as given.
        pattern: String,
        /// The regex crate's error.
        #[source]
        source: regex::Error,
    },
    /// Rank, alpha or a dropout probability is out of range.
    #[error("invalid LoRA setting for {what}: {reason}")]
    Setting {
        /// The module the setting is for (its module path).
        what: String,
        /// Which value is out of range, and why.
        reason: String,
    },
    /// An unknown preset or module-type name.
    #[error("unknown {what} {name:?}; expected one of: {expected}")]
    UnknownName {
        /// The kind of name, e.g. `LoRA target preset` or `module type`.
        what: &'static str,
        /// The name as given.
        name: String,
        /// The accepted names, comma-separated.
        expected: String,
    },
    /// A row range does not fit the linear it is applied to.
    #[error("adapter rows {start}..{end} do not fit linear {path:?} with {d_out} outputs")]
    Rows {
        /// Module path of the linear.
        path: String,
        /// First output row the adapter covers.
        start: usize,
        /// One past the last output row the adapter covers.
        end: usize,
        /// Output features of the linear.
        d_out: usize,
    },
}
