//! The dataset configuration: kohya-style TOML (`[general]`, `[[datasets]]`,
//! `[[datasets.subsets]]`) or a plain folder using kohya's `N_name` repeat convention.
//!
//! Values "ascend" as in kohya's `config_util`: a subset key may be written on the subset, its
//! dataset, or `[general]`; the nearest one wins. Dataset keys (resolution, batch size, buckets)
//! may be written on the dataset or `[general]`. Unknown keys are errors with a "did you mean".
//!
//! Differences from kohya, on purpose: `caption_extension` defaults to `.txt`; `enable_bucket`
//! defaults to true; `resolution` defaults to 1024 and `max_bucket_reso` to 2048; relative
//! `image_dir`s are resolved against the config file's folder; `bucket_reso_steps` must be a
//! multiple of 16 (Flux packs 2×2 latent patches of an 8× VAE). Extensions: `trigger_word`,
//! `resolutions = [512, 1024]` (multi-resolution: the dataset is repeated once per resolution),
//! `control_directory` / `control_path` (Kontext edit pairs),
//! `skip_bad_images`, and the image limits `max_image_pixels`, `max_image_side` and
//! `max_image_bytes` (`[general]` only; see [`ImageLimits`]).

mod toml_file;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::caption::CaptionSettings;
use crate::decode::ImageLimits;
use crate::error::{DataError, Result};

/// A whole dataset configuration: one or more datasets, each with its own resolution and
/// buckets, each made of subsets (image folders).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetConfig {
    /// The config file, or the folder for [`DatasetConfig::from_folder`].
    pub source: PathBuf,
    /// Train on the remaining images when some are unreadable (default false: stop).
    pub skip_bad_images: bool,
    /// Images over these limits are refused before decoding (`[general]` keys
    /// `max_image_pixels`, `max_image_side`, `max_image_bytes`).
    #[serde(default)]
    pub image_limits: ImageLimits,
    /// The `[[datasets]]`, in file order; a dataset with `resolutions = [...]` appears once per
    /// resolution.
    pub datasets: Vec<DatasetSettings>,
}

/// One dataset: shared resolution, bucketing and batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSettings {
    /// `batch_size`: images per batch, all from one bucket of this dataset (default 1).
    pub batch_size: usize,
    /// The dataset's resolution and bucketing.
    pub buckets: BucketSettings,
    /// The `[[datasets.subsets]]` (image folders), in file order.
    pub subsets: Vec<SubsetSettings>,
}

/// Aspect-ratio bucketing settings (kohya names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketSettings {
    /// Target (width, height); buckets keep area ≤ width·height.
    pub resolution: (u32, u32),
    /// `enable_bucket`: sort images into aspect-ratio buckets (default true here); when false
    /// every image is cropped and resized to `resolution`.
    pub enable_bucket: bool,
    /// `min_bucket_reso`: the smallest bucket side, in pixels (default 256).
    pub min_bucket_reso: u32,
    /// `max_bucket_reso`: the largest bucket side, in pixels (default 2048).
    pub max_bucket_reso: u32,
    /// `bucket_reso_steps`: bucket sides are multiples of this (default 64; a multiple of 16).
    pub bucket_reso_steps: u32,
    /// `bucket_no_upscale`: never enlarge an image; its bucket is its own size, shrunk to the
    /// target area if larger and rounded down to the step (default false).
    pub bucket_no_upscale: bool,
}

impl Default for BucketSettings {
    fn default() -> Self {
        Self {
            resolution: (1024, 1024),
            enable_bucket: true,
            min_bucket_reso: 256,
            max_bucket_reso: 2048,
            bucket_reso_steps: 64,
            bucket_no_upscale: false,
        }
    }
}

