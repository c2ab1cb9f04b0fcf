//! Builds the quality report from a listed and analysed dataset, and renders it as text (for
//! the terminal) or JSON (for disk). Blocking problems (unreadable or corrupt files, images over
//! the config's image limits, captions that are not UTF-8, images that cannot be bucketed,
//! missing folders, no images) make
//! [`QualityReport::has_blocking_problems`] true unless `skip_bad_images` is on; everything else
//! is a warning.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{blur, phash};
use crate::analysis::Analysis;
use crate::caption::{CaptionSource, TRIGGER_PLACEHOLDER};
use crate::dataset::classify;
use crate::problem::{Problem, ProblemKind, Severity};
use crate::progress::Progress;
use crate::spec::DatasetSpec;

/// Thresholds of the report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct QualitySettings {
    /// Variance-of-Laplacian score below which an image is reported blurry (see [`blur`]).
    pub blur_threshold: f64,
    /// Largest dHash Hamming distance (of 64) reported as a near-duplicate (see [`phash`]).
    pub duplicate_max_distance: u32,
    /// Largest mean thumbnail difference (fraction of full scale) of a near-duplicate.
    pub duplicate_max_thumb_difference: f64,
    /// How many of the most frequent tags to list in the text output.
    pub top_tags: usize,
    /// Show a progress bar while the images are decoded and analysed.
    pub progress: bool,
}

impl Default for QualitySettings {
    fn default() -> Self {
        Self {
            blur_threshold: blur::DEFAULT_BLUR_THRESHOLD,
            duplicate_max_distance: phash::DEFAULT_MAX_DISTANCE,
            duplicate_max_thumb_difference: phash::DEFAULT_MAX_THUMB_DIFFERENCE,
            top_tags: 20,
            progress: false,
        }
    }
}

/// Images of one bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketCount {
    /// Index of the dataset in the config.
    pub dataset: usize,
    /// That dataset's target resolution (width, height).
    pub resolution: (u32, u32),
    /// The bucket, as `WIDTHxHEIGHT`.
    pub bucket: String,
    /// Usable images assigned to the bucket.
    pub images: usize,
    /// Draws per epoch (images × repeats; regularisation images counted once).
    pub draws_per_epoch: usize,
}

/// Two images that look alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicatePair {
    /// The first image (in listing order).
    pub a: PathBuf,
    /// The later image, the one the problem is reported on.
    pub b: PathBuf,
    /// dHash Hamming distance (of 64); 0 when either image has no dHash or thumbnail.
    pub distance: u32,
    /// Byte-identical files.
    pub identical: bool,
}

/// The report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityReport {
    /// The dataset config file, or the dataset folder.
    pub source: PathBuf,
    /// The thresholds the report was made with.
    pub settings: QualitySettings,
    /// Distinct image files listed in all subsets.
    pub images_listed: usize,
    /// Distinct image files that decode and get a bucket.
    pub images_usable: usize,
    /// Usable images per dataset and bucket.
    pub buckets: Vec<BucketCount>,
    /// Usable images without a caption file.
    pub missing_captions: Vec<PathBuf>,
    /// Pairs of identical or near-duplicate images.
    pub near_duplicates: Vec<DuplicatePair>,
    /// (image, sharpness score).
    pub blurry: Vec<(PathBuf, f64)>,
    /// (image, "W×H → bucket, ×scale").
    pub upscaled: Vec<(PathBuf, String)>,
    /// Images whose caption has a line without the trigger word (or its placeholder).
    pub missing_trigger: Vec<PathBuf>,
    /// (tag, count), most frequent first.
    pub tag_frequencies: Vec<(String, usize)>,
    /// Every problem, blocking first.
    pub problems: Vec<Problem>,
}

impl QualityReport {
    /// Lists, decodes (in parallel) and reports.
    pub fn build(spec: &DatasetSpec, settings: &QualitySettings) -> QualityReport {
        let progress = Progress {
            enabled: settings.progress,
        };
        let analysis = Analysis::run(spec, &progress);
        Self::from_analysis(spec, &analysis, settings)
    }

