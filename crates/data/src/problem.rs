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
    /// A subset's `image_dir` cannot be listed (missing, not a folder, no permission); always
    /// blocking.
    MissingImageDir,
    /// No image file (jpg, jpeg, png, webp, bmp) in any `image_dir`; always blocking.
    NoImages,
    /// An image file cannot be read: no permission, a dangling link, or a directory, FIFO or
    /// device named like an image. Blocking unless `skip_bad_images`.
    UnreadableImage,
    /// An image file was read but cannot be decoded (empty, truncated, not the format its
    /// extension says). Blocking unless `skip_bad_images`.
    CorruptImage,
    /// The header declares an image over the [`crate::decode::ImageLimits`] (pixels, side or
    /// decoded bytes); refused before decoding. Blocking unless `skip_bad_images`.
    ImageTooLarge,
    /// A caption file is not UTF-8 text. Blocking unless `skip_bad_images`.
    CaptionNotUtf8,
    /// A caption file exists but cannot be read (no permission, not a regular file, a dangling
    /// link). Blocking unless `skip_bad_images`.
    CaptionUnreadable,
    /// A file read from inside the dataset (a caption) is a link that resolves outside the
    /// dataset folder; blocking unless `skip_bad_images` is on.
    PathOutsideDataset,
    /// An image cannot be given a bucket: zero width or height, or, with `bucket_no_upscale`,
    /// a side below `bucket_reso_steps`. Blocking unless `skip_bad_images`.
    CannotBucket,
    /// A caption file without an image of the same stem; it is ignored (a warning).
    OrphanCaption,
    /// An image without a caption file; `class_tokens` (or an empty caption) is used instead
    /// (a warning).
    MissingCaption,
    /// An image smaller than its bucket, so it is enlarged for training (a warning; avoid it
    /// with `bucket_no_upscale` or larger sources).
    Upscaled,
    /// An animated PNG or WebP: only its first frame is used (a warning).
    AnimatedImage,
    /// An image byte-identical to, or looking like (dHash and thumbnail), an earlier one; it is
    /// reported on the later file (a warning).
    NearDuplicate,
    /// An image whose sharpness (variance of the Laplacian) is below the report's blur threshold
    /// (a warning).
    Blurry,
    /// A caption line that has neither the subset's trigger word nor the `[trigger]`
    /// placeholder; the trigger is prepended when training (a warning).
    MissingTrigger,
    /// A subset's `control_directory` cannot be listed; always blocking.
    MissingControlDir,
    /// A Kontext image without a control image of the same stem in its subset's
    /// `control_directory`. Blocking unless `skip_bad_images` (then the pair is skipped).
    MissingControl,
    /// Several control images share an image's stem (`a.png` and `a.jpg`), so the pair is
    /// ambiguous. Blocking unless `skip_bad_images`.
    AmbiguousControl,
    /// A control image that cannot be read or decoded (or is over the image limits). Blocking
    /// unless `skip_bad_images`.
    UnreadableControl,
    /// A control image whose aspect ratio differs from its target's by more than
    /// [`crate::control::CONTROL_ASPECT_TOLERANCE`]. Blocking unless `skip_bad_images`.
    ControlAspectMismatch,
    /// A control image without a target image of the same stem; it is ignored (a warning).
    OrphanControl,
    /// A file left out because `skip_bad_images` is on (a warning). Not raised at present: a
    /// skipped file keeps its own kind, downgraded to a warning by [`Problem::bad_file`].
    SkippedFile,
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// What kind of problem it is.
    pub kind: ProblemKind,
    /// Whether it stops training.
    pub severity: Severity,
    /// The file or folder concerned; `None` for dataset-wide problems such as
    /// [`ProblemKind::NoImages`].
    pub path: Option<PathBuf>,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Problem {
    /// A problem with the given kind, severity, file and message.
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
