//! The trainable dataset: every usable image with its caption source, size and bucket, after
//! bad files were either refused (default) or skipped (`skip_bad_images`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, ImageInfo};
use crate::bucket::{assign_bucket, crop_rect, Bucket, BucketAssignment, CropRect};
use crate::caption::CaptionSource;
use crate::config::{DatasetConfig, SubsetSettings};
use crate::decode::decode_file;
use crate::error::{DataError, Result};
use crate::pixels::{training_pixels, TrainingPixels};
use crate::problem::{Problem, ProblemKind, Severity};
use crate::progress::Progress;
use crate::rng::{purpose, SplitMix64};
use crate::spec::DatasetSpec;

/// One usable image of one subset of one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub dataset: usize,
    pub subset: usize,
    pub path: PathBuf,
    pub caption: CaptionSource,
    pub info: ImageInfo,
    pub assignment: BucketAssignment,
}

/// One draw of an item in an epoch: which repeat, how it is cropped and flipped, its caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Index into [`Dataset::items`].
    pub item: usize,
    /// Which repeat of the item within the epoch.
    pub repeat: u32,
    pub bucket: Bucket,
    pub crop: CropRect,
    pub flip: bool,
    pub caption: String,
    pub is_reg: bool,
}

/// A dataset ready for training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    pub config: DatasetConfig,
    pub items: Vec<Item>,
    /// Non-blocking problems (skipped files and the like).
    pub problems: Vec<Problem>,
}

/// Splits a spec + analysis into usable items and file problems (blocking ones included).
pub fn classify(spec: &DatasetSpec, analysis: &Analysis) -> (Vec<Item>, Vec<Problem>) {
    let skip = spec.config.skip_bad_images;
    let mut problems = spec.problems.clone();
    let mut items = Vec::new();
    let mut reported = std::collections::BTreeSet::new();
    for rec in &spec.images {
        let info = match analysis.images.get(&rec.path) {
            Some(Ok(info)) => info.clone(),
            Some(Err(reason)) => {
                if reported.insert(rec.path.clone()) {
                    let kind = if reason.starts_with("unreadable") {
                        ProblemKind::UnreadableImage
                    } else {
                        ProblemKind::CorruptImage
                    };
                    problems.push(Problem::bad_file(
                        kind,
                        rec.path.clone(),
                        reason.clone(),
                        skip,
                    ));
                }
                continue;
            }
            None => continue,
        };
        let caption = match &rec.caption {
            Ok(c) => c.clone(),
            // The caption problem was recorded when listing.
            Err(_) => continue,
        };
        let settings = &spec.config.datasets[rec.dataset].buckets;
        match assign_bucket(info.width, info.height, settings) {
            Ok(assignment) => items.push(Item {
                dataset: rec.dataset,
                subset: rec.subset,
                path: rec.path.clone(),
                caption,
                info,
                assignment,
            }),
            Err(why) => {
                if reported.insert(rec.path.clone()) {
                    problems.push(Problem::bad_file(
                        ProblemKind::CannotBucket,
                        rec.path.clone(),
                        why.to_string(),
                        skip,
                    ));
                }
            }
        }
    }
    (items, problems)
}

impl Dataset {
    /// Lists, decodes and checks everything; fails listing every blocking problem unless
    /// `skip_bad_images` is on.
    pub fn open(config: &DatasetConfig, progress: &Progress) -> Result<Dataset> {
        let spec = DatasetSpec::scan(config);
        let analysis = Analysis::run(&spec, progress);
        Self::from_analysis(&spec, &analysis)
    }

    /// Builds the dataset from an existing analysis.
    pub fn from_analysis(spec: &DatasetSpec, analysis: &Analysis) -> Result<Dataset> {
        let (items, problems) = classify(spec, analysis);
        let blocking: Vec<&Problem> = problems
            .iter()
            .filter(|p| p.severity == Severity::Blocking)
            .collect();
        if !blocking.is_empty() {
            return Err(DataError::BadInputs {
                count: blocking.len(),
                listing: blocking
                    .iter()
                    .map(|p| format!("  - {}", p.line()))
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
        if items.is_empty() {
            return Err(DataError::Empty {
                detail: format!("{} image file(s) listed, none usable", spec.images.len()),
            });
        }
        Ok(Dataset {
            config: spec.config.clone(),
            items,
            problems,
        })
    }

    /// The subset settings of an item.
    pub fn subset_of(&self, item: &Item) -> &SubsetSettings {
        &self.config.datasets[item.dataset].subsets[item.subset]
    }

    /// Items grouped by (dataset, bucket).
    pub fn buckets(&self) -> BTreeMap<(usize, Bucket), Vec<usize>> {
        let mut m: BTreeMap<(usize, Bucket), Vec<usize>> = BTreeMap::new();
        for (i, it) in self.items.iter().enumerate() {
            m.entry((it.dataset, it.assignment.bucket))
                .or_default()
                .push(i);
        }
        m
    }

    /// The deterministic draw of `item`'s `repeat` in `epoch` for run `seed`.
    pub fn sample(&self, item: usize, repeat: u32, epoch: u64, seed: u64) -> Sample {
        let it = &self.items[item];
        let sub = self.subset_of(it);
        let coords = |p: u64| [p, epoch, item as u64, repeat as u64];
        let bucket = it.assignment.bucket;
        let crop = crop_rect(
            it.info.width,
            it.info.height,
            bucket,
            sub.random_crop,
            &mut SplitMix64::derive(seed, &coords(purpose::CROP)),
        );
        let flip = sub.flip_aug && SplitMix64::derive(seed, &coords(purpose::FLIP)).chance(0.5);
        let caption = sub.caption.apply(
            &it.caption,
            sub.class_tokens.as_deref(),
            epoch,
            &mut SplitMix64::derive(seed, &coords(purpose::CAPTION)),
        );
        Sample {
            item,
            repeat,
            bucket,
            crop,
            flip,
            caption,
            is_reg: sub.is_reg,
        }
    }

    /// Decodes and prepares the pixels of a sample. Fails when the file changed since the
    /// dataset was opened.
    pub fn load_pixels(&self, sample: &Sample) -> Result<TrainingPixels> {
        let it = &self.items[sample.item];
        let decoded = decode_file(&it.path).map_err(|f| DataError::Image {
            path: it.path.clone(),
            reason: f.reason,
        })?;
        if decoded.content_hash != it.info.content_hash {
            return Err(DataError::Image {
                path: it.path.clone(),
                reason:
                    "the file changed since the dataset was opened; restart so it is checked again"
                        .into(),
            });
        }
        let alpha = self.subset_of(it).alpha_mask;
        Ok(training_pixels(
            &decoded.image,
            sample.crop,
            sample.bucket,
            sample.flip,
            alpha,
        ))
    }

    /// A fingerprint of everything that shapes the epoch plan (items, their buckets, settings).
    pub fn fingerprint(&self) -> String {
        let mut s = String::new();
        s.push_str(&serde_json::to_string(&self.config.datasets).unwrap_or_default());
        for it in &self.items {
            s.push_str(&format!(
                "|{}:{}:{}:{}",
                it.dataset, it.subset, it.info.content_hash, it.assignment.bucket
            ));
        }
        crate::decode::sha256_hex(s.as_bytes())[..16].to_string()
    }
}
