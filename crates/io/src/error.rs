//! The crate's one error type. Every variant names the file (and the tensor key where there is
//! one), says what is wrong and what to do about it.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = IoError> = std::result::Result<T, E>;

/// Everything that can go wrong while reading or writing checkpoints and LoRA files.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// An operating-system I/O call failed.
    #[error("{path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The file has zero bytes.
    #[error("{path}: the file is empty (0 bytes); it is not a safetensors file — re-download or re-export it")]
    EmptyFile { path: PathBuf },

    /// The file is shorter than the 8-byte header-length prefix.
    #[error("{path}: truncated: only {len} bytes, a safetensors file starts with an 8-byte header length; the file is damaged or incomplete — re-download or re-export it")]
    Truncated { path: PathBuf, len: u64 },

    /// The declared JSON header is too small to hold even `{}`.
    #[error("{path}: header length {header_len} is too small to hold a JSON object; the file is not a safetensors file or is damaged")]
    HeaderTooSmall { path: PathBuf, header_len: u64 },

    /// The declared JSON header is larger than the sanity limit.
    #[error("{path}: header length {header_len} exceeds the {limit}-byte limit; the file is not a safetensors file or is damaged")]
    HeaderTooLarge {
        path: PathBuf,
        header_len: u64,
        limit: u64,
    },

    /// The declared JSON header runs past the end of the file.
    #[error("{path}: header length {header_len} runs past the end of the {file_len}-byte file; the file is truncated — re-download or re-export it")]
    HeaderBeyondFile {
        path: PathBuf,
        header_len: u64,
        file_len: u64,
    },

    /// The JSON header is not valid UTF-8.
    #[error("{path}: the JSON header is not valid UTF-8 (first bad byte at header offset {valid_up_to}); the file is damaged")]
    HeaderNotUtf8 { path: PathBuf, valid_up_to: usize },

    /// The JSON header does not parse.
    #[error("{path}: the JSON header is invalid at line {line}, column {column}: {message}; the file is damaged or was written by a broken exporter")]
    HeaderJson {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    /// The same key appears twice in the JSON header.
    #[error("{path}: tensor key `{key}` appears more than once in the header; the file is ambiguous — re-export it")]
    DuplicateKey { path: PathBuf, key: String },

    /// A tensor entry names a dtype this crate does not know.
    #[error("{path}: tensor `{key}` has unknown dtype `{dtype}`; known: BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F8_E4M3, F8_E5M2, F8_E8M0, F16, BF16, F32, F64 — convert the file with a tool that writes one of these")]
    UnknownDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },

    /// A tensor entry is missing a field or has one of the wrong type.
    #[error("{path}: tensor `{key}`: {problem}; the header is malformed — re-export the file")]
    InvalidEntry {
        path: PathBuf,
        key: String,
        problem: String,
    },

    /// `__metadata__` is not a map from strings to strings.
    #[error(
        "{path}: `__metadata__` {problem}; it must map strings to strings — re-export the file"
    )]
    BadMetadata { path: PathBuf, problem: String },

    /// A tensor's bytes lie (partly) outside the data section.
    #[error("{path}: tensor `{key}` has data_offsets [{start}, {end}) outside the {data_len}-byte data section; the file is truncated or damaged")]
    OffsetsOutOfRange {
        path: PathBuf,
        key: String,
        start: u64,
        end: u64,
        data_len: u64,
    },

    /// Two tensors share bytes.
    #[error(
        "{path}: tensors `{first}` and `{second}` overlap in the data section; the file is damaged"
    )]
    OverlappingTensors {
        path: PathBuf,
        first: String,
        second: String,
    },

    /// Bytes between (or before) tensors belong to no tensor.
    #[error("{path}: bytes [{gap_start}, {gap_end}) of the data section belong to no tensor (before `{next}`); the offsets are not contiguous — the file is damaged")]
    GapBetweenTensors {
        path: PathBuf,
        next: String,
        gap_start: u64,
        gap_end: u64,
    },

    /// Bytes after the last tensor belong to no tensor.
    #[error("{path}: {extra} trailing bytes after the last tensor (data section {data_len} bytes, tensors end at {used}); the file is damaged or was appended to")]
    TrailingBytes {
        path: PathBuf,
        data_len: u64,
        used: u64,
        extra: u64,
    },

    /// The byte length of a tensor does not match shape × dtype size.
    #[error("{path}: tensor `{key}` ({dtype} {shape:?}) needs {expected} bytes but its data_offsets span {actual}; the header is inconsistent — re-export the file")]
    SizeMismatch {
        path: PathBuf,
        key: String,
        dtype: String,
        shape: Vec<usize>,
        expected: u64,
        actual: u64,
    },

    /// The element count of a tensor overflows.
    #[error(
        "{path}: tensor `{key}` has shape {shape:?} whose size overflows; the header is damaged"
    )]
    ShapeOverflow {
        path: PathBuf,
        key: String,
        shape: Vec<usize>,
    },

    /// A tensor was asked for that the file does not contain.
    #[error("{path}: no tensor named `{key}` ({count} tensors in the file); check the key or the model variant")]
    TensorNotFound {
        path: PathBuf,
        key: String,
        count: usize,
    },

    /// The tensor's dtype cannot be turned into what was asked.
    #[error("{path}: tensor `{key}` has dtype {dtype}, which cannot be read as {wanted}")]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
        wanted: &'static str,
    },

    /// A float tensor holds NaN or ±inf (a poisoned or diverged checkpoint).
    #[error("{path}: tensor `{key}` holds {value} at element {index} of {count}; the file is damaged or \
             was saved from a diverged run: resume from an earlier checkpoint, or retrain")]
    NonFinite {
        path: PathBuf,
        key: String,
        value: f32,
        index: usize,
        count: usize,
    },

    /// A sharded-checkpoint index or folder is malformed.
    #[error("{path}: {problem}")]
    ShardIndex { path: PathBuf, problem: String },

    /// A shard named by an index file does not exist.
    #[error("{index}: shard `{shard}` (holding e.g. `{example_key}`) does not exist at {expected}; download the missing shard or fix the index")]
    MissingShard {
        index: PathBuf,
        shard: String,
        example_key: String,
        expected: PathBuf,
    },

    /// A tensor shape / data pair given to this crate is inconsistent.
    #[error("tensor {what}: shape {shape:?} holds {expected} values but {actual} were given")]
    TensorShape {
        what: String,
        shape: Vec<usize>,
        expected: usize,
        actual: usize,
    },

    /// A matrix operation got operands of the wrong shapes.
    #[error("{op}: incompatible shapes {left:?} and {right:?}")]
    MatrixShape {
        op: &'static str,
        left: Vec<usize>,
        right: Vec<usize>,
    },

    /// A tensor cannot be written as requested.
    #[error("{path}: cannot write tensor `{key}`: {problem}")]
    WriteInvalid {
        path: PathBuf,
        key: String,
        problem: String,
    },

    /// The key set of a LoRA file matches no known format.
    #[error("{path}: cannot tell which LoRA format this is (keys e.g. {examples}); supported: kohya (lora_unet_*), PEFT/diffusers (transformer.*), ComfyUI (diffusion_model.*), BFL (double_blocks.*.lora_A), XLabs (*.processor.*), OneTrainer (lora_transformer_*)")]
    UnknownLoraFormat { path: PathBuf, examples: String },

    /// A key in a LoRA file cannot be placed.
    #[error("{path}: LoRA key `{key}` ({format}): {problem}")]
    LoraKey {
        path: PathBuf,
        key: String,
        format: &'static str,
        problem: String,
    },

    /// A LoRA module's tensors do not fit together.
    #[error("{path}: LoRA module `{module}`: {problem}")]
    LoraModule {
        path: PathBuf,
        module: String,
        problem: String,
    },

    /// The LoRA cannot be written in the requested format.
    #[error("{path}: cannot write LoRA as {format}: {problem}")]
    LoraWrite {
        path: PathBuf,
        format: &'static str,
        problem: String,
    },

    /// A LoRA tool operation (resize, extract, merge) cannot be done as asked.
    #[error("{path}: cannot {op}: {problem}")]
    LoraOp {
        path: PathBuf,
        op: &'static str,
        problem: String,
    },
}

impl IoError {
    /// Wraps an `std::io::Error` with the path and what was being done.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        IoError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