/// One image folder and how its images and captions are used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubsetSettings {
    /// `image_dir`: the folder of the images and their captions (relative paths are resolved
    /// against the config file's folder).
    pub image_dir: PathBuf,
    /// `num_repeats`: how many times each image is drawn per epoch (default 1; for a folder
    /// dataset, the `N` of `N_name`).
    pub num_repeats: u32,
    /// `is_reg`: regularisation images; per epoch they fill as many draws as the dataset's
    /// training images do, cycled (kohya's balancing; default false).
    pub is_reg: bool,
    /// Caption file extension including the dot, e.g. `.txt`.
    pub caption_extension: String,
    /// Caption used for images without a caption file (kohya DreamBooth style).
    pub class_tokens: Option<String>,
    /// `flip_aug`: mirror each draw horizontally with probability ½ (default false).
    pub flip_aug: bool,
    /// `random_crop`: take the crop to the bucket at a seeded random offset instead of the
    /// centre (default false).
    pub random_crop: bool,
    /// Use the alpha channel as a loss mask (transparent = not learned).
    pub alpha_mask: bool,
    /// `control_directory` (musubi-tuner; ai-toolkit's `control_path`): Kontext edit pairs. Each
    /// image has a control image of the same stem (any image extension) in this folder; the
    /// caption is the edit instruction. Relative paths are resolved like `image_dir`.
    #[serde(default)]
    pub control_dir: Option<PathBuf>,
    /// How captions are built and augmented (trigger word, shuffling, dropout, …).
    pub caption: CaptionSettings,
}

impl SubsetSettings {
    /// A subset with default settings for `image_dir`.
    pub fn new(image_dir: impl Into<PathBuf>) -> Self {
        Self {
            image_dir: image_dir.into(),
            num_repeats: 1,
            is_reg: false,
            caption_extension: ".txt".into(),
            class_tokens: None,
            flip_aug: false,
            random_crop: false,
            alpha_mask: false,
            control_dir: None,
            caption: CaptionSettings::default(),
        }
    }
}

/// Image extensions that are picked up when scanning folders (lower case, no dot).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp"];

/// Names the config file in errors.
pub(crate) struct Ctx<'a> {
    pub file: &'a Path,
}

impl Ctx<'_> {
    pub fn bad(&self, table: &str, key: &str, message: impl Into<String>) -> DataError {
        DataError::BadValue {
            file: self.file.to_path_buf(),
            table: table.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}

impl DatasetConfig {
    /// with `class_tokens = "name"`; images directly inside `root` form a subset repeated once.
    /// All other settings are defaults; adjust the public fields, then call [`Self::validate`].
    pub fn from_folder(root: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(root)
            .map_err(|e| DataError::io(root, "listing the dataset folder", e))?;
        let mut names: Vec<(PathBuf, String)> = Vec::new();
        let mut has_images = false;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io(root, "listing the dataset folder", e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                names.push((path, name));
            } else if is_image_path(&path) {
                has_images = true;
            }
        }
        names.sort();
        let mut subsets = Vec::new();
        if has_images {
            subsets.push(SubsetSettings::new(root));
        }
        for (path, name) in names {
            if let Some((repeats, class)) = parse_repeat_folder(&name) {
                let mut s = SubsetSettings::new(path);
                s.num_repeats = repeats;
                s.class_tokens = Some(class.to_string()).filter(|c| !c.trim().is_empty());
                subsets.push(s);
            }
        }
        if subsets.is_empty() {
            return Err(DataError::Empty {
                detail: format!(
                    "{} has no images ({}) and no `N_name` subfolders such as `10_mychar`",
                    root.display(),
                    IMAGE_EXTENSIONS.join(", ")
                ),
            });
        }
        Ok(DatasetConfig {
            source: root.to_path_buf(),
            skip_bad_images: false,
            image_limits: ImageLimits::default(),
            datasets: vec![DatasetSettings {
                batch_size: 1,
                buckets: BucketSettings::default(),
                subsets,
            }],
        })
    }

    /// Checks the invariants that parsing enforces, after fields were changed by hand.
    pub fn validate(&self) -> Result<()> {
        let ctx = Ctx { file: &self.source };
        validate_image_limits(&self.image_limits)
            .map_err(|(key, msg)| ctx.bad("general", key, msg))?;
        for (di, d) in self.datasets.iter().enumerate() {
            let dname = format!("datasets.{di}");
            validate_buckets(&d.buckets).map_err(|(key, msg)| ctx.bad(&dname, key, msg))?;
            if d.batch_size == 0 {
                return Err(ctx.bad(&dname, "batch_size", "must be at least 1"));
            }
            for (si, s) in d.subsets.iter().enumerate() {
                validate_subset(&ctx, &format!("{dname}.subsets.{si}"), s)?;
            }
        }
        Ok(())
    }
}

/// `10_sks dog` → (10, "sks dog").
pub fn parse_repeat_folder(name: &str) -> Option<(u32, &str)> {
    let (n, rest) = name.split_once('_')?;
    let repeats: u32 = n.parse().ok()?;
    (repeats > 0).then_some((repeats, rest))
}