    /// Reports on an existing analysis.
    pub fn from_analysis(
        spec: &DatasetSpec,
        analysis: &Analysis,
        settings: &QualitySettings,
    ) -> QualityReport {
        let (items, mut problems) = classify(spec, analysis);
        let cfg = &spec.config;

        let mut counts: BTreeMap<(usize, crate::bucket::Bucket), BucketCount> = BTreeMap::new();
        for it in &items {
            let sub = &cfg.datasets[it.dataset].subsets[it.subset];
            let b = it.assignment.bucket;
            let e = counts
                .entry((it.dataset, b))
                .or_insert_with(|| BucketCount {
                    dataset: it.dataset,
                    resolution: cfg.datasets[it.dataset].buckets.resolution,
                    bucket: b.to_string(),
                    images: 0,
                    draws_per_epoch: 0,
                });
            e.images += 1;
            e.draws_per_epoch += if sub.is_reg {
                1
            } else {
                sub.num_repeats as usize
            };
        }
        let buckets = counts.into_values().collect();

        // Per-file findings, each file once even when several datasets use it.
        let mut seen = BTreeSet::new();
        let mut missing_captions = Vec::new();
        let mut missing_trigger = Vec::new();
        let mut upscaled = Vec::new();
        let mut tags: BTreeMap<String, usize> = BTreeMap::new();
        for it in &items {
            let sub = &cfg.datasets[it.dataset].subsets[it.subset];
            if it.assignment.scale > 1.0 + 1e-9 {
                upscaled.push((
                    it.path.clone(),
                    format!(
                        "{}×{} → {} at {}², ×{:.2}",
                        it.info.width,
                        it.info.height,
                        it.assignment.bucket,
                        cfg.datasets[it.dataset].buckets.resolution.0,
                        it.assignment.scale
                    ),
                ));
            }
            if !seen.insert(it.path.clone()) {
                continue;
            }
            match &it.caption {
                CaptionSource::Missing => missing_captions.push(it.path.clone()),
                CaptionSource::File { lines } => {
                    if let Some(t) = &sub.caption.trigger_word {
                        if lines
                            .iter()
                            .any(|l| !l.contains(t.as_str()) && !l.contains(TRIGGER_PLACEHOLDER))
                        {
                            missing_trigger.push(it.path.clone());
                        }
                    }
                    for line in lines {
                        let line = match &sub.caption.trigger_word {
                            Some(t) => line.replace(TRIGGER_PLACEHOLDER, t),
                            None => line.clone(),
                        };
                        for tag in line
                            .split(sub.caption.caption_separator.as_str())
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                        {
                            *tags.entry(tag.to_string()).or_default() += 1;
                        }
                    }
                }
            }
        }
        for p in &missing_captions {
            problems.push(Problem::new(
                ProblemKind::MissingCaption,
                Severity::Warning,
                Some(p.clone()),
                "no caption file; class_tokens (or an empty caption) is used",
            ));
        }
        for (p, what) in &upscaled {
            problems.push(Problem::new(
                ProblemKind::Upscaled,
                Severity::Warning,
                Some(p.clone()),
                format!("smaller than its bucket, will be upscaled: {what}"),
            ));
        }
        for p in &missing_trigger {
            problems.push(Problem::new(
                ProblemKind::MissingTrigger,
                Severity::Warning,
                Some(p.clone()),
                "caption lacks the trigger word; it will be prepended",
            ));
        }

        // Unique usable files for image-level checks.
        let mut files: Vec<(&PathBuf, &crate::analysis::ImageInfo)> = Vec::new();
        let mut seen = BTreeSet::new();
        for it in &items {
            if seen.insert(&it.path) {
                files.push((&it.path, &it.info));
            }
        }
        let mut blurry = Vec::new();
        for (p, info) in &files {
            if let Some(s) = info.sharpness.filter(|&s| s < settings.blur_threshold) {
                blurry.push(((*p).clone(), s));
                problems.push(Problem::new(
                    ProblemKind::Blurry,
                    Severity::Warning,
                    Some((*p).clone()),
                    format!(
                        "looks blurry: sharpness {s:.1} < {}",
                        settings.blur_threshold
                    ),
                ));
            }
        }
        let mut near_duplicates = Vec::new();
        for i in 0..files.len() {
            for j in i + 1..files.len() {
                let (a, ia) = files[i];
                let (b, ib) = files[j];
                let identical = ia.content_hash == ib.content_hash;
                let (distance, similar) = match (ia.dhash, ib.dhash, &ia.thumbnail, &ib.thumbnail) {
                    (Some(x), Some(y), Some(tx), Some(ty)) => {
                        let d = phash::distance(x, y);
                        let close = phash::thumb_difference(tx, ty)
                            <= settings.duplicate_max_thumb_difference;
                        (d, d <= settings.duplicate_max_distance && close)
                    }
                    _ => (0, false),
                };
                if identical || similar {
                    near_duplicates.push(DuplicatePair {
                        a: a.clone(),
                        b: b.clone(),
                        distance,
                        identical,
                    });
                    let what = if identical {
                        "identical file".to_string()
                    } else {
                        format!("near-duplicate (dHash distance {distance})")
                    };
                    problems.push(Problem::new(
                        ProblemKind::NearDuplicate,
                        Severity::Warning,
                        Some(b.clone()),
                        format!("{what} of {}", a.display()),
                    ));
                }
            }
        }
        let mut tag_frequencies: Vec<(String, usize)> = tags.into_iter().collect();
        tag_frequencies.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        problems.sort_by(|a, b| (a.severity, a.kind, &a.path).cmp(&(b.severity, b.kind, &b.path)));

        QualityReport {
            source: cfg.source.clone(),
            settings: *settings,
            images_listed: spec
                .images
                .iter()
                .map(|r| &r.path)
                .collect::<BTreeSet<_>>()
                .len(),
            images_usable: files.len(),
            buckets,
            missing_captions,
            near_duplicates,
            blurry,
            upscaled,
            missing_trigger,
            tag_frequencies,
            problems,
        }
    }

