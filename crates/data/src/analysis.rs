//! Decoding every image once, in parallel: size after EXIF orientation, content hash, alpha,
//! perceptual hash and sharpness. Both the quality report and the trainer's dataset are built
//! from this; a file that fails to decode (or is over the config's image limits) is kept with
//! its reason.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::decode::{decode_file_with, DecodeFailure, DecodedImage};
use crate::progress::Progress;
use crate::quality::{blur, phash};
use crate::spec::DatasetSpec;

/// What was learnt from decoding one image file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Width and height after EXIF orientation.
    pub width: u32,
    /// Height after EXIF orientation (see `width`).
    pub height: u32,
    /// Lower-case hex SHA-256 of the file bytes.
    pub content_hash: String,
    /// The detected file format: `JPEG`, `PNG`, `WebP` or `BMP`.
    pub format: String,
    /// Colour type as decoded, e.g. `Rgb8`, `L16`, `Rgba8`.
    pub color: String,
    /// Whether the decoded colour type has an alpha channel.
    pub has_alpha: bool,
    /// 9×8 luma thumbnail and its 64-bit difference hash; `None` for images under 9×8 pixels.
    pub thumbnail: Option<Vec<u8>>,
    /// The 64-bit difference hash of `thumbnail`; `None` when there is no thumbnail.
    pub dhash: Option<u64>,
    /// Variance of the Laplacian at the working size; `None` when too small to measure.
    pub sharpness: Option<f64>,
    /// Decoder warnings, e.g. an animated file of which only the first frame is used.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl ImageInfo {
    /// Measures a decoded image.
    pub fn measure(d: &DecodedImage) -> ImageInfo {
        let thumb = phash::thumbnail(&d.image);
        ImageInfo {
            width: d.image.width(),
            height: d.image.height(),
            content_hash: d.content_hash.clone(),
            format: d.format.to_string(),
            color: d.color.clone(),
            has_alpha: d.has_alpha,
            thumbnail: thumb.clone(),
            dhash: thumb.as_deref().map(phash::dhash),
            sharpness: blur::sharpness(&d.image),
            warnings: d.warnings.clone(),
        }
    }
}

/// Decode results for every distinct image path of a spec (control images included).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Analysis {
    /// Per image path: its measurements, or why it could not be decoded (the reason shown
    /// to the user, starting with `unreadable` for files that could not be read).
    pub images: BTreeMap<PathBuf, Result<ImageInfo, String>>,
}

impl Analysis {
    /// Decodes every image of `spec` (each path once) on the rayon pool, refusing images over
    /// the config's [`crate::decode::ImageLimits`] before decoding them.
    pub fn run(spec: &DatasetSpec, progress: &Progress) -> Analysis {
        let limits = spec.config.image_limits;
        // Targets and their Kontext controls.
        let mut paths: Vec<PathBuf> = spec
            .images
            .iter()
            .flat_map(|r| std::iter::once(r.path.clone()).chain(r.control.clone()))
            .collect();
        paths.sort();
        paths.dedup();
        let bar = progress.bar(paths.len() as u64, "analysing images");
        let images = paths
            .into_par_iter()
            .map(|p| {
                let r = decode_file_with(&p, &limits)
                    .map(|d| ImageInfo::measure(&d))
                    .map_err(|DecodeFailure { reason }| reason);
                bar.inc(1);
                (p, r)
            })
            .collect();
        bar.finish();
        Analysis { images }
    }
}
