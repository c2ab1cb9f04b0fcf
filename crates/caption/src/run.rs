//! Captioning (and editing) a whole folder: for every image, decide the new caption, show or
//! write it, and report what happened.
//!
//! Per image:
//! 1. read the existing caption (a non-UTF-8 caption is a failure for that image);
//! 2. with a captioner, caption the image when it has no caption or `overwrite` is set;
//!    otherwise keep the existing text (an existing caption is never replaced unless asked);
//! 3. apply the [`TagEdits`] (trigger, dedupe, sort, …) to the new or existing text — an image
//!    without a caption gets a trigger-only caption when `create_missing` is set;
//! 4. if the text differs from the file, record a [`CaptionChange`] and, unless `dry_run`,
//!    write it atomically.
//!
//! One image failing (corrupt file, server error) never stops the run; failures are collected in
//! the [`RunSummary`]. Work is spread over `threads` workers (the VLM client's concurrency);
//! the progress bar draws on stderr.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::{CaptionError, Result};
use crate::folder::{read_caption, write_caption, FolderScan, ImageEntry};
use crate::tags::{normalize_caption, TagEdits};

/// Anything that turns an image into a caption (the WD tagger, a VLM server).
pub trait Captioner: Sync {
    /// A short description for the summary, e.g. `WD tagger (model.safetensors)`.
    fn describe(&self) -> String;

    /// The caption of one image. Errors name the image.
    fn caption(&self, image: &Path) -> Result<String>;
}

/// What to do with a folder.
#[derive(Debug, Clone)]
pub struct CaptionJob {
    /// Which folder to visit and how captions are named.
    pub scan: FolderScan,
    /// Edits applied to every caption, new or existing.
    pub edits: TagEdits,
    /// Let the captioner replace existing captions.
    pub overwrite: bool,
    /// Compute and report the changes without writing anything.
    pub dry_run: bool,
    /// Give images without a caption (and no captioner) a trigger-only caption.
    pub create_missing: bool,
    /// Worker threads (concurrent requests for a VLM server); at least 1.
    pub threads: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
}

impl CaptionJob {
    /// A job over `scan` with no edits, no overwrite, one thread, no progress bar.
    pub fn new(scan: FolderScan) -> Self {
        Self {
            scan,
            edits: TagEdits::default(),
            overwrite: false,
            dry_run: false,
            create_missing: false,
            threads: 1,
            progress: false,
        }
    }
}

/// One caption that changes (or would, in a dry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionChange {
    /// The image the caption belongs to.
    pub image: PathBuf,
    /// The caption file that is (or would be) written.
    pub caption: PathBuf,
    /// The current caption (normalised), `None` when there is no caption file.
    pub old: Option<String>,
    /// The caption after captioning and edits, as written (never empty).
    pub new: String,
}

impl CaptionChange {
    /// A line diff: the caption path, then `- old` and `+ new` lines (unchanged lines with two
    /// spaces).
    pub fn diff(&self) -> String {
        let mut out = format!(
            "{}{}\n",
            self.caption.display(),
            if self.old.is_none() { " (new)" } else { "" }
        );
        let old: Vec<&str> = self
            .old
            .as_deref()
            .map(|o| o.lines().collect())
            .unwrap_or_default();
        let new: Vec<&str> = self.new.lines().collect();
        for i in 0..old.len().max(new.len()) {
            match (old.get(i), new.get(i)) {
                (Some(o), Some(n)) if o == n => out.push_str(&format!("  {o}\n")),
                (o, n) => {
                    if let Some(o) = o {
                        out.push_str(&format!("- {o}\n"));
                    }
                    if let Some(n) = n {
                        out.push_str(&format!("+ {n}\n"));
                    }
                }
            }
        }
        out
    }
}

/// What happened to one image.
#[derive(Debug)]
enum Outcome {
    Changed {
        change: CaptionChange,
        generated: bool,
        kept: bool,
    },
    Unchanged {
        kept: bool,
    },
    Missing(PathBuf),
    Failed(CaptionError),
}

/// The result of a run.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Images in the folder.
    pub images: usize,
    /// Captions that changed (or would, in a dry run), in path order.
    pub changes: Vec<CaptionChange>,
    /// Of the changes, how many came from the captioner.
    pub generated: usize,
    /// Images whose caption stays as it is.
    pub unchanged: usize,
    /// Images whose existing caption the captioner left alone (no `overwrite`); edits may still
    /// have changed them.
    pub kept_existing: usize,
    /// Images without a caption that nothing was written for.
    pub missing: Vec<PathBuf>,
    /// Per-image failures (each names the image or caption file).
    pub failed: Vec<CaptionError>,
    /// The job was a dry run: the changes were computed but nothing was written.
    pub dry_run: bool,
    /// Wall-clock time of the whole run.
    pub elapsed: Duration,
    /// The captioner's description, if one was used.
    pub captioner: Option<String>,
}

impl RunSummary {
    /// The dry-run diff of every change.
    pub fn diff(&self) -> String {
        self.changes
            .iter()
            .map(CaptionChange::diff)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "would change"
        } else {
            "changed"
        };
        if let Some(c) = &self.captioner {
            writeln!(f, "captioner: {c}")?;
        }
        writeln!(
            f,
            "{} images in {:.1} s: {} {verb} ({} newly captioned), {} unchanged, {} kept (existing \
             caption; use overwrite to replace), {} without caption, {} failed",
            self.images,
            self.elapsed.as_secs_f64(),
            self.changes.len(),
            self.generated,
            self.unchanged,
            self.kept_existing,
            self.missing.len(),
            self.failed.len()
        )?;
        for e in &self.failed {
            writeln!(f, "  failed: {e}")?;
        }
        if self.dry_run && !self.changes.is_empty() {
            writeln!(f, "dry run: nothing was written")?;
        }
        Ok(())
    }
}

