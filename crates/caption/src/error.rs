//! [`CaptionError`], the crate's one error type: every message names the file (or image, or
//! option), what is wrong, and how to fix it.

use std::path::PathBuf;

/// Everything that can go wrong while editing, tagging or captioning a dataset folder.
#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    /// An operating-system call on a file or folder failed.
    #[error("{path}: {action} failed: {source}")]
    Io {
        /// The file or folder the call was made on.
        path: PathBuf,
        /// What was being done, e.g. `reading the caption` or `listing the folder`.
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The dataset folder does not exist or is not a folder.
    #[error(
        "{path}: not a folder; pass the folder that holds the images (jpg, jpeg, png, webp, bmp)"
    )]
    NotAFolder {
        /// The path that was given as the dataset folder.
        path: PathBuf,
    },

    /// A caption file is not UTF-8 text.
    #[error(
        "{path}: the caption is not UTF-8 text; re-save it as UTF-8 (or delete it and caption the \
         image again)"
    )]
    NotUtf8 {
        /// The caption file that is not UTF-8.
        path: PathBuf,
    },

    /// An image could not be opened or decoded.
    #[error(
        "{path}: cannot decode the image: {reason}; re-export it as JPEG/PNG or remove it from the \
         folder"
    )]
    Image {
        /// The image file.
        path: PathBuf,
        /// Why decoding (or re-encoding for upload) failed.
        reason: String,
    },

    /// The trigger word cannot be used.
    #[error("trigger word {trigger:?}: {reason}")]
    InvalidTrigger {
        /// The trigger word as given, before trimming.
        trigger: String,
        /// Why it is rejected (empty, holds a comma or line break, or `[`/`]`) and the fix.
        reason: &'static str,
    },

    /// An option is out of range.
    #[error("option `{name}`: {message}")]
    InvalidOption {
        /// The option's name, e.g. `threads`, `caption_extension` or `vlm_url`.
        name: &'static str,
        /// What is wrong with its value and how to fix it.
        message: String,
    },

    /// The weights file could not be read (the message names the file and the fix).
    #[error(transparent)]
    Weights(#[from] fluxlora_io::IoError),

    /// A tensor the model needs is not in the weights file.
    #[error("{path}: tensor `{name}` is missing; {fix}")]
    MissingTensor {
        /// The weights file (safetensors).
        path: PathBuf,
        /// The name of the missing tensor, e.g. `patch_embed.proj.weight`.
        name: String,
        /// What the missing tensor means and how to fix it.
        fix: &'static str,
    },

    /// A tensor has a shape the model cannot use.
    #[error(
        "{path}: tensor `{name}` has shape {found:?}, expected {expected}; the file is not a timm \
         ViT checkpoint or belongs to another model size"
    )]
    TensorShape {
        /// The weights file (safetensors).
        path: PathBuf,
        /// The name of the tensor with the wrong shape.
        name: String,
        /// The shape the model needs, as text (may name dimensions, e.g. `[embed_dim]`).
        expected: String,
        /// The shape stored in the file.
        found: Vec<usize>,
    },

    /// The timm `config.json` (or a setting derived from the weights) is inconsistent.
    #[error("{path}: {message}")]
    ModelConfig {
        /// The `config.json`, or the weights file when the problem comes from the weights.
        path: PathBuf,
        /// What is inconsistent and how to fix it.
        message: String,
    },

    /// `selected_tags.csv` could not be parsed.
    #[error(
        "{path}, line {line}: {message}; the file must be the tagger's selected_tags.csv (columns \
         tag_id,name,category,count)"
    )]
    Labels {
        /// The tag list (`selected_tags.csv`).
        path: PathBuf,
        /// The 1-based line with the problem; 0 when the whole file is unreadable (not UTF-8).
        line: usize,
        /// What is wrong with that line.
        message: String,
    },

    /// The label list and the classifier head disagree in size.
    #[error(
        "{labels_path} lists {labels} tags but {weights_path} has {classes} classes; use the \
         selected_tags.csv that ships with these weights"
    )]
    LabelCount {
        /// The tag list (`selected_tags.csv`).
        labels_path: PathBuf,
        /// How many tags the tag list holds.
        labels: usize,
        /// The weights file.
        weights_path: PathBuf,
        /// How many classes the weights' classifier head outputs.
        classes: usize,
    },

    /// Pixels of the wrong shape were passed to the tagger.
    #[error(
        "tagger input has shape {found:?}, expected [batch, 3, {size}, {size}]; preprocess images \
         with `preprocess_image`"
    )]
    InputShape {
        /// The shape that was passed (for a flat pixel buffer, just its length).
        found: Vec<usize>,
        /// The square input side, in pixels, the model expects.
        size: usize,
    },

    /// The captioning server answered with an error status (after retries for 429 / 5xx).
    #[error(
        "{image}: {url} answered HTTP {status} after {attempts} attempt(s): {body}; check the \
         server log, the model name and the API key"
    )]
    HttpStatus {
        /// The image being captioned.
        image: PathBuf,
        /// The chat-completions endpoint that was called.
        url: String,
        /// The HTTP status code of the last answer.
        status: u16,
        /// How many requests were made, retries included.
        attempts: u32,
        /// The start of the answer's body.
        body: String,
    },

    /// The captioning server could not be reached (after retries).
    #[error(
        "{image}: cannot reach {url} after {attempts} attempt(s): {reason}; start the server or \
         fix --vlm-url"
    )]
    Unreachable {
        /// The image being captioned.
        image: PathBuf,
        /// The chat-completions endpoint that was called.
        url: String,
        /// How many requests were tried, retries included.
        attempts: u32,
        /// The transport error of the last attempt (connection refused, DNS failure, …).
        reason: String,
    },

    /// The captioning server did not answer in time.
    #[error(
        "{image}: {url} did not answer within {seconds} s; raise the timeout or use a \
         smaller/faster model"
    )]
    Timeout {
        /// The image being captioned.
        image: PathBuf,
        /// The chat-completions endpoint that was called.
        url: String,
        /// The configured request timeout, in whole seconds (at least 1).
        seconds: u64,
    },

    /// The captioner produced nothing for an image.
    #[error(
        "{image}: {captioner} produced an empty caption; lower the tag thresholds or change the \
         prompt"
    )]
    EmptyCaption {
        /// The image that got no caption.
        image: PathBuf,
        /// The captioner's description ([`crate::Captioner::describe`]).
        captioner: String,
    },

    /// The server's answer is not an OpenAI-style chat completion; `source` says how.
    #[error(
        "{image}: unexpected answer from {url}: {source}; \
         the server must implement OpenAI's /v1/chat/completions"
    )]
    BadResponse {
        /// The image being captioned.
        image: PathBuf,
        /// The endpoint that answered.
        url: String,
        /// What is wrong with the answer.
        #[source]
        source: Box<CaptionError>,
    },

    /// The answer's body could not be read.
    #[error("reading the answer failed: {source}")]
    ResponseUnreadable {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The answer is not JSON.
    #[error("not JSON ({source}): {excerpt}")]
    ResponseNotJson {
        /// The JSON parser's error.
        #[source]
        source: serde_json::Error,
        /// The start of the answer.
        excerpt: String,
    },

    /// The answer is a JSON error object.
    #[error("the server reported an error: {error}")]
    ResponseServerError {
        /// The start of the `error` value, as JSON.
        error: String,
    },

    /// The answer has no `choices[0].message.content`.
    #[error("no choices[0].message.content in {excerpt}")]
    ResponseNoContent {
        /// The start of the answer.
        excerpt: String,
    },

    /// `message.content` is neither a string, a list of text parts nor null.
    #[error("message.content is {content}, not text")]
    ResponseContentNotText {
        /// The content, as JSON.
        content: String,
    },
}

impl CaptionError {
    /// Wraps an `std::io::Error` with the file and the action that failed.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        CaptionError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}

/// `Result` with [`CaptionError`].
pub type Result<T, E = CaptionError> = std::result::Result<T, E>;
