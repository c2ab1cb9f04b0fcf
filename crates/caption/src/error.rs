//! [`CaptionError`], the crate's one error type: every message names the file (or image, or
//! option), what is wrong, and how to fix it.

use std::path::PathBuf;

/// Everything that can go wrong while editing, tagging or captioning a dataset folder.
#[derive(Debug, thiserror::Error)]
pub enum CaptionError {
    /// An operating-system call on a file or folder failed.
    #[error("{path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The dataset folder does not exist or is not a folder.
    #[error("{path}: not a folder; pass the folder that holds the images (jpg, jpeg, png, webp, bmp)")]
    NotAFolder { path: PathBuf },

    /// A caption file is not UTF-8 text.
    #[error("{path}: the caption is not UTF-8 text; re-save it as UTF-8 (or delete it and caption the image again)")]
    NotUtf8 { path: PathBuf },

    /// An image could not be opened or decoded.
    #[error("{path}: cannot decode the image: {reason}; re-export it as JPEG/PNG or remove it from the folder")]
    Image { path: PathBuf, reason: String },

    /// The trigger word cannot be used.
    #[error("trigger word {trigger:?}: {reason}")]
    InvalidTrigger { trigger: String, reason: &'static str },

    /// An option is out of range.
    #[error("option `{name}`: {message}")]
    InvalidOption { name: &'static str, message: String },

    /// The weights file could not be read (the message names the file and the fix).
    #[error(transparent)]
    Weights(#[from] fluxlora_io::IoError),

    /// A tensor the model needs is not in the weights file.
    #[error("{path}: tensor `{name}` is missing; {fix}")]
    MissingTensor { path: PathBuf, name: String, fix: &'static str },

    /// A tensor has a shape the model cannot use.
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected}; the file is not a timm ViT checkpoint or belongs to another model size")]
    TensorShape { path: PathBuf, name: String, expected: String, found: Vec<usize> },

    /// The timm `config.json` (or a setting derived from the weights) is inconsistent.
    #[error("{path}: {message}")]
    ModelConfig { path: PathBuf, message: String },

    /// `selected_tags.csv` could not be parsed.
    #[error("{path}, line {line}: {message}; the file must be the tagger's selected_tags.csv (columns tag_id,name,category,count)")]
    Labels { path: PathBuf, line: usize, message: String },

    /// The label list and the classifier head disagree in size.
    #[error("{labels_path} lists {labels} tags but {weights_path} has {classes} classes; use the selected_tags.csv that ships with these weights")]
    LabelCount { labels_path: PathBuf, labels: usize, weights_path: PathBuf, classes: usize },

    /// Pixels of the wrong shape were passed to the tagger.
    #[error("tagger input has shape {found:?}, expected [batch, 3, {size}, {size}]; preprocess images with `preprocess_image`")]
    InputShape { found: Vec<usize>, size: usize },

    /// The captioning server answered with an error status (after retries for 429 / 5xx).
    #[error("{image}: {url} answered HTTP {status} after {attempts} attempt(s): {body}; check the server log, the model name and the API key")]
    HttpStatus { image: PathBuf, url: String, status: u16, attempts: u32, body: String },

    /// The captioning server could not be reached (after retries).
    #[error("{image}: cannot reach {url} after {attempts} attempt(s): {reason}; start the server or fix --vlm-url")]
    Unreachable { image: PathBuf, url: String, attempts: u32, reason: String },

    /// The captioning server did not answer in time.
    #[error("{image}: {url} did not answer within {seconds} s; raise the timeout or use a smaller/faster model")]
    Timeout { image: PathBuf, url: String, seconds: u64 },

    /// The captioner produced nothing for an image.
    #[error("{image}: {captioner} produced an empty caption; lower the tag thresholds or change the prompt")]
    EmptyCaption { image: PathBuf, captioner: String },

    /// The server's answer is not an OpenAI-style chat completion.
    #[error("{image}: unexpected answer from {url}: {message}; the server must implement OpenAI's /v1/chat/completions")]
    BadResponse { image: PathBuf, url: String, message: String },
}

impl CaptionError {
    /// Wraps an `std::io::Error` with the file and the action that failed.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        CaptionError::Io { path: path.into(), action, source }
    }
}

/// `Result` with [`CaptionError`].
pub type Result<T, E = CaptionError> = std::result::Result<T, E>;