    /// Whether training must not start.
    pub fn has_blocking_problems(&self) -> bool {
        self.problems
            .iter()
            .any(|p| p.severity == Severity::Blocking)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report is plain data")
    }

    /// `path` relative to the config's folder when inside it.
    fn rel(&self, path: &std::path::Path) -> String {
        let base = if self.source.is_dir() {
            self.source.as_path()
        } else {
            self.source.parent().unwrap_or(std::path::Path::new(""))
        };
        path.strip_prefix(base)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// Human-readable text; file paths are shown relative to the config's folder.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let blocking = self
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Blocking)
            .count();
        let warnings = self.problems.len() - blocking;
        let _ = writeln!(s, "Dataset report for {}", self.source.display());
        let _ = writeln!(
            s,
            "  images: {} listed, {} usable",
            self.images_listed, self.images_usable
        );
        let _ = writeln!(s, "\nImages per bucket:");
        for b in &self.buckets {
            let _ = writeln!(
                s,
                "  dataset {} ({}x{}): {:>9}  {:>4} image(s), {:>5} draw(s)/epoch",
                b.dataset, b.resolution.0, b.resolution.1, b.bucket, b.images, b.draws_per_epoch
            );
        }
        let sections: [(&str, Vec<String>); 5] = [
            (
                "Missing captions",
                self.missing_captions.iter().map(|p| self.rel(p)).collect(),
            ),
            (
                "Captions missing the trigger word",
                self.missing_trigger.iter().map(|p| self.rel(p)).collect(),
            ),
            (
                "Too small for the target resolution (upscaled)",
                self.upscaled
                    .iter()
                    .map(|(p, w)| format!("{}: {w}", self.rel(p)))
                    .collect(),
            ),
            (
                "Blurry (variance of Laplacian below threshold)",
                self.blurry
                    .iter()
                    .map(|(p, v)| format!("{}: {v:.1}", self.rel(p)))
                    .collect(),
            ),
            (
                "Near-duplicates",
                self.near_duplicates
                    .iter()
                    .map(|d| {
                        let how = if d.identical {
                            "identical".to_string()
                        } else {
                            format!("distance {}", d.distance)
                        };
                        format!("{} ~ {} ({how})", self.rel(&d.a), self.rel(&d.b))
                    })
                    .collect(),
            ),
        ];
        for (title, lines) in sections {
            let _ = writeln!(s, "\n{title}: {}", lines.len());
            for l in lines {
                let _ = writeln!(s, "  {l}");
            }
        }
        let _ = writeln!(
            s,
            "\nTag frequencies (top {} of {}):",
            self.settings.top_tags.min(self.tag_frequencies.len()),
            self.tag_frequencies.len()
        );
        for (tag, n) in self.tag_frequencies.iter().take(self.settings.top_tags) {
            let _ = writeln!(s, "  {n:>5}  {tag}");
        }
        let _ = writeln!(s, "\nProblems: {blocking} blocking, {warnings} warning(s)");
        for p in &self.problems {
            let tag = match p.severity {
                Severity::Blocking => "BLOCKING",
                Severity::Warning => "warning ",
            };
            let line = match &p.path {
                Some(path) => format!("{}: {}", self.rel(path), p.message),
                None => p.message.clone(),
            };
            let _ = writeln!(s, "  {tag} {line}");
        }
        if blocking > 0 {
            let _ = writeln!(
                s,
                "\nTraining would stop: fix the blocking problems, or set skip_bad_images = true \
                 to leave those files out."
            );
        }
        s
    }
}
