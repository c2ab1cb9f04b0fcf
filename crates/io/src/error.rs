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
        /// The file or folder the call was made on.
        path: PathBuf,
        /// What was being done, e.g. `open`, `mmap` or `fsync directory`.
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The file has zero bytes.
    #[error(
        "{path}: the file is empty (0 bytes); it is not a safetensors file — re-download or \
         re-export it"
    )]
    EmptyFile {
        /// The file that was being read.
        path: PathBuf,
    },

    /// The file is shorter than the 8-byte header-length prefix.
    #[error(
        "{path}: truncated: only {len} bytes, a safetensors file starts with an 8-byte header \
         length; the file is damaged or incomplete — re-download or re-export it"
    )]
    Truncated {
        /// The file that was being read.
        path: PathBuf,
        /// The file's length in bytes.
        len: u64,
    },

    /// The declared JSON header is too small to hold even `{}`.
    #[error(
        "{path}: header length {header_len} is too small to hold a JSON object; the file is not a \
         safetensors file or is damaged"
    )]
    HeaderTooSmall {
        /// The file that was being read.
        path: PathBuf,
        /// The header length the 8-byte prefix declares.
        header_len: u64,
    },

    /// The declared JSON header is larger than the sanity limit.
    #[error(
        "{path}: header length {header_len} exceeds the {limit}-byte limit; the file is not a \
         safetensors file or is damaged"
    )]
    HeaderTooLarge {
        /// The file that was being read.
        path: PathBuf,
        /// The header length the 8-byte prefix declares.
        header_len: u64,
        /// The largest header length accepted, in bytes.
        limit: u64,
    },

    /// The declared JSON header runs past the end of the file.
    #[error(
        "{path}: header length {header_len} runs past the end of the {file_len}-byte file; the \
         file is truncated — re-download or re-export it"
    )]
    HeaderBeyondFile {
        /// The file that was being read.
        path: PathBuf,
        /// The header length the 8-byte prefix declares.
        header_len: u64,
        /// The file's length in bytes.
        file_len: u64,
    },

    /// The JSON header is not valid UTF-8.
    #[error(
        "{path}: the JSON header is not valid UTF-8 (first bad byte at header offset \
         {valid_up_to}); the file is damaged"
    )]
    HeaderNotUtf8 {
        /// The file that was being read.
        path: PathBuf,
        /// Offset within the JSON header of the first byte that is not valid UTF-8.
        valid_up_to: usize,
    },

    /// The JSON header does not parse.
    #[error(
        "{path}: the JSON header is invalid at line {line}, column {column}: {message}; the file \
         is damaged or was written by a broken exporter"
    )]
    HeaderJson {
        /// The file that was being read.
        path: PathBuf,
        /// Line of the JSON header where parsing failed (1-based).
        line: usize,
        /// Column of that line where parsing failed (1-based).
        column: usize,
        /// The JSON parser's message.
        message: String,
    },

    /// The same key appears twice in the JSON header.
    #[error(
        "{path}: tensor key `{key}` appears more than once in the header; the file is ambiguous \
         — re-export it"
    )]
    DuplicateKey {
        /// The file that was being read.
        path: PathBuf,
        /// The key that appears more than once.
        key: String,
    },

    /// A tensor entry names a dtype this crate does not know.
    #[error(
        "{path}: tensor `{key}` has unknown dtype `{dtype}`; known: BOOL, U8, I8, I16, U16, I32, \
         U32, I64, U64, F8_E4M3, F8_E5M2, F8_E8M0, F16, BF16, F32, F64 — convert the file with a \
         tool that writes one of these"
    )]
    UnknownDtype {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The dtype string as written in the header.
        dtype: String,
    },

    /// A tensor entry is missing a field or has one of the wrong type.
    #[error("{path}: tensor `{key}`: {problem}; the header is malformed — re-export the file")]
    InvalidEntry {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// What is missing or wrong in the entry.
        problem: String,
    },

    /// `__metadata__` is not a map from strings to strings.
    #[error(
        "{path}: `__metadata__` {problem}; it must map strings to strings — re-export the file"
    )]
    BadMetadata {
        /// The file that was being read.
        path: PathBuf,
        /// What is wrong with `__metadata__`, e.g. that a value is not a string.
        problem: String,
    },

    /// A tensor's bytes lie (partly) outside the data section.
    #[error(
        "{path}: tensor `{key}` has data_offsets [{start}, {end}) outside the {data_len}-byte data \
         section; the file is truncated or damaged"
    )]
    OffsetsOutOfRange {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// Start of the tensor's `data_offsets`, relative to the data section.
        start: u64,
        /// End (exclusive) of the tensor's `data_offsets`, relative to the data section.
        end: u64,
        /// Length of the data section in bytes.
        data_len: u64,
    },

    /// Two tensors share bytes.
    #[error(
        "{path}: tensors `{first}` and `{second}` overlap in the data section; the file is damaged"
    )]
    OverlappingTensors {
        /// The file that was being read.
        path: PathBuf,
        /// Key of the tensor that starts first.
        first: String,
        /// Key of the tensor that starts inside the first one's bytes.
        second: String,
    },

    /// Bytes between (or before) tensors belong to no tensor.
    #[error(
        "{path}: bytes [{gap_start}, {gap_end}) of the data section belong to no tensor (before \
         `{next}`); the offsets are not contiguous — the file is damaged"
    )]
    GapBetweenTensors {
        /// The file that was being read.
        path: PathBuf,
        /// Key of the tensor that follows the gap.
        next: String,
        /// Start of the gap, relative to the data section.
        gap_start: u64,
        /// End (exclusive) of the gap, relative to the data section.
        gap_end: u64,
    },

    /// Bytes after the last tensor belong to no tensor.
    #[error(
        "{path}: {extra} trailing bytes after the last tensor (data section {data_len} bytes, \
         tensors end at {used}); the file is damaged or was appended to"
    )]
    TrailingBytes {
        /// The file that was being read.
        path: PathBuf,
        /// Length of the data section in bytes.
        data_len: u64,
        /// Where the last tensor ends, relative to the data section.
        used: u64,
        /// The number of bytes after the last tensor (`data_len - used`).
        extra: u64,
    },

    /// The byte length of a tensor does not match shape × dtype size.
    #[error(
        "{path}: tensor `{key}` ({dtype} {shape:?}) needs {expected} bytes but its data_offsets \
         span {actual}; the header is inconsistent — re-export the file"
    )]
    SizeMismatch {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The tensor's dtype name.
        dtype: String,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// Bytes the shape and dtype need.
        expected: u64,
        /// Bytes the tensor's `data_offsets` span.
        actual: u64,
    },

    /// The element count of a tensor overflows.
    #[error(
        "{path}: tensor `{key}` has shape {shape:?} whose size overflows; the header is damaged"
    )]
    ShapeOverflow {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The tensor's shape.
        shape: Vec<usize>,
    },

    /// A tensor was asked for that the file does not contain.
    #[error(
        "{path}: no tensor named `{key}` ({count} tensors in the file); check the key or the model \
         variant"
    )]
    TensorNotFound {
        /// The file (or sharded checkpoint) that was searched.
        path: PathBuf,
        /// The key that was asked for.
        key: String,
        /// The number of tensors the file holds.
        count: usize,
    },

    /// The tensor's dtype cannot be turned into what was asked.
    #[error("{path}: tensor `{key}` has dtype {dtype}, which cannot be read as {wanted}")]
    UnsupportedDtype {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor's key (with its shape where that is what does not fit).
        key: String,
        /// The tensor's dtype name.
        dtype: String,
        /// What it was to be read as, e.g. `a scalar`.
        wanted: &'static str,
    },

    /// A float tensor holds NaN or ±inf (a poisoned or diverged checkpoint).
    #[error(
        "{path}: tensor `{key}` holds {value} at element {index} of {count}; the file is damaged \
         or was saved from a diverged run: resume from an earlier checkpoint, or retrain"
    )]
    NonFinite {
        /// The file that was being read.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The first non-finite value found (NaN, +inf or -inf).
        value: f32,
        /// Flat index of that value within the tensor.
        index: usize,
        /// The number of elements of the tensor.
        count: usize,
    },

    /// A sharded-checkpoint index or folder is malformed.
    #[error("{path}: {problem}")]
    ShardIndex {
        /// The index file or checkpoint folder.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// A shard named by an index file does not exist.
    #[error(
        "{index}: shard `{shard}` (holding e.g. `{example_key}`) does not exist at {expected}; \
         download the missing shard or fix the index"
    )]
    MissingShard {
        /// The index file (`*.safetensors.index.json`).
        index: PathBuf,
        /// The shard's file name as the index gives it.
        shard: String,
        /// One tensor key the index places in that shard.
        example_key: String,
        /// Where the shard was looked for.
        expected: PathBuf,
    },

    /// A tensor shape / data pair given to this crate is inconsistent.
    #[error("tensor {what}: shape {shape:?} holds {expected} values but {actual} were given")]
    TensorShape {
        /// What was given the pair, e.g. `HostTensor::new`.
        what: String,
        /// The shape given.
        shape: Vec<usize>,
        /// The number of values the shape holds.
        expected: usize,
        /// The number of values given.
        actual: usize,
    },

    /// A matrix operation got operands of the wrong shapes.
    #[error("{op}: incompatible shapes {left:?} and {right:?}")]
    MatrixShape {
        /// The operation, e.g. `matmul`, `transpose` or `rows`.
        op: &'static str,
        /// Shape of the (left) operand.
        left: Vec<usize>,
        /// Shape of the right operand; for `rows` the requested `[start, end]`, for
        /// `transpose` empty.
        right: Vec<usize>,
    },

    /// A tensor cannot be written as requested.
    #[error("{path}: cannot write tensor `{key}`: {problem}")]
    WriteInvalid {
        /// The file being written.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// Why it cannot be written.
        problem: String,
    },

    /// The key set of a LoRA file matches no known format.
    #[error(
        "{path}: cannot tell which LoRA format this is (keys e.g. {examples}); supported: kohya \
         (lora_unet_*), PEFT/diffusers (transformer.*), ComfyUI (diffusion_model.*), BFL \
         (double_blocks.*.lora_A), XLabs (*.processor.*), OneTrainer (lora_transformer_*)"
    )]
    UnknownLoraFormat {
        /// The LoRA file.
        path: PathBuf,
        /// A few of the file's keys, for the message.
        examples: String,
    },

    /// A key in a LoRA file cannot be placed.
    #[error("{path}: LoRA key `{key}` ({format}): {problem}")]
    LoraKey {
        /// The LoRA file.
        path: PathBuf,
        /// The key as written in the file.
        key: String,
        /// The file's LoRA format name.
        format: &'static str,
        /// Why the key cannot be placed.
        problem: String,
    },

    /// A LoRA module read from a file is malformed or cannot be placed; `source` says how.
    #[error("{path}: LoRA module `{module}` ({format}): {source}")]
    LoraModule {
        /// The LoRA file.
        path: PathBuf,
        /// The module: the file's key stem, or the canonical key it was mapped to.
        module: String,
        /// The file's LoRA format name.
        format: &'static str,
        /// What is wrong with the module.
        #[source]
        source: Box<IoError>,
    },

    /// The LoRA cannot be written in the requested format.
    #[error("{path}: cannot write LoRA as {format}: {problem}")]
    LoraWrite {
        /// The file being written.
        path: PathBuf,
        /// The requested format's name.
        format: &'static str,
        /// Why the LoRA cannot be written in that format.
        problem: String,
    },

    /// One module of a LoRA cannot be written in the requested format; `source` says why.
    #[error("{path}: cannot write LoRA as {format}: module `{module}`: {source}")]
    LoraWriteModule {
        /// The file being written.
        path: PathBuf,
        /// The requested format's name.
        format: &'static str,
        /// The module's canonical key.
        module: String,
        /// What is wrong with the module.
        #[source]
        source: Box<IoError>,
    },

    /// A diffusers adapter-config entry of the header metadata is not a JSON object.
    #[error(
        "{path}: header metadata `{key}` is not a JSON object; remove it or re-export the LoRA"
    )]
    AdapterMetadataJson {
        /// The LoRA file.
        path: PathBuf,
        /// The metadata key, e.g. `lora_adapter_metadata`.
        key: String,
    },

    /// An alpha in the diffusers adapter config is not a number.
    #[error(
        "{path}: header metadata `{key}`: {component}.{field} is not a number; \
         remove it or re-export the LoRA"
    )]
    AdapterAlpha {
        /// The LoRA file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// The adapter component, e.g. `transformer`.
        component: String,
        /// The field, e.g. `lora_alpha` or `alpha_pattern[to_q]`.
        field: String,
    },

    /// An `alpha_pattern` key of the diffusers adapter config is not a usable regex.
    #[error("{path}: header metadata `{key}`: alpha_pattern key `{pattern}`: {source}")]
    AdapterAlphaPattern {
        /// The LoRA file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// The pattern as given.
        pattern: String,
        /// The regex crate's error.
        #[source]
        source: regex::Error,
    },

    /// A LoRA module's `down` or `up` holds a different number of values than its shape says.
    #[error(
        "{tensor} has shape {shape:?} but holds {len} values; \
         tensor data length does not match its shape"
    )]
    LoraTensorData {
        /// `down` or `up`.
        tensor: &'static str,
        /// The tensor's shape.
        shape: Vec<usize>,
        /// The number of values it holds.
        len: usize,
    },

    /// A LoRA module's `down` or `up` is not a matrix.
    #[error("down {down:?} and up {up:?} must both be 2-D ([rank, in] and [out, rank])")]
    LoraNot2d {
        /// Shape of `down`.
        down: Vec<usize>,
        /// Shape of `up`.
        up: Vec<usize>,
    },

    /// A LoRA module's `down` and `up` disagree on the rank.
    #[error("down {down:?} has rank {down_rank} but up {up:?} has rank {up_rank}")]
    LoraRankMismatch {
        /// Shape of `down`.
        down: Vec<usize>,
        /// Shape of `up`.
        up: Vec<usize>,
        /// Rows of `down`.
        down_rank: usize,
        /// Columns of `up`.
        up_rank: usize,
    },

    /// A LoRA module has rank 0.
    #[error("rank is 0 (down {down:?}, up {up:?})")]
    LoraZeroRank {
        /// Shape of `down`.
        down: Vec<usize>,
        /// Shape of `up`.
        up: Vec<usize>,
    },

    /// A LoRA module's output bias does not match its output features.
    #[error("bias shape {bias:?} (holding {len} values) does not match out features {out}")]
    LoraBiasShape {
        /// Shape of the bias.
        bias: Vec<usize>,
        /// Values the bias holds.
        len: usize,
        /// Output features (rows of `up`).
        out: usize,
    },

    /// A LoRA module's alpha is NaN or infinite.
    #[error("alpha {alpha} is not finite")]
    LoraAlpha {
        /// The alpha.
        alpha: f32,
    },

    /// A LoRA module cannot be split into the requested output-row blocks.
    #[error("cannot split {rows} output rows into {dims:?}")]
    LoraSplitRows {
        /// Output rows of the module.
        rows: usize,
        /// The requested block sizes.
        dims: Vec<usize>,
    },

    /// [`fuse_rows`](crate::lora::fuse::fuse_rows) got no pieces.
    #[error("nothing to fuse")]
    LoraFuseEmpty,

    /// Pieces to fuse have different input features.
    #[error("pieces have different input features ({expected} and {found})")]
    LoraFuseInFeatures {
        /// Input features of the first piece.
        expected: usize,
        /// Input features of the differing piece.
        found: usize,
    },

    /// Pieces to fuse overlap.
    #[error("pieces overlap at output row {row}")]
    LoraFuseOverlap {
        /// The first output row of the overlapping piece.
        row: usize,
    },

    /// A piece to fuse reaches past the fused module's output rows.
    #[error("a piece ends at row {end}, past the {rows} output rows")]
    LoraFuseOverflow {
        /// The row the piece ends at (exclusive).
        end: usize,
        /// Output rows of the fused module.
        rows: usize,
    },

    /// The halves of an odd number of output rows cannot be swapped.
    #[error("cannot swap halves of {rows} output rows (odd)")]
    LoraSwapOdd {
        /// Output rows of the module.
        rows: usize,
    },

    /// Split pieces were given for a module that is not fused.
    #[error("`{key}` is not a fused module")]
    LoraNotFused {
        /// The canonical module key.
        key: String,
    },

    /// A piece of a fused single-block `linear1` is too short to hold its MLP rows.
    #[error("piece `{piece}` has {rows} output rows, too few for its segments")]
    LoraPieceRows {
        /// The file's key stem of the piece.
        piece: String,
        /// Its output rows.
        rows: usize,
    },

    /// A piece names a segment the fused module does not have.
    #[error("`{piece}` refers to segment {segment} of {segments}")]
    LoraPieceSegment {
        /// The file's key stem of the piece.
        piece: String,
        /// The (last) segment index it covers.
        segment: usize,
        /// The number of segments of the fused module.
        segments: usize,
    },

    /// A piece's shape does not fit its place in the fused module.
    #[error("`{piece}` is {found:?} but its place in the fused module needs {expected:?}")]
    LoraPieceShape {
        /// The file's key stem of the piece.
        piece: String,
        /// Its `[out, in]`.
        found: [usize; 2],
        /// The `[out, in]` its segments need.
        expected: [usize; 2],
    },

    /// Two keys of a file map to the same module.
    #[error("given twice (by `{first}` and `{second}`)")]
    LoraModuleTwice {
        /// The first key stem.
        first: String,
        /// The second key stem.
        second: String,
    },

    /// A fused module is given both whole and as split pieces.
    #[error("is given both whole and as split pieces")]
    LoraWholeAndPieces,

    /// A LyCORIS (LoKr / LoHa) module or DoRA magnitude is malformed; `problem` says how.
    #[error("{problem}")]
    LycorisShape {
        /// What is wrong, naming the tensors and their shapes.
        problem: String,
    },

    /// A module has no key in the requested format.
    #[error("is not a module {format} keys can name (a Flux transformer, CLIP-L or T5 linear)")]
    LoraUnnamed {
        /// The format's name.
        format: &'static str,
    },

    /// A fused module's shape does not split into its diffusers modules.
    #[error("shape {shape:?} cannot be split into its diffusers modules")]
    LoraUnsplittable {
        /// `[out, in]` of the module.
        shape: [usize; 2],
    },

    /// A LoRA tool operation (resize, extract, merge) cannot be done as asked.
    #[error("{path}: cannot {op}: {problem}")]
    LoraOp {
        /// The file the operation was working on: the LoRA, or the base or tuned checkpoint.
        path: PathBuf,
        /// The operation, as a verb phrase, e.g. `resize the LoRA` or `extract a LoRA`.
        op: &'static str,
        /// Why it cannot be done.
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
