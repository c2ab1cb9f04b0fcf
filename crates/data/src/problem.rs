//! Problems found in a dataset, each tied to a file, with a message that says what to do.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How serious a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Training must not start (unless `skip_bad_images` turns it into a skipped file).
    Blocking,
    /// Worth a look; training can go on.
    Warning,
}

/// What kind of problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    MissingImageDir,
    NoImages,
    UnreadableImage,
    CorruptImage,
    /// The header declares an image over the [`crate::decode::ImageLimits`] (pixels, side or
    /// decoded bytes); refused before decoding. Blocking unless `skip_bad_images`.
    ImageTooLarge,
    CaptionNotUtf8,
    CaptionUnreadable,
    CannotBucket,
    OrphanCaption,
    MissingCaption,
    Upscaled,
    /// An animated PNG or WebP: only its first frame is used (a warning).
    AnimatedImage,
    NearDuplicate,
    Blurry,
    MissingTrigger,
    SkippedFile,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub severity: Severity,
    pub path: Option<PathBuf>,
    pub message: String,
}

impl Problem {
    pub fn new(
        kind: ProblemKind,
        severity: Severity,
        path: Option<PathBuf>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            severity,
            path,
            message: message.into(),
        }
    }

    /// A bad-file problem: blocking, or a warning that the file is skipped when `skip` is set.
    pub fn bad_file(
        kind: ProblemKind,
        path: PathBuf,
        message: impl Into<String>,
        skip: bool,
    ) -> Self {
        let message = message.into();
        if skip {
            Self::new(
                kind,
                Severity::Warning,
                Some(path),
                format!("{message} (skipped: skip_bad_images is on)"),
            )
        } else {
            Self::new(kind, Severity::Blocking, Some(path), message)
        }
    }

    /// `path: message` for listings.
    pub fn line(&self) -> String {
        match &self.path {
            Some(p) => format!("{}: {}", p.display(), self.message),
            None => self.message.clone(),
        }
    }
}
