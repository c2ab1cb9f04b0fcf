//! Dataset preparation for Flux LoRA training, free of any tensor framework: images become host
//! `f32` buffers ([`fluxlora_io::HostTensor`], CHW, values in [-1, 1]) and the model crate plugs
//! its encoders in through the [`LatentEncoder`] and [`TextEncoder`] traits.
//!
//! How data flows:
//! 1. [`config`] — a kohya-style dataset TOML, or a folder with `N_name` subfolders, becomes a
//!    validated [`DatasetConfig`] (datasets → subsets; unknown keys are errors with a hint).
//! 2. [`spec`] — each subset's folder is listed: images, same-stem caption files, orphan
//!    captions, unreadable captions ([`DatasetSpec`]).
//! 3. [`analysis`] — every image is decoded once in parallel ([`decode`]: JPEG/PNG/WebP/BMP,
//!    EXIF orientation, any colour type) and measured: size, content hash, perceptual hash,
//!    sharpness ([`Analysis`]).
//! 4. [`quality`] — the [`QualityReport`] (buckets, missing captions, duplicates, blur, upscaled
//!    images, trigger word, tags; text and JSON; blocking problems flagged), or [`dataset`] — the
//!    trainable [`Dataset`], refusing blocking problems unless `skip_bad_images` is on.
//! 5. [`bucket`] assigns each image an aspect-ratio bucket; [`caption`] transforms captions per
//!    epoch; [`loader`] plans seeded, resumable epochs of same-bucket batches and prefetches them
//!    on a background thread; [`pixels`] crops/resizes/flips a sample into training pixels.
//! 6. [`cache`] — latents and text embeddings on disk as safetensors, keyed by content and every
//!    setting that changes them; built in parallel, resumable after an interruption.
//!
//! Kontext edit pairs ([`control`]): a subset's `control_directory` gives each image a control of
//! the same stem, checked when the dataset opens, cropped and flipped with it, cached with it.
//!
//! All randomness comes from [`rng`], derived from the run seed and the decision's coordinates.
//!
//! ```
//! use fluxlora_data::{DatasetConfig, DatasetSpec, ProblemKind, QualityReport, QualitySettings};
//!
//! // A kohya-style folder: `10_sks` repeats its images 10 times, captions sit beside them.
//! let root = tempfile::tempdir()?;
//! let subset = root.path().join("10_sks");
//! std::fs::create_dir(&subset)?;
//! for i in 0..3u8 {
//!     let img = image::RgbImage::from_fn(96, 64, |x, y| image::Rgb([x as u8 * i, y as u8, 90]));
//!     img.save(subset.join(format!("{i}.png")))?;
//!     std::fs::write(subset.join(format!("{i}.txt")), "sks, a striped disc")?;
//! }
//! std::fs::write(subset.join("broken.png"), b"not an image")?;
//! let config = DatasetConfig::from_folder(root.path())?;
//! let report = QualityReport::build(&DatasetSpec::scan(&config), &QualitySettings::default());
//! assert_eq!((report.images_listed, report.images_usable), (4, 3));
//! assert!(report.problems.iter().any(|p| p.kind == ProblemKind::CorruptImage));
//! assert!(report.has_blocking_problems()); // unless `skip_bad_images` is set
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![warn(clippy::all)]
// As in the workspace's `[workspace.lints]` (see Cargo.toml): errors are large on purpose, and
// `!(x > y)` is the NaN-safe comparison.
#![allow(clippy::result_large_err, clippy::neg_cmp_op_on_partial_ord)]

pub mod analysis;
pub mod bucket;
pub mod cache;
pub mod caption;
pub mod config;
pub mod control;
pub mod dataset;
pub mod decode;
pub mod error;
pub mod loader;
pub mod pixels;
pub mod problem;
pub mod progress;
pub mod quality;
pub mod rng;
pub mod spec;

pub use analysis::{Analysis, ImageInfo};
pub use bucket::{
    assign_bucket, bucket_resolutions, crop_rect, Bucket, BucketAssignment, BucketRejection,
    CropRect,
};
pub use cache::latent::{CachedLatent, LatentCache, LatentEncoder, LatentKey};
pub use cache::text::{TextCache, TextEmbedding, TextEncoder};
pub use cache::{BuildOptions, BuildStats};
pub use caption::{CaptionSettings, CaptionSource};
pub use config::{BucketSettings, DatasetConfig, DatasetSettings, SubsetSettings};
pub use dataset::{Dataset, Item, Sample};
pub use decode::{DecodeFailure, DecodedImage, ImageLimits};
pub use error::{DataError, Result};
pub use loader::{epoch_plan, Batch, Loader, LoaderState, Prefetched, Prefetcher};
pub use pixels::{training_pixels, TrainingPixels};
pub use problem::{Problem, ProblemKind, Severity};
pub use progress::Progress;
pub use quality::{QualityReport, QualitySettings};
pub use rng::SplitMix64;
pub use spec::{DatasetSpec, ImageRecord};
