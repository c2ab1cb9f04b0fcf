//! The crate's error type.

/// Errors from building adapters or target selectors.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// A block list such as `"0,1,8-12"` could not be parsed.
    #[error("invalid block list {spec:?}: {reason}; write indices and ranges like \"0,1,8-12\"")]
    BlockList { spec: String, reason: String },
    /// A regex rule did not compile.
    #[error("invalid target regex {pattern:?}: {source}")]
    Regex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    /// Rank, alpha or a dropout probability is out of range.
    #[error("invalid LoRA setting for {what}: {reason}")]
    Setting { what: String, reason: String },
    /// An unknown preset or module-type name.
    #[error("unknown {what} {name:?}; expected one of: {expected}")]
    UnknownName { what: &'static str, name: String, expected: String },
    /// A row range does not fit the linear it is applied to.
    #[error("adapter rows {start}..{end} do not fit linear {path:?} with {d_out} outputs")]
    Rows { path: String, start: usize, end: usize, d_out: usize },
}
