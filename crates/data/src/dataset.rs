//! The trainable dataset: every usable image with its caption source, size and bucket, after
//! bad files were either refused (default) or skipped (`skip_bad_images`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::analysis::{Analysis, ImageInfo};
use crate::bucket::{assign_bucket, crop_rect, Bucket, BucketAssignment, CropRect};
use crate::caption::{CaptionSettings, CaptionSource};
use crate::config::{DatasetConfig, SubsetSettings};
use crate::control::check_control;
pub use crate::control::{control_crop, Control, CONTROL_ASPECT_TOLERANCE};
use crate::decode::{decode_file_with, TOO_LARGE};
use crate::error::{DataError, Result};
use crate::pixels::{training_pixels, TrainingPixels};
use crate::problem::{Problem, ProblemKind, Severity};
use crate::progress::Progress;
use crate::rng::{purpose, SplitMix64};
use crate::spec::DatasetSpec;

/// One usable image of one subset of one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Index of the dataset in the config.
    pub dataset: usize,
    /// Index of the subset within that dataset.
    pub subset: usize,
    /// The image file.
    pub path: PathBuf,
    /// The caption file's lines, or `Missing` when the image has no (non-empty) caption.
    pub caption: CaptionSource,
    /// What decoding the image found (size, hashes, sharpness).
    pub info: ImageInfo,
    /// The image's bucket in this dataset and its scale factor.
    pub assignment: BucketAssignment,
    /// The Kontext control image of an edit pair (cropped, resized and flipped with the target).
    #[serde(default)]
    pub control: Option<Control>,
}

/// One draw of an item in an epoch: which repeat, how it is cropped and flipped, its caption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Index into [`Dataset::items`].
    pub item: usize,
    /// Which repeat of the item within the epoch.
    pub repeat: u32,
    /// The item's bucket: the size the crop is resized to.
    pub bucket: Bucket,
    /// The source rectangle taken (centred, or seeded random with `random_crop`).
    pub crop: CropRect,
    /// Whether the image is mirrored horizontally (`flip_aug`).
    pub flip: bool,
    /// The caption for this draw, after the epoch's transforms ("" when dropped).
    pub caption: String,
    /// Whether the item comes from a regularisation subset.
    pub is_reg: bool,
}

/// A dataset ready for training.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dataset {
    /// The configuration the dataset was built from.
    pub config: DatasetConfig,
    /// Every usable image of every subset (an image used by several datasets appears once
    /// per dataset).
    pub items: Vec<Item>,
    /// Non-blocking problems (skipped files and the like).
    pub problems: Vec<Problem>,
}

/// A dataset divided by [`Dataset::split_validation`]: the items trained on and the items held
/// out for the validation loss. Both keep the original config.
#[derive(Debug, Clone)]
pub struct ValidationSplit {
    /// The items the loader trains on (every regularisation item stays here).
    pub train: Dataset,
    /// The held-out items; `None` when the fraction is 0.
    pub validation: Option<Dataset>,
}