fn process(job: &CaptionJob, captioner: Option<&dyn Captioner>, entry: &ImageEntry) -> Outcome {
    let old = match read_caption(&entry.caption) {
        Ok(text) => text
            .map(|t| normalize_caption(&t))
            .filter(|t| !t.is_empty()),
        Err(e) => return Outcome::Failed(e),
    };
    let generate = captioner.filter(|_| old.is_none() || job.overwrite);
    let kept = captioner.is_some() && generate.is_none();
    let new = match (generate, &old) {
        (Some(c), _) => match c.caption(&entry.image) {
            Ok(text) => {
                let new = job.edits.apply_or_create(&text);
                if new.is_empty() {
                    return Outcome::Failed(CaptionError::EmptyCaption {
                        image: entry.image.clone(),
                        captioner: c.describe(),
                    });
                }
                new
            }
            Err(e) => return Outcome::Failed(e),
        },
        (None, Some(o)) => job.edits.apply(o),
        (None, None) if job.create_missing => job.edits.apply_or_create(""),
        (None, None) => String::new(),
    };
    if new.is_empty() {
        return Outcome::Missing(entry.image.clone());
    }
    if old.as_deref() == Some(new.as_str()) {
        return Outcome::Unchanged { kept };
    }
    if !job.dry_run {
        if let Err(e) = write_caption(&entry.caption, &new) {
            return Outcome::Failed(e);
        }
    }
    let change = CaptionChange {
        image: entry.image.clone(),
        caption: entry.caption.clone(),
        old,
        new,
    };
    Outcome::Changed {
        change,
        generated: generate.is_some(),
        kept,
    }
}

fn progress_bar(len: usize, visible: bool) -> ProgressBar {
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len as u64), target);
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {pos}/{len} images, {elapsed} elapsed, eta {eta} {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Runs a job: captions (when `captioner` is given) and edits every image of the folder.
/// Only an unusable folder or bad option is an error; per-image failures are in the summary.
pub fn caption_folder(job: &CaptionJob, captioner: Option<&dyn Captioner>) -> Result<RunSummary> {
    if job.threads == 0 {
        return Err(CaptionError::InvalidOption {
            name: "threads",
            message: "must be at least 1".into(),
        });
    }
    let start = Instant::now();
    let entries = job.scan.images()?;
    let bar = progress_bar(entries.len(), job.progress);
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<(usize, Outcome)>> = Mutex::new(Vec::with_capacity(entries.len()));
    let workers = job.threads.min(entries.len()).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(entry) = entries.get(i) else { break };
                let outcome = process(job, captioner, entry);
                if let Outcome::Failed(e) = &outcome {
                    bar.println(format!("failed: {e}"));
                }
                outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((i, outcome));
                bar.inc(1);
            });
        }
    });
    bar.finish_and_clear();

    let mut outcomes = outcomes.into_inner().unwrap_or_else(|p| p.into_inner());
    outcomes.sort_by_key(|(i, _)| *i);
    let mut summary = RunSummary {
        images: entries.len(),
        dry_run: job.dry_run,
        captioner: captioner.map(|c| c.describe()),
        ..RunSummary::default()
    };
    for (_, outcome) in outcomes {
        match outcome {
            Outcome::Changed {
                change,
                generated,
                kept,
            } => {
                summary.generated += usize::from(generated);
                summary.kept_existing += usize::from(kept);
                summary.changes.push(change);
            }
            Outcome::Unchanged { kept } => {
                summary.unchanged += 1;
                summary.kept_existing += usize::from(kept);
            }
            Outcome::Missing(p) => summary.missing.push(p),
            Outcome::Failed(e) => summary.failed.push(e),
        }
    }
    summary.elapsed = start.elapsed();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tags::Trigger;

    #[test]
    fn diff_marks_old_and_new_lines() {
        let change = CaptionChange {
            image: "a.png".into(),
            caption: "a.txt".into(),
            old: Some("dog\nsame".into()),
            new: "sks, dog\nsame\nextra".into(),
        };
        assert_eq!(change.diff(), "a.txt\n- dog\n+ sks, dog\n  same\n+ extra\n");
        let created = CaptionChange {
            old: None,
            new: "sks".into(),
            ..change
        };
        assert_eq!(created.diff(), "a.txt (new)\n+ sks\n");
    }

    #[test]
    fn zero_threads_is_an_option_error() {
        let dir = tempfile::tempdir().unwrap();
        let job = CaptionJob {
            threads: 0,
            ..CaptionJob::new(FolderScan::new(dir.path()))
        };
        assert!(matches!(
            caption_folder(&job, None),
            Err(CaptionError::InvalidOption {
                name: "threads",
                ..
            })
        ));
    }

    #[test]
    fn create_missing_writes_trigger_only_captions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        let mut job = CaptionJob::new(FolderScan::new(dir.path()));
        job.edits.trigger = Some(Trigger::new("sks").unwrap());
        let summary = caption_folder(&job, None).unwrap();
        assert_eq!(summary.missing.len(), 1);
        job.create_missing = true;
        let summary = caption_folder(&job, None).unwrap();
        assert_eq!(summary.changes.len(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
            "sks\n"
        );
    }
}