/// True when the extension is one of [`IMAGE_EXTENSIONS`] (any case).
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Image-limit invariants (every limit at least 1); returns the offending key and a message.
pub(crate) fn validate_image_limits(
    l: &ImageLimits,
) -> std::result::Result<(), (&'static str, String)> {
    let zero = |key| {
        Err((
            key,
            "must be at least 1; 0 would refuse every image".to_string(),
        ))
    };
    if l.max_pixels == 0 {
        return zero("max_image_pixels");
    }
    if l.max_side == 0 {
        return zero("max_image_side");
    }
    if l.max_decoded_bytes == 0 {
        return zero("max_image_bytes");
    }
    Ok(())
}

/// Bucket invariants; returns the offending key and a message with the fix.
pub(crate) fn validate_buckets(
    b: &BucketSettings,
) -> std::result::Result<(), (&'static str, String)> {
    let step = b.bucket_reso_steps;
    if step < 16 || !step.is_multiple_of(16) {
        return Err((
            "bucket_reso_steps",
            format!(
                "{step} is not a multiple of 16 (Flux needs 16: 8× VAE then 2×2 patches); \
                 use 16, 32 or 64"
            ),
        ));
    }
    let (w, h) = b.resolution;
    if w < 64 || h < 64 || !w.is_multiple_of(16) || !h.is_multiple_of(16) || w > 8192 || h > 8192 {
        return Err((
            "resolution",
            format!("{w}×{h}: sides must be multiples of 16 between 64 and 8192"),
        ));
    }
    if !b.min_bucket_reso.is_multiple_of(step) || !b.max_bucket_reso.is_multiple_of(step) {
        return Err((
            "min_bucket_reso",
            format!(
                "min_bucket_reso {} and max_bucket_reso {} must be multiples of \
                 bucket_reso_steps {step}",
                b.min_bucket_reso, b.max_bucket_reso
            ),
        ));
    }
    if b.min_bucket_reso < step || b.min_bucket_reso > b.max_bucket_reso {
        return Err((
            "min_bucket_reso",
            format!(
                "need bucket_reso_steps ≤ min_bucket_reso ≤ max_bucket_reso, got {step}, {}, \
                 {}",
                b.min_bucket_reso, b.max_bucket_reso
            ),
        ));
    }
    if b.enable_bucket
        && !b.bucket_no_upscale
        && (b.min_bucket_reso as u64).pow(2) > w as u64 * h as u64
    {
        return Err((
            "min_bucket_reso",
            format!(
                "min_bucket_reso {} squared exceeds the resolution area {w}×{h}; lower it",
                b.min_bucket_reso
            ),
        ));
    }
    Ok(())
}

pub(crate) fn validate_subset(ctx: &Ctx, name: &str, s: &SubsetSettings) -> Result<()> {
    if s.num_repeats == 0 {
        return Err(ctx.bad(name, "num_repeats", "must be at least 1"));
    }
    if !s.caption_extension.starts_with('.') || s.caption_extension.len() < 2 {
        return Err(ctx.bad(
            name,
            "caption_extension",
            format!(
                "`{}` must start with a dot, e.g. \".txt\"",
                s.caption_extension
            ),
        ));
    }
    // The caption sits beside its image: an extension with a separator or `..` would read a
    // file elsewhere.
    if s.caption_extension.contains(['/', '\\']) || s.caption_extension.contains("..") {
        return Err(ctx.bad(
            name,
            "caption_extension",
            format!(
                "`{}` is not a file extension (it holds a path separator or `..`); use e.g. \
                 \".txt\"",
                s.caption_extension
            ),
        ));
    }
    if s.control_dir.as_deref() == Some(s.image_dir.as_path()) {
        return Err(ctx.bad(
            name,
            "control_directory",
            "is the image_dir itself, so every image would be its own control; put the control \
             images in a folder of their own",
        ));
    }
    s.caption
        .validate()
        .map_err(|(key, msg)| ctx.bad(name, key, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeat_folder_names() {
        assert_eq!(parse_repeat_folder("10_sks dog"), Some((10, "sks dog")));
        assert_eq!(parse_repeat_folder("0_x"), None);
        assert_eq!(parse_repeat_folder("abc"), None);
        assert_eq!(parse_repeat_folder("x_1"), None);
    }
}