/// Splits a spec + analysis into usable items and file problems (blocking ones included).
pub fn classify(spec: &DatasetSpec, analysis: &Analysis) -> (Vec<Item>, Vec<Problem>) {
    let skip = spec.config.skip_bad_images;
    let mut problems = spec.problems.clone();
    let mut items = Vec::new();
    let mut reported = std::collections::BTreeSet::new();
    let mut warned = std::collections::BTreeSet::new();
    for rec in &spec.images {
        let info = match analysis.images.get(&rec.path) {
            Some(Ok(info)) => {
                if warned.insert(rec.path.clone()) {
                    for w in &info.warnings {
                        // Animation is the only decoder warning.
                        problems.push(Problem::new(
                            ProblemKind::AnimatedImage,
                            Severity::Warning,
                            Some(rec.path.clone()),
                            w.clone(),
                        ));
                    }
                }
                info.clone()
            }
            Some(Err(reason)) => {
                if reported.insert(rec.path.clone()) {
                    let kind = if reason.starts_with("unreadable") {
                        ProblemKind::UnreadableImage
                    } else if reason.starts_with(TOO_LARGE) {
                        ProblemKind::ImageTooLarge
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
        let control = match &rec.control {
            Some(c) => match check_control(analysis, c, &info, skip) {
                Ok(c) => Some(c),
                Err(p) => {
                    if reported.insert(c.clone()) {
                        problems.push(p);
                    }
                    continue;
                }
            },
            // The subset wants pairs and this image has none: recorded when listing.
            None if spec.config.datasets[rec.dataset].subsets[rec.subset]
                .control_dir
                .is_some() =>
            {
                continue
            }
            None => None,
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
                control,
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
        let limits = &self.config.image_limits;
        let decoded = decode_file_with(&it.path, limits).map_err(|f| DataError::Image {
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
        let mut pixels = training_pixels(
            &decoded.image,
            sample.crop,
            sample.bucket,
            sample.flip,
            alpha,
        );
        if let Some(c) = &it.control {
            let decoded = decode_file_with(&c.path, limits).map_err(|f| DataError::Image {
                path: c.path.clone(),
                reason: f.reason,
            })?;
            if decoded.content_hash != c.info.content_hash {
                return Err(DataError::Image {
                    path: c.path.clone(),
                    reason: "the control image changed since the dataset was opened; restart \
                             so it is checked again"
                        .into(),
                });
            }
            let crop = control_crop(sample.crop, &it.info, &c.info);
            let control = training_pixels(&decoded.image, crop, sample.bucket, sample.flip, false);
            pixels.control = Some(control.image);
        }
        Ok(pixels)
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

    /// Holds out `fraction` (in [0, 1)) of the training (non-regularisation) items for
    /// validation: `round(fraction · n)` of them, at least 1 when `fraction > 0`.
    ///
    /// Which items is decided per item from `seed` and the image's content hash (ties by
    /// position), so the choice is the same in every run with the same seed and images — also
    /// after a resume — and adding an image moves no other image across the split. Fails when the
    /// fraction is out of range or nothing would be left to train on.
    pub fn split_validation(&self, fraction: f64, seed: u64) -> Result<ValidationSplit> {
        let bad = |message: String| Err(DataError::ValidationSplit { fraction, message });
        if !(0.0..1.0).contains(&fraction) {
            return bad("must be in [0, 1), e.g. 0.1 to hold out a tenth of the images".into());
        }
        if fraction == 0.0 {
            return Ok(ValidationSplit {
                train: self.clone(),
                validation: None,
            });
        }
        let eligible: Vec<usize> = (0..self.items.len())
            .filter(|&i| !self.subset_of(&self.items[i]).is_reg)
            .collect();
        let n = eligible.len();
        let k = ((fraction * n as f64).round() as usize).max(1);
        if k >= n {
            return bad(format!(
                "holding out {k} of the {n} training image(s) leaves none to train on; \
                 lower validation_split or add images (a split needs at least 2 training images)"
            ));
        }
        let rank = |i: usize| {
            // FNV-1a of the content hash: the image's identity as one number.
            let id = self.items[i]
                .info
                .content_hash
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
            (
                SplitMix64::derive(seed, &[purpose::VALIDATION_SPLIT, id]).next_u64(),
                i,
            )
        };
        let mut order = eligible;
        order.sort_by_key(|&i| rank(i));
        let held: std::collections::BTreeSet<usize> = order[..k].iter().copied().collect();
        let pick = |keep: bool| -> Vec<Item> {
            (0..self.items.len())
                .filter(|i| held.contains(i) != keep)
                .map(|i| self.items[i].clone())
                .collect()
        };
        let with_items = |items: Vec<Item>, problems: Vec<Problem>| Dataset {
            config: self.config.clone(),
            items,
            problems,
        };
        Ok(ValidationSplit {
            train: with_items(pick(true), self.problems.clone()),
            validation: Some(with_items(pick(false), Vec::new())),
        })
    }

    /// The one fixed draw of `item` used for validation: its bucket, a centred crop, no flip,
    /// and its first caption line through the subset's caption settings without any randomness
    /// (no caption or tag dropout, no shuffling).
    pub fn validation_sample(&self, item: usize) -> Sample {
        let it = &self.items[item];
        let sub = self.subset_of(it);
        let bucket = it.assignment.bucket;
        let crop = crop_rect(
            it.info.width,
            it.info.height,
            bucket,
            false,
            &mut SplitMix64::new(0),
        );
        let fixed = CaptionSettings {
            shuffle_caption: false,
            caption_dropout_rate: 0.0,
            caption_dropout_every_n_epochs: 0,
            caption_tag_dropout_rate: 0.0,
            ..sub.caption.clone()
        };
        let source = match &it.caption {
            CaptionSource::File { lines } => CaptionSource::File {
                lines: lines.iter().take(1).cloned().collect(),
            },
            CaptionSource::Missing => CaptionSource::Missing,
        };
        let caption = fixed.apply(
            &source,
            sub.class_tokens.as_deref(),
            0,
            &mut SplitMix64::new(0),
        );
        Sample {
            item,
            repeat: 0,
            bucket,
            crop,
            flip: false,
            caption,
            is_reg: sub.is_reg,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DatasetSettings, SubsetSettings};

    fn info(k: usize) -> ImageInfo {
        ImageInfo {
            width: 640,
            height: 512,
            content_hash: format!("{:064x}", (k as u128 + 1) * 0x9e37_79b9_7f4a_7c15_u128),
            format: "png".into(),
            color: "rgb8".into(),
            has_alpha: false,
            thumbnail: None,
            dhash: None,
            sharpness: None,
            warnings: Vec::new(),
        }
    }

    /// `n` training items in subset 0 and `reg` regularisation items in subset 1.
    fn dataset(n: usize, reg: usize) -> Dataset {
        let mut train = SubsetSettings::new("train");
        train.flip_aug = true;
        train.random_crop = true;
        train.caption.shuffle_caption = true;
        train.caption.caption_dropout_rate = 0.9;
        train.caption.caption_tag_dropout_rate = 0.5;
        train.caption.trigger_word = Some("ohwx".into());
        let mut reg_subset = SubsetSettings::new("reg");
        reg_subset.is_reg = true;
        let config = DatasetConfig {
            source: "test".into(),
            skip_bad_images: false,
            image_limits: Default::default(),
            datasets: vec![DatasetSettings {
                batch_size: 1,
                buckets: Default::default(),
                subsets: vec![train, reg_subset],
            }],
        };
        let item = |k: usize, subset: usize| Item {
            dataset: 0,
            subset,
            path: PathBuf::from(format!("img{k}.png")),
            caption: CaptionSource::File {
                lines: vec![format!("a, b, c{k}"), "other line".into()],
            },
            info: info(k),
            assignment: BucketAssignment {
                bucket: Bucket {
                    width: 512,
                    height: 512,
                },
                scale: 1.0,
            },
            control: None,
        };
        let items = (0..n)
            .map(|k| item(k, 0))
            .chain((n..n + reg).map(|k| item(k, 1)))
            .collect();
        Dataset {
            config,
            items,
            problems: Vec::new(),
        }
    }

    fn paths(d: &Dataset) -> Vec<PathBuf> {
        d.items.iter().map(|i| i.path.clone()).collect()
    }

    #[test]
    fn split_is_sized_disjoint_complete_and_keeps_regularisation_items() {
        for (n, fraction, want) in [
            (10, 0.1, 1),
            (10, 0.25, 3),
            (20, 0.5, 10),
            (3, 0.01, 1),
            (7, 0.3, 2),
        ] {
            let d = dataset(n, 4);
            let s = d.split_validation(fraction, 5).unwrap();
            let v = s.validation.expect("a positive fraction holds items out");
            assert_eq!(v.items.len(), want, "n {n} fraction {fraction}");
            assert_eq!(s.train.items.len() + v.items.len(), n + 4);
            assert!(
                v.items.iter().all(|i| i.subset == 0),
                "regularisation items are never held out"
            );
            let (tp, vp) = (paths(&s.train), paths(&v));
            assert!(
                vp.iter().all(|p| !tp.contains(p)),
                "held-out {vp:?} also in training"
            );
            let mut all: Vec<PathBuf> = tp.into_iter().chain(vp).collect();
            all.sort();
            let mut orig = paths(&d);
            orig.sort();
            assert_eq!(all, orig);
        }
    }

    #[test]
    fn split_is_deterministic_per_seed_and_stable_when_images_are_added() {
        let d = dataset(40, 0);
        let held =
            |d: &Dataset, seed| paths(&d.split_validation(0.2, seed).unwrap().validation.unwrap());
        assert_eq!(held(&d, 1), held(&d, 1));
        assert_ne!(held(&d, 1), held(&d, 2));
        // Reversing the item order changes nothing: the choice follows the images, not positions.
        let mut rev = d.clone();
        rev.items.reverse();
        let mut a = held(&d, 1);
        let mut b = held(&rev, 1);
        a.sort();
        b.sort();
        assert_eq!(a, b);
        // A fraction of 0 holds nothing out and trains on everything.
        let s = d.split_validation(0.0, 1).unwrap();
        assert!(s.validation.is_none());
        assert_eq!(paths(&s.train), paths(&d));
    }

    #[test]
    fn impossible_splits_are_refused_with_the_fix() {
        for (n, fraction) in [(1, 0.1), (2, 0.9), (4, 0.95)] {
            let e = dataset(n, 3)
                .split_validation(fraction, 0)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("validation_split")
                    && e.contains("leaves none to train on")
                    && e.contains("add images"),
                "{e}"
            );
        }
        for fraction in [1.0, -0.1, f64::NAN] {
            let e = dataset(5, 0)
                .split_validation(fraction, 0)
                .unwrap_err()
                .to_string();
            assert!(e.contains("[0, 1)"), "{e}");
        }
    }

    #[test]
    fn validation_sample_has_no_randomness() {
        let d = dataset(3, 0);
        for item in 0..3 {
            let s = d.validation_sample(item);
            assert!(!s.flip);
            // 640×512 into 512×512: a 512-wide crop, centred (x = (640 − 512) / 2).
            assert_eq!(
                (s.crop.x, s.crop.y, s.crop.width, s.crop.height),
                (64, 0, 512, 512)
            );
            // First line, trigger word prepended, tags in their written order, nothing dropped.
            assert_eq!(s.caption, format!("ohwx, a, b, c{item}"));
            assert_eq!(s, d.validation_sample(item));
        }
    }
}
